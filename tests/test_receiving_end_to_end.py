"""Receiving over real transports: a WMS publishes an ASN, pallets roll through an RFID portal,
the gateway publishes receive transactions with their exceptions, and closes the receipt on an
MQTT 5 request."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.domain.epc import decode_epc, encode_sscc96
from gateway.health import DeviceState
from gateway.wire.epcis import validator as epcis_validator
from simulators.llrp import LlrpReaderSimulator, Pallet, Scenario
from tests.dock_helpers import CP, cases, gtin
from tests.gateway_helpers import (
    assert_valid,
    build,
    running,
    site_config,
    wait_device,
    wait_reference_data,
)
from tests.mqtt_helpers import Collector, Mosquitto
from tests.time_helpers import SPEED, AcceleratedClock

pytestmark = pytest.mark.broker


async def test_receipt_against_an_asn_with_planted_problems(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    p1 = [encode_sscc96(CP, "1000000001"), *cases("012345", 1, 4)]
    p2 = [encode_sscc96(CP, "1000000002"), *cases("012345", 5, 3), *cases("099999", 1, 1)]
    p3 = [encode_sscc96(CP, "1000000003"), *cases("054321", 1, 2)]
    asn = {
        "asn_id": "ASN-7",
        "door": "D03",
        "supplier": {"name": "ACME"},
        "lines": [
            {"line": 1, "gtin": gtin("012345"), "quantity": 8},  # 7 arrive: short by one
            {"line": 2, "sscc": decode_epc(p1[0]).sscc, "quantity": 1},
            {"line": 3, "sscc": decode_epc(p2[0]).sscc, "quantity": 1},
            {"line": 4, "sscc": decode_epc(p3[0]).sscc, "quantity": 1},
            {
                "line": 5,
                "epcs": [e.hex().upper() for e in p3[1:]],
                "quantity": 2,
                "lot": "L7",
                "expiry": (today - dt.timedelta(days=3)).isoformat(),  # expired
            },
        ],
    }
    scenario = Scenario(
        pallets=[
            Pallet(p1, "inbound", 1.0, 1.5),
            Pallet(p2, "inbound", 4.5, 1.5),
            Pallet(p3, "inbound", 8.0, 1.5),
        ],
        door="D03",
        seed=3,
        time_scale=SPEED,
    )
    # Reads per wall-clock second (per scenario second, SPEED times fewer). The truck is at the
    # door once its ASN is in (released below).
    async with LlrpReaderSimulator(scenario, reads_per_s=4000, held=True) as sim:
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None, reader_port=sim.port)
        raw["epcis"] = {"enabled": True, "read_point_base": "urn:epc:id:sgln:0614141.00001"}
        config = build(raw, tmp_path)
        async with (
            Collector(mosquitto.port) as collector,
            aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as wms,
        ):
            await wms.publish("wms/DC1/asn/ASN-7", json.dumps(asn), qos=1, retain=True)
            await wms.publish("wms/DC1/asn/BAD", b"{not json", qos=1, retain=True)
            async with running(config, clock=AcceleratedClock(SPEED)) as gateway:
                await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
                await wait_reference_data(gateway, "asn/ASN-7")
                sim.release()
                await collector.wait_for(lambda c: len(c.on("/tx/receive")) >= 3, timeout=40)
                # Close the receipt with an MQTT 5 request; the answer comes to our topic.
                await wms.subscribe("wms/DC1/replies/#", qos=1)
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = "wms/DC1/replies/close"
                props.CorrelationData = b"req-1"
                await wms.publish(
                    "gw/DC1/dock-1/cmd/close",
                    json.dumps({"reference": "ASN-7"}),
                    qos=1,
                    properties=props,
                )
                async with asyncio.timeout(10):
                    async for message in wms.messages:
                        if str(message.topic) == "wms/DC1/replies/close":
                            reply = json.loads(message.payload)  # type: ignore[arg-type]
                            assert message.properties.CorrelationData == b"req-1"  # type: ignore[union-attr]
                            break
                assert reply["ok"] is True
                assert reply["status"] == "short"
                await collector.wait_for(lambda c: len(c.on("/receipt")) == 1)
            await wms.publish("wms/DC1/asn/ASN-7", b"", qos=1, retain=True)
            await wms.publish("wms/DC1/asn/BAD", b"", qos=1, retain=True)

    receipts = [m.json() for m in collector.on("/tx/receive")]
    for receipt in receipts:
        assert_valid("receive", receipt)
        assert receipt["asn_id"] == "ASN-7"
    results = {item["epc"]: item["result"] for r in receipts for item in r["items"]}
    expected = {e.hex().upper(): "accepted" for e in p1 + p2 + p3}
    expected[cases("099999", 1, 1)[0].hex().upper()] = "unexpected"
    for e in p3[1:]:
        expected[e.hex().upper()] = "expired"
    assert results == expected
    for message in collector.on("/alarm") + collector.on("/event"):
        assert_valid("event", message.json())
    alarms = [m.json()["code"] for m in collector.on("/alarm")]
    assert alarms.count("expired_lot") == 1
    events = [m.json() for m in collector.on("/event")]
    assert any(e["code"] == "reference_data_rejected" and "BAD" in e["message"] for e in events)
    (summary,) = [m.json() for m in collector.on("/receipt")]
    assert_valid("dock-summary", summary)
    lines = {line["line"]: (line["done"], line["short"]) for line in summary["lines"]}
    assert lines == {1: (7, 1), 2: (1, 0), 3: (1, 0), 4: (1, 0), 5: (0, 2)}
    docs = [m.json() for m in collector.on("/epcis")]
    assert len(docs) == len(receipts)
    for doc in docs:
        errors = list(epcis_validator().iter_errors(doc))
        assert not errors, errors[0].message
        assert doc["epcisBody"]["eventList"][0]["bizStep"] == "receiving"
