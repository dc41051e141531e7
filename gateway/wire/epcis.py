"""GS1 EPCIS 2.0 events for the gateway's receive, ship and move transactions.

Pure: a transaction (a `MoveTransaction`, or a receive or ship `DockTransaction`, from
`gateway.domain`) and the site's `EpcisSettings` in, one EPCIS 2.0 `ObjectEvent` (a JSON-LD
object) out; no I/O, no clock. The event is built from the transaction itself, not from its
`tx/...` payload, and says what that payload says. `document` wraps events in an
`EPCISDocument`; `validator` checks either against the official GS1 schema shipped in
`gateway/schemas/vendor/epcis-2.0/`.

Choices, all accepted by the official schema and the EPCIS 2.0 JSON-LD context:

- CBV 2.0 values (`bizStep`, `disposition`, business transaction types) are the bare words the
  JSON-LD context maps to the CBV (`"receiving"`, not `https://ref.gs1.org/cbv/BizStep-receiving`).
- `eventID` is `urn:uuid:<tx_id>`: the transaction id is already deterministic (the same pass
  gives the same id), so a replayed transaction gives the same event id.
- `eventTime` is when the transaction happened (a move: its location scan confirmed it), in UTC
  with milliseconds, as the `occurred_at` of the transaction's payload.
- Business transactions use the CBV form `urn:epcglobal:cbv:bt:<GLN>:<id>` with the site's GLN:
  ASN and order ids are the ones the site's WMS keys them by, so the site is the party that
  assigned them. The id is percent-encoded.
- Read points and business locations are a site base URI joined with the door, device or
  storage location: for an SGLN base (`urn:epc:id:sgln:CP.LR`) the name becomes the SGLN
  extension (GS1 character set 82, at most 20 characters, escaped as the Tag Data Standard
  says); any other base gets `/` and the percent-encoded name.
- Items of receive and ship transactions are in the event only when their result is
  `DockResult.ACCEPTED`. Each is identified by, in this order: its EPC URI, its EPC hex
  decoded, its SSCC, its GTIN and serial (an SGTIN), or, counted one unit per item in
  `quantityList`, its GTIN as a class: `urn:epc:class:lgtin:CP.IR.LOT` when the lot is known,
  else `urn:epc:idpat:sgtin:CP.IR.*`.

A transaction with a value EPCIS cannot express (a location name that is no SGLN extension, an
SSCC or GTIN with a wrong check digit, a time without a UTC offset...) raises `PayloadError` (a
`ValueError`) naming the field and what was expected; bad settings raise `ValueError` when
`EpcisSettings` is made.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cache, lru_cache, partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.domain import (
    CountTransaction,
    DockKind,
    DockResult,
    DockTransaction,
    Item,
    ItemResult,
    MoveTransaction,
    decode_epc,
    gs1_check_digit,
)

if TYPE_CHECKING:  # jsonschema is imported by `validator` (the tests'), biip by its first use
    from jsonschema import Draft7Validator

__all__ = [
    "EPCIS_CONTEXT",
    "EXCEPTION_DISPOSITIONS",
    "EpcisSettings",
    "PayloadError",
    "document",
    "gtin_class_uri",
    "object_event",
    "object_events",
    "sgtin_uri",
    "sscc_uri",
    "validator",
]

EPCIS_CONTEXT: Final = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
"""The EPCIS 2.0 JSON-LD context every event and document carries."""

_SCHEMA_PATH: Final = ("vendor", "epcis-2.0", "EPCIS-JSON-Schema.json")
_SGLN_PREFIX: Final = "urn:epc:id:sgln:"
_SGLN_BASE = re.compile(r"urn:epc:id:sgln:(\d{6,12})\.(\d{0,6})")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")

# GS1 "character set 82" (serial numbers, lots, GLN extensions) and the characters the Tag Data
# Standard escapes when such a value is written in a URI.
_CSET82: Final = frozenset(
    "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
)
_URI_ESCAPES: Final = {
    '"': "%22",
    "%": "%25",
    "&": "%26",
    "/": "%2F",
    "<": "%3C",
    ">": "%3E",
    "?": "%3F",
}
_GLN_DIGITS: Final = 12  # company prefix and location reference, before the check digit
_MAX_CSET82_LENGTH: Final = 20  # AI (254) GLN extension and AI (10) lot: up to 20 characters


@dataclass(frozen=True, slots=True)
class EpcisSettings:
    """Where the site's events happen, as EPCIS identifiers.

    Args:
        read_point_base: URI prefix for read points (doors, devices). For
            "urn:epc:id:sgln:0614141.00001" door D03 gives "urn:epc:id:sgln:0614141.00001.D03";
            for any other URI it gives "<base>/D03" (no "/" added after a "/" or ":").
        biz_location_base: the same for business locations (storage locations, doors).
        time_zone: the site's IANA time zone ("Europe/Berlin"); each event's
            `eventTimeZoneOffset` is its offset at the event's time (summer time included).
            Times stay in UTC.
        company_prefix_length: digits of the GS1 Company Prefix in the SSCCs and GTINs the
            site handles (6 to 12). An SSCC or GTIN alone does not say where the prefix ends,
            and the EPC URI needs it. Items read from RFID tags carry it in their EPC.
        prefix_lengths: (digits, length) pairs: a company prefix length for SSCCs and GTINs
            whose digits after the extension or indicator digit start so, where GS1's table
            has none (the longest match first); see `prefix_lengths()`.
        gln: the site's GLN-13, for business transaction URIs. May be left out when either
            base is an SGLN, whose company prefix and location reference give the GLN.
    """

    read_point_base: str
    biz_location_base: str
    time_zone: str = "UTC"
    company_prefix_length: int = 7
    gln: str | None = None
    prefix_lengths: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        """Check every field, so a bad configuration fails at start, not at the first event."""
        for name in ("read_point_base", "biz_location_base"):
            _check_base(name, getattr(self, name))
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"time_zone must be an IANA time zone such as Europe/Berlin, got {self.time_zone!r}"
            ) from None
        _check_prefix_length(self.company_prefix_length)
        for digits, length in self.prefix_lengths:
            _check_prefix_length(length)
            if not digits.isdigit():
                raise ValueError(f"prefix_lengths: {digits!r} is not digits")
        if self.gln is not None:
            _check_digits(self.gln, _GLN_DIGITS + 1, "gln", check_digit=True)
        elif _site_gln(self) is None:
            raise ValueError(
                "gln is needed for business transaction URIs when neither read_point_base "
                f"nor biz_location_base is an SGLN ({_SGLN_PREFIX}<company prefix>.<location>)"
            )


def timezone_offset(at: dt.datetime, time_zone: str) -> str:
    """The offset of `time_zone` from UTC at `at`, as EPCIS writes it ("+01:00", "-05:00")."""
    offset = at.astimezone(ZoneInfo(time_zone)).utcoffset() or dt.timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


# Items a dock door did not accept, by result: the CBV 2.0 disposition of the event that
# traces them (docs/epcis.md has the whole table). Items received or shipped before
# (already_received, already_shipped) are in that earlier event: a second pass is no new
# movement of the goods.
EXCEPTION_DISPOSITIONS: Final[dict[DockResult, str]] = {
    DockResult.UNEXPECTED: "mismatch_instance",  # not on the ASN
    DockResult.NOT_ON_ORDER: "mismatch_instance",  # not on the ship order: stopped at the door
    DockResult.OVER_RECEIPT: "mismatch_quantity",  # more than the ASN line's quantity
    DockResult.LOT_MISMATCH: "mismatch_class",  # another lot than the ASN line's
    DockResult.EXPIRED: "expired",
    DockResult.SHORT_DATED: "non_conformant",  # less shelf life left than the product needs
    DockResult.DAMAGED: "damaged",  # a clerk reported it damaged
}


LengthOf = Callable[[str], int]
"""The GS1 Company Prefix length of an SSCC-18 or GTIN-14."""

PlaceGln = Callable[[str], str | None]
"""The GLN-13 the location master gives a door or location name (None: none)."""


def _no_gln(_name: str) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class _Context:
    """What an event is built with besides the site's settings."""

    length_of: LengthOf
    place_gln: PlaceGln


