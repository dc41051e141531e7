"""A broker that accepts the connection but never acknowledges: nothing is deleted, stop is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.bridge import mqtt
from gateway.storage import OutboxMessage, Store
from gateway.wire.inbound import InboundRoutes, Received
from tests.gateway_helpers import build, running, site_config, wait_reference_data
from tests.mqtt_helpers import Collector, Mosquitto

# MQTT 5 CONNACK: session present 0, reason "success", no properties.
CONNACK_V5 = b"\x20\x03\x00\x00\x00"


@contextlib.asynccontextmanager
async def silent_broker():
    """Answers CONNECT with CONNACK, then swallows everything: no PUBACK, no PINGRESP."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await reader.read(4096)  # the CONNECT packet
            writer.write(CONNACK_V5)
            await writer.drain()
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, lambda: connections
    finally:
        server.close()


async def test_no_puback_deletes_nothing_and_the_bridge_reconnects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt, "PUBACK_TIMEOUT_S", 0.5)
    async with await Store.open(tmp_path / "gateway.db") as store:
        await store.commit(
            [OutboxMessage(f"m{i}", "gw/DC1/dock-1/tx/move", b"{}") for i in range(3)]
        )
    async with silent_broker() as (port, connections):
        raw = site_config(tmp_path, broker_port=port, scanner=None)
        raw["gateway"]["shutdown_grace_s"] = 1.0
        config = build(raw, tmp_path)
        async with running(config) as gateway:
            deadline = time.monotonic() + 15
            while connections() < 2:  # the unacknowledged publish ended the session
                assert time.monotonic() < deadline, "no reconnect"
                await asyncio.sleep(0.05)
            assert gateway.store is not None
            assert gateway.store.depth == 3
            began = time.monotonic()
        stopped_in = time.monotonic() - began
    # Grace (1 s) plus the bridge's bounded goodbye: never hangs on a mute broker.
    assert stopped_in < 8.0
    async with await Store.open(tmp_path / "gateway.db") as store:
        assert store.depth == 3


async def test_stop_with_the_broker_down_is_bounded_by_the_grace_period(tmp_path: Path) -> None:
    from tests.mqtt_helpers import free_port

    raw = site_config(tmp_path, broker_port=free_port(), scanner=None)
    raw["gateway"]["shutdown_grace_s"] = 1.0
    config = build(raw, tmp_path)
    async with running(config):
        await asyncio.sleep(0.5)
        began = time.monotonic()
    assert time.monotonic() - began < 3.0


@pytest.mark.broker
async def test_malformed_commands_are_answered_or_ignored_never_fatal(
    tmp_path: Path, mosquitto: Any
) -> None:
    import json

    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    config = build(site_config(tmp_path, broker_port=mosquitto.port, scanner=None), tmp_path)

    def reply_to(topic: str, correlation: bytes) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        props.CorrelationData = correlation
        return props

    async with (
        running(config) as gateway,
        aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as wms,
    ):
        deadline = time.monotonic() + 10
        while not (gateway.bridge and gateway.bridge.subscribed):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await wms.subscribe("wms/DC1/replies/#", qos=1)
        cmd = "gw/DC1/dock-1/cmd/close"
        await wms.publish(
            cmd, b"[" * 200_000, qos=1, properties=reply_to("wms/DC1/replies/a", b"1")
        )
        await wms.publish(
            cmd, b'{"reference": null}', qos=1, properties=reply_to("wms/DC1/replies/+/x", b"2")
        )
        await wms.publish(cmd, b'{"reference": "X"}', qos=1, retain=True)
        await wms.publish(
            cmd,
            json.dumps({"reference": "NOPE"}),
            qos=1,
            properties=reply_to("wms/DC1/replies/b", b"3"),
        )
        answers: dict[bytes, dict[str, Any]] = {}
        async with asyncio.timeout(10):
            async for message in wms.messages:
                correlation = message.properties.CorrelationData  # type: ignore[union-attr]
                answers[correlation] = json.loads(message.payload)  # type: ignore[arg-type]
                if b"3" in answers:
                    break
        await wms.publish(cmd, b"", qos=1, retain=True)
        assert gateway.bridge is not None
        assert gateway.bridge.connected
    assert answers[b"1"]["ok"] is False  # too large to read: refused, answered
    assert b"2" not in answers  # a wildcard response topic cannot be answered
    assert answers[b"3"] == {
        "ok": False,
        "reference": "NOPE",
        "error": "no open receipt or shipment with this reference",
    }


T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
PRODUCT = {"gtin": "09506000134352", "unit_weight_kg": 10.0}


