"""An LLRP reader that replays pre-encoded RO_ACCESS_REPORTs as fast as its client reads them.

A load generator for throughput benchmarks of LLRP clients, built not to be the bottleneck.
The LLRP session (the handshake, ROSpec states, keepalives, an answer to every request) is the
simulator's `ReaderSession`, so any client that works with `LlrpReaderSimulator` works here.
What differs is how reports are made: once the client's ROSpec is active (its ENABLE_ROSPEC
answered), every report is encoded at once, with the simulator's `TagReportEncoder` and the
fields that ROSpec asked for, and concatenated into chunks of about `chunk_bytes`. From then on
the reader writes whole chunks, one `write` each, with flow control through `drain`: it waits
whenever the client has not read what was sent (`ReplayStats.blocked_s` says how long).

The tag reports are the values a reader at a dock door would send (`sample_tags`: the
simulator's radio model played over a day at the door, reads folded per tag and antenna over
each report interval, as readers do): EPC-96 or longer EPCs, antenna, peak RSSI, channel,
first and last seen times, seen count. So that a replayed report does not carry times from the
past, each chunk is stamped when it is written: its reads span the `spacing_us * tags`
microseconds up to that moment, and its message ids follow those already sent. That costs one
big-integer operation per chunk, in C (see `_Chunk`), not a loop over the tags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, NoReturn, Self

from simulators.llrp.codec import (
    ConnectionAttemptStatus,
    FrameDecoder,
    MalformedFrame,
    ReaderCapabilities,
    TagReportEncoder,
    decode_tag_reports,
    keepalive,
    reader_event_notification,
    ro_access_report,
)
from simulators.llrp.scenario import PortalRadio, Scenario, day_scenario
from simulators.llrp.server import ReaderSession, _accumulated, _Inventory

__all__ = ["ReplayStats", "ReplayTag", "ReportReplayer", "sample_tags"]

logger = logging.getLogger(__name__)

# Reader-chosen channel hops every 200 ms over the hop table (as the simulator's).
_HOP_S: Final = 0.2
# Message ids are 32 bits; the replayer starts over below this.
_MAX_ID: Final = 0xFFFF_FFFF
_CLOSE_GRACE_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class ReplayTag:
    """One TagReportData's values; its times are given when its chunk is written."""

    epc: bytes
    antenna: int
    peak_rssi: int
    channel: int
    seen_count: int = 1