def prefix_lengths(settings: EpcisSettings, known: AbstractSet[str]) -> LengthOf:
    """Where the company prefix of an SSCC or GTIN ends: a function of the number alone, so
    that one object has one EPC URI in every event, whether a tag or a label was read first:
    GS1's table of prefix lengths (through biip); else a company prefix seen on an RFID tag
    (`known`, from tags' partitions; the longest that matches); else the site's
    `prefix_lengths` overrides (the longest match); else its `company_prefix_length`."""

    def length_of(key: str) -> int:
        table = _table_prefix_length(key)
        if table is not None:
            return table
        digits = key[1:]
        for length in range(12, 5, -1):
            if digits[:length] in known:
                return length
        for prefix, length in sorted(settings.prefix_lengths, key=lambda p: -len(p[0])):
            if digits.startswith(prefix):
                return length
        return settings.company_prefix_length

    return length_of


@lru_cache(maxsize=65_536)
def _table_prefix_length(key: str) -> int | None:
    """The company prefix length GS1's published table gives an SSCC-18 or GTIN-14."""
    # biip's tables (10-16 MiB) load with the first event that needs them, not at start.
    from biip import ParseError
    from biip.gtin import Gtin
    from biip.sscc import Sscc

    try:
        parsed = Sscc.parse(key) if len(key) == 18 else Gtin.parse(key.zfill(14))
    except ParseError:
        return None
    prefix = parsed.company_prefix
    if prefix is None or not 6 <= len(prefix.value) <= 12:
        return None
    return len(prefix.value)


