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

Run ``python -m simulators.modbus_scale --port 5020 --weight 612.5`` for an indicator with a
pallet on it; ``--weight-register`` and ``--status-register`` take the register map as the
site configuration writes it (``--help``: the options).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar, cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.config import StatusRegister, WeightRegister
from gateway.domain import KG_PER_UNIT
from simulators import cli
from simulators.load_cell import LoadCell
from simulators.serial_cable import SerialCable

__all__ = ["ModbusScaleSimulator", "encode_registers", "main"]

_READ_REGISTERS: Final = frozenset({3, 4})
_STRUCT: Final = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_RANGE: Final = {
    "h": (-(2**15), 2**15 - 1),
    "H": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "I": (0, 2**32 - 1),
}


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
        self._stuck: float | None = None  # a raw weight register value, whatever the load
        self._quiet = asyncio.Event()
        self._quiet.set()  # set: answering; clear: silent
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        # RTU: the wire between the server's pty and the gateway's (at `link`).
        self._server_cable = SerialCable(on_receive=self._from_server)
        self._gateway_cable = SerialCable(link, on_receive=self._from_gateway)
        lo = min(weight.address, status.address if status else weight.address)
        hi = weight.address + _words(weight)
        if status is not None:
            hi = max(hi, status.address + 1)
        self._block = (lo, hi - lo)

    # --- faults ------------------------------------------------------------------------------

    def fail_with(self, code: ExcCodes | None) -> None:
        """Answer every request with this Modbus exception (None: answer normally again)."""
        self._fail = code

    def stick_weight(self, raw: float | None) -> None:
        """Hold `raw` (in the register's own units) in the weight register, whatever the load:
        NaN or infinity in a float32 is a broken indicator. None: read the load again."""
        self._stuck = raw

    def silence(self, on: bool) -> None:
        """While on, requests are read and not answered (a hung indicator)."""
        if on:
            self._quiet.clear()
        else:
            self._quiet.set()

    def garbage(self) -> None:
        """Send a few random bytes to the gateway (noise on the line, a confused device)."""
        noise = self.load.noise_bytes()
        if self._gateway_cable.plugged:
            self._gateway_cable.write_all(noise)
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
        if self._stuck is not None:
            raw, over = self._stuck, False
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
    def device(self) -> str:
        """RTU: the pty slave the symlink `link` points at; empty while unplugged (and on TCP)."""
        return self._gateway_cable.device

    @property
    def running(self) -> bool:
        """Whether the indicator is reachable."""
        return self._server is not None and (self.transport == "tcp" or self._gateway_cable.plugged)

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
        self._server_cable.plug()
        try:
            server = ModbusSerialServer(
                self._device_model(),
                framer=FramerType.RTU,
                port=self._server_cable.device,
                baudrate=9600,
            )
            await server.serve_forever(background=True)
        except BaseException:
            self._server_cable.unplug()
            raise
        self._server = server
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
        self._gateway_cable.plug()

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
        self._gateway_cable.unplug()  # hangs up the gateway's side

    async def stop(self) -> None:
        """Stop everything."""
        await self.unplug()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        self._server_cable.unplug()

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

    def _from_gateway(self, data: bytes) -> None:
        self._server_cable.write_all(data)

    def _from_server(self, data: bytes) -> None:
        self._gateway_cable.write_all(data)


def _words(reg: WeightRegister) -> int:
    return 1 if reg.type.endswith("16") else 2


# The register map of deploy/site.example.toml: a common layout (weight in hundredths of a kg).
_WEIGHT_MAP: Final = 'address = 0, type = "int32", scale = 0.01, unit = "kg"'
_STATUS_MAP: Final = "address = 2, stable = 0, motion = 1, overload = 2, underload = 3, zero = 4"

_Map = TypeVar("_Map", WeightRegister, StatusRegister)


def _register_map(model: type[_Map]) -> Callable[[str], _Map]:
    """An argparse type: an inline TOML table (braces optional) read as `model`."""

    def parse(text: str) -> _Map:
        try:
            table = tomllib.loads(f"map = {{ {text.strip().strip('{}')} }}")["map"]
            return model.model_validate(table)
        except ValueError as err:  # TOML or pydantic
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def _status_map(text: str) -> StatusRegister | None:
    """An argparse type: a status word's map, or "none"."""
    return None if text.strip().lower() == "none" else _register_map(StatusRegister)(text)


async def _serve(
    scale: ModbusScaleSimulator, *, kg: float, every_s: float, settle_s: float
) -> None:
    async with scale:
        where = (
            f"listening on {scale.host}:{scale.port}"
            if scale.transport == "tcp"
            else f"plugged in at {scale.link} -> {scale.device}"
        )
        cli.say(f"Modbus {scale.transport.upper()} scale, unit id {scale.unit_id}, {where}")
        await cli.play_load(scale.load, kg=kg, every_s=every_s, settle_s=settle_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: an indicator on Modbus RTU (``--link``) or TCP (``--port``), until Ctrl-C."""
    parser = cli.parser(
        "simulators.modbus_scale",
        "A scale indicator answering Modbus RTU on a pseudo-terminal (--link) or Modbus TCP"
        " (--port), with the register map of the site configuration.",
    )
    cli.add_serial_or_tcp(parser)
    parser.add_argument("--unit-id", type=int, default=1, help="Modbus device id it answers to")
    parser.add_argument(
        "--weight-register",
        type=_register_map(WeightRegister),
        default=_WEIGHT_MAP,
        metavar="TOML",
        help="the weight's register map, as the device's `weight` in the site config",
    )
    parser.add_argument(
        "--status-register",
        type=_status_map,
        default=_STATUS_MAP,
        metavar="TOML",
        help='the status word, as the device\'s `status` in the site config; "none": no status',
    )
    cli.add_load(parser)
    parser.add_argument(
        "--capacity-kg", type=cli.positive, default=3000.0, help="heavier is an overload"
    )
    cli.add_seed(parser)
    args = parser.parse_args(argv)
    serial = cli.serial_or_tcp(parser, args)
    scale = ModbusScaleSimulator(
        weight=args.weight_register,
        status=args.status_register,
        unit_id=args.unit_id,
        transport="rtu" if serial else "tcp",
        host=args.host,
        port=args.port or 0,
        link=args.link,
        capacity_kg=args.capacity_kg,
        seed=args.seed,
    )
    return cli.run(_serve(scale, kg=args.weight, every_s=args.every, settle_s=args.settle_s))


if __name__ == "__main__":
    raise SystemExit(main())
