"""Reference data from the WMS: schemas, parsing, rejections with reasons, round trips, fuzz.

Check digits in the generated identifiers are computed here with the GS1 mod-10 rule, written
independently of biip, which `gateway.wire.refdata` uses.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import Asn, AsnLine, Location, Product, ShipLine, ShipOrder, key_of
from gateway.schemas import NAMES, schema, validator
from gateway.wire.refdata import (
    KINDS,
    MAX_PAYLOAD_BYTES,
    Deleted,
    Rejected,
    parse_message,
    parse_topic,
    to_json,
)
from tests.json_strategies import damage, json_values

SITE = "s1"
GTIN = "09506000134352"
GTIN_BAD = "09506000134353"  # check digit should be 2
SSCC = "106141411234567897"
SSCC_2 = "106141411234567903"
SSCC_BAD = "106141411234567890"  # check digit should be 7
GLN = "5901234123457"
GLN_BAD = "5901234123458"
EPC = "3034257bf7194e4000001a85"
EPC_2 = "3034257BF7194E4000001A86"

EXAMPLES: dict[str, dict[str, Any]] = {
    "asn": {
        "asn_id": "ASN-1001",
        "door": "D03",
        "appointment": {"from": "2024-05-01T08:00:00+02:00", "to": "2024-05-01T10:30:00Z"},
        "supplier": {"name": "Acme Foods", "gln": GLN},
        "lines": [
            {"line": 1, "epcs": [EPC, EPC_2]},
            {"line": 2, "sscc": SSCC, "quantity": 40},
            {"line": 3, "gtin": GTIN, "quantity": 12, "lot": "L2405", "expiry": "2025-01-31"},
        ],
    },
    "shipment": {
        "order_id": "SO-77",
        "door": "D07",
        "pallets": [SSCC, SSCC_2],
        "lines": [{"line": 1, "gtin": GTIN, "quantity": 5, "lot": "L2405"}],
        "ship_by": "2024-05-02T16:00:00+02:00",
        "customer": {"name": "Corner Shop", "gln": GLN},
    },
    "product": {
        "gtin": GTIN,
        "description": "Tomato soup, 12 x 400 g",
        "unit_weight_kg": 4.8,
        "tare_weight_kg": 0.35,
        "min_remaining_shelf_life_days": 90,
    },
    "location": {
        "location": "A-01-02",
        "zone": "ambient",
        "kind": "rack",
        "capacity_pallets": 2,
        "gln": GLN,
    },
}
KEYS = {"asn": "ASN-1001", "shipment": "SO-77", "product": GTIN, "location": "A-01-02"}


def topic(kind: str, key: str | None = None) -> str:
    return f"wms/{SITE}/{kind}/{KEYS[kind] if key is None else key}"


def parse(kind: str, doc: Any, key: str | None = None) -> Any:
    return parse_message(topic(kind, key), json.dumps(doc).encode(), SITE)


def gs1(body: str) -> str:
    """`body` with its GS1 mod-10 check digit appended."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str(-total % 10)


def test_check_digit_helper_agrees_with_known_identifiers() -> None:
    assert gs1(GTIN[:-1]) == GTIN
    assert gs1(SSCC[:-1]) == SSCC
    assert gs1(SSCC_2[:-1]) == SSCC_2
    assert gs1(GLN[:-1]) == GLN


# --- valid examples ----------------------------------------------------------------------------


def test_asn_example_parses_to_the_expected_record() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert parse("asn", EXAMPLES["asn"]) == Asn(
        asn_id="ASN-1001",
        door="D03",
        lines=(
            AsnLine(line=1, quantity=2, epcs=(EPC.upper(), EPC_2)),
            AsnLine(line=2, quantity=40, sscc=SSCC),
            AsnLine(line=3, quantity=12, gtin=GTIN, lot="L2405", expiry=dt.date(2025, 1, 31)),
        ),
        supplier="Acme Foods",
        window_from=dt.datetime(2024, 5, 1, 8, tzinfo=plus_two),
        window_to=dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.UTC),
        supplier_gln=GLN,
    )


