"""Serial barcode scanner driver (pyserial-asyncio-fast).

Reads the port, frames labels with the configured suffix, decodes each one and hands the scan
to the rules through `emit`. When the port fails or disappears, `run()` raises `DeviceError`;
the supervisor reopens it with backoff, so a scanner that is replugged is picked up again.
Overflow policy: `emit` waits when the rules' queue is full, so the driver stops reading and
the scanner is held back by the serial line (scanners buffer or beep) rather than losing scans.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable, Sequence

import serial
import serial_asyncio_fast
import structlog

from gateway.config import BarcodeScannerDevice
from gateway.domain import Event, RejectedScan
from gateway.drivers.barcode import BarcodeFramer, Frame, LabelRules, Overrun, decode_label
from gateway.drivers.base import DriverContext
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

log = structlog.get_logger("gateway.drivers.scanner")

KIND = "barcode_scanner"


class BarcodeScanner:
    """One serial scanner. `run()` reads until the port fails or the task is cancelled."""

    def __init__(
        self,
        config: BarcodeScannerDevice,
        *,
        labels: LabelRules,
        emit: Callable[[Event], Awaitable[None]],
        health: DeviceHealth,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.config = config
        self._labels = labels
        self._emit = emit
        self._health = health
        self._clock = clock

    async def run(self) -> None:
        """Open the port and read labels until it fails (raises `DeviceError`)."""
        transport = self.config.transport
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=transport.port,
                baudrate=transport.baudrate,
                bytesize=transport.bytesize,
                parity=transport.parity,
                stopbits=transport.stopbits,
            )
        except (OSError, serial.SerialException) as err:
            raise DeviceError(f"cannot open {transport.port}: {err}") from err
        self._health.connected()
        framing = self.config.framing
        framer = BarcodeFramer(
            suffix=framing.suffix_bytes,
            prefix=framing.prefix.encode("latin-1"),
            max_length=framing.max_length,
        )
        try:
            while True:
                try:
                    data = await reader.read(4096)
                except (OSError, serial.SerialException) as err:
                    raise DeviceError(f"{transport.port} failed: {err}") from err
                if not data:
                    raise DeviceError(f"{transport.port} closed (scanner unplugged?)")
                self._health.data_received()
                await self._handle(framer.feed(data))
        finally:
            writer.close()

    async def _handle(self, frames: Sequence[Frame | Overrun]) -> None:
        for item in frames:
            at = self._clock()
            if isinstance(item, Frame):
                event: Event = decode_label(
                    item.data, device_id=self.config.id, at=at, rules=self._labels
                )
            else:
                event = RejectedScan(
                    self.config.id,
                    at,
                    raw="",
                    reason=(
                        f"no {self.config.framing.suffix!r} terminator within "
                        f"{self.config.framing.max_length} bytes: check the scanner's suffix"
                    ),
                )
            if isinstance(event, RejectedScan):
                self._health.count("rejected")
                log.info("scan rejected", device=self.config.id, reason=event.reason)
            else:
                self._health.count("reads")
            await self._emit(event)


def build(device: BarcodeScannerDevice, ctx: DriverContext) -> BarcodeScanner:
    """The driver of a configured serial scanner."""
    labels = LabelRules(
        re.compile(ctx.location_pattern), aim_symbology=device.framing.aim_symbology
    )
    return BarcodeScanner(
        device, labels=labels, emit=ctx.sink.put, health=ctx.health, clock=ctx.clock
    )
