"""Cycle counts end to end (#16): the WMS opens a count of an aisle over MQTT 5, a handheld
sweeps each location with its RFID reader, the gateway restarts in the middle, the WMS closes
the count: found, missing and unexpected pallets and cases equal the ground truth exactly, the
one `count` transaction and its EPCIS events are published once, and the stock is adjusted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.domain import decode_epc, epc_key
from gateway.domain.epc import encode_sscc96
from gateway.storage import PalletMove, StateChanges, Store
from gateway.wire.epcis import validator as epcis_validator
from simulators.handheld import HandheldTerminal
from simulators.storage_area import StorageArea
from tests.gateway_helpers import (
    assert_valid,
    build,
    running,
    site_config,
    wait_reference_data,
    wms_request,
)
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = pytest.mark.broker

LOCATIONS = [f"A-{n // 10 + 1:02d}-{n % 10 + 1:02d}" for n in range(40)]
OUTSIDE = "B-09-01"  # a location outside the counted aisle


async def count_command(port: int, doc: dict[str, Any]) -> dict[str, Any]:
    """Send `cmd/count` as the WMS does; its answer."""
    return await wms_request(port, "cmd/count", doc, timeout=20)


def config(tmp_path: Path, port: int) -> dict[str, Any]:
    raw = site_config(tmp_path, broker_port=port, scanner=None)
    raw["handheld"] = {"enabled": True}
    raw["epcis"] = {"enabled": True, "read_point_base": "urn:epc:id:sgln:0614141.00001"}
    return raw


async def seed_stock(path: Path, area: StorageArea, extra: dict[str, str]) -> None:
    """The stock the gateway recorded before the count: each pallet at its location with its
    cases (as receipts and moves would have left it), and `extra` pallets elsewhere."""
    store = await Store.open(path)
    try:
        changes = StateChanges(
            moves=[
                PalletMove(key.removeprefix("sscc:"), where, "tx-seed", 1.0)
                for key, where in {**area.recorded, **extra}.items()
            ],
            cases=[
                (case, pallet.removeprefix("sscc:"))
                for case, pallet in area.recorded_cases().items()
            ],
        )
        await store.commit([], changes)
    finally:
        await store.close()


async def sweep(pda: HandheldTerminal, area: StorageArea, locations: list[str]) -> None:
    """The clerk sweeps each location: its label scanned, then the RFID trigger pulled."""
    for location in locations:
        pda.scan("sweep", location, epcs=area.tags_at(location))
    await pda.flush()
    assert pda.pending == 0
    assert {r["result"] for r in pda.results.values()} == {"counted"}


async def subscribed(gateway: Gateway) -> None:
    """Wait until the gateway has subscribed to what it takes (a request sent before is lost)."""
    async with asyncio.timeout(10):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)


def keys(entries: list[dict[str, Any]]) -> set[str]:
    """Thing keys of a count payload's entries."""
    out = set()
    for entry in entries:
        if "sscc" in entry:
            out.add(f"sscc:{entry['sscc']}")
        elif "gtin" in entry:
            out.add(f"sgtin:{entry['gtin']}.{entry['serial']}")
        else:
            out.add(f"epc:{entry['epc']}")
    return out