def test_other_examples_parse_to_the_expected_records() -> None:
    assert parse("shipment", EXAMPLES["shipment"]) == ShipOrder(
        order_id="SO-77",
        door="D07",
        pallets=(SSCC, SSCC_2),
        lines=(ShipLine(line=1, gtin=GTIN, quantity=5, lot="L2405"),),
        customer="Corner Shop",
        customer_gln=GLN,
    )
    assert parse("product", EXAMPLES["product"]) == Product(
        gtin=GTIN,
        min_remaining_shelf_life_days=90,
        unit_weight_kg=4.8,
        tare_weight_kg=0.35,
        description="Tomato soup, 12 x 400 g",
    )
    assert parse("location", EXAMPLES["location"]) == Location(
        location="A-01-02", zone="ambient", kind="rack", capacity_pallets=2, gln=GLN
    )


@pytest.mark.parametrize("kind", KINDS)
def test_examples_round_trip_through_canonical_json(kind: str) -> None:
    item = parse(kind, EXAMPLES[kind])
    assert not isinstance(item, Rejected | Deleted), item
    canonical = to_json(item)
    assert validator(kind).is_valid(canonical)
    assert key_of(item) == (kind, KEYS[kind])
    assert parse_message(topic(kind), json.dumps(canonical).encode(), SITE) == item


@pytest.mark.parametrize(
    ("kind", "doc", "expected"),
    [
        ("asn", {"asn_id": "A", "door": "D1", "lines": [{"line": 1, "gtin": GTIN, "quantity": 1}]},
         Asn("A", "D1", (AsnLine(1, 1, gtin=GTIN),))),
        ("asn", {"asn_id": "A", "door": "D1", "lines": [{"line": 1, "epcs": [EPC], "quantity": 1}]},
         Asn("A", "D1", (AsnLine(1, 1, epcs=(EPC.upper(),)),))),
        ("asn", {"asn_id": "A", "door": "D1", "appointment": {"to": "2024-05-01T10:00:00z"},
                 "lines": [{"line": 7, "sscc": SSCC, "quantity": 1}]},
         Asn("A", "D1", (AsnLine(7, 1, sscc=SSCC),),
             window_to=dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC))),
        ("shipment", {"order_id": "O", "door": "D2", "pallets": [SSCC]},
         ShipOrder("O", "D2", (SSCC,), ())),
        ("shipment", {"order_id": "O", "door": "D2", "pallets": [],
                      "lines": [{"line": 1, "gtin": GTIN, "quantity": 3.0}]},
         ShipOrder("O", "D2", (), (ShipLine(1, GTIN, 3),))),
        ("product", {"gtin": GTIN}, Product(GTIN)),
        ("product", {"gtin": GTIN, "unit_weight_kg": 2, "tare_weight_kg": 0},
         Product(GTIN, unit_weight_kg=2.0, tare_weight_kg=0.0)),
        ("location", {"location": "A-01-02"}, Location("A-01-02")),
        ("location", {"location": "A-01-02", "capacity_pallets": 0}, Location("A-01-02", capacity_pallets=0)),
    ],
)  # fmt: skip
def test_minimal_and_defaulted_messages(kind: str, doc: dict[str, Any], expected: Any) -> None:
    key = doc[{"asn": "asn_id", "shipment": "order_id", "product": "gtin"}.get(kind, kind)]
    item = parse(kind, doc, key)
    assert item == expected
    assert parse_message(topic(kind, key), json.dumps(to_json(item)).encode(), SITE) == item


def test_canonical_numbers_are_ints_and_floats() -> None:
    order = parse("shipment", {"order_id": "O", "door": "D", "lines": [{"line": 2.0, "gtin": GTIN, "quantity": 3.0}]}, "O")  # fmt: skip
    assert to_json(order)["lines"] == [{"line": 2, "gtin": GTIN, "quantity": 3}]
    line = to_json(order)["lines"][0]
    assert type(line["line"]) is int and type(line["quantity"]) is int
    product = to_json(parse("product", {"gtin": GTIN, "unit_weight_kg": 2}))
    assert type(product["unit_weight_kg"]) is float


