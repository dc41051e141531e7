"""A Modbus TCP device with coils (a stack light, a horn), for tests and the demo.

A pymodbus `ModbusTcpServer` with a `SimDevice`: coil `n` is bit `n % 16` of register `n // 16`
(bit addressing). Every change of a coil is recorded with its time (`time.monotonic()`, the
clock the gateway's drivers use) in `history`. The device can be stopped and started again on
the same port (a power cut, by default: the coils come back off, and that change is recorded
too), and told to answer every request with a Modbus exception response.

    async with ModbusCoilSimulator(coils=8) as light:
        ...  # light.port, light.coils, light.history, light.fail_with(ExcCodes.DEVICE_FAILURE)

Run ``python -m simulators.modbus_coil --port 5020`` for a stack light that prints every
change of its coils (``--help``: the options).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators import cli

__all__ = ["ModbusCoilSimulator", "main"]

_WRITE_COILS = frozenset({5, 15})  # write single coil, write multiple coils


class ModbusCoilSimulator:
    """A Modbus TCP server on `host` holding `coils` coils (whole registers of 16) for `unit`."""

    def __init__(
        self, *, unit: int = 1, coils: int = 16, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not 1 <= coils <= 65536:
            raise ValueError("coils must be in 1..65536")
        self.unit = unit
        self.host = host
        self.port = port  # 0 until the first start picks a free port; then kept
        self.history: list[tuple[float, int, bool]] = []
        self.writes = 0  # coil write requests answered normally, changing or not
        self._coils = [False] * ((coils + 15) // 16 * 16)  # whole registers of 16 coils
        self._fail: ExcCodes | None = None
        self._server: ModbusTcpServer | None = None
        self._changed = asyncio.Condition()

    @property
    def coils(self) -> list[bool]:
        """The coils now (a copy)."""
        return list(self._coils)

    @property
    def running(self) -> bool:
        """Whether the device is listening."""
        return self._server is not None

    def fail_with(self, code: ExcCodes | None) -> None:
        """Answer every request with this Modbus exception (None: answer normally again)."""
        self._fail = code

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a stop)."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        server = ModbusTcpServer(
            SimDevice(
                id=self.unit,
                simdata=SimData(0, values=list(self._coils), datatype=DataType.BITS),
                use_bit_addressing=True,
                action=self._action,
            ),
            address=(self.host, self.port),
        )
        await server.serve_forever(background=True)
        listener = cast(asyncio.Server, server.transport)
        self.port = int(listener.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self, *, keep_coils: bool = False) -> None:
        """Close the listener and every connection. A power cut unless `keep_coils`."""
        server, self._server = self._server, None
        if server is None:
            return
        listener = cast(asyncio.Server | None, server.transport)
        await server.shutdown()  # type: ignore[no-untyped-call]
        if listener is not None:
            await listener.wait_closed()
        if not keep_coils:
            await self._set({n: False for n in range(len(self._coils))})

    async def wait_for(self, coil: int, value: bool, *, timeout: float = 5.0) -> float:
        """Wait until `coil` is `value`; return when it became so (its `history` time)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._coils[coil] is value)
        for at, number, state in reversed(self.history):
            if number == coil and state is value:
                return at
        return 0.0  # the coil's initial state: it never changed

    async def __aenter__(self) -> ModbusCoilSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _action(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus for every request, before a write is applied."""
        if self._fail is not None:
            return self._fail
        if set_values is not None and function_code in _WRITE_COILS:
            self.writes += 1
            await self._set({address + i: bool(v) for i, v in enumerate(set_values)})
        return None

    async def _set(self, values: dict[int, bool]) -> None:
        now = time.monotonic()
        async with self._changed:
            for coil, value in values.items():
                if self._coils[coil] is not value:
                    self._coils[coil] = value
                    self.history.append((now, coil, value))
            self._changed.notify_all()


# How often the command line looks for changed coils.
_WATCH_S = 0.05


async def _serve(light: ModbusCoilSimulator) -> None:
    async with light:
        cli.say(f"Modbus TCP coils, unit {light.unit}, listening on {light.host}:{light.port}")
        shown = 0
        while True:
            for _, coil, value in light.history[shown:]:
                cli.say(f"coil {coil} {'on' if value else 'off'}")
            shown = len(light.history)
            await asyncio.sleep(_WATCH_S)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: a Modbus TCP device with coils that prints every change, until Ctrl-C."""
    parser = cli.parser(
        "simulators.modbus_coil",
        "A Modbus TCP I/O module with coils (a stack light, a horn): prints every change.",
    )
    cli.add_listener(parser, port=5020)
    parser.add_argument("--unit", type=int, default=1, help="Modbus device id it answers to")
    parser.add_argument("--coils", type=int, default=16, help="how many coils it has")
    args = parser.parse_args(argv)
    light = ModbusCoilSimulator(unit=args.unit, coils=args.coils, host=args.host, port=args.port)
    return cli.run(_serve(light))


if __name__ == "__main__":
    raise SystemExit(main())
