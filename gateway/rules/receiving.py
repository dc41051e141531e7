"""Receiving and shipping at the dock doors: passes and scans checked against the WMS's plans.

Pure: reference data, passes and scans in (with their timestamps), transactions, alarms and
closing summaries out. The ledger of what was received or shipped is given at start and kept
up to date by the decisions (the app stores it with each transaction), so nothing is received
or shipped twice, also across restarts.

A receipt is the work against one ASN at its door: it opens with the first pass or scan at
that door while the ASN is open, and closes by command or after `idle_close` without activity.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from gateway.domain import (
    WEIGHT_MISMATCH,
    Asn,
    AsnLine,
    ClosingKind,
    Direction,
    DockKind,
    DockProgress,
    DockResult,
    DockSummary,
    DockTransaction,
    DoorRole,
    EvidenceSource,
    Item,
    ItemResult,
    LedgerEntry,
    LineSummary,
    Notice,
    PortalPass,
    Product,
    Scan,
    ScanKind,
    Severity,
    ShipOrder,
    Weighing,
    WeightCheck,
    decode_epc,
    deterministic_id,
    epc_key,
)
from gateway.rules.weighing import check_weight

# Results that make an item received (or shipped): a second pass of it is "already ...".
# Exceptions (unexpected, expired, not on order...) are not recorded: the item may come back
# once the WMS has put it right, and is then received as it should be.
_RECORDED = frozenset(
    {DockResult.ACCEPTED, DockResult.OVER_RECEIPT, DockResult.DAMAGED, DockResult.REPORTED_SHORT}
)
_REPORTS = frozenset({DockResult.DAMAGED, DockResult.REPORTED_SHORT})

DockDecision = DockTransaction | DockSummary | Notice


def items_of_pass(portal_pass: PortalPass) -> list[Item]:
    """The items a pass carried, with their EPCs decoded."""
    items = []
    for tag in portal_pass.tags:
        epc = decode_epc(tag.epc)
        # The same identity as the item's label, so that a tag and a scan of its label agree.
        key = epc_key(epc, tag.epc)
        items.append(
            Item(
                key=key,
                epc=tag.epc,
                uri=epc.uri,
                gtin=epc.gtin,
                serial=epc.serial,
                sscc=epc.sscc,
            )
        )
    return items


def item_of_scan(scan: Scan) -> Item | None:
    """The item a scanned label stands for; None for a location label."""
    if scan.kind is ScanKind.PALLET and scan.sscc:
        return Item(key=f"sscc:{scan.sscc}", sscc=scan.sscc)
    if scan.kind is ScanKind.ITEM and scan.gtin:
        key = f"sgtin:{scan.gtin}.{scan.serial}" if scan.serial else ""
        return Item(
            key=key, gtin=scan.gtin.zfill(14), serial=scan.serial, lot=scan.lot, expiry=scan.expiry
        )
    return None


@dataclass
class _Open:
    """Progress of one receipt or shipment."""

    reference: str
    door: str
    done: dict[int, int] = field(default_factory=dict)  # line -> counted
    over: dict[int, int] = field(default_factory=dict)
    pallets: set[str] = field(default_factory=set)  # ship: SSCCs loaded
    damaged: dict[int, int] = field(default_factory=dict)  # line -> reported damaged
    reported_short: dict[int, int] = field(default_factory=dict)  # line -> reported missing
    last_activity: dt.datetime | None = None


class DockRules:
    """Receiving and shipping for every door of the gateway.

    Args:
        idle_close: a receipt or shipment with activity closes after this long without any.
        ledger: what earlier transactions recorded (from storage).
        closed: references already closed (from storage).
        resumed_at: when the gateway started (receipts under way close on idle from then).
    """

    def __init__(
        self,
        *,
        idle_close: dt.timedelta = dt.timedelta(minutes=30),
        ledger: Iterable[LedgerEntry] = (),
        closed: Iterable[str] = (),
        resumed_at: dt.datetime | None = None,
        weighing: WeightCheckSettings | None = None,
    ) -> None:
        self.idle_close = idle_close
        # A receipt under way at a restart counts as active from the restart on.
        self._resumed_at = resumed_at
        self.weighing = weighing or WeightCheckSettings()
        self._weighings: dict[str, Weighing] = {}  # door -> the latest weighing not yet used
        self.asns: dict[str, Asn] = {}
        self.orders: dict[str, ShipOrder] = {}
        self.products: dict[str, Product] = {}
        self._seen: dict[DockKind, set[str]] = {DockKind.RECEIVE: set(), DockKind.SHIP: set()}
        self._open: dict[tuple[DockKind, str], _Open] = {}
        self._closed = set(closed)
        for entry in ledger:
            self._record(entry)

    # -- reference data ------------------------------------------------------------------

    def set_asn(self, asn: Asn) -> None:
        """An ASN arrived or changed."""
        self.asns[asn.asn_id] = asn

    def set_order(self, order: ShipOrder) -> None:
        """A ship order arrived or changed."""
        self.orders[order.order_id] = order

    def set_product(self, product: Product) -> None:
        """A product's master data arrived or changed."""
        self.products[product.gtin] = product

    def delete(self, kind: str, key: str, at: dt.datetime) -> list[DockDecision]:
        """The WMS withdrew an ASN, a ship order or a product.

        A receipt or shipment under way against it closes now (reason "withdrawn"), with the
        plan as it was, so that what was done is reported.
        """
        out: list[DockDecision] = []
        if kind in ("asn", "shipment") and key not in self._closed:
            progress = self._open.pop(
                (DockKind.RECEIVE if kind == "asn" else DockKind.SHIP, key), None
            )
            if progress is not None:
                self._closed.add(key)
                out.append(
                    self._summary(
                        DockKind.RECEIVE if kind == "asn" else DockKind.SHIP,
                        progress,
                        at,
                        "withdrawn",
                    )
                )
        if kind == "asn":
            self.asns.pop(key, None)
        elif kind == "shipment":
            self.orders.pop(key, None)
        elif kind == "product":
            self.products.pop(key, None)
        return out

    # -- events --------------------------------------------------------------------------

    def on_weighing(self, door: str, weighing: Weighing) -> None:
        """A pallet was weighed at the station of `door`: the door's next transaction takes it."""
        self._weighings[door] = weighing

    def on_pass(self, portal_pass: PortalPass, door_role: DoorRole) -> list[DockDecision]:
        """An inbound pass at a receiving door or an outbound pass at a shipping door."""
        direction = portal_pass.direction
        shipping = door_role == DoorRole.SHIPPING or (
            door_role == DoorRole.BOTH and direction == Direction.OUTBOUND
        )
        if direction is not (Direction.OUTBOUND if shipping else Direction.INBOUND):
            # A pallet brought back in through a shipping door, or leaving through a
            # receiving door (an empty, a return): neither a shipment nor a receipt.
            return []
        seen = _Seen(
            EvidenceSource.PORTAL,
            portal_pass.reader_id,
            portal_pass.pass_id,
            dt.datetime.fromtimestamp(portal_pass.started_at, dt.UTC),
            dt.datetime.fromtimestamp(portal_pass.ended_at, dt.UTC),
            direction,
        )
        items = items_of_pass(portal_pass)
        return (
            self._ship(portal_pass.door, items, seen)
            if shipping
            else self._receive(portal_pass.door, items, seen)
        )

    def on_scan(self, scan: Scan, door: str, role: DoorRole) -> list[DockDecision]:
        """A label scanned at a receiving or shipping station of `door`."""
        item = item_of_scan(scan)
        if item is None:
            return []
        evidence = deterministic_id("scan", scan.device_id, scan.raw, scan.at.isoformat())
        seen = _Seen(EvidenceSource.SCANNER, scan.device_id, evidence, scan.at, scan.at, None)
        if role == DoorRole.SHIPPING:
            return self._ship(door, [item], seen)
        return self._receive(door, [item], seen)

    def close(self, reference: str, at: dt.datetime, reason: str = "command") -> list[DockDecision]:
        """Close a receipt (ASN id) or shipment (order id); unknown or closed ones give nothing."""
        if reference in self._closed:
            return []
        for kind in (DockKind.RECEIVE, DockKind.SHIP):
            progress = self._open.pop((kind, reference), None)
            if progress is None:
                plan = (
                    self.asns.get(reference)
                    if kind == DockKind.RECEIVE
                    else self.orders.get(reference)
                )
                if plan is not None:
                    progress = _Open(reference, plan.door)
            if progress is not None:
                self._closed.add(reference)
                return self._closing(kind, progress, at, reason)
        return []

    def report(
        self,
        problem: DockResult,
        scan: Scan,
        door: str,
        *,
        reason: str,
        quantity: int,
        line: int | None = None,
        reference: str | None = None,
        evidence: str = "",
    ) -> list[DockDecision] | str:
        """A clerk reports items of a receipt damaged (`DockResult.DAMAGED`) or missing
        (`DockResult.REPORTED_SHORT`) with a reason code: a receive transaction with one item
        result per unit, tallied on its ASN line, and an alarm at the door. Returns why not
        (a str) when there is no open receipt at the door or the label is on none of its lines.
        """
        asn = self.asns.get(reference) if reference else self._open_asn(door, scan.at)
        if asn is None or asn.asn_id in self._closed:
            return (
                f"no open receipt at {door}"
                if reference is None
                else f"no open receipt {reference}"
            )
        item = item_of_scan(scan)
        if item is None:
            return "not an item or pallet label"
        if line is None:
            found = next(
                (
                    ln
                    for ln in asn.lines
                    if (item.sscc and ln.sscc == item.sscc)
                    or (item.gtin and ln.gtin == item.gtin)
                    or (item.epc and item.epc in ln.epcs)
                ),
                None,
            )
            if found is None:
                return f"on no line of ASN {asn.asn_id}"
            line = found.line
        elif all(ln.line != line for ln in asn.lines):
            return f"ASN {asn.asn_id} has no line {line}"
        progress = self._progress(DockKind.RECEIVE, asn.asn_id, door)
        progress.last_activity = scan.at
        tally = progress.damaged if problem == DockResult.DAMAGED else progress.reported_short
        tally[line] = tally.get(line, 0) + quantity
        evidence = deterministic_id(
            "report",
            problem,
            scan.device_id,
            scan.raw,
            scan.at.isoformat(),
            line,
            reason,
            quantity,
            evidence,  # the caller's: a handheld's (terminal, seq), unique per report
        )
        results = [
            ItemResult(
                dataclasses.replace(item, key=f"report:{evidence}:{n}", epc=None, uri=None),
                problem,
                line,
                reason,
            )
            for n in range(quantity)
        ]
        for r in results:
            self._seen[DockKind.RECEIVE].add(r.item.key)
        seen = _Seen(EvidenceSource.SCANNER, scan.device_id, evidence, scan.at, scan.at, None)
        tx = _transaction(DockKind.RECEIVE, door, asn.asn_id, results, seen)
        tx = dataclasses.replace(tx, party_gln=self._party_gln(DockKind.RECEIVE, asn.asn_id))
        what = "damaged" if problem == DockResult.DAMAGED else "missing"
        code = "damage_reported" if problem == DockResult.DAMAGED else "short_reported"
        alarm = _alarm(
            code,
            f"{quantity} of line {line} of ASN {asn.asn_id} reported {what} at {door}: {reason}",
            scan.at,
            door,
            {
                "tx_id": tx.tx_id,
                "asn_id": asn.asn_id,
                "line": line,
                "reason": reason,
                "quantity": quantity,
            },
        )
        return [tx, alarm]

    def on_tick(self, now: dt.datetime) -> list[DockDecision]:
        """Close receipts and shipments idle for `idle_close`."""
        out: list[DockDecision] = []
        for (kind, reference), progress in list(self._open.items()):
            if (
                progress.last_activity is not None
                and now - progress.last_activity >= self.idle_close
            ):
                del self._open[(kind, reference)]
                self._closed.add(reference)
                out.extend(self._closing(kind, progress, now, "idle"))
        return out

    def at_door(self, door: str, at: dt.datetime) -> list[DockProgress]:
        """What is open at `door` at `at`: the receipt and the shipment its next pass or scan
        would count against (one under way first), with their progress. No change is made."""
        out: list[DockProgress] = []
        asn = self._open_asn(door, at)
        if asn is not None:
            progress = self._open.get((DockKind.RECEIVE, asn.asn_id))
            out.append(self._progress_of(DockKind.RECEIVE, asn.asn_id, door, progress))
        order = self._open_order(door)
        if order is not None:
            progress = self._open.get((DockKind.SHIP, order.order_id))
            out.append(self._progress_of(DockKind.SHIP, order.order_id, door, progress))
        return out

    def _progress_of(
        self, kind: DockKind, reference: str, door: str, progress: _Open | None
    ) -> DockProgress:
        current = progress or _Open(reference, door)
        pallets_expected = pallets_done = 0
        if kind == DockKind.SHIP:
            order = self.orders[reference]
            pallets_expected = len(order.pallets)
            pallets_done = len(current.pallets)
        return DockProgress(
            kind,
            reference,
            door,
            tuple(self._lines(kind, current, pallets=False)),
            under_way=progress is not None
            and bool(progress.done or progress.over or progress.pallets),
            last_activity=current.last_activity,
            pallets_expected=pallets_expected,
            pallets_done=pallets_done,
        )

    def is_closed(self, reference: str) -> bool:
        """Whether a receipt or shipment was closed."""
        return reference in self._closed

    # -- receiving -------------------------------------------------------------------------

    def _open_asn(self, door: str, at: dt.datetime) -> Asn | None:
        candidates = [
            a for a in self.asns.values() if a.door == door and a.asn_id not in self._closed
        ]
        in_window = [
            a
            for a in candidates
            if (a.window_from is None or a.window_from <= at)
            and (a.window_to is None or at <= a.window_to)
        ]
        pool = in_window or candidates
        # A receipt already under way wins; then the earliest appointment.
        pool.sort(
            key=lambda a: (
                (DockKind.RECEIVE, a.asn_id) not in self._open,
                a.window_from or at,
                a.asn_id,
            )
        )
        return pool[0] if pool else None

    def _receive(self, door: str, items: list[Item], seen: _Seen) -> list[DockDecision]:
        asn = self._open_asn(door, seen.at)
        if asn is None:
            return self._unplanned(
                DockKind.RECEIVE,
                door,
                items,
                seen,
                DockResult.UNEXPECTED,
                "no open ASN at this door",
                "unplanned_receipt",
                f"{len(items)} item(s) received at {door} with no open ASN",
            )
        progress = self._progress(DockKind.RECEIVE, asn.asn_id, door)
        results = [self._check_receipt(asn, progress, item, seen.at) for item in items]
        tx = self._done(DockKind.RECEIVE, door, asn.asn_id, progress, results, seen)
        out: list[DockDecision] = [tx, *_weight_alarm(tx)]
        at = seen.at
        dated = [r for r in results if r.result in (DockResult.EXPIRED, DockResult.SHORT_DATED)]
        if dated:
            out.append(
                _alarm(
                    "expired_lot",
                    f"{len(dated)} item(s) at {door} expired or short-dated against ASN {asn.asn_id}",
                    at,
                    door,
                    {"tx_id": tx.tx_id, "items": [r.item.key or r.item.gtin for r in dated]},
                )
            )
        return out

    def _check_receipt(self, asn: Asn, progress: _Open, item: Item, at: dt.datetime) -> ItemResult:
        if item.key and item.key in self._seen[DockKind.RECEIVE]:
            return ItemResult(item, DockResult.ALREADY_RECEIVED, None, "received before")
        line = _line_for(asn, item, progress)
        if line is None:
            return ItemResult(item, DockResult.UNEXPECTED, None, "not on the ASN")
        if line.lot and item.lot and item.lot != line.lot:
            return ItemResult(
                item, DockResult.LOT_MISMATCH, line.line, f"lot {item.lot}, ASN says {line.lot}"
            )
        expiry = item.expiry or line.expiry
        gtin = item.gtin or line.gtin
        if expiry is not None:
            product = self.products.get(gtin) if gtin else None
            days_left = (expiry - at.date()).days
            minimum = product.min_remaining_shelf_life_days if product else 0
            if days_left < 0:
                return ItemResult(
                    item, DockResult.EXPIRED, line.line, f"expired on {expiry.isoformat()}"
                )
            if days_left < minimum:
                return ItemResult(
                    item,
                    DockResult.SHORT_DATED,
                    line.line,
                    f"{days_left} days left, the product needs {minimum}",
                )
        if progress.done.get(line.line, 0) >= line.quantity:
            progress.over[line.line] = progress.over.get(line.line, 0) + 1
            return ItemResult(
                item,
                DockResult.OVER_RECEIPT,
                line.line,
                f"line {line.line} expects {line.quantity}",
            )
        progress.done[line.line] = progress.done.get(line.line, 0) + 1
        return ItemResult(item, DockResult.ACCEPTED, line.line)

    # -- shipping --------------------------------------------------------------------------

    def _open_order(self, door: str) -> ShipOrder | None:
        candidates = sorted(
            (o for o in self.orders.values() if o.door == door and o.order_id not in self._closed),
            key=lambda o: ((DockKind.SHIP, o.order_id) not in self._open, o.order_id),
        )
        return candidates[0] if candidates else None

    def _ship(self, door: str, items: list[Item], seen: _Seen) -> list[DockDecision]:
        order = self._open_order(door)
        if order is None:
            return self._unplanned(
                DockKind.SHIP,
                door,
                items,
                seen,
                DockResult.NOT_ON_ORDER,
                "no open ship order at this door",
                "wrong_pallet_at_shipping",
                f"{len(items)} item(s) leaving {door} with no open ship order",
            )
        progress = self._progress(DockKind.SHIP, order.order_id, door)
        # Cases ride on their pallet: on a pallet of the order they go, on another they do not.
        pallets = [i.sscc for i in items if i.sscc]
        on_order_pallet = any(p in order.pallets for p in pallets) if pallets else None
        results = [self._check_shipment(order, progress, item, on_order_pallet) for item in items]
        tx = self._done(DockKind.SHIP, door, order.order_id, progress, results, seen)
        out: list[DockDecision] = [tx, *_weight_alarm(tx)]
        at = seen.at
        wrong = [r for r in results if r.result == DockResult.NOT_ON_ORDER]
        if wrong:
            out.append(
                _alarm(
                    "wrong_pallet_at_shipping",
                    f"{len(wrong)} item(s) at {door} are not on ship order {order.order_id}: stop the load",
                    at,
                    door,
                    {"tx_id": tx.tx_id, "items": [r.item.key or r.item.gtin for r in wrong]},
                )
            )
        return out

    def _check_shipment(
        self, order: ShipOrder, progress: _Open, item: Item, on_order_pallet: bool | None
    ) -> ItemResult:
        if item.key and item.key in self._seen[DockKind.SHIP]:
            return ItemResult(item, DockResult.ALREADY_SHIPPED, None, "shipped before")
        if item.sscc is not None:
            if item.sscc in order.pallets:
                progress.pallets.add(item.sscc)
                return ItemResult(item, DockResult.ACCEPTED, None)
            return ItemResult(
                item, DockResult.NOT_ON_ORDER, None, f"pallet {item.sscc} is not on the order"
            )
        for line in order.lines:
            if item.gtin == line.gtin:
                if progress.done.get(line.line, 0) >= line.quantity:
                    progress.over[line.line] = progress.over.get(line.line, 0) + 1
                    return ItemResult(
                        item, DockResult.NOT_ON_ORDER, line.line, f"line {line.line} is complete"
                    )
                progress.done[line.line] = progress.done.get(line.line, 0) + 1
                return ItemResult(item, DockResult.ACCEPTED, line.line)
        if on_order_pallet:
            return ItemResult(item, DockResult.ACCEPTED, None, "on a pallet of the order")
        if on_order_pallet is False:
            return ItemResult(
                item, DockResult.NOT_ON_ORDER, None, "on a pallet that is not on the order"
            )
        return ItemResult(item, DockResult.NOT_ON_ORDER, None, "not on the order")

    # -- shared ----------------------------------------------------------------------------

    def _unplanned(
        self,
        kind: DockKind,
        door: str,
        items: list[Item],
        seen: _Seen,
        result: DockResult,
        detail: str,
        code: str,
        message: str,
    ) -> list[DockDecision]:
        """Nothing planned at the door: every item refused, and an alarm."""
        tx = _transaction(
            kind, door, None, [ItemResult(i, result, None, detail) for i in items], seen
        )
        return [tx, _alarm(code, message, seen.at, door, {"tx_id": tx.tx_id})]

    def _done(
        self,
        kind: DockKind,
        door: str,
        reference: str,
        progress: _Open,
        results: list[ItemResult],
        seen: _Seen,
    ) -> DockTransaction:
        """The transaction for checked items; what counted is remembered."""
        progress.last_activity = seen.at
        for r in results:
            if r.result in _RECORDED and r.item.key:
                self._seen[kind].add(r.item.key)
        tx = _transaction(kind, door, reference, results, seen, self._weight(door, results, seen))
        return dataclasses.replace(tx, party_gln=self._party_gln(kind, reference))

    def _party_gln(self, kind: DockKind, reference: str) -> str | None:
        """The other party's GLN: the ASN's supplier on a receipt, the order's customer on a
        shipment (None when the WMS did not give it)."""
        if kind == DockKind.RECEIVE:
            asn = self.asns.get(reference)
            return None if asn is None else asn.supplier_gln
        order = self.orders.get(reference)
        return None if order is None else order.customer_gln

    def _weight(self, door: str, results: list[ItemResult], seen: _Seen) -> WeightCheck | None:
        """The door's recent weighing, compared with what the pallet carries."""
        weighing = self._weighings.get(door)
        if weighing is None or abs(seen.at.timestamp() - weighing.at) > self.weighing.window_s:
            return None
        del self._weighings[door]
        counts: dict[str, int] = {}
        for r in results:
            if (
                r.item.gtin
                and r.result != DockResult.ALREADY_RECEIVED
                and r.result != DockResult.ALREADY_SHIPPED
            ):
                counts[r.item.gtin] = counts.get(r.item.gtin, 0) + 1
        settings = self.weighing
        return check_weight(
            weighing.kg,
            items=counts,
            unit_weights_kg={
                g: getattr(self.products.get(g), "unit_weight_kg", None) for g in counts
            },
            tare_kg=settings.pallet_tare_kg,
            abs_tolerance_kg=settings.abs_tolerance_kg,
            rel_tolerance=settings.rel_tolerance,
        )

    def _progress(self, kind: DockKind, reference: str, door: str) -> _Open:
        key = (kind, reference)
        if key not in self._open:
            self._open[key] = _Open(reference, door)
        return self._open[key]

    def _record(self, entry: LedgerEntry) -> None:
        self._seen[entry.kind].add(entry.key)
        if entry.reference in self._closed:
            return
        progress = self._progress(entry.kind, entry.reference, "")
        progress.last_activity = self._resumed_at
        if entry.result in _REPORTS and entry.line is not None:
            tally = (
                progress.damaged if entry.result == DockResult.DAMAGED else progress.reported_short
            )
            tally[entry.line] = tally.get(entry.line, 0) + 1
        elif entry.result == DockResult.OVER_RECEIPT and entry.line is not None:
            progress.over[entry.line] = progress.over.get(entry.line, 0) + 1
        elif entry.counted:
            if entry.line is not None:
                progress.done[entry.line] = progress.done.get(entry.line, 0) + 1
            elif entry.kind == DockKind.SHIP and entry.key.startswith("sscc:"):
                progress.pallets.add(entry.key.removeprefix("sscc:"))

    def _closing(
        self, kind: DockKind, progress: _Open, at: dt.datetime, reason: str
    ) -> list[DockDecision]:
        """The summary of a receipt or shipment closing; an alarm too when a receipt closes
        short."""
        summary = self._summary(kind, progress, at, reason)
        if kind != DockKind.RECEIVE or summary.status not in ("short", "short_and_over"):
            return [summary]
        short = [ln for ln in summary.lines if ln.short]
        alarm = _alarm(
            "receipt_short",
            f"receipt {summary.reference} closed short at {summary.door}: "
            f"{sum(ln.short for ln in short)} missing on {len(short)} line(s)",
            at,
            summary.door,
            {
                "tx_id": summary.tx_id,
                "asn_id": summary.reference,
                "lines": [
                    {"line": ln.line, "short": ln.short, "reported_short": ln.reported_short}
                    for ln in short
                ],
            },
        )
        return [summary, alarm]

    def _summary(
        self, kind: DockKind, progress: _Open, at: dt.datetime, reason: str
    ) -> DockSummary:
        plan = (self.asns if kind == DockKind.RECEIVE else self.orders).get(progress.reference)
        return DockSummary(
            ClosingKind.RECEIPT if kind == DockKind.RECEIVE else ClosingKind.SHIPMENT,
            progress.reference,
            plan.door if plan else progress.door,
            tuple(self._lines(kind, progress, pallets=True)),
            at,
            reason,
        )

    def _lines(self, kind: DockKind, progress: _Open, *, pallets: bool) -> Iterator[LineSummary]:
        """Per line of the plan: expected, done, over (a ship order's pallets first, as lines
        numbered -1, -2, ... when `pallets`)."""
        if kind == DockKind.RECEIVE:
            asn = self.asns.get(progress.reference)
            for line in asn.lines if asn else ():
                yield LineSummary(
                    line.line,
                    _what(line),
                    line.quantity,
                    progress.done.get(line.line, 0),
                    progress.over.get(line.line, 0),
                    progress.damaged.get(line.line, 0),
                    progress.reported_short.get(line.line, 0),
                )
            return
        order = self.orders.get(progress.reference)
        if order is None:
            return
        if pallets:
            for n, sscc in enumerate(order.pallets, start=1):
                yield LineSummary(-n, f"sscc:{sscc}", 1, int(sscc in progress.pallets), 0)
        for ship_line in order.lines:
            yield LineSummary(
                ship_line.line,
                f"gtin:{ship_line.gtin}",
                ship_line.quantity,
                progress.done.get(ship_line.line, 0),
                progress.over.get(ship_line.line, 0),
            )


