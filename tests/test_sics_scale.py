"""The MT-SICS scale driver against the scale simulator, on a pty and over TCP (no mocks).

The tests that take `sim` run once per link: the serial scale on a pseudo-terminal and the
Ethernet scale on a TCP port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
import serial_asyncio_fast

from gateway.drivers.base import utc_now
from gateway.drivers.sics import SicsDecoder, WeightReply, encode
from gateway.drivers.sics_scale import KIND, SicsScale
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.supervisor import Backoff, DeviceError, supervise
from simulators.sics_scale import SicsIndicator, SicsScaleSimulator, SicsScaleTcpSimulator
from tests.scale_helpers import Samples, running, settled_at

pytestmark = pytest.mark.timeout(20)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(params=["pty", "tcp"])
async def sim(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SicsIndicator]:
    scale: SicsIndicator
    if request.param == "pty":
        scale = SicsScaleSimulator(tmp_path / "scale0", stable_timeout_s=0.5)
    else:
        scale = SicsScaleTcpSimulator(stable_timeout_s=0.5)
    async with scale:
        yield scale


def link(sim: SicsIndicator) -> dict[str, Any]:
    """The driver's arguments that say where the scale is."""
    if isinstance(sim, SicsScaleTcpSimulator):
        return {"host": sim.host, "tcp_port": sim.port}
    assert isinstance(sim, SicsScaleSimulator)
    return {"port": str(sim.path)}