# --- rejections --------------------------------------------------------------------------------

Path = tuple[str | int, ...]


def setting(path: Path, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(doc: dict[str, Any]) -> Any:
        *parents, last = path
        target: Any = doc
        for part in parents:
            target = target[part]
        target[last] = value
        return doc

    return edit


def removing(path: Path) -> Callable[[dict[str, Any]], Any]:
    def edit(doc: dict[str, Any]) -> Any:
        *parents, last = path
        target: Any = doc
        for part in parents:
            target = target[part]
        del target[last]
        return doc

    return edit


def replacing(value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda _doc: value


LINES = ("lines",)
RULES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    # ASN: the document and its header
    ("asn", replacing([]), "payload"),
    ("asn", replacing("ASN-1001"), "payload"),
    ("asn", removing(("asn_id",)), "asn_id"),
    ("asn", setting(("asn_id",), 1001), "asn_id"),
    ("asn", setting(("asn_id",), ""), "asn_id"),
    ("asn", removing(("door",)), "door"),
    ("asn", setting(("door",), ""), "door"),
    ("asn", setting(("door",), None), "door"),
    ("asn", setting(("colour",), "red"), "colour"),
    ("asn", setting(("colour of the truck",), "red"), '["colour of the truck"]'),
    ("asn", setting(("appointment",), {}), "appointment"),
    ("asn", setting(("appointment",), "08:00-10:00"), "appointment"),
    ("asn", setting(("appointment", "start"), "2024-05-01T08:00:00Z"), "appointment.start"),
    ("asn", setting(("appointment", "from"), "2024-05-01T08:00:00"), "appointment.from"),
    ("asn", setting(("appointment", "from"), "2024-05-01"), "appointment.from"),
    ("asn", setting(("appointment", "from"), "0000-01-01T00:00:00Z"), "appointment.from"),
    ("asn", setting(("appointment", "to"), "2024-05-01T05:59:59Z"), "appointment.to"),
    ("asn", setting(("supplier",), "Acme"), "supplier"),
    ("asn", removing(("supplier", "name")), "supplier.name"),
    ("asn", setting(("supplier", "gln"), GLN_BAD), "supplier.gln"),
    ("asn", setting(("supplier", "gln"), GLN[:-1]), "supplier.gln"),
    # ASN: lines
    ("asn", removing(LINES), "lines"),
    ("asn", setting(LINES, []), "lines"),
    ("asn", setting(LINES, {"1": {"gtin": GTIN}}), "lines"),
    ("asn", setting(("lines", 0), "line 1"), "lines[0]"),
    ("asn", removing(("lines", 0, "line")), "lines[0].line"),
    ("asn", setting(("lines", 0, "line"), 0), "lines[0].line"),
    ("asn", setting(("lines", 0, "line"), "1"), "lines[0].line"),
    ("asn", setting(("lines", 0, "line"), 1.5), "lines[0].line"),
    ("asn", setting(("lines", 0, "line"), 2**31), "lines[0].line"),
    ("asn", setting(("lines", 1, "line"), 1), "lines[1].line"),
    ("asn", setting(("lines", 2, "line"), 1.0), "lines[2].line"),
    ("asn", setting(("lines", 0), {"line": 1, "quantity": 1}), "lines[0]"),
    ("asn", setting(("lines", 1, "gtin"), GTIN), "lines[1]"),
    ("asn", setting(("lines", 0, "sscc"), SSCC_2), "lines[0]"),
    ("asn", setting(("lines", 0, "epcs"), []), "lines[0].epcs"),
    ("asn", setting(("lines", 0, "epcs"), EPC), "lines[0].epcs"),
    ("asn", setting(("lines", 0, "epcs"), [EPC[:-1]]), "lines[0].epcs[0]"),
    ("asn", setting(("lines", 0, "epcs"), [EPC, "G" + EPC[1:]]), "lines[0].epcs[1]"),
    ("asn", setting(("lines", 0, "epcs"), [EPC + "\n"]), "lines[0].epcs[0]"),
    ("asn", setting(("lines", 0, "epcs"), [EPC, EPC]), "lines[0].epcs"),
    ("asn", setting(("lines", 0, "epcs"), [EPC, EPC.upper()]), "lines[0].epcs[1]"),
    ("asn", setting(("lines", 0, "epcs"), ["F" * 126]), "lines[0].epcs[0]"),
    ("asn", setting(("lines", 0, "quantity"), 3), "lines[0].quantity"),
    ("asn", setting(("lines", 1, "sscc"), SSCC[:-1]), "lines[1].sscc"),
    ("asn", setting(("lines", 1, "sscc"), SSCC_BAD), "lines[1].sscc"),
    ("asn", setting(("lines", 1, "sscc"), 106141411234567897), "lines[1].sscc"),
    ("asn", removing(("lines", 1, "quantity")), "lines[1].quantity"),
    ("asn", setting(("lines", 2), {"line": 3, "sscc": SSCC, "quantity": 1}), "lines[2].sscc"),
    ("asn", setting(("lines", 2, "gtin"), GTIN_BAD), "lines[2].gtin"),
    ("asn", setting(("lines", 2, "gtin"), GTIN + "\n"), "lines[2].gtin"),
    ("asn", setting(("lines", 2, "gtin"), "9506000134352"), "lines[2].gtin"),
    ("asn", setting(("lines", 2, "gtin"), "".join(chr(0xFF10 + int(d)) for d in GTIN)), "lines[2].gtin"),
    ("asn", removing(("lines", 2, "quantity")), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "quantity"), 0), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "quantity"), -4), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "quantity"), 2.5), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "quantity"), True), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "quantity"), "12"), "lines[2].quantity"),
    ("asn", setting(("lines", 2, "lot"), ""), "lines[2].lot"),
    ("asn", setting(("lines", 2, "lot"), "L" * 21), "lines[2].lot"),
    ("asn", setting(("lines", 2, "expiry"), "2025-02-30"), "lines[2].expiry"),
    ("asn", setting(("lines", 2, "expiry"), "31.01.2025"), "lines[2].expiry"),
    ("asn", setting(("lines", 2, "expiry"), "2025-01-31T00:00:00Z"), "lines[2].expiry"),
    ("asn", setting(("lines", 2, "colour"), "red"), "lines[2].colour"),
    # ship orders
    ("shipment", removing(("order_id",)), "order_id"),
    ("shipment", removing(("door",)), "door"),
    ("shipment", lambda doc: removing(("lines",))(removing(("pallets",))(doc)), "payload"),
    ("shipment", lambda doc: {**doc, "pallets": [], "lines": []}, "payload"),
    ("shipment", setting(("pallets",), [SSCC, SSCC]), "pallets"),
    ("shipment", setting(("pallets",), [SSCC_BAD]), "pallets[0]"),
    ("shipment", setting(("pallets",), [SSCC, SSCC[:-1]]), "pallets[1]"),
    ("shipment", setting(("pallets",), SSCC), "pallets"),
    ("shipment", removing(("lines", 0, "gtin")), "lines[0].gtin"),
    ("shipment", setting(("lines", 0, "gtin"), GTIN_BAD), "lines[0].gtin"),
    ("shipment", removing(("lines", 0, "quantity")), "lines[0].quantity"),
    ("shipment", setting(("lines", 0, "quantity"), 0), "lines[0].quantity"),
    ("shipment", setting(("lines", 0, "epcs"), [EPC]), "lines[0].epcs"),
    ("shipment", lambda doc: {**doc, "lines": doc["lines"] * 2}, "lines[1].line"),
    ("shipment", setting(("ship_by",), "tomorrow"), "ship_by"),
    ("shipment", setting(("customer", "gln"), GLN_BAD), "customer.gln"),
    ("shipment", setting(("customer",), {}), "customer.name"),
    # products
    ("product", removing(("gtin",)), "gtin"),
    ("product", setting(("description",), 42), "description"),
    ("product", setting(("unit_weight_kg",), 0), "unit_weight_kg"),
    ("product", setting(("unit_weight_kg",), -1.5), "unit_weight_kg"),
    ("product", setting(("unit_weight_kg",), "4.8"), "unit_weight_kg"),
    ("product", setting(("unit_weight_kg",), 10**400), "unit_weight_kg"),
    ("product", setting(("tare_weight_kg",), -0.01), "tare_weight_kg"),
    ("product", setting(("min_remaining_shelf_life_days",), -1), "min_remaining_shelf_life_days"),
    ("product", setting(("min_remaining_shelf_life_days",), 1.5), "min_remaining_shelf_life_days"),
    ("product", setting(("min_remaining_shelf_life_days",), None), "min_remaining_shelf_life_days"),
    ("product", setting(("weight",), 4.8), "weight"),
    # locations
    ("location", removing(("location",)), "location"),
    ("location", setting(("kind",), "shelf"), "kind"),
    ("location", setting(("zone",), ""), "zone"),
    ("location", setting(("capacity_pallets",), -1), "capacity_pallets"),
    ("location", setting(("capacity_pallets",), "2"), "capacity_pallets"),
    ("location", setting(("gln",), GLN_BAD), "gln"),
    ("location", setting(("gln",), "590123412345A"), "gln"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "edit", "field"), RULES)
