"""The stack light / horn driver against the Modbus TCP coil simulator, over real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes

from gateway.drivers.signal_light import KIND, CoilWriteRefused, SignalLight
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.supervisor import Backoff, DeviceError, supervise
from simulators.modbus_coil import ModbusCoilSimulator

HOLD_S = 0.3
SLACK_S = 0.25  # scheduling and a write's round trip on a busy test machine

pytestmark = pytest.mark.timeout(30)


def now() -> dt.datetime:
    return dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def new_health() -> DeviceHealth:
    return StatusBoard(now).add("horn-d03", KIND)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@pytest.fixture
async def sim() -> AsyncIterator[ModbusCoilSimulator]:
    async with ModbusCoilSimulator(coils=8) as device:
        yield device


@contextlib.asynccontextmanager
async def supervised(light: SignalLight, health: DeviceHealth) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(supervise(light.run, health, Backoff(0.05, 0.2)))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def changes(sim: ModbusCoilSimulator, coil: int) -> list[bool]:
    return [value for _, number, value in sim.history if number == coil]


async def test_alarm_lights_the_coil_until_hold_s_after_it(sim: ModbusCoilSimulator) -> None:
    health = new_health()
    light = SignalLight(host=sim.host, port=sim.port, coil=2, hold_s=HOLD_S, health=health)
    async with supervised(light, health):
        await eventually(lambda: health.state is DeviceState.CONNECTED)
        alarmed_at = time.monotonic()
        light.alarm()
        on_at = await sim.wait_for(2, True)
        assert on_at - alarmed_at < SLACK_S
        off_at = await sim.wait_for(2, False)
        assert HOLD_S - 0.01 <= off_at - alarmed_at <= HOLD_S + SLACK_S
    assert changes(sim, 2) == [True, False]
    assert sim.coils[:8] == [False] * 8  # no other coil touched
    # The state asserted on connect (OFF), then ON, then OFF.
    assert health.counts["writes"] == 3
    assert health.counts["errors"] == 0


async def test_repeated_alarms_keep_it_on_without_flicker(sim: ModbusCoilSimulator) -> None:
    light = SignalLight(host=sim.host, port=sim.port, hold_s=HOLD_S)
    async with supervised(light, new_health()):
        light.alarm()
        await sim.wait_for(0, True)
        for _ in range(4):
            await asyncio.sleep(HOLD_S / 2)
            assert sim.coils[0] is True
            last_alarm = time.monotonic()
            light.alarm()
        off_at = await sim.wait_for(0, False)
    assert HOLD_S - 0.01 <= off_at - last_alarm <= HOLD_S + SLACK_S
    assert changes(sim, 0) == [True, False]
    # Raised before the driver connected: ON is its first write, then one OFF. Five alarms
    # cost two writes.
    assert sim.writes == 2


async def test_a_light_left_on_is_switched_off_on_connect(sim: ModbusCoilSimulator) -> None:
    """A horn left sounding (by a gateway that crashed mid-alarm) is silenced at start."""
    client = AsyncModbusTcpClient(sim.host, port=sim.port, reconnect_delay=0)
    assert await client.connect()
    assert not (await client.write_coil(0, True, device_id=1)).isError()
    client.close()
    light = SignalLight(host=sim.host, port=sim.port, hold_s=HOLD_S)
    async with supervised(light, new_health()):
        await sim.wait_for(0, False)
    assert changes(sim, 0) == [True, False]


async def test_state_is_written_again_every_refresh_s(sim: ModbusCoilSimulator) -> None:
    """A coil switched off behind the driver's back (a watchdog, a person) is put right."""
    health = new_health()
    light = SignalLight(host=sim.host, port=sim.port, hold_s=5.0, refresh_s=0.1, health=health)
    async with supervised(light, health):
        light.alarm()
        await sim.wait_for(0, True)
        client = AsyncModbusTcpClient(sim.host, port=sim.port, reconnect_delay=0)
        assert await client.connect()
        assert not (await client.write_coil(0, False, device_id=1)).isError()
        client.close()
        switched_off_at = time.monotonic()
        back_at = await sim.wait_for(0, True)
        assert back_at - switched_off_at < 0.1 + SLACK_S
    assert changes(sim, 0)[:3] == [True, False, True]
    assert health.counts["errors"] == 0


