"""A label printer taking ZPL on a raw TCP port (9100), at a pack station.

`run()` takes the station's labels from the print spool, oldest first, and sends each over its
own connection; a label counts as printed once the printer took all of it and the connection
closed cleanly (then it is recorded in SQLite and never sent again). A printer that is off or
unreachable makes `run()` raise `DeviceError`: the supervisor tries again with backoff, and the
labels wait in the spool (and in SQLite across restarts) until the printer is back, each then
printed once. Raw port 9100 has no acknowledgement: a gateway that dies in the instant between
a label's last byte and its record would send that one label again after its restart.
While there is nothing to print, the printer is checked every `PROBE_S` (a connection opened
and closed), so its state on the status board is true.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.config import ZplPrinterDevice
from gateway.drivers.base import DriverContext, PrintSpool
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

KIND = "zpl_printer"
PROBE_S = 10.0


class ZplPrinter:
    """One printer (see the module docstring)."""

    def __init__(self, device: ZplPrinterDevice, spool: PrintSpool, health: DeviceHealth) -> None:
        self._device = device
        self._spool = spool
        self._health = health
        self.printed = 0

    async def run(self) -> None:
        """Until cancelled; raises `DeviceError` when the printer cannot be reached."""
        station = self._device.station
        await self._send(b"")  # is it there?
        while True:
            waiting = asyncio.ensure_future(self._spool.next(station))
            try:
                done, _ = await asyncio.wait({waiting}, timeout=PROBE_S)
            finally:
                if not waiting.done():
                    waiting.cancel()
            if not done:
                await self._send(b"")
                continue
            job_id, body = waiting.result()
            await self._send(body.encode("ascii", errors="replace"))
            await self._spool.done(station, job_id)
            self.printed += 1
            self._health.count("printed")

    async def _send(self, data: bytes) -> None:
        device = self._device
        try:
            async with asyncio.timeout(device.timeout_s):
                _, writer = await asyncio.open_connection(device.host, device.port)
                try:
                    if data:
                        writer.write(data)
                        await writer.drain()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as err:
            raise DeviceError(
                f"printer {device.host}:{device.port}: {err or type(err).__name__}"
            ) from err
        self._health.connected()


def build(device: ZplPrinterDevice, ctx: DriverContext) -> ZplPrinter:
    """The driver of one configured printer."""
    return ZplPrinter(device, ctx.spool, ctx.health)