def test_each_rule_broken_is_rejected_naming_the_field(
    kind: str, edit: Callable[[dict[str, Any]], Any], field: str
) -> None:
    doc = edit(copy.deepcopy(EXAMPLES[kind]))
    result = parse(kind, doc)
    assert isinstance(result, Rejected), result
    assert result.topic == topic(kind)
    assert result.reason.startswith(f"{field}: "), result.reason
    assert "\n" not in result.reason
    assert len(result.reason) <= 300


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("asn", 'asn_id: "ASN-1001" is not the id in the topic, "ASN-1002"'),
        ("shipment", 'order_id: "SO-77" is not the id in the topic, "ASN-1002"'),
        ("product", 'gtin: "09506000134352" is not the id in the topic, "ASN-1002"'),
        ("location", 'location: "A-01-02" is not the id in the topic, "ASN-1002"'),
    ],
)
def test_key_in_topic_must_match_key_in_payload(kind: str, reason: str) -> None:
    assert parse(kind, EXAMPLES[kind], "ASN-1002") == Rejected(topic(kind, "ASN-1002"), reason)


def test_reasons_read_well() -> None:
    asn = EXAMPLES["asn"]

    def reason(doc: Any, kind: str = "asn") -> str:
        result = parse(kind, doc)
        assert isinstance(result, Rejected)
        return result.reason

    assert (
        reason({**asn, "lines": [{"line": 1}]}) == "lines[0]: needs exactly one of epcs, sscc, gtin"
    )
    assert reason({**asn, "lines": [{"line": 1, "gtin": GTIN, "sscc": SSCC, "quantity": 1}]}) == (
        "lines[0]: has sscc and gtin; give exactly one of epcs, sscc, gtin"
    )
    assert (
        reason({**asn, "lines": [{"line": 1, "gtin": GTIN}]})
        == "lines[0].quantity: required but missing"
    )
    assert reason({**asn, "lines": [{"line": 1, "gtin": GTIN_BAD, "quantity": 1}]}) == (
        "lines[0].gtin: Invalid GTIN check digit for '09506000134353': Expected 2, got 3."
    )
    assert reason({**asn, "door": 3}) == "door: must be a string, got a number"
    assert reason({**asn, "lines": [{"line": 1, "gtin": "123", "quantity": 1}]}) == (
        'lines[0].gtin: "123" is not a valid GTIN (14 digits)'
    )
    assert reason({"order_id": "SO-77", "door": "D07"}, "shipment") == (
        "payload: needs a non-empty pallets or lines"
    )
    assert reason({**EXAMPLES["location"], "kind": "shelf"}, "location") == (
        'kind: "shelf" is not one of dock_door, staging, rack, floor'
    )
    long_key = {**EXAMPLES["product"], "x\n" * 500: 1}
    assert reason(long_key, "product").startswith('["x\\nx\\nx')


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "payload: not UTF-8"),
        (b"\xef\xbb\xbf{}", "payload: not valid JSON"),  # a byte order mark
        (b"{", "payload: not valid JSON"),
        (b" ", "payload: not valid JSON"),
        (b"null", "payload: must be an object, got null"),
        (b'{"gtin": NaN}', "payload: not valid JSON"),
        (b'{"gtin": 1e999}', "payload: not valid JSON"),
        (b'{"gtin": "1", "gtin": "2"}', 'payload: not valid JSON (duplicate key "gtin")'),
        (b'{"gtin": "\\ud800"}', "payload: not valid JSON"),
        (b'{"gtin": ' + b"1" * 5000 + b"}", "payload: not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "payload: "),
        (b"[" * 500 + b"]" * 500, "payload: must be an object, got an array"),
        (
            b" " * (MAX_PAYLOAD_BYTES + 1),
            "payload: 1,048,577 bytes, more than the product limit of 1,048,576",
        ),
    ],
)
def test_undecodable_payloads_are_rejected(payload: bytes, reason: str) -> None:
    result = parse_message(topic("product"), payload, SITE)
    assert isinstance(result, Rejected), result
    assert result.reason.startswith(reason), result.reason


