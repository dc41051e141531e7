"""Sans-IO barcode handling: split a serial byte stream into labels and understand each label.

`BarcodeFramer.feed(data)` returns the complete frames in `data` (and keeps the rest);
`decode_label(...)` turns one frame into a `Scan` or a `RejectedScan` with its reason.
GS1 element strings are parsed by biip; location labels are recognised by the site's pattern.
biip is imported with the first label that is not a location: loading its GS1 prefix tables
takes 10-16 MiB and about 60 ms, which a gateway without scans never spends.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.domain import RejectedScan, Scan, ScanKind

if TYPE_CHECKING:
    import biip
    from biip.gs1_messages import GS1Message

# AIM symbology identifier: "]" + code character + modifier, e.g. ]C1 for GS1-128,
# ]d2 for GS1 DataMatrix, ]Q3 for GS1 QR, ]E0 for EAN-13.
_AIM = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
# GS1-128, GS1 DataBar, GS1 DataMatrix, GS1 QR, GS1 DotCode: element strings only.
_GS1_SYMBOLOGIES = frozenset({"]C1", "]e0", "]d2", "]Q3", "]J1"})
_SSCC_LENGTH = 18
_GTIN_LENGTHS = frozenset({8, 12, 13, 14})
# A label may carry printable text and the GS1 group separator (FNC1 in transmission).
_PRINTABLE = re.compile(r"^[\x1d\x20-\x7e]+$")


@dataclass(frozen=True, slots=True)
class Frame:
    """One label as it came off the line, suffix removed."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Overrun:
    """Bytes discarded because no suffix came within `max_length` bytes."""

    discarded: int


class BarcodeFramer:
    """Splits a byte stream on a configured suffix, with an optional fixed prefix to strip."""

    def __init__(self, *, suffix: bytes, prefix: bytes = b"", max_length: int = 512) -> None:
        if not suffix:
            raise ValueError("suffix must not be empty")
        self._suffix = suffix
        self._prefix = prefix
        self._max = max_length
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | Overrun]:
        """Add `data`; return every complete frame, and one `Overrun` per runaway label.

        A label longer than `max_length` (prefix included) is reported once and then skipped
        up to and including its suffix, however the bytes were split.
        """
        self._buffer += data
        out: list[Frame | Overrun] = []
        while True:
            end = self._buffer.find(self._suffix)
            if end < 0:
                keep = self._suffix_start()
                runaway = len(self._buffer) - keep
                if self._discarding or runaway > self._max:
                    if not self._discarding:
                        out.append(Overrun(runaway))
                        self._discarding = True
                    del self._buffer[:runaway]
                return out
            frame = bytes(self._buffer[:end])
            del self._buffer[: end + len(self._suffix)]
            if self._discarding:
                self._discarding = False
                continue
            if len(frame) > self._max:
                out.append(Overrun(len(frame)))
                continue
            if self._prefix and frame.startswith(self._prefix):
                frame = frame[len(self._prefix) :]
            if frame.strip(b"\r\n\x00"):
                out.append(Frame(frame))

    def _suffix_start(self) -> int:
        """Length of the buffer's tail that could be the start of a suffix."""
        for size in range(min(len(self._suffix) - 1, len(self._buffer)), 0, -1):
            if self._buffer.endswith(self._suffix[:size]):
                return size
        return 0

    @property
    def buffered(self) -> int:
        """Bytes of a label not complete yet (a runaway one being skipped: none)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget a partial frame (the port was reopened)."""
        self._buffer.clear()
        self._discarding = False


@dataclass(frozen=True, slots=True)
class LabelRules:
    """What the site's labels look like."""

    location_pattern: re.Pattern[str]
    aim_symbology: bool = False


