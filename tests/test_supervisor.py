"""The supervisor: restarts with capped, jittered backoff; health logged once per transition."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest
from structlog.testing import capture_logs

from gateway.health import DeviceState, StatusBoard
from gateway.supervisor import Backoff, DeviceError, supervise


def now() -> dt.datetime:
    return dt.datetime(2026, 11, 25, tzinfo=dt.UTC)


def test_backoff_grows_is_jittered_and_capped() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(12)]
    ceilings = [min(8.0, 0.5 * 2**i) for i in range(12)]
    assert all(0.5 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays) <= 8.0
    assert len(set(delays)) == len(delays)  # jittered: no two alike
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_failing_driver_is_restarted_and_logged_once_per_transition() -> None:
    board = StatusBoard(now)
    health = board.add("fl-07", "barcode_scanner")
    attempts = 0
    running = asyncio.Event()

    async def driver() -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 4:
            raise DeviceError("cannot open /dev/ttyUSB0: No such file or directory")
        health.connected()
        running.set()
        await asyncio.sleep(3600)

    with capture_logs() as logs:
        task = asyncio.create_task(supervise(driver, health, Backoff(0.001, 0.005)))
        await asyncio.wait_for(running.wait(), 5)
        assert health.state is DeviceState.CONNECTED
        assert health.counts["restarts"] == 4
        assert health.counts["errors"] == 4
        # Connected again: the error is history, no longer current.
        assert health.last_error is None
        assert health.previous_error == "cannot open /dev/ttyUSB0: No such file or directory"
        assert health.previous_error_at == now()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert health.state is DeviceState.STOPPED
    events = [e["event"] for e in logs if e["log_level"] in ("warning", "info")]
    # Four failures in a row are one transition: logged once.
    assert events == ["device down", "device connected", "device stopped"]


async def test_an_unexpected_exception_is_a_device_failure_not_a_crash() -> None:
    board = StatusBoard(now)
    health = board.add("fl-07", "barcode_scanner")
    calls = 0

    async def driver() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("driver bug")
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise(driver, health, Backoff(0.001, 0.002)))
    while calls < 2:
        await asyncio.sleep(0.01)
    assert health.last_error == "driver bug"
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_status_board_publishes_transitions_at_once_and_counts_periodically() -> None:
    board = StatusBoard(now, refresh_s=0.2)
    health = board.add("fl-07", "barcode_scanner")
    assert [h.device_id for h in await board.changed()] == ["fl-07"]
    health.connected()
    assert [h.device_id for h in await asyncio.wait_for(board.changed(), 0.1)] == ["fl-07"]
    health.count("reads")  # a count alone waits for the refresh period
    loop = asyncio.get_running_loop()
    began = loop.time()
    changed = await board.changed()
    assert [h.device_id for h in changed] == ["fl-07"]
    assert loop.time() - began >= 0.15
    assert changed[0].payload()["counts"]["reads"] == 1
