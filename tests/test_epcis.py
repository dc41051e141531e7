"""EPCIS 2.0 events from gateway transactions, validated against the official GS1 schema.

The events are built from domain transactions (`gateway.domain`). Expected identifiers are
worked out by hand from the EPC Tag Data Standard (TDS) rules, or built independently with the
EPC codec of `gateway/domain/epc.py`, not with the code under test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import string
from collections import Counter
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from gateway.domain import (
    DockKind,
    DockResult,
    DockTransaction,
    EvidenceSource,
    Item,
    ItemResult,
    MoveTransaction,
)
from gateway.domain.epc import decode_epc, encode_sgtin96, encode_sscc96
from gateway.wire import epcis as epcis_module
from gateway.wire.epcis import (
    EPCIS_CONTEXT,
    EpcisSettings,
    PayloadError,
    document,
    gtin_class_uri,
    object_event,
    object_events,
    sgtin_uri,
    sscc_uri,
    timezone_offset,
    validator,
)

SITE = EpcisSettings(
    read_point_base="urn:epc:id:sgln:0614141.00001",
    biz_location_base="urn:epc:id:sgln:0614141.00001",
    time_zone="Europe/Berlin",
)
SITE_GLN = "0614141000012"  # 0614141 + 00001 + check digit 2, worked by hand
CREATED = "2024-05-01T10:00:05Z"

ACCEPTED = DockResult.ACCEPTED


def at(hour: int, minute: int, second: int, millisecond: int = 0) -> dt.datetime:
    """A moment of 2024-05-01, in UTC."""
    return dt.datetime(2024, 5, 1, hour, minute, second, millisecond * 1000, tzinfo=dt.UTC)


MOVE = MoveTransaction(
    sscc="106141412345678908",
    from_location="DOCK-IN",
    to_location="A-01-02",
    device_id="scanner-1",
    pallet_scanned_at=at(9, 59, 58),
    confirmed_at=at(10, 0, 0),
)


def _item(result: DockResult, **fields: Any) -> ItemResult:
    """An item of a receive or ship transaction, keyed as the receiving rules key it."""
    sscc, gtin, serial, epc = (fields.get(name) for name in ("sscc", "gtin", "serial", "epc"))
    if sscc:
        key = f"sscc:{sscc}"
    elif gtin and serial:
        key = f"sgtin:{gtin}.{serial}"
    elif epc:
        key = f"epc:{epc}"
    else:
        key = ""
    return ItemResult(Item(key=key, **fields), result)


RECEIVE = DockTransaction(
    kind=DockKind.RECEIVE,
    door="D03",
    reference="ASN-4711",
    items=(
        _item(ACCEPTED, uri="urn:epc:id:sgtin:0614141.812345.6789", gtin="80614141123458"),
        _item(ACCEPTED, epc="3034257BF7194E4000001A85"),  # SGTIN-96 of ...812345.6789 too
        _item(ACCEPTED, sscc="106141412345678908"),
        _item(ACCEPTED, gtin="80614141123458", lot="L1", expiry=dt.date(2025, 12, 31)),
        # Four more units of the same lot: an item counts one unit.
        *(_item(ACCEPTED, gtin="80614141123458", lot="L1") for _ in range(4)),
        _item(ACCEPTED, gtin="04006381333931"),
        _item(ACCEPTED, gtin="80614141123458", serial="A/1"),  # a (01)(21) barcode
        _item(DockResult.UNEXPECTED, uri="urn:epc:id:sgtin:0614141.812345.1"),
        _item(DockResult.OVER_RECEIPT, uri="urn:epc:id:sgtin:0614141.812345.2"),
        _item(DockResult.ALREADY_RECEIVED, uri="urn:epc:id:sgtin:0614141.812345.3"),
        _item(
            DockResult.EXPIRED,
            uri="urn:epc:id:sgtin:0614141.812345.4",
            expiry=dt.date(2020, 1, 1),
        ),
        _item(DockResult.SHORT_DATED, uri="urn:epc:id:sgtin:0614141.812345.5"),
        _item(DockResult.LOT_MISMATCH, uri="urn:epc:id:sgtin:0614141.812345.6", lot="X"),
        _item(DockResult.UNEXPECTED, epc="E2801160600002054C8D3A11"),  # not a GS1 scheme
    ),
    source=EvidenceSource.SCANNER,
    device="scanner-3",
    evidence_id="scan-0042",
    started_at=at(9, 58, 0),
    occurred_at=at(10, 0, 0, 250),
)

SHIP = DockTransaction(
    kind=DockKind.SHIP,
    door="D07",
    reference="SO 2024/0042",
    items=(
        _item(ACCEPTED, sscc="106141412345678908"),
        _item(ACCEPTED, uri="urn:epc:id:sgtin:0614141.812345.7"),
        _item(DockResult.NOT_ON_ORDER, sscc="006141410000000012"),
        _item(DockResult.ALREADY_SHIPPED, uri="urn:epc:id:sgtin:0614141.812345.8"),
    ),
    source=EvidenceSource.SCANNER,
    device="scanner-7",
    evidence_id="scan-0043",
    started_at=at(11, 29, 0),
    occurred_at=at(11, 30, 0),
)

SAMPLES: dict[str, MoveTransaction | DockTransaction] = {
    "move": MOVE,
    "receive": RECEIVE,
    "ship": SHIP,
}


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
        "eventID": f"urn:uuid:{MOVE.tx_id}",
        "eventTime": "2024-05-01T10:00:00.000Z",  # when the location scan confirmed the move
        "eventTimeZoneOffset": "+02:00",  # Europe/Berlin in May: summer time
        "epcList": ["urn:epc:id:sscc:0614141.1234567890"],
        "action": "OBSERVE",
        "bizStep": "storing",
        "disposition": "in_progress",
        "readPoint": {"id": "urn:epc:id:sgln:0614141.00001.A-01-02"},  # a place, not the device
        "bizLocation": {"id": "urn:epc:id:sgln:0614141.00001.A-01-02"},
    }


def test_move_with_unknown_origin_is_the_same_event_but_for_its_id() -> None:
    tx = dataclasses.replace(MOVE, from_location=None, exceptions=("origin_unknown",))
    event, sample = object_event(tx, SITE), object_event(MOVE, SITE)
    assert event.pop("eventID") == f"urn:uuid:{tx.tx_id}"  # another transaction: another id
    assert sample.pop("eventID") == f"urn:uuid:{MOVE.tx_id}"
    assert event == sample


def test_receive_event() -> None:
    event = object_event(RECEIVE, SITE)
    assert event["eventID"] == f"urn:uuid:{RECEIVE.tx_id}"
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
    assert event["eventID"] == f"urn:uuid:{SHIP.tx_id}"
    assert event["eventTime"] == "2024-05-01T11:30:00.000Z"
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
        {"bizTransaction": f"urn:epcglobal:cbv:bt:{SITE_GLN}:SO%202024%2F0042"}
    ]


def test_event_time_is_the_transaction_time_in_utc_with_milliseconds() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    # Any offset, and digits below the millisecond: the time in UTC, to the millisecond.
    move = dataclasses.replace(
        MOVE, confirmed_at=dt.datetime(2024, 5, 1, 12, 0, 0, 999, tzinfo=plus_two)
    )
    assert object_event(move, SITE)["eventTime"] == "2024-05-01T10:00:00.000Z"
    receive = dataclasses.replace(
        RECEIVE, occurred_at=dt.datetime(2024, 5, 1, 0, 30, 1, 250999, tzinfo=plus_two)
    )
    assert object_event(receive, SITE)["eventTime"] == "2024-04-30T22:30:01.250Z"
    # A move happens when its location scan confirms it, not when the pallet was scanned.
    later_scan = dataclasses.replace(MOVE, pallet_scanned_at=at(9, 0, 0))
    assert object_event(later_scan, SITE)["eventTime"] == "2024-05-01T10:00:00.000Z"


@pytest.mark.parametrize(
    ("kind", "result"),
    [
        *(
            ("receive", r)
            for r in (
                DockResult.UNEXPECTED,
                DockResult.OVER_RECEIPT,
                DockResult.ALREADY_RECEIVED,
                DockResult.EXPIRED,
                DockResult.SHORT_DATED,
                DockResult.LOT_MISMATCH,
            )
        ),
        ("ship", DockResult.NOT_ON_ORDER),
        ("ship", DockResult.ALREADY_SHIPPED),
    ],
)
def test_rejected_items_are_not_in_the_event(kind: str, result: DockResult) -> None:
    sample = SAMPLES[kind]
    assert isinstance(sample, DockTransaction)
    tx = dataclasses.replace(
        sample,
        items=(
            _item(ACCEPTED, uri="urn:epc:id:sgtin:0614141.812345.100"),
            _item(result, uri="urn:epc:id:sgtin:0614141.812345.101"),
            _item(result, sscc="006141410000000012"),
            _item(result, gtin="04006381333931"),
            _item(result),  # a rejected item need not be identified at all
        ),
    )
    event = object_event(tx, SITE)
    assert event["epcList"] == ["urn:epc:id:sgtin:0614141.812345.100"]
    assert "quantityList" not in event
    assert_valid(event)


def test_nothing_accepted_gives_an_empty_epc_list() -> None:
    tx = dataclasses.replace(
        RECEIVE, items=(_item(DockResult.UNEXPECTED, uri="urn:epc:id:sgtin:0614141.812345.1"),)
    )
    event = object_event(tx, SITE)
    assert event["epcList"] == []
    assert_valid(event)


def test_receive_without_asn_has_no_biz_transactions() -> None:
    event = object_event(dataclasses.replace(RECEIVE, reference=None), SITE)
    assert "bizTransactionList" not in event
    assert_valid(event)


def test_ship_without_order_has_no_biz_transactions() -> None:
    event = object_event(dataclasses.replace(SHIP, reference=None), SITE)
    assert "bizTransactionList" not in event
    assert_valid(event)


def test_event_id_is_deterministic_and_derived_from_tx_id() -> None:
    for tx in SAMPLES.values():
        first = object_event(tx, SITE)
        again = object_event(dataclasses.replace(tx), SITE)  # the same transaction, made again
        assert first == again
        assert first["eventID"] == f"urn:uuid:{tx.tx_id}"
    other_move = dataclasses.replace(MOVE, to_location="A-01-03")
    assert object_event(other_move, SITE)["eventID"] != object_event(MOVE, SITE)["eventID"]
    other_pass = dataclasses.replace(RECEIVE, evidence_id="scan-0044")
    assert object_event(other_pass, SITE)["eventID"] != object_event(RECEIVE, SITE)["eventID"]


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
    tx = dataclasses.replace(
        RECEIVE,
        items=(
            _item(ACCEPTED, epc=hex_epc),
            _item(ACCEPTED, epc="E2801160600002054C8D3A11", sscc="006141410000000012"),
        ),
    )
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
    event = object_event(dataclasses.replace(MOVE, to_location="A 01/02"), site)
    assert event["readPoint"] == {"id": "https://id.example.com/dc1/readpoint/A%2001%2F02"}
    assert event["bizLocation"] == {"id": "https://id.example.com/dc1/location/A%2001%2F02"}
    assert_valid(event)
    receive = object_event(RECEIVE, site)
    assert receive["bizTransactionList"][0]["bizTransaction"] == (
        "urn:epcglobal:cbv:bt:4012345000009:ASN-4711"
    )


def test_locations_under_a_urn_base_ending_in_a_colon() -> None:
    site = EpcisSettings("urn:example:dc1:rp:", "urn:example:dc1:loc", gln="4012345000009")
    event = object_event(MOVE, site)
    assert event["readPoint"] == {"id": "urn:example:dc1:rp:A-01-02"}
    assert event["bizLocation"] == {"id": "urn:example:dc1:loc/A-01-02"}
    assert_valid(event)


def test_sgln_extension_is_escaped_as_the_tds_says() -> None:
    event = object_event(dataclasses.replace(MOVE, to_location="R1/B2&C?"), SITE)
    assert event["bizLocation"] == {"id": "urn:epc:id:sgln:0614141.00001.R1%2FB2%26C%3F"}
    assert_valid(event)


@pytest.mark.parametrize("location", ["A 01", "Lager-Ü", "L" * 21])
def test_a_location_that_cannot_be_an_sgln_extension_is_never_dropped(location: str) -> None:
    # Its own GLN from the location master, when it has one: an SGLN with extension 0.
    def master(name: str) -> str | None:
        return "5901234123457" if name == location else None

    moved = dataclasses.replace(MOVE, to_location=location)
    event = object_event(moved, SITE, place_gln=master)
    assert_valid(event)
    # 590: GS1's table gives no length there, so the site's 7 digits.
    assert event["bizLocation"] == {"id": "urn:epc:id:sgln:5901234.12345.0"}
    assert event["readPoint"] == event["bizLocation"]
    # Else a readable extension with a digest of the name: valid, the same every time, and
    # different for another name.
    plain = object_event(moved, SITE)
    assert_valid(plain)
    extension = plain["bizLocation"]["id"].removeprefix("urn:epc:id:sgln:0614141.00001.")
    assert len(extension) <= 20
    assert plain == object_event(moved, SITE)
    other = object_event(dataclasses.replace(MOVE, to_location=location + "x"), SITE)
    assert other["bizLocation"] != plain["bizLocation"]
    receipt = object_event(dataclasses.replace(RECEIVE, door=location), SITE)
    assert_valid(receipt)


def test_the_gln_comes_from_either_sgln_base() -> None:
    site = EpcisSettings("https://id.example.com/rp", "urn:epc:id:sgln:061414112345.")
    event = object_event(SHIP, site)
    # 061414112345 and its check digit 2, worked by hand.
    assert event["bizTransactionList"][0]["bizTransaction"].startswith(
        "urn:epcglobal:cbv:bt:0614141123452:"
    )
    assert_valid(event)


# --- settings and bad values -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_zone": "+01:00"},
        {"time_zone": "Europe/Nowhere"},
        {"time_zone": "../etc/passwd"},
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


NAIVE = dt.datetime(2024, 5, 1, 10, 0, 0)  # no UTC offset: a local time of no known place


@pytest.mark.parametrize(
    ("tx", "field"),
    [
        (dataclasses.replace(MOVE, sscc="106141412345678909"), "check digit"),
        (dataclasses.replace(MOVE, sscc="10614141234567890"), "sscc must be 18 digits"),
        (dataclasses.replace(MOVE, to_location=""), "to_location"),
        (dataclasses.replace(MOVE, confirmed_at=NAIVE), "confirmed_at"),
        (dataclasses.replace(RECEIVE, occurred_at=NAIVE), "occurred_at"),
        (dataclasses.replace(RECEIVE, door=""), "door"),
        (dataclasses.replace(RECEIVE, items=(_item(ACCEPTED),)), r"items\[0\] is accepted"),
        (
            dataclasses.replace(RECEIVE, items=(_item(ACCEPTED, gtin="80614141123459"),)),
            "gtin '80614141123459' has a wrong check digit",
        ),
        (
            dataclasses.replace(RECEIVE, items=(_item(ACCEPTED, gtin="123456789"),)),
            "gtin must have 8, 12, 13 or 14 digits",
        ),
        (
            dataclasses.replace(
                RECEIVE, items=(_item(ACCEPTED, gtin="80614141123458", lot="LOT 1"),)
            ),
            "lot must be",
        ),
        (
            dataclasses.replace(SHIP, items=(_item(ACCEPTED, sscc="106141412345678909"),)),
            "check digit",
        ),
        (dataclasses.replace(RECEIVE, reference=""), "ASN id"),
        (dataclasses.replace(SHIP, reference=""), "order id"),
    ],
)
def test_bad_values_raise_a_payload_error_naming_the_field(
    tx: MoveTransaction | DockTransaction, field: str
) -> None:
    with pytest.raises(PayloadError, match=field):
        object_event(tx, SITE)


def test_a_payload_error_names_the_transaction() -> None:
    bad = dataclasses.replace(MOVE, to_location="")
    with pytest.raises(PayloadError, match=f"^move transaction '{bad.tx_id}': to_location"):
        object_event(bad, SITE)
    ship = dataclasses.replace(SHIP, door="")
    with pytest.raises(PayloadError, match=f"^ship transaction '{ship.tx_id}': door"):
        object_event(ship, SITE)


def test_a_tx_id_that_is_not_a_uuid_is_a_payload_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Domain ids are UUIDs; should that ever change, the event must not get a broken eventID.
    monkeypatch.setattr(MoveTransaction, "tx_id", property(lambda _: "42"))
    with pytest.raises(PayloadError, match="tx_id must be a UUID"):
        object_event(MOVE, SITE)


def test_something_other_than_a_transaction_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no EPCIS event for a dict"):
        object_event({"type": "move"}, SITE)  # type: ignore[arg-type]


def test_document_refuses_a_bad_creation_date() -> None:
    with pytest.raises(ValueError, match="created"):
        document([], created="yesterday")


# --- property: any valid transaction gives a schema-valid event ------------------------------

CSET82 = string.ascii_letters + string.digits + "!\"%&'()*+,-./:;<=>?_"
REJECTED = {
    DockKind.RECEIVE: [
        DockResult.UNEXPECTED,
        DockResult.OVER_RECEIPT,
        DockResult.ALREADY_RECEIVED,
        DockResult.EXPIRED,
        DockResult.SHORT_DATED,
        DockResult.LOT_MISMATCH,
    ],
    DockKind.SHIP: [DockResult.NOT_ON_ORDER, DockResult.ALREADY_SHIPPED],
}


@st.composite
def site_settings(draw: st.DrawFn) -> EpcisSettings:
    # Zones with half and three-quarter hours, both signs, summer time and none.
    offset = draw(
        st.sampled_from(
            [
                "UTC",
                "Europe/Berlin",
                "America/St_Johns",
                "Asia/Kathmandu",
                "Australia/Lord_Howe",
                "Pacific/Kiritimati",
                "Pacific/Pago_Pago",
            ]
        )
    )
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
def moments(draw: st.DrawFn) -> tuple[dt.datetime, str]:
    """An aware moment at some UTC offset, and its RFC 3339 form in UTC with milliseconds."""
    utc = draw(st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2099, 12, 31)))
    minutes = draw(st.sampled_from([0, 60, -300, 330, 345, -570, 840, -720]))
    moment = utc.replace(tzinfo=dt.UTC).astimezone(dt.timezone(dt.timedelta(minutes=minutes)))
    return moment, utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond // 1000:03d}Z"


def table_split(key: str, length: int) -> tuple[str, str]:
    """An SSCC-18 or GTIN-14 as an EPC URI's company prefix and the rest: with the length GS1's
    table gives it where the table has one (tested on its own below), else `length`."""
    size = epcis_module._table_prefix_length(key) or length
    end = 17 if len(key) == 18 else 13
    return key[1 : 1 + size], key[0] + key[1 + size : end]


@st.composite
def accepted_item(draw: st.DrawFn, length: int) -> tuple[ItemResult, str | None, str | None]:
    """An accepted item, the instance URI expected for it, or its class URI (count 1)."""
    prefix = draw(st.text(string.digits, min_size=length, max_size=length))
    rest = draw(st.text(string.digits, min_size=13 - length, max_size=13 - length))
    way = draw(st.sampled_from(["uri", "epc", "sscc", "gtin+serial", "gtin", "gtin+lot"]))
    if way in ("uri", "epc"):
        tag = decode_epc(encode_sgtin96(prefix, rest, draw(st.integers(0, 2**38 - 1))))
        assert tag.uri is not None
        if way == "uri":
            return _item(ACCEPTED, uri=tag.uri, gtin=tag.gtin), tag.uri, None
        # A tag's SGTIN is written from its number, as a label's would be.
        assert tag.gtin is not None and tag.serial is not None
        table_prefix, table_rest = table_split(tag.gtin, length)
        uri = f"urn:epc:id:sgtin:{table_prefix}.{table_rest}.{tag.serial}"
        return _item(ACCEPTED, epc=tag.hex, gtin=tag.gtin), uri, None
    if way == "sscc":
        serial = draw(st.text(string.digits, min_size=17 - length, max_size=17 - length))
        sscc17 = serial[0] + prefix + serial[1:]
        sscc = sscc17 + check_digit(sscc17)
        prefix, serial = table_split(sscc, length)
        return (_item(ACCEPTED, sscc=sscc), f"urn:epc:id:sscc:{prefix}.{serial}", None)
    gtin13 = rest[0] + prefix + rest[1:]
    gtin = gtin13 + check_digit(gtin13)
    prefix, rest = table_split(gtin, length)
    if way == "gtin+serial":
        serial = draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=20))
        return (
            _item(ACCEPTED, gtin=gtin, serial=serial),
            f"urn:epc:id:sgtin:{prefix}.{rest}.{serial}",
            None,
        )
    if way == "gtin":
        return _item(ACCEPTED, gtin=gtin), None, f"urn:epc:idpat:sgtin:{prefix}.{rest}.*"
    lot = draw(st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20))
    return (
        _item(ACCEPTED, gtin=gtin, lot=lot),
        None,
        f"urn:epc:class:lgtin:{prefix}.{rest}.{lot}",
    )


@dataclasses.dataclass(frozen=True)
class Case:
    """Settings, a transaction, and what its event must say."""

    site: EpcisSettings
    tx: MoveTransaction | DockTransaction
    event_time: str
    epcs: set[str]
    quantities: Counter[str]  # epcClass -> quantity
    reference: str | None


@st.composite
def transactions(draw: st.DrawFn) -> Case:
    site = draw(site_settings())
    moment, event_time = draw(moments())
    kind = draw(st.sampled_from(["move", *DockKind]))
    if kind == "move":
        length = site.company_prefix_length
        prefix = draw(st.text(string.digits, min_size=length, max_size=length))
        serial = draw(st.text(string.digits, min_size=17 - length, max_size=17 - length))
        sscc17 = serial[0] + prefix + serial[1:]  # extension digit, prefix, serial reference
        prefix, serial = table_split(sscc17 + check_digit(sscc17), length)
        move = MoveTransaction(
            sscc=sscc17 + check_digit(sscc17),
            from_location=draw(st.none() | location_names(site)),
            to_location=draw(location_names(site)),
            device_id=draw(location_names(site)),
            pallet_scanned_at=moment - dt.timedelta(seconds=draw(st.integers(0, 600))),
            confirmed_at=moment,
        )
        return Case(site, move, event_time, {f"urn:epc:id:sscc:{prefix}.{serial}"}, Counter(), None)
    dock_kind = DockKind(kind)
    items: list[ItemResult] = []
    epcs: set[str] = set()
    quantities: Counter[str] = Counter()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            item, uri, epc_class = draw(accepted_item(site.company_prefix_length))
            epcs |= {uri} if uri else set()
            quantities.update([epc_class] if epc_class else [])
        else:
            rejected = draw(st.sampled_from(REJECTED[dock_kind]))
            item = _item(rejected, uri=draw(st.none() | st.just("urn:epc:id:sgtin:1.2.3")))
        items.append(item)
    reference = draw(st.none() | st.text(min_size=1, max_size=20).filter(str.isprintable))
    dock = DockTransaction(
        kind=dock_kind,
        door=draw(location_names(site)),
        reference=reference,
        items=tuple(items),
        source=draw(st.sampled_from(EvidenceSource)),
        device="device-1",
        evidence_id=draw(st.text(min_size=1, max_size=12)),
        started_at=moment,
        occurred_at=moment,
    )
    return Case(site, dock, event_time, epcs, quantities, reference)


@pytest.mark.slow(3)
@settings(max_examples=300, deadline=None)
@given(case=transactions())
def test_any_valid_payload_gives_a_schema_valid_event(case: Case) -> None:
    event = object_event(case.tx, case.site)
    assert_valid(event)
    assert_valid(document([event, event], created=CREATED))
    assert event["eventID"] == f"urn:uuid:{case.tx.tx_id}"
    assert event["eventTime"] == case.event_time
    assert event["eventTimeZoneOffset"] == timezone_offset(
        dt.datetime.fromisoformat(case.event_time), case.site.time_zone
    )
    assert set(event["epcList"]) == case.epcs
    assert len(event["epcList"]) == len(case.epcs)
    quantity_list = event.get("quantityList", [])
    assert {q["epcClass"]: q["quantity"] for q in quantity_list} == case.quantities
    assert len(quantity_list) == len(case.quantities)
    assert ("bizTransactionList" in event) == (case.reference is not None)


@pytest.mark.parametrize(
    ("time_zone", "at", "offset"),
    [
        ("Europe/Berlin", dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC), "+01:00"),
        ("Europe/Berlin", dt.datetime(2026, 7, 7, 8, 0, tzinfo=dt.UTC), "+02:00"),  # summer
        ("America/New_York", dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC), "-05:00"),
        ("Asia/Kolkata", dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC), "+05:30"),
        ("UTC", dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC), "+00:00"),
    ],
)
def test_the_offset_is_the_site_time_zones_at_the_events_time(
    time_zone: str, at: dt.datetime, offset: str
) -> None:
    assert timezone_offset(at, time_zone) == offset


# --- every item that crossed a door is traced (issue #12) --------------------------------------


def test_the_items_a_door_did_not_accept_are_traced_each_under_its_disposition() -> None:
    events = object_events(RECEIVE, SITE)
    for event in events:
        assert_valid(event)
    assert_valid(document(events, created=CREATED))
    by_disposition = {e["disposition"]: e for e in events}
    assert set(by_disposition) == {
        "in_progress",  # the accepted items, as before
        "mismatch_instance",
        "mismatch_quantity",
        "expired",
        "non_conformant",
        "mismatch_class",
    }
    assert by_disposition["in_progress"] == object_event(RECEIVE, SITE)
    assert by_disposition["mismatch_instance"]["epcList"] == ["urn:epc:id:sgtin:0614141.812345.1"]
    assert by_disposition["expired"]["epcList"] == ["urn:epc:id:sgtin:0614141.812345.4"]
    assert all(e["bizStep"] == "receiving" for e in events)
    # Once each: the repeat (already_received) is in the earlier receipt's event.
    traced = [uri for e in events for uri in e["epcList"]]
    assert "urn:epc:id:sgtin:0614141.812345.3" not in traced
    assert len(traced) == len(set(traced))
    ids = [e["eventID"] for e in events]
    assert len(set(ids)) == len(ids)
    assert ids == [e["eventID"] for e in object_events(RECEIVE, SITE)]  # deterministic


def test_a_stopped_wrong_pallet_is_traced_at_the_door_and_no_empty_shipping_event_is_made() -> None:
    stopped = dataclasses.replace(SHIP, items=(SHIP.items[2],))  # only the pallet not on order
    (event,) = object_events(stopped, SITE)
    assert_valid(event)
    assert event["epcList"] == ["urn:epc:id:sscc:0614141.0000000001"]
    assert (event["bizStep"], event["disposition"]) == ("holding", "mismatch_instance")
    assert "bizTransactionList" not in event  # it did not ship on the order
    assert event["bizLocation"] == {"id": "urn:epc:id:sgln:0614141.00001.D07"}  # still here


def test_a_pass_of_repeats_only_makes_no_event_and_a_move_makes_one() -> None:
    repeats = dataclasses.replace(SHIP, items=(SHIP.items[3],))  # already shipped
    assert object_events(repeats, SITE) == []
    assert object_events(MOVE, SITE) == [object_event(MOVE, SITE)]


# --- one EPC URI per object (issue #12) ----------------------------------------------------------


def test_a_pallet_has_one_uri_whether_its_tag_or_its_label_was_read_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pallet: its tag's partition says a 9-digit prefix (061414123).
    tag = encode_sscc96("061414123", "34567890").hex().upper()
    sscc = decode_epc(tag).sscc
    assert sscc is not None
    received = dataclasses.replace(RECEIVE, items=(_item(ACCEPTED, epc=tag),))
    moved = dataclasses.replace(MOVE, sscc=sscc)
    known = epcis_module.learned_prefixes(received)
    assert known == {"061414123"}
    # GS1's table knows 0614141 (7 digits): it decides, for the tag and the label alike, so
    # the order in which they are seen does not matter.
    (receipt,) = object_events(received, SITE, known)
    assert receipt["epcList"] == object_event(moved, SITE)["epcList"]
    assert receipt["epcList"] == ["urn:epc:id:sscc:0614141.3234567890"]
    # Where the table has no length, a prefix a tag showed decides, also for labels.
    monkeypatch.setattr(epcis_module, "_table_prefix_length", lambda _key: None)
    (receipt,) = object_events(received, SITE, known)
    (putaway,) = object_events(moved, SITE, known)
    assert receipt["epcList"] == putaway["epcList"] == ["urn:epc:id:sscc:061414123.34567890"]


def test_a_site_override_applies_where_gs1s_table_has_no_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(epcis_module, "_table_prefix_length", lambda _key: None)
    site = dataclasses.replace(SITE, prefix_lengths=(("06", 6), ("0614141", 7)))
    assert object_event(MOVE, site)["epcList"][0].startswith("urn:epc:id:sscc:0614141.")
    other = dataclasses.replace(MOVE, sscc="306123400000000018")
    assert object_event(other, site)["epcList"][0].startswith("urn:epc:id:sscc:061234.")


def test_parties_go_in_source_and_destination_lists_and_the_asn_is_the_suppliers() -> None:
    supplier, customer = "5901234123457", "4012345000009"
    receipt = dataclasses.replace(RECEIVE, party_gln=supplier)
    event = object_event(receipt, SITE)
    assert_valid(event)
    assert event["bizTransactionList"] == [
        {"type": "desadv", "bizTransaction": f"urn:epcglobal:cbv:bt:{supplier}:ASN-4711"}
    ]
    assert event["sourceList"] == [
        {"type": "possessing_party", "source": "urn:epc:id:pgln:5901234.12345"}
    ]
    assert event["destinationList"] == [
        {"type": "possessing_party", "destination": "urn:epc:id:pgln:0614141.00001"}
    ]
    shipment = object_event(dataclasses.replace(SHIP, party_gln=customer), SITE)
    assert_valid(shipment)
    assert shipment["sourceList"][0]["source"] == "urn:epc:id:pgln:0614141.00001"
    assert shipment["destinationList"][0]["destination"].startswith("urn:epc:id:pgln:")
    # No party known: no lists (a receipt without its supplier's GLN).
    assert "sourceList" not in object_event(RECEIVE, SITE)
