"""EPCIS 2.0 events from gateway transactions, validated against the official GS1 schema.

Expected identifiers are worked out by hand from the EPC Tag Data Standard (TDS) rules, or
built independently with the EPC codec of `gateway/epc.py`, not with the code under test.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import string
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from gateway.epc import decode_epc, encode_sgtin96, encode_sscc96
from gateway.epcis import (
    EPCIS_CONTEXT,
    EpcisSettings,
    PayloadError,
    document,
    gtin_class_uri,
    object_event,
    sgtin_uri,
    sscc_uri,
    validator,
)

SITE = EpcisSettings(
    read_point_base="urn:epc:id:sgln:0614141.00001",
    biz_location_base="urn:epc:id:sgln:0614141.00001",
    timezone_offset="+01:00",
)
SITE_GLN = "0614141000012"  # 0614141 + 00001 + check digit 2, worked by hand
CREATED = "2024-05-01T10:00:05Z"

MOVE: dict[str, Any] = {
    "version": 1,
    "type": "move",
    "tx_id": "6f1c2b8e-3a4d-5e6f-8a7b-9c0d1e2f3a4b",
    "site": "dc1",
    "gateway": "gw1",
    "status": "confirmed",
    "sscc": "106141412345678908",
    "from_location": "DOCK-IN",
    "to_location": "A-01-02",
    "exceptions": [],
    "evidence": {
        "device": "scanner-1",
        "pallet_scanned_at": "2024-05-01T09:59:58Z",
        "location_scanned_at": "2024-05-01T09:59:59Z",
    },
    "occurred_at": "2024-05-01T10:00:00Z",
}


def _item(result: str, **fields: Any) -> dict[str, Any]:
    """An item of a receive or ship payload, shaped as the gateway publishes it."""
    item: dict[str, Any] = dict.fromkeys(
        ("epc", "uri", "gtin", "serial", "sscc", "lot", "expiry", "line")
    )
    item |= {"key": "", "result": result, "detail": ""}
    item.update(fields)
    return item


RECEIVE: dict[str, Any] = {
    "type": "receive",
    "tx_id": "0d2a4c6e-8f01-5234-9567-89abcdef0123",
    "door": "D03",
    "asn_id": "ASN-4711",
    "items": [
        _item("accepted", uri="urn:epc:id:sgtin:0614141.812345.6789", gtin="80614141123458"),
        _item("accepted", epc="3034257BF7194E4000001A85"),  # SGTIN-96 of ...812345.6789 too
        _item("accepted", sscc="106141412345678908"),
        _item("accepted", gtin="80614141123458", lot="L1", expiry="2025-12-31"),
        _item("accepted", gtin="80614141123458", lot="L1", quantity=4),
        _item("accepted", gtin="04006381333931"),
        _item("accepted", gtin="80614141123458", serial="A/1"),  # a (01)(21) barcode
        _item("unexpected", uri="urn:epc:id:sgtin:0614141.812345.1"),
        _item("over_receipt", uri="urn:epc:id:sgtin:0614141.812345.2"),
        _item("already_received", uri="urn:epc:id:sgtin:0614141.812345.3"),
        _item("expired", uri="urn:epc:id:sgtin:0614141.812345.4", expiry="2020-01-01"),
        _item("short_dated", uri="urn:epc:id:sgtin:0614141.812345.5"),
        _item("lot_mismatch", uri="urn:epc:id:sgtin:0614141.812345.6", lot="X"),
        _item("unexpected", epc="E2801160600002054C8D3A11"),  # not a GS1 scheme
    ],
    "occurred_at": "2024-05-01T10:00:00.250Z",
}

SHIP: dict[str, Any] = {
    "type": "ship",
    "tx_id": "1e3b5d7f-9012-5345-a678-9abcdef01234",
    "door": "D07",
    "order_id": "SO 2024/0042",
    "items": [
        _item("accepted", sscc="106141412345678908"),
        _item("accepted", uri="urn:epc:id:sgtin:0614141.812345.7"),
        _item("not_on_order", sscc="006141410000000012"),
        _item("already_shipped", uri="urn:epc:id:sgtin:0614141.812345.8"),
    ],
    "occurred_at": "2024-05-01T11:30:00Z",
}

SAMPLES = {"move": MOVE, "receive": RECEIVE, "ship": SHIP}


def assert_valid(instance: dict[str, Any]) -> None:
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator().iter_errors(instance)
    ]
    assert errors == []


# --- the official schema ---------------------------------------------------------------------


def test_vendored_schema_is_the_official_file_unchanged() -> None:
    folder = resources.files("gateway.schemas").joinpath("vendor", "epcis-2.0")
    schema = folder.joinpath("EPCIS-JSON-Schema.json").read_bytes()
    # SHA-256 of EPCIS-JSON-Schema.json at gs1/EPCIS commit 2b888be, as copied.
    assert hashlib.sha256(schema).hexdigest() == (
        "ed3228d7867198b4a5be9748fe77f473457c6ed98224fab28a950b4ce634a041"
    )
    assert "GS1" in folder.joinpath("LICENSE").read_text("utf-8")


def test_validator_is_draft7_checks_formats_and_is_cached() -> None:
    checker = validator()
    assert checker is validator()
    assert isinstance(checker, Draft7Validator)
    Draft7Validator.check_schema(checker.schema)
    assert checker.format_checker is not None
    assert {"uri", "date-time"} <= set(checker.format_checker.checkers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eventID", "not a uri"),  # caught by the format checker only
        ("eventTime", "2024-05-01 10:00"),  # likewise
        ("bizStep", "warehousing"),
        ("eventTimeZoneOffset", "+15:00"),
        ("action", "SEE"),
    ],
)
def test_validator_rejects_a_broken_event(field: str, value: str) -> None:
    event = object_event(RECEIVE, SITE)
    event[field] = value
    assert not validator().is_valid(event)


def test_validator_rejects_a_standalone_event_without_context() -> None:
    event = object_event(MOVE, SITE)
    del event["@context"]
    assert not validator().is_valid(event)


# --- the three transaction types -------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_sample_is_schema_valid_alone_and_in_a_document(kind: str) -> None:
    event = object_event(SAMPLES[kind], SITE)
    assert_valid(event)
    assert_valid(document([event], created=CREATED))


def test_a_document_of_all_samples_is_valid_and_carries_one_context() -> None:
    events = [object_event(tx, SITE) for tx in SAMPLES.values()]
    doc = document(events, created=CREATED)
    assert_valid(doc)
    assert doc["@context"] == EPCIS_CONTEXT
    assert doc["type"] == "EPCISDocument"
    assert doc["schemaVersion"] == "2.0"
    assert doc["creationDate"] == CREATED
    listed = doc["epcisBody"]["eventList"]
    assert [e["eventID"] for e in listed] == [e["eventID"] for e in events]
    assert all("@context" not in e for e in listed)
    assert all("@context" in e for e in events)  # the caller's events are left as they were


def test_document_keeps_an_event_context_that_differs() -> None:
    event = object_event(MOVE, SITE)
    event["@context"] = [EPCIS_CONTEXT, {"example": "https://ns.example.com/epcis/"}]
    doc = document([event], created=CREATED)
    assert doc["epcisBody"]["eventList"][0]["@context"] == event["@context"]
    assert_valid(doc)


def test_an_empty_document_is_valid() -> None:
    assert_valid(document([], created=CREATED))


def test_move_event() -> None:
    assert object_event(MOVE, SITE) == {
        "@context": EPCIS_CONTEXT,
        "type": "ObjectEvent",
        "eventID": "urn:uuid:6f1c2b8e-3a4d-5e6f-8a7b-9c0d1e2f3a4b",
        "eventTime": "2024-05-01T10:00:00Z",
        "eventTimeZoneOffset": "+01:00",
        "epcList": ["urn:epc:id:sscc:0614141.1234567890"],
        "action": "OBSERVE",
        "bizStep": "storing",
        "disposition": "in_progress",
        "readPoint": {"id": "urn:epc:id:sgln:0614141.00001.scanner-1"},
        "bizLocation": {"id": "urn:epc:id:sgln:0614141.00001.A-01-02"},
    }


def test_move_with_unknown_origin_is_the_same_event() -> None:
    tx = {**MOVE, "from_location": None, "exceptions": ["origin_unknown"]}
    assert object_event(tx, SITE) == object_event(MOVE, SITE)


def test_receive_event() -> None:
    event = object_event(RECEIVE, SITE)
    assert event["eventID"] == "urn:uuid:0d2a4c6e-8f01-5234-9567-89abcdef0123"
    assert event["eventTime"] == "2024-05-01T10:00:00.250Z"
    assert (event["action"], event["bizStep"], event["disposition"]) == (
        "OBSERVE",
        "receiving",
        "in_progress",
    )
    assert event["readPoint"] == {"id": "urn:epc:id:sgln:0614141.00001.D03"}
    assert event["bizLocation"] == {"id": "urn:epc:id:sgln:0614141.00001.D03"}
    # The URI and the hex EPC name the same tag: listed once.
    assert event["epcList"] == [
        "urn:epc:id:sgtin:0614141.812345.6789",
        "urn:epc:id:sscc:0614141.1234567890",
        "urn:epc:id:sgtin:0614141.812345.A%2F1",
    ]
    assert event["quantityList"] == [
        {"epcClass": "urn:epc:class:lgtin:0614141.812345.L1", "quantity": 5},
        {"epcClass": "urn:epc:idpat:sgtin:4006381.033393.*", "quantity": 1},
    ]
    assert event["bizTransactionList"] == [
        {"type": "desadv", "bizTransaction": f"urn:epcglobal:cbv:bt:{SITE_GLN}:ASN-4711"}
    ]


def test_ship_event() -> None:
    event = object_event(SHIP, SITE)
    assert (event["action"], event["bizStep"], event["disposition"]) == (
        "OBSERVE",
        "shipping",
        "in_transit",
    )
    assert event["readPoint"] == {"id": "urn:epc:id:sgln:0614141.00001.D07"}
    assert "bizLocation" not in event  # in transit: at no location of the site
    assert event["epcList"] == [
        "urn:epc:id:sscc:0614141.1234567890",
        "urn:epc:id:sgtin:0614141.812345.7",
    ]
    assert "quantityList" not in event
    assert event["bizTransactionList"] == [
        {"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:{SITE_GLN}:SO%202024%2F0042"}
    ]


@pytest.mark.parametrize(
    ("kind", "result"),
    [
        *(
            ("receive", r)
            for r in (
                "unexpected",
                "over_receipt",
                "already_received",
                "expired",
                "short_dated",
                "lot_mismatch",
            )
        ),
        ("ship", "not_on_order"),
        ("ship", "already_shipped"),
    ],
)
def test_rejected_items_are_not_in_the_event(kind: str, result: str) -> None:
    tx = copy.deepcopy(SAMPLES[kind])
    tx["items"] = [
        _item("accepted", uri="urn:epc:id:sgtin:0614141.812345.100"),
        _item(result, uri="urn:epc:id:sgtin:0614141.812345.101"),
        _item(result, sscc="006141410000000012"),
        _item(result, gtin="04006381333931"),
        _item(result),  # a rejected item need not be identified at all
    ]
    event = object_event(tx, SITE)
    assert event["epcList"] == ["urn:epc:id:sgtin:0614141.812345.100"]
    assert "quantityList" not in event
    assert_valid(event)


def test_nothing_accepted_gives_an_empty_epc_list() -> None:
    tx = {**RECEIVE, "items": [_item("unexpected", uri="urn:epc:id:sgtin:0614141.812345.1")]}
    event = object_event(tx, SITE)
    assert event["epcList"] == []
    assert_valid(event)


@pytest.mark.parametrize("without", ["null", "missing"])
def test_receive_without_asn_has_no_biz_transactions(without: str) -> None:
    tx = dict(RECEIVE)
    if without == "null":
        tx["asn_id"] = None
    else:
        del tx["asn_id"]
    event = object_event(tx, SITE)
    assert "bizTransactionList" not in event
    assert_valid(event)


def test_ship_without_order_has_no_biz_transactions() -> None:
    event = object_event({**SHIP, "order_id": None}, SITE)
    assert "bizTransactionList" not in event
    assert_valid(event)


def test_event_id_is_deterministic_and_derived_from_tx_id() -> None:
    for tx in SAMPLES.values():
        first = object_event(tx, SITE)
        again = object_event(copy.deepcopy(tx), SITE)
        assert first == again
        assert first["eventID"] == f"urn:uuid:{tx['tx_id']}"
    other = object_event({**MOVE, "tx_id": "7f1c2b8e-3a4d-5e6f-8a7b-9c0d1e2f3a4b"}, SITE)
    assert other["eventID"] != object_event(MOVE, SITE)["eventID"]
    upper = object_event({**MOVE, "tx_id": MOVE["tx_id"].upper()}, SITE)
    assert upper["eventID"] == object_event(MOVE, SITE)["eventID"]


# --- identifiers -----------------------------------------------------------------------------

# SSCC 1 | 0614141 23456789 | 0 8 split after 6 to 12 company prefix digits; the serial
# reference is the extension digit "1" followed by the rest, without the check digit "8".
SSCC = "106141412345678908"


@pytest.mark.parametrize(
    ("length", "uri"),
    [
        (6, "urn:epc:id:sscc:061414.11234567890"),
        (7, "urn:epc:id:sscc:0614141.1234567890"),  # the TDS worked example
        (8, "urn:epc:id:sscc:06141412.134567890"),
        (9, "urn:epc:id:sscc:061414123.14567890"),
        (10, "urn:epc:id:sscc:0614141234.1567890"),
        (11, "urn:epc:id:sscc:06141412345.167890"),
        (12, "urn:epc:id:sscc:061414123456.17890"),
    ],
)
def test_sscc_uri_for_every_prefix_length(length: int, uri: str) -> None:
    assert sscc_uri(SSCC, length) == uri


def test_sscc_uri_other_examples() -> None:
    assert sscc_uri("006141410000000012", 7) == "urn:epc:id:sscc:0614141.0000000001"
    assert sscc_uri("340123450000000000", 7) == "urn:epc:id:sscc:4012345.3000000000"


@pytest.mark.parametrize(
    ("sscc", "length"),
    [
        ("106141412345678909", 7),  # wrong check digit
        ("10614141234567890", 7),  # 17 digits
        ("10614141234567890X", 7),
        ("\uff1106141412345678908", 7),  # a full-width digit one
        (SSCC, 5),
        (SSCC, 13),
    ],
)
def test_sscc_uri_rejects(sscc: str, length: int) -> None:
    with pytest.raises(ValueError):
        sscc_uri(sscc, length)


@given(
    length=st.integers(6, 12),
    digits=st.text(string.digits, min_size=17, max_size=17),
)
def test_sscc_uri_agrees_with_the_epc_codec(length: int, digits: str) -> None:
    prefix, serial = digits[:length], digits[length:]  # serial: extension digit first
    decoded = decode_epc(encode_sscc96(prefix, serial))
    assert decoded.sscc is not None
    assert sscc_uri(decoded.sscc, length) == decoded.uri


@pytest.mark.parametrize(
    ("gtin", "length", "lot", "uri"),
    [
        ("80614141123458", 7, None, "urn:epc:idpat:sgtin:0614141.812345.*"),
        ("80614141123458", 6, None, "urn:epc:idpat:sgtin:061414.8112345.*"),
        ("80614141123458", 12, None, "urn:epc:idpat:sgtin:061414112345.8.*"),
        ("4006381333931", 7, None, "urn:epc:idpat:sgtin:4006381.033393.*"),  # GTIN-13
        ("061414112345", 7, None, "urn:epc:idpat:sgtin:0061414.011234.*"),  # GTIN-12
        ("80614141123458", 7, "ABC1", "urn:epc:class:lgtin:0614141.812345.ABC1"),
        ("80614141123458", 7, 'A/B%"C', "urn:epc:class:lgtin:0614141.812345.A%2FB%25%22C"),
    ],
)
def test_gtin_class_uri(gtin: str, length: int, lot: str | None, uri: str) -> None:
    assert gtin_class_uri(gtin, length, lot) == uri


@pytest.mark.parametrize(
    ("gtin", "lot"),
    [
        ("80614141123459", None),  # wrong check digit
        ("8061414112345", None),  # 13 digits, wrong check digit
        ("123456789", None),  # 9 digits
        ("80614141123458", "LOT 1"),  # a space is not in GS1 character set 82
        ("80614141123458", "L" * 21),  # lot longer than 20
        ("80614141123458", ""),
    ],
)
def test_gtin_class_uri_rejects(gtin: str, lot: str | None) -> None:
    with pytest.raises(ValueError):
        gtin_class_uri(gtin, 7, lot)


@pytest.mark.parametrize(
    ("gtin", "serial", "length", "uri"),
    [
        ("80614141123458", "6789", 7, "urn:epc:id:sgtin:0614141.812345.6789"),  # TDS example
        ("80614141123458", "6789", 9, "urn:epc:id:sgtin:061414112.8345.6789"),
        ("4006381333931", "0001", 7, "urn:epc:id:sgtin:4006381.033393.0001"),
        ("80614141123458", "AB/1?", 7, "urn:epc:id:sgtin:0614141.812345.AB%2F1%3F"),
    ],
)
def test_sgtin_uri(gtin: str, serial: str, length: int, uri: str) -> None:
    assert sgtin_uri(gtin, serial, length) == uri


def test_epc_hex_is_decoded_and_an_unknown_one_falls_back_to_the_sscc() -> None:
    hex_epc = encode_sgtin96("0614141", "812345", 42).hex()
    tx = {
        **RECEIVE,
        "items": [
            _item("accepted", epc=hex_epc),
            _item("accepted", epc="E2801160600002054C8D3A11", sscc="006141410000000012"),
        ],
    }
    assert object_event(tx, SITE)["epcList"] == [
        "urn:epc:id:sgtin:0614141.812345.42",
        "urn:epc:id:sscc:0614141.0000000001",
    ]


# --- read points and business locations ------------------------------------------------------


def test_locations_under_an_http_base() -> None:
    site = EpcisSettings(
        read_point_base="https://id.example.com/dc1/readpoint",
        biz_location_base="https://id.example.com/dc1/location/",
        gln="4012345000009",
    )
    event = object_event({**MOVE, "to_location": "A 01/02"}, site)
    assert event["readPoint"] == {"id": "https://id.example.com/dc1/readpoint/scanner-1"}
    assert event["bizLocation"] == {"id": "https://id.example.com/dc1/location/A%2001%2F02"}
    assert_valid(event)
    receive = object_event(RECEIVE, site)
    assert receive["bizTransactionList"][0]["bizTransaction"] == (
        "urn:epcglobal:cbv:bt:4012345000009:ASN-4711"
    )


def test_locations_under_a_urn_base_ending_in_a_colon() -> None:
    site = EpcisSettings("urn:example:dc1:rp:", "urn:example:dc1:loc", gln="4012345000009")
    event = object_event(MOVE, site)
    assert event["readPoint"] == {"id": "urn:example:dc1:rp:scanner-1"}
    assert event["bizLocation"] == {"id": "urn:example:dc1:loc/A-01-02"}
    assert_valid(event)


def test_sgln_extension_is_escaped_as_the_tds_says() -> None:
    event = object_event({**MOVE, "to_location": "R1/B2&C?"}, SITE)
    assert event["bizLocation"] == {"id": "urn:epc:id:sgln:0614141.00001.R1%2FB2%26C%3F"}
    assert_valid(event)


@pytest.mark.parametrize("location", ["A 01", "Lager-Ü", "L" * 21])
def test_a_location_that_cannot_be_an_sgln_extension_is_a_payload_error(location: str) -> None:
    with pytest.raises(PayloadError, match="SGLN extension"):
        object_event({**MOVE, "to_location": location}, SITE)


def test_the_gln_comes_from_either_sgln_base() -> None:
    site = EpcisSettings("https://id.example.com/rp", "urn:epc:id:sgln:061414112345.")
    event = object_event(SHIP, site)
    # 061414112345 and its check digit 2, worked by hand.
    assert event["bizTransactionList"][0]["bizTransaction"].startswith(
        "urn:epcglobal:cbv:bt:0614141123452:"
    )
    assert_valid(event)


# --- settings and bad payloads ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timezone_offset": "+1:00"},
        {"timezone_offset": "+14:30"},
        {"timezone_offset": "Z"},
        {"company_prefix_length": 5},
        {"company_prefix_length": 13},
        {"read_point_base": "urn:epc:id:sgln:0614141.00001.0"},  # a full SGLN, not a base
        {"read_point_base": "urn:epc:id:sgln:0614141.0001"},  # 11 digits
        {"biz_location_base": "dc1/locations"},  # not absolute
        {"gln": "0614141000013"},  # wrong check digit
        {"gln": "614141000012"},
        {
            "read_point_base": "https://id.example.com/rp",
            "biz_location_base": "https://id.example.com/loc",
        },  # no GLN for business transactions
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "read_point_base": SITE.read_point_base,
        "biz_location_base": SITE.biz_location_base,
    }
    fields.update(kwargs)
    with pytest.raises(ValueError):
        EpcisSettings(**fields)


@pytest.mark.parametrize(
    ("tx", "field"),
    [
        ({**MOVE, "type": "count"}, "transaction type"),
        ({k: v for k, v in MOVE.items() if k != "type"}, "transaction type"),
        ({**MOVE, "tx_id": "42"}, "tx_id"),
        ({**MOVE, "tx_id": None}, "tx_id"),
        ({**MOVE, "occurred_at": "2024-05-01"}, "occurred_at"),
        ({**MOVE, "occurred_at": "2024-13-01T10:00:00Z"}, "occurred_at"),
        ({**MOVE, "sscc": "106141412345678909"}, "check digit"),
        ({**MOVE, "to_location": ""}, "to_location"),
        ({**MOVE, "evidence": None}, "evidence"),
        ({**MOVE, "evidence": {}}, "device"),
        ({**RECEIVE, "door": None}, "door"),
        ({**RECEIVE, "items": None}, "items"),
        ({**RECEIVE, "items": ["x"]}, r"items\[0\]"),
        ({**RECEIVE, "items": [_item("accepted")]}, r"items\[0\] is accepted"),
        ({**RECEIVE, "items": [_item("accepted", gtin="80614141123458", quantity=0)]}, "quantity"),
        ({**RECEIVE, "asn_id": ""}, "asn_id"),
        ({**SHIP, "order_id": 42}, "order_id"),
    ],
)
def test_bad_payloads_raise_a_payload_error_naming_the_field(
    tx: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError, match=field):
        object_event(tx, SITE)


def test_document_refuses_a_bad_creation_date() -> None:
    with pytest.raises(ValueError, match="created"):
        document([], created="yesterday")


# --- property: any valid payload gives a schema-valid event ----------------------------------

CSET82 = string.ascii_letters + string.digits + "!\"%&'()*+,-./:;<=>?_"
RESULTS = {
    "receive": [
        "accepted",
        "unexpected",
        "over_receipt",
        "already_received",
        "expired",
        "short_dated",
        "lot_mismatch",
    ],
    "ship": ["accepted", "not_on_order", "already_shipped"],
}


@st.composite
def site_settings(draw: st.DrawFn) -> EpcisSettings:
    hours = draw(st.integers(0, 13))
    offset = f"{draw(st.sampled_from('+-'))}{hours:02d}:{draw(st.sampled_from([0, 30, 45])):02d}"
    length = draw(st.integers(6, 12))
    if draw(st.booleans()):
        prefix_length = draw(st.integers(6, 12))
        digits = draw(st.text(string.digits, min_size=12, max_size=12))
        base = f"urn:epc:id:sgln:{digits[:prefix_length]}.{digits[prefix_length:]}"
        return EpcisSettings(base, base, offset, company_prefix_length=length)
    return EpcisSettings(
        "https://id.example.com/dc1/rp",
        "https://id.example.com/dc1/loc",
        offset,
        company_prefix_length=length,
        gln="4012345000009",
    )


def location_names(site: EpcisSettings) -> st.SearchStrategy[str]:
    if site.biz_location_base.startswith("urn:epc:id:sgln:"):
        return st.text(CSET82, min_size=1, max_size=20)
    return st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)


def check_digit(digits: str) -> str:
    """GS1 mod-10 check digit, written here independently of biip."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str(-total % 10)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    moment = draw(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31)))
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