@dataclass(frozen=True, slots=True)
class _Seen:
    """How the items of a transaction were seen: by which device, as what, when."""

    source: EvidenceSource
    device: str
    evidence_id: str
    started: dt.datetime
    at: dt.datetime
    direction: Direction | None


def _transaction(
    kind: DockKind,
    door: str,
    reference: str | None,
    results: list[ItemResult],
    seen: _Seen,
    weight: WeightCheck | None = None,
) -> DockTransaction:
    return DockTransaction(
        kind,
        door,
        reference,
        tuple(results),
        seen.source,
        seen.device,
        seen.evidence_id,
        seen.started,
        seen.at,
        seen.direction,
        weight,
    )


def _weight_alarm(tx: DockTransaction) -> list[Notice]:
    """A pallet much lighter or heavier than its contents: possibly short, or damaged."""
    check = tx.weight
    if check is None or check.within:
        return []
    side = "lighter" if check.difference_kg < 0 else "heavier"
    return [
        _alarm(
            WEIGHT_MISMATCH,
            f"pallet at {tx.door} weighs {check.measured_kg:.1f} kg, {abs(check.difference_kg):.1f} kg "
            f"{side} than its contents ({check.expected_kg:.1f} kg): possibly short or damaged",
            tx.occurred_at,
            tx.door,
            {"tx_id": tx.tx_id, "measured_kg": check.measured_kg, "expected_kg": check.expected_kg},
        )
    ]


