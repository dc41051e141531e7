"""RFID zones (#16): tags placed in the zone whose antennas hear them best, moves reported once
under cross-antenna bleed, none for tags that sit still, departures after a silence."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from gateway.domain import TagRead
from gateway.domain.epc import encode_sgtin96
from gateway.health import DeviceState
from gateway.rules.zones import ZoneChange, ZoneSettings, ZoneTracker
from simulators.llrp import LlrpReaderSimulator, Scenario, StrayTag
from tests.dock_helpers import CP
from tests.gateway_helpers import assert_valid, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto

SETTINGS = ZoneSettings("r1", {"A-01": frozenset({1, 2}), "A-02": frozenset({3, 4})})


def reads(
    epc: str, t: float, strength: dict[int, float], rng: random.Random, noise: float = 3.0
) -> list[TagRead]:
    """One report's reads of a tag: each antenna that hears it, RSSI with noise."""
    return [
        (epc, antenna, round(rssi + rng.gauss(0, noise)), t, 1)
        for antenna, rssi in strength.items()
        if rng.random() < 0.9
    ]


def test_static_tags_between_two_zones_never_move() -> None:
    tracker, rng = ZoneTracker(SETTINGS), random.Random(7)
    events = []
    # Tag X sits on the boundary: zone A-02 hears it about as well as A-01, sometimes better.
    # Tag Y sits in A-02, with bleed on A-01's antennas.
    for step in range(6_000):  # ten minutes at 10 reports a second
        t = step / 10
        batch = reads("X", t, {2: -61.0, 3: -62.0}, rng) + reads("Y", t, {1: -72.0, 4: -55.0}, rng)
        events += tracker.on_reads(batch)
        if step % 10 == 0:
            events += tracker.on_tick(t)
    assert sorted((e.change, e.epc) for e in events) == [
        (ZoneChange.ARRIVED, "X"),
        (ZoneChange.ARRIVED, "Y"),
    ]
    assert tracker.zone_of("Y") == "A-02"


def test_a_pallet_moved_between_zones_is_reported_once_each_way() -> None:
    tracker, rng = ZoneTracker(SETTINGS), random.Random(11)
    events = []
    where = [(0, {1: -50.0, 3: -72.0}), (60, {1: -71.0, 3: -49.0}), (120, {2: -52.0, 4: -70.0})]
    for step in range(1_800):  # three minutes
        t = step / 10
        strength = next(s for start, s in reversed(where) if t >= start)
        events += tracker.on_reads(reads("P", t, strength, rng))
        if step % 10 == 0:
            events += tracker.on_tick(t)
    moves = [(e.change, e.previous, e.zone) for e in events]
    assert moves == [
        (ZoneChange.ARRIVED, None, "A-01"),
        (ZoneChange.MOVED, "A-01", "A-02"),
        (ZoneChange.MOVED, "A-02", "A-01"),
    ]
    moved_at = [e.at for e in events if e.change is ZoneChange.MOVED]
    assert 60 < moved_at[0] < 60 + 2 * SETTINGS.dwell_s + 2  # after the dwell, not long after
    # It is taken away: departed once it has not been read for depart_after_s.
    gone = tracker.on_tick(180 + SETTINGS.depart_after_s)
    assert [(e.change, e.previous) for e in gone] == [(ZoneChange.DEPARTED, "A-01")]
    assert tracker.snapshot() == {"A-01": [], "A-02": []}


def test_memory_is_bounded_and_antennas_belong_to_one_zone() -> None:
    small = ZoneSettings("r1", {"Z": frozenset({1})}, max_tags=100, min_reads=1, window_s=0)
    tracker = ZoneTracker(small)
    events = tracker.on_reads((f"T{n}", 1, -50, float(n), 1) for n in range(250))
    assert len(tracker) == 100 and tracker.evicted == 150
    assert sum(e.change is ZoneChange.DEPARTED for e in events) == 150
    with pytest.raises(ValueError, match="antenna 1"):
        ZoneSettings("r1", {"A": frozenset({1}), "B": frozenset({1, 2})})


# --- a zone reader end to end: the LLRP simulator, the gateway, a real broker -------------------


@pytest.mark.broker
async def test_a_zone_reader_places_tags_and_keeps_a_retained_snapshot(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    x, y, z = (encode_sgtin96(CP, "012345", n) for n in (1, 2, 3))
    strays = [
        StrayTag(x, (1, 2), -52.0),  # in A-01
        StrayTag(y, (3, 4), -52.0),  # in A-02
        StrayTag(z, (2, 3), -60.0),  # between the two: heard by both, must not move
    ]
    async with (
        LlrpReaderSimulator(Scenario(strays=strays, door="zones", seed=3), reads_per_s=400) as rdr,
        Collector(mosquitto.port) as collector,
    ):
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None, reader_port=rdr.port)
        reader = raw["devices"][0]
        del reader["door"], reader["antennas"]
        reader["zones"] = {"A-01": [1, 2], "A-02": [3, 4]}
        reader["zone_tuning"] = {"dwell_s": 2.0}
        async with running(build(raw, tmp_path)) as gateway:
            await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
            await collector.wait_for(lambda c: len(c.on("/zone/event")) >= 3)
            await asyncio.sleep(8.0)  # long enough for a wrong move to show
            events = [m.json() for m in collector.on("/zone/event")]
            for event in events:
                assert_valid("zone-event", event)
            where = {e["epc"]: e["zone"] for e in events}
            assert [e["change"] for e in events] == ["arrived"] * 3  # and no move since
            assert where[x.hex().upper()] == "A-01" and where[y.hex().upper()] == "A-02"
            await collector.wait_for(lambda c: c.on("/state/zone/A-02"))
            async with asyncio.timeout(10):
                while True:
                    snapshot = {
                        m.topic.rsplit("/", 1)[1]: m.json()
                        for m in collector.on("")
                        if "/state/zone/" in m.topic
                    }
                    if sum(len(s["epcs"]) for s in snapshot.values()) == 3:
                        break
                    await asyncio.sleep(0.2)
            for state in snapshot.values():
                assert_valid("state-zone", state)
            assert x.hex().upper() in snapshot["A-01"]["epcs"]
            assert y.hex().upper() in snapshot["A-02"]["epcs"]
