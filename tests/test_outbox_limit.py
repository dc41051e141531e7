"""The outbox size limit: an alarm before it is reached, intake held at it, nothing lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.health import DeviceState
from simulators.scanner import ScannerSimulator, shift_script
from tests.gateway_helpers import LOCATIONS, assert_valid, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto, free_port

pytestmark = pytest.mark.broker


async def test_alarm_then_backpressure_then_everything_delivered(tmp_path: Path) -> None:
    port = free_port()  # no broker yet
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "scan0")
    raw["storage"] |= {"outbox_max_rows": 10, "outbox_alarm_ratio": 0.5}
    config = build(raw, tmp_path)
    steps, truth = shift_script(pallets=14, locations=LOCATIONS, seed=5, pause_s=(0.0, 0.01))
    async with ScannerSimulator(tmp_path / "scan0") as sim, running(config) as gateway:
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        playing = asyncio.create_task(sim.run(steps))
        store = gateway.store
        assert store is not None
        deadline = asyncio.get_running_loop().time() + 20
        while store.depth < 10:
            assert asyncio.get_running_loop().time() < deadline, f"depth {store.depth}"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        # Full: the limit holds, and the rest of the shift waits in the intake, not in memory
        # of the outbox and not on the floor.
        assert store.depth == 10
        broker = Mosquitto(tmp_path, port)
        broker.start()
        try:
            async with Collector(port) as collector:
                await playing
                await collector.wait_for(
                    lambda c: len({m.json()["tx_id"] for m in c.on("/tx/move")}) == len(truth),
                    timeout=30,
                )
                moves = {m.json()["tx_id"]: m.json() for m in collector.on("/tx/move")}
                assert sorted((m["sscc"], m["to_location"]) for m in moves.values()) == sorted(
                    truth
                )
                alarms = [m.json() for m in collector.on("/alarm")]
                # Raised once per episode: the backlog that drains and refills while the rest of
                # the shift is played may raise it again, never more often than it refills.
                assert alarms
                assert {a["code"] for a in alarms} == {"outbox_high"}
                for alarm in alarms:
                    assert_valid("event", alarm)
                assert alarms[0]["details"]["limit"] == 10
                # The alarm is published at once, not behind the backlog it warns about.
                order = [m.topic.rpartition("/")[2] for m in collector.messages]
                assert order.index("alarm") < order.index("move") + 3
                # The status shows the backlog and how many events found no room in it.
                statuses = [m.json() for m in collector.on("/status") if "outbox" in m.json()]
                assert statuses
                for status in statuses:
                    assert_valid("gateway-status", status)
                assert gateway.recorder is not None
                dropped = [s["outbox"]["notices_dropped"] for s in statuses]
                assert dropped == sorted(dropped)  # a count since the start: never goes down
                assert dropped[-1] <= gateway.recorder.notices_dropped
        finally:
            broker.stop()
