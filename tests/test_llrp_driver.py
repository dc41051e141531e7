"""The LLRP driver on sllurp against the reader simulator over TCP, with the portal logic."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from gateway.config import LlrpReaderDevice
from gateway.domain import Event, PortalPass, TagReadBatch
from gateway.drivers.llrp import LlrpReader, ReaderClock
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.inbox import Inbox
from gateway.rules.portal import PortalTracker
from gateway.supervisor import Backoff, supervise
from gateway.wiring import portal_settings
from simulators.llrp import LlrpReaderSimulator, Scenario, StrayTag, day_scenario
from tests.time_helpers import SPEED, AcceleratedClock


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def device(port: int, **extra: Any) -> LlrpReaderDevice:
    return LlrpReaderDevice.model_validate(
        {
            "id": "d03-reader",
            "kind": "llrp_reader",
            "door": "D03",
            "transport": {"type": "tcp", "host": "127.0.0.1", "port": port},
            "antennas": {"outside": [1, 2], "inside": [3, 4]},
            "keepalive_s": 0.5,
            "connect_timeout_s": 3,
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def supervised(
    config: LlrpReaderDevice,
    *,
    reader_clock: ReaderClock | None = None,
    clock: Callable[[], dt.datetime] = now,
) -> AsyncIterator[tuple[asyncio.Queue[Event], DeviceHealth, asyncio.Task[None]]]:
    queue = Inbox(maxsize=10_000)
    health = StatusBoard(clock).add(config.id, "llrp_reader")
    driver = LlrpReader(config, sink=queue, health=health, clock=clock, reader_clock=reader_clock)
    task = asyncio.create_task(supervise(driver.run, health, Backoff(0.05, 0.2)))
    try:
        yield queue, health, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Any, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def drain(queue: asyncio.Queue[Event]) -> list[TagReadBatch]:
    out = []
    while not queue.empty():
        event = queue.get_nowait()
        assert isinstance(event, TagReadBatch)
        out.append(event)
    return out


STRAYS = Scenario(
    strays=[StrayTag(bytes.fromhex("3074257BF7194E4000001A85"), antennas=[1, 3], rssi=-50)],
    seed=1,
)


@pytest.mark.slow(36)
async def test_a_day_of_fifty_pallets_matches_the_ground_truth_item_by_item() -> None:
    # Ten times faster than real time: fast enough for the suite, slow enough that a busy
    # machine does not squeeze a scenario second into a few milliseconds. The read rate is per
    # wall-clock second: 625 reads per scenario second.
    scenario = day_scenario(50, seed=11, time_scale=10, door="D03")
    async with LlrpReaderSimulator(scenario, reads_per_s=6250) as sim:
        config = device(sim.port)
        tracker = PortalTracker(portal_settings(config))
        passes: list[PortalPass] = []
        # The simulator plays the day faster than real time: the portal logic
        # follows the reader's clock, as it would a reader synchronised by NTP, and
        # time moves with the reads (event time: the newest read handled; the strays keep
        # it going), so a busy machine that delivers reads late cannot end a pass early.
        async with supervised(config, reader_clock=ReaderClock(trust_reader=True)) as (
            queue,
            health,
            _,
        ):
            deadline = time.monotonic() + 120
            newest = 0.0
            while not sim.started or sim.scenario_time < scenario.end_s + 20:
                assert time.monotonic() < deadline
                with contextlib.suppress(TimeoutError):
                    batch = await asyncio.wait_for(queue.get(), 0.05)
                    assert isinstance(batch, TagReadBatch)
                    passes += tracker.on_reads(batch.reads)
                    newest = max([newest, *(r[3] for r in batch.reads)])
                if newest:
                    passes += tracker.on_tick(newest)
            assert health.counts["errors"] == 0
        truth = sorted(
            (c.direction, tuple(sorted(epc.hex().upper() for epc in c.epcs)))
            for c in sim.ground_truth
        )
    assert len(truth) == 50
    assert {d for d, _ in truth} == {"inbound", "outbound"}
    got = sorted((p.direction.value, p.epcs) for p in passes)
    assert got == truth  # every pass, its direction and its exact EPC set; no stray makes one


@pytest.mark.slow(4)
async def test_reads_land_on_an_accelerated_gateway_clock_that_runs_as_fast_as_the_readers() -> (
    None
):
    # A reader playing SPEED times fast, and the gateway's clock running as fast (a scenario
    # test): the reader's clock is mapped onto the gateway's, with arrivals on the gateway's
    # clock, so each read lands just before its batch arrived, seconds (gateway time) into
    # the run as at its start. Arrivals on the wall clock would leave the reads further
    # behind each second, SPEED - 1 seconds per second.
    clock = AcceleratedClock(SPEED)
    scenario = Scenario(strays=STRAYS.strays, time_scale=SPEED, seed=1)
    async with (
        LlrpReaderSimulator(scenario, reads_per_s=500) as sim,
        supervised(device(sim.port), clock=clock) as (queue, health, _),
    ):
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        started = clock()
        await until(lambda: clock() - started > dt.timedelta(seconds=16), what="16 s to pass")
        drain(queue)
        await until(lambda: not queue.empty(), what="reads")
        batches = drain(queue)
    behind = sorted(b.at.timestamp() - read[3] for b in batches for read in b.reads)
    assert behind[0] >= 0.0  # a read is never placed after its batch arrived
    max_latency_s = ReaderClock().max_latency_s
    assert behind[-1] <= max_latency_s + 1.0
    assert behind[len(behind) // 2] < 2.0


async def test_reader_dropped_and_restarted_twenty_times() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reads_per_s=500) as sim,
        supervised(device(sim.port)) as (queue, health, task),
    ):
        for cycle in range(20):
            await until(lambda: health.state is DeviceState.CONNECTED, what=f"connect {cycle}")
            await until(lambda: not queue.empty(), what="reads")
            drain(queue)
            if cycle % 2:
                await sim.drop_connections()
            else:
                await sim.restart(down_for_s=0.1)
            await until(lambda: health.state is DeviceState.DISCONNECTED, what="disconnect")
            assert not task.done()  # no exception escaped the supervisor
        await until(lambda: health.state is DeviceState.CONNECTED, what="last connect")
        assert health.counts["restarts"] >= 20
        assert health.last_error is None  # connected: the drop is history
        assert health.previous_error
        assert sim.stats.connections >= 21


@pytest.mark.parametrize("kind", ["garbage", "bad_length", "unknown_type", "truncated_parameter"])
async def test_malformed_frames_are_survived(kind: str) -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reads_per_s=500) as sim,
        supervised(device(sim.port)) as (queue, health, task),
    ):
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        await until(lambda: not queue.empty(), what="reads")
        connections = sim.stats.connections
        for _ in range(3):
            sim.send_malformed(kind)  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
        drain(queue)
        # Reads flow again: on the same connection, or after the watchdog reconnected.
        await until(lambda: not queue.empty(), timeout=10, what="reads after malformed frames")
        assert not task.done()
        await until(
            lambda: any(
                read[0] == "3074257BF7194E4000001A85"
                for batch in drain(queue)
                for read in batch.reads
            ),
            what="the stray tag read again",
        )
        if kind in ("garbage", "bad_length", "truncated_parameter"):
            # The driver frames the reader's messages itself: a frame it cannot read is
            # counted and skipped (or, failing that, the watchdog reconnects).
            await until(lambda: health.counts.get("malformed", 0) >= 1, what="malformed count")
        if kind == "unknown_type":
            # A message of no known type is counted and skipped, on the same connection.
            await until(lambda: health.counts.get("malformed", 0) >= 1, what="malformed count")
            assert sim.stats.connections == connections


async def test_refused_configuration_is_a_clear_status_and_recovers() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reject_config=True) as sim,
        supervised(device(sim.port)) as (queue, health, task),
    ):
        await until(lambda: health.counts["errors"] >= 3, what="refusals")
        assert health.state is DeviceState.DISCONNECTED
        assert "refused the configuration" in (health.last_error or "")
        assert not task.done()
        sim.reject_config = False  # the integrator fixes the reader
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        await until(lambda: not queue.empty(), what="reads")


async def test_a_refused_request_shows_the_readers_own_status_not_a_closed_connection() -> None:
    # An older reader that does not know ENABLE_EVENTS_AND_REPORTS answers ERROR_MESSAGE.
    async with (
        LlrpReaderSimulator(STRAYS, unsupported={"ENABLE_EVENTS_AND_REPORTS"}) as sim,
        supervised(device(sim.port)) as (queue, health, task),
    ):
        await until(lambda: health.counts["errors"] >= 2, what="refusals")
        assert health.state is DeviceState.DISCONNECTED
        error = health.last_error or ""
        assert error.startswith("reader refused the configuration: ERROR_MESSAGE: ")
        assert "UnsupportedMessage" in error
        assert "message type 64 not supported" in error  # the reader's own description
        assert "connection closed" not in error
        assert health.last_error_at is not None
        assert not task.done()
        sim.unsupported = frozenset()  # a firmware update
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        assert health.last_error is None
        assert (health.previous_error or "").startswith("reader refused the configuration")
        await until(lambda: not queue.empty(), what="reads")


async def test_a_refused_configuration_shows_the_status_code_and_description() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reject_config=True) as sim,
        supervised(device(sim.port)) as (_, health, __),
    ):
        await until(lambda: health.counts["errors"] >= 1, what="a refusal")
        error = health.last_error or ""
        assert error.startswith("reader refused the configuration: SET_READER_CONFIG_RESPONSE: ")
        assert "ParameterError" in error
        assert "this reader rejects every configuration" in error


async def test_a_request_refused_while_inventorying_is_shown_as_the_current_error() -> None:
    # This reader answers every KEEPALIVE_ACK with an ERROR_MESSAGE, and goes on reading.
    async with (
        LlrpReaderSimulator(STRAYS, reads_per_s=200, unsupported={"KEEPALIVE_ACK"}) as sim,
        supervised(device(sim.port)) as (queue, health, _),
    ):
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        await until(lambda: health.last_error is not None, what="the refusal")
        error = health.last_error or ""
        assert error.startswith("reader refused a request: ERROR_MESSAGE: UnsupportedMessage")
        assert health.state is DeviceState.CONNECTED
        drain(queue)
        await until(lambda: not queue.empty(), what="reads go on")
        assert sim.stats.connections == 1


async def test_an_undecodable_frame_during_the_setup_fails_it_at_once() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, malformed_in_setup="bad_length") as sim,
        supervised(device(sim.port, connect_timeout_s=30)) as (queue, health, task),
    ):
        began = time.monotonic()
        await until(lambda: health.counts["errors"] >= 2, timeout=10, what="failed setups")
        assert time.monotonic() - began < 10  # not after connect_timeout_s (30 s) each
        error = health.last_error or ""
        assert error.startswith("reader sent a frame that could not be decoded while being set up")
        assert "impossible message length 4" in error
        assert health.counts["malformed"] >= 2
        assert not task.done()
        sim.malformed_in_setup = None
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        await until(lambda: not queue.empty(), what="reads")


async def test_a_malformed_frame_while_inventorying_shows_once_per_connection() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reads_per_s=500) as sim,
        supervised(device(sim.port)) as (queue, health, _),
    ):
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        await until(lambda: not queue.empty(), what="reads")
        sim.send_malformed("unknown_type")
        await until(lambda: health.counts.get("malformed", 0) >= 1, what="malformed count")
        error = health.last_error or ""
        assert error.startswith("reader sent a frame that could not be decoded: ")
        assert health.state is DeviceState.CONNECTED
        shown = health.counts.get("device_errors", 0)
        sim.send_malformed("unknown_type")
        await until(lambda: health.counts.get("malformed", 0) >= 2, what="second malformed")
        assert health.counts.get("device_errors", 0) == shown  # counted, not shown again
        assert sim.stats.connections == 1


async def test_reader_exception_event_shows_on_the_status_without_a_reconnect() -> None:
    async with (
        LlrpReaderSimulator(STRAYS, reads_per_s=200) as sim,
        supervised(device(sim.port)) as (queue, health, _),
    ):
        await until(lambda: health.state is DeviceState.CONNECTED, what="connect")
        sim.send_reader_exception("antenna 3 disconnected")
        await until(lambda: health.counts.get("device_errors", 0) == 1, what="the exception")
        assert health.last_error == "reader exception: antenna 3 disconnected"
        assert health.state is DeviceState.CONNECTED
        drain(queue)
        await until(lambda: not queue.empty(), what="reads go on")
        assert sim.stats.connections == 1


async def test_unreachable_and_mute_readers() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never speaks LLRP
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with supervised(device(port, connect_timeout_s=0.5)) as (_, health, task):
            await until(lambda: health.counts["errors"] >= 2, what="timeouts")
            assert "did not start inventory" in (health.last_error or "")
            assert not task.done()
    finally:
        server.close()
    async with supervised(device(port)) as (_, health, task):
        await until(lambda: health.counts["errors"] >= 2, what="refused connections")
        assert "cannot connect" in (health.last_error or "")


async def test_stopped_while_connecting_leaves_no_connection_behind() -> None:
    import threading

    async with LlrpReaderSimulator(STRAYS, reads_per_s=200) as sim:
        for delay in (0.0, 0.01, 0.05):
            async with supervised(device(sim.port)) as (_, health, task):
                await asyncio.sleep(delay)  # cancelled somewhere in the connect and handshake
            assert task.cancelled() or task.done()
            await until(lambda: sim.stats.active_connections == 0, what="the connection closed")
            await until(
                lambda: not any(t.name.startswith("sllurp-reader") for t in threading.enumerate()),
                what="sllurp's thread gone",
            )
            assert health.state in (DeviceState.STOPPED, DeviceState.STARTING)


async def test_reports_the_full_inbox_cannot_take_are_dropped_and_counted() -> None:
    # Overflow policy: a full inbox drops the newest report (counted), never blocks sllurp.
    inbox = Inbox(maxsize=1)
    health = StatusBoard(now).add("d03-reader", "llrp_reader")
    reader = LlrpReader(device(1), sink=inbox, health=health, clock=now)
    reads = (
        ("3034257BF7194E4000001A85", 1, -50, 1.0, 2),
        ("3034257BF7194E4000001A86", 2, -60, 1.0, 1),
    )
    reader._deliver(reads)
    reader._deliver(reads)  # the inbox is full now
    assert inbox.qsize() == 1
    assert health.counts["reads"] == 3
    assert health.counts["dropped"] == 2
