"""Scanner simulator (pty) -> gateway -> private Mosquitto -> subscriber, with failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.health import DeviceState
from simulators.gs1 import corrupt_check_digit, gtin_label, sscc, sscc_label
from simulators.scanner import Garbage, ScannerSimulator, Type, shift_script
from tests.gateway_helpers import LOCATIONS, assert_valid, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = pytest.mark.broker


def moves_of(collector: Collector) -> dict[str, dict[str, object]]:
    """tx_id -> payload; a redelivery must carry an identical payload."""
    out: dict[str, dict[str, object]] = {}
    for message in collector.on("/tx/move"):
        payload = message.json()
        if payload["tx_id"] in out:
            assert out[payload["tx_id"]] == payload, "same tx_id, different content"
        out[payload["tx_id"]] = payload
    return out


async def test_scripted_shift_gives_exactly_the_expected_moves(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    steps, truth = shift_script(pallets=8, locations=LOCATIONS, seed=7, pause_s=(0.0, 0.05))
    config = build(
        site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0"), tmp_path
    )
    async with Collector(mosquitto.port) as collector, ScannerSimulator(tmp_path / "scan0") as sim:
        async with running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run(steps)
            await collector.wait_for(lambda c: len(moves_of(c)) >= len(truth))
            await asyncio.sleep(0.3)  # nothing more may come
        moves = sorted(moves_of(collector).values(), key=lambda m: str(m["occurred_at"]))
        assert [(m["sscc"], m["to_location"]) for m in moves] == truth
        for move in moves:
            assert_valid("move", move)
            assert move["from_location"] is None
            assert move["exceptions"] == ["origin_unknown"]
            assert move["site"] == "DC1"
        statuses = collector.on("dock-1/status")
        assert [s.json()["state"] for s in statuses][-1] == "offline"
        for status in statuses:
            assert_valid("gateway-status", status.json())
        for device_status in collector.on("device/fl-07/status"):
            assert_valid("device-status", device_status.json())
        assert collector.on("device/fl-07/status")[-1].json()["state"] == "stopped"


async def test_second_move_of_a_pallet_starts_from_its_last_location(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallet = sscc("0376123", 42)
    config = build(
        site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0"), tmp_path
    )
    async with Collector(mosquitto.port) as collector, ScannerSimulator(tmp_path / "scan0") as sim:
        async with running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run([Type(sscc_label(pallet), aim="]C1"), Type("A-01-01")])
            await collector.wait_for(lambda c: len(moves_of(c)) == 1)
        # A restart keeps the pallet's location.
        async with running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run([Type(sscc_label(pallet), aim="]C1"), Type("B-02-02")])
            await collector.wait_for(lambda c: len(moves_of(c)) == 2)
    second = [m for m in moves_of(collector).values() if m["to_location"] == "B-02-02"][0]
    assert second["from_location"] == "A-01-01"
    assert second["exceptions"] == []


async def test_garbage_bad_check_digit_and_unplug_give_events_and_the_gateway_recovers(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallet = sscc("0376123", 7)
    config = build(
        site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0"), tmp_path
    )
    async with Collector(mosquitto.port) as collector, ScannerSimulator(tmp_path / "scan0") as sim:
        async with running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run(
                [
                    Garbage(b"\x00\xff\x13garbage\x07\r"),
                    Type(corrupt_check_digit(sscc_label(pallet)), aim="]C1"),
                    Type(gtin_label("09506000134352", lot="L1")),
                ]
            )
            await collector.wait_for(lambda c: len(c.on("/event")) >= 3)
            sim.unplug()
            await wait_device(gateway, "fl-07", DeviceState.DISCONNECTED)
            await asyncio.sleep(0.5)  # the supervisor keeps trying while the port is gone
            sim.plug()
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run([Type(sscc_label(pallet), aim="]C1"), Type("C-03-01")])
            await collector.wait_for(lambda c: len(moves_of(c)) == 1)
            health = gateway.board.devices["fl-07"]
            assert health.counts["rejected"] == 2
            assert health.counts["restarts"] >= 1
        events = [e.json() for e in collector.on("/event")]
        for event in events:
            assert_valid("event", event)
        codes = [e["code"] for e in events]
        assert codes[:3] == ["scan_rejected", "scan_rejected", "unexpected_label"]
        assert "non-printable" in events[0]["details"]["reason"]
        assert "check digit" in events[1]["details"]["reason"]
        states = [s.json()["state"] for s in collector.on("device/fl-07/status")]
        assert "disconnected" in states
        assert states.index("connected") < states.index("disconnected") < len(states) - 1
        disconnected = [
            s.json()
            for s in collector.on("device/fl-07/status")
            if s.json()["state"] == "disconnected"
        ]
        assert disconnected[0]["last_error"]


async def test_broker_killed_mid_stream_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    steps, truth = shift_script(pallets=30, locations=LOCATIONS, seed=11, pause_s=(0.0, 0.03))
    config = build(
        site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0"), tmp_path
    )
    async with Collector(mosquitto.port) as collector, ScannerSimulator(tmp_path / "scan0") as sim:
        async with running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            playing = asyncio.create_task(sim.run(steps))
            await collector.wait_for(lambda c: len(moves_of(c)) >= 5)
            mosquitto.kill()
            await asyncio.sleep(1.0)
            assert gateway.bridge is not None and not gateway.bridge.connected
            mosquitto.start()
            await playing
            await collector.wait_for(lambda c: len(moves_of(c)) >= len(truth), timeout=30)
        moves = moves_of(collector)
        assert sorted((m["sscc"], m["to_location"]) for m in moves.values()) == sorted(truth)


@pytest.mark.slow(15)
async def test_a_scanner_unplugged_between_pallet_and_location_never_makes_a_wrong_move(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # Issue #12: a pallet scanned, the cable pulled and plugged back, the next pallet's label
    # lost while the port reopens, then a location: that location belongs to the lost pallet,
    # not to the first one. The reopened port ends the first pallet's sequence with an event.
    cycles = 50
    config = build(
        site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0"), tmp_path
    )
    pallets = [sscc("0376123", 800 + n) for n in range(cycles)]
    async with (
        Collector(mosquitto.port) as collector,
        ScannerSimulator(tmp_path / "scan0") as sim,
        running(config) as gateway,
    ):
        health = gateway.board.devices["fl-07"]
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        base = health.counts["reads"]
        for n, pallet in enumerate(pallets):
            await sim.run([Type(sscc_label(pallet), aim="]C1")])
            # The pallet (the cycle's first read: each cycle reads a pallet and a location)
            # reaches the rules before the cable is pulled, however loaded the machine.
            async with asyncio.timeout(10):
                while health.counts["reads"] < base + 2 * n + 1 or gateway.queue.unfinished():
                    await asyncio.sleep(0.01)
            restarts = health.counts["restarts"]
            sim.unplug()
            await asyncio.sleep(0.05)
            sim.plug()
            async with asyncio.timeout(10):
                while health.counts["restarts"] == restarts or health.state is not (
                    DeviceState.CONNECTED
                ):
                    await asyncio.sleep(0.01)
            await sim.run([Type(LOCATIONS[n % len(LOCATIONS)])])
        await collector.wait_for(
            lambda c: (
                len([m for m in c.on("/event") if m.json()["code"] == "move_interrupted"]) >= cycles
            ),
            timeout=45,  # a loaded machine (a full suite beside other work) took over 20 s
        )
        await asyncio.sleep(0.3)
    assert moves_of(collector) == {}  # not one pallet paired with the location after the gap
    interrupted = [
        m.json() for m in collector.on("/event") if m.json()["code"] == "move_interrupted"
    ]
    assert [e["details"]["sscc"] for e in interrupted] == pallets
    for event in interrupted:
        assert_valid("event", event)
