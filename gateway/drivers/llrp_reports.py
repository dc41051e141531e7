"""Fast decoding of LLRP RO_ACCESS_REPORTs, the one message a busy reader sends all the time.

sllurp decodes every message into nested dictionaries (about 5 µs a tag read, holding the GIL
the event loop needs). `FastReportClient` keeps sllurp for everything else (connection, ROSpec,
keepalives, events) and decodes tag reports itself with `struct`: EPC, antenna, peak RSSI,
last (or first) seen time and seen count, straight into tuples.

The framing loop follows sllurp 3.0.5's `LLRPReaderClient.raw_data_received` (the dependency is
pinned); only RO_ACCESS_REPORTs received while inventorying take the fast path.

The gateway also sends requests of its own once sllurp has set the reader up (`send_request`:
START_ROSPEC and STOP_ROSPEC at a door gated by a presence sensor, GPO writes, a GPI port's
level). Their message ids come from a range of their own, above sllurp's, so each answer is
known for what it answers and goes to `on_answer` only: sllurp's state machine, which expects
no such answers while inventorying, never sees them.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from struct import Struct
from typing import Any, Literal

from sllurp.llrp import LLRPClient, LLRPMessage, LLRPReaderClient, LLRPReaderState
from sllurp.llrp_errors import LLRPError, ReaderConfigurationError
from sllurp.llrp_proto import msg_header_len, msg_header_unpack

# A read as decoded here: (EPC hex, antenna id, peak RSSI dBm or None, seen µs, times seen).
RawRead = tuple[str, int, int | None, int, int]

RO_ACCESS_REPORT = 61
_TAG_REPORT_DATA = 240
_EPC_DATA = 241
_U16 = Struct("!H").unpack_from
_U64 = Struct("!Q").unpack_from
_TLV = Struct("!HH").unpack_from
# TV parameters (LLRP 1.0.1 16.2.7.3): type -> value length in bytes.
_TV_LENGTH = {1: 2, 2: 8, 3: 8, 4: 8, 5: 8, 6: 1, 7: 2, 8: 2, 9: 4, 10: 2, 11: 2, 12: 2, 13: 12,
              14: 2, 15: 2, 16: 4, 17: 2, 18: 4, 19: 2, 20: 2}  # fmt: skip
_MAX_NAMES = 100_000  # EPC bytes -> hex text cache, bounded
MAX_MESSAGE = 1 << 20  # no reader message comes near 1 MiB
# The gateway's own requests are numbered from here (sllurp numbers its own from 1).
_OWN_IDS_FROM = 0x8000_0000
# Requests of the gateway's own the reader may leave unanswered before the connection is
# given up: each is answered within a round trip by a reader that works.
MAX_UNANSWERED = 64

log = logging.getLogger("gateway.drivers.llrp")


class MalformedReport(ValueError):
    """An RO_ACCESS_REPORT whose parameters do not add up."""


class UnansweredRequests(RuntimeError):
    """The reader left `MAX_UNANSWERED` of the gateway's requests without an answer."""


class _WaitingROSpecClient(LLRPClient):  # type: ignore[misc]
    """sllurp's LLRP state machine, with a Null start trigger in its ROSpec: once enabled, the
    ROSpec waits (Inactive) for a START_ROSPEC instead of starting at once."""

    def getROSpec(self, force_new: bool = False) -> Any:  # noqa: N802 - sllurp names it
        rospec = super().getROSpec(force_new=force_new)
        rospec["ROBoundarySpec"]["ROSpecStartTrigger"] = {"ROSpecStartTriggerType": "Null"}
        return rospec