@st.composite
def accepted_item(draw: st.DrawFn, length: int) -> tuple[dict[str, Any], str | None, str | None]:
    """An accepted item, the instance URI expected for it, or its class URI (count 1)."""
    prefix = draw(st.text(string.digits, min_size=length, max_size=length))
    rest = draw(st.text(string.digits, min_size=13 - length, max_size=13 - length))
    way = draw(st.sampled_from(["uri", "epc", "sscc", "gtin+serial", "gtin", "gtin+lot"]))
    if way in ("uri", "epc"):
        tag = decode_epc(encode_sgtin96(prefix, rest, draw(st.integers(0, 2**38 - 1))))
        assert tag.uri is not None
        field = {"uri": tag.uri} if way == "uri" else {"epc": tag.hex}
        return _item("accepted", gtin=tag.gtin, **field), tag.uri, None
    if way == "sscc":
        serial = draw(st.text(string.digits, min_size=17 - length, max_size=17 - length))
        sscc17 = serial[0] + prefix + serial[1:]
        return (
            _item("accepted", sscc=sscc17 + check_digit(sscc17)),
            f"urn:epc:id:sscc:{prefix}.{serial}",
            None,
        )
    gtin13 = rest[0] + prefix + rest[1:]
    gtin = gtin13 + check_digit(gtin13)
    if way == "gtin+serial":
        serial = draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=20))
        return (
            _item("accepted", gtin=gtin, serial=serial),
            f"urn:epc:id:sgtin:{prefix}.{rest}.{serial}",
            None,
        )
    if way == "gtin":
        return _item("accepted", gtin=gtin), None, f"urn:epc:idpat:sgtin:{prefix}.{rest}.*"
    lot = draw(st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20))
    return (
        _item("accepted", gtin=gtin, lot=lot),
        None,
        f"urn:epc:class:lgtin:{prefix}.{rest}.{lot}",
    )


