"""The MT-SICS scale driver against the pseudo-terminal scale simulator (no mocks)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import serial_asyncio_fast

from gateway.drivers.sics import SicsDecoder, WeightReply, encode
from gateway.drivers.sics_scale import KIND, SicsScale
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.rules.weighing import WeighingSettings, WeightCapture, WeightSample
from gateway.supervisor import Backoff, DeviceError, supervise
from simulators.sics_scale import SicsScaleSimulator

pytestmark = pytest.mark.timeout(20)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SicsScaleSimulator]:
    async with SicsScaleSimulator(tmp_path / "scale0", stable_timeout_s=0.5) as scale:
        yield scale


@pytest.fixture
def health() -> DeviceHealth:
    return StatusBoard(now).add("scale-d01", KIND)


class Samples:
    """What the driver emitted, with a way to wait for the next one that matches."""

    def __init__(self) -> None:
        self.items: list[WeightSample] = []
        self._new = asyncio.Event()

    async def emit(self, sample: WeightSample) -> None:
        self.items.append(sample)
        self._new.set()

    async def wait_for(
        self, match: Callable[[WeightSample], bool], timeout: float = 3.0
    ) -> WeightSample:
        start = len(self.items)
        async with asyncio.timeout(timeout):
            while True:
                for sample in self.items[start:]:
                    if match(sample):
                        return sample
                start = len(self.items)
                self._new.clear()
                await self._new.wait()


def make_driver(
    sim: SicsScaleSimulator, health: DeviceHealth, samples: Samples, **kwargs: float
) -> SicsScale:
    return SicsScale(
        device_id="scale-d01",
        port=str(sim.path),
        poll_s=kwargs.get("poll_s", 0.05),
        timeout_s=kwargs.get("timeout_s", 0.5),
        emit=samples.emit,
        health=health,
        clock=time.monotonic,
    )


@contextlib.asynccontextmanager
async def running(
    driver_run: Callable[[], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(driver_run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceError):
            await task


async def test_a_placed_load_moves_then_settles_and_removal_returns_to_zero(
    sim: SicsScaleSimulator, health: DeviceHealth
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
    sim: SicsScaleSimulator, health: DeviceHealth
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
    sim: SicsScaleSimulator, health: DeviceHealth
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


async def test_a_silent_scale_fails_run(sim: SicsScaleSimulator, health: DeviceHealth) -> None:
    samples = Samples()
    driver = make_driver(sim, health, samples, timeout_s=0.3)
    sim.silence(True)
    with pytest.raises(DeviceError, match="scale silent"):
        await asyncio.wait_for(driver.run(), 3.0)
    assert samples.items == []


async def test_silence_after_readings_fails_run(
    sim: SicsScaleSimulator, health: DeviceHealth
) -> None:
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
        clock=time.monotonic,
    )
    with pytest.raises(DeviceError, match="cannot open"):
        await driver.run()


async def test_unplug_fails_run(sim: SicsScaleSimulator, health: DeviceHealth) -> None:
    samples = Samples()
    task = asyncio.ensure_future(make_driver(sim, health, samples).run())
    await samples.wait_for(lambda s: True)
    sim.unplug()
    with pytest.raises(DeviceError):
        await asyncio.wait_for(task, 3.0)


async def test_the_supervisor_reconnects_after_replug(
    sim: SicsScaleSimulator, health: DeviceHealth
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


def settled_at(kg: float) -> Callable[[WeightSample], bool]:
    return lambda s: s.stable is True and s.kg == pytest.approx(kg)


async def test_each_placed_load_gives_exactly_one_weighing(
    sim: SicsScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    capture = WeightCapture(WeighingSettings())
    weighings = []

    async def emit(sample: WeightSample) -> None:
        weighings.extend(capture.on_sample(sample))
        await samples.emit(sample)

    driver = SicsScale(
        device_id="scale-d01",
        port=str(sim.path),
        poll_s=0.05,
        emit=emit,
        health=health,
        clock=time.monotonic,
    )
    async with running(driver.run):
        for load in (412.3, 987.65):
            sim.place(load, settle_s=0.5)
            await samples.wait_for(settled_at(load))
            await asyncio.sleep(0.3)  # more stable polls of the same load: no new weighing
            sim.remove(settle_s=0.3)
            await samples.wait_for(lambda s: s.stable is True and abs(s.kg) < 0.01)
    assert [round(w.kg, 2) for w in weighings] == [412.3, 987.65]


async def test_the_simulator_answers_every_command(sim: SicsScaleSimulator) -> None:
    reader, writer = await serial_asyncio_fast.open_serial_connection(url=str(sim.path))
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