def learned_prefixes(tx: DockTransaction) -> set[str]:
    """The GS1 company prefixes a dock transaction's RFID tags carry (their partitions say
    where they end): kept, for numbers GS1's table has no length for. One per supplier, not
    per pallet."""
    learned: set[str] = set()
    for row in tx.items:
        if row.item.epc:
            prefix = decode_epc(row.item.epc).company_prefix
            if prefix is not None:
                learned.add(prefix)
    return learned


_NOTHING_KNOWN: Final[AbstractSet[str]] = frozenset()


def object_events(
    tx: MoveTransaction | DockTransaction,
    settings: EpcisSettings,
    known: AbstractSet[str] = _NOTHING_KNOWN,
    place_gln: PlaceGln = _no_gln,
) -> list[dict[str, Any]]:
    """Every EPCIS 2.0 `ObjectEvent` of one transaction: its accepted items (`object_event`,
    left out when a dock transaction accepted none) and, for each exception disposition, the
    items a dock door did not accept, at that door (see `EXCEPTION_DISPOSITIONS`).

    Raises:
        PayloadError: a value of the transaction cannot be expressed in EPCIS.
    """
    if isinstance(tx, MoveTransaction):
        return [object_event(tx, settings, known, place_gln)]
    length_of = prefix_lengths(settings, known)
    events: list[dict[str, Any]] = []
    if any(row.result == DockResult.ACCEPTED for row in tx.items):
        events.append(object_event(tx, settings, known, place_gln))
    by_disposition: dict[str, list[ItemResult]] = {}
    for row in tx.items:
        disposition = EXCEPTION_DISPOSITIONS.get(row.result)
        # A tag that is no GS1 identifier has no EPC URI: it cannot be in an event.
        expressible = row.item.gtin or _instance_uri(row.item, settings, length_of) is not None
        if disposition is not None and expressible:
            by_disposition.setdefault(disposition, []).append(row)
    for disposition, rows in by_disposition.items():
        event = object_event(
            dataclasses.replace(
                tx, items=tuple(dataclasses.replace(r, result=DockResult.ACCEPTED) for r in rows)
            ),
            settings,
            known,
            place_gln,
        )
        event["eventID"] = f"urn:uuid:{uuid.uuid5(uuid.UUID(tx.tx_id), disposition)}"
        event["disposition"] = disposition
        if tx.kind == DockKind.SHIP:
            # Stopped at the door: held on the site, neither shipped on the order nor handed
            # to the customer.
            door = _location_uri(settings.biz_location_base, tx.door, place_gln, settings)
            event["bizStep"] = "holding"
            event["bizLocation"] = {"id": door}
            for field in ("bizTransactionList", "sourceList", "destinationList"):
                event.pop(field, None)
        events.append(event)
    return events


