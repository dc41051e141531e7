"""A serial barcode scanner on a pseudo-terminal, scriptable for tests and the demo.

A scanner in serial (RS-232 or USB CDC) mode sends each decoded label as one burst: an optional
prefix, the AIM symbology identifier if that option is on (``]C1`` for GS1-128), the data, and a
suffix (a CR by default). The simulator writes exactly those bytes into the master side of a
pseudo-terminal at the pace of the configured baud rate; the gateway opens the slave side through
a symlink, as it would open ``/dev/serial/by-id/usb-...`` for a real scanner. Unplugging closes
the pty, so a reader sees the same hang-up as when the USB cable is pulled.

Run ``python -m simulators.scanner --link /tmp/scanner0`` to play a forklift shift
(``--help``: the options).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias, assert_never

from simulators import cli
from simulators.gs1 import sscc, sscc_label
from simulators.serial_cable import SerialCable

__all__ = [
    "Garbage",
    "ScannerSimulator",
    "ScannerUnplugged",
    "Step",
    "Type",
    "Unplug",
    "main",
    "shift_script",
]

# 8N1 framing: a start bit, eight data bits and a stop bit on the wire for every byte.
_BITS_PER_BYTE = 10
# Line time covered by one write. A USB-serial adapter hands bytes over in small bursts (its
# latency timer), so a reader sees a label split across reads, as it would with real hardware.
_BURST_S = 0.005
# The event loop cannot sleep much less than a millisecond (epoll waits in whole ms): when a
# burst is due sooner, send it now; the next one is still timed from the start of the label.
_MIN_SLEEP_S = 0.001
# AIM symbology identifier: "]", a symbology character, a modifier character (ISO/IEC 15424).
_AIM = re.compile(r"\][A-Za-z][0-9A-Za-z]")

# The shift's pallets come from one labeller: GS1's own example company prefix.
_SHIFT_COMPANY_PREFIX = "0614141"
# How often a driver pulls the trigger on the same pallet again (no beep heard, glare, habit).
_REPEAT_SCAN_CHANCE = 0.1
# The suffixes a scanner's setup sheet names (the gateway's configuration uses the same names).
_SUFFIXES = {"CR": "\r", "LF": "\n", "CRLF": "\r\n", "TAB": "\t", "ETX": "\x03"}


class ScannerUnplugged(Exception):
    """The scanner is not plugged in, or was unplugged while a label was being sent."""

    def __init__(self, path: Path, *, sent: int = 0, total: int = 0) -> None:
        detail = f" (cable pulled after {sent} of {total} bytes of the label)" if sent else ""
        super().__init__(f"scanner at {path} is unplugged{detail}")
        self.path = path
        self.sent = sent
        self.total = total


@dataclass(frozen=True, slots=True)
class Type:
    """Scan a label: wait `pause_s`, then send `code` framed (prefix, AIM id, suffix)."""

    code: str
    aim: str | None = None
    pause_s: float = 0.0

    def __post_init__(self) -> None:
        _check_non_negative("pause_s", self.pause_s)


@dataclass(frozen=True, slots=True)
class Garbage:
    """Line noise or a misconfigured scanner: wait `pause_s`, then send `data` with no framing."""

    data: bytes
    pause_s: float = 0.0

    def __post_init__(self) -> None:
        _check_non_negative("pause_s", self.pause_s)


@dataclass(frozen=True, slots=True)
class Unplug:
    """Pull the cable, wait `for_s`, plug it back in (the device path comes back)."""

    for_s: float

    def __post_init__(self) -> None:
        _check_non_negative("for_s", self.for_s)


Step: TypeAlias = Type | Garbage | Unplug


class ScannerSimulator:
    """A barcode scanner on a pseudo-terminal, reachable at a stable path (a symlink).

    Args:
        link: where the symlink to the pty goes, like ``/dev/serial/by-id/...`` for a real one.
            Its directory must exist; an existing symlink there is replaced.
        suffix: sent after every label (the scanner's "suffix" setting), CR by default.
        prefix: sent before every label.
        baudrate: paces the bytes as a UART at this rate would (8N1).
    """

    def __init__(
        self, link: Path, *, suffix: bytes = b"\r", prefix: bytes = b"", baudrate: int = 9600
    ) -> None:
        if baudrate <= 0:
            raise ValueError(f"baudrate must be positive, got {baudrate}")
        self._link = Path(link)
        self._cable = SerialCable(self._link)
        self._suffix = suffix
        self._prefix = prefix
        self._byte_s = _BITS_PER_BYTE / baudrate
        self._burst = max(1, int(_BURST_S / self._byte_s))
        # One label at a time: a scanner never interleaves two bursts.
        self._sending = asyncio.Lock()
        self._stalls = 0
        self._line_free_at = 0.0

    @property
    def path(self) -> Path:
        """The symlink the gateway opens."""
        return self._link

    @property
    def plugged(self) -> bool:
        """Whether the pty exists and the symlink points at it."""
        return self._cable.plugged

    @property
    def device(self) -> str:
        """The pty slave the symlink points at (``/dev/pts/N``), empty while unplugged."""
        return self._cable.device

    @property
    def stalls(self) -> int:
        """How often a write found the line full and had to wait for the reader to drain it."""
        return self._stalls

    def plug(self) -> None:
        """Create the pty and point the symlink at it. Does nothing if already plugged."""
        self._cable.plug()

    def unplug(self) -> None:
        """Pull the cable: remove the symlink and close the pty. Does nothing if unplugged.

        A reader of the old device gets end of file or an I/O error, and bytes it had not read
        yet are lost; opening the path fails until `plug` is called again.
        """
        self._cable.unplug()

    async def __aenter__(self) -> Self:
        self.plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()

    async def type(self, code: str, *, aim: str | None = None) -> None:
        """Scan a label: send prefix, AIM symbology id (if given), `code` and suffix as one burst.

        Raises:
            ScannerUnplugged: the scanner is unplugged, or was unplugged before the burst ended.
            ValueError: `aim` is not an AIM identifier, or `code` is not ISO 8859-1 text.
        """
        if aim is not None and not _AIM.fullmatch(aim):
            raise ValueError(f"an AIM symbology identifier looks like ']C1', got {aim!r}")
        # Scanners transmit 8-bit ISO 8859-1, which also carries GS (FNC1) as 0x1D.
        data = self._prefix + (aim or "").encode("ascii") + code.encode("latin-1") + self._suffix
        await self._send(data)

    async def send_raw(self, data: bytes) -> None:
        """Send `data` as is, with no prefix or suffix (noise, a wrong configuration).

        Raises:
            ScannerUnplugged: the scanner is unplugged, or was unplugged before the burst ended.
        """
        await self._send(data)

    async def run(self, script: Iterable[Step]) -> None:
        """Play `script` step by step.

        Raises:
            ScannerUnplugged: a label was due while the scanner was unplugged.
        """
        for step in script:
            match step:
                case Type(code=code, aim=aim, pause_s=pause_s):
                    await asyncio.sleep(pause_s)
                    await self.type(code, aim=aim)
                case Garbage(data=data, pause_s=pause_s):
                    await asyncio.sleep(pause_s)
                    await self.send_raw(data)
                case Unplug(for_s=for_s):
                    self.unplug()
                    await asyncio.sleep(for_s)
                    self.plug()
                case _:
                    assert_never(step)

    async def _send(self, data: bytes) -> None:
        async with self._sending:
            # A send that started before an unplug must not go on into the next pty.
            plug_id = self._cable.plugs
            self._check_plugged(plug_id, 0, len(data))
            view = memoryview(data)
            # The line is busy until the previous label's last byte is through.
            started = max(time.monotonic(), self._line_free_at)
            self._line_free_at = started + len(data) * self._byte_s
            sent = 0
            while sent < len(data):
                end = min(sent + self._burst, len(data))
                # A byte is at the far end of the wire one character time after it started.
                delay = started + end * self._byte_s - time.monotonic()
                if delay >= _MIN_SLEEP_S:
                    await asyncio.sleep(delay)
                while sent < end:
                    self._check_plugged(plug_id, sent, len(data))
                    try:
                        sent += self._cable.write(view[sent:end])
                    except BlockingIOError:
                        # The slave's input queue is full: the reader is not keeping up. A real
                        # scanner with hardware flow control would hold the line, as this does.
                        # The kernel marks the master writable again as the reader drains the
                        # queue (or flushes it when the port is opened).
                        self._stalls += 1
                        await self._cable.wait_writable()

    def _check_plugged(self, plug_id: int, sent: int, total: int) -> None:
        if not self._cable.plugged or self._cable.plugs != plug_id:
            raise ScannerUnplugged(self._link, sent=sent, total=total)


def shift_script(
    *,
    pallets: int,
    locations: Sequence[str],
    seed: int,
    pause_s: tuple[float, float] = (1.0, 3.0),
) -> tuple[list[Step], list[tuple[str, str]]]:
    """A forklift driver's shift: scan a pallet's SSCC label, drive, scan the location label.

    Pallet labels are GS1-128 (AIM ``]C1``), location labels plain text such as ``A-01-02``.
    Now and then the driver scans the same pallet twice. Every pause is drawn from `pause_s`.
    The same `seed` always gives the same shift.

    Returns:
        The steps, and the moves they should produce, in order, as ``(sscc, location)``.
    """
    if pallets < 0:
        raise ValueError(f"pallets must not be negative, got {pallets}")
    if not locations:
        raise ValueError("a shift needs at least one location")
    low, high = pause_s
    if not 0 <= low <= high:
        raise ValueError(f"pause_s must be (low, high) with 0 <= low <= high, got {pause_s}")
    rng = random.Random(seed)
    first_serial = rng.randrange(10**8)
    steps: list[Step] = []
    moves: list[tuple[str, str]] = []
    for number in range(pallets):
        pallet = sscc(_SHIFT_COMPANY_PREFIX, first_serial + number)
        location = rng.choice(locations)
        steps.append(Type(sscc_label(pallet), aim="]C1", pause_s=rng.uniform(low, high)))
        if rng.random() < _REPEAT_SCAN_CHANCE:
            steps.append(Type(sscc_label(pallet), aim="]C1", pause_s=rng.uniform(low, high)))
        steps.append(Type(location, pause_s=rng.uniform(low, high)))
        moves.append((pallet, location))
    return steps, moves


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _default_locations() -> list[str]:
    # Aisle-bay-level labels on the racking, as most WMS print them.
    return [
        f"{aisle}-{bay:02d}-{level:02d}" for aisle in "AB" for bay in (1, 2) for level in (1, 2)
    ]


async def _play_shift(
    scanner: ScannerSimulator, *, pallets: int, seed: int, pause_s: tuple[float, float]
) -> None:
    steps, moves = shift_script(
        pallets=pallets, locations=_default_locations(), seed=seed, pause_s=pause_s
    )
    async with scanner:
        cli.say(f"scanner plugged in at {scanner.path} -> {scanner.device}")
        for step in steps:
            await scanner.run([step])
            cli.say(f"  {step}")
        cli.say(f"shift over: {len(moves)} moves; Ctrl-C to unplug")
        for pallet, location in moves:
            cli.say(f"  expected move {pallet} -> {location}")
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: plug a scanner in at ``--link``, play a shift, stay until Ctrl-C."""
    parser = cli.parser(
        "simulators.scanner",
        "A serial barcode scanner on a pseudo-terminal, playing a forklift shift: a pallet's"
        " SSCC label (GS1-128), then a location label, for every pallet.",
    )
    cli.add_link(parser)
    parser.add_argument("--pallets", type=int, default=10, help="pallets to move")
    cli.add_seed(parser)
    parser.add_argument("--baudrate", type=int, default=9600, help="line speed (8N1)")
    parser.add_argument(
        "--suffix", default="CR", help="sent after every label: CR, LF, CRLF, TAB, ETX or text"
    )
    parser.add_argument("--prefix", default="", help="sent before every label")
    parser.add_argument(
        "--pause-s",
        type=cli.non_negative,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("LOW", "HIGH"),
        help="seconds between scans, drawn from [LOW, HIGH]",
    )
    args = parser.parse_args(argv)
    suffix = _SUFFIXES.get(args.suffix.upper(), args.suffix).encode("latin-1")
    scanner = ScannerSimulator(
        args.link, suffix=suffix, prefix=args.prefix.encode("latin-1"), baudrate=args.baudrate
    )
    low, high = args.pause_s
    return cli.run(_play_shift(scanner, pallets=args.pallets, seed=args.seed, pause_s=(low, high)))


if __name__ == "__main__":
    raise SystemExit(main())
