"""A Mettler Toledo MT-SICS scale on a pseudo-terminal, scriptable for tests and the demo.

The gateway opens the slave side of the pty through a stable symlink, as it would open
``/dev/serial/by-id/usb-...`` for a real indicator. The simulator reads commands line by line
(CR LF) from the master side and answers as a level 0/1 indicator does:

    S     stable weight: answered once the reading is stable, "S I" if it does not settle
          within `stable_timeout_s`
    SI    immediate weight: "S S" (stable) or "S D" (in motion)
    SIR   an SI answer every 0.1 s until the next command
    Z     "Z A" zeroed, "Z I" while in motion
    @     reset: ``I4 A "<serial>"``
    other "ES" (syntax error)

Loads are scripted: `place` puts a load on the platform (the reading overshoots and settles
with noise, "S D" until it is stable), `remove` takes it off, `overload` / `underload` make
the weight replies "S +" / "S -". Faults: `silence` (commands are read and never answered),
`garbage` (a line of random bytes), `unplug` (the pty is closed, as when the cable is pulled).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
import tty
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from gateway.drivers.sics import format_weight
from simulators.scanner import point_link_at

__all__ = ["SicsScaleSimulator"]

# SIR repeats an SI answer this often (a real indicator: every display update).
_SIR_PERIOD_S: Final = 0.1
# How often S looks again whether the reading has settled.
_STABLE_POLL_S: Final = 0.02
# Display resolution: the reading is reported in steps of 10 g.
_RESOLUTION: Final = Decimal("0.01")
# Commands waiting to be answered; a real indicator's input buffer is small too. When it is
# full, further commands are dropped (the host sees no answer, as with a real overrun).
_MAX_PENDING: Final = 16
_READ_SIZE: Final = 1024


class SicsScaleSimulator:
    """An MT-SICS scale on a pseudo-terminal, reachable at a stable path (a symlink).

    Args:
        link: where the symlink to the pty goes. Its directory must exist; an existing symlink
            there is replaced.
        serial_number: sent in the ``I4`` line after a reset (``@``).
        stable_timeout_s: how long ``S`` waits for a stable reading before answering "S I".
        seed: seeds the settling noise and the garbage bytes.
    """

    def __init__(
        self,
        link: Path,
        *,
        serial_number: str = "B123456789",
        stable_timeout_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        self._link = Path(link)
        self._serial = serial_number
        self._stable_timeout_s = stable_timeout_s
        self._rng = random.Random(seed)
        self._clock: Callable[[], float] = time.monotonic
        self._master: int | None = None
        self._slave: int | None = None
        self._device = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox = bytearray()
        self._commands: asyncio.Queue[str] = asyncio.Queue(_MAX_PENDING)
        self._server: asyncio.Task[None] | None = None
        self._silent = False
        # The load: the reading moves from `_from_kg` to `_to_kg` over `_settle_s` from `_t0`.
        self._from_kg = 0.0
        self._to_kg = 0.0
        self._t0 = -math.inf
        self._settle_s = 0.0
        self._zero_kg = 0.0
        self._limit: str | None = None  # "+" overload, "-" underload, None in range
        self.commands_received = 0

    @property
    def path(self) -> Path:
        """The stable path (the symlink) a driver opens."""
        return self._link

    @property
    def device(self) -> str:
        """The pty slave the symlink points at (``/dev/pts/N``), empty while unplugged."""
        return self._device

    # --- the cable ---------------------------------------------------------------------------

    def plug(self) -> None:
        """Create the pty, point the symlink at it and start listening. Idempotent."""
        if self._master is not None:
            return
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            # Raw: no echo back to the driver, no CR/LF translation.
            tty.setraw(slave)
            os.set_blocking(master, False)
            device = os.ttyname(slave)
            self._point_link_at(device)
            loop.add_reader(master, self._on_readable)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._device, self._loop = master, slave, device, loop
        self._inbox.clear()

    def unplug(self) -> None:
        """Pull the cable: stop listening, remove the symlink, close the pty. Idempotent."""
        master, slave = self._master, self._slave
        if master is None or slave is None:
            return
        self._master = self._slave = None
        if self._loop is not None:
            self._loop.remove_reader(master)
        try:
            if os.readlink(self._link) == self._device:
                self._link.unlink()
        except OSError:
            pass  # already gone, or now someone else's: not ours to remove
        self._device = ""
        while not self._commands.empty():
            self._commands.get_nowait()
        # Closing the master hangs up the slave for the driver that has it open.
        os.close(master)
        os.close(slave)

    async def __aenter__(self) -> Self:
        self.plug()
        self._server = asyncio.get_running_loop().create_task(
            self._serve(), name=f"sics-scale-sim[{self._link.name}]"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server
            self._server = None
        self.unplug()

    # --- the script --------------------------------------------------------------------------

    def place(self, kg: float, settle_s: float = 1.0) -> None:
        """Put a load of `kg` (gross) on the platform; the reading settles within `settle_s`."""
        if settle_s < 0:
            raise ValueError(f"settle_s must not be negative, got {settle_s}")
        now = self._clock()
        self._from_kg = self._gross(now)
        self._to_kg = kg
        self._t0 = now
        self._settle_s = settle_s
        self._limit = None

    def remove(self, settle_s: float = 0.5) -> None:
        """Take everything off the platform."""
        self.place(0.0, settle_s)

    def overload(self) -> None:
        """More than the scale's capacity: weight replies become "S +" until the next load."""
        self._limit = "+"

    def underload(self) -> None:
        """Below the scale's range (platform lifted): weight replies become "S -"."""
        self._limit = "-"

    def silence(self, on: bool) -> None:
        """While on, commands are read and never answered (a hung indicator)."""
        self._silent = on

    def garbage(self) -> None:
        """Send one line of random bytes (noise, a baud-rate mismatch)."""
        # Bytes with the high bit set: never a line end, never printable ASCII.
        noise = bytes(self._rng.randrange(0x80, 0x100) for _ in range(self._rng.randint(3, 12)))
        self._write(noise + b"\r\n")

    # --- the indicator -----------------------------------------------------------------------

    def _gross(self, now: float) -> float:
        """The load cell's reading: a damped oscillation around the load, with noise."""
        elapsed = now - self._t0
        if elapsed >= self._settle_s:
            return self._to_kg
        u = elapsed / self._settle_s
        delta = self._to_kg - self._from_kg
        # Starts at the old reading, overshoots by about a fifth of the step near u = 1/3.
        swing = -delta * math.exp(-5.0 * u) * math.cos(3.0 * math.pi * u)
        noise = self._rng.gauss(0.0, 0.002 * abs(delta) + 0.02) * (1.0 - u)
        return self._to_kg + swing + noise

    def _stable(self, now: float) -> bool:
        return now - self._t0 >= self._settle_s

    def _weight_line(self) -> bytes:
        if self._limit is not None:
            return f"S {self._limit}\r\n".encode("ascii")
        now = self._clock()
        net = Decimal(repr(self._gross(now) - self._zero_kg)).quantize(_RESOLUTION)
        return format_weight(net, "kg", stable=self._stable(now))

    async def _serve(self) -> None:
        """Answer commands one at a time, in order."""
        command: str | None = None
        while True:
            if command is None:
                command = await self._commands.get()
            if self._silent:
                command = None
                continue
            command = await self._answer(command)

    async def _answer(self, command: str) -> str | None:
        """Answer `command`; return a command that arrived meanwhile and ended it (SIR)."""
        match command:
            case "SI":
                self._write(self._weight_line())
            case "S":
                deadline = self._clock() + self._stable_timeout_s
                while self._limit is None and not self._stable(self._clock()):
                    if self._clock() >= deadline:
                        self._write(b"S I\r\n")
                        return None
                    await asyncio.sleep(_STABLE_POLL_S)
                self._write(self._weight_line())
            case "SIR":
                while not self._silent:
                    self._write(self._weight_line())
                    try:
                        return await asyncio.wait_for(self._commands.get(), _SIR_PERIOD_S)
                    except TimeoutError:
                        continue
            case "Z":
                now = self._clock()
                if self._limit is not None or not self._stable(now):
                    self._write(b"Z I\r\n")
                else:
                    self._zero_kg = self._gross(now)
                    self._write(b"Z A\r\n")
            case "@":
                self._write(f'I4 A "{self._serial}"\r\n'.encode("ascii"))
            case _:
                self._write(b"ES\r\n")
        return None

    def _on_readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            return  # nobody has the slave open right now: nothing to read
        self._inbox += data
        while (end := self._inbox.find(b"\n")) >= 0:
            line = bytes(self._inbox[:end]).rstrip(b"\r").strip()
            del self._inbox[: end + 1]
            if not line:
                continue
            self.commands_received += 1
            # On an input overrun the command is lost and the host times out.
            with contextlib.suppress(asyncio.QueueFull):
                self._commands.put_nowait(line.decode("ascii", "replace"))
        if len(self._inbox) > _READ_SIZE:
            self._inbox.clear()  # no line end in sight: noise, not a command

    def _write(self, data: bytes) -> None:
        """Write a line; if the driver stops reading and the line fills up, the rest is lost."""
        master = self._master
        if master is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(master, view) :]
            except (BlockingIOError, OSError):
                return

    def _point_link_at(self, device: str) -> None:
        point_link_at(self._link, device)