def count_events(
    tx: CountTransaction,
    settings: EpcisSettings,
    known: AbstractSet[str] = _NOTHING_KNOWN,
    place_gln: PlaceGln = _no_gln,
) -> list[dict[str, Any]]:
    """A closed cycle count as EPCIS 2.0: per location where something was seen, one
    `ObjectEvent` (OBSERVE, bizStep `cycle_counting`) of what was seen there (found, moved in,
    unexpected). What was missing was not observed and is in no event (the `tx/count`
    transaction lists it); tags that are no GS1 identifier have no EPC URI and are left out.

    Raises:
        PayloadError: a value of the count cannot be expressed in EPCIS.
    """
    length_of = prefix_lengths(settings, known)
    seen: dict[str, list[str]] = {}
    for key, (_recorded, where) in tx.moved.items():
        seen.setdefault(where, []).append(key)
    for key, where in tx.unexpected.items():
        seen.setdefault(where, []).append(key)
    for key, where in tx.found.items():
        seen.setdefault(where, []).append(key)
    events = []
    try:
        at = _event_time(tx.closed_at, "closed_at")
        offset = timezone_offset(tx.closed_at, settings.time_zone)
        for where in sorted(seen):
            uris = sorted(u for key in seen[where] if (u := _key_uri(key, length_of)) is not None)
            if not uris:
                continue
            place = _text(where, "location")
            events.append(
                {
                    "@context": EPCIS_CONTEXT,
                    "type": "ObjectEvent",
                    "eventID": f"urn:uuid:{uuid.uuid5(uuid.UUID(tx.tx_id), where)}",
                    "eventTime": at,
                    "eventTimeZoneOffset": offset,
                    "epcList": uris,
                    "action": "OBSERVE",
                    "bizStep": "cycle_counting",
                    "disposition": "in_progress",
                    "readPoint": {
                        "id": _location_uri(settings.read_point_base, place, place_gln, settings)
                    },
                    "bizLocation": {
                        "id": _location_uri(settings.biz_location_base, place, place_gln, settings)
                    },
                }
            )
    except ValueError as err:
        raise PayloadError(f"count transaction {tx.tx_id!r}: {err}") from err
    return events


def _key_uri(key: str, length_of: LengthOf) -> str | None:
    """The EPC URI of a counted thing's key (sscc:, sgtin:, epc:); None: no GS1 identifier."""
    kind, _, rest = key.partition(":")
    if kind == "sscc":
        return sscc_uri(rest, length_of(rest))
    if kind == "sgtin":
        gtin, _, serial = rest.partition(".")
        return sgtin_uri(gtin, serial, length_of(gtin.zfill(14)))
    return decode_epc(rest).uri


class PayloadError(ValueError):
    """A transaction that cannot be expressed as an EPCIS event; says which field."""


def object_event(
    tx: MoveTransaction | DockTransaction,
    settings: EpcisSettings,
    known: AbstractSet[str] = _NOTHING_KNOWN,
    place_gln: PlaceGln = _no_gln,
) -> dict[str, Any]:
    """One EPCIS 2.0 `ObjectEvent` for one move, receive or ship transaction.

    Raises:
        PayloadError: a value of the transaction cannot be expressed in EPCIS.
        TypeError: `tx` is not a move or dock transaction.
    """
    match tx:
        case MoveTransaction():
            kind, at, at_field = "move", tx.confirmed_at, "confirmed_at"
            body = partial(_move, tx)
        case DockTransaction():
            kind, at, at_field = str(tx.kind), tx.occurred_at, "occurred_at"
            body = partial(_DOCK_BUILDERS[tx.kind], tx)
        case _:
            raise TypeError(
                f"no EPCIS event for a {type(tx).__name__} (a move or dock transaction)"
            )
    try:
        event: dict[str, Any] = {
            "@context": EPCIS_CONTEXT,
            "type": "ObjectEvent",
            "eventID": _event_id(tx.tx_id),
            "eventTime": _event_time(at, at_field),
            "eventTimeZoneOffset": timezone_offset(at, settings.time_zone),
        }
        event.update(body(settings, _Context(prefix_lengths(settings, known), place_gln)))
    except ValueError as err:
        raise PayloadError(f"{kind} transaction {tx.tx_id!r}: {err}") from err
    return event


