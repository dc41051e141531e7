"""Every device kind's status, in each of its states, against the published `device-status` schema.

The payloads are built the way the bridge builds them: a `StatusBoard`'s health records, driven
by the supervisor, encoded with the wire codec and read back as a consumer would.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest

from gateway.drivers.registry import DRIVERS
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.schemas import schema
from gateway.supervisor import Backoff, DeviceError, supervise
from gateway.wire.codec import encode
from tests.gateway_helpers import assert_valid

KINDS = sorted(DRIVERS)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.at = dt.datetime(2026, 11, 25, 14, 30, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at

    def tick(self, seconds: float = 1.0) -> None:
        self.at += dt.timedelta(seconds=seconds)


def wire(health: DeviceHealth) -> dict[str, Any]:
    """The status as it goes on the wire, read back."""
    payload: dict[str, Any] = json.loads(encode(health.payload()))
    assert_valid("device-status", payload)
    return payload


def test_the_schema_knows_every_device_kind_of_the_registry() -> None:
    assert set(schema("device-status")["properties"]["kind"]["enum"]) == set(DRIVERS)


@pytest.mark.parametrize("kind", KINDS)
async def test_each_kind_in_each_state_is_valid(kind: str) -> None:
    clock = Clock()
    board = StatusBoard(clock)
    health = board.add("dev-1", kind)
    starting = wire(health)
    assert (starting["kind"], starting["state"], starting["connected"]) == (kind, "starting", False)
    assert starting["last_error"] is starting["last_error_at"] is None
    assert starting["previous_error"] is starting["previous_error_at"] is None

    attempts = 0
    seen: list[dict[str, Any]] = []
    answered = asyncio.Event()

    async def driver() -> None:
        nonlocal attempts
        attempts += 1
        clock.tick()
        if attempts <= 2:
            seen.append(wire(health))
            raise DeviceError("cannot open /dev/ttyUSB0: No such file or directory")
        seen.append(wire(health))
        health.connected()
        answered.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervise(driver, health, Backoff(0.001, 0.002)))
    await asyncio.wait_for(answered.wait(), 5)
    disconnected = seen[-1]
    assert (disconnected["state"], disconnected["connected"]) == ("disconnected", False)
    assert disconnected["last_error"] == "cannot open /dev/ttyUSB0: No such file or directory"
    # The same failure seen again: its time moved on.
    assert disconnected["last_error_at"] == "2026-11-25T14:30:02.000Z"

    connected = wire(health)
    assert (connected["state"], connected["connected"]) == ("connected", True)
    assert connected["last_error"] is connected["last_error_at"] is None
    assert connected["previous_error"] == disconnected["last_error"]
    assert connected["previous_error_at"] == "2026-11-25T14:30:02.000Z"
    assert connected["counts"]["errors"] == 2

    # A problem the device reports while it keeps working: current, then history again.
    clock.tick()
    health.note_error("Modbus exception 6 (DEVICE_BUSY) reading 11 holding registers")
    noted = wire(health)
    assert noted["state"] == "connected"
    assert noted["last_error"] == "Modbus exception 6 (DEVICE_BUSY) reading 11 holding registers"
    assert noted["last_error_at"] == "2026-11-25T14:30:04.000Z"
    health.clear_error()
    cleared = wire(health)
    assert cleared["last_error"] is None
    assert cleared["previous_error"] == noted["last_error"]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped = wire(health)
    assert (stopped["state"], stopped["connected"]) == ("stopped", False)
    assert health.state is DeviceState.STOPPED


@pytest.mark.parametrize("kind", KINDS)
def test_stopped_while_down_keeps_its_error_current(kind: str) -> None:
    clock = Clock()
    health = StatusBoard(clock).add("dev-1", kind)
    health.failed("connection refused")
    health.stopped()
    payload = wire(health)
    assert payload["state"] == "stopped"
    assert payload["last_error"] == "connection refused"
    assert payload["last_error_at"] == "2026-11-25T14:30:00.000Z"


def test_an_unknown_kind_fails_the_schema() -> None:
    health = StatusBoard(Clock()).add("dev-1", "toaster")
    with pytest.raises(AssertionError):
        wire(health)


async def test_a_new_noted_error_is_published_at_once_the_same_one_at_the_refresh() -> None:
    clock = Clock()
    board = StatusBoard(clock, refresh_s=0.3)
    health = board.add("scale-d03", "modbus_scale")
    await board.changed()
    health.connected()
    await asyncio.wait_for(board.changed(), 0.1)
    health.note_error("reading is NaN")
    assert [h.device_id for h in await asyncio.wait_for(board.changed(), 0.1)] == ["scale-d03"]
    clock.tick()
    health.note_error("reading is NaN")  # every poll: not a broker message per poll
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(board.changed(), 0.1)
    published = await board.changed()  # with the counts, at the refresh
    assert wire(published[0])["last_error_at"] == "2026-11-25T14:30:01.000Z"
    assert health.counts["device_errors"] == 2
