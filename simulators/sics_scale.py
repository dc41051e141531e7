"""A Mettler Toledo MT-SICS scale on a pseudo-terminal or over TCP, scriptable for tests.

`SicsScaleSimulator` is the serial scale: the gateway opens the slave side of a pty through a
stable symlink, as it would open ``/dev/serial/by-id/usb-...`` for a real indicator.
`SicsScaleTcpSimulator` is the same indicator on Ethernet: it listens on 127.0.0.1 (port 0
picks a free port; `port` tells which) and answers each client on its own connection. Both
are a `SicsIndicator`, which reads commands line by line (CR LF) and answers as a level 0/1
indicator does:

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
`garbage` (a line of random bytes, on every link), `unplug` (the pty is closed, as when the
cable is pulled; over TCP every connection is closed and new ones are refused until `plug`).

Run ``python -m simulators.sics_scale --link /tmp/scale0 --weight 612.5`` for a scale with a
pallet on it (``--help``: the options).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import socket
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

from gateway.domain import KG_PER_UNIT
from gateway.drivers.sics import format_weight
from simulators import cli
from simulators.load_cell import LoadCell
from simulators.serial_cable import SerialCable

__all__ = ["SicsIndicator", "SicsScaleSimulator", "SicsScaleTcpSimulator", "main"]

# SIR repeats an SI answer this often (a real indicator: every display update).
_SIR_PERIOD_S: Final = 0.1
# How often S looks again whether the reading has settled.
_STABLE_POLL_S: Final = 0.02
# Display resolution in each unit: about 10 g.
_RESOLUTION: Final = {
    "g": Decimal("1E1"),
    "kg": Decimal("0.01"),
    "t": Decimal("0.00001"),
    "lb": Decimal("0.01"),
}
# Commands waiting to be answered; a real indicator's input buffer is small too. When it is
# full, further commands are dropped (the host sees no answer, as with a real overrun).
_MAX_PENDING: Final = 16
_READ_SIZE: Final = 1024


class _Command(NamedTuple):
    text: str
    reply: Callable[[bytes], object]  # writes the answer back on the link the command came from


class SicsIndicator(abc.ABC):
    """The indicator behind the link: load cell, script, faults and MT-SICS answers.

    Subclasses add the link (`plug`, `unplug`, `_broadcast`) and hand each chunk they read to
    `_receive`. As an async context manager it plugs in and answers commands until exit.
    Weights are sent in `unit`: kg, or g, t or lb.

    Args:
        serial_number: sent in the ``I4`` line after a reset (``@``).
        stable_timeout_s: how long ``S`` waits for a stable reading before answering "S I".
        seed: seeds the settling noise and the garbage bytes.
    """

    def __init__(
        self,
        *,
        serial_number: str = "B123456789",
        stable_timeout_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        self._serial = serial_number
        self._stable_timeout_s = stable_timeout_s
        self.load = LoadCell(seed=seed)
        self.unit = "kg"
        self._commands: asyncio.Queue[_Command] = asyncio.Queue(_MAX_PENDING)
        self._server: asyncio.Task[None] | None = None
        self._silent = False
        self.commands_received = 0

    # --- the cable ---------------------------------------------------------------------------

    @abc.abstractmethod
    def plug(self) -> None:
        """Connect the scale: the driver can open it from now on. Idempotent."""

    @abc.abstractmethod
    def unplug(self) -> None:
        """Disconnect the scale, as when the cable is pulled. Idempotent."""

    @property
    @abc.abstractmethod
    def _label(self) -> str:
        """Names the simulator's task."""

    async def __aenter__(self) -> Self:
        self.plug()
        self._server = asyncio.get_running_loop().create_task(
            self._serve(), name=f"sics-scale-sim[{self._label}]"
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
        self.load.place(kg, settle_s)

    def remove(self, settle_s: float = 0.5) -> None:
        """Take everything off the platform."""
        self.load.remove(settle_s)

    def overload(self) -> None:
        """More than the scale's capacity: weight replies become "S +" until the next load."""
        self.load.overload()

    def underload(self) -> None:
        """Below the scale's range (platform lifted): weight replies become "S -"."""
        self.load.underload()

    def silence(self, on: bool) -> None:
        """While on, commands are read and never answered (a hung indicator)."""
        self._silent = on

    def garbage(self) -> None:
        """Send one line of random bytes (noise, a baud-rate mismatch)."""
        self._broadcast(self.load.noise_bytes() + b"\r\n")

    # --- the indicator -----------------------------------------------------------------------

    @abc.abstractmethod
    def _broadcast(self, data: bytes) -> None:
        """Send `data` on every open link."""

    def _receive(self, inbox: bytearray, data: bytes, reply: Callable[[bytes], object]) -> None:
        """Add `data` read from one link to its `inbox`; queue each complete command line."""
        inbox.extend(data)
        while (end := inbox.find(b"\n")) >= 0:
            line = bytes(inbox[:end]).rstrip(b"\r").strip()
            del inbox[: end + 1]
            if not line:
                continue
            self.commands_received += 1
            # On an input overrun the command is lost and the host times out.
            with contextlib.suppress(asyncio.QueueFull):
                self._commands.put_nowait(_Command(line.decode("ascii", "replace"), reply))
        if len(inbox) > _READ_SIZE:
            inbox.clear()  # no line end in sight: noise, not a command

    def _forget_commands(self) -> None:
        """Drop the commands not answered yet (the link they came on is gone)."""
        while not self._commands.empty():
            self._commands.get_nowait()

    def _weight_line(self) -> bytes:
        if self.load.limit is not None:
            return f"S {self.load.limit}\r\n".encode("ascii")
        now = self.load.clock()
        net = Decimal(repr(self.load.net(now))) / KG_PER_UNIT[self.unit]
        return format_weight(
            net.quantize(_RESOLUTION[self.unit]), self.unit, stable=self.load.stable(now)
        )

    async def _serve(self) -> None:
        """Answer commands one at a time, in order."""
        command: _Command | None = None
        while True:
            if command is None:
                command = await self._commands.get()
            if self._silent:
                command = None
                continue
            command = await self._answer(command)

    async def _answer(self, command: _Command) -> _Command | None:
        """Answer `command`; return a command that arrived meanwhile and ended it (SIR)."""
        write = command.reply
        match command.text:
            case "SI":
                write(self._weight_line())
            case "S":
                clock = self.load.clock
                deadline = clock() + self._stable_timeout_s
                while self.load.limit is None and not self.load.stable(clock()):
                    if clock() >= deadline:
                        write(b"S I\r\n")
                        return None
                    await asyncio.sleep(_STABLE_POLL_S)
                write(self._weight_line())
            case "SIR":
                while not self._silent:
                    write(self._weight_line())
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation
                    # that arrives with the next command, and the simulator would never stop.
                    try:
                        async with asyncio.timeout(_SIR_PERIOD_S):
                            return await self._commands.get()
                    except TimeoutError:
                        continue
            case "Z":
                write(b"Z A\r\n" if self.load.zero() else b"Z I\r\n")
            case "@":
                write(f'I4 A "{self._serial}"\r\n'.encode("ascii"))
            case _:
                write(b"ES\r\n")
        return None


class SicsScaleSimulator(SicsIndicator):
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
        super().__init__(serial_number=serial_number, stable_timeout_s=stable_timeout_s, seed=seed)
        self._link = Path(link)
        self._cable = SerialCable(self._link, on_receive=self._on_receive)
        self._inbox = bytearray()

    @property
    def path(self) -> Path:
        """The stable path (the symlink) a driver opens."""
        return self._link

    @property
    def device(self) -> str:
        """The pty slave the symlink points at (``/dev/pts/N``), empty while unplugged."""
        return self._cable.device

    @property
    def _label(self) -> str:
        return self._link.name

    def plug(self) -> None:
        """Create the pty, point the symlink at it and start listening. Idempotent."""
        if not self._cable.plugged:
            self._inbox.clear()
            self._cable.plug()

    def unplug(self) -> None:
        """Pull the cable: stop listening, remove the symlink, close the pty. Idempotent."""
        if self._cable.plugged:
            self._cable.unplug()
            self._forget_commands()

    def _on_receive(self, data: bytes) -> None:
        self._receive(self._inbox, data, self._cable.write_all)

    def _broadcast(self, data: bytes) -> None:
        # If the driver stops reading and the line fills up, the rest is lost.
        self._cable.write_all(data)


class SicsScaleTcpSimulator(SicsIndicator):
    """An MT-SICS scale with an Ethernet interface: a TCP server, one session per client.

    Each client gets the answers to its own commands; `garbage` goes to every client.
    `unplug` closes every connection and the listening socket, so that connecting is refused
    until `plug` listens again on the same port.

    Args:
        host: the address to listen on.
        port: the port to listen on; 0 picks a free one (see `port` once plugged in).
        serial_number: sent in the ``I4`` line after a reset (``@``).
        stable_timeout_s: how long ``S`` waits for a stable reading before answering "S I".
        seed: seeds the settling noise and the garbage bytes.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial_number: str = "B123456789",
        stable_timeout_s: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(serial_number=serial_number, stable_timeout_s=stable_timeout_s, seed=seed)
        self._host = host
        self._port = port
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Each connected client and the part of a command line it has sent so far.
        self._clients: dict[socket.socket, bytearray] = {}

    @property
    def host(self) -> str:
        """The address the scale listens on."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port (the one picked at the first `plug` if created with port 0)."""
        return self._port

    @property
    def connections(self) -> int:
        """How many clients are connected now."""
        return len(self._clients)

    @property
    def _label(self) -> str:
        return f"{self._host}:{self._port}"

    def plug(self) -> None:
        """Listen for clients (again on the same port after an `unplug`). Idempotent."""
        if self._listener is not None:
            return
        loop = asyncio.get_running_loop()
        # Made and bound here, without awaiting, so that plug() is synchronous like the pty's.
        listener = socket.create_server((self._host, self._port))
        try:
            listener.setblocking(False)
            loop.add_reader(listener.fileno(), self._on_connect)
        except BaseException:
            listener.close()
            raise
        self._listener, self._loop = listener, loop
        self._port = listener.getsockname()[1]

    def unplug(self) -> None:
        """Pull the cable: close every connection and stop listening. Idempotent."""
        listener, loop = self._listener, self._loop
        if listener is None or loop is None:
            return
        self._listener = None
        loop.remove_reader(listener.fileno())
        listener.close()
        for client in list(self._clients):
            self._hang_up(client)
        self._forget_commands()

    def _on_connect(self) -> None:
        listener, loop = self._listener, self._loop
        if listener is None or loop is None:
            return
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # BlockingIOError: nobody else waiting; or the client gave up already
            client.setblocking(False)
            # Answers are small and awaited one by one: send each at once.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._clients[client] = bytearray()
            loop.add_reader(client.fileno(), self._on_readable, client)

    def _on_readable(self, client: socket.socket) -> None:
        inbox = self._clients.get(client)
        if inbox is None:
            return
        try:
            data = client.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # reset by the client
        if not data:
            self._hang_up(client)  # the client closed its end
            return
        self._receive(inbox, data, functools.partial(self._send, client))

    def _broadcast(self, data: bytes) -> None:
        for client in list(self._clients):
            self._send(client, data)

    def _send(self, client: socket.socket, data: bytes) -> None:
        """Send to one client; if it stops reading and its window fills, the rest is lost."""
        if client not in self._clients:
            return  # it hung up after asking
        view = memoryview(data)
        while view:
            try:
                view = view[client.send(view) :]
            except BlockingIOError:
                return
            except OSError:
                self._hang_up(client)
                return

    def _hang_up(self, client: socket.socket) -> None:
        if self._clients.pop(client, None) is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(client.fileno())
        client.close()


async def _serve(scale: SicsIndicator, *, kg: float, every_s: float, settle_s: float) -> None:
    async with scale:
        if isinstance(scale, SicsScaleSimulator):
            cli.say(f"MT-SICS scale plugged in at {scale.path} -> {scale.device}")
        elif isinstance(scale, SicsScaleTcpSimulator):
            cli.say(f"MT-SICS scale listening on {scale.host}:{scale.port}")
        await cli.play_load(scale.load, kg=kg, every_s=every_s, settle_s=settle_s)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: a scale on a pty (``--link``) or on TCP (``--port``), until Ctrl-C."""
    parser = cli.parser(
        "simulators.sics_scale",
        "A Mettler Toledo MT-SICS scale (S, SI, SIR, Z, @) on a pseudo-terminal (--link) or on"
        " Ethernet (--port).",
    )
    cli.add_serial_or_tcp(parser)
    cli.add_load(parser)
    parser.add_argument(
        "--unit", choices=sorted(KG_PER_UNIT), default="kg", help="unit of the weight replies"
    )
    parser.add_argument("--serial-number", default="B123456789", help="sent after a reset (@)")
    cli.add_seed(parser)
    args = parser.parse_args(argv)
    scale: SicsIndicator
    if cli.serial_or_tcp(parser, args):
        scale = SicsScaleSimulator(args.link, serial_number=args.serial_number, seed=args.seed)
    else:
        scale = SicsScaleTcpSimulator(
            host=args.host, port=args.port, serial_number=args.serial_number, seed=args.seed
        )
    scale.unit = args.unit
    return cli.run(_serve(scale, kg=args.weight, every_s=args.every, settle_s=args.settle_s))


if __name__ == "__main__":
    raise SystemExit(main())