def decode_label(
    data: bytes, *, device_id: str, at: dt.datetime, rules: LabelRules
) -> Scan | RejectedScan:
    """Understand one label: an SSCC, a GTIN with its attributes, or a location."""
    raw = data.decode("latin-1").strip("\r\n\x00")

    def reject(reason: str) -> RejectedScan:
        return RejectedScan(device_id=device_id, at=at, raw=raw, reason=reason)

    if not _PRINTABLE.match(raw):
        return reject("label has non-printable characters (garbage on the line?)")
    symbology: str | None = None
    body = raw
    aim = _AIM.match(raw)
    if aim:
        symbology, body = aim.group(0), raw[3:]
    elif rules.aim_symbology:
        return reject("expected an AIM symbology identifier (]Xn) before the label")
    if not body:
        return reject("empty label")

    if rules.location_pattern.fullmatch(body):
        return Scan(device_id, at, raw, ScanKind.LOCATION, symbology, location=body)

    # Symbologies that always carry GS1 element strings, and those that carry a bare GTIN.
    gs1_only = symbology in _GS1_SYMBOLOGIES
    if (symbology is None or gs1_only) and body.isdigit() and len(body) == _SSCC_LENGTH:
        body = "00" + body  # 18 digits alone are an SSCC (no element string is 18 digits long)
    import biip  # the first label loads it (see the module docstring)

    try:
        result = biip.parse(body)
    except Exception as err:  # noqa: BLE001 - biip reports errors in fields; anything else is a bad label
        return reject(f"unparseable label: {err}")

    # A bare EAN/UPC also parses as an element string by accident (4006381333931 reads as
    # AI 400): without a symbology identifier, digits of a GTIN length are a GTIN.
    bare_gtin = symbology is None and body.isdigit() and len(body) in _GTIN_LENGTHS
    if bare_gtin and result.gtin is not None:
        return Scan(device_id, at, raw, ScanKind.ITEM, symbology, gtin=result.gtin.value)
    message = result.gs1_message
    if message is not None and message.element_strings and (gs1_only or symbology is None):
        return _from_gs1(message, result, device_id, at, raw, symbology, reject)
    if gs1_only:
        detail = result.gs1_message_error or "no element strings"
        return reject(f"invalid GS1 element string: {detail}")
    if result.gtin is not None:
        return Scan(device_id, at, raw, ScanKind.ITEM, symbology, gtin=result.gtin.value)
    errors = [e for e in (result.sscc_error, result.gtin_error, result.gs1_message_error) if e]
    check = [e for e in errors if "check digit" in e]
    if check:
        return reject(f"bad check digit: {check[0]}")
    if result.gs1_message_error and body[:2].isdigit():
        return reject(f"invalid GS1 element string: {result.gs1_message_error}")
    return reject("not a GS1 label, and not a location label of this site")


def _from_gs1(
    message: GS1Message,
    result: biip.ParseResult,
    device_id: str,
    at: dt.datetime,
    raw: str,
    symbology: str | None,
    reject: Callable[[str], RejectedScan],
) -> Scan | RejectedScan:
    fields: dict[str, str] = {}
    expiry: dt.date | None = None
    for element in message.element_strings:
        fields[element.ai.ai] = element.value
        if element.ai.ai == "17":
            if element.date is None:
                return reject(f"invalid expiry date {element.value!r} in AI (17)")
            expiry = element.date
    if "00" in fields:
        if result.sscc is None:
            return reject(f"bad check digit: {result.sscc_error or 'invalid SSCC'}")
        return Scan(device_id, at, raw, ScanKind.PALLET, symbology, sscc=result.sscc.value)
    if "414" in fields:
        gln = next(e for e in message.element_strings if e.ai.ai == "414").gln
        if gln is None:
            return reject(f"bad check digit in GLN {fields['414']!r} (AI 414)")
        location = fields["414"] + (f".{fields['254']}" if "254" in fields else "")
        return Scan(device_id, at, raw, ScanKind.LOCATION, symbology, location=location)
    gtin = fields.get("01") or fields.get("02")
    if gtin is None:
        return reject("GS1 label carries neither an SSCC, a GTIN nor a location")
    if result.gtin is None:
        return reject(f"bad check digit: {result.gtin_error or 'invalid GTIN'}")
    count = fields.get("37") or fields.get("30")
    return Scan(
        device_id,
        at,
        raw,
        ScanKind.ITEM,
        symbology,
        gtin=result.gtin.value,
        lot=fields.get("10"),
        expiry=expiry,
        serial=fields.get("21"),
        count=int(count) if count and count.isdigit() else None,
    )
