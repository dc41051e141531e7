"""Scan-verified packing at a pack station: cartons, what went in, and their labels."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum

from gateway.domain.ids import deterministic_id
from gateway.domain.transactions import Item


class PackResult(enum.StrEnum):
    """What became of one item scanned into a carton."""

    PACKED = "packed"
    WRONG_ITEM = "wrong_item"  # not on the carton's ship order
    TOO_MANY = "too_many"  # its order line is packed in full already
    WRONG_LOT = "wrong_lot"  # another lot than the order line's
    EXPIRED = "expired"  # past its expiry date when packed


@dataclasses.dataclass(frozen=True, slots=True)
class PackedItem:
    """An item in a carton: its order line, and when it went in."""

    item: Item
    line: int
    at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class PackTransaction:
    """A carton closed: its SSCC (allocated at the close), its ship order and its contents."""

    sscc: str
    order_id: str
    station: str
    carton: str  # the carton label the packer scanned to open it
    items: tuple[PackedItem, ...]
    opened_at: dt.datetime
    closed_at: dt.datetime
    device: str  # the terminal

    @property
    def tx_id(self) -> str:
        """Deterministic: one transaction per SSCC."""
        return deterministic_id("pack", self.sscc)


@dataclasses.dataclass(frozen=True, slots=True)
class PrintJob:
    """A carton's shipping label for its station's printer, printed once: kept until the
    printer took it (the printer's language is the edge's: `gateway.wire.zpl`)."""

    job_id: str
    station: str
    sscc: str
    order_id: str
    items: int


@dataclasses.dataclass(frozen=True, slots=True)
class CartonChanged:
    """A station's open carton as it is now (None: closed), kept across restarts; and the next
    SSCC serial of the range (after an allocation)."""

    terminal: str
    carton: OpenCarton | None
    next_serial: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class OpenCarton:
    """A carton being packed: the label scanned to open it, its order, station and items."""

    carton: str
    order_id: str
    station: str
    opened_at: dt.datetime
    items: tuple[PackedItem, ...] = ()
