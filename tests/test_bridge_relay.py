"""The outbox relay: in order, deleted only after a successful PUBACK, a backlog larger than the
socket's buffers included; paho's PUBACK decoding is skipped for plain successes only."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.bridge import mqtt
from gateway.config import BrokerConfig
from gateway.health import StatusBoard
from gateway.storage import OutboxMessage, Store
from gateway.wire.topics import Topics
from tests.mqtt_helpers import Collector, Mosquitto

MID = 0x0107


def fast_pubacks(protocol: int) -> Any:
    """A paho client with `_fast_pubacks` installed over spies: feed(cmd, packet) -> calls."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    calls: list[tuple[Any, ...]] = []

    def paho_handles(cmd: str) -> MQTTErrorCode:
        calls.append(("paho", cmd))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def on_publish(mid: int, reason: Any, properties: Any) -> MQTTErrorCode:
        calls.append(("fast", mid, reason.value, reason.is_failure))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = paho_handles  # type: ignore[method-assign]
    client._do_on_publish = on_publish  # type: ignore[method-assign]
    client._out_messages[MID] = object()  # type: ignore[assignment]
    mqtt._fast_pubacks(client)

    def feed(cmd: str, packet: bytes) -> list[tuple[Any, ...]]:
        calls.clear()
        client._in_packet["packet"] = packet
        client._handle_pubackcomp(cmd)
        return calls[:]

    return feed


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"\x01\x07", ("fast", MID, 0, False)),
        (b"\x01\x07\x00", ("fast", MID, 0, False)),
        (b"\x01\x07\x10", ("fast", MID, 0x10, False)),  # no matching subscribers: a success
        (b"\x01\x07\x00\x00", ("fast", MID, 0, False)),
        (b"\x01\x07\x87", ("paho", "PUBACK")),  # not authorized
        (b"\x01\x07\x80\x00", ("paho", "PUBACK")),  # unspecified error
        (b"\x01\x07\x00\x01\x1f", ("paho", "PUBACK")),  # properties follow
        (b"\x01\x07\x00\x04\x1f\x00\x01x", ("paho", "PUBACK")),  # a reason string
        (b"\x01\x07\x42", ("paho", "PUBACK")),  # no reason code of PUBACK's
        (b"\x01", ("paho", "PUBACK")),  # malformed
    ],
)
def test_only_plain_successful_pubacks_skip_pahos_decoding(
    packet: bytes, expected: tuple[Any, ...]
) -> None:
    feed = fast_pubacks(paho.MQTTv5)
    assert feed("PUBACK", packet) == [expected]


def test_mqtt_311_pubacks_and_pubcomps() -> None:
    feed = fast_pubacks(paho.MQTTv311)
    assert feed("PUBACK", b"\x01\x07") == [("fast", MID, 0, False)]
    assert feed("PUBACK", b"\x01\x07\x00") == [("paho", "PUBACK")]  # malformed in 3.1.1
    assert feed("PUBCOMP", b"\x01\x07") == [("paho", "PUBCOMP")]


def test_a_puback_for_no_message_in_flight_is_ignored_as_paho_does() -> None:
    feed = fast_pubacks(paho.MQTTv5)
    assert feed("PUBACK", b"\x02\x00") == []


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def relay(
    store: Store, port: int, protocol: Literal["5", "3.1.1"], until: int
) -> mqtt.MqttBridge:
    """Run a bridge until the outbox is empty and `until` messages were published."""
    bridge = mqtt.MqttBridge(
        BrokerConfig(host="127.0.0.1", port=port, protocol=protocol, max_inflight=10),
        topics=Topics("DC1", "gw1"),
        store=store,
        board=StatusBoard(now),
        version="test",
        clock=now,
    )
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(30):
            while store.depth or bridge.published < until:
                await store.wait_changed(store.version, timeout=0.2)
    finally:
        bridge.stop()
        await task
    return bridge


@pytest.mark.broker
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_backlog_larger_than_the_socket_buffers_goes_out_in_order_and_is_deleted(
    tmp_path: Path,
    mosquitto: Mosquitto,
    protocol: Literal["5", "3.1.1"],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = []  # the socket could not take everything queued: the rest waited for a writer
    flush, opened = mqtt._Client._flush, mqtt._Client._on_socket_open

    def watched(self: mqtt._Client, client: paho.Client, sock: Any) -> None:
        flush(self, client, sock)
        full.append(client.want_write())

    def small_buffer(self: mqtt._Client, client: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        opened(self, client, userdata, sock)

    monkeypatch.setattr(mqtt._Client, "_flush", watched)
    monkeypatch.setattr(mqtt._Client, "_on_socket_open", small_buffer)
    messages = [
        OutboxMessage(
            f"m{n}",
            "gw/DC1/gw1/tx/move",
            json.dumps({"id": n, "pad": "x" * (300_000 if n % 5 == 0 else 200)}).encode(),
        )
        for n in range(30)
    ]
    async with await Store.open(tmp_path / "gateway.db") as store:
        await store.commit(messages)
        async with Collector(mosquitto.port, topic="gw/DC1/gw1/tx/#") as collector:
            bridge = await relay(store, mosquitto.port, protocol, until=30)
            await collector.wait_for(lambda c: len(c.messages) >= 30, timeout=30)
        assert store.size == 0
        assert await store.pending() == []
    assert [m.json()["id"] for m in collector.messages] == list(range(30))
    assert bridge.published == 30
    assert any(full)


@pytest.mark.broker
async def test_with_no_subscriber_every_message_is_acknowledged_and_deleted(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # Mosquitto answers a publish nobody subscribed to with reason 0x10, a success.
    async with await Store.open(tmp_path / "gateway.db") as store:
        await store.commit(
            [OutboxMessage(f"m{n}", "gw/DC1/gw1/tx/move", b"{}") for n in range(250)]
        )
        bridge = await relay(store, mosquitto.port, "5", until=250)
        assert bridge.published == 250
        assert bridge.refused == 0
        assert store.depth == 0


def test_the_walk_for_queued_messages_runs_only_when_one_may_be_queued() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(2)
    walks = []

    def walk() -> MQTTErrorCode:
        walks.append(len(client._out_messages))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._update_inflight = walk  # type: ignore[method-assign]
    mqtt._cheap_inflight_updates(client)
    client._out_messages[1] = object()  # type: ignore[assignment]
    client._inflight_messages = 1
    client._update_inflight()
    assert walks == []  # the one stored message is in flight
    client._out_messages[2] = object()  # type: ignore[assignment]  # queued behind the limit
    client._update_inflight()
    assert walks == [2]


@pytest.mark.broker
async def test_a_publish_queued_behind_a_full_window_goes_out_when_a_place_frees(
    mosquitto: Mosquitto,
) -> None:
    acked: list[int] = []
    client = mqtt._Client("127.0.0.1", mosquitto.port, max_inflight_messages=2)
    async with client:
        for _ in range(2):
            client.publish_nowait(
                "gw/DC1/gw1/tx/move",
                b"{}",
                qos=1,
                retain=False,
                on_ack=lambda m, _r: acked.append(m),
            )
        # A third publish (a status, an answer) waits in paho behind the relay's two.
        async with asyncio.timeout(10):
            await client.publish_acked("gw/DC1/gw1/status", b"{}", qos=1, retain=True)
            while len(acked) < 2:
                await asyncio.sleep(0.01)
