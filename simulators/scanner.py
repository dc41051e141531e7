"""A serial barcode scanner on a pseudo-terminal, scriptable for tests and the demo.

A scanner in serial (RS-232 or USB CDC) mode sends each decoded label as one burst: an optional
prefix, the AIM symbology identifier if that option is on (``]C1`` for GS1-128), the data, and a
suffix (a CR by default). The simulator writes exactly those bytes into the master side of a
pseudo-terminal at the pace of the configured baud rate; the gateway opens the slave side through
a symlink, as it would open ``/dev/serial/by-id/usb-...`` for a real scanner. Unplugging closes
the pty, so a reader sees the same hang-up as when the USB cable is pulled.

Run ``python -m simulators.scanner --link /tmp/scanner0`` to play a forklift shift.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import time
import tty
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeAlias, assert_never

from simulators.gs1 import sscc, sscc_label

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
        self._suffix = suffix
        self._prefix = prefix
        self._byte_s = _BITS_PER_BYTE / baudrate
        self._burst = max(1, int(_BURST_S / self._byte_s))
        self._master: int | None = None
        self._slave: int | None = None
        self._device = ""
        # Bumped on every plug: a send that started before an unplug must not write into the
        # next pty (or into whatever file reuses the old descriptor number).
        self._plug_id = 0
        self._waiting: tuple[asyncio.AbstractEventLoop, int, asyncio.Future[None]] | None = None
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
        return self._master is not None

    @property
    def device(self) -> str:
        """The pty slave the symlink points at (``/dev/pts/N``), empty while unplugged."""
        return self._device

    @property
    def stalls(self) -> int:
        """How often a write found the line full and had to wait for the reader to drain it."""
        return self._stalls

    def plug(self) -> None:
        """Create the pty and point the symlink at it. Does nothing if already plugged."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        try:
            # Raw: no echo back to the master, no CR/LF translation, every byte passes as is.
            tty.setraw(slave)
            os.set_blocking(master, False)
            device = os.ttyname(slave)
            self._point_link_at(device)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._device = master, slave, device
        self._plug_id += 1

    def unplug(self) -> None:
        """Pull the cable: remove the symlink and close the pty. Does nothing if unplugged.

        A reader of the old device gets end of file or an I/O error, and bytes it had not read
        yet are lost; opening the path fails until `plug` is called again.
        """
        master, slave = self._master, self._slave
        if master is None or slave is None:
            return
        self._master = self._slave = None
        if self._waiting is not None:
            # Release a send blocked on a full line before its descriptor number is freed.
            loop, fd, waiter = self._waiting
            self._waiting = None
            loop.remove_writer(fd)
            if not waiter.done():
                waiter.set_result(None)
        try:
            if os.readlink(self._link) == self._device:
                self._link.unlink()
        except OSError:
            pass  # already gone, or now belongs to someone else: not ours to remove
        self._device = ""
        # Closing the master hangs up the slave for everyone who has it open.
        os.close(master)
        os.close(slave)

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
            plug_id = self._plug_id
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
                    master = self._check_plugged(plug_id, sent, len(data))
                    try:
                        sent += os.write(master, view[sent:end])
                    except BlockingIOError:
                        # The slave's input queue is full: the reader is not keeping up. A real
                        # scanner with hardware flow control would hold the line, as this does.
                        self._stalls += 1
                        await self._wait_writable(master)

    def _check_plugged(self, plug_id: int, sent: int, total: int) -> int:
        if self._master is None or self._plug_id != plug_id:
            raise ScannerUnplugged(self._link, sent=sent, total=total)
        return self._master

    async def _wait_writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, waiter)
        self._waiting = (loop, fd, waiter)
        try:
            # The kernel marks the master writable again as the reader drains the slave's
            # queue (or flushes it when the port is opened).
            await waiter
        finally:
            # If `unplug` came first it has removed the writer, and `fd` may already be reused.
            if self._waiting is not None and self._waiting[2] is waiter:
                loop.remove_writer(fd)
                self._waiting = None

    def _point_link_at(self, device: str) -> None:
        point_link_at(self._link, device)


def point_link_at(link: Path, device: str) -> None:
    """Point the symlink `link` at a pty `device`, replacing an older link atomically.

    The new link is made beside the old one and renamed over it: a driver never sees the path
    missing or half-made while a device is re-plugged. A regular file there is not replaced.
    """
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
    staging = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    staging.symlink_to(device)
    try:
        os.replace(staging, link)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


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


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


def _default_locations() -> list[str]:
    # Aisle-bay-level labels on the racking, as most WMS print them.
    return [
        f"{aisle}-{bay:02d}-{level:02d}" for aisle in "AB" for bay in (1, 2) for level in (1, 2)
    ]


async def _play_shift(
    link: Path, *, pallets: int, seed: int, baudrate: int, pause_s: tuple[float, float]
) -> None:
    steps, moves = shift_script(
        pallets=pallets, locations=_default_locations(), seed=seed, pause_s=pause_s
    )
    async with ScannerSimulator(link, baudrate=baudrate) as scanner:
        print(f"scanner plugged in at {scanner.path} -> {scanner.device}", flush=True)
        for step in steps:
            await scanner.run([step])
            print(f"  {step}", flush=True)
        print(f"shift over: {len(moves)} moves; Ctrl-C to unplug", flush=True)
        for pallet, location in moves:
            print(f"  expected move {pallet} -> {location}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: plug a scanner in at ``--link``, play a shift, stay until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.scanner",
        description="A serial barcode scanner on a pseudo-terminal, playing a forklift shift.",
    )
    parser.add_argument("--link", type=Path, required=True, help="symlink to create (the port)")
    parser.add_argument("--pallets", type=int, default=10, help="pallets to move (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shift (default 0)")
    parser.add_argument("--baudrate", type=int, default=9600, help="line speed (default 9600)")
    parser.add_argument(
        "--pause-s",
        type=float,
        nargs=2,
        default=(1.0, 3.0),
        metavar=("LOW", "HIGH"),
        help="seconds between scans, drawn from [LOW, HIGH] (default 1 3)",
    )
    args = parser.parse_args(argv)
    # Ctrl-C cancels the shift; leaving the `async with` unplugs the scanner and removes the link.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            _play_shift(
                args.link,
                pallets=args.pallets,
                seed=args.seed,
                baudrate=args.baudrate,
                pause_s=(args.pause_s[0], args.pause_s[1]),
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