async def test_a_count_of_an_aisle_equals_the_ground_truth_across_a_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    area = StorageArea.generate(
        locations=LOCATIONS,
        pallets=400,
        cases_per_pallet=5,
        missing=0.03,
        misplaced=0.02,
        strangers=5,
        loose_cases=4,
        seed=16,
    )
    # A pallet the gateway has outside the aisle, found in it: unexpected, and misplaced.
    intruder_epc = encode_sscc96("0614141", "3999999999").hex().upper()
    intruder = epc_key(decode_epc(intruder_epc), intruder_epc)
    area.floor[LOCATIONS[7]].append(intruder_epc)
    # And one the gateway has in the aisle whose tag nobody reads: missing (with no cases).
    truth = area.truth()
    truth["pallets_unexpected"].add(intruder)
    raw = config(tmp_path, mosquitto.port)
    await seed_stock(Path(raw["storage"]["path"]), area, {intruder: OUTSIDE})
    async with Collector(mosquitto.port) as collector:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms-md") as wms:
            for location in [*LOCATIONS, OUTSIDE]:
                doc = {"location": location, "aisle": location[:1], "kind": "rack"}
                await wms.publish(
                    f"wms/DC1/location/{location}", json.dumps(doc), qos=1, retain=True
                )
        async with running(build(raw, tmp_path)) as gateway:
            await wait_reference_data(gateway, *(f"location/{x}" for x in LOCATIONS))
            opened = await count_command(
                mosquitto.port, {"count_id": "CC-1", "action": "open", "aisle": "A"}
            )
            assert opened == {
                "ok": True,
                "count_id": "CC-1",
                "status": "open",
                "locations": LOCATIONS,
            }
            refused = await count_command(
                mosquitto.port, {"count_id": "CC-2", "action": "open", "locations": [LOCATIONS[3]]}
            )
            assert refused["ok"] is False and "CC-1" in refused["error"]  # counted already
            async with HandheldTerminal("pda-7", mosquitto.port, batch_size=5) as pda:
                await sweep(pda, area, LOCATIONS[:20])
        # A restart in the middle: what the count saw is kept.
        async with running(build(raw, tmp_path)) as gateway:
            async with HandheldTerminal("pda-7", mosquitto.port, batch_size=5) as pda:
                pda._seq = 20  # the terminal numbers on from where it was
                await sweep(pda, area, LOCATIONS[20:])
            closed = await count_command(mosquitto.port, {"count_id": "CC-1", "action": "close"})
            assert closed["ok"] and closed["status"] == "closed", closed
            again = await count_command(mosquitto.port, {"count_id": "CC-1", "action": "close"})
            assert again == {
                "ok": True,
                "count_id": "CC-1",
                "status": "closed",
                "tx_id": closed["tx_id"],
            }
            await collector.wait_for(lambda c: c.on("/epcis") and c.on("/tx/count"))
            assert gateway.store is not None
            after = await gateway.store.count_stock(LOCATIONS, [intruder])
        await asyncio.sleep(0.5)  # a second transaction would have come by now
        (message,) = collector.on("/tx/count")
        tx = message.json()
        assert_valid("count", tx)
        assert tx["tx_id"] == closed["tx_id"] and tx["reason"] == "command"
        for kind in ("pallets", "items"):
            for part in ("found", "missing", "unexpected", "moved"):
                assert keys(tx[kind][part]) == truth[f"{kind}_{part}"], (kind, part)
        assert closed["totals"]["missing"] == len(truth["pallets_missing"]) + len(
            truth["items_missing"]
        )
        misplaced = {e["sscc"]: e["recorded"] for e in tx["pallets"]["unexpected"] if e["recorded"]}
        assert misplaced == {intruder.removeprefix("sscc:"): OUTSIDE}
        # Each adjustment once; the gateway's stock follows them.
        adjusted = [f"sscc:{a['sscc']}" for a in tx["adjustments"] if "sscc" in a]
        assert len(adjusted) == len(set(adjusted))
        pallets_after = {k: v for k, v in after.items() if k.startswith("sscc:")}
        for key in truth["pallets_missing"]:
            assert key not in pallets_after
        for key, where in area.misplaced.items():
            assert pallets_after[key] == where
        for key, where in area.strangers.items():
            assert pallets_after[key] == where
        assert pallets_after[intruder] == LOCATIONS[7]
        # EPCIS: one cycle_counting event per location, valid, with what was seen there.
        (doc,) = [m.json() for m in collector.on("/epcis")]
        assert not list(epcis_validator().iter_errors(doc))
        events = doc["epcisBody"]["eventList"]
        assert {e["bizStep"] for e in events} == {"cycle_counting"}
        assert len(events) == len(LOCATIONS)
        observed = sum(len(e["epcList"]) for e in events)
        assert observed == sum(len(area.tags_at(x)) for x in LOCATIONS)


