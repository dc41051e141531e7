"""Dock doors over real transports: a restart in the middle of a receipt, malformed WMS
messages, and a shipping door that stops the wrong pallet."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.domain.epc import encode_sscc96
from gateway.health import DeviceState
from simulators.llrp import LlrpReaderSimulator, Pallet, Scenario
from simulators.modbus_coil import ModbusCoilSimulator
from tests.dock_helpers import CP, cases, gtin, sscc
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

# Reads per wall-clock second: per scenario second, SPEED times fewer.
READS_PER_S = 4000


def hexes(epcs: list[bytes]) -> set[str]:
    return {e.hex().upper() for e in epcs}


async def close(client: aiomqtt.Client, reference: str) -> None:
    await client.publish("gw/DC1/dock-1/cmd/close", json.dumps({"reference": reference}), qos=1)


def reader_config(tmp_path: Path, broker: int, reader: int, **extra: Any) -> Any:
    raw = site_config(tmp_path, broker_port=broker, scanner=None, reader_port=reader)
    raw["devices"][0].update(extra)
    return build(raw, tmp_path)


@pytest.mark.slow(3)
async def test_restart_in_the_middle_of_a_receipt(tmp_path: Path, mosquitto: Mosquitto) -> None:
    p1 = [encode_sscc96(CP, "2000000001"), *cases("012345", 100, 5)]
    p2 = [encode_sscc96(CP, "2000000002"), *cases("012345", 200, 4)]
    asn = {
        "asn_id": "ASN-R",
        "door": "D03",
        "lines": [
            {"line": 1, "gtin": gtin("012345"), "quantity": 10},
            {"line": 2, "sscc": sscc(p1[0]), "quantity": 1},
            {"line": 3, "sscc": sscc(p2[0]), "quantity": 1},
        ],
    }
    # Pallet 1 comes in, the gateway restarts, pallet 1 is driven through again by mistake,
    # then pallet 2 comes in. Played SPEED times fast; the door's day after the restart is a
    # second script, whose clock starts when the restarted gateway starts its inventory: so
    # the restart's own duration (wall time) cannot make the gateway miss a pallet.
    before = Scenario(
        pallets=[Pallet(p1, "inbound", 1.0, 1.5)], door="D03", seed=4, time_scale=SPEED
    )
    after = Scenario(
        pallets=[Pallet(p1, "inbound", 1.0, 1.5), Pallet(p2, "inbound", 5.0, 1.5)],
        door="D03",
        seed=4,
        time_scale=SPEED,
    )
    async with (
        Collector(mosquitto.port) as collector,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as wms,
    ):
        await wms.publish("wms/DC1/asn/ASN-R", json.dumps(asn), qos=1, retain=True)
        clock = AcceleratedClock(SPEED)
        async with LlrpReaderSimulator(before, reads_per_s=READS_PER_S, held=True) as sim:
            config = reader_config(tmp_path, mosquitto.port, sim.port)
            async with running(config, clock=clock) as gateway:
                await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
                await wait_reference_data(gateway, "asn/ASN-R")
                sim.release()  # the truck is at the door once its ASN is in
                await collector.wait_for(lambda c: len(c.on("/tx/receive")) == 1, timeout=30)
        # Restarted: the ASN and the ledger come back from the SQLite file. The gateway's
        # clock goes on from where it was (an accelerated clock runs ahead of the wall clock).
        clock = AcceleratedClock(SPEED, start=clock())
        async with LlrpReaderSimulator(after, reads_per_s=READS_PER_S) as sim:
            config = reader_config(tmp_path, mosquitto.port, sim.port)
            async with running(config, clock=clock) as gateway:
                await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
                await collector.wait_for(lambda c: len(c.on("/tx/receive")) == 3, timeout=40)
                await close(wms, "ASN-R")
                await collector.wait_for(lambda c: len(c.on("/receipt")) == 1)
        await wms.publish("wms/DC1/asn/ASN-R", b"", qos=1, retain=True)
    first, again, second = (m.json() for m in collector.on("/tx/receive"))
    for tx in (first, again, second):
        assert_valid("receive", tx)
    assert {i["epc"]: i["result"] for i in first["items"]} == dict.fromkeys(hexes(p1), "accepted")
    assert {i["result"] for i in again["items"]} == {"already_received"}
    assert {i["epc"] for i in again["items"]} == hexes(p1)
    assert {i["result"] for i in second["items"]} == {"accepted"}
    (summary,) = (m.json() for m in collector.on("/receipt"))
    lines = {line["line"]: (line["done"], line["short"]) for line in summary["lines"]}
    assert lines == {1: (9, 1), 2: (1, 0), 3: (1, 0)}


async def until_subscribed(gateway: Any) -> None:
    for _ in range(200):
        if gateway.bridge is not None and gateway.bridge.subscribed:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway never subscribed to the WMS topics")


def malformed_asns(good: dict[str, Any], n: int, seed: int) -> list[bytes]:
    """Broken versions of a good ASN: garbage, wrong types, missing keys, bad check digits."""
    rng = random.Random(seed)
    out: list[bytes] = [
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        json.dumps({**good, "lines": []}).encode(),
        json.dumps({**good, "asn_id": "SOMETHING-ELSE"}).encode(),
        json.dumps(
            {**good, "lines": [{"line": 1, "gtin": "00614141123453", "quantity": 1}]}
        ).encode(),
    ]
    while len(out) < n:
        broken = json.loads(json.dumps(good))
        key = rng.choice(["asn_id", "door", "lines", "supplier"])
        broken[key] = rng.choice([None, 7, "", [], {"x": 1}, -1.5, True])
        out.append(json.dumps(broken).encode())
    return out


async def test_malformed_wms_messages_are_rejected_and_good_data_stays(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    p1 = [encode_sscc96(CP, "3000000001"), *cases("012345", 300, 3)]
    good = {
        "asn_id": "ASN-G",
        "door": "D03",
        "lines": [
            {"line": 1, "gtin": gtin("012345"), "quantity": 3},
            {"line": 2, "sscc": sscc(p1[0]), "quantity": 1},
        ],
    }
    bad = malformed_asns(good, 20, seed=1)
    scenario = Scenario(
        pallets=[Pallet(p1, "inbound", 1.0, 1.5)], door="D03", seed=5, time_scale=SPEED
    )
    async with (
        # The pallet rolls up once the WMS's messages are in (released below).
        LlrpReaderSimulator(scenario, reads_per_s=READS_PER_S, held=True) as sim,
        Collector(mosquitto.port) as collector,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as wms,
    ):
        config = reader_config(tmp_path, mosquitto.port, sim.port)
        async with running(config, clock=AcceleratedClock(SPEED)) as gateway:
            await wms.publish("wms/DC1/asn/ASN-G", json.dumps(good), qos=1, retain=True)
            await until_subscribed(gateway)
            await wms.publish("wms/DC1/product/" + gtin("012345"), b"{", qos=1)
            await wms.publish("wms/DC1/shipment/SO-X", b'{"order_id": 5}', qos=1)
            for payload in bad:  # all on the good ASN's own topic: none may disturb it
                await wms.publish("wms/DC1/asn/ASN-G", payload, qos=1)
            await collector.wait_for(
                lambda c: (
                    sum(m.json()["code"] == "reference_data_rejected" for m in c.on("/event"))
                    == len(bad) + 2
                ),
                timeout=20,
            )
            await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
            sim.release()
            await collector.wait_for(lambda c: len(c.on("/tx/receive")) == 1, timeout=30)
        await wms.publish("wms/DC1/asn/ASN-G", b"", qos=1, retain=True)
    (receipt,) = (m.json() for m in collector.on("/tx/receive"))
    assert receipt["asn_id"] == "ASN-G"
    assert receipt["status"] == "accepted"
    for event in collector.on("/event"):
        assert_valid("event", event.json())


async def test_the_wrong_pallet_at_a_shipping_door_raises_an_alarm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    right = [encode_sscc96(CP, "4000000001"), *cases("054321", 400, 3)]
    wrong = [encode_sscc96(CP, "4000000009"), *cases("099999", 1, 2)]
    order = {
        "order_id": "SO-5",
        "door": "D03",
        "pallets": [sscc(right[0])],
        "lines": [{"line": 1, "gtin": gtin("054321"), "quantity": 3}],
    }
    scenario = Scenario(
        pallets=[Pallet(right, "outbound", 1.0, 1.5), Pallet(wrong, "outbound", 5.0, 1.5)],
        door="D03",
        seed=6,
        time_scale=SPEED,
    )
    async with (
        # Loading starts once the order is in (released below).
        LlrpReaderSimulator(scenario, reads_per_s=READS_PER_S, held=True) as sim,
        ModbusCoilSimulator() as horn,
        Collector(mosquitto.port) as collector,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as wms,
    ):
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None, reader_port=sim.port)
        raw["devices"][0]["role"] = "shipping"
        raw["devices"].append(
            {
                "id": "horn-d03",
                "kind": "signal_light",
                "host": "127.0.0.1",
                "port": horn.port,
                "coil": 3,
                "doors": ["D03"],
                "hold_s": 30,
                "backoff": {"min_s": 0.05, "max_s": 0.3},
            }
        )
        config = build(raw, tmp_path)
        await wms.publish("wms/DC1/shipment/SO-5", json.dumps(order), qos=1, retain=True)
        async with running(config, clock=AcceleratedClock(SPEED)) as gateway:
            await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
            await wait_reference_data(gateway, "shipment/SO-5")
            sim.release()
            await collector.wait_for(lambda c: len(c.on("/tx/ship")) == 2, timeout=30)
            # The wrong pallet sounds the door's horn (a Modbus coil) while the alarm holds.
            await horn.wait_for(3, True, timeout=5.0)
            await close(wms, "SO-5")
            await collector.wait_for(lambda c: len(c.on("/shipment")) == 1)
        await wms.publish("wms/DC1/shipment/SO-5", b"", qos=1, retain=True)
    ok, stop = (m.json() for m in collector.on("/tx/ship"))
    for tx in (ok, stop):
        assert_valid("ship", tx)
    assert ok["status"] == "accepted"
    assert {i["result"] for i in stop["items"]} == {"not_on_order"}
    alarms = [m.json() for m in collector.on("/alarm")]
    assert [a["code"] for a in alarms] == ["wrong_pallet_at_shipping"]
    assert alarms[0]["location"] == "D03"
    (summary,) = (m.json() for m in collector.on("/shipment"))
    assert_valid("dock-summary", summary)
    assert summary["status"] == "complete"


async def test_an_asn_withdrawn_while_the_gateway_is_away_is_gone_when_it_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    import sqlite3

    config = build(site_config(tmp_path, broker_port=mosquitto.port, scanner=None), tmp_path)
    asn = {
        "asn_id": "ASN-W",
        "door": "D03",
        "lines": [{"line": 1, "gtin": gtin("012345"), "quantity": 1}],
    }

    def stored() -> list[str]:
        with sqlite3.connect(tmp_path / "gateway.db") as db:
            return [row[0] for row in db.execute("SELECT key FROM refdata WHERE kind = 'asn'")]

    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as wms:
        await wms.publish("wms/DC1/asn/ASN-W", json.dumps(asn), qos=1, retain=True)
        async with running(config) as gateway:
            await until_subscribed(gateway)
            await wait_reference_data(gateway, "asn/ASN-W")
        assert stored() == ["ASN-W"]
        # The WMS withdraws the ASN while the gateway is stopped: nothing is retained any more.
        await wms.publish("wms/DC1/asn/ASN-W", b"", qos=1, retain=True)
        async with running(config) as gateway:
            await until_subscribed(gateway)
            for _ in range(200):  # the broker kept the deletion for the gateway's session
                if not stored():
                    break
                await asyncio.sleep(0.05)
    assert stored() == []
