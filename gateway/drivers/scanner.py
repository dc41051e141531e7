"""Serial barcode scanner driver (pyserial-asyncio-fast).

Reads the port, frames labels with the configured suffix, decodes each one and hands the scan
to the rules' inbox. When the port fails or disappears, `run()` raises `DeviceError`; the
supervisor reopens it with backoff, so a scanner that is replugged is picked up again.

Back-pressure: the port is read only when the driver has handed over every label it read
before, one read of the transport (at most 1 KiB) at a time; nothing is read ahead. While a
scan waits for room in the inbox (a full outbox holds the rules, the rules hold the inbox), the
rest waits in the kernel's tty buffer and then in the scanner (flow control; one without it
buffers or beeps), not in the gateway's memory. (asyncio's `StreamReader`, which
pyserial-asyncio-fast offers, would read on until it held 128 KiB.)

Time stamps: a label is stamped when it is read, except after a hold. Once a scan has waited
for room, the labels read next, those that waited at the device (read until the line has been
quiet for `BACKLOG_IDLE_S`), are stamped with when the hold began, a microsecond apart in the
order read, and carry when they were read (`Scan.read_at`). So the time held does not count:
a pallet read before the hold and its location typed during it make one move, and so do a
pallet typed during the hold and its location typed after it (the move rule times a pallet out
from `read_at`). While that backlog is read the rules' event time stays at the hold's start
(`EventSink.backlog`), so no timeout comes due on a location still waiting at the device.

Stop (the task cancelled): the driver reads what the kernel's tty buffer holds, since closing
the port discards it (until the line is quiet, at most `STOP_READ_S`), and hands every label it
has read to the inbox at once, beyond its bound (`EventSink.keep`). The bytes of a label cut
short are logged. What the scanner still holds stays there, for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import serial
import serial_asyncio_fast
import structlog

from gateway.config import BarcodeScannerDevice
from gateway.domain import DeviceGap, Event, RejectedScan, Scan
from gateway.drivers.barcode import BarcodeFramer, Frame, LabelRules, Overrun, decode_label
from gateway.drivers.base import DriverContext, EventSink
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

log = structlog.get_logger("gateway.drivers.scanner")

KIND = "barcode_scanner"

BACKLOG_IDLE_S: Final = 0.1
"""A line quiet this long after a hold has sent what it held (a scanner sends it back to back;
a forklift driver takes longer than this between two labels)."""

STOP_READ_S: Final = 1.0
"""At a stop, how long the driver may read what the kernel holds before closing the port."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Hold:
    """A hold: when a scan first had to wait for room."""

    at: dt.datetime  # on the gateway's clock
    since: float  # monotonic


class _PortIntake(asyncio.Protocol):
    """The port's bytes, read from the transport only when asked for: nothing read ahead."""

    def __init__(self) -> None:
        self._transport: serial_asyncio_fast.SerialTransport | None = None
        self._data = bytearray()
        self._waiter: asyncio.Future[bool] | None = None
        self._lost = False
        self._error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, serial_asyncio_fast.SerialTransport)
        self._transport = transport
        self._wake()

    def data_received(self, data: bytes) -> None:
        self._data += data
        if self._transport is not None:
            self._transport.pause_reading()  # until the driver asks for more
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._error = True, exc
        self._wake()

    async def read(self, port: str) -> bytes:
        """The next bytes from the port; raises `DeviceError` when it failed or closed."""
        while not self._data:
            await self._wait(port, None)
        return self._take()

    async def read_within(self, port: str, timeout: float) -> bytes | None:
        """The next bytes if the line sends any within `timeout`; None: it is quiet."""
        while not self._data:
            if not await self._wait(port, timeout) and not self._data and not self._queued():
                return None
        return self._take()

    def _take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data

    async def _wait(self, port: str, timeout: float | None) -> bool:
        """Read once more; False when `timeout` passed first."""
        if self._lost:
            if self._error is not None:
                raise DeviceError(f"{port} failed: {self._error}") from self._error
            raise DeviceError(f"{port} closed (scanner unplugged?)")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter, False)
        if self._transport is not None:  # else it reads as soon as it is made
            self._transport.resume_reading()
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _queued(self) -> int:
        """Bytes the kernel holds for the port (its input queue), not read yet."""
        transport = self._transport
        if transport is None or transport.serial is None:
            return 0
        try:
            return int(transport.serial.in_waiting)
        except (OSError, serial.SerialException):
            return 0

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter, True)