@pytest.mark.parametrize(
    ("kind", "doc", "reason"),
    [
        ("asn", {"asn_id": "ASN-1001", "door": "D", "lines": [{}] * 300_000}, "lines: "),
        ("shipment", {"order_id": "SO-77", "door": "D", "pallets": [{"n": i} for i in range(80_000)]},
         "pallets[0]: "),
        # all strings but the last: had uniqueItems been checked before the items, jsonschema
        # would compare them pairwise (it cannot sort a mixed list), for hours
        ("shipment", {"order_id": "SO-77", "door": "D", "pallets": [f"{i:018d}" for i in range(20_000)] + [{}]},
         "pallets[20000]: "),
    ],
)  # fmt: skip
def test_hostile_payloads_are_rejected_quickly(kind: str, doc: dict[str, Any], reason: str) -> None:
    payload = json.dumps(doc, separators=(",", ":")).encode()
    assert len(payload) <= MAX_PAYLOAD_BYTES
    started = time.perf_counter()
    result = parse_message(topic(kind), payload, SITE)
    assert time.perf_counter() - started < 2
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason), result.reason


def test_payload_of_exactly_the_limit_is_read() -> None:
    body = json.dumps(EXAMPLES["product"]).encode()
    payload = body + b" " * (MAX_PAYLOAD_BYTES - len(body))
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert isinstance(parse_message(topic("product"), payload, SITE), Product)