def document(events: Sequence[dict[str, Any]], *, created: str) -> dict[str, Any]:
    """An `EPCISDocument` holding `events`, created at `created` (RFC 3339).

    An event's own `@context` is left out when it is the document's.
    """
    event_list = [
        {key: value for key, value in event.items() if key != "@context"}
        if event.get("@context") == EPCIS_CONTEXT
        else dict(event)
        for event in events
    ]
    return {
        "@context": EPCIS_CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _timestamp(created, "created"),
        "epcisBody": {"eventList": event_list},
    }


@cache
def validator() -> Draft7Validator:
    """A validator of the official EPCIS 2.0 JSON Schema (draft-07), checking formats too."""
    from jsonschema import Draft7Validator

    path = resources.files("gateway.schemas").joinpath(*_SCHEMA_PATH)
    schema: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def sscc_uri(sscc: str, company_prefix_length: int) -> str:
    """The pure identity URI of an 18-digit SSCC: `urn:epc:id:sscc:CP.SR`.

    The serial reference SR is the extension digit followed by the digits after the company
    prefix CP, without the check digit (EPC Tag Data Standard, SSCC).
    """
    _check_digits(sscc, 18, "sscc", check_digit=True)
    _check_prefix_length(company_prefix_length)
    prefix = sscc[1 : 1 + company_prefix_length]
    serial = sscc[0] + sscc[1 + company_prefix_length : 17]
    return f"urn:epc:id:sscc:{prefix}.{serial}"


def sgtin_uri(gtin: str, serial: str, company_prefix_length: int) -> str:
    """The pure identity URI of a serialised trade item: `urn:epc:id:sgtin:CP.IR.SERIAL`.

    `gtin` has 8, 12, 13 or 14 digits; `serial` is the GS1 AI (21) value (escaped in the URI).
    """
    prefix, item = _gtin_parts(gtin, company_prefix_length)
    return f"urn:epc:id:sgtin:{prefix}.{item}.{_cset82_uri(serial, 'serial')}"


def gtin_class_uri(gtin: str, company_prefix_length: int, lot: str | None = None) -> str:
    """The class of a GTIN (8, 12, 13 or 14 digits) as an EPC URI.

    With a lot: `urn:epc:class:lgtin:CP.IR.LOT`; without: `urn:epc:idpat:sgtin:CP.IR.*`.
    """
    prefix, item = _gtin_parts(gtin, company_prefix_length)
    if lot is None:
        return f"urn:epc:idpat:sgtin:{prefix}.{item}.*"
    return f"urn:epc:class:lgtin:{prefix}.{item}.{_cset82_uri(lot, 'lot')}"


def _gtin_parts(gtin: str, company_prefix_length: int) -> tuple[str, str]:
    """Company prefix CP and item reference IR of a GTIN: IR is the indicator digit followed
    by the digits after CP, without the check digit (EPC Tag Data Standard, SGTIN)."""
    if len(gtin) not in (8, 12, 13, 14):
        raise ValueError(f"gtin must have 8, 12, 13 or 14 digits, got {gtin!r}")
    gtin14 = gtin.zfill(14)
    _check_digits(gtin14, 14, "gtin", check_digit=True)
    _check_prefix_length(company_prefix_length)
    return gtin14[1 : 1 + company_prefix_length], gtin14[0] + gtin14[1 + company_prefix_length : 13]


# --- the three transaction types -------------------------------------------------------------


def _move(tx: MoveTransaction, settings: EpcisSettings, ctx: _Context) -> dict[str, Any]:
    """A pallet put away: observed at its new storage location, which is also where the event
    was captured (the readPoint is a place, per CBV: the forklift's scanner or the robot that
    confirmed it is not one; the gateway's move transaction names it). Where the pallet came
    from is not an EPCIS field of a storing step; the move transaction keeps it."""
    to_location = _text(tx.to_location, "to_location")
    return {
        "epcList": [sscc_uri(tx.sscc, ctx.length_of(tx.sscc))],
        "action": "OBSERVE",
        "bizStep": "storing",
        "disposition": "in_progress",
        "readPoint": {
            "id": _location_uri(settings.read_point_base, to_location, ctx.place_gln, settings)
        },
        "bizLocation": {
            "id": _location_uri(settings.biz_location_base, to_location, ctx.place_gln, settings)
        },
    }


