"""Scan-verified packing (#15): 200 cartons packed from a handheld against a ship order with 5
wrong items planted: exactly 5 alarms; every label printed carries the SSCC published, each
once, also those queued while the printer was off."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import aiomqtt
import pytest

from gateway.domain import Item, OpenCarton, PackedItem, ShipLine, ShipOrder
from gateway.domain.epc import gs1_check_digit
from gateway.rules.packing import Packing, SsccRange, sscc_of
from simulators.gs1 import gtin_label
from simulators.handheld import HandheldTerminal
from simulators.zpl_printer import ZplPrinterSimulator
from tests.dock_helpers import gtin
from tests.gateway_helpers import assert_valid, build, running, site_config, wait_reference_data
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

T0 = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
A, B, C = gtin("011111"), gtin("022222"), gtin("033333")


def test_sscc_range_and_the_carton_checks() -> None:
    span = SsccRange("0614141", 1, 3, extension=3)
    first = sscc_of(span, 1)
    # extension 3, company prefix 0614141, serial reference 000000001, check digit
    assert first == "30614141000000001" + str(gs1_check_digit("30614141000000001"))
    order = ShipOrder("SO-1", "D05", (), (ShipLine(1, A, 2), ShipLine(2, B, 1, lot="L1")))
    packing = Packing(span)
    assert Packing(span, stations=frozenset({"PS2"})).open("pda", "C", order, "PS1", T0)[1:] == (
        "rejected",
        "no label printer at station PS1",
    )
    packing.open("pda", "CTN-1", order, "PS1", T0)
    results = [
        packing.add("pda", Item("", gtin=code, lot=lot, expiry=exp), order, None, T0)[1]
        for code, lot, exp in [
            (A, None, None),
            (C, None, None),  # not on the order
            (A, None, dt.date(2026, 12, 6)),  # expired
            (B, "L2", None),  # the line wants L1
            (B, "L1", None),
            (A, None, None),
            (A, None, None),  # the A line is full
        ]
    ]
    assert results == [
        "packed",
        "wrong_item",
        "expired",
        "wrong_lot",
        "packed",
        "packed",
        "too_many",
    ]
    decisions, result, sscc = packing.close("pda", T0, "pda")
    assert (result, sscc) == ("closed", first)
    # The range runs out: no SSCC is ever given twice.
    for n in (2, 3):
        packing.open("pda", f"CTN-{n}", order, "PS1", T0)
        packing.cartons["pda"] = OpenCarton(
            f"CTN-{n}", "SO-1", "PS1", T0, (PackedItem(Item("", gtin=A), 1, T0),)
        )
        assert packing.close("pda", T0, "pda")[2] == sscc_of(span, n)
    packing.open("pda", "CTN-4", order, "PS1", T0)
    packing.cartons["pda"] = OpenCarton(
        "CTN-4", "SO-1", "PS1", T0, (PackedItem(Item("", gtin=A), 1, T0),)
    )
    decisions, result, _ = packing.close("pda", T0, "pda")
    assert result == "rejected" and decisions[0].code == "sscc_range_exhausted"


CARTONS = 200
# The acceptance's minute, shortened for the suite; PRINTER_OFFLINE_S=60 runs it as written.
OFFLINE_S = float(os.environ.get("PRINTER_OFFLINE_S", "5"))


async def test_two_hundred_cartons_five_wrong_items_and_a_printer_off_for_a_while(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    order = {
        "order_id": "SO-P",
        "door": "D05",
        "pallets": [],
        "lines": [
            {"line": 1, "gtin": A, "quantity": 2 * CARTONS},
            {"line": 2, "gtin": B, "quantity": CARTONS, "lot": "L1"},
        ],
    }
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/shipment/SO-P", json.dumps(order), qos=1, retain=True)
    today = dt.datetime.now(dt.UTC).date()
    good_a = gtin_label(A, lot="LA", expiry=today + dt.timedelta(days=90))
    good_b = gtin_label(B, lot="L1", expiry=today + dt.timedelta(days=90))
    planted = {
        7: gtin_label(C),  # not on the order
        40: gtin_label(B, lot="L2"),  # the wrong lot
        90: gtin_label(A, lot="LA", expiry=today - dt.timedelta(days=1)),  # expired
    }
    async with ZplPrinterSimulator() as printer:
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
        raw["handheld"] = {"enabled": True}
        raw["packing"] = {"enabled": True, "company_prefix": "0614141", "first_serial": 5000}
        raw["devices"].append(
            {
                "id": "printer-ps1",
                "kind": "zpl_printer",
                "station": "PS1",
                "host": "127.0.0.1",
                "port": printer.port,
                "backoff": {"min_s": 0.1, "max_s": 0.5},
            }
        )
        async with (
            Collector(mosquitto.port) as collector,
            running(build(raw, tmp_path)) as gateway,
            HandheldTerminal("pda-pack", mosquitto.port, batch_size=40, operator="wu") as pda,
        ):
            await wait_reference_data(gateway, "shipment/SO-P")
            for n in range(CARTONS):
                pda.scan("carton", f"CTN-{n:04d}", station="PS1", reference="SO-P")
                for label in (good_a, good_a, good_b):
                    pda.scan("pack", label)
                if n in planted:
                    pda.scan("pack", planted[n])
                pda.scan("close", f"CTN-{n:04d}")
                if n == 60:
                    await pda.flush()
                    async with asyncio.timeout(20):  # carton 60's label printed: it is async
                        while len(printer.labels) < 61:
                            await asyncio.sleep(0.05)
                    await printer.offline()  # switched off: labels wait for it
                    off = asyncio.get_running_loop().time()
                if n % 20 == 19:
                    await pda.flush()
            # Two more of A than the order wants: too many, in a carton of their own.
            pda.scan("carton", "CTN-LAST", station="PS1", reference="SO-P")
            pda.scan("pack", good_a)
            pda.scan("pack", good_a)
            await pda.flush()
            assert pda.pending == 0
            waited = OFFLINE_S - (asyncio.get_running_loop().time() - off)
            await asyncio.sleep(max(0.0, waited))
            printed_while_off = len(printer.labels)
            await printer.online()
            await collector.wait_for(lambda c: len(c.on("/tx/pack")) >= CARTONS)
            async with asyncio.timeout(20):
                while len(printer.labels) < CARTONS:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # nothing more comes
        packs = [m.json() for m in collector.on("/tx/pack")]
        alarms = [m.json() for m in collector.on("/alarm")]
    # Exactly the 5 planted wrong items raised an alarm, and none was packed.
    assert sorted(a["details"]["result"] for a in alarms) == [
        "expired",
        "too_many",
        "too_many",
        "wrong_item",
        "wrong_lot",
    ]
    assert {a["code"] for a in alarms} == {"pack_exception"}
    for tx in packs:
        assert_valid("pack", tx)
        assert len(tx["items"]) == 3 and sorted(i["gtin"] for i in tx["items"]) == [A, A, B]
    # Every printed SSCC is one published, each printed once, in order; fresh serials.
    published = [tx["sscc"] for tx in sorted(packs, key=lambda t: t["closed_at"])]
    assert len(set(published)) == CARTONS
    assert printer.ssccs == published
    assert printed_while_off == 61  # up to carton 60; the rest waited for the printer
    span = SsccRange("0614141", 5000, 999_999)
    assert published == [sscc_of(span, 5000 + n) for n in range(CARTONS)]
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/shipment/SO-P", b"", qos=1, retain=True)
