"""A stack light or horn on a Modbus TCP coil: on while an alarm is active at a door.

`alarm()` is called from the rules runner and never blocks: it moves a deadline. `run()` owns
the pymodbus client and writes the coil only when what it should be changes (on at the first
alarm, off `hold_s` after the latest one). Bounded by design: no queue, just the desired state
and a deadline, so an alarm storm costs nothing but one write.

Every connect (the first one, and each reconnect after a failure) writes the desired state
unconditionally, so a light that lost power or a gateway restarted mid-alarm ends up right:
on if an alarm is active, off otherwise (a horn left sounding by a crash is silenced). The state
is also written again every `refresh_s` (None: never): that keeps an idle connection from being
dropped by devices with an idle timeout, holds the output on I/O modules whose communication
watchdog resets outputs nobody writes, and repairs a coil changed behind the gateway's back.
A lost connection, a timeout or a Modbus exception response raises `DeviceError`; the gateway's
supervisor restarts `run()` with backoff. When the gateway stops (`run()` cancelled) a coil
that is on is switched off, best effort, within `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, ModbusIOException

from gateway.config import SignalLightDevice
from gateway.drivers.base import DriverContext
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

KIND = "signal_light"

# pymodbus logs every failed connect and timeout itself; the driver reports each failure once
# through `DeviceError` and the device's health, so its own logging is only noise here.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class CoilWriteRefused(DeviceError):
    """The device answered a coil write with a Modbus exception response."""

    def __init__(self, message: str, *, exception_code: int) -> None:
        super().__init__(message)
        self.exception_code = exception_code


class SignalLight:
    """A stack light or horn on a Modbus TCP coil (pymodbus async client)."""

    def __init__(
        self,
        *,
        host: str,
        port: int = 502,
        unit: int = 1,
        coil: int = 0,
        hold_s: float = 10.0,
        timeout_s: float = 2.0,
        refresh_s: float | None = 5.0,
        health: DeviceHealth | None = None,
    ) -> None:
        if not 0 <= unit <= 255:
            raise ValueError(f"unit {unit} is out of range 0..255")
        if not 0 <= coil <= 65535:
            raise ValueError(f"coil {coil} is out of range 0..65535")
        if hold_s <= 0 or timeout_s <= 0 or (refresh_s is not None and refresh_s <= 0):
            raise ValueError("hold_s, timeout_s and refresh_s must be positive")
        self.host = host
        self.port = port
        self.unit = unit
        self.coil = coil
        self.hold_s = hold_s
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self._health = health
        self._until: float | None = None  # monotonic time the coil goes off
        self._wake = asyncio.Event()

    @property
    def state(self) -> bool:
        """What the coil should be now: on until `hold_s` after the latest alarm."""
        return self._until is not None and time.monotonic() < self._until

    def alarm(self) -> None:
        """Turn the coil on now and keep it on for `hold_s` after this (the latest) alarm."""
        self._until = time.monotonic() + self.hold_s
        self._wake.set()

    async def run(self) -> None:
        """Connect, then keep the coil as `state` says until the connection fails.

        Raises `DeviceError` on any failure; returns only by cancellation.
        """
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,  # no reconnects behind our back: the supervisor does them
            trace_connect=self._connection_changed,
        )
        written: bool | None = None  # None: not known (a fresh connection asserts the state)
        maybe_on = False  # an ON was sent and no OFF confirmed since
        refresh_at: float | None = None
        try:
            connected = await client.connect()
            raise_if_cancelled()
            if not connected:
                raise DeviceError(
                    f"cannot connect to Modbus TCP {self._where()} within {self.timeout_s:g} s"
                )
            while True:
                self._wake.clear()
                if not client.connected:
                    raise DeviceError(f"connection to {self._where()} lost")
                want = self.state
                if want != written or (refresh_at is not None and time.monotonic() >= refresh_at):
                    written = None
                    maybe_on = maybe_on or want
                    await self._write(client, want)
                    written = want
                    if self._health is not None:
                        self._health.connected()  # the device answered (a no-op after the first)
                    maybe_on = want
                    raise_if_cancelled()
                    if self.refresh_s is not None:
                        refresh_at = time.monotonic() + self.refresh_s
                wake_at = [t for t in (self._until if want else None, refresh_at) if t is not None]
                wait_s = min(wake_at) - time.monotonic() if wake_at else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
        except asyncio.CancelledError:
            if maybe_on and client.connected:
                # Stopping: do not leave a horn sounding. Best effort, bounded.
                with contextlib.suppress(DeviceError):
                    await self._write(client, False)
            raise
        finally:
            client.close()

    async def _write(self, client: AsyncModbusTcpClient, value: bool) -> None:
        action = f"writing coil {self.coil} {'ON' if value else 'OFF'} on {self._where()}"
        try:
            async with asyncio.timeout(self.timeout_s + 1.0):
                response = await client.write_coil(self.coil, value, device_id=self.unit)
        except TimeoutError as err:
            raise DeviceError(f"{action}: no answer within {self.timeout_s:g} s") from err
        except ModbusIOException as err:  # pymodbus's own timeout, or an answer that does not fit
            raise DeviceError(
                f"{action}: no valid answer within {self.timeout_s:g} s ({err})"
            ) from err
        except ModbusException as err:
            raise DeviceError(f"{action}: {err}") from err
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            try:
                name = ExcCodes(code).name
            except ValueError:
                name = "unknown"
            raise CoilWriteRefused(
                f"{action}: Modbus exception {code} ({name})", exception_code=code
            )
        if self._health is not None:
            self._health.count("writes")

    def _connection_changed(self, connected: bool) -> None:
        if not connected:
            self._wake.set()  # run() notices at once, not at the next alarm

    def _where(self) -> str:
        return f"{self.host}:{self.port} unit {self.unit}"


def raise_if_cancelled() -> None:
    """Deliver a cancellation that Python 3.11's `asyncio.wait_for` swallowed.

    pymodbus waits for connects and answers with `asyncio.wait_for`; on 3.11, a task cancelled
    just as the awaited answer arrives gets the answer and loses the cancellation (fixed in
    3.12). The task is still marked as cancelling, so a gateway stopping its drivers would
    otherwise wait for this one forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def build(device: SignalLightDevice, ctx: DriverContext) -> SignalLight:
    """The driver of a configured stack light or horn; it goes off on alarms at its doors."""
    light = SignalLight(
        host=device.host,
        port=device.port,
        unit=device.unit,
        coil=device.coil,
        hold_s=device.hold_s,
        timeout_s=device.timeout_s,
        refresh_s=device.refresh_s,
        health=ctx.health,
    )
    ctx.alarms.register(device.doors, light.alarm)
    return light
