"""Reference data limits: per kind, a payload size checked at the edge before parsing and a
count of records held checked by the rules, with one alarm when a kind is full.

The configuration and its validation, the wire (size per kind, the message named, a decoder
that still runs in a worker process), the rules (count, alarm once, re-armed below 90%,
updates and deletions pass, stored records kept beyond a lowered limit), the runner telling
the edge to forget a refused payload's digest, and the whole gateway against a private
Mosquitto.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pickle
import tomllib
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config import REFDATA_DEFAULTS, ConfigError, RefDataConfig, RefDataLimit, parse_config
from gateway.domain import (
    Asn,
    AsnLine,
    Decision,
    InputKind,
    Location,
    Notice,
    Product,
    RefDataChange,
    RefDataDeleted,
    RefDataKind,
    RefDataUpdate,
    Rejected,
    Severity,
)
from gateway.drivers.base import AlarmOutputs
from gateway.inbox import Inbox
from gateway.recorder import Recorder
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.refdata_limits import rearm_below
from gateway.runner import RulesRunner
from gateway.storage import RefDataRow, StateChanges, Store
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.refdata import MAX_PAYLOAD_BYTES, to_json
from gateway.wire.topics import Requester, Topics
from gateway.wiring import build_engine
from tests.gateway_helpers import build, running, site_config, wait_reference_data
from tests.mqtt_helpers import Collector, Mosquitto

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
GTIN = "09506000134352"
SSCC = "106141411234567897"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def asn(n: int, quantity: int = 1) -> Asn:
    return Asn(f"ASN-{n}", "D03", (AsnLine(1, quantity, gtin=GTIN),))


# --- configuration ----------------------------------------------------------------------------


def raw_config(tmp_path: Path, refdata: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = site_config(tmp_path, broker_port=1883, scanner=None)
    if refdata is not None:
        raw["refdata"] = refdata
    return raw


def test_defaults_per_kind() -> None:
    config = RefDataConfig()
    assert {k: (v.max_count, v.max_bytes) for k, v in config.by_kind().items()} == {
        "asn": (20_000, 1_048_576),
        "shipment": (5_000, 1_048_576),
        "product": (200_000, 65_536),
        "location": (100_000, 16_384),
    }
    assert set(REFDATA_DEFAULTS) == {kind.value for kind in RefDataKind}


def test_a_kind_may_give_one_key_and_keeps_its_own_default_for_the_other(tmp_path: Path) -> None:
    config = parse_config(
        raw_config(tmp_path, {"asn": {"max_count": 500}, "product": {"max_bytes": 4096}}),
        tmp_path / "site.toml",
    )
    assert config.refdata.asn == RefDataLimit(max_count=500, max_bytes=1_048_576)
    assert config.refdata.product == RefDataLimit(max_count=200_000, max_bytes=4096)
    assert config.refdata.location == RefDataConfig().location


def test_max_bytes_at_the_ceiling_is_accepted(tmp_path: Path) -> None:
    config = parse_config(
        raw_config(tmp_path, {"location": {"max_bytes": MAX_PAYLOAD_BYTES}}),
        tmp_path / "site.toml",
    )
    assert config.refdata.location.max_bytes == MAX_PAYLOAD_BYTES


@pytest.mark.parametrize(
    ("refdata", "key", "words"),
    [
        ({"asn": {"max_bytes": 2_000_000}}, "refdata.asn.max_bytes",
         "2,000,000 bytes is above the gateway's hard ceiling of 1,048,576 bytes"),
        ({"product": {"max_bytes": MAX_PAYLOAD_BYTES + 1}}, "refdata.product.max_bytes",
         "hard ceiling"),
        ({"asn": {"max_bytes": 100}}, "refdata.asn.max_bytes", "greater than or equal to 1024"),
        ({"shipment": {"max_count": 0}}, "refdata.shipment.max_count", "greater than or equal to 1"),
        ({"task": {"max_count": 5}}, "refdata.task", "unknown key"),
        ({"asn": {"max_size": 5}}, "refdata.asn.max_size", "unknown key"),
    ],
)  # fmt: skip
def test_bad_limits_are_refused_naming_the_key(
    tmp_path: Path, refdata: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw_config(tmp_path, refdata), tmp_path / "site.toml")
    (error,) = caught.value.errors
    assert f": {key}: " in error, error
    assert words in error, error


def test_the_example_site_config_documents_the_defaults() -> None:
    root = Path(__file__).resolve().parent.parent
    raw = tomllib.loads((root / "deploy" / "site.example.toml").read_text())
    assert RefDataConfig.model_validate(raw["refdata"]) == RefDataConfig()


# --- the wire: size per kind, checked before parsing --------------------------------------------

LIMITS = {"asn": 2048, "shipment": 3000, "product": 1024, "location": 1500}
DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "asn": ("ASN-1", to_json(asn(1))),
    "shipment": ("SO-1", {"order_id": "SO-1", "door": "D07", "pallets": [SSCC]}),
    "product": (GTIN, {"gtin": GTIN}),
    "location": ("A-01-02", {"location": "A-01-02"}),
}


def _no_answers(_requester: Requester, _topic: str, _data: bytes | None, _echo: str | None) -> str:
    return "no answers in these tests"


def padded(doc: dict[str, Any], size: int) -> bytes:
    """`doc` as JSON, padded with spaces (still valid) to `size` bytes."""
    body = json.dumps(doc).encode()
    return body + b" " * (size - len(body))


def limited_routes() -> InboundRoutes:
    return InboundRoutes(
        Topics("DC1", "gw1"), agv=False, vda5050_interface=None, refdata_max_bytes=LIMITS
    )


@pytest.mark.parametrize("kind", list(LIMITS))
def test_a_payload_over_its_kinds_limit_is_rejected_naming_topic_and_limit(kind: str) -> None:
    key, doc = DOCS[kind]
    topic = f"wms/DC1/{kind}/{key}"
    limit = LIMITS[kind]
    table = limited_routes()
    taken = table.decode(Received(topic, padded(doc, limit), True, T0), _no_answers)
    assert isinstance(taken, RefDataUpdate), taken  # exactly the limit: read
    over = table.decode(Received(topic, padded(doc, limit + 1), True, T0), _no_answers)
    assert isinstance(over, Rejected), over
    assert over.kind is InputKind.REFERENCE_DATA
    assert over.subject == topic
    assert over.reason == f"payload: {limit + 1:,} bytes, more than the {kind} limit of {limit:,}"
    # A deletion is never too large.
    deleted = table.decode(Received(topic, b"", True, T0), _no_answers)
    assert isinstance(deleted, RefDataDeleted)


def test_the_brief_example_message() -> None:
    table = InboundRoutes(Topics("DC1", "gw1"), agv=False, vda5050_interface=None)
    payload = b" " * 2_000_000
    event = table.decode(Received("wms/DC1/asn/ASN-1", payload, True, T0), _no_answers)
    assert isinstance(event, Rejected)
    assert event.reason == "payload: 2,000,000 bytes, more than the asn limit of 1,048,576"


def test_a_limit_above_the_ceiling_is_capped_by_it() -> None:
    table = InboundRoutes(
        Topics("DC1", "gw1"),
        agv=False,
        vda5050_interface=None,
        refdata_max_bytes={"product": 10 * MAX_PAYLOAD_BYTES},
    )
    payload = padded({"gtin": GTIN}, MAX_PAYLOAD_BYTES + 1)
    event = table.decode(Received(f"wms/DC1/product/{GTIN}", payload, True, T0), _no_answers)
    assert isinstance(event, Rejected)
    assert event.reason.endswith(f"the product limit of {MAX_PAYLOAD_BYTES:,}")


def test_the_limited_decoder_still_pickles_for_the_worker_process() -> None:
    table = limited_routes()
    (route,) = [r for r in table.routes if r.kind == "reference_data"]
    assert route.pure is not None
    decoder = pickle.loads(pickle.dumps(route.pure))
    message = Received("wms/DC1/product/" + GTIN, padded({"gtin": GTIN}, 1025), True, T0)
    event = decoder(message)
    assert isinstance(event, Rejected)
    assert event.reason.endswith("the product limit of 1,024")


def test_a_forgotten_payload_is_decoded_again() -> None:
    table = limited_routes()
    topic = f"wms/DC1/product/{GTIN}"
    payload = json.dumps({"gtin": GTIN}).encode()
    assert isinstance(table.decode(Received(topic, payload, True, T0), _no_answers), RefDataUpdate)
    assert table.decode(Received(topic, payload, True, T0), _no_answers) is None  # a repeat
    table.forget_reference("product", GTIN)
    assert isinstance(table.decode(Received(topic, payload, True, T0), _no_answers), RefDataUpdate)
    table.forget_reference("product", "09506000134369")  # never seen: nothing happens


# --- the rules: count per kind ------------------------------------------------------------------


def engine(limits: dict[RefDataKind, int]) -> RulesEngine:
    return RulesEngine(ForkliftMoves(MoveSettings()), portals={}, refdata_limits=limits)


def alarms(decisions: list[Decision]) -> list[Notice]:
    return [d for d in decisions if isinstance(d, Notice) and d.code == "reference_data_limit"]


def test_a_new_record_beyond_the_limit_is_not_taken_with_one_alarm() -> None:
    rules = engine({RefDataKind.ASN: 3})
    for n in range(1, 4):
        (change,) = rules.on_event(RefDataUpdate(asn(n), T0, digest=b"d"))
        assert isinstance(change, RefDataChange)
    decisions = rules.on_event(RefDataUpdate(asn(4), at(1), digest=b"d"))
    (alarm,) = decisions  # no RefDataChange: nothing stored
    assert isinstance(alarm, Notice)
    assert (alarm.code, alarm.severity) == ("reference_data_limit", Severity.ERROR)
    assert alarm.details == {"kind": "asn", "key": "ASN-4", "limit": 3, "held": 3}
    assert "asn limit reached: 3 held, the limit is 3; asn ASN-4" in alarm.message
    assert not rules.holds(RefDataKind.ASN, "ASN-4")
    assert set(rules.dock.asns) == {"ASN-1", "ASN-2", "ASN-3"}
    assert rules.held_count(RefDataKind.ASN) == 3
    # Refused again and again: no more alarms, nothing stored, counted by the rejections.
    later: list[Decision] = []
    for n in range(5, 25):
        later += rules.on_event(RefDataUpdate(asn(n), at(2), digest=b"d"))
    assert later == []
    assert rules.refdata_limits.refused == 21
    assert rules.rejections.rejected == 21
    # ... and summed up once the rejections' window ends: one warning for the twenty.
    (summary,) = [d for d in rules.on_tick(at(62)) if isinstance(d, Notice)]
    assert (summary.code, summary.severity) == ("reference_data_rejected", Severity.WARNING)
    assert summary.details["count"] == 20
    assert summary.details["reason"] == "not taken: the asn limit of 3 records is reached"
    assert summary.details["last"] == "asn/ASN-24"
    assert rules.held_count(RefDataKind.ASN) == 3


def test_updates_of_held_records_pass_at_the_limit() -> None:
    rules = engine({RefDataKind.ASN: 2})
    rules.on_event(RefDataUpdate(asn(1), T0))
    rules.on_event(RefDataUpdate(asn(2), T0))
    (change,) = rules.on_event(RefDataUpdate(asn(2, quantity=5), at(1), digest=b"e"))
    assert change == RefDataChange(RefDataKind.ASN, "ASN-2", asn(2, quantity=5), b"e")
    assert rules.dock.asns["ASN-2"] == asn(2, quantity=5)
    # The same record again (a redelivery) gives nothing, as without limits.
    assert rules.on_event(RefDataUpdate(asn(2, quantity=5), at(2))) == []


def test_deletions_pass_and_make_room() -> None:
    rules = engine({RefDataKind.ASN: 2})
    rules.on_event(RefDataUpdate(asn(1), T0))
    rules.on_event(RefDataUpdate(asn(2), T0))
    assert alarms(rules.on_event(RefDataUpdate(asn(3), at(1))))
    assert rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-1", at(2))) == [
        RefDataChange(RefDataKind.ASN, "ASN-1", None)
    ]
    (change,) = rules.on_event(RefDataUpdate(asn(3), at(3)))
    assert isinstance(change, RefDataChange)
    assert set(rules.dock.asns) == {"ASN-2", "ASN-3"}


def test_the_alarm_is_armed_again_below_ninety_percent() -> None:
    assert [rearm_below(n) for n in (1, 2, 3, 5, 10, 20_000)] == [1, 2, 3, 5, 9, 18_000]
    rules = engine({RefDataKind.ASN: 10})
    for n in range(10):
        rules.on_event(RefDataUpdate(asn(n), T0))
    assert len(alarms(rules.on_event(RefDataUpdate(asn(100), at(1))))) == 1
    # One deleted: 9 held, not below 9 (90%): room for one, still no new alarm once full.
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-0", at(2)))
    rules.on_event(RefDataUpdate(asn(101), at(3)))
    assert rules.holds(RefDataKind.ASN, "ASN-101")
    assert alarms(rules.on_event(RefDataUpdate(asn(102), at(4)))) == []
    # Two deleted: 8 held, below 9: armed again; full again, the next refusal raises it.
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-1", at(5)))
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-2", at(5)))
    rules.on_event(RefDataUpdate(asn(102), at(6)))
    rules.on_event(RefDataUpdate(asn(103), at(6)))
    (alarm,) = alarms(rules.on_event(RefDataUpdate(asn(104), at(7))))
    assert alarm.details == {"kind": "asn", "key": "ASN-104", "limit": 10, "held": 10}


def test_each_kind_has_its_own_limit_and_alarm() -> None:
    rules = engine({RefDataKind.PRODUCT: 1, RefDataKind.LOCATION: 1})
    rules.on_event(RefDataUpdate(Product(GTIN), T0))
    rules.on_event(RefDataUpdate(Location("A-01-01"), T0))
    (alarm,) = alarms(rules.on_event(RefDataUpdate(Product("09506000134369"), at(1))))
    assert alarm.details["kind"] == "product"
    (alarm,) = alarms(rules.on_event(RefDataUpdate(Location("A-01-02"), at(1))))
    assert alarm.details["kind"] == "location"
    assert set(rules.locations) == {"A-01-01"}
    assert set(rules.dock.products) == {GTIN}
    # No limit given for ASNs: as many as come.
    for n in range(50):
        rules.on_event(RefDataUpdate(asn(n), T0))
    assert rules.held_count(RefDataKind.ASN) == 50


def test_stored_records_are_kept_beyond_a_lowered_limit() -> None:
    rules = engine({RefDataKind.ASN: 2})
    for n in range(1, 5):
        rules.restore(asn(n), T0)
    assert rules.held_count(RefDataKind.ASN) == 4
    (alarm,) = alarms(rules.on_event(RefDataUpdate(asn(5), at(1))))
    assert alarm.details == {"kind": "asn", "key": "ASN-5", "limit": 2, "held": 4}
    (change,) = rules.on_event(RefDataUpdate(asn(1, quantity=9), at(2)))  # an update passes
    assert isinstance(change, RefDataChange)
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-1", at(3)))
    assert rules.on_event(RefDataUpdate(asn(5), at(4))) == []  # 3 held: still over 2
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-2", at(5)))
    rules.on_event(RefDataDeleted(RefDataKind.ASN, "ASN-3", at(5)))
    (change,) = rules.on_event(RefDataUpdate(asn(5), at(6)))  # 1 held: room
    assert isinstance(change, RefDataChange)


async def test_start_up_loads_every_stored_record_beyond_a_lowered_limit(tmp_path: Path) -> None:
    rows = [RefDataRow("asn", f"ASN-{n}", json.dumps(to_json(asn(n)))) for n in range(1, 6)]
    config = build(raw_config(tmp_path, {"asn": {"max_count": 3}}), tmp_path)
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([], StateChanges(refdata=rows))
        rules = await build_engine(config, store, lambda: T0)
    assert rules.held_count(RefDataKind.ASN) == 5
    assert rules.refdata_limits.max_count[RefDataKind.ASN] == 3
    assert rules.refdata_limits.max_count[RefDataKind.PRODUCT] == 200_000
    (alarm,) = alarms(rules.on_event(RefDataUpdate(asn(6), at(1))))
    assert alarm.details["held"] == 5


# --- the runner: a refused record's digest is forgotten at the edge ------------------------------


async def test_the_runner_tells_the_edge_which_records_the_rules_did_not_take(
    tmp_path: Path,
) -> None:
    events = [RefDataUpdate(asn(n), T0, digest=b"d") for n in range(1, 5)]
    events.append(RefDataUpdate(asn(1, quantity=3), T0, digest=b"e"))  # an update: taken
    inbox = Inbox(maxsize=len(events) + 1)
    for event in events:
        inbox.put_nowait(event)
    not_taken: list[tuple[str, str]] = []
    async with await Store.open(tmp_path / "gw.db") as store:
        recorder = Recorder(
            topics=Topics("DC1", "gw1"), store=store, clock=lambda: T0, alarms=AlarmOutputs()
        )
        runner = RulesRunner(
            engine({RefDataKind.ASN: 2}),
            inbox,
            recorder,
            clock=lambda: T0,
            batch_max=len(events),
            lookup=store.pallet_location,
            not_taken=lambda kind, key: not_taken.append((kind, key)),
        )
        task = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(inbox.join(), timeout=30)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        stored = {row.key for row in await store.reference_data()}
    assert not_taken == [("asn", "ASN-3"), ("asn", "ASN-4")]
    assert stored == {"ASN-1", "ASN-2"}


# --- end to end -------------------------------------------------------------------------------


@pytest.mark.broker
async def test_a_wms_publishing_more_asns_than_the_limit(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    raw["refdata"] = {"asn": {"max_count": 3}, "product": {"max_bytes": 1024}}
    config = build(raw, tmp_path)
    docs = {n: json.dumps(to_json(asn(n))).encode() for n in range(1, 7)}
    async with (
        Collector(mosquitto.port) as collector,
        aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as wms,
        running(config) as gateway,
    ):
        async with asyncio.timeout(10):
            while gateway.bridge is None or not gateway.bridge.subscribed:
                await asyncio.sleep(0.02)
        for n, doc in docs.items():  # in order, QoS 1: the first three are taken
            await wms.publish(f"wms/DC1/asn/ASN-{n}", doc, qos=1, retain=True)
        big = padded({"gtin": GTIN}, 2000)
        await wms.publish(f"wms/DC1/product/{GTIN}", big, qos=1, retain=True)
        await wait_reference_data(gateway, "asn/ASN-1", "asn/ASN-2", "asn/ASN-3")
        await collector.wait_for(
            lambda c: any(m.json()["code"] == "reference_data_limit" for m in c.on("/alarm"))
        )
        await collector.wait_for(
            lambda c: any("product limit" in m.json()["message"] for m in c.on("/event"))
        )
        assert gateway.runner is not None
        assert gateway.runner.engine.held_count(RefDataKind.ASN) == 3
        assert gateway.store is not None
        held = {r.key for r in await gateway.store.reference_data() if r.kind == "asn"}
        assert held == {"ASN-1", "ASN-2", "ASN-3"}
        # Room appears; the WMS publishes a refused ASN again, the same payload: it is taken
        # (the edge forgot its digest when the rules refused it).
        await wms.publish("wms/DC1/asn/ASN-1", b"", qos=1, retain=True)
        await wms.publish("wms/DC1/asn/ASN-5", docs[5], qos=1, retain=True)
        await wait_reference_data(gateway, "asn/ASN-5")
        held = {r.key for r in await gateway.store.reference_data() if r.kind == "asn"}
        assert held == {"ASN-2", "ASN-3", "ASN-5"}
        for n in range(1, 7):
            await wms.publish(f"wms/DC1/asn/ASN-{n}", b"", qos=1, retain=True)
        await wms.publish(f"wms/DC1/product/{GTIN}", b"", qos=1, retain=True)

    (alarm,) = [m for m in collector.on("/alarm") if m.json()["code"] == "reference_data_limit"]
    assert alarm.topic == "gw/DC1/dock-1/alarm"
    body = alarm.json()
    assert body["severity"] == "error"
    assert body["details"] == {"kind": "asn", "key": "ASN-4", "limit": 3, "held": 3}
    (rejected,) = [
        m.json() for m in collector.on("/event") if "product limit" in m.json()["message"]
    ]
    assert rejected["code"] == "reference_data_rejected"
    assert rejected["details"]["topic"] == f"wms/DC1/product/{GTIN}"
    assert rejected["details"]["reason"] == (
        "payload: 2,000 bytes, more than the product limit of 1,024"
    )
