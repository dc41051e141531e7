"""MT-SICS scale driver, on a serial port (pyserial-asyncio-fast) or over TCP.

Many Mettler Toledo indicators offer both: over Ethernet, MT-SICS is the same CR LF lines
on a TCP connection to the indicator. Only opening the link differs; the polling below is
the same for both.

`command` says how weights are asked for:

- ``SI`` (the default): polled every `poll_s`, one command outstanding at a time: the next
  poll is sent only after the answer to the last one arrived (or `timeout_s` passed, which is
  a device failure). Every answer is a sample, stable ("S S") or in motion ("S D").
- ``S``: polled the same way, but the indicator answers only with a stable weight, or "S I"
  when the weight does not settle within its own timeout (which must be below `timeout_s`).
- ``SIR``: sent once; the indicator then streams an SI answer at every display update until
  the next command. A gap of `timeout_s` in the stream is a device failure. When the driver
  stops it sends ``SI``, best effort, to end the stream.

Answers are decoded by the sans-IO `SicsDecoder` and handed to the rules as `WeightSample`s
in kilograms.

Replies that are not weights:

- "S +" overload / "S -" underload: a sample with ``overload`` / ``underload`` set,
  ``kg=math.nan`` (the weight is unknown) and ``stable=False``.
- "S I" (busy): no sample; counted as ``busy``.
- ES / ET / EL error replies and garbage lines: counted as ``rejected`` and logged once per
  kind. An error reply answers the poll; a garbage line does not (the answer may still come).
- A weight in a unit that is not g, kg, t or lb: counted as ``rejected``, no sample.

The scale's status is `connected` from its first answer (garbage is no answer), not from
when the port or the connection opens.

When the port cannot be opened (the connection is refused, or not made within `timeout_s`),
closes (the indicator hangs up), fails (a reset), or the scale does not answer within
`timeout_s`, `run()` raises `DeviceError`; the supervisor reopens it with backoff.
Overflow policy: `emit` waits when the rules' queue is full, and no poll is sent meanwhile,
so a slow consumer slows the polling down rather than queueing readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import serial
import serial_asyncio_fast
import structlog

from gateway.config import SicsScaleDevice, SicsTcpTransport
from gateway.domain import KG_PER_UNIT, WeightSample
from gateway.drivers.base import Clock, DriverContext
from gateway.drivers.sics import (
    ErrorReply,
    Garbage,
    Reply,
    ScaleStatus,
    SicsDecoder,
    WeightReply,
    ZeroReply,
    encode,
)
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

__all__ = ["KIND", "SicsScale"]

log = structlog.get_logger("gateway.drivers.sics_scale")

KIND = "sics_scale"

_READ_SIZE: Final = 4096


class SicsScale:
    """One MT-SICS scale, on a serial port or over TCP. `run()` polls until the link fails.

    Give either `port` (serial) or `host` and `tcp_port` (TCP).

    Args:
        device_id: the scale's id; also the `scale_id` of its samples.
        port: serial device path (or pyserial URL).
        baudrate: serial line speed; 8N1 framing.
        host: the indicator's address, for MT-SICS over TCP.
        tcp_port: the indicator's MT-SICS TCP port.
        command: ``SI`` or ``S`` (polled) or ``SIR`` (streamed); see the module docstring.
        poll_s: time between the starts of two polls.
        timeout_s: longest wait for an answer before the scale counts as silent, and for
            a TCP connection to be made.
        emit: hands a sample to the rules; may wait (backpressure).
        health: this scale's health record.
        clock: the gateway clock; samples carry its time in seconds.
    """

    def __init__(
        self,
        *,
        device_id: str,
        port: str | None = None,
        baudrate: int = 9600,
        host: str | None = None,
        tcp_port: int | None = None,
        command: Literal["SI", "S", "SIR"] = "SI",
        poll_s: float = 0.2,
        timeout_s: float = 1.0,
        emit: Callable[[WeightSample], Awaitable[None]],
        health: DeviceHealth,
        clock: Clock,
    ) -> None:
        if poll_s <= 0 or timeout_s <= 0:
            raise ValueError(f"poll_s and timeout_s must be positive, got {poll_s}, {timeout_s}")
        if (port is None) == (host is None) or (host is None) != (tcp_port is None):
            raise ValueError("give a serial `port`, or a TCP `host` and `tcp_port`")
        self.device_id = device_id
        self.port = port
        self.baudrate = baudrate
        self.host = host
        self.tcp_port = tcp_port
        # The link, as the error messages name it (an IPv6 address in brackets).
        address = f"[{host}]" if host is not None and ":" in host else host
        self._where = port if port is not None else f"{address}:{tcp_port}"
        self.command = command
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._emit = emit
        self._health = health
        self._clock = clock
        # Kinds of bad reply already logged: each is logged once, then only counted.
        self._logged: set[str] = set()

    async def run(self) -> None:
        """Open the link and poll the scale until it fails (raises `DeviceError`)."""
        reader, writer = await self._open()
        decoder = SicsDecoder()
        pending: deque[Reply] = deque()
        loop = asyncio.get_running_loop()
        streaming = self.command == "SIR"
        try:
            if streaming:
                await self._send(writer, "SIR")
            while True:
                started = loop.time()
                if not streaming:
                    await self._send(writer, self.command)
                try:
                    async with asyncio.timeout(self.timeout_s):
                        reply = await self._answer(reader, decoder, pending)
                except TimeoutError:
                    raise DeviceError(
                        f"scale silent: no answer to {self.command} within {self.timeout_s} s "
                        f"on {self._where}"
                    ) from None
                # Connected once the scale answered (a weight, a status or an error reply),
                # not when the port opened: a serial port opens with nothing on the line.
                self._health.connected()
                await self._handle(reply)
                if not streaming:
                    await asyncio.sleep(max(0.0, self.poll_s - (loop.time() - started)))
        finally:
            if streaming and not writer.is_closing():
                with contextlib.suppress(OSError, serial.SerialException):
                    writer.write(encode("SI"))  # any command ends the stream
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, command: Literal["SI", "S", "SIR"]) -> None:
        try:
            writer.write(encode(command))
            await writer.drain()
        except (OSError, serial.SerialException) as err:
            raise DeviceError(f"{self._where} failed: {err}") from err

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open the serial port, or connect to the indicator's TCP port."""
        if self.port is not None:
            try:
                return await serial_asyncio_fast.open_serial_connection(
                    url=self.port, baudrate=self.baudrate
                )
            except (OSError, serial.SerialException) as err:
                raise DeviceError(f"cannot open {self.port}: {err}") from err
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.open_connection(self.host, self.tcp_port)
        except TimeoutError:
            # A pulled cable or a switched-off indicator: the connection is never answered.
            raise DeviceError(
                f"cannot connect to {self._where}: no answer within {self.timeout_s:g} s"
            ) from None
        except ConnectionRefusedError as err:
            raise DeviceError(
                f"cannot connect to {self._where}: connection refused (nothing listens there:"
                " a wrong port, or the indicator is restarting)"
            ) from err
        except OSError as err:  # no route to host, unknown host name
            raise DeviceError(f"cannot connect to {self._where}: {err}") from err

    async def _answer(
        self, reader: asyncio.StreamReader, decoder: SicsDecoder, pending: deque[Reply]
    ) -> WeightReply | ScaleStatus | ErrorReply:
        """Read until the answer to the outstanding poll arrives."""
        while True:
            while pending:
                reply = pending.popleft()
                match reply:
                    case WeightReply() | ScaleStatus() | ErrorReply():
                        return reply
                    case Garbage(reason=reason):
                        self._reject("garbage", reason=reason, raw=reply.raw[:32].hex())
                    case ZeroReply():
                        pass  # a late answer to a Z sent by someone else: not ours
            try:
                data = await reader.read(_READ_SIZE)
            except (OSError, serial.SerialException) as err:  # a TCP reset, a serial fault
                raise DeviceError(f"{self._where} failed: {err}") from err
            if not data:
                raise DeviceError(f"{self._where} closed (scale unplugged, or it hung up?)")
            self._health.data_received()
            pending.extend(decoder.feed(data))

    async def _handle(self, reply: WeightReply | ScaleStatus | ErrorReply) -> None:
        match reply:
            case WeightReply(stable=stable, value=value, unit=unit):
                factor = KG_PER_UNIT.get(unit)
                if factor is None:
                    self._reject(f"unit {unit}", reason="unknown weight unit", raw=reply.raw)
                    return
                sample = WeightSample(
                    self.device_id,
                    at=self._clock().timestamp(),
                    kg=float(value * factor),
                    stable=stable,
                )
            case ScaleStatus(code="+" | "-" as code):
                sample = WeightSample(
                    self.device_id,
                    at=self._clock().timestamp(),
                    kg=math.nan,
                    stable=False,
                    overload=code == "+",
                    underload=code == "-",
                )
            case ScaleStatus():
                self._health.count("busy")  # "S I": no weight this time, ask again next poll
                return
            case ErrorReply(code=code):
                self._reject(code, reason=f"error reply to {self.command}", raw=reply.raw)
                return
        self._health.count("reads")
        await self._emit(sample)

    def _reject(self, kind: str, *, reason: str, raw: str) -> None:
        self._health.count("rejected")
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "scale reply rejected (logged once per kind)",
                device=self.device_id,
                kind=kind,
                reason=reason,
                raw=raw,
            )


def build(device: SicsScaleDevice, ctx: DriverContext) -> SicsScale:
    """The driver of a configured MT-SICS scale (serial or TCP)."""
    transport = device.transport
    if isinstance(transport, SicsTcpTransport):
        link: dict[str, Any] = {"host": transport.host, "tcp_port": transport.port}
    else:
        link = {"port": transport.port, "baudrate": transport.baudrate}
    return SicsScale(
        device_id=device.id,
        **link,
        command=device.command,
        poll_s=device.poll_s,
        timeout_s=device.timeout_s,
        emit=ctx.sink.put,
        health=ctx.health,
        clock=ctx.clock,
    )
