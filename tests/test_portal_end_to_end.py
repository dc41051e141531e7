"""LLRP reader simulator -> gateway (sllurp, portal logic) -> private Mosquitto -> subscriber."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.domain.epc import decode_epc
from gateway.health import DeviceState
from simulators.llrp import LlrpReaderSimulator, day_scenario
from tests.gateway_helpers import assert_valid, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto
from tests.time_helpers import SPEED, AcceleratedClock

pytestmark = pytest.mark.broker

# Reads per wall-clock second: per scenario second, SPEED times fewer.
READS_PER_S = 4000


async def test_passes_published_on_the_debug_topic_match_the_ground_truth(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # A short run of pallets, played faster than real time: the reader's clock and the
    # gateway's run SPEED times fast, and the gateway maps the one onto the other.
    scenario = day_scenario(
        4,
        seed=5,
        door="D03",
        strays=2,
        cases=(3, 12),
        duration_s=1.5,
        gap_s=(1.6, 2.0),
        time_scale=SPEED,
    )
    async with LlrpReaderSimulator(scenario, reads_per_s=READS_PER_S) as sim:
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None, reader_port=sim.port)
        raw["debug"] = {"passes": True, "max_per_s": 50}
        config = build(raw, tmp_path)
        async with (
            Collector(mosquitto.port) as collector,
            running(config, clock=AcceleratedClock(SPEED)) as gateway,
        ):
            await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
            await collector.wait_for(
                lambda c: len(c.on("/debug/pass/D03")) >= len(scenario.pallets), timeout=40
            )
            truth = sorted(
                (c.direction, sorted(e.hex().upper() for e in c.epcs)) for c in sim.ground_truth
            )
    passes = [m.json() for m in collector.on("/debug/pass/D03")]
    for p in passes:
        assert_valid("pass", p)
    assert sorted((p["direction"], sorted(t["epc"] for t in p["tags"])) for p in passes) == truth
    # EPCs are decoded: each pallet has its SSCC-96 label and SGTIN-96 cases.
    for p in passes:
        schemes = {t["scheme"] for t in p["tags"]}
        assert schemes == {"sscc-96", "sgtin-96"}
        for tag in p["tags"]:
            assert tag["uri"] == decode_epc(tag["epc"]).uri
            assert tag["reads"] >= 2
    statuses = [m.json() for m in collector.on("device/d03-reader/status")]
    for status in statuses:
        assert_valid("device-status", status)
    assert any(s["state"] == "connected" and s["kind"] == "llrp_reader" for s in statuses)