# --- topics and deletions ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_empty_payload_deletes(kind: str) -> None:
    assert parse_message(topic(kind), b"", SITE) == Deleted(kind, KEYS[kind])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("wms/s1/asn/ASN-1001", ("asn", "ASN-1001")),
        ("wms/s1/shipment/SO 77", ("shipment", "SO 77")),
        ("wms/s1/product/09506000134352", ("product", "09506000134352")),
        ("wms/s1/location/A-01-02", ("location", "A-01-02")),
        ("wms/s2/asn/ASN-1001", None),
        ("wms/s1x/asn/ASN-1001", None),
        ("wms/s/asn/ASN-1001", None),
        ("erp/s1/asn/ASN-1001", None),
        ("gw/s1/gw1/tx/receive", None),
        ("wms/s1/order/SO-77", None),
        ("wms/s1/asn/", None),
        ("wms/s1/asn", None),
        ("wms/s1/asn/A/B", None),
        ("wms/s1/asn/+", None),
        ("wms/s1/asn/#", None),
        ("wms/s1//A", None),
        ("", None),
    ],
)
def test_parse_topic(name: str, expected: tuple[str, str] | None) -> None:
    assert parse_topic(name, SITE) == expected


def test_foreign_topics_are_rejected_by_parse_message() -> None:
    for name in ("wms/s2/asn/ASN-1001", "wms/s1/order/SO-77"):
        result = parse_message(name, json.dumps(EXAMPLES["asn"]).encode(), SITE)
        assert isinstance(result, Rejected)
        assert result.reason.startswith("not a reference data topic")
        assert parse_message(name, b"", SITE) == Rejected(name, result.reason)