@dataclass(frozen=True, slots=True)
class WeightCheckSettings:
    """How a pallet's weighing is compared with its contents."""

    window_s: float = 120.0  # a weighing this recent belongs to the door's next transaction
    pallet_tare_kg: float = 25.0
    abs_tolerance_kg: float = 2.0
    rel_tolerance: float = 0.02


def ledger_entries(tx: DockTransaction) -> list[LedgerEntry]:
    """What the app stores with a transaction, so that a restart knows what was done."""
    if tx.reference is None:
        return []
    return [
        LedgerEntry(
            tx.kind,
            r.item.key or f"gtin:{r.item.gtin}:{tx.tx_id}:{i}",
            tx.reference,
            r.line,
            r.result,
        )
        for i, r in enumerate(tx.items)
        if r.result in _RECORDED
    ]


def _line_for(asn: Asn, item: Item, progress: _Open) -> AsnLine | None:
    if item.epc:
        for line in asn.lines:
            if item.epc in line.epcs:
                return line
    if item.sscc:
        for line in asn.lines:
            if line.sscc == item.sscc:
                return line
        return None
    if item.gtin:
        matching = [line for line in asn.lines if line.gtin == item.gtin and not line.epcs]
        for line in matching:
            if progress.done.get(line.line, 0) < line.quantity:
                return line
        return matching[-1] if matching else None
    return None


def _what(line: AsnLine) -> str:
    if line.epcs:
        return f"{len(line.epcs)} EPCs"
    return f"sscc:{line.sscc}" if line.sscc else f"gtin:{line.gtin}"


def _alarm(
    code: str, message: str, at: dt.datetime, door: str, details: Mapping[str, object]
) -> Notice:
    return Notice(
        code=code,
        message=message,
        at=at,
        severity=Severity.ERROR,
        location=door,
        details=dict(details),
    )