async def test_a_decoder_that_raises_is_skipped_and_the_gateway_stays_on_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stands in for a bug in a decoder: the bridge must log and count it, and go on.
    original = InboundRoutes.route_for

    def buggy(self: InboundRoutes, message: Received) -> Any:
        if message.topic.endswith("/BOOM"):
            raise KeyError("a bug")
        return original(self, message)

    monkeypatch.setattr(InboundRoutes, "route_for", buggy)
    config = build(site_config(tmp_path, broker_port=mosquitto.port, scanner=None), tmp_path)
    async with (
        running(config) as gateway,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms,
    ):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        await wms.publish("wms/DC1/asn/BOOM", b"{}", qos=1)
        await wms.publish(f"wms/DC1/product/{PRODUCT['gtin']}", json.dumps(PRODUCT), qos=1)
        await wait_reference_data(gateway, f"product/{PRODUCT['gtin']}")
        assert gateway.bridge.decode_errors == 1
        assert gateway.bridge.connected


async def test_a_message_larger_than_the_gateways_packet_limit_never_reaches_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    raw["broker"]["max_packet_bytes"] = 64 * 1024  # told to the broker in CONNECT (MQTT 5)
    config = build(raw, tmp_path)
    async with (
        Collector(mosquitto.port) as collector,
        running(config) as gateway,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms,
    ):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)
        # Both are junk the gateway would reject with an event, had it received them.
        await wms.publish("wms/DC1/asn/BIG", b"x" * (100 * 1024), qos=1)
        await wms.publish("wms/DC1/asn/SMALL", b"x", qos=1)
        await collector.wait_for(lambda c: c.on("/event"))
        await asyncio.sleep(0.3)
        assert gateway.bridge.connected
    topics = [m.json()["details"]["topic"] for m in collector.on("/event")]
    assert topics == ["wms/DC1/asn/SMALL"]


class _RefusingBroker:
    """Stands in for a broker that refuses subscriptions: by ACL (EMQX, HiveMQ; Mosquitto 2.0
    grants every subscription and checks the ACL only when it delivers), or for a while (a NATS
    cluster without a JetStream leader answers 0x80). Refuses `refused` the first `times`
    SUBSCRIBEs (for ever when None)."""

    def __init__(self, refused: set[str], times: int | None = None) -> None:
        self.refused = refused
        self.times = times
        self.asked: list[list[str]] = []

    async def subscribe(self, topics: list[tuple[str, int]]) -> list[ReasonCode]:
        self.asked.append([t for t, _qos in topics])
        refusing = self.times is None or len(self.asked) <= self.times
        return [
            ReasonCode(
                PacketTypes.SUBACK,
                "Not authorized" if refusing and t in self.refused else "Granted QoS 1",
            )
            for t, _qos in topics
        ]


async def test_a_subscription_the_broker_refuses_is_logged_kept_for_the_status_and_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config import BrokerConfig
    from gateway.health import StatusBoard
    from gateway.wire.topics import Topics

    monkeypatch.setattr(mqtt, "SUBSCRIBE_RETRY_MIN_S", 0.01)
    topics = Topics("DC1", "dock-1")
    routes = InboundRoutes(topics, agv=False, vda5050_interface=None)
    async with await Store.open(tmp_path / "gw.db") as store:
        bridge = mqtt.MqttBridge(
            BrokerConfig(host="127.0.0.1"),
            topics=topics,
            store=store,
            board=StatusBoard(lambda: T0),
            version="test",
            clock=lambda: T0,
            inbox=lambda _event: asyncio.sleep(0),
            routes=routes,
        )
        told: list[tuple[str, ...]] = []
        bridge._on_refused = lambda *args: told.append(args)
        # Refused for good (an ACL): shown, told once (the app raises an alarm), and asked for
        # again, alone, with backoff.
        acl = _RefusingBroker({"wms/DC1/asn/+"})
        asking = asyncio.create_task(bridge._subscribe(acl))  # type: ignore[arg-type]
        async with asyncio.timeout(5):
            while len(acl.asked) < 4:
                await asyncio.sleep(0.01)
        assert bridge.subscribed
        assert bridge.subscriptions_refused == {"wms/DC1/asn/+"}
        assert len(acl.asked[0]) > 1 and acl.asked[1:] == [["wms/DC1/asn/+"]] * (len(acl.asked) - 1)
        assert told == [("wms/DC1/asn/+", "Not authorized", True)]
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
        # Refused twice (a cluster electing its leader), then taken: nothing refused any more.
        cluster = _RefusingBroker({"wms/DC1/asn/+"}, times=2)
        async with asyncio.timeout(5):
            await bridge._subscribe(cluster)  # type: ignore[arg-type]
    assert len(cluster.asked) == 3
    assert bridge.subscriptions_refused == set()
    assert bridge.subscribed