@st.composite
def transactions(draw: st.DrawFn) -> tuple[EpcisSettings, dict[str, Any], set[str], set[str]]:
    """Settings, a payload, and the epcList and quantityList classes expected from it."""
    site = draw(site_settings())
    kind = draw(st.sampled_from(["move", "receive", "ship"]))
    tx: dict[str, Any] = {
        "type": kind,
        "tx_id": str(draw(st.uuids())),
        "occurred_at": draw(timestamps()),
    }
    if kind == "move":
        length = site.company_prefix_length
        prefix = draw(st.text(string.digits, min_size=length, max_size=length))
        serial = draw(st.text(string.digits, min_size=17 - length, max_size=17 - length))
        sscc17 = serial[0] + prefix + serial[1:]  # extension digit, prefix, serial reference
        tx |= {
            "sscc": sscc17 + check_digit(sscc17),
            "from_location": draw(st.none() | location_names(site)),
            "to_location": draw(location_names(site)),
            "evidence": {"device": draw(location_names(site))},
        }
        return site, tx, {f"urn:epc:id:sscc:{prefix}.{serial}"}, set()
    items: list[dict[str, Any]] = []
    epcs: set[str] = set()
    classes: set[str] = set()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            item, uri, epc_class = draw(accepted_item(site.company_prefix_length))
            epcs |= {uri} if uri else set()
            classes |= {epc_class} if epc_class else set()
        else:
            rejected = draw(st.sampled_from(RESULTS[kind][1:]))
            item = _item(rejected, uri=draw(st.none() | st.just("urn:epc:id:sgtin:1.2.3")))
        items.append(item)
    reference = draw(st.none() | st.text(min_size=1, max_size=20).filter(str.isprintable))
    tx |= {
        "door": draw(location_names(site)),
        "asn_id" if kind == "receive" else "order_id": reference,
        "items": items,
    }
    return site, tx, epcs, classes


@settings(max_examples=300, deadline=None)
@given(case=transactions())
def test_any_valid_payload_gives_a_schema_valid_event(
    case: tuple[EpcisSettings, dict[str, Any], set[str], set[str]],
) -> None:
    site, tx, epcs, classes = case
    event = object_event(tx, site)
    assert_valid(event)
    assert_valid(document([event, event], created=CREATED))
    assert event["eventID"] == f"urn:uuid:{tx['tx_id']}"
    assert event["eventTime"] == tx["occurred_at"]
    assert set(event["epcList"]) == epcs
    assert len(event["epcList"]) == len(epcs)
    assert {q["epcClass"] for q in event.get("quantityList", [])} == classes
    reference = tx.get("asn_id") or tx.get("order_id")
    assert ("bizTransactionList" in event) == (reference is not None)
