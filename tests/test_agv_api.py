"""The AGV task API end to end: a gateway, a private Mosquitto, MQTT 5 requests and answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import GatewayConfig
from gateway.domain import Decision, WmsTask
from gateway.rules import engine as engine_module
from gateway.rules.engine import RulesEngine
from simulators.gs1 import sscc
from tests.agv_helpers import BASE, agv_section, requester
from tests.gateway_helpers import assert_valid, build, running, site_config
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]

P1, P2, P3 = (sscc("0614141", n) for n in (501, 502, 503))


def agv_site(tmp_path: Path, port: int, **agv: Any) -> GatewayConfig:
    """A test site with the AGV task API on (`agv` overrides the `[agv]` table)."""
    raw = site_config(tmp_path, broker_port=port, scanner=None)
    raw["agv"] = agv_section(**agv)
    return build(raw, tmp_path)


def wms_task(task_id: str, pallet: str, source: str, destination: str, priority: int = 0) -> bytes:
    body = {
        "task_id": task_id,
        "sscc": pallet,
        "source": source,
        "destination": destination,
        "priority": priority,
    }
    return json.dumps(body).encode()


async def publish_tasks(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-wms") as wms:
        await wms.publish(
            "wms/DC1/task/T1", wms_task("T1", P1, "STAGE-1", "A-01"), qos=1, retain=True
        )
        await wms.publish(
            "wms/DC1/task/T2", wms_task("T2", P2, "STAGE-1", "A-02", priority=5), qos=1, retain=True
        )
        await wms.publish(
            "wms/DC1/task/T3", wms_task("T3", P3, "STAGE-2", "A-03"), qos=1, retain=True
        )
        await wms.publish(
            "wms/DC1/task/T9", b'{"task_id": "T9", "sscc": "123"}', qos=1, retain=True
        )


async def clear_tasks(port: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-wms") as wms:
        for task_id in ("T1", "T2", "T3", "T9"):
            await wms.publish(f"wms/DC1/task/{task_id}", b"", qos=1, retain=True)


async def test_fleet_controllers_lease_report_and_finish_tasks(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agv_site(tmp_path, mosquitto.port)
    await publish_tasks(mosquitto.port)
    try:
        async with (
            Collector(mosquitto.port) as collector,
            running(config),
            requester(mosquitto.port, "fleet-1") as fleet1,
            requester(mosquitto.port, "fleet-2") as fleet2,
        ):
            await collector.wait_for(lambda c: len(c.on("/agv/task")) >= 3)
            # The highest priority first; a second controller gets another task.
            first = await fleet1.ask("next", {"fleet": "fleet-1", "robot": "r1"})
            second = await fleet2.ask("next", {"fleet": "fleet-2", "robot": "r7"})
            for answer in (first, second):
                assert_valid("agv-response", answer)
            assert first["ok"] and first["task"]["task_id"] == "T2"
            assert first["task"]["state"] == "leased" and first["task"]["robot"] == "r1"
            assert second["task"]["task_id"] == "T1"
            # Asking again (an answer lost) gives the same task, not another one.
            again = await fleet1.ask("next", {"fleet": "fleet-1", "robot": "r1"})
            assert (again["result"], again["task"]["task_id"]) == ("already", "T2")
            # A robot that does not hold the task cannot report on it.
            wrong = await fleet2.ask(
                "progress",
                {"fleet": "fleet-2", "robot": "r7", "task_id": "T2", "status": "picked"},
            )
            assert (wrong["ok"], wrong["code"]) == (False, "not_lease_holder")
            # r1 runs T2; a repeated drop changes nothing and makes no second move.
            steps = [
                ("accepted", None),
                ("picked", "STAGE-1"),
                ("dropped", "A-02"),
                ("dropped", "A-02"),
            ]
            results = []
            for status, location in steps:
                answer = await fleet1.ask(
                    "progress",
                    {
                        "fleet": "fleet-1",
                        "robot": "r1",
                        "task_id": "T2",
                        "status": status,
                        "location": location,
                    },
                )
                assert_valid("agv-response", answer)
                results.append((answer["result"], answer["task"]["state"]))
            assert results == [
                ("changed", "accepted"),
                ("changed", "picked"),
                ("changed", "done"),
                ("already", "done"),
            ]
            # A drop before the pick is refused; r7 drops T1 at the wrong place.
            early = await fleet2.ask(
                "progress",
                {
                    "fleet": "fleet-2",
                    "robot": "r7",
                    "task_id": "T1",
                    "status": "dropped",
                    "location": "A-01",
                },
            )
            assert (early["ok"], early["code"]) == (False, "not_picked")
            for status, location in (("picked", "STAGE-1"), ("dropped", "A-04")):
                await fleet2.ask(
                    "progress",
                    {
                        "fleet": "fleet-2",
                        "robot": "r7",
                        "task_id": "T1",
                        "status": status,
                        "location": location,
                    },
                )
            cancelled = await fleet2.ask(
                "cancel", {"fleet": "fleet-2", "task_id": "T3", "reason": "order changed"}
            )
            assert (cancelled["result"], cancelled["task"]["state"]) == ("changed", "cancelled")
            nothing = await fleet2.ask("next", {"fleet": "fleet-2", "robot": "r8"})
            assert (nothing["result"], nothing["task"]) == ("none", None)
            bad = await fleet2.ask("progress", b'{"fleet": "fleet-2", "robot": "r7"}')
            assert (bad["ok"], bad["code"]) == (False, "bad_request")
            assert "required" in bad["message"]
            await collector.wait_for(lambda c: len(c.on("/tx/move")) >= 2)
            await asyncio.sleep(0.3)
    finally:
        await clear_tasks(mosquitto.port)
    moves = [m.json() for m in collector.on("/tx/move")]
    for move in moves:
        assert_valid("move", move)
    assert [
        (m["task_id"], m["sscc"], m["from_location"], m["to_location"], m["exceptions"])
        for m in moves
    ] == [
        ("T2", P2, "STAGE-1", "A-02", []),
        ("T1", P1, "STAGE-1", "A-04", ["wrong_location"]),
    ]
    assert moves[0]["evidence"]["device"] == "r1"
    events = [m.json() for m in collector.on("/agv/task")]
    for event in events:
        assert_valid("agv-task", event)
    t2 = [e["event"] for e in events if e["task"]["task_id"] == "T2"]
    assert t2 == ["created", "leased", "accepted", "picked", "done"]
    alarms = [m.json() for m in collector.on("/alarm")]
    assert [a["code"] for a in alarms] == ["agv_drop_exception"]
    rejected = [
        m.json() for m in collector.on("/event") if m.json()["code"] == "reference_data_rejected"
    ]
    assert any("wms/DC1/task/T9" in e["message"] for e in rejected)


async def test_leases_survive_a_restart_and_run_out_without_progress(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agv_site(tmp_path, mosquitto.port, lease_s=1.0)
    await publish_tasks(mosquitto.port)
    try:
        async with Collector(mosquitto.port) as collector:
            async with running(config), requester(mosquitto.port) as fleet:
                await collector.wait_for(lambda c: len(c.on("/agv/task")) >= 3)
                leased = await fleet.ask("next", {"fleet": "fleet-1", "robot": "r1"})
                assert leased["task"]["task_id"] == "T2"
                await fleet.ask(
                    "progress",
                    {"fleet": "fleet-1", "robot": "r1", "task_id": "T2", "status": "picked"},
                )
            # The gateway restarts: r1 still holds T2, r2 cannot get it.
            async with running(config), requester(mosquitto.port) as fleet:
                held = await fleet.ask("next", {"fleet": "fleet-1", "robot": "r1"})
                assert (held["result"], held["task"]["state"]) == ("already", "picked")
                other = await fleet.ask("next", {"fleet": "fleet-1", "robot": "r2"})
                assert other["task"]["task_id"] == "T1"
                # Nobody reports: T1 (not picked) goes back to the queue, T2 (picked) fails.
                await collector.wait_for(
                    lambda c: (
                        {"requeued", "failed"} <= {m.json()["event"] for m in c.on("/agv/task")}
                    ),
                    timeout=10,
                )
                retaken = await fleet.ask("next", {"fleet": "fleet-1", "robot": "r3"})
                assert retaken["task"]["task_id"] == "T1"
                assert retaken["task"]["attempts"] == 1
    finally:
        await clear_tasks(mosquitto.port)
    failed = [m.json() for m in collector.on("/agv/task") if m.json()["event"] == "failed"]
    assert [(e["task"]["task_id"], e["task"]["reason"]) for e in failed] == [
        ("T2", "robot_lost_with_load")
    ]
    alarms = [m.json() for m in collector.on("/alarm")]
    assert [(a["code"], a["details"]["load_on_robot"]) for a in alarms] == [
        ("agv_task_failed", True)
    ]


async def test_a_mqtt_311_client_names_its_reply_topic_in_the_request(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agv_site(tmp_path, mosquitto.port)
    await publish_tasks(mosquitto.port)
    try:
        async with (
            Collector(mosquitto.port) as collector,
            running(config),
            aiomqtt.Client(
                "127.0.0.1",
                mosquitto.port,
                identifier="test-fleet-311",
                protocol=aiomqtt.ProtocolVersion.V311,
            ) as client,
        ):
            await collector.wait_for(lambda c: len(c.on("/agv/task")) >= 3)
            await client.subscribe("fleet/old/responses", qos=1)
            request = {
                "fleet": "old",
                "robot": "r9",
                "reply_to": "fleet/old/responses",
                "correlation": "req-42",
            }
            await client.publish(f"{BASE}/agv/next", json.dumps(request), qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
    finally:
        await clear_tasks(mosquitto.port)
    assert isinstance(message.payload, bytes)
    answer = json.loads(message.payload)
    assert_valid("agv-response", answer)
    assert (answer["correlation"], answer["task"]["task_id"], answer["task"]["robot"]) == (
        "req-42",
        "T2",
        "r9",
    )


async def test_malformed_robot_states_are_rejected_with_an_event(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agv_site(tmp_path, mosquitto.port, vda5050={"interface": "uagv"})
    bad = {
        "uagv/v2/acme/r1/state": b"{not json",
        "uagv/v2/acme/r2/state": json.dumps({"headerId": 1, "version": "2.1.0"}).encode(),
        "uagv/v9/acme/r3/state": b"{}",
    }
    async with (
        Collector(mosquitto.port) as collector,
        running(config) as gateway,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-robot") as robot,
    ):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        for topic, payload in bad.items():
            await robot.publish(topic, payload, qos=0)

        def rejected(c: Collector) -> list[dict[str, object]]:
            return [e for m in c.on("/event") if (e := m.json())["code"] == "vda5050_rejected"]

        await collector.wait_for(lambda c: len(rejected(c)) == len(bad))
    events = rejected(collector)
    for event in events:
        assert_valid("event", event)
    by_topic = {e["details"]["topic"]: e["details"]["reason"] for e in events}  # type: ignore[index]
    assert set(by_topic) == set(bad)
    assert "not valid JSON" in by_topic["uagv/v2/acme/r1/state"]
    assert "required" in by_topic["uagv/v2/acme/r2/state"]
    assert "v9" in by_topic["uagv/v9/acme/r3/state"]


async def test_an_event_the_rules_fail_on_is_reported_and_the_gateway_goes_on(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a bug in a rule: the runner must report it and carry on with the next event.
    original = engine_module._HANDLERS[WmsTask]

    def buggy(self: RulesEngine, message: WmsTask) -> list[Decision]:
        if message.task_id == "BOOM":
            raise KeyError("a bug")
        return original(self, message)

    monkeypatch.setitem(engine_module._HANDLERS, WmsTask, buggy)
    config = agv_site(tmp_path, mosquitto.port)
    async with (
        Collector(mosquitto.port) as collector,
        running(config) as gateway,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms,
    ):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        await wms.publish("wms/DC1/task/BOOM", wms_task("BOOM", P2, "STAGE-1", "A-01"), qos=1)
        await wms.publish("wms/DC1/task/T1", wms_task("T1", P1, "STAGE-1", "A-01"), qos=1)
        await collector.wait_for(lambda c: c.on("/agv/task") and c.on("/alarm"))
    (alarm,) = [m.json() for m in collector.on("/alarm")]
    assert_valid("event", alarm)
    assert (alarm["code"], alarm["details"]["event"]) == ("rules_error", "WmsTask")
    assert gateway.runner is not None
    assert gateway.runner.rules_errors == 1
    assert [m.json()["task"]["task_id"] for m in collector.on("/agv/task")] == ["T1"]


async def test_no_answer_goes_to_the_gateways_own_topics(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = agv_site(tmp_path, mosquitto.port)
    async with (
        Collector(mosquitto.port) as collector,
        running(config) as gateway,
        requester(mosquitto.port, "f") as fleet,
    ):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        hostile = {"fleet": "f", "robot": "r1", "reply_to": f"{BASE}/tx/move", "correlation": "x"}
        await fleet.client.publish(f"{BASE}/agv/next", json.dumps(hostile), qos=1)
        fine = await fleet.ask("next", {"fleet": "f", "robot": "r2"})
        assert fine["ok"]
        await collector.wait_for(lambda c: c.on("/event"))
        assert gateway.bridge.responses_refused == 1
    assert collector.on("/tx/move") == []
    (event,) = [m.json() for m in collector.on("/event")]
    assert_valid("event", event)
    assert event["code"] == "agv_request_rejected"
    assert event["details"]["source"] == "agv/next from fleet f"
    assert "not carried out: reply topic" in event["details"]["reason"]


# Reply addresses an attacker on the site network tried (issue #11): control characters,
# wildcards, other gateways' and sites' trees, robot command topics, near-misses of the
# gateway's own tree, other fleets, and oversized topics.
HOSTILE_REPLY_TOPICS = [
    "x\u0001",
    "fleet/f/\u0000",
    "fleet/f/+",
    "fleet/#",
    "wms/DC2/asn/EVIL",
    "wms/DC1/task/T9",
    "gw/DC1/dock-south/tx/move",
    f"{BASE}",
    f"{BASE} ",
    f"/{BASE}/x",
    "uagv/v2/Acme/r1/order",
    "uagv/v2/Acme/r1/instantActions",
    "fleet/other/responses",  # another fleet's tree
    "fleet/f2/responses",  # near-miss of the fleet's own tree
    "$SYS/x",
    "f" * 65_535,
]


@pytest.mark.parametrize("mqtt5", [True, False], ids=["response-topic", "reply_to"])
async def test_hostile_reply_topics_neither_disconnect_the_gateway_nor_get_an_answer(
    tmp_path: Path, mosquitto: Mosquitto, mqtt5: bool
) -> None:
    config = agv_site(tmp_path, mosquitto.port, vda5050={"interface": "uagv"})
    async with (
        Collector(mosquitto.port) as collector,
        running(config) as gateway,
        requester(mosquitto.port, "f") as fleet,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="spy") as spy,
    ):
        await spy.subscribe("#", qos=0)
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        sent = 0
        for i, topic in enumerate(HOSTILE_REPLY_TOPICS):
            body: dict[str, Any] = {"fleet": "f", "robot": f"r{i}"}
            properties = None
            if mqtt5:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ResponseTopic = topic
                properties.CorrelationData = b"c" * 65_535
            else:
                body |= {"reply_to": topic, "correlation": "c" * 200}
            # The broker drops a client that sends some of these (a wildcard in a response
            # topic is a protocol error): one attacker connection each.
            with contextlib.suppress(ValueError, aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    mosquitto.port,
                    identifier=f"attacker-{i}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=1,
                ) as attacker:
                    await attacker.publish(
                        f"{BASE}/agv/next", json.dumps(body), qos=1, properties=properties
                    )
                    sent += 1
        # The gateway is still connected and answers a well-formed request.
        fine = await fleet.ask("next", {"fleet": "f", "robot": "good"})
        assert fine["ok"]
        assert gateway.bridge.connected
        refused = gateway.bridge.responses_refused
        await collector.wait_for(lambda c: c.on("/event"))
        seen: list[str] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                async for message in spy.messages:
                    seen.append(str(message.topic))
        assert gateway.bridge.connected
    assert sent >= len(HOSTILE_REPLY_TOPICS) - 4
    # A reply_to with a wildcard or over 200 characters fails the schema first: rejected as a
    # bad request, its reply topic never looked at.
    assert refused >= sent - 3
    assert not [t for t in seen if t in HOSTILE_REPLY_TOPICS]
    assert not [t for t in seen if t.startswith(("fleet/other", "uagv/", "wms/", "gw/DC1/dock-s"))]
    # Each refusal is visible, aggregated: one short event per rule the topics broke.
    events = [m.json() for m in collector.on("/event")]
    assert {e["code"] for e in events} == {"agv_request_rejected"}
    reasons = [e["details"]["reason"] for e in events]
    assert len(set(reasons)) == len(reasons) < len(HOSTILE_REPLY_TOPICS)
    assert all(len(json.dumps(e)) < 2_000 for e in events)