def _receive(tx: DockTransaction, settings: EpcisSettings, ctx: _Context) -> dict[str, Any]:
    """Goods received at a dock door, against the ASN when there is one."""
    door = _text(tx.door, "door")
    event = _items(tx.items, settings, ctx.length_of)
    event.update(
        action="OBSERVE",
        bizStep="receiving",
        disposition="in_progress",
        readPoint={"id": _location_uri(settings.read_point_base, door, ctx.place_gln, settings)},
        bizLocation={
            "id": _location_uri(settings.biz_location_base, door, ctx.place_gln, settings)
        },
    )
    # The ASN is the supplier's despatch advice: numbered under the supplier's GLN when known.
    _add_biz_transaction(
        event, tx.reference, settings, what="ASN id", kind="desadv", issuer=tx.party_gln
    )
    _add_parties(event, settings, source=tx.party_gln, destination=_site_gln_of(settings))
    return event


def _ship(tx: DockTransaction, settings: EpcisSettings, ctx: _Context) -> dict[str, Any]:
    """Goods leaving through a shipping door, against the order when there is one.

    No `bizLocation`: the goods are in transit, at no location of the site any more.
    """
    door = _text(tx.door, "door")
    event = _items(tx.items, settings, ctx.length_of)
    event.update(
        action="OBSERVE",
        bizStep="shipping",
        disposition="in_transit",
        readPoint={"id": _location_uri(settings.read_point_base, door, ctx.place_gln, settings)},
    )
    # The ship order is the site's own document, of no CBV type (it is not the customer's PO).
    _add_biz_transaction(event, tx.reference, settings, what="order id", kind=None)
    _add_parties(event, settings, source=_site_gln_of(settings), destination=tx.party_gln)
    return event


_DOCK_BUILDERS: Final[
    dict[DockKind, Callable[[DockTransaction, EpcisSettings, _Context], dict[str, Any]]]
] = {
    DockKind.RECEIVE: _receive,
    DockKind.SHIP: _ship,
}


# --- parts of an event -----------------------------------------------------------------------


def _event_id(tx_id: str) -> str:
    try:
        return f"urn:uuid:{uuid.UUID(tx_id)}"
    except ValueError:
        raise ValueError(f"tx_id must be a UUID, got {tx_id!r}") from None


def _event_time(at: dt.datetime, name: str) -> str:
    """`at` in UTC with milliseconds, as transaction payloads have it: 2024-05-01T10:00:00.250Z.

    A time without a UTC offset is refused rather than read as the host's local time.
    """
    if at.utcoffset() is None:
        raise ValueError(f"{name} must have a UTC offset, got {at.isoformat()!r}")
    try:
        utc = at.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError(f"{name} {at.isoformat()!r} is out of range in UTC") from None
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _items(
    items: Sequence[ItemResult], settings: EpcisSettings, length_of: LengthOf
) -> dict[str, Any]:
    """`epcList` (always, maybe empty) and `quantityList` (when not empty) of accepted items.

    An item identified by its GTIN only is one unit of its class.
    """
    epcs: dict[str, None] = {}  # a dict keeps the first-seen order and drops repeats
    quantities: dict[str, int] = {}
    for index, row in enumerate(items):
        if row.result != DockResult.ACCEPTED:
            continue
        item = row.item
        uri = _instance_uri(item, settings, length_of)
        if uri is not None:
            epcs[uri] = None
            continue
        if not item.gtin:
            if item.epc:  # a tag that is no GS1 identifier: no EPC URI; the transaction names it
                continue
            raise PayloadError(f"items[{index}] is accepted but has no uri, epc, sscc or gtin")
        gtin14 = item.gtin.zfill(14)
        class_uri = gtin_class_uri(item.gtin, length_of(gtin14), item.lot or None)
        quantities[class_uri] = quantities.get(class_uri, 0) + 1
    event: dict[str, Any] = {"epcList": list(epcs)}
    if quantities:
        event["quantityList"] = [
            {"epcClass": epc_class, "quantity": quantity}
            for epc_class, quantity in quantities.items()
        ]
    return event