def decode_report(body: bytes, names: dict[bytes, str] | None = None) -> list[RawRead]:
    """The tag reads of an RO_ACCESS_REPORT's body (after the 10-byte message header)."""
    out: list[RawRead] = []
    cache = names if names is not None else {}
    pos, end = 0, len(body)
    while pos + 4 <= end:
        ptype, plen = _TLV(body, pos)
        if plen < 4 or pos + plen > end:
            raise MalformedReport(f"parameter {ptype & 0x3FF} overruns the message")
        if ptype & 0x3FF != _TAG_REPORT_DATA:
            pos += plen
            continue
        p, stop = pos + 4, pos + plen
        pos = stop
        epc: bytes | None = None
        antenna, rssi, first, last, count = 0, None, 0, 0, 1
        while p < stop:
            b = body[p]
            if b & 0x80:  # a TV parameter: 1 byte type, fixed-length value
                t = b & 0x7F
                length = _TV_LENGTH.get(t)
                if length is None or p + 1 + length > stop:
                    raise MalformedReport(f"TV parameter {t} is unknown or cut short")
                if t == 13:  # EPC-96
                    epc = body[p + 1 : p + 13]
                elif t == 1:  # AntennaID
                    antenna = _U16(body, p + 1)[0]
                elif t == 6:  # PeakRSSI, signed
                    v = body[p + 1]
                    rssi = v - 256 if v > 127 else v
                elif t == 2:  # FirstSeenTimestampUTC
                    first = _U64(body, p + 1)[0]
                elif t == 4:  # LastSeenTimestampUTC
                    last = _U64(body, p + 1)[0]
                elif t == 8:  # TagSeenCount
                    count = _U16(body, p + 1)[0]
                p += 1 + length
            else:  # a TLV parameter
                if p + 4 > stop:
                    raise MalformedReport("TLV header cut short")
                st, sl = _TLV(body, p)
                if sl < 4 or p + sl > stop:
                    raise MalformedReport(f"TLV parameter {st & 0x3FF} overruns its tag report")
                if st & 0x3FF == _EPC_DATA and sl >= 6:
                    bits = _U16(body, p + 4)[0]
                    epc = body[p + 6 : min(p + 6 + (bits + 7) // 8, p + sl)]
                p += sl
        if epc:
            name = cache.get(epc)
            if name is None:
                name = epc.hex().upper()
                if len(cache) < _MAX_NAMES:
                    cache[epc] = name
            out.append((name, antenna, rssi, last or first, count))
    return out


class FastReportClient(LLRPReaderClient):  # type: ignore[misc]
    """sllurp's client, with tag reports decoded by `decode_report` and handed to `on_reads`.

    Args:
        on_reads: called on sllurp's thread with the reads of each report.
        on_malformed: called on sllurp's thread for each report that could not be decoded.
        on_answer: called on sllurp's thread with (purpose, message) for the answer (its
            response, or an ERROR_MESSAGE) to each request sent with `send_request`.
        rospec_start: "Null": the ROSpec waits for START_ROSPEC once enabled; "Immediate":
            it starts when enabled (sllurp's way).
    """

    # sllurp's own framing state (set by its constructor).
    partial_data: bytes
    expected_bytes: int
    llrp: Any

    def __init__(
        self,
        *args: Any,
        on_reads: Callable[[list[RawRead]], None],
        on_malformed: Callable[[str], None],
        on_answer: Callable[[str, LLRPMessage], None] | None = None,
        rospec_start: Literal["Immediate", "Null"] = "Immediate",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_reads = on_reads
        self._on_malformed = on_malformed
        self._on_answer = on_answer
        self._names: dict[bytes, str] = {}
        # Requests of the gateway's own: message id -> purpose, until answered. Each id is
        # registered before its request is sent, so its answer always finds it.
        self._requests: dict[int, str] = {}
        self._request_ids = itertools.count(_OWN_IDS_FROM)
        # sllurp's thread (keepalive acks) and the gateway both send: one whole frame at a time.
        self._send_lock = threading.Lock()
        if rospec_start == "Null":
            self.llrp = _WaitingROSpecClient(
                self.config,
                transport_tx_write=self.send_data,
                state_change_callback=self._on_llrp_state_changed,
            )

    def send_data(self, data: bytes) -> None:
        """Send one frame (sllurp's, or the gateway's own); never interleaved with another."""
        with self._send_lock:
            super().send_data(data)

    def send_request(self, message: dict[str, Any], purpose: str) -> None:
        """Send a request of the gateway's own (one message, as sllurp's `sendMessage` takes
        it); its answer goes to `on_answer` with `purpose`. Blocking: call it off the loop.

        Raises:
            UnansweredRequests: too many requests are waiting for an answer.
            OSError, sllurp's ReaderConfigurationError: the connection is gone.
        """
        if len(self._requests) >= MAX_UNANSWERED:
            raise UnansweredRequests(
                f"the reader left {len(self._requests)} requests without an answer"
            )
        ((_, body),) = message.items()
        msg_id = next(self._request_ids)
        body["ID"] = msg_id
        self._requests[msg_id] = purpose
        try:
            self.send_data(LLRPMessage(msgdict=message).msgbytes)
        except BaseException:
            self._requests.pop(msg_id, None)
            raise

    def raw_data_received(self, data: bytes) -> None:
        """sllurp's framing; tag reports go to the fast decoder, everything else to sllurp."""
        if self.expected_bytes:
            self.partial_data += data
            data = self.partial_data
            if len(data) < self.expected_bytes:
                return
        start, size = 0, len(data)
        while size > 0:
            if size < msg_header_len:
                self.partial_data = data[start:]
                self.expected_bytes = msg_header_len
                break
            msg_type, msg_len, msg_id = msg_header_unpack(data[start : start + msg_header_len])
            if not msg_header_len <= msg_len <= MAX_MESSAGE:
                # Not a frame boundary (garbage on the line): drop what was received and pick
                # up again at a later boundary; the watchdog reconnects if none comes.
                self._on_malformed(f"impossible message length {msg_len}")
                self.expected_bytes = 0
                break
            if size < msg_len:
                self.partial_data = data[start:]
                self.expected_bytes = msg_len
                break
            self.expected_bytes = 0
            frame = data[start : start + msg_len]
            if (
                msg_type & 0x3FF == RO_ACCESS_REPORT
                and self.llrp.state == LLRPReaderState.STATE_INVENTORYING
            ):
                try:
                    reads = decode_report(frame[msg_header_len:], self._names)
                except MalformedReport as err:
                    self._on_malformed(str(err))
                else:
                    self._on_reads(reads)
            else:
                try:
                    message = LLRPMessage(msgbytes=frame)
                    purpose = self._requests.pop(msg_id, None) if self._requests else None
                    if purpose is not None and self._on_answer is not None:
                        self._on_answer(purpose, message)
                    else:
                        self._on_llrp_message_received(message)
                        self.llrp.handleMessage(message)
                except ReaderConfigurationError:
                    raise
                except LLRPError as err:
                    self._on_malformed(f"cannot decode an LLRP message: {err}")
                    break
            start += msg_len
            size -= msg_len
        if self.expected_bytes <= 0:
            self.partial_data = b""
