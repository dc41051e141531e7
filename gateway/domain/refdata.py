"""Reference data from the WMS: ASNs, ship orders, products and locations, as frozen values.

The wire layer (`gateway.wire.refdata`) builds them from the WMS's messages; the rules read them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class RefDataKind(enum.StrEnum):
    """The kinds of reference data (the third level of their topic, and their schema's name)."""

    ASN = "asn"
    SHIPMENT = "shipment"
    PRODUCT = "product"
    LOCATION = "location"


@dataclass(frozen=True, slots=True)
class AsnLine:
    """One expected item of an ASN: tagged items by EPC, a pallet by SSCC or a GTIN quantity."""

    line: int
    quantity: int
    epcs: tuple[str, ...] = ()  # upper-case hex
    sscc: str | None = None
    gtin: str | None = None
    lot: str | None = None
    expiry: dt.date | None = None


@dataclass(frozen=True, slots=True)
class Asn:
    """An advance shipping notice: what is expected to arrive at a door."""

    asn_id: str
    door: str
    lines: tuple[AsnLine, ...]
    supplier: str | None = None  # the supplier's name
    window_from: dt.datetime | None = None  # the appointment window, aware datetimes
    window_to: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class ShipLine:
    """One line of a ship order: a quantity of a trade item, optionally of one lot."""

    line: int
    gtin: str
    quantity: int
    lot: str | None = None


@dataclass(frozen=True, slots=True)
class ShipOrder:
    """A ship order: the pallets and items allowed to leave through a door."""

    order_id: str
    door: str
    pallets: tuple[str, ...]  # SSCCs
    lines: tuple[ShipLine, ...]


@dataclass(frozen=True, slots=True)
class Product:
    """What the gateway knows about a trade item for weight and shelf-life checks."""

    gtin: str
    min_remaining_shelf_life_days: int = 0
    unit_weight_kg: float | None = None
    tare_weight_kg: float | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """A place pallets can be: dock door, staging lane, rack slot or floor area."""

    location: str
    zone: str | None = None
    kind: str | None = None  # dock_door, staging, rack or floor
    capacity_pallets: int | None = None


RefData = Asn | ShipOrder | Product | Location


def key_of(item: RefData) -> tuple[RefDataKind, str]:
    """The (kind, key) a record is known by: its topic is `wms/{site}/{kind}/{key}`."""
    match item:
        case Asn():
            return RefDataKind.ASN, item.asn_id
        case ShipOrder():
            return RefDataKind.SHIPMENT, item.order_id
        case Product():
            return RefDataKind.PRODUCT, item.gtin
        case Location():
            return RefDataKind.LOCATION, item.location