def _instance_uri(item: Item, settings: EpcisSettings, length_of: LengthOf) -> str | None:
    """The EPC URI of one item (tag, pallet, serialised label), or None for a GTIN only.

    An SSCC or a serialised GTIN is written from its number, whether a tag or a label gave it,
    so that both give the same URI (`prefix_lengths`); other tags keep their own EPC URI."""
    if item.sscc:
        return sscc_uri(item.sscc, length_of(item.sscc))
    if item.gtin and item.serial:
        return sgtin_uri(item.gtin, item.serial, length_of(item.gtin.zfill(14)))
    if item.uri:
        return item.uri
    if item.epc:
        decoded = decode_epc(item.epc)
        if decoded.sscc:
            return sscc_uri(decoded.sscc, length_of(decoded.sscc))
        if decoded.gtin and decoded.serial:
            return sgtin_uri(decoded.gtin, decoded.serial, length_of(decoded.gtin))
        return decoded.uri
    return None


def _add_biz_transaction(
    event: dict[str, Any],
    reference: str | None,
    settings: EpcisSettings,
    *,
    what: str,
    kind: str | None,
    issuer: str | None = None,
) -> None:
    """Adds `bizTransactionList` when the transaction names its ASN or order, numbered under
    its issuer's GLN (the site's when not given)."""
    if reference is None:
        return
    if not reference:
        raise PayloadError(f"reference (the {what}) must be non-empty or None, got {reference!r}")
    gln = issuer or _site_gln_of(settings)
    transaction = {"bizTransaction": f"urn:epcglobal:cbv:bt:{gln}:{quote(reference, safe='')}"}
    event["bizTransactionList"] = [transaction if kind is None else {"type": kind, **transaction}]


def _site_gln_of(settings: EpcisSettings) -> str:
    gln = settings.gln or _site_gln(settings)
    assert gln is not None  # EpcisSettings refuses settings that give none
    return gln


def _add_parties(
    event: dict[str, Any], settings: EpcisSettings, *, source: str | None, destination: str | None
) -> None:
    """`sourceList` and `destinationList` of possessing parties (PGLN URIs; a dock door sees
    custody change hands, not ownership), when both are known: the supplier and the site on a
    receipt, the site and the customer on a shipment."""
    if source is None or destination is None:
        return
    event["sourceList"] = [{"type": "possessing_party", "source": pgln_uri(source, settings)}]
    event["destinationList"] = [
        {"type": "possessing_party", "destination": pgln_uri(destination, settings)}
    ]


def pgln_uri(gln: str, settings: EpcisSettings) -> str:
    """A party's GLN-13 as a PGLN EPC URI. Its company prefix: the site's own (from an SGLN
    base) when the GLN starts with it, so the site is split as its SGLNs are; else GS1's
    table; else the longest `prefix_lengths` override; else `company_prefix_length`."""
    _check_digits(gln, _GLN_DIGITS + 1, "gln", check_digit=True)
    length: int | None = None
    for base in (settings.read_point_base, settings.biz_location_base):
        if base.startswith(_SGLN_PREFIX):
            own = base.removeprefix(_SGLN_PREFIX).split(".")[0]
            if own.isdigit() and gln.startswith(own):
                length = len(own)
    if length is None:
        from biip import ParseError
        from biip.gln import Gln

        try:
            prefix = Gln.parse(gln).company_prefix
        except ParseError:
            prefix = None
        if prefix is not None and 6 <= len(prefix.value) <= 12:
            length = len(prefix.value)
    if length is None:
        matches = [n for digits, n in settings.prefix_lengths if gln.startswith(digits)]
        length = matches[0] if matches else settings.company_prefix_length
    return f"urn:epc:id:pgln:{gln[:length]}.{gln[length:12]}"