async def test_a_sweep_of_a_location_no_count_covers_is_a_count_of_its_own(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    area = StorageArea.generate(
        locations=LOCATIONS[:2], pallets=4, cases_per_pallet=3, missing=0.25, misplaced=0.0, seed=2
    )
    raw = config(tmp_path, mosquitto.port)
    await seed_stock(Path(raw["storage"]["path"]), area, {})
    async with Collector(mosquitto.port) as collector, running(build(raw, tmp_path)) as gateway:
        await subscribed(gateway)
        async with HandheldTerminal("pda-2", mosquitto.port) as pda:
            pda.scan("sweep", LOCATIONS[0], epcs=area.tags_at(LOCATIONS[0]))
            pda.scan("sweep", "not a location", epcs=[])
            pda.scan("sweep", LOCATIONS[1], epcs=area.tags_at(LOCATIONS[1]), count_id="CC-9")
            await pda.flush()
            first, bad, unknown = (pda.results[n] for n in (1, 2, 3))
        assert first["result"] == "counted" and first["tx_id"]
        assert bad["result"] == "rejected"
        assert unknown["result"] == "rejected" and "CC-9" in unknown["detail"]
        await collector.wait_for(lambda c: c.on("/tx/count"))
        (tx,) = [m.json() for m in collector.on("/tx/count")]
        assert tx["count_id"] == "sweep:pda-2:1" and tx["reason"] == "sweep"
        assert tx["locations"] == [LOCATIONS[0]]
        truth = {k for k, v in area.recorded.items() if v == LOCATIONS[0]}
        seen = keys(tx["pallets"]["found"]) | keys(tx["pallets"]["missing"])
        assert seen == truth
        assert keys(tx["pallets"]["missing"]) == truth & area.missing


async def test_bad_count_commands_are_answered_and_a_deadline_closes_a_count(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    raw = config(tmp_path, mosquitto.port)
    async with Collector(mosquitto.port) as collector, running(build(raw, tmp_path)) as gateway:
        await subscribed(gateway)
        bad = await count_command(mosquitto.port, {"count_id": "CC-3", "action": "open"})
        assert bad["ok"] is False and bad["count_id"] == "CC-3"
        assert "locations" in bad["error"] or "valid" in bad["error"]
        nowhere = await count_command(
            mosquitto.port, {"count_id": "CC-3", "action": "open", "zone": "FREEZER"}
        )
        assert nowhere == {
            "ok": False,
            "count_id": "CC-3",
            "error": "no location of zone FREEZER is known",
        }
        unknown = await count_command(mosquitto.port, {"count_id": "CC-4", "action": "close"})
        assert unknown == {"ok": False, "count_id": "CC-4", "error": "no open count CC-4"}
        opened = await count_command(
            mosquitto.port,
            {"count_id": "CC-5", "action": "open", "locations": ["A-01-01"], "timeout_s": 0.5},
        )
        assert opened["ok"], opened
        repeat = await count_command(
            mosquitto.port, {"count_id": "CC-5", "action": "open", "locations": ["A-01-01"]}
        )
        assert repeat == opened  # a repeat is answered as the first time
        await collector.wait_for(lambda c: c.on("/tx/count"), timeout=10)
        (tx,) = [m.json() for m in collector.on("/tx/count")]
        assert tx["count_id"] == "CC-5" and tx["reason"] == "timeout"
        assert tx["status"] == "confirmed" and tx["adjustments"] == []
        rejected = [
            m.json() for m in collector.on("/event") if m.json()["code"] == "command_rejected"
        ]
        assert rejected  # the malformed one is counted as a rejection
        assert gateway.runner is not None
        assert not len(gateway.runner.engine.counts or ())  # none open any more