async def test_device_restarted_mid_alarm_gets_the_alarm_again(sim: ModbusCoilSimulator) -> None:
    health = new_health()
    light = SignalLight(host=sim.host, port=sim.port, hold_s=5.0, health=health)
    async with supervised(light, health):
        light.alarm()
        await sim.wait_for(0, True)
        await sim.stop()  # a power cut: the light goes dark, connections drop
        assert sim.coils[0] is False
        await eventually(lambda: health.state is DeviceState.DISCONNECTED)
        await asyncio.sleep(0.3)  # the driver retries against a closed port meanwhile
        await sim.start()  # same port
        restarted_at = time.monotonic()
        back_at = await sim.wait_for(0, True)
        # Connected once the light answered the write, just after the simulator took it.
        await eventually(lambda: health.state is DeviceState.CONNECTED)
        assert back_at - restarted_at < 0.2 + SLACK_S  # at most one backoff (max 0.2 s)
    assert changes(sim, 0) == [True, False, True, False]  # last: switched off at stop
    assert health.counts["restarts"] >= 1
    assert health.last_error is None  # the light answered again: the outage is history
    assert health.previous_error is not None
    assert health.previous_error.startswith(("connection to", "cannot connect"))


async def test_stopping_the_driver_switches_the_light_off(sim: ModbusCoilSimulator) -> None:
    light = SignalLight(host=sim.host, port=sim.port, hold_s=60.0)
    task = asyncio.create_task(light.run())
    light.alarm()
    await sim.wait_for(0, True)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sim.coils[0] is False
    assert changes(sim, 0) == [True, False]


@pytest.mark.parametrize("code", [ExcCodes.DEVICE_BUSY, ExcCodes.DEVICE_FAILURE])
async def test_exception_response_is_a_device_error_with_its_code(
    sim: ModbusCoilSimulator, code: ExcCodes
) -> None:
    sim.fail_with(code)
    light = SignalLight(host=sim.host, port=sim.port, unit=1, coil=3)
    light.alarm()
    with pytest.raises(CoilWriteRefused) as caught:
        await light.run()
    assert isinstance(caught.value, DeviceError)
    assert caught.value.exception_code == code
    assert f"Modbus exception {int(code)} ({code.name})" in str(caught.value)
    assert f"coil 3 ON on {sim.host}:{sim.port} unit 1" in str(caught.value)
    assert sim.history == []


async def test_coil_outside_the_device_is_refused_and_shown_in_health(
    sim: ModbusCoilSimulator,
) -> None:
    """Illegal address from the device itself; under the supervisor health shows the reason."""
    health = new_health()
    light = SignalLight(host=sim.host, port=sim.port, coil=40, health=health)
    async with supervised(light, health):
        await eventually(lambda: health.counts["errors"] >= 2)
    assert health.last_error is not None
    assert "Modbus exception 2 (ILLEGAL_ADDRESS)" in health.last_error
    assert health.counts.get("writes", 0) == 0


async def test_exception_clears_and_the_alarm_gets_through(sim: ModbusCoilSimulator) -> None:
    health = new_health()
    sim.fail_with(ExcCodes.DEVICE_BUSY)
    light = SignalLight(host=sim.host, port=sim.port, hold_s=5.0, health=health)
    async with supervised(light, health):
        light.alarm()
        await eventually(lambda: health.counts["errors"] >= 1)
        sim.fail_with(None)
        await sim.wait_for(0, True)
        await eventually(lambda: health.state is DeviceState.CONNECTED)


async def test_unreachable_device_is_a_device_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    light = SignalLight(host="127.0.0.1", port=port, timeout_s=0.5)
    with pytest.raises(DeviceError, match=rf"^cannot connect to Modbus TCP 127\.0\.0\.1:{port} "):
        await light.run()


async def test_a_device_that_never_answers_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(256):
                pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        light = SignalLight(host="127.0.0.1", port=port, timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(
            DeviceError,
            match=r"^writing coil 0 OFF on 127\.0\.0\.1:\d+ unit 1: no valid answer within 0\.2 s",
        ):
            await light.run()
        assert time.monotonic() - started < 2.0
    finally:
        server.close()
        await server.wait_closed()


def test_state_is_on_until_hold_s_after_the_latest_alarm() -> None:
    light = SignalLight(host="127.0.0.1", hold_s=0.1)  # never connected: state is just data
    states = [light.state]
    light.alarm()
    states.append(light.state)
    time.sleep(0.06)
    light.alarm()
    time.sleep(0.06)
    states.append(light.state)  # 0.12 s after the first alarm, 0.06 s after the latest
    time.sleep(0.06)
    states.append(light.state)
    assert states == [False, True, True, False]


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="unit"):
        SignalLight(host="127.0.0.1", unit=300)
    with pytest.raises(ValueError, match="hold_s"):
        SignalLight(host="127.0.0.1", hold_s=0)
    with pytest.raises(ValueError, match="refresh_s"):
        SignalLight(host="127.0.0.1", refresh_s=0)