async def open_link(sim: SicsIndicator) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the scale, as a terminal program would open it."""
    if isinstance(sim, SicsScaleTcpSimulator):
        return await asyncio.open_connection(sim.host, sim.port)
    assert isinstance(sim, SicsScaleSimulator)
    return await serial_asyncio_fast.open_serial_connection(url=str(sim.path))


@pytest.fixture
def health() -> DeviceHealth:
    return StatusBoard(now).add("scale-d01", KIND)


def make_driver(
    sim: SicsIndicator,
    health: DeviceHealth,
    samples: Samples,
    command: Literal["SI", "S", "SIR"] = "SI",
    **kwargs: float,
) -> SicsScale:
    return SicsScale(
        device_id="scale-d01",
        **link(sim),
        command=command,
        poll_s=kwargs.get("poll_s", 0.05),
        timeout_s=kwargs.get("timeout_s", 0.5),
        emit=samples.emit,
        health=health,
        clock=utc_now,
    )


async def test_a_placed_load_moves_then_settles_and_removal_returns_to_zero(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(make_driver(sim, health, samples).run):
        await samples.wait_for(lambda s: s.stable is True and s.kg == 0.0)
        sim.place(812.4, settle_s=0.6)
        moving = await samples.wait_for(lambda s: s.stable is False)
        settled = await samples.wait_for(lambda s: s.stable is True)
        assert settled.kg == pytest.approx(812.4)
        in_motion = [s.kg for s in samples.items if s.stable is False]
        assert moving.kg != pytest.approx(812.4)
        assert max(in_motion) > 812.4  # the reading overshoots before it settles
        sim.remove(settle_s=0.3)
        await samples.wait_for(lambda s: s.stable is False)
        empty = await samples.wait_for(lambda s: s.stable is True)
        assert empty.kg == pytest.approx(0.0, abs=0.01)
    assert health.counts["reads"] == len(samples.items)
    assert health.counts["rejected"] == 0


async def test_overload_gives_a_flagged_sample_without_a_weight(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(make_driver(sim, health, samples).run):
        sim.overload()
        over = await samples.wait_for(lambda s: s.overload)
        assert math.isnan(over.kg) and over.stable is False and not over.underload
        sim.underload()
        under = await samples.wait_for(lambda s: s.underload)
        assert math.isnan(under.kg) and not under.overload
        sim.place(10.0, settle_s=0.0)
        back = await samples.wait_for(lambda s: s.stable is True)
        assert back.kg == pytest.approx(10.0)


async def test_garbage_is_counted_as_rejected_and_the_driver_keeps_reading(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(make_driver(sim, health, samples).run) as task:
        await samples.wait_for(lambda s: True)
        for _ in range(3):
            sim.garbage()
        sim.place(55.5, settle_s=0.0)
        await samples.wait_for(lambda s: s.kg == pytest.approx(55.5))
        assert health.counts["rejected"] == 3
        assert not task.done()


async def test_a_silent_scale_fails_run(sim: SicsIndicator, health: DeviceHealth) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples, timeout_s=0.3)
    sim.silence(True)
    with pytest.raises(DeviceError, match="scale silent"):
        await asyncio.wait_for(driver.run(), 3.0)
    assert samples.items == []


async def test_a_scale_is_connected_only_once_it_answered(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    # The port opens (or the connection is accepted) whether or not the indicator answers.
    samples = Samples()
    sim.silence(True)
    silent = make_driver(sim, health, samples, timeout_s=0.3)
    with pytest.raises(DeviceError, match="scale silent"):
        await asyncio.wait_for(silent.run(), 3.0)
    assert health.state is DeviceState.STARTING
    sim.silence(False)
    async with running(make_driver(sim, health, samples).run):
        await samples.wait_for(lambda s: True)
        assert health.state is DeviceState.CONNECTED


async def test_a_silent_scale_under_the_supervisor_is_never_connected(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    sim.silence(True)
    driver = make_driver(sim, health, samples, timeout_s=0.2)
    states: set[DeviceState] = set()
    async with running(lambda: supervise(driver.run, health, Backoff(0.02, 0.05))):
        async with asyncio.timeout(10):
            while health.counts["errors"] < 3:
                states.add(health.state)
                await asyncio.sleep(0.005)
        assert DeviceState.CONNECTED not in states
        assert health.last_error is not None and "scale silent" in health.last_error
        sim.silence(False)
        await samples.wait_for(lambda s: True, timeout=5.0)
        assert health.state is DeviceState.CONNECTED
        assert health.last_error is None
        assert health.previous_error is not None and "scale silent" in health.previous_error


async def test_silence_after_readings_fails_run(sim: SicsIndicator, health: DeviceHealth) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples, timeout_s=0.3)
    task = asyncio.ensure_future(driver.run())
    await samples.wait_for(lambda s: True)
    sim.silence(True)
    with pytest.raises(DeviceError, match="scale silent"):
        await asyncio.wait_for(task, 3.0)


async def test_a_missing_port_cannot_be_opened(tmp_path: Path, health: DeviceHealth) -> None:
    driver = SicsScale(
        device_id="scale-d01",
        port=str(tmp_path / "nothing"),
        emit=Samples().emit,
        health=health,
        clock=utc_now,
    )
    with pytest.raises(DeviceError, match="cannot open"):
        await driver.run()


async def test_unplug_fails_run(sim: SicsIndicator, health: DeviceHealth) -> None:
    samples = Samples()
    task = asyncio.ensure_future(make_driver(sim, health, samples).run())
    await samples.wait_for(lambda s: True)
    sim.unplug()
    with pytest.raises(DeviceError, match=r"closed|failed"):
        await asyncio.wait_for(task, 3.0)


async def test_the_supervisor_reconnects_after_replug(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples)
    async with running(lambda: supervise(driver.run, health, Backoff(0.05, 0.2))):
        await samples.wait_for(lambda s: True)
        sim.unplug()
        await asyncio.sleep(0.4)  # several failed reopen attempts while unplugged
        unplugged_state = health.state
        assert unplugged_state is DeviceState.DISCONNECTED
        sim.plug()
        sim.place(20.0, settle_s=0.0)
        await samples.wait_for(lambda s: s.kg == pytest.approx(20.0))
        assert health.state is DeviceState.CONNECTED
        assert health.counts["restarts"] >= 1


async def test_each_placed_load_gives_exactly_one_weighing(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples)
    async with running(driver.run):
        for load in (412.3, 987.65):
            sim.place(load, settle_s=0.5)
            await samples.wait_for(settled_at(load))
            await asyncio.sleep(0.3)  # more stable polls of the same load: no new weighing
            sim.remove(settle_s=0.3)
            await samples.wait_for(lambda s: s.stable is True and abs(s.kg) < 0.01)
    assert [round(w.kg, 2) for w in samples.weighings] == [412.3, 987.65]


async def test_the_simulator_answers_every_command(sim: SicsIndicator) -> None:
    reader, writer = await open_link(sim)
    decoder = SicsDecoder()

    async def ask(command: bytes, lines: int = 1) -> list[bytes]:
        writer.write(command)
        got: list[bytes] = []
        async with asyncio.timeout(2.0):
            while len(got) < lines:
                got.append(await reader.readuntil(b"\r\n"))
        return got

    try:
        assert await ask(encode("@")) == [b'I4 A "B123456789"\r\n']
        assert await ask(b"XYZ\r\n") == [b"ES\r\n"]
        sim.place(5.0, settle_s=0.3)
        assert await ask(encode("Z")) == [b"Z I\r\n"]
        (line,) = await ask(encode("S"))  # waits for stability
        (reply,) = decoder.feed(line)
        assert isinstance(reply, WeightReply) and reply.stable and reply.value == 5
        assert await ask(encode("Z")) == [b"Z A\r\n"]
        repeated = await ask(encode("SIR"), lines=3)
        assert [r.split() for r in repeated] == [[b"S", b"S", b"0.00", b"kg"]] * 3  # zeroed
        # The next command ends the repetition; answers of SIR still on the line come first.
        writer.write(encode("@"))
        async with asyncio.timeout(2.0):
            while (await reader.readuntil(b"\r\n")).startswith(b"S S"):
                pass
        sim.place(50.0, settle_s=5.0)
        assert await ask(encode("S")) == [b"S I\r\n"]  # cannot settle within 0.5 s
    finally:
        writer.close()


# --- MT-SICS over TCP only ---------------------------------------------------------------------


def tcp_driver(port: int, health: DeviceHealth, **kwargs: float) -> SicsScale:
    return SicsScale(
        device_id="scale-d01",
        host="127.0.0.1",
        tcp_port=port,
        timeout_s=kwargs.get("timeout_s", 0.5),
        emit=Samples().emit,
        health=health,
        clock=utc_now,
    )


async def test_a_refused_connection_fails_run(health: DeviceHealth) -> None:
    async with SicsScaleTcpSimulator() as sim:
        sim.unplug()  # nothing listens on its port now
        with pytest.raises(
            DeviceError, match=rf"cannot connect to 127.0.0.1:{sim.port}: .*refused"
        ):
            await tcp_driver(sim.port, health).run()


async def test_a_connection_never_answered_fails_run_after_timeout_s(health: DeviceHealth) -> None:
    # A listener whose backlog is full drops further connection requests unanswered, as a
    # switched-off indicator or a pulled cable does.
    full = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = full.getsockname()[1]
    _, first = await asyncio.open_connection("127.0.0.1", port)
    try:
        with pytest.raises(DeviceError, match=r"cannot connect to .*no answer within 0.3 s"):
            await asyncio.wait_for(tcp_driver(port, health, timeout_s=0.3).run(), 3.0)
    finally:
        first.close()
        full.close()


async def test_a_reset_connection_fails_run(health: DeviceHealth) -> None:
    async def reset_after_first_command(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n")
        # Linger 0: closing sends a reset instead of an orderly close.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        writer.transport.abort()

    server = await asyncio.start_server(reset_after_first_command, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(DeviceError, match=rf"127.0.0.1:{port} failed: .*reset"):
            await asyncio.wait_for(tcp_driver(port, health).run(), 3.0)


async def test_the_tcp_scale_refuses_while_unplugged_and_returns_on_its_port() -> None:
    async with SicsScaleTcpSimulator() as sim:
        port = sim.port
        reader, writer = await asyncio.open_connection(sim.host, port)
        try:
            sim.unplug()
            assert await asyncio.wait_for(reader.read(100), 2.0) == b""  # hung up
            assert sim.connections == 0
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(sim.host, port)
        finally:
            writer.close()
        sim.plug()
        assert sim.port == port
        reader, writer = await asyncio.open_connection(sim.host, port)
        try:
            writer.write(encode("@"))
            assert (
                await asyncio.wait_for(reader.readuntil(b"\r\n"), 2.0) == b'I4 A "B123456789"\r\n'
            )
        finally:
            writer.close()


async def test_each_tcp_client_gets_the_answers_to_its_own_commands() -> None:
    async with SicsScaleTcpSimulator() as sim:
        (r1, w1), (r2, w2) = [await asyncio.open_connection(sim.host, sim.port) for _ in "12"]
        try:
            w1.write(b"XYZ\r\n")
            w2.write(encode("@"))
            async with asyncio.timeout(2.0):
                assert await r1.readuntil(b"\r\n") == b"ES\r\n"
                assert await r2.readuntil(b"\r\n") == b'I4 A "B123456789"\r\n'
            sim.garbage()  # noise reaches every client
            async with asyncio.timeout(2.0):
                first, second = await r1.readuntil(b"\r\n"), await r2.readuntil(b"\r\n")
            assert first == second and first[0] >= 0x80
        finally:
            w1.close()
            w2.close()


async def test_streamed_sir_answers_give_one_weighing_per_load(
    sim: SicsIndicator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(make_driver(sim, health, samples, command="SIR").run):
        await samples.wait_for(lambda s: True)
        asked = sim.commands_received
        for load in (250.5, 730.0):
            sim.place(load, settle_s=0.4)
            await samples.wait_for(settled_at(load))
            await asyncio.sleep(0.3)
            sim.remove(settle_s=0.2)
            await samples.wait_for(lambda s: s.stable is True and abs(s.kg) < 0.01)
        # One SIR, then only the indicator talks: about ten answers a second.
        assert sim.commands_received == asked == 1
    assert [round(w.kg, 2) for w in samples.weighings] == [250.5, 730.0]
    assert len(samples.items) > 15


async def test_a_stream_that_stops_fails_run(sim: SicsIndicator, health: DeviceHealth) -> None:
    samples = Samples()
    task = asyncio.ensure_future(make_driver(sim, health, samples, command="SIR").run())
    await samples.wait_for(lambda s: True)
    sim.silence(True)
    with pytest.raises(DeviceError, match="no answer to SIR"):
        await asyncio.wait_for(task, 3.0)


async def test_s_polls_give_only_stable_weights(sim: SicsIndicator, health: DeviceHealth) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples, command="S", timeout_s=1.0)
    async with running(driver.run):
        sim.place(480.0, settle_s=0.8)  # longer than the indicator's 0.5 s: "S I" first
        await samples.wait_for(settled_at(480.0), timeout=5.0)
    assert samples.items and all(s.stable is True for s in samples.items)
    assert health.counts["busy"] >= 1
    assert [round(w.kg, 2) for w in samples.weighings] == [480.0]
