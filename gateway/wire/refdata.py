"""Reference data from the WMS (ASNs, ship orders, products, locations): JSON to domain and back.

The WMS publishes each record retained on `wms/{site}/{kind}/{key}`; an empty payload deletes
it. `parse_message` turns one MQTT message into a record, a deletion or a rejection with a
one-line reason naming the field; it never raises, so one bad message cannot stop the bridge or
disturb records held before. Checking goes in two steps: the JSON Schema shipped in
`gateway/schemas/` (the documented contract), then the rules a schema cannot express (check
digits through biip, the key in the topic, unique line numbers). `decode` gives what
the rules take (`RefDataUpdate`, `RefDataDeleted` or `Rejected`); `to_json` gives the canonical
JSON back, for storage. Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.domain import (
    Asn,
    AsnLine,
    InputKind,
    Location,
    Product,
    RefData,
    RefDataDeleted,
    RefDataKind,
    RefDataUpdate,
    ShipLine,
    ShipOrder,
)
from gateway.domain import Rejected as RejectedInput
from gateway.schemas import validator
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line, show

KINDS = tuple(kind.value for kind in RefDataKind)
"""The kinds of reference data, as the third level of their topic (and their schema's name)."""

MAX_PAYLOAD_BYTES = 1024 * 1024
"""A bigger payload is rejected unread: the hard ceiling, whatever a kind's limit says."""

_KEY_FIELD = {"asn": "asn_id", "shipment": "order_id", "product": "gtin", "location": "location"}

# jsonschema's `pattern` uses re.search, where `$` also matches before a final newline.
_EPC = re.compile(r"[0-9A-F]{24,124}")


@dataclass(frozen=True, slots=True)
class Deleted:
    """An empty retained payload: the WMS withdrew the record `key` of this `kind`."""

    kind: str
    key: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that was not accepted; `reason` is one line and names the field."""

    topic: str
    reason: str


class _Invalid(Exception):
    """A rule the schema cannot express was broken; the message is the reason."""


def parse_topic(topic: str, site: str) -> tuple[str, str] | None:
    """`wms/{site}/{kind}/{key}` as (kind, key); None for any other topic."""
    prefix = f"wms/{site}/"
    if not topic.startswith(prefix):
        return None
    kind, _, key = topic[len(prefix) :].partition("/")
    if kind not in KINDS or not key or any(c in key for c in "/+#"):
        return None
    return kind, key


def decode(
    topic: str,
    payload: bytes,
    site: str,
    at: dt.datetime,
    max_bytes: Mapping[str, int] | None = None,
) -> RefDataUpdate | RefDataDeleted | RejectedInput:
    """One reference data message as the rules take it (`max_bytes`: the largest payload of
    each kind, see `parse_message`). Never raises."""
    parsed = parse_message(topic, payload, site, max_bytes)
    match parsed:
        case Rejected():
            source = "/".join(topic.split("/", 3)[:3])[:120]  # wms/{site}/{kind}
            return RejectedInput(InputKind.REFERENCE_DATA, topic, parsed.reason, at, source=source)
        case Deleted():
            return RefDataDeleted(RefDataKind(parsed.kind), parsed.key, at)
        case _:
            return RefDataUpdate(parsed, at)


def parse_message(
    topic: str, payload: bytes, site: str, max_bytes: Mapping[str, int] | None = None
) -> RefData | Deleted | Rejected:
    """One reference data message as a record, a deletion or a rejection. Never raises.

    A payload larger than its kind's limit in `max_bytes` (a kind not there: the ceiling,
    `MAX_PAYLOAD_BYTES`, which also caps every limit) is rejected unread.
    """
    where = parse_topic(topic, site)
    if where is None:
        return Rejected(
            topic, f"not a reference data topic: expected wms/{site}/{{{'|'.join(KINDS)}}}/{{id}}"
        )
    kind, key = where
    if not payload:
        return Deleted(kind, key)
    limit = min(MAX_PAYLOAD_BYTES, (max_bytes or {}).get(kind, MAX_PAYLOAD_BYTES))
    if len(payload) > limit:
        return Rejected(
            topic, f"payload: {len(payload):,} bytes, more than the {kind} limit of {limit:,}"
        )
    result = _parse(kind, key, payload)
    return Rejected(topic, one_line(result)) if isinstance(result, str) else result


def _parse(kind: str, key: str, payload: bytes) -> RefData | str:
    """The record in `payload`, or why there is none."""
    try:
        doc = load_valid(payload, validator(kind), max_bytes=MAX_PAYLOAD_BYTES)
    except InvalidDocument as err:
        return str(err)
    field = _KEY_FIELD[kind]
    if doc[field] != key:
        return f"{field}: {show(doc[field])} is not the id in the topic, {show(key)}"
    try:
        return _BUILD[kind](doc)
    except _Invalid as err:
        return str(err)


def from_stored(kind: str, body: str) -> RefData:
    """A record as the gateway stored it (`to_json` of one checked when it came): built without
    its schema again, which costs more than the rest. Raises ValueError on a damaged row."""
    try:
        return _BUILD[kind](json.loads(body))
    except (KeyError, TypeError, _Invalid) as err:
        raise ValueError(f"stored {kind} cannot be read: {err!r}") from None


def to_json(item: RefData) -> dict[str, Any]:
    """The canonical JSON of a record: valid against its schema, and parsed back to `item`."""
    match item:
        case Asn():
            asn: dict[str, Any] = {"asn_id": item.asn_id, "door": item.door}
            window = _omit_none(
                {"from": _iso(item.window_from), "to": _iso(item.window_to)},
            )
            if window:
                asn["appointment"] = window
            if item.supplier is not None:
                asn["supplier"] = _omit_none({"name": item.supplier, "gln": item.supplier_gln})
            asn["lines"] = [_asn_line_json(line) for line in item.lines]
            return asn
        case ShipOrder():
            order: dict[str, Any] = {
                "order_id": item.order_id,
                "door": item.door,
                "pallets": list(item.pallets),
                "lines": [
                    _omit_none(
                        {"line": x.line, "gtin": x.gtin, "quantity": x.quantity, "lot": x.lot}
                    )
                    for x in item.lines
                ],
            }
            if item.customer is not None:
                order["customer"] = _omit_none({"name": item.customer, "gln": item.customer_gln})
            return order
        case Product():
            return _omit_none(
                {
                    "gtin": item.gtin,
                    "description": item.description,
                    "unit_weight_kg": item.unit_weight_kg,
                    "tare_weight_kg": item.tare_weight_kg,
                    "min_remaining_shelf_life_days": item.min_remaining_shelf_life_days,
                }
            )
        case Location():
            return _omit_none(
                {
                    "location": item.location,
                    "zone": item.zone,
                    "kind": item.kind,
                    "capacity_pallets": item.capacity_pallets,
                    "gln": item.gln,
                    "aisle": item.aisle,
                }
            )


# --- decoding and the schema step -------------------------------------------------------------


# --- building records from documents that passed the schema ------------------------------------


def _asn(doc: dict[str, Any]) -> Asn:
    lines: list[AsnLine] = []
    line_at: dict[int, int] = {}
    epc_at: dict[str, str] = {}
    sscc_at: dict[str, str] = {}
    for i, raw in enumerate(doc["lines"]):
        where = f"lines[{i}]"
        number = _unique_line(line_at, raw["line"], i)
        epcs: list[str] = []
        for j, given in enumerate(raw.get("epcs", ())):
            epc = given.upper()
            if not _EPC.fullmatch(epc):
                raise _Invalid(f"{where}.epcs[{j}]: {show(given)} is not a valid EPC")
            _unique(epc_at, epc, f"{where}.epcs[{j}]", "EPC")
            epcs.append(epc)
        quantity = int(raw.get("quantity", len(epcs)))  # the schema lets 2.0 pass as an integer
        if epcs and quantity != len(epcs):
            raise _Invalid(
                f"{where}.quantity: {quantity} does not match the {len(epcs)} EPCs of the line"
            )
        sscc = raw.get("sscc")
        if sscc is not None:
            _check_sscc(f"{where}.sscc", sscc)
            _unique(sscc_at, sscc, f"{where}.sscc", "SSCC")
        gtin = raw.get("gtin")
        if gtin is not None:
            _check_gtin(f"{where}.gtin", gtin)
        expiry = raw.get("expiry")
        lines.append(
            AsnLine(
                line=number,
                quantity=quantity,
                epcs=tuple(epcs),
                sscc=sscc,
                gtin=gtin,
                lot=raw.get("lot"),
                expiry=None if expiry is None else dt.date.fromisoformat(expiry),
            )
        )
    supplier = doc.get("supplier")
    if supplier is not None and "gln" in supplier:
        _check_gln("supplier.gln", supplier["gln"])
    window = doc.get("appointment", {})
    window_from = _datetime("appointment.from", window.get("from"))
    window_to = _datetime("appointment.to", window.get("to"))
    if window_from is not None and window_to is not None and window_to < window_from:
        raise _Invalid(f"appointment.to: {window['to']} is before appointment.from")
    return Asn(
        asn_id=doc["asn_id"],
        door=doc["door"],
        lines=tuple(lines),
        supplier=None if supplier is None else supplier["name"],
        window_from=window_from,
        window_to=window_to,
        supplier_gln=None if supplier is None else supplier.get("gln"),
    )


def _ship_order(doc: dict[str, Any]) -> ShipOrder:
    for i, sscc in enumerate(doc.get("pallets", ())):
        _check_sscc(f"pallets[{i}]", sscc)
    lines: list[ShipLine] = []
    line_at: dict[int, int] = {}
    for i, raw in enumerate(doc.get("lines", ())):
        number = _unique_line(line_at, raw["line"], i)
        _check_gtin(f"lines[{i}].gtin", raw["gtin"])
        lines.append(ShipLine(number, raw["gtin"], int(raw["quantity"]), raw.get("lot")))
    customer = doc.get("customer")
    if customer is not None and "gln" in customer:
        _check_gln("customer.gln", customer["gln"])
    _datetime("ship_by", doc.get("ship_by"))
    return ShipOrder(
        doc["order_id"],
        doc["door"],
        tuple(doc.get("pallets", ())),
        tuple(lines),
        customer=None if customer is None else customer["name"],
        customer_gln=None if customer is None else customer.get("gln"),
    )


def _product(doc: dict[str, Any]) -> Product:
    _check_gtin("gtin", doc["gtin"])
    unit, tare = doc.get("unit_weight_kg"), doc.get("tare_weight_kg")
    return Product(
        gtin=doc["gtin"],
        min_remaining_shelf_life_days=int(doc.get("min_remaining_shelf_life_days", 0)),
        unit_weight_kg=None if unit is None else float(unit),
        tare_weight_kg=None if tare is None else float(tare),
        description=doc.get("description"),
    )


def _location(doc: dict[str, Any]) -> Location:
    if "gln" in doc:
        _check_gln("gln", doc["gln"])
    capacity = doc.get("capacity_pallets")
    return Location(
        doc["location"],
        doc.get("zone"),
        doc.get("kind"),
        None if capacity is None else int(capacity),
        doc.get("gln"),
        doc.get("aisle"),
    )


_BUILD: dict[str, Callable[[dict[str, Any]], RefData]] = {
    "asn": _asn,
    "shipment": _ship_order,
    "product": _product,
    "location": _location,
}


def _unique_line(line_at: dict[int, int], given: float, index: int) -> int:
    """The line number, as an int; two lines with one number are refused."""
    number = int(given)
    if number in line_at:
        raise _Invalid(f"lines[{index}].line: {number} is already used by lines[{line_at[number]}]")
    line_at[number] = index
    return number


def _unique(seen: dict[str, str], value: str, where: str, name: str) -> None:
    if value in seen:
        raise _Invalid(f"{where}: {name} {value} is already listed at {seen[value]}")
    seen[value] = where


# Check digits through biip: each identifier with its own parser (`Gtin.parse`,
# `Sscc.parse`: ten times faster than `biip.parse`, which tries every interpretation; a ship
# order lists up to 100,000 SSCCs). Cached, as the same identifiers come again. biip is
# imported with the first record (its GS1 prefix tables take 10-16 MiB and 60 ms to load).


def _check_gtin(where: str, gtin: str) -> None:
    error = _gtin_error(gtin)
    if error is not None:
        raise _Invalid(f"{where}: {error}")


def _check_sscc(where: str, sscc: str) -> None:
    error = _sscc_error(sscc)
    if error is not None:
        raise _Invalid(f"{where}: {error}")


def _check_gln(where: str, gln: str) -> None:
    error = _gln_error(gln)
    if error is not None:
        raise _Invalid(f"{where}: {error}")


@lru_cache(maxsize=4096)
def _gtin_error(gtin: str) -> str | None:
    from biip import ParseError
    from biip.gtin import Gtin

    try:
        Gtin.parse(gtin)
    except ParseError as err:
        return str(err)
    return None


@lru_cache(maxsize=4096)
def _sscc_error(sscc: str) -> str | None:
    from biip import ParseError
    from biip.sscc import Sscc

    try:
        Sscc.parse(sscc)
    except ParseError as err:
        return str(err)
    return None


@lru_cache(maxsize=1024)
def _gln_error(gln: str) -> str | None:
    import biip

    message = biip.parse("414" + gln).gs1_message
    element = message.element_strings[0] if message and message.element_strings else None
    if element is not None and element.gln is not None:
        return None
    return (element.gln_error if element else None) or f"{gln} is not a valid GLN"


def _datetime(where: str, text: str | None) -> dt.datetime | None:
    """An RFC 3339 date-time (already checked by the schema) as an aware datetime."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.upper())
        value.astimezone(dt.UTC)  # out of range once converted (year 1 or 9999 near the edge)
    except (ValueError, OverflowError) as err:
        raise _Invalid(f"{where}: {show(text)} is not a usable date-time ({err})") from err
    return value


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _omit_none(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if v is not None}


def _asn_line_json(line: AsnLine) -> dict[str, Any]:
    return _omit_none(
        {
            "line": line.line,
            "epcs": list(line.epcs) or None,
            "sscc": line.sscc,
            "gtin": line.gtin,
            "quantity": line.quantity,
            "lot": line.lot,
            "expiry": None if line.expiry is None else line.expiry.isoformat(),
        }
    )