def _location_uri(
    base: str, name: str, place_gln: PlaceGln = _no_gln, settings: EpcisSettings | None = None
) -> str:
    """A door or storage location under a base URI (see `EpcisSettings`).

    Under an SGLN base, a name that is no SGLN extension (over 20 characters, a space) is never
    dropped: it is the location's own GLN when the location master gives one (an SGLN with
    extension 0), else a readable extension made from the name and a digest of it.
    """
    if base.startswith(_SGLN_PREFIX):
        try:
            return f"{base}.{_cset82_uri(name, 'SGLN extension')}"
        except ValueError:
            gln = place_gln(name)
            if gln is not None and settings is not None:
                return _sgln_uri(gln, settings)
            return f"{base}.{_cset82_uri(_extension_of(name), 'SGLN extension')}"
    separator = "" if base.endswith(("/", ":")) else "/"
    return f"{base}{separator}{quote(name, safe='')}"


def _extension_of(name: str) -> str:
    """A valid SGLN extension for any name, the same every time: its GS1 character-set-82
    characters (others as "-") cut to 12, then "-" and 7 hex digits of a digest of the name."""
    readable = "".join(char if char in _CSET82 else "-" for char in name)[:12] or "x"
    return f"{readable}-{hashlib.blake2b(name.encode(), digest_size=4).hexdigest()[:7]}"


def _sgln_uri(gln: str, settings: EpcisSettings) -> str:
    """A place's own GLN-13 as an SGLN with extension 0."""
    return pgln_uri(gln, settings).replace("urn:epc:id:pgln:", _SGLN_PREFIX) + ".0"


def _cset82_uri(value: str, what: str) -> str:
    """A GS1 character-set-82 value (lot, GLN extension) escaped for an EPC URI."""
    if not 1 <= len(value) <= _MAX_CSET82_LENGTH or not set(value) <= _CSET82:
        raise ValueError(
            f"{what} must be 1 to {_MAX_CSET82_LENGTH} characters of the GS1 character set 82 "
            f"(letters, digits and !\"%&'()*+,-./:;<=>?_), got {value!r}"
        )
    return "".join(_URI_ESCAPES.get(char, char) for char in value)


# --- checks ----------------------------------------------------------------------------------


def _text(value: str, name: str) -> str:
    if not value:
        raise PayloadError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _timestamp(value: object, name: str) -> str:
    """An RFC 3339 date-time with seconds and an offset, returned unchanged."""
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return value
    raise ValueError(f"{name} must be an RFC 3339 date-time such as 2024-05-01T10:00:00Z")


def _check_digits(value: str, length: int, name: str, *, check_digit: bool = False) -> None:
    if len(value) != length or not (value.isascii() and value.isdigit()):
        raise ValueError(f"{name} must be {length} digits, got {value!r}")
    if check_digit and gs1_check_digit(value[:-1]) != value[-1]:
        raise ValueError(f"{name} {value!r} has a wrong check digit")


def _check_prefix_length(length: int) -> None:
    # The Company Prefix has 6 to 12 digits (GS1 General Specifications).
    if isinstance(length, bool) or not isinstance(length, int) or not 6 <= length <= 12:
        raise ValueError(f"company prefix length must be 6 to 12, got {length!r}")


def _check_base(name: str, base: object) -> None:
    if not isinstance(base, str) or not _URI.fullmatch(base):
        raise ValueError(f"{name} must be an absolute URI, got {base!r}")
    if base.startswith(_SGLN_PREFIX):
        match = _SGLN_BASE.fullmatch(base)
        if match is None or len(match[1]) + len(match[2]) != _GLN_DIGITS:
            raise ValueError(
                f"{name} must be {_SGLN_PREFIX}<company prefix>.<location reference> "
                f"(12 digits in all, no extension), got {base!r}"
            )


def _site_gln(settings: EpcisSettings) -> str | None:
    """The GLN-13 of an SGLN base (company prefix, location reference, check digit)."""
    for base in (settings.biz_location_base, settings.read_point_base):
        match = _SGLN_BASE.fullmatch(base)
        if match is not None:
            gln12 = match[1] + match[2]
            return gln12 + gs1_check_digit(gln12)
    return None
