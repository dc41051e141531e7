"""Modbus scale driver: polls a weight indicator over Modbus TCP or RTU (pymodbus async client).

Every `poll_s` the driver reads the weight (and the status word, in the same request when both
sit in one table within 125 registers of each other) and hands a `WeightSample` in kilograms
to the rules. The register map is configuration (`gateway.config.WeightRegister`,
`StatusRegister`): int16 / uint16 / int32 / uint32 / float32, word order (high word first or
last), byte order inside a register, a scale factor and a unit. Status bits: `stable` (or
`motion`, its opposite) says whether the reading is at rest; `overload` / `underload` give a
flagged sample without a weight; `zero` (center of zero) is counted as `at_zero`, for the
device status; weighing tracks zero itself.

What goes wrong, and what happens:

The device is `connected` once it answered: its first reply (registers, or an exception
response, which shows the device is there), not when the socket or serial port opens. A serial
port opens whether or not an indicator is on the line. A valid reading after a problem moves
the problem from the status's `last_error` to its `previous_error`.

What goes wrong, and what happens:

- A Modbus exception response (illegal address, device busy, ...): counted as
  `exception_responses`, shown as the device's `last_error` (the exception's code and name,
  and the registers), logged once per code; no sample; the next poll goes out as usual (the
  device is there, its map may be wrong).
- No answer within `timeout_s` (or an answer that does not fit the request): counted as
  `no_answer`. `max_missed` in a row, or the connection closing, fails `run()` with
  `DeviceError`; the supervisor reconnects with backoff.
- A value that is not a weight (a float32 NaN or infinity): counted as `rejected`, shown as
  `last_error` ("reading is NaN ..."), logged once; no sample.
- The connection cannot be opened within `timeout_s`: `DeviceError`.

Overflow policy: `emit` waits when the rules' queue is full and no poll is sent meanwhile, so a
slow consumer slows the polling down rather than queueing readings.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException, ModbusIOException

from gateway.config import (
    ModbusRtuTransport,
    ModbusScaleDevice,
    ModbusTcpTransport,
    StatusRegister,
    WeightRegister,
)
from gateway.domain import KG_PER_UNIT, WeightSample
from gateway.drivers.base import Clock, DriverContext
from gateway.drivers.signal_light import raise_if_cancelled
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

__all__ = ["KIND", "ModbusScale", "ScaleReading", "decode_status", "decode_weight"]

log = structlog.get_logger("gateway.drivers.modbus_scale")

KIND = "modbus_scale"

# pymodbus logs every timeout and failed connect itself; the driver counts and reports them.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# The most registers one read request may ask for (Modbus application protocol, 0x03/0x04).
MAX_READ: Final = 125

_DATATYPE: Final = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
}

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


def register_count(reg: WeightRegister) -> int:
    """How many 16-bit registers the weight takes."""
    return int(_DATATYPE[reg.type].value[1])


def decode_weight(registers: Sequence[int], reg: WeightRegister) -> float:
    """The weight in kilograms that `registers` (exactly the weight's registers) hold.

    NaN or infinity when a float32 holds one: the caller decides what that means.
    """
    words = list(registers)
    if reg.byte_order == "little":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    raw = ModbusClientMixin.convert_from_registers(
        words, _DATATYPE[reg.type], word_order=reg.word_order
    )
    assert isinstance(raw, int | float)  # scalar types only in _DATATYPE
    return float(raw) * reg.scale * float(KG_PER_UNIT[reg.unit])


@dataclass(frozen=True, slots=True)
class ScaleReading:
    """What the status word says; None where the indicator does not report that flag."""

    stable: bool | None = None
    overload: bool = False
    underload: bool = False
    zero: bool | None = None


def decode_status(word: int, status: StatusRegister) -> ScaleReading:
    """Read the flags out of the status word."""

    def bit(n: int | None) -> bool | None:
        return None if n is None else bool(word >> n & 1)

    stable = bit(status.stable)
    if stable is None and status.motion is not None:
        stable = not bit(status.motion)
    return ScaleReading(
        stable=stable,
        overload=bool(bit(status.overload)),
        underload=bool(bit(status.underload)),
        zero=bit(status.zero),
    )


@dataclass(frozen=True, slots=True)
class _Read:
    """One read request: table, first address, count."""

    table: str
    address: int
    count: int


def plan_reads(weight: WeightRegister, status: StatusRegister | None) -> list[_Read]:
    """One request when weight and status are in one table within `MAX_READ`; else two."""
    n = register_count(weight)
    if status is None:
        return [_Read(weight.table, weight.address, n)]
    if status.table == weight.table:
        first = min(weight.address, status.address)
        last = max(weight.address + n, status.address + 1)
        if last - first <= MAX_READ:
            return [_Read(weight.table, first, last - first)]
    return [_Read(weight.table, weight.address, n), _Read(status.table, status.address, 1)]


# Exception responses a Modbus gateway sends for the device behind it: it did not answer.
_GATEWAY_NO_ANSWER: frozenset[int] = frozenset({0x0A, 0x0B})  # path unavailable, no response


class _Refused(Exception):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, what: str) -> None:
        try:
            name = ExcCodes(code).name
        except ValueError:
            name = "unknown"
        super().__init__(f"Modbus exception {code} ({name}) reading {what}")
        self.code = code


class ModbusScale:
    """One scale indicator on Modbus TCP or RTU. `run()` polls until the link fails."""

    def __init__(
        self,
        device: ModbusScaleDevice,
        *,
        emit: Callable[[WeightSample], Awaitable[None]],
        health: DeviceHealth,
        clock: Clock,
    ) -> None:
        self.device = device
        self._emit = emit
        self._health = health
        self._clock = clock
        self._reads = plan_reads(device.weight, device.status)
        self._logged: set[str] = set()  # kinds of bad answer already logged

    def _client(self) -> Client:
        t = self.device.transport
        timeout = self.device.timeout_s
        # retries=0 and reconnect_delay=0: no retries or reconnects behind the driver's back.
        if isinstance(t, ModbusTcpTransport):
            return AsyncModbusTcpClient(
                t.host, port=t.port, timeout=timeout, retries=0, reconnect_delay=0
            )
        assert isinstance(t, ModbusRtuTransport)
        return AsyncModbusSerialClient(
            t.port,
            framer=FramerType.RTU,
            baudrate=t.baudrate,
            bytesize=t.bytesize,
            parity=t.parity,
            stopbits=int(t.stopbits),
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
        )

    def _where(self) -> str:
        t = self.device.transport
        at = f"{t.host}:{t.port}" if isinstance(t, ModbusTcpTransport) else t.port
        return f"{at} unit {self.device.unit_id}"

    async def run(self) -> None:
        """Connect, then poll until the connection fails (raises `DeviceError`)."""
        client = self._client()
        loop = asyncio.get_running_loop()
        try:
            if not await client.connect():
                raise DeviceError(
                    f"cannot connect to Modbus {self._where()} within {self.device.timeout_s:g} s"
                )
            raise_if_cancelled()
            missed = 0
            while True:
                started = loop.time()
                if not client.connected:
                    raise DeviceError(f"connection to Modbus {self._where()} lost")
                try:
                    sample = await self._poll(client)
                    missed = 0
                except _Refused as err:
                    missed = 0
                    self._health.count("exception_responses")
                    self._health.note_error(str(err))
                    self._log_once(f"exception {err.code}", reason=str(err))
                    sample = None
                except (ModbusIOException, TimeoutError) as err:
                    missed += 1
                    self._health.count("no_answer")
                    if missed >= self.device.max_missed or not client.connected:
                        raise DeviceError(
                            f"scale silent: {missed} polls without an answer within "
                            f"{self.device.timeout_s:g} s from {self._where()}"
                        ) from err
                    sample = None
                except ModbusException as err:  # connection gone mid-request, and the like
                    raise DeviceError(f"Modbus {self._where()} failed: {err}") from err
                raise_if_cancelled()
                if sample is not None:
                    self._health.clear_error()  # a valid reading: a past problem is history
                    self._health.count("reads")
                    await self._emit(sample)
                await asyncio.sleep(max(0.0, self.device.poll_s - (loop.time() - started)))
        finally:
            client.close()

    async def _poll(self, client: Client) -> WeightSample | None:
        """Read the registers once; the sample they make, or None if they make none."""
        words: dict[tuple[str, int], int] = {}
        for read in self._reads:
            what = f"{read.count} {read.table} registers at {read.address} from {self._where()}"
            async with asyncio.timeout(self.device.timeout_s + 1.0):
                if read.table == "holding":
                    response = await client.read_holding_registers(
                        read.address, count=read.count, device_id=self.device.unit_id
                    )
                else:
                    response = await client.read_input_registers(
                        read.address, count=read.count, device_id=self.device.unit_id
                    )
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                if code in _GATEWAY_NO_ANSWER:
                    # A TCP-to-RTU gateway answered for an indicator that did not: no answer.
                    raise ModbusIOException(f"{_Refused(code, what)!s}: the indicator is silent")
                self._health.connected()  # it answered, with a refusal: it is there
                raise _Refused(code, what)
            if len(response.registers) < read.count:
                raise ModbusIOException(f"short answer: {len(response.registers)} of {what}")
            self._health.connected()  # it answered (a no-op after the first answer)
            self._health.data_received()
            for i, value in enumerate(response.registers[: read.count]):
                words[(read.table, read.address + i)] = value
        reg = self.device.weight
        n = register_count(reg)
        kg = decode_weight([words[(reg.table, reg.address + i)] for i in range(n)], reg)
        status = self.device.status
        flags = (
            ScaleReading()
            if status is None
            else decode_status(words[(status.table, status.address)], status)
        )
        if flags.zero:
            self._health.count("at_zero")
        if flags.overload or flags.underload:
            kg = math.nan  # out of range: the number in the register means nothing
        elif not math.isfinite(kg):
            what = "NaN" if math.isnan(kg) else "infinite"
            reason = (
                f"reading is {what}: the {reg.type} at {reg.table} register {reg.address}"
                f" from {self._where()} holds {kg}"
            )
            self._health.count("rejected")
            self._health.note_error(reason)
            self._log_once("not a number", reason=reason)
            return None
        return WeightSample(
            self.device.id,
            at=self._clock().timestamp(),
            kg=kg,
            stable=False if flags.overload or flags.underload else flags.stable,
            overload=flags.overload,
            underload=flags.underload,
        )

    def _log_once(self, kind: str, *, reason: str) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "scale answer not used (logged once per kind)",
                device=self.device.id,
                kind=kind,
                reason=reason,
            )


def build(device: ModbusScaleDevice, ctx: DriverContext) -> ModbusScale:
    """The driver of a configured Modbus scale (TCP or RTU)."""
    return ModbusScale(device, emit=ctx.sink.put, health=ctx.health, clock=ctx.clock)
