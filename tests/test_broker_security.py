"""Username/password, an ACL that refuses a publish, and TLS, against a private Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
import trustme
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridge import mqtt
from gateway.health import DeviceState
from simulators.gs1 import sscc, sscc_label
from simulators.scanner import ScannerSimulator, Type
from tests.gateway_helpers import build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto, password_file

pytestmark = pytest.mark.broker

PALLET = sscc("0376123", 5)


async def test_refused_publish_is_kept_retried_and_does_not_hold_up_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt, "REFUSED_RETRY_MIN_S", 0.3)
    passwd = password_file(tmp_path / "passwd", {"gw": "gw-secret", "wms": "wms-secret"})
    acl = tmp_path / "acl"
    # The gateway may publish statuses, events and alarms, but not (yet) its transactions.
    acl.write_text(
        "user gw\ntopic write gw/DC1/dock-1/status\ntopic write gw/DC1/dock-1/device/#\n"
        "topic write gw/DC1/dock-1/event\ntopic write gw/DC1/dock-1/alarm\n"
        "topic write gw/DC1/dock-1/state/#\ntopic write gw/DC1/dock-1/sequence\n"
        "user wms\ntopic read gw/#\n"
    )
    broker = Mosquitto(
        tmp_path,
        extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n",
    )
    broker.start()
    try:
        monkeypatch.setenv("TEST_MQTT_PASSWORD", "gw-secret")
        raw = site_config(tmp_path, broker_port=broker.port, scanner=tmp_path / "scan0")
        raw["broker"] |= {"username": "gw", "password_env": "TEST_MQTT_PASSWORD"}
        config = build(raw, tmp_path)
        async with (
            Collector(broker.port, username="wms", password="wms-secret") as wms,
            ScannerSimulator(tmp_path / "scan0") as sim,
            running(config) as gateway,
        ):
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            # A move (refused), then a location with no pallet (an event, allowed).
            await sim.run([Type(sscc_label(PALLET), aim="]C1"), Type("A-01-01"), Type("B-02-02")])
            # The event behind the refused move gets through; the refusal raises one alarm.
            await wms.wait_for(lambda c: len(c.on("/event")) == 1 and len(c.on("/alarm")) == 1)
            alarm = wms.on("/alarm")[0].json()
            assert alarm["code"] == "publish_refused"
            assert alarm["details"]["topic"] == "gw/DC1/dock-1/tx/move"
            assert wms.on("/tx/move") == []
            assert gateway.store is not None
            store = gateway.store
            deadline = asyncio.get_running_loop().time() + 10
            while store.depth != 1:  # acknowledgements of the event and the alarm settle
                assert asyncio.get_running_loop().time() < deadline, store.depth
                await asyncio.sleep(0.05)
            # The move is kept.
            assert gateway.store.refused == 1
            assert gateway.bridge is not None
            assert gateway.bridge.refused >= 1
            # The site fixes its ACL; the retry delivers the move.
            acl.write_text(
                acl.read_text().replace(
                    "topic write gw/DC1/dock-1/event\n", "topic write gw/DC1/dock-1/#\n"
                )
            )
            broker.reload()
            await wms.wait_for(lambda c: len(c.on("/tx/move")) == 1)
            assert wms.on("/tx/move")[0].json()["sscc"] == PALLET
            while gateway.store.depth:
                await asyncio.sleep(0.05)
            assert gateway.store.refused == 0
    finally:
        broker.stop()


async def test_wrong_password_keeps_retrying_without_losing_anything(tmp_path: Path) -> None:
    passwd = password_file(tmp_path / "passwd", {"gw": "right"})
    broker = Mosquitto(tmp_path, extra=f"allow_anonymous false\npassword_file {passwd}\n")
    broker.start()
    secret = tmp_path / "mqtt.password"
    secret.write_text("wrong\n")
    try:
        raw = site_config(tmp_path, broker_port=broker.port, scanner=tmp_path / "scan0")
        raw["broker"] |= {"username": "gw", "password_file": str(secret)}
        config = build(raw, tmp_path)
        async with ScannerSimulator(tmp_path / "scan0") as sim, running(config) as gateway:
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run([Type(sscc_label(PALLET), aim="]C1"), Type("A-01-01")])
            await asyncio.sleep(1.0)
            assert gateway.bridge is not None
            assert not gateway.bridge.connected
            assert gateway.store is not None
            assert gateway.store.depth == 2  # the move and its number's announcement
    finally:
        broker.stop()


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    broker = Mosquitto(
        tmp_path, extra=f"allow_anonymous true\ncafile {ca_file}\ncertfile {cert}\nkeyfile {key}\n"
    )
    broker.start()
    try:
        raw = site_config(tmp_path, broker_port=broker.port, scanner=tmp_path / "scan0")
        raw["broker"] |= {"tls": {"ca_file": str(ca_file)}}
        config = build(raw, tmp_path)
        async with (
            Collector(broker.port, tls_ca=ca_file) as collector,
            ScannerSimulator(tmp_path / "scan0") as sim,
            running(config) as gateway,
        ):
            await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
            await sim.run([Type(sscc_label(PALLET), aim="]C1"), Type("A-01-01")])
            await collector.wait_for(lambda c: len(c.on("/tx/move")) == 1)
    finally:
        broker.stop()


async def test_an_answer_the_broker_refuses_is_counted_and_raises_an_alarm(tmp_path: Path) -> None:
    # The gateway may write its own tree but not the WMS's reply topics: its answer to a close
    # command is refused (PUBACK 135). Counted, logged and raised like any refused publish.
    passwd = password_file(tmp_path / "passwd", {"gw": "gw-secret", "wms": "wms-secret"})
    acl = tmp_path / "acl"
    acl.write_text(
        "user gw\ntopic readwrite gw/DC1/dock-1/#\n"
        "user wms\ntopic read gw/#\ntopic write gw/DC1/dock-1/cmd/#\ntopic read wms/DC1/replies/#\n"
    )
    broker = Mosquitto(
        tmp_path, extra=f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
    )
    broker.start()
    try:
        secret = tmp_path / "gw-password"
        secret.write_text("gw-secret")
        raw = site_config(tmp_path, broker_port=broker.port, scanner=None)
        raw["broker"] |= {"username": "gw", "password_file": str(secret)}
        config = build(raw, tmp_path)
        async with (
            Collector(broker.port, username="wms", password="wms-secret") as wms,
            running(config) as gateway,
        ):
            while gateway.bridge is None or not gateway.bridge.subscribed:
                await asyncio.sleep(0.02)
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username="wms",
                password="wms-secret",
                identifier="test-wms-asks",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as asker:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.ResponseTopic = "wms/DC1/replies/test"
                properties.CorrelationData = b"1"
                await asker.publish(
                    "gw/DC1/dock-1/cmd/close",
                    b'{"reference": "NOPE"}',
                    qos=1,
                    properties=properties,
                )
            await wms.wait_for(lambda c: c.on("/alarm"))
            assert gateway.bridge.responses_refused == 1
            assert gateway.bridge.refused >= 1
        (alarm,) = [m.json() for m in wms.on("/alarm")]
        assert (alarm["code"], alarm["details"]["topic"]) == (
            "publish_refused",
            "wms/DC1/replies/test",
        )
    finally:
        broker.stop()
