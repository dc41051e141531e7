"""Reference data from the WMS: ASNs, ship orders, products and locations, as frozen values.

The wire layer (`gateway.wire.refdata`) builds them from the WMS's messages; the rules read them.
"""

from __future__ import annotations

import datetime as dt
import enum
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload


class RefDataKind(enum.StrEnum):
    """The kinds of reference data (the third level of their topic, and their schema's name)."""

    ASN = "asn"
    SHIPMENT = "shipment"
    PRODUCT = "product"
    LOCATION = "location"


class Ssccs(Sequence[str]):
    """SSCCs (18 digits), compact: as 64-bit integers, 16 bytes each instead of some 80 for a
    tuple of strings, with membership by binary search instead of a scan. A ship order may list
    100,000 pallets, and the gateway holds every open order. Keeps the order it was given in.
    """

    __slots__ = ("_order", "_sorted")

    def __init__(self, ssccs: Iterable[str] = ()) -> None:
        values: list[int] = []
        for sscc in ssccs:
            if not _is_sscc(sscc):
                raise ValueError(f"not an SSCC (18 digits): {sscc[:40]!r}")
            values.append(int(sscc))
        self._order = array("Q", values)
        self._sorted = array("Q", sorted(values))

    def __len__(self) -> int:
        return len(self._order)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Ssccs: ...
    def __getitem__(self, index: int | slice) -> str | Ssccs:
        if isinstance(index, slice):
            return Ssccs(f"{v:018d}" for v in self._order[index])
        return f"{self._order[index]:018d}"

    def __iter__(self) -> Iterator[str]:
        return (f"{v:018d}" for v in self._order)

    def __contains__(self, sscc: object) -> bool:
        if not isinstance(sscc, str) or not _is_sscc(sscc):
            return False
        value = int(sscc)
        at = bisect_left(self._sorted, value)
        return at < len(self._sorted) and self._sorted[at] == value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ssccs):
            return self._order == other._order
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._order.tobytes())

    def __repr__(self) -> str:
        return f"Ssccs({list(self)!r})"

    def __getstate__(self) -> bytes:
        return self._order.tobytes()

    def __setstate__(self, state: bytes) -> None:
        self._order = array("Q")
        self._order.frombytes(state)
        self._sorted = array("Q", sorted(self._order))


def _is_sscc(value: str) -> bool:
    return len(value) == 18 and value.isascii() and value.isdigit()


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
    supplier_gln: str | None = None  # the supplier's GLN-13, when the WMS gives it


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
    pallets: Sequence[str]  # SSCCs, held as `Ssccs`
    lines: tuple[ShipLine, ...]
    customer: str | None = None  # the customer's name
    customer_gln: str | None = None  # and GLN-13, when the WMS gives them

    def __post_init__(self) -> None:
        if not isinstance(self.pallets, Ssccs):
            object.__setattr__(self, "pallets", Ssccs(self.pallets))


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
    gln: str | None = None  # its own GLN-13, when it has one
    aisle: str | None = None


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
