"""Sans-IO codec for Mettler Toledo MT-SICS level 0/1, as spoken by scale indicators.

MT-SICS is a line protocol over RS-232 or TCP: the host sends an upper-case command closed by
CR LF and the scale answers with one line per command (SIR: one line per reading until the
next command). `encode(command)` gives the bytes to send; `SicsDecoder.feed(data)` takes
whatever the transport delivered and returns the complete replies in it, keeping a partial
line for the next call. No IO happens here, so the same code serves serial and TCP drivers
and the tests.

Replies understood (level 0/1):

    S S     12.345 kg   stable weight (S, SI, SIR)
    S D     12.340 kg   dynamic weight, the scale is still moving (SI, SIR)
    S I                 command not executable now (busy, or no stability before time-out)
    S + / S -           overload / underload
    Z A                 zeroed;  Z I not executed;  Z + / Z - outside the zero range
    ES / ET / EL        syntax error / transmission error / logical error (command known
                        but not allowed now)

Anything else on the line becomes `Garbage` with the reason, never an exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

__all__ = [
    "ErrorReply",
    "Garbage",
    "Reply",
    "ScaleStatus",
    "SicsDecoder",
    "WeightReply",
    "ZeroReply",
    "encode",
    "format_weight",
]

Command = Literal["S", "SI", "SIR", "Z", "@"]
_COMMANDS: Final = frozenset({"S", "SI", "SIR", "Z", "@"})

# Weight line: "S", the status S (stable) or D (dynamic), the value right-aligned in a
# 10-character field (so the gap before it varies with the number of digits), one space and
# the unit. Some indicators pad differently or put a "+" on positive values: be liberal.
_WEIGHT: Final = re.compile(
    r"S[ \t]+(?P<status>[SD])[ \t]+(?P<value>[-+]?[0-9]+(?:\.[0-9]*)?|[-+]?\.[0-9]+)"
    r"[ \t]+(?P<unit>[^ \t0-9+\-.][^ \t]*)"
)
_STATUS: Final = re.compile(r"S[ \t]+(?P<code>[I+\-])")
_ZERO: Final = re.compile(r"Z[ \t]+(?P<code>[AI+\-])")
_ERROR: Final = re.compile(r"E[STL]")
# Printable ASCII plus tab; anything else on the line is noise (baud rate mismatch, a cable
# being plugged in) and is not worth guessing at.
_PRINTABLE: Final = re.compile(rb"[\t\x20-\x7e]*")
# The value field of a weight reply is 10 characters wide, right-aligned.
_VALUE_WIDTH: Final = 10


@dataclass(frozen=True, slots=True)
class WeightReply:
    """A weight: `stable` is False for an "S D" (dynamic) reading."""

    stable: bool
    value: Decimal
    unit: str
    raw: str


@dataclass(frozen=True, slots=True)
class ScaleStatus:
    """A weight command answered without a weight: "I" busy, "+" overload, "-" underload."""

    code: str
    raw: str


@dataclass(frozen=True, slots=True)
class ZeroReply:
    """The answer to Z: "A" done (`ok`), "I" not executed, "+" / "-" outside the zero range."""

    ok: bool
    code: str
    raw: str


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A general error: "ES" syntax, "ET" transmission, "EL" logical error."""

    code: str
    raw: str


@dataclass(frozen=True, slots=True)
class Garbage:
    """A line that is not a reply this codec understands, and why."""

    raw: bytes
    reason: str


Reply = WeightReply | ScaleStatus | ZeroReply | ErrorReply | Garbage


def encode(command: Command) -> bytes:
    """The bytes for `command`: S stable weight, SI immediate, SIR repeated, Z zero, @ reset."""
    if command not in _COMMANDS:
        raise ValueError(f"unsupported MT-SICS command {command!r}")
    return command.encode("ascii") + b"\r\n"


def format_weight(value: Decimal, unit: str, *, stable: bool) -> bytes:
    """A weight reply line as a scale sends it (for simulators and tests)."""
    if not value.is_finite():
        raise ValueError(f"a scale sends finite weights, not {value}")
    if not unit.isascii() or not unit.isalpha():
        raise ValueError(f"unit must be ASCII letters, got {unit!r}")
    status = "S" if stable else "D"
    # Fixed-point ("f") keeps the scale's resolution (12.340 stays 12.340) and never
    # writes an exponent (1E+3 becomes 1000), which no indicator sends.
    return f"S {status} {value:>{_VALUE_WIDTH}f} {unit}\r\n".encode("ascii")


class SicsDecoder:
    """Splits the scale's byte stream into lines and each line into a `Reply`.

    Args:
        max_line: longest line accepted, without its terminator. A longer line is reported
            once as `Garbage` (its first `max_line` bytes) and skipped up to the next line end.
    """

    def __init__(self, *, max_line: int = 256) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line}")
        self._max = max_line
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Reply]:
        """Add `data`; return every reply completed by it. Never raises."""
        self._buffer += data
        out: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                # Room for max_line bytes plus the CR of a CR LF still to come; beyond that
                # the line is overlong whatever follows, so report it now and bound memory.
                if not self._discarding and len(self._buffer) > self._max + 1:
                    out.append(self._overlong(bytes(self._buffer)))
                    self._discarding = True
                if self._discarding:
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                # The tail of an overlong line, already reported: resynchronised from here.
                self._discarding = False
                continue
            # MT-SICS ends lines with CR LF; a bare LF (some converters and gateways strip
            # the CR) is accepted too.
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max:
                out.append(self._overlong(line))
                continue
            reply = _parse_line(line)
            if reply is not None:
                out.append(reply)

    def reset(self) -> None:
        """Forget a partial line (the port was reopened or the connection replaced)."""
        self._buffer.clear()
        self._discarding = False

    def _overlong(self, line: bytes) -> Garbage:
        return Garbage(line[: self._max], f"line longer than {self._max} bytes")


def _parse_line(line: bytes) -> Reply | None:
    """One line without its terminator; None for a blank line (idle padding, not a reply)."""
    if _PRINTABLE.fullmatch(line) is None:
        return Garbage(line, "line has bytes that are not printable ASCII (noise on the line?)")
    raw = line.decode("ascii")
    text = raw.strip(" \t")
    if not text:
        return None
    if match := _WEIGHT.fullmatch(text):
        return WeightReply(
            stable=match["status"] == "S",
            value=Decimal(match["value"]),
            unit=match["unit"],
            raw=raw,
        )
    if match := _STATUS.fullmatch(text):
        return ScaleStatus(match["code"], raw)
    if match := _ZERO.fullmatch(text):
        return ZeroReply(ok=match["code"] == "A", code=match["code"], raw=raw)
    if _ERROR.fullmatch(text):
        return ErrorReply(text, raw)
    return Garbage(line, _why_not(text))


def _why_not(text: str) -> str:
    """The reason a printable line is not a reply we understand."""
    head = text.split(maxsplit=1)[0]
    if head == "S":
        return "S reply that is neither a weight (S S / S D <value> <unit>) nor S I / S + / S -"
    if head == "Z":
        return "Z reply other than Z A / Z I / Z + / Z -"
    if head.startswith("E") and len(head) <= len("ES"):
        return "error reply other than ES / ET / EL"
    if head == "I4":
        return "I4 reply (the serial number sent after @ reset) is not decoded"
    return "not an MT-SICS weight, zero or error reply"
