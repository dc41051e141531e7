"""Scan-verified packing: each item scanned into a carton is checked against the carton's ship
order before it is packed ("scan to verify, so the wrong goods are not shipped").

A packer opens a carton for a ship order at a station (scanning the carton's label), scans each
item, and closes the carton. Each item is checked, in this order: on the order at all
(`wrong_item`), past its expiry (`expired`), of the line's lot when the line names one
(`wrong_lot`), and still wanted (`too_many`: the order line's quantity is packed already, in
closed cartons and open ones). An item that fails is not packed and raises a `pack_exception`
alarm at the station, one per item. Closing a carton allocates its SSCC from the site's range
(the next serial, never one used before: the next serial is committed with the carton), makes
a pack transaction with its contents and a print job for its label.

Pure: the open cartons, what closed cartons hold per order line and the next serial are given
back at start.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from gateway.domain import Decision, Item, Notice, Product, Severity, ShipOrder
from gateway.domain.epc import gs1_check_digit
from gateway.domain.packing import (
    CartonChanged,
    OpenCarton,
    PackedItem,
    PackResult,
    PackTransaction,
    PrintJob,
)

__all__ = ["Packing", "SsccRange", "sscc_of"]


@dataclass(frozen=True, slots=True)
class SsccRange:
    """The SSCCs the site may give its cartons: extension digit, company prefix, serials."""

    company_prefix: str
    first: int
    last: int
    extension: int = 0

    def __post_init__(self) -> None:
        room = 16 - len(self.company_prefix)
        if not self.company_prefix.isdigit() or not 6 <= len(self.company_prefix) <= 12:
            raise ValueError("company_prefix: 6 to 12 digits")
        if not 0 <= self.first <= self.last < 10**room:
            raise ValueError(f"serials: 0 <= first <= last < 10^{room}")
        if not 0 <= self.extension <= 9:
            raise ValueError("extension: one digit")


def sscc_of(span: SsccRange, serial: int) -> str:
    """The 18-digit SSCC of a serial in a range."""
    body = f"{span.extension}{span.company_prefix}{serial:0{16 - len(span.company_prefix)}d}"
    return body + str(gs1_check_digit(body))


Outcome = tuple[list[Decision], str, str | None]
"""Decisions, the result (a `PackResult`, or opened, closed, rejected) and a detail."""


class Packing:
    """Cartons open at stations (one per terminal), checked against their orders.

    Args:
        span: the SSCC range (None: cartons cannot be closed).
        next_serial: the next serial to give (stored; None: the range's first).
        cartons: the open cartons by terminal (stored).
        packed: what closed cartons hold, per (order id, line) (stored).
        stations: the pack stations with a label printer; a carton is opened only there
            (None: anywhere).
    """

    def __init__(
        self,
        span: SsccRange | None,
        *,
        next_serial: int | None = None,
        cartons: Mapping[str, OpenCarton] | None = None,
        packed: Mapping[tuple[str, int], int] | None = None,
        stations: frozenset[str] | None = None,
    ) -> None:
        self.span = span
        self.stations = stations  # the stations with a printer (None: any station)
        self.next_serial = next_serial if next_serial is not None else (span.first if span else 0)
        self.cartons: dict[str, OpenCarton] = dict(cartons or {})
        self.packed: Counter[tuple[str, int]] = Counter(packed or {})

    def open(
        self, terminal: str, carton: str, order: ShipOrder | None, station: str, at: dt.datetime
    ) -> Outcome:
        """Open a carton for `order` at `station` (a terminal's open carton is left open)."""
        if order is None:
            return [], "rejected", "no such ship order"
        if self.stations is not None and station not in self.stations:
            return [], "rejected", f"no label printer at station {station}"
        current = self.cartons.get(terminal)
        if current is not None:
            return [], "rejected", f"carton {current.carton} is open: close it first"
        opened = OpenCarton(carton, order.order_id, station, at)
        self.cartons[terminal] = opened
        return [CartonChanged(terminal, opened)], "opened", None

    def add(
        self,
        terminal: str,
        item: Item,
        order: ShipOrder | None,
        product: Product | None,
        at: dt.datetime,
    ) -> Outcome:
        """Check an item against the open carton's order; pack it, or raise an alarm."""
        carton = self.cartons.get(terminal)
        if carton is None:
            return [], "rejected", "no open carton: scan a carton first"
        if order is None:
            return [], "rejected", f"ship order {carton.order_id} is gone"
        result, line, detail = self._check(carton, item, order, at)
        if result is not PackResult.PACKED or line is None:
            return [self._alarm(terminal, carton, item, result, detail, at)], result.value, detail
        carton = replace(carton, items=(*carton.items, PackedItem(item, line, at)))
        self.cartons[terminal] = carton
        return [CartonChanged(terminal, carton)], PackResult.PACKED.value, None

    def close(self, terminal: str, at: dt.datetime, device: str) -> Outcome:
        """Close the open carton: its SSCC, the pack transaction, the label to print."""
        carton = self.cartons.get(terminal)
        if carton is None:
            return [], "rejected", "no open carton"
        if not carton.items:  # given up on: no SSCC, no label, the station is free again
            del self.cartons[terminal]
            return [CartonChanged(terminal, None)], "abandoned", f"carton {carton.carton} was empty"
        span = self.span
        if span is None or self.next_serial > span.last:
            notice = Notice(
                code="sscc_range_exhausted",
                message="no SSCC left in the configured range: cartons cannot be closed",
                at=at,
                severity=Severity.ERROR,
                location=carton.station,
                details={"terminal": terminal, "carton": carton.carton},
            )
            return [notice], "rejected", "no SSCC left to give"
        sscc = sscc_of(span, self.next_serial)
        self.next_serial += 1
        del self.cartons[terminal]
        for packed in carton.items:
            self.packed[carton.order_id, packed.line] += 1
        tx = PackTransaction(
            sscc,
            carton.order_id,
            carton.station,
            carton.carton,
            carton.items,
            carton.opened_at,
            at,
            device,
        )
        job = PrintJob(tx.tx_id, carton.station, sscc, carton.order_id, len(carton.items))
        return [tx, job, CartonChanged(terminal, None, self.next_serial)], "closed", sscc

    # --- internals ----------------------------------------------------------------------------

    def _check(
        self, carton: OpenCarton, item: Item, order: ShipOrder, at: dt.datetime
    ) -> tuple[PackResult, int | None, str | None]:
        lines = [ln for ln in order.lines if item.gtin and ln.gtin == item.gtin.zfill(14)]
        if not lines:
            return PackResult.WRONG_ITEM, None, f"not on ship order {order.order_id}"
        if item.expiry is not None and item.expiry < at.date():
            return PackResult.EXPIRED, None, f"expired on {item.expiry.isoformat()}"
        lot_lines = [ln for ln in lines if ln.lot is None or ln.lot == item.lot]
        if not lot_lines:
            wanted = ", ".join(sorted({ln.lot or "" for ln in lines}))
            return PackResult.WRONG_LOT, None, f"lot {item.lot} is not the order's ({wanted})"
        for ln in lot_lines:
            if self._left(order.order_id, ln.line, ln.quantity) > 0:
                return PackResult.PACKED, ln.line, None
        return PackResult.TOO_MANY, None, "the order's lines for it are packed in full"

    def _left(self, order_id: str, line: int, quantity: int) -> int:
        in_cartons = sum(
            1
            for c in self.cartons.values()
            if c.order_id == order_id
            for p in c.items
            if p.line == line
        )
        return quantity - self.packed[order_id, line] - in_cartons

    @staticmethod
    def _alarm(
        terminal: str,
        carton: OpenCarton,
        item: Item,
        result: PackResult,
        detail: str | None,
        at: dt.datetime,
    ) -> Notice:
        return Notice(
            code="pack_exception",
            message=(
                f"{result.value.replace('_', ' ')} at {carton.station}, carton {carton.carton} "
                f"of order {carton.order_id}: {detail}; not packed"
            ),
            at=at,
            severity=Severity.ERROR,
            device_id=terminal,
            location=carton.station,
            details={
                "result": result.value,
                "order_id": carton.order_id,
                "carton": carton.carton,
                "gtin": item.gtin,
                "lot": item.lot,
                "serial": item.serial,
            },
        )