# --- the schemas themselves --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_are_shipped_and_document_every_field(kind: str) -> None:
    assert kind in NAMES
    doc = schema(kind)
    validator(kind).check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def described(node: dict[str, Any]) -> bool:
        if "description" in node:
            return True
        ref = node.get("$ref", "")
        return ref.startswith("#/$defs/") and "description" in doc["$defs"][ref[8:]]

    def walk(node: dict[str, Any], where: str) -> None:
        for name, sub in node.get("properties", {}).items():
            assert described(sub), f"{kind}: {where}{name} has no description"
            target = doc["$defs"][sub["$ref"][8:]] if "$ref" in sub else sub
            walk(target, f"{where}{name}.")
            if "items" in target:
                walk(target["items"], f"{where}{name}[].")

    walk(doc, "")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_keywords_are_in_reporting_order(kind: str) -> None:
    # gateway.wire.refdata reports the first error jsonschema yields, and jsonschema checks keywords
    # in the order they are written: the type and fields of a value first, then its contents;
    # uniqueItems after items, so it only compares strings (on a mixed list it goes quadratic).
    def walk(node: Any) -> None:
        if isinstance(node, list):
            for sub in node:
                walk(sub)
        elif isinstance(node, dict):
            keys = list(node)
            for first, then in [("type", "properties"), ("type", "items"), ("items", "uniqueItems"),
                                ("additionalProperties", "properties"), ("required", "properties"),
                                ("properties", "oneOf"), ("properties", "anyOf")]:  # fmt: skip
                if first in node and then in node:
                    assert keys.index(first) < keys.index(then), f"{kind}: {first} after {then}"
            for sub in node.values():
                walk(sub)

    walk(schema(kind))


# --- fuzz --------------------------------------------------------------------------------------

TOPICS = st.sampled_from([topic(kind) for kind in KINDS])


