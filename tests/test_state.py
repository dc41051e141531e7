"""The live state on retained topics (#14): a subscriber that joins at any time and reads only
`gw/{site}/{gateway}/state/#` rebuilds the gateway's own state, field by field, also after
restarts; things that are gone are cleared."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.health import DeviceState
from simulators.gs1 import sscc, sscc_label
from simulators.scanner import ScannerSimulator, Type
from simulators.vda5050_robot import SimulatedRobot
from tests.agv_helpers import agv_section, requester
from tests.gateway_helpers import (
    assert_valid,
    build,
    running,
    site_config,
    wait_device,
    wait_reference_data,
)
from tests.mqtt_helpers import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

STATE = "gw/DC1/dock-1/state/"
P1, P2, P3 = (sscc("0614141", n) for n in (601, 602, 603))
ASN = {
    "asn_id": "ASN-1",
    "door": "D03",
    "lines": [{"line": n, "sscc": p, "quantity": 1} for n, p in enumerate((P1, P2, P3), 1)],
}


async def rebuild(port: int, quiet_s: float = 0.4) -> dict[str, Any]:
    """What a subscriber that joins now rebuilds from `state/#` alone."""
    state: dict[str, Any] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="late-joiner") as client:
        await client.subscribe(f"{STATE}#", qos=1)
        while True:
            try:
                async with asyncio.timeout(quiet_s):
                    message = await anext(client.messages)
            except TimeoutError:
                return state
            payload = message.payload
            assert isinstance(payload, bytes | bytearray)
            if payload:
                state[str(message.topic)] = json.loads(payload)
            else:
                state.pop(str(message.topic), None)


async def rebuilt_equals_own(gateway: Gateway, port: int, timeout: float = 10) -> dict[str, Any]:
    """Wait until a late subscriber's rebuild equals the gateway's own state; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while gateway.live is None or gateway.bridge is None or not gateway.bridge.connected:
        assert asyncio.get_running_loop().time() < deadline, "the gateway did not start"
        await asyncio.sleep(0.05)
    while True:
        got = await rebuild(port)
        own = gateway.live.snapshot()
        if got == own:
            return got
        if asyncio.get_running_loop().time() > deadline:
            differ = sorted(t for t in got.keys() | own.keys() if got.get(t) != own.get(t))
            raise AssertionError(
                f"state topics differ: {[(t, got.get(t), own.get(t)) for t in differ]}"
            )


def check_schemas(state: dict[str, Any]) -> None:
    for topic, payload in state.items():
        kind = topic.removeprefix(STATE).split("/")[0]
        assert_valid(f"state-{kind}", payload)


def site(tmp_path: Path, port: int, *, forklift: bool) -> Any:
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "clerk")
    raw["devices"][0] |= {"role": "receiving", "location": "D03"}
    if forklift:
        raw["devices"].append(
            {
                "id": "fl-08",
                "kind": "barcode_scanner",
                "transport": {"type": "serial", "port": str(tmp_path / "forklift")},
                "backoff": {"min_s": 0.05, "max_s": 0.3},
            }
        )
    raw["agv"] = agv_section(vda5050={"interface": "uagv"})
    return build(raw, tmp_path)


async def test_a_late_subscriber_rebuilds_the_state_also_after_three_restarts(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = mosquitto.port
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-1", json.dumps(ASN), qos=1, retain=True)
    # The day: two pallets received at D03 (each gets a putaway task), one moved on by
    # forklift, a robot leases a task.
    async with (
        ScannerSimulator(tmp_path / "clerk") as clerk,
        ScannerSimulator(tmp_path / "forklift") as forklift,
        running(site(tmp_path, port, forklift=True)) as gateway,
        SimulatedRobot(port=port, serial="agv-001", start_node="home", state_interval_s=0.5),
        requester(port, "fleet-1") as fleet,
    ):
        for device in ("fl-07", "fl-08"):
            await wait_device(gateway, device, DeviceState.CONNECTED)
        await wait_reference_data(gateway, "asn/ASN-1")
        await clerk.run([Type(sscc_label(p), aim="]C1") for p in (P1, P2)])
        await forklift.run([Type(sscc_label(P2), aim="]C1"), Type("A-02-02")])
        answer = await fleet.ask("next", {"fleet": "fleet-1", "robot": "agv-001"})
        assert answer["ok"], answer  # a putaway of a pallet received at D03
        task_id = answer["task"]["task_id"]
        async with asyncio.timeout(10):  # the robot's state (every 0.5 s) has come in
            while (gateway.live.view("robot").get("agv-001") or {}).get("position") is None:
                await asyncio.sleep(0.05)
        state = await rebuilt_equals_own(gateway, port)
        door = state[f"{STATE}door/D03"]
        (receipt,) = door["open"]
        assert (receipt["reference"], receipt["under_way"]) == ("ASN-1", True)
        assert [(x["line"], x["done"], x["short"]) for x in receipt["lines"]] == [
            (1, 1, 0),
            (2, 1, 0),
            (3, 0, 1),
        ]
        assert [r["status"] for r in door["recent"]] == ["accepted", "accepted"]
        assert state[f"{STATE}location/D03"]["pallets"] == [P1]
        assert state[f"{STATE}location/A-02-02"]["pallets"] == [P2]
        robot = state[f"{STATE}robot/agv-001"]
        assert robot["task"]["task_id"] == task_id and robot["task"]["state"] == "leased"
        assert robot["position"]["node_id"] == "home"
        for device in ("fl-07", "fl-08"):
            assert state[f"{STATE}device/{device}"]["state"] == "connected"
        check_schemas(state)

    # Restart 1: nothing new. The robot is gone from the network and its position with it
    # (positions are not kept); its task is kept.
    async with (
        ScannerSimulator(tmp_path / "clerk"),
        ScannerSimulator(tmp_path / "forklift") as forklift,
        running(site(tmp_path, port, forklift=True)) as gateway,
    ):
        state = await rebuilt_equals_own(gateway, port)
        assert state[f"{STATE}robot/agv-001"]["position"] is None
        assert state[f"{STATE}robot/agv-001"]["task"]["task_id"] == task_id
        assert len(state[f"{STATE}door/D03"]["recent"]) == 2  # kept in SQLite
        # Restart 2 follows a move that empties the door's location: cleared while running.
        await wait_device(gateway, "fl-08", DeviceState.CONNECTED)
        await forklift.run([Type(sscc_label(P1), aim="]C1"), Type("A-01-01")])
        state = await rebuilt_equals_own(gateway, port)
        assert f"{STATE}location/D03" not in state
        assert state[f"{STATE}location/A-01-01"]["pallets"] == [P1]

    async with (
        ScannerSimulator(tmp_path / "clerk"),
        ScannerSimulator(tmp_path / "forklift"),
        running(site(tmp_path, port, forklift=True)) as gateway,
    ):
        state = await rebuilt_equals_own(gateway, port)
        assert f"{STATE}location/D03" not in state
        assert f"{STATE}device/fl-08" in state

    # Restart 3: the forklift's scanner was taken out of the config: its topic is cleared.
    async with (
        ScannerSimulator(tmp_path / "clerk"),
        running(site(tmp_path, port, forklift=False)) as gateway,
    ):
        state = await rebuilt_equals_own(gateway, port)
        assert f"{STATE}device/fl-08" not in state
        assert f"{STATE}device/fl-07" in state
        check_schemas(state)
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-1", b"", qos=1, retain=True)
