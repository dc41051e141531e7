"""A scale indicator answering Modbus TCP or Modbus RTU (on a pseudo-terminal), for tests and demo.

A pymodbus server with a `SimDevice` whose registers are filled, on every read, from a
`LoadCell` (scripted loads that settle with noise). The register map is the gateway's own
configuration model (`WeightRegister`, `StatusRegister`), so a test describes one scale to
both sides; the encoding here is written with `struct`, independently of the driver's decoding.

Transports:

- ``tcp``: a `ModbusTcpServer` on `host` (a free port unless one is given). `unplug` stops it
  (every connection is closed, the port refuses), `plug` starts it again on the same port.
- ``rtu``: a `ModbusSerialServer` on one pseudo-terminal, wired to a second one whose slave the
  gateway opens through the symlink `link` (as it would open ``/dev/serial/by-id/...``). The
  wire between the two can be cut (`unplug`: the gateway's side is closed and the symlink
  removed) and carries the garbage.

Faults: `fail_with(code)` answers every request with that Modbus exception; `silence(True)`
reads requests and never answers; `garbage()` sends random bytes to the gateway; the load cell
goes out of range with `load.overload()` / `load.underload()`, and a load above `capacity_kg`
is an overload too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tty
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config import StatusRegister, WeightRegister
from gateway.rules.weighing import KG_PER_UNIT
from simulators.load_cell import LoadCell
from simulators.scanner import point_link_at

__all__ = ["ModbusScaleSimulator", "encode_registers"]

_READ_REGISTERS: Final = frozenset({3, 4})
_STRUCT: Final = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_RANGE: Final = {
    "h": (-(2**15), 2**15 - 1),
    "H": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "I": (0, 2**32 - 1),
}
_READ_SIZE: Final = 4096


def encode_registers(value: float, reg: WeightRegister) -> list[int]:
    """The registers holding `value` (in the register's own units) the way `reg` describes.

    Integers are rounded and clamped to the type's range.
    """
    code = _STRUCT[reg.type]
    data: bytes
    if code == "f":
        data = struct.pack(">f", value)
    else:
        low, high = _RANGE[code]
        data = struct.pack(">" + code, min(high, max(low, round(value))))
    words = [data[i : i + 2] for i in range(0, len(data), 2)]  # high word first
    if reg.word_order == "little":
        words.reverse()
    if reg.byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


class ModbusScaleSimulator:
    """A Modbus scale indicator; `load` is its platform (place, remove, overload...).

    Args:
        weight: where and how the weight is held.
        status: the status word and its bits (None: the indicator has none).
        unit_id: the Modbus device id it answers to.
        transport: "tcp" or "rtu".
        host, port: the TCP listener (port 0: a free port, kept across unplug / plug).
        link: for RTU, where the symlink to the gateway's pty goes.
        capacity_kg: above this the indicator reports an overload.
        seed: seeds the settling noise and the garbage bytes.
    """

    def __init__(
        self,
        *,
        weight: WeightRegister,
        status: StatusRegister | None = None,
        unit_id: int = 1,
        transport: Literal["tcp", "rtu"] = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        link: Path | None = None,
        capacity_kg: float = 3000.0,
        seed: int = 0,
    ) -> None:
        if transport == "rtu" and link is None:
            raise ValueError("an RTU scale needs the `link` path its serial port appears at")
        self.weight = weight
        self.status = status
        self.unit_id = unit_id
        self.transport = transport
        self.host = host
        self.port = port
        self.link = link
        self.capacity_kg = capacity_kg
        self.load = LoadCell(seed=seed)
        self.polls = 0  # read requests answered with registers
        self._fail: ExcCodes | None = None
        self._quiet = asyncio.Event()
        self._quiet.set()  # set: answering; clear: silent
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        # RTU: (master, slave) of the server's pty and of the gateway's pty.
        self._server_pty: tuple[int, int] | None = None
        self._gateway_pty: tuple[int, int] | None = None
        self._device = ""
        lo = min(weight.address, status.address if status else weight.address)
        hi = weight.address + _words(weight)
        if status is not None:
            hi = max(hi, status.address + 1)
        self._block = (lo, hi - lo)

    # --- faults ------------------------------------------------------------------------------

    def fail_with(self, code: ExcCodes | None) -> None:
        """Answer every request with this Modbus exception (None: answer normally again)."""
        self._fail = code

    def silence(self, on: bool) -> None:
        """While on, requests are read and not answered (a hung indicator)."""
        if on:
            self._quiet.clear()
        else:
            self._quiet.set()

    def garbage(self) -> None:
        """Send a few random bytes to the gateway (noise on the line, a confused device)."""
        noise = self.load.noise_bytes()
        if self._gateway_pty is not None:
            _write_all(self._gateway_pty[0], noise)
        elif isinstance(self._server, ModbusTcpServer):
            for connection in list(self._server.active_connections.values()):
                if connection.transport is not None:
                    cast(asyncio.Transport, connection.transport).write(noise)

    # --- the registers -----------------------------------------------------------------------

    def registers(self) -> dict[int, int]:
        """Address -> value of the weight and status registers now."""
        now = self.load.clock()
        gross = self.load.gross(now)
        over = self.load.limit == "+" or gross > self.capacity_kg
        under = self.load.limit == "-"
        kg = self.load.net(now)
        raw = kg / float(KG_PER_UNIT[self.weight.unit]) / self.weight.scale
        if over:
            raw = float(self.capacity_kg) / float(KG_PER_UNIT[self.weight.unit]) / self.weight.scale
        words = encode_registers(raw, self.weight)
        out = {self.weight.address + i: w for i, w in enumerate(words)}
        if self.status is not None:
            flags = {
                "stable": self.load.stable(now) and not (over or under),
                "motion": not self.load.stable(now),
                "overload": over,
                "underload": under,
                "zero": abs(kg) < 0.005 and not (over or under),
            }
            word = 0
            for name, bit in self.status.bits().items():
                if bit is not None and flags[name]:
                    word |= 1 << bit
            out[self.status.address] = word
        return out

    async def _action(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request: fill in the registers, or fail."""
        await self._quiet.wait()
        if self._fail is not None:
            return self._fail
        if set_values is None and function_code in _READ_REGISTERS:
            for address, value in self.registers().items():
                i = address - start_address
                if 0 <= i < len(registers):
                    registers[i] = value
            self.polls += 1
        return None

    # --- the cable ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the indicator is reachable."""
        return self._server is not None and (self.transport == "tcp" or bool(self._gateway_pty))

    def _device_model(self) -> SimDevice:
        start, count = self._block
        return SimDevice(
            id=self.unit_id,
            simdata=SimData(start, count=count, values=0, datatype=DataType.REGISTERS),
            action=self._action,
        )

    async def start(self) -> None:
        """Start the indicator (the TCP listener, or the RTU server and both ptys)."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        if self.transport == "tcp":
            await self.plug()
            return
        master, slave = _open_pty()
        self._server_pty = (master, slave)
        server = ModbusSerialServer(
            self._device_model(), framer=FramerType.RTU, port=os.ttyname(slave), baudrate=9600
        )
        await server.serve_forever(background=True)
        self._server = server
        asyncio.get_running_loop().add_reader(master, self._from_server)
        await self.plug()

    async def plug(self) -> None:
        """Plug the cable back in (TCP: listen again on the same port). Idempotent."""
        if self.transport == "tcp":
            if self._server is not None:
                return
            server = ModbusTcpServer(self._device_model(), address=(self.host, self.port))
            await server.serve_forever(background=True)
            listener = cast(asyncio.Server, server.transport)
            self.port = int(listener.sockets[0].getsockname()[1])
            self._server = server
            return
        if self._gateway_pty is not None:
            return
        assert self.link is not None
        master, slave = _open_pty()
        self._gateway_pty = (master, slave)
        self._device = os.ttyname(slave)
        point_link_at(self.link, self._device)
        asyncio.get_running_loop().add_reader(master, self._from_gateway)

    async def unplug(self) -> None:
        """Pull the cable (TCP: close every connection and the listener). Idempotent."""
        if self.transport == "tcp":
            server, self._server = self._server, None
            if server is not None:
                listener = cast(asyncio.Server | None, server.transport)
                await server.shutdown()  # type: ignore[no-untyped-call]
                if listener is not None:
                    await listener.wait_closed()
            return
        pty, self._gateway_pty = self._gateway_pty, None
        if pty is None:
            return
        asyncio.get_running_loop().remove_reader(pty[0])
        assert self.link is not None
        with contextlib.suppress(OSError):
            if os.readlink(self.link) == self._device:
                self.link.unlink()
        self._device = ""
        os.close(pty[0])  # hangs up the gateway's side
        os.close(pty[1])

    async def stop(self) -> None:
        """Stop everything."""
        await self.unplug()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        pty, self._server_pty = self._server_pty, None
        if pty is not None:
            asyncio.get_running_loop().remove_reader(pty[0])
            os.close(pty[0])
            os.close(pty[1])

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the RTU wire between the two ptys ---------------------------------------------------

    def _from_gateway(self) -> None:
        data = _read(self._gateway_pty)
        if data and self._server_pty is not None:
            _write_all(self._server_pty[0], data)

    def _from_server(self) -> None:
        data = _read(self._server_pty)
        if data and self._gateway_pty is not None:
            _write_all(self._gateway_pty[0], data)


def _words(reg: WeightRegister) -> int:
    return 1 if reg.type.endswith("16") else 2


def _open_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no CR/LF translation: Modbus RTU is binary
    os.set_blocking(master, False)
    return master, slave


def _read(pty: tuple[int, int] | None) -> bytes:
    if pty is None:
        return b""
    try:
        return os.read(pty[0], _READ_SIZE)
    except OSError:
        return b""  # nobody has the slave open right now


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError:
            return  # the other side is gone or not reading: the rest is lost, as on a wire