@settings(max_examples=300, deadline=None)
@given(name=TOPICS, payload=st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(name: str, payload: bytes) -> None:
    result = parse_message(name, payload, SITE)
    if payload:
        assert isinstance(result, Rejected), result
        assert result.reason and "\n" not in result.reason
    else:
        assert isinstance(result, Deleted)


FIELD_NAMES = sorted(
    {"asn_id", "order_id", "door", "lines", "line", "epcs", "sscc", "gtin", "quantity", "lot",
     "expiry", "pallets", "appointment", "from", "to", "supplier", "name", "location", "kind"}
)  # fmt: skip
JSON_VALUES = json_values(
    [GTIN, SSCC, EPC, "2024-05-01", "2024-05-01T08:00:00Z", "ASN-1001"],
    FIELD_NAMES,
    text_size=30,
    key_size=10,
    max_fields=5,
)


@settings(max_examples=200, deadline=None)
@given(name=TOPICS, value=JSON_VALUES)
def test_arbitrary_json_values_are_rejected(name: str, value: Any) -> None:
    result = parse_message(name, json.dumps(value).encode(), SITE)
    if not isinstance(result, Rejected):
        # Now and then the values make a valid document (a product needs nothing but its
        # GTIN, the topic's key: {"gtin": "09506000134352"}): its schema must say so too.
        kind = name.split("/")[2]
        assert validator(kind).is_valid(value), (value, result)
        return
    assert result.reason and "\n" not in result.reason


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid example with one value somewhere in it replaced by arbitrary JSON."""
    kind = draw(st.sampled_from(KINDS))
    doc = copy.deepcopy(EXAMPLES[kind])
    damage(draw, doc, JSON_VALUES)
    return kind, doc


@settings(max_examples=200, deadline=None)
@given(damaged())
def test_damaged_messages_never_raise(case: tuple[str, dict[str, Any]]) -> None:
    kind, doc = case
    result = parse(kind, doc)
    if isinstance(result, Rejected):
        assert result.reason and "\n" not in result.reason
    else:  # the damage happened to be harmless (a new lot, another door)
        assert parse_message(topic(kind), json.dumps(to_json(result)).encode(), SITE) == result


def gs1_numbers(digits: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=digits - 1, max_size=digits - 1).map(gs1)


ZONES = st.sampled_from(
    [dt.UTC, dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5, minutes=-30))]
)
INSTANTS = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1), timezones=ZONES)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


@st.composite
def asn_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ASN: unique line numbers, each EPC and SSCC on one line only."""
    kinds = draw(st.lists(st.sampled_from(["epcs", "sscc", "gtin"]), min_size=1, max_size=6))
    numbers = draw(
        st.lists(st.integers(1, 2**31 - 1), min_size=len(kinds), max_size=len(kinds), unique=True)
    )
    epcs = iter(
        draw(
            st.lists(
                st.text("0123456789ABCDEF", min_size=24, max_size=124),
                min_size=3 * len(kinds),
                max_size=3 * len(kinds),
                unique=True,
            )
        )
    )
    ssccs = iter(
        draw(st.lists(gs1_numbers(18), min_size=len(kinds), max_size=len(kinds), unique=True))
    )
    lines = []
    for kind, number in zip(kinds, numbers, strict=True):
        line: dict[str, Any] = {"line": number}
        if kind == "epcs":
            count = draw(st.integers(1, 3))
            line["epcs"] = [next(epcs) for _ in range(count)]
            if draw(st.booleans()):  # the WMS may send lower case
                line["epcs"] = [epc.lower() for epc in line["epcs"]]
            if draw(st.booleans()):
                line["quantity"] = count
        else:
            line[kind] = next(ssccs) if kind == "sscc" else draw(gs1_numbers(14))
            line["quantity"] = draw(st.integers(1, 2**31 - 1))
        if draw(st.booleans()):
            line["lot"] = draw(TEXT)
        if draw(st.booleans()):
            line["expiry"] = draw(st.dates(dt.date(2000, 1, 1), dt.date(2100, 1, 1))).isoformat()
        lines.append(line)
    doc: dict[str, Any] = {"asn_id": draw(st.text("ABCDEFGHIJ-0123456789", min_size=1, max_size=12)),
                           "door": draw(TEXT), "lines": lines}  # fmt: skip
    window = sorted(draw(st.lists(INSTANTS, max_size=2)), key=lambda at: at.astimezone(dt.UTC))
    if window:
        names = draw(st.sampled_from([["from"], ["to"], ["from", "to"]]))[: len(window)]
        doc["appointment"] = {name: at.isoformat() for name, at in zip(names, window, strict=False)}
    if draw(st.booleans()):
        doc["supplier"] = {"name": draw(TEXT)} | ({"gln": draw(gs1_numbers(13))} if draw(st.booleans()) else {})  # fmt: skip
    return doc


@settings(max_examples=100, deadline=None)
@given(asn_documents())
def test_generated_asns_parse_and_round_trip(doc: dict[str, Any]) -> None:
    name = f"wms/{SITE}/asn/{doc['asn_id']}"
    asn = parse_message(name, json.dumps(doc).encode(), SITE)
    assert isinstance(asn, Asn), asn
    assert [line.line for line in asn.lines] == [line["line"] for line in doc["lines"]]
    for line, given_line in zip(asn.lines, doc["lines"], strict=True):
        assert line.epcs == tuple(epc.upper() for epc in given_line.get("epcs", ()))
        assert line.quantity == given_line.get("quantity", len(line.epcs))
    canonical = to_json(asn)
    assert validator("asn").is_valid(canonical)
    assert parse_message(name, json.dumps(canonical).encode(), SITE) == asn