def sample_tags(
    count: int,
    scenario: Scenario | None = None,
    *,
    reads_per_s: float = 2000.0,
    report_interval_s: float = 0.1,
    channels: int = 4,
) -> list[ReplayTag]:
    """`count` tag reports as a reader at a dock door sends them, in the order it sends them.

    The scenario (by default a day of 60 pallets of 5-40 cases and 12 stray tags) is played by
    the simulator's radio model, at most `reads_per_s` reads a second; the reads of each
    `report_interval_s` are folded per (EPC, antenna): peak RSSI and seen count. The scenario
    starts over when it is done, until there are `count`.

    Raises:
        ValueError: the scenario has no tag the reader can hear.
    """
    play = scenario if scenario is not None else day_scenario(60, seed=11, strays=12)
    radio = PortalRadio(play)
    antennas = {*play.outside_antennas, *play.inside_antennas}
    end = play.end_s + 1.0
    budget = max(1, int(reads_per_s * report_interval_s))
    tags: list[ReplayTag] = []
    t = 0.0
    heard_any = False
    while len(tags) < count:
        reads = radio.inventory(t, t + report_interval_s, antennas=antennas, max_reads=budget)
        for epc, antenna, rssi, _, last, seen in _accumulated(reads):
            channel = int(last / _HOP_S) % channels + 1
            tags.append(ReplayTag(epc, antenna, rssi, channel, seen))
        heard_any = heard_any or bool(reads)
        t += report_interval_s
        if t >= end:
            if not heard_any:
                raise ValueError("the scenario has no tag the reader can hear")
            t = 0.0
    return tags[:count]


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Reports concatenated, as one integer, so that stamping them is arithmetic in C.

    `value` is the chunk's bytes read as a big-endian integer, encoded with its reads' times
    counted from 0 µs and its message ids from 0. Encoding it again with every time one µs
    later gives `value + time_step`: `time_step` has a 1 at the lowest bit of every timestamp
    field and nothing elsewhere. Likewise `id_step` for the message ids. So the chunk with
    times from `base_us` and ids from `first_id` is `value + base_us * time_step + first_id *
    id_step`: no field overflows into its neighbour (a timestamp is 64 bits wide and far below
    2**64; ids stay below 2**32).
    """

    value: int
    time_step: int
    id_step: int
    size: int
    frames: int
    tags: int
    span_us: int

    def render(self, base_us: int, first_id: int) -> bytes:
        """The chunk's bytes, its reads' times from `base_us`, its message ids from `first_id`."""
        stamped = self.value + base_us * self.time_step + first_id * self.id_step
        return stamped.to_bytes(self.size, "big")


def _encode_chunk(
    encoder: TagReportEncoder, tags: Sequence[ReplayTag], per_report: int, spacing_us: int
) -> _Chunk:
    def encode(time_shift: int, id_shift: int) -> bytes:
        frames = []
        for msg_id, start in enumerate(range(0, len(tags), per_report)):
            data = []
            for i, tag in enumerate(tags[start : start + per_report], start=start):
                first = i * spacing_us + time_shift
                last = first + (tag.seen_count - 1) * spacing_us
                data.append(
                    encoder.encode(
                        tag.epc,
                        tag.antenna,
                        tag.peak_rssi,
                        tag.channel,
                        first,
                        last,
                        tag.seen_count,
                    )
                )
            frames.append(ro_access_report(msg_id + id_shift, data))
        return b"".join(frames)

    plain = encode(0, 0)
    value = int.from_bytes(plain, "big")
    time_step = int.from_bytes(encode(1, 0), "big") - value
    id_step = int.from_bytes(encode(0, 1), "big") - value
    frames = -(-len(tags) // per_report)
    return _Chunk(value, time_step, id_step, len(plain), frames, len(tags), len(tags) * spacing_us)


def _check_chunk(chunk: _Chunk, tags: Sequence[ReplayTag], spacing_us: int) -> None:
    """Decode a stamped chunk and compare it with what went in (once, at encoding)."""
    base_us, first_id = 1_750_000_000_000_000, 123_456
    decoder = FrameDecoder()
    decoder.feed(chunk.render(base_us, first_id))
    frames = decoder.frames()
    if decoder.buffered or len(frames) != chunk.frames:
        raise AssertionError("a stamped chunk does not split into its frames")
    decoded = []
    for msg_id, frame in enumerate(frames, start=first_id):
        if isinstance(frame, MalformedFrame) or frame.id != msg_id:
            raise AssertionError(f"stamped frame {msg_id - first_id} is wrong: {frame!r}")
        decoded += decode_tag_reports(frame.body)
    for i, (tag, report) in enumerate(zip(tags, decoded, strict=True)):
        if report.epc != tag.epc or report.first_seen_us not in (None, base_us + i * spacing_us):
            raise AssertionError(f"stamped tag report {i} is wrong: {report!r}")


@dataclass(frozen=True, slots=True)
class ReplayStats:
    """What the replayer has sent since it was created."""

    connections: int = 0
    frames_sent: int = 0  # RO_ACCESS_REPORTs
    tags_sent: int = 0  # TagReportData parameters
    bytes_sent: int = 0  # report bytes handed to the transport
    blocked_s: float = 0.0  # time spent waiting for the client to read (in `drain`)
    chunks: int = 0  # distinct chunks encoded for the current inventory
    chunk_bytes: int = 0  # their total size


@dataclass(slots=True)
class _Counters:
    connections: int = 0
    frames_sent: int = 0
    tags_sent: int = 0
    bytes_sent: int = 0
    # (seconds waited in earlier drains, perf_counter at the start of the current one or 0.0),
    # replaced in one assignment: another thread may read the stats meanwhile.
    blocked: tuple[float, float] = (0.0, 0.0)
    chunks: int = 0
    chunk_bytes: int = 0


class _ConnectionOver(Exception):
    """The client closed the session, or the reader is done with it."""


class ReportReplayer:
    """An LLRP reader on a TCP port of 127.0.0.1 that streams `tags` in a loop, flat out.

    Use as ``async with ReportReplayer(tags, tags_per_report=100) as reader:`` and connect a
    client to ``reader.port``. One client at a time; reports flow while its ROSpec is active.

    Args:
        tags: the tag reports to replay, in order; the replay starts over at the end.
        tags_per_report: TagReportData per RO_ACCESS_REPORT (the last one of the list may hold
            fewer).
        chunk_bytes: about how many bytes each write carries (whole reports).
        spacing_us: microseconds between the first-seen times of two successive tag reports.
        send_buffer: the socket's kernel send buffer (bytes, SO_SNDBUF), so that the client
            has data to read while the replayer waits for a CPU; None leaves the default.

    Keepalives follow the client's KeepaliveSpec; while reports stream, they go between chunks
    when due.
    """

    def __init__(
        self,
        tags: Sequence[ReplayTag],
        *,
        tags_per_report: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        antennas: int = 4,
        chunk_bytes: int = 256 * 1024,
        spacing_us: int = 5,
        send_buffer: int | None = 4 * 1024 * 1024,
    ) -> None:
        if not tags:
            raise ValueError("nothing to replay: no tags")
        if tags_per_report < 1 or chunk_bytes < 1 or spacing_us < 1:
            raise ValueError("tags_per_report, chunk_bytes and spacing_us must be positive")
        self._tags = tuple(tags)
        self._per_report = tags_per_report
        self._host = host
        self._port = port
        self._caps = ReaderCapabilities(antennas=antennas)
        self._chunk_bytes = chunk_bytes
        self._spacing_us = spacing_us
        self._send_buffer = send_buffer
        self._server: asyncio.Server | None = None
        # The client's connection: its task and writer.
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._counters = _Counters()
        self._next_id = 1
        self._encoded: tuple[_Inventory, list[_Chunk]] | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The TCP port the reader listens on."""
        return self._port

    @property
    def stats(self) -> ReplayStats:
        """A snapshot of the counters (safe to take from another thread)."""
        c = self._counters
        waited, since = c.blocked
        if since:
            waited += time.perf_counter() - since
        return ReplayStats(
            connections=c.connections,
            frames_sent=c.frames_sent,
            tags_sent=c.tags_sent,
            bytes_sent=c.bytes_sent,
            blocked_s=waited,
            chunks=c.chunks,
            chunk_bytes=c.chunk_bytes,
        )

    async def close(self) -> None:
        """Stop listening and hang up on the client (abruptly: it may not be reading)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # Each connection's task ends by itself once its transport is closed (Python 3.11's
        # stream server logs a cancelled connection task as an error).
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=_CLOSE_GRACE_S)
            for task in pending:  # pragma: no cover - a transport that ignores abort()
                task.cancel()

    # -- internals --

    def _chunks_for(self, inventory: _Inventory) -> list[_Chunk]:
        """The reports encoded for this ROSpec's report content, once."""
        if self._encoded is not None and self._encoded[0] == inventory:
            return self._encoded[1]
        encoder = TagReportEncoder(
            inventory.report.content,
            rospec_id=inventory.rospec_id,
            inventory_parameter_spec_id=inventory.inventory_parameter_spec_id,
        )
        # How many tags make a chunk: measured on one report of the first tags.
        probe = self._tags[: self._per_report]
        report_bytes = len(
            ro_access_report(0, (encoder.encode(t.epc, t.antenna, 0, 1, 0, 0, 1) for t in probe))
        )
        reports = max(1, self._chunk_bytes // report_bytes)
        per_chunk = reports * self._per_report
        chunks = [
            _encode_chunk(
                encoder, self._tags[i : i + per_chunk], self._per_report, self._spacing_us
            )
            for i in range(0, len(self._tags), per_chunk)
        ]
        _check_chunk(chunks[0], self._tags[:per_chunk], self._spacing_us)
        self._encoded = (inventory, chunks)
        self._counters.chunks = len(chunks)
        self._counters.chunk_bytes = sum(c.size for c in chunks)
        return chunks

    def _take_ids(self, count: int) -> int:
        if self._next_id + count > _MAX_ID:
            self._next_id = 1
        first = self._next_id
        self._next_id += count
        return first

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections:  # LLRP allows one client at a time
            status = ConnectionAttemptStatus.CLIENT_INITIATED_CONNECTION_EXISTS
            writer.write(reader_event_notification(self._take_ids(1), _utc_now_us(), status))
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self._counters.connections += 1
        sock = writer.get_extra_info("socket")
        if self._send_buffer is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        # Room for two chunks in the transport's own buffer before `drain` waits.
        writer.transport.set_write_buffer_limits(high=2 * self._chunk_bytes)
        session = ReaderSession(self._caps, reject_config=False)
        active = asyncio.Event()  # a ROSpec is active: stream
        keepalive_due = [float("inf")]
        try:
            writer.write(reader_event_notification(self._take_ids(1), _utc_now_us()))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._stream(writer, session, active, keepalive_due))
                await self._receive(reader, writer, session, active, keepalive_due)
        except* _ConnectionOver:
            pass
        except* OSError as errors:
            logger.info("LLRP client connection lost: %s", errors.exceptions[0])
        finally:
            self._connections.pop(task, None)
            writer.transport.abort()

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: ReaderSession,
        active: asyncio.Event,
        keepalive_due: list[float],
    ) -> NoReturn:
        """Answer requests until the session ends; raises _ConnectionOver to end the group."""
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            decoder.feed(data)
            for frame in decoder.frames():
                if isinstance(frame, MalformedFrame):
                    logger.warning("malformed LLRP frame from client: %s", frame.reason)
                    raise _ConnectionOver
                keepalive_ms = session.keepalive_ms
                answers = session.handle(frame)
                if session.inventory is not None:
                    # Encoded before the answer that starts the inventory: the client hears
                    # nothing from the reader until the reports are ready, then only reports.
                    self._chunks_for(session.inventory)
                for answer in answers:
                    writer.write(answer)
                if session.keepalive_ms != keepalive_ms:
                    interval = session.keepalive_ms / 1000
                    keepalive_due[0] = time.monotonic() + interval if interval else float("inf")
                # Reports only after the answer that made the ROSpec active has been written.
                if session.inventory is not None:
                    active.set()
                else:
                    active.clear()
                if session.closed:
                    await writer.drain()
                    raise _ConnectionOver
            await writer.drain()
        raise _ConnectionOver  # the client hung up

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        session: ReaderSession,
        active: asyncio.Event,
        keepalive_due: list[float],
    ) -> None:
        counters = self._counters
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(active.wait(), self._keepalive_wait(keepalive_due))
            self._keepalive(writer, session, keepalive_due)
            inventory = session.inventory
            if inventory is None:
                continue
            for chunk in itertools.cycle(self._chunks_for(inventory)):
                if session.inventory != inventory:
                    break
                first_id = self._take_ids(chunk.frames)
                writer.write(chunk.render(_utc_now_us() - chunk.span_us, first_id))
                counters.frames_sent += chunk.frames
                counters.tags_sent += chunk.tags
                counters.bytes_sent += chunk.size
                counters.blocked = (counters.blocked[0], time.perf_counter())
                await writer.drain()
                waited, since = counters.blocked
                counters.blocked = (waited + time.perf_counter() - since, 0.0)
                self._keepalive(writer, session, keepalive_due)

    @staticmethod
    def _keepalive_wait(keepalive_due: list[float]) -> float | None:
        due = keepalive_due[0]
        return None if due == float("inf") else max(0.0, due - time.monotonic())

    def _keepalive(
        self, writer: asyncio.StreamWriter, session: ReaderSession, keepalive_due: list[float]
    ) -> None:
        now = time.monotonic()
        if now >= keepalive_due[0] and session.keepalive_ms > 0:
            writer.write(keepalive(self._take_ids(1)))
            keepalive_due[0] = now + session.keepalive_ms / 1000


def _utc_now_us() -> int:
    return time.time_ns() // 1000


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: replay a day at a dock door to one LLRP client, flat out, until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=5084)
    parser.add_argument("--tags-per-report", type=int, default=100)
    parser.add_argument("--pool", type=int, default=20_000, help="distinct tag reports")
    args = parser.parse_args(argv)

    async def serve() -> None:
        tags = sample_tags(args.pool)
        async with ReportReplayer(tags, tags_per_report=args.tags_per_report, port=args.port):
            print(f"replaying {len(tags):,} tag reports on 127.0.0.1:{args.port}", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