def _resolve(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


class BarcodeScanner:
    """One serial scanner. `run()` reads until the port fails or the task is cancelled."""

    def __init__(
        self,
        config: BarcodeScannerDevice,
        *,
        labels: LabelRules,
        sink: EventSink,
        health: DeviceHealth,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.config = config
        self._labels = labels
        self._sink = sink
        self._health = health
        self._clock = clock
        self.bytes_read = 0  # from the port, since the gateway started
        self._pending: deque[Event] = deque()  # read, not handed over yet (one read's worth)
        self._hold: _Hold | None = None
        self._held_labels = 0  # labels stamped from the hold so far

    @property
    def held(self) -> bool:
        """Whether a scan waits for room, or what the scanner sent meanwhile is being read."""
        return self._hold is not None

    async def run(self) -> None:
        """Open the port and read labels until it fails (raises `DeviceError`)."""
        transport = self.config.transport
        intake = _PortIntake()
        try:
            serial_transport, _ = await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(),
                lambda: intake,
                transport.port,
                baudrate=transport.baudrate,
                bytesize=transport.bytesize,
                parity=transport.parity,
                stopbits=transport.stopbits,
            )
        except (OSError, serial.SerialException) as err:
            raise DeviceError(f"cannot open {transport.port}: {err}") from err
        self._health.connected()
        # What was scanned before the port (re)opened must not be paired with what follows.
        await self._sink.put(DeviceGap(self.config.id, self._clock(), "serial port opened"))
        framing = self.config.framing
        framer = BarcodeFramer(
            suffix=framing.suffix_bytes,
            prefix=framing.prefix.encode("latin-1"),
            max_length=framing.max_length,
        )
        self._hold = None
        try:
            await self._read(intake, framer)
        except asyncio.CancelledError:
            await self._stop(intake, framer)
            raise
        finally:
            serial_transport.close()

    async def _read(self, intake: _PortIntake, framer: BarcodeFramer) -> None:
        port = self.config.transport.port
        while True:
            await self._take(await intake.read(port), framer)
            hold = self._hold
            if hold is None:
                continue
            # A scan waited for room: read what the scanner sent meanwhile, on the hold's time.
            with self._sink.backlog(hold.since):
                while (data := await intake.read_within(port, BACKLOG_IDLE_S)) is not None:
                    await self._take(data, framer)
            log.info(
                "scanner backlog read after a hold",
                device=self.config.id,
                labels=self._held_labels,
                held_s=round(time.monotonic() - hold.since, 3),
            )
            self._hold = None

    async def _take(self, data: bytes, framer: BarcodeFramer) -> None:
        """Decode the labels in `data` and hand them over, waiting for room."""
        self._decode(data, framer)
        while self._pending:
            event = self._pending[0]
            if not self._sink.offer(event):
                if self._hold is None:
                    self._hold = _Hold(self._clock(), time.monotonic())
                    self._held_labels = 0
                    log.warning("inbox full: the scanner's line is not read", device=self.config.id)
                await self._sink.put(event)
            self._pending.popleft()

    async def _stop(self, intake: _PortIntake, framer: BarcodeFramer) -> None:
        """Read what the kernel holds (closing the port drops it), keep all that was read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_READ_S
        port = self.config.transport.port
        with contextlib.suppress(DeviceError):
            while (left := deadline - loop.time()) > 0:
                data = await intake.read_within(port, min(left, BACKLOG_IDLE_S))
                if data is None:
                    break
                self._decode(data, framer)
        kept = len(self._pending)
        while self._pending:
            self._sink.keep(self._pending.popleft())
        if kept:
            log.info("scans read before the stop handed over", device=self.config.id, scans=kept)
        if framer.buffered:
            log.warning(
                "a label cut short by the stop was discarded",
                device=self.config.id,
                bytes=framer.buffered,
            )

    def _decode(self, data: bytes, framer: BarcodeFramer) -> None:
        self.bytes_read += len(data)
        self._health.data_received()
        self._pending.extend(self._event(item) for item in framer.feed(data))

    def _event(self, item: Frame | Overrun) -> Event:
        at, read_at = self._stamp()
        device = self.config.id
        event: Scan | RejectedScan
        if isinstance(item, Frame):
            event = decode_label(item.data, device_id=device, at=at, rules=self._labels)
        else:
            framing = self.config.framing
            event = RejectedScan(
                device,
                at,
                raw="",
                reason=(
                    f"no {framing.suffix!r} terminator within {framing.max_length} bytes: "
                    "check the scanner's suffix"
                ),
            )
        if isinstance(event, RejectedScan):
            self._health.count("rejected")
            log.info("scan rejected", device=device, reason=event.reason)
            return event
        self._health.count("reads")
        return event if read_at is None else dataclasses.replace(event, read_at=read_at)

    def _stamp(self) -> tuple[dt.datetime, dt.datetime | None]:
        """When a label was scanned, and when it was read if that was later (after a hold)."""
        now = self._clock()
        if self._hold is None:
            return now, None
        self._held_labels += 1
        return self._hold.at + dt.timedelta(microseconds=self._held_labels), now


def build(device: BarcodeScannerDevice, ctx: DriverContext) -> BarcodeScanner:
    """The driver of a configured serial scanner."""
    labels = LabelRules(
        re.compile(ctx.location_pattern), aim_symbology=device.framing.aim_symbology
    )
    return BarcodeScanner(device, labels=labels, sink=ctx.sink, health=ctx.health, clock=ctx.clock)
