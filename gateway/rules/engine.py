"""The rules engine: routes each event to the rule that owns it and collects the decisions.

Every event kind meets its handler in one table (`_HANDLERS`); every handler returns typed
`Decision` values. Pure: events with their timestamps in, decisions out; `on_tick` advances time.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.domain import (
    AnswerResult,
    Asn,
    CancelRequest,
    CloseAnswer,
    CloseCommand,
    CountAnswer,
    CountCommand,
    CountReason,
    CountTransaction,
    Decision,
    DeviceGap,
    Direction,
    DockKind,
    DockResult,
    DockSummary,
    DockTransaction,
    DoorRole,
    Event,
    HandheldAnswer,
    HandheldBatch,
    HandheldCode,
    HandheldResult,
    HandheldScan,
    InputKind,
    Location,
    MoveTransaction,
    NextRequest,
    Notice,
    PackTransaction,
    PalletElsewhere,
    PortalPass,
    Product,
    ProgressRequest,
    Purpose,
    RefData,
    RefDataChange,
    RefDataDeleted,
    RefDataKind,
    RefDataUpdate,
    Rejected,
    RejectedScan,
    Reply,
    RobotReport,
    Scan,
    ScanKind,
    ShipOrder,
    SiteLocationState,
    SiteReceipt,
    TagReadBatch,
    TaskAnswer,
    WeightSample,
    WmsTask,
    WmsTaskDeleted,
    ZoneEvent,
    decode_epc,
    epc_key,
    key_of,
)
from gateway.rules.agv import TaskBoard
from gateway.rules.counts import CycleCounts
from gateway.rules.handheld import HandheldIntake
from gateway.rules.moves import ForkliftMoves
from gateway.rules.packing import Packing
from gateway.rules.portal import PortalTracker
from gateway.rules.receiving import DockRules, item_of_scan
from gateway.rules.refdata_limits import RefDataLimits
from gateway.rules.rejections import RejectionDigest
from gateway.rules.weighing import WeightCapture
from gateway.rules.zones import ZoneTracker


@dataclass(frozen=True, slots=True)
class DockStation:
    """A scanner at a dock door: what it scans is received or shipped there."""

    door: str
    role: DoorRole


# How a rejected message from outside is reported: the notice code and what its message and
# details call the subject.
_REJECTED: Final[Mapping[InputKind, tuple[str, str]]] = {
    InputKind.REFERENCE_DATA: ("reference_data_rejected", "topic"),
    InputKind.AGV_REQUEST: ("agv_request_rejected", "operation"),
    InputKind.ROBOT: ("vda5050_rejected", "topic"),
    InputKind.COMMAND: ("command_rejected", "topic"),
    InputKind.HANDHELD: ("handheld_rejected", "terminal"),
    InputKind.SITE_STATE: ("site_state_rejected", "topic"),
}


class RulesEngine:
    """Pure: events with their timestamps in, decisions out; `on_tick` advances time.

    Args:
        moves: the forklift move rule (forklift and station scanners).
        portals: one tracker per RFID reader id.
        dock: receiving and shipping.
        door_roles: each portal door's role (receiving, shipping or both).
        dock_stations: scanners at dock doors, by device id.
        scales: each scale's door and weight capture, by device id.
        agv: the AGV task board; receipts and moves feed it (None: no AGV tasks).
        refdata_limits: the most reference data records of each kind held (see
            `gateway.rules.refdata_limits`); a kind not given has no limit.
        handheld: handheld terminals' scans (None: not taken).
        packing: scan-verified packing (None: none).
        zones: RFID zone tracking, by reader id.
        counts: cycle counts (None: not taken).
        count_timeout_s: how long a count stays open when its command names no timeout.
        gateway_id: this gateway's id (breaks ties with other gateways' pallet sightings).
        site_memory: the most pallets whose newest sighting by another gateway is kept.
    """

    def __init__(
        self,
        moves: ForkliftMoves,
        portals: Mapping[str, PortalTracker],
        *,
        dock: DockRules | None = None,
        door_roles: Mapping[str, DoorRole] | None = None,
        dock_stations: Mapping[str, DockStation] | None = None,
        scales: Mapping[str, tuple[str, WeightCapture]] | None = None,
        agv: TaskBoard | None = None,
        refdata_limits: Mapping[RefDataKind, int] | None = None,
        handheld: HandheldIntake | None = None,
        packing: Packing | None = None,
        zones: Mapping[str, ZoneTracker] | None = None,
        counts: CycleCounts | None = None,
        count_timeout_s: float = 3600.0,
        gateway_id: str = "",
        site_memory: int = 100_000,
    ) -> None:
        self.moves = moves
        self.portals = dict(portals)
        self.dock = dock or DockRules()
        self.door_roles = dict(door_roles or {})
        self.locations: dict[str, Location] = {}
        self.scales = dict(scales or {})
        self.dock_stations = dict(dock_stations or {})
        self.agv = agv
        self.rejections = RejectionDigest(dict(_REJECTED))
        self.refdata_limits = RefDataLimits(refdata_limits)
        self.handheld = handheld
        self.packing = packing
        self.zones = dict(zones or {})  # by reader id
        self.counts = counts
        self.count_timeout_s = count_timeout_s
        self._recorded: dict[str, str] = {}  # the stock `stock_found` handed in, for one close
        self._recorded_of: frozenset[str] = frozenset()  # ... of these locations
        self.gateway_id = gateway_id
        # Another gateway's newest sighting of each pallet: (since, gateway), least recent first.
        self._site_seen: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._site_memory = site_memory
        self._local: dict[str, tuple[str, float]] = {}  # `site_found`: this gateway's record

    def on_event(self, event: Event) -> list[Decision]:
        """Decisions caused by one event."""
        if isinstance(event, HandheldBatch):  # scan by scan (each sees the ones before it)
            return self._handheld(event)
        handler = _HANDLERS[type(event)]
        return self._to_agv(handler(self, event))

    def pallet_needed(self, event: Event) -> str | None:
        """A pallet (SSCC) whose location `event` needs and the rules do not hold in memory.

        The runner looks it up in storage and hands the answer to `pallet_found` before the
        event; the rules themselves stay pure.
        """
        if isinstance(event, Scan) and event.device_id not in self.dock_stations:
            return self.moves.needs(event)
        if isinstance(event, HandheldBatch):  # the pallets its moves take (one at a time)
            for scan in event.scans:
                label = scan.label
                if (
                    scan.purpose in (Purpose.MOVE, Purpose.COUNT)
                    and isinstance(label, Scan)
                    and label.sscc is not None
                    and not self.moves.knows(label.sscc)
                ):
                    return label.sscc
        return None

    def pallet_found(self, sscc: str, location: str | None) -> None:
        """Storage's location of a pallet `pallet_needed` asked for (None: none recorded)."""
        self.moves.warm(sscc, location)

    def stock_needed(self, event: Event) -> tuple[frozenset[str], frozenset[str]] | None:
        """The recorded stock a count closed by `event` is compared with: (its locations, what
        it saw); None when `event` closes none. The runner reads storage's locations of the
        things recorded at those locations or seen (cases: their pallet's) and hands them to
        `stock_found` before the event, so that the rules stay pure."""
        counts = self.counts
        if counts is None:
            return None
        if isinstance(event, CountCommand) and not event.open:
            opened = counts.get(event.count_id)
            if opened is None:
                return None
            return frozenset(opened.locations), counts.seen_keys(event.count_id)
        if isinstance(event, HandheldBatch):  # sweeps of places no open count covers
            places: set[str] = set()
            keys: set[str] = set()
            for scan in event.scans:
                where = _swept(scan)
                if where is not None and counts.counting(where) is None:
                    places.add(where)
                    keys.update(scan.tags)
            return (frozenset(places), frozenset(keys)) if places else None
        return None

    def stock_found(self, recorded: Mapping[str, str], locations: frozenset[str]) -> None:
        """Storage's answer to `stock_needed`: key -> recorded location, of `locations`."""
        self._recorded = dict(recorded)
        self._recorded_of = locations

    def site_needed(self, event: Event) -> frozenset[str] | None:
        """The pallets whose record in storage (location, since) another gateway's state
        needs compared with; the runner hands them to `site_found` before the event."""
        if isinstance(event, SiteLocationState) and event.pallets:
            return frozenset(sscc for sscc, _ in event.pallets)
        return None

    def site_found(self, local: Mapping[str, tuple[str, float]]) -> None:
        """Storage's answer to `site_needed`: sscc -> (location, since) of those recorded."""
        self._local = dict(local)

    def counts_due(self, now: dt.datetime) -> list[CountCommand]:
        """Closes of the counts whose deadline came (the runner carries them out as events,
        each after `stock_needed`)."""
        if self.counts is None:
            return []
        return [
            CountCommand(
                count_id,
                False,
                now,
                reason=CountReason.SWEEP if count_id.startswith("sweep:") else CountReason.TIMEOUT,
            )
            for count_id in self.counts.due(now)
        ]

    def holds(self, kind: RefDataKind, key: str) -> bool:
        """Whether the rules hold the reference data record `key` of this `kind`."""
        return key in self._records(kind)

    def held_count(self, kind: RefDataKind) -> int:
        """How many reference data records of this `kind` the rules hold."""
        return len(self._records(kind))

    def restore(self, item: RefData, at: dt.datetime) -> None:
        """A record stored before the restart: held again, whatever the count limits say (a
        limit lowered below what is stored refuses new records, and keeps these)."""
        self._take(RefDataUpdate(item, at))

    def next_due(self) -> float | None:
        """When (epoch s, event time) a tick is next due for a portal pass to complete (a tag
        departing); None when none is pending. Other timers run on the regular tick."""
        dues = [due for p in self.portals.values() if (due := p.next_due()) is not None]
        return min(dues, default=None)

    def on_tick(self, now: dt.datetime) -> list[Decision]:
        """Decisions that time alone causes: timeouts, tags that departed, idle receipts, leases."""
        decisions: list[Decision] = list(self.moves.on_tick(now))
        seconds = now.timestamp()
        for portal in self.portals.values():
            decisions.extend(self._passes(portal.on_tick(seconds)))
        decisions.extend(self.dock.on_tick(now))
        for zones in self.zones.values():
            decisions.extend(self._zone_counted(zones.on_tick(seconds)))
        decisions.extend(self.rejections.on_tick(now))
        if self.agv is not None:
            decisions.extend(self.agv.on_tick(now))
        out = self._to_agv(decisions)
        if self.handheld is not None:
            out.extend(self.handheld.on_tick(now, self._handheld_scan))
        return out

    def _to_agv(self, decisions: list[Decision]) -> list[Decision]:
        """Receipts and forklift moves also go to the task board (stock, putaway tasks)."""
        out = list(decisions)
        if self.agv is not None:
            for d in decisions:
                if isinstance(d, DockTransaction):
                    out.extend(self.agv.on_dock(d))
                elif isinstance(d, MoveTransaction) and d.task_id is None:  # forklift, station
                    out.extend(self.agv.on_move(d))
        # Receipts, ships and AGV drops tell the forklift rule where pallets are, so that its
        # "from" locations agree with the task board's stock.
        for d in out:
            if isinstance(d, MoveTransaction) and d.task_id is not None:
                self.moves.located(d.sscc, d.to_location)
            elif isinstance(d, DockTransaction):
                for sscc in d.accepted_pallets:
                    self.moves.located(sscc, d.door if d.kind == DockKind.RECEIVE else None)
        return out

    # --- one handler per event kind ----------------------------------------------------------

    def _scan(self, event: Scan | RejectedScan) -> list[Decision]:
        station = self.dock_stations.get(event.device_id)
        if station is not None and isinstance(event, Scan):
            return list(self.dock.on_scan(event, station.door, station.role))
        return list(self.moves.on_event(event))  # a rejected label is reported the same way

    def _reads(self, event: TagReadBatch) -> list[Decision]:
        portal = self.portals.get(event.reader_id)
        out = self._passes(portal.on_reads(event.reads)) if portal is not None else []
        zones = self.zones.get(event.reader_id)
        if zones is not None:
            out.extend(self._zone_counted(zones.on_reads(event.reads)))
        return out

    def _zone_counted(self, events: list[ZoneEvent]) -> list[Decision]:
        """Zone events, and what an open count of their zone notes of them."""
        out: list[Decision] = list(events)
        counts = self.counts
        if counts is None or not len(counts):
            return out
        for event in events:
            if event.zone is not None:
                seen = counts.seen(epc_key(decode_epc(event.epc), event.epc), event.zone)
                if seen is not None:
                    out.append(seen)
        return out

    def _sample(self, event: WeightSample) -> list[Decision]:
        scale = self.scales.get(event.scale_id)
        if scale is None:
            return []
        door, capture = scale
        weighings = capture.on_sample(event)
        for weighing in weighings:
            self.dock.on_weighing(door, weighing)
        return list(weighings)

    def _request(self, event: NextRequest | ProgressRequest | CancelRequest) -> list[Decision]:
        return [] if self.agv is None else self.agv.on_request(event)

    def _wms_task(self, event: WmsTask | WmsTaskDeleted) -> list[Decision]:
        return [] if self.agv is None else self.agv.on_wms_task(event)

    def _robot(self, event: RobotReport) -> list[Decision]:
        return [] if self.agv is None else self.agv.on_robot(event)

    def _gap(self, event: DeviceGap) -> list[Decision]:
        return list(self.moves.on_gap(event))

    def _rejected(self, event: Rejected) -> list[Decision]:
        at = event.at
        if self.agv is not None and event.kind in (InputKind.AGV_REQUEST, InputKind.ROBOT):
            at = self.agv.now(at)  # AGV input runs on the task board's time
        out: list[Decision] = []
        notice = self.rejections.on_rejected(event, at)
        if notice is not None:
            out.append(notice)
        if event.reply is not None and event.kind is InputKind.HANDHELD:
            out.append(Reply(event.reply, HandheldAnswer(event.subject, (), event.reason)))
        elif event.reply is not None and event.kind is InputKind.COMMAND:  # cmd/count
            out.append(Reply(event.reply, CountAnswer(event.subject, error=event.reason)))
        elif event.reply is not None:
            refused = TaskAnswer(False, AnswerResult.REFUSED, "bad_request", event.reason)
            out.append(Reply(event.reply, refused))
        return out

    def _passes(self, passes: list[PortalPass]) -> list[Decision]:
        out: list[Decision] = []
        for portal_pass in passes:
            out.append(portal_pass)
            role = self.door_roles.get(portal_pass.door)
            if role is not None and portal_pass.direction != Direction.UNKNOWN:
                out.extend(self.dock.on_pass(portal_pass, role))
        return out

    def _deleted(self, event: RefDataDeleted) -> list[Decision]:
        known = self._known(event.kind, event.key)
        if event.kind is RefDataKind.LOCATION:
            self.locations.pop(event.key, None)
            if self.agv is not None:
                self.agv.set_locations(self.locations.values())
        closing: list[Decision] = list(self.dock.delete(event.kind, event.key, event.at))
        self.refdata_limits.counted(event.kind, len(self._records(event.kind)))
        return [*closing, RefDataChange(event.kind, event.key, None)] if known else closing

    def _updated(self, event: RefDataUpdate) -> list[Decision]:
        kind, key = key_of(event.item)
        records = self._records(kind)
        if key not in records and not self.refdata_limits.has_room(kind, len(records)):
            return self._over_limit(kind, key, len(records), event.at)
        return self._take(event)

    def _over_limit(
        self, kind: RefDataKind, key: str, held: int, at: dt.datetime
    ) -> list[Decision]:
        """A new record refused for want of room: nothing held or stored. The first refusal
        raises the alarm; every one is counted as a rejection too, so those after the alarm
        are reported in the rejections' aggregated events."""
        limit = self.refdata_limits.max_count[kind]
        rejected = Rejected(
            InputKind.REFERENCE_DATA,
            f"{kind}/{key}",
            f"not taken: the {kind} limit of {limit:,} records is reached",
            at,
            source=f"{kind} limit",
        )
        notice = self.rejections.on_rejected(rejected, at)
        alarm = self.refdata_limits.refuse(kind, key, held, at)
        if alarm is not None:
            return [alarm]
        return [] if notice is None else [notice]

    def _take(self, event: RefDataUpdate) -> list[Decision]:
        item = event.item
        kind, key = key_of(item)
        same = self._held(kind, key) == item
        match item:
            case Asn():
                self.dock.set_asn(item)
            case ShipOrder():
                self.dock.set_order(item)
            case Product():
                self.dock.set_product(item)
            case Location():
                self.locations[key] = item
                if self.agv is not None and not same:
                    self.agv.set_locations(self.locations.values())
        # The broker redelivers retained data at every reconnect: store only what changed, or
        # the digest of a message not recognised before (so that it is, after a restart).
        if same and event.digest is None:
            return []
        return [RefDataChange(kind, key, item, event.digest)]

    def _held(self, kind: RefDataKind, key: str) -> RefData | None:
        return self._records(kind).get(key)

    def _records(self, kind: RefDataKind) -> Mapping[str, RefData]:
        """The records of `kind` the rules hold, by key."""
        match kind:
            case RefDataKind.ASN:
                return self.dock.asns
            case RefDataKind.SHIPMENT:
                return self.dock.orders
            case RefDataKind.PRODUCT:
                return self.dock.products
            case RefDataKind.LOCATION:
                return self.locations

    def _known(self, kind: RefDataKind, key: str) -> bool:
        return self._held(kind, key) is not None

    def _handheld(self, batch: HandheldBatch) -> list[Decision]:
        if self.handheld is None:
            return []
        try:
            return self.handheld.on_batch(batch, self._handheld_scan)
        finally:  # the stock read for this batch's sweeps serves no other
            self._recorded, self._recorded_of = {}, frozenset()

    def _handheld_scan(
        self, terminal: str, scan: HandheldScan
    ) -> tuple[list[Decision], HandheldResult]:
        """Carry out one handheld scan (`HandheldIntake` calls this once per scan)."""
        seq = scan.seq
        label = scan.label
        if scan.purpose in (Purpose.CARTON, Purpose.CLOSE):  # the carton's own label: any text
            return self._handheld_pack(terminal, scan, label)
        if isinstance(label, RejectedScan):
            return [], HandheldResult(seq, HandheldCode.REJECTED, label.reason)
        if scan.purpose is Purpose.MOVE:
            return self._handheld_move(scan, label)
        if scan.purpose is Purpose.COUNT:
            return self._handheld_count(terminal, scan, label)
        if scan.purpose is Purpose.SWEEP:
            return self._handheld_sweep(terminal, scan, label)
        if scan.purpose in (Purpose.DAMAGE, Purpose.SHORT):
            return self._handheld_report(scan, label)
        if scan.purpose in (Purpose.CARTON, Purpose.PACK, Purpose.CLOSE):
            return self._handheld_pack(terminal, scan, label)
        door = scan.door or ""
        role = DoorRole.RECEIVING if scan.purpose is Purpose.RECEIVE else DoorRole.SHIPPING
        if scan.reference is not None and self.dock.is_closed(scan.reference):
            what = "receipt" if role is DoorRole.RECEIVING else "shipment"
            return [], HandheldResult(
                seq, HandheldCode.LATE_SCAN, f"{what} {scan.reference} was closed before it came"
            )
        if label.kind is ScanKind.LOCATION:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "a location label, not an item")
        decisions = self._to_agv(list(self.dock.on_scan(label, door, role)))
        tx = next((d for d in decisions if isinstance(d, DockTransaction)), None)
        if tx is None or not tx.items:
            return decisions, HandheldResult(seq, HandheldCode.REJECTED, "nothing to count")
        item = tx.items[0]
        return decisions, HandheldResult(seq, item.result.value, item.detail, tx.tx_id)

    def _handheld_report(
        self, scan: HandheldScan, label: Scan
    ) -> tuple[list[Decision], HandheldResult]:
        """Items of a receipt reported damaged or missing, with a reason code."""
        seq, damage = scan.seq, scan.purpose is Purpose.DAMAGE
        settings = self.handheld.settings if self.handheld is not None else None
        reasons = (
            (settings.damage_reasons if damage else settings.short_reasons) if settings else ()
        )
        if scan.reason not in reasons:
            known = ", ".join(sorted(reasons))
            return [], HandheldResult(
                seq, HandheldCode.REJECTED, f"unknown reason {scan.reason!r} (one of {known})"
            )
        if scan.reference is not None and self.dock.is_closed(scan.reference):
            return [], HandheldResult(
                seq, HandheldCode.LATE_SCAN, f"receipt {scan.reference} was closed before it came"
            )
        made = self.dock.report(
            DockResult.DAMAGED if damage else DockResult.REPORTED_SHORT,
            label,
            scan.door or "",
            reason=scan.reason or "",
            quantity=scan.quantity,
            line=scan.line,
            reference=scan.reference,
            evidence=f"handheld:{label.device_id}:{seq}",
        )
        if isinstance(made, str):
            return [], HandheldResult(seq, HandheldCode.REJECTED, made)
        decisions = self._to_agv(list(made))
        tx = next(d for d in decisions if isinstance(d, DockTransaction))
        return decisions, HandheldResult(seq, tx.items[0].result.value, scan.reason, tx.tx_id)

    def _handheld_pack(
        self, terminal: str, scan: HandheldScan, label: Scan | RejectedScan
    ) -> tuple[list[Decision], HandheldResult]:
        """A carton opened, an item packed, a carton closed (`gateway.rules.packing`)."""
        seq, at, packing = scan.seq, scan.scanned_at, self.packing
        if packing is None:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "no packing at this gateway")
        if scan.purpose is Purpose.CARTON:
            order = self.dock.orders.get(scan.reference or "")
            made, result, detail = packing.open(terminal, label.raw, order, scan.station or "", at)
            return made, HandheldResult(seq, result, detail)
        if scan.purpose is Purpose.CLOSE:
            carton = packing.cartons.get(terminal)
            if carton is not None and carton.carton != label.raw:
                why = f"carton {carton.carton} is open, not {label.raw}"
                return [], HandheldResult(seq, HandheldCode.REJECTED, why)
            made, result, detail = packing.close(terminal, at, terminal)
            tx = next((d for d in made if isinstance(d, PackTransaction)), None)
            return made, HandheldResult(seq, result, detail, tx.tx_id if tx else None)
        item = item_of_scan(label) if isinstance(label, Scan) else None
        if item is None or item.gtin is None:
            why = label.reason if isinstance(label, RejectedScan) else "not an item label"
            return [], HandheldResult(seq, HandheldCode.REJECTED, why)
        carton = packing.cartons.get(terminal)
        order = self.dock.orders.get(carton.order_id) if carton else None
        product = self.dock.products.get(item.gtin)
        made, result, detail = packing.add(terminal, item, order, product, at)
        return made, HandheldResult(seq, result, detail)

    def _handheld_count(
        self, terminal: str, scan: HandheldScan, label: Scan
    ) -> tuple[list[Decision], HandheldResult]:
        """A pallet found at a location, checked against where the gateway has it; a mismatch
        is an event (nothing is moved: a count is not a move)."""
        seq, to = scan.seq, scan.to
        if label.kind is not ScanKind.PALLET or label.sscc is None:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "a count needs a pallet label")
        if to is None or isinstance(to, RejectedScan) or to.location is None:
            why = to.reason if isinstance(to, RejectedScan) else "a count needs a location label"
            return [], HandheldResult(seq, HandheldCode.REJECTED, why)
        found, recorded = to.location, self.moves.location_of(label.sscc)
        noted: list[Decision] = []
        if self.counts is not None:
            seen = self.counts.seen(f"sscc:{label.sscc}", found, scan.count_id)
            noted = [] if seen is None else [seen]
        if recorded == found:
            return noted, HandheldResult(seq, HandheldCode.COUNTED)
        code = HandheldCode.MISPLACED if recorded else HandheldCode.UNKNOWN_PALLET
        detail = f"recorded at {recorded}" if recorded else "the gateway has it nowhere"
        notice = Notice(
            code="count_mismatch",
            message=f"pallet {label.sscc} counted at {found}: {detail}",
            at=scan.scanned_at,
            device_id=terminal,
            location=found,
            details={"sscc": label.sscc, "found": found, "recorded": recorded},
        )
        return [*noted, notice], HandheldResult(seq, code, detail)

    def _handheld_sweep(
        self, terminal: str, scan: HandheldScan, label: Scan
    ) -> tuple[list[Decision], HandheldResult]:
        """An RFID sweep of one location: what it read is noted by the open count of the
        location; with none open there, it is a count of its own, closed at once."""
        seq, counts, where = scan.seq, self.counts, _swept(scan)
        if counts is None:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "no cycle counts at this gateway")
        if where is None:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "a sweep needs a location label")
        open_id = counts.counting(where)
        if open_id is not None and scan.count_id in (None, open_id):
            noted = [d for key in scan.tags if (d := counts.seen(key, where)) is not None]
            detail = f"{len(scan.tags)} tags for count {open_id}"
            return list(noted), HandheldResult(seq, HandheldCode.COUNTED, detail)
        if scan.count_id is not None:
            why = f"count {scan.count_id} does not count {where}"
            return [], HandheldResult(seq, HandheldCode.REJECTED, why)
        count_id, at = f"sweep:{terminal}:{seq}", scan.scanned_at
        opened = counts.open(count_id, (where,), at, at, f"terminal {terminal}")
        if isinstance(opened, str):
            return [], HandheldResult(seq, HandheldCode.REJECTED, opened)
        noted = [d for key in scan.tags if (d := counts.seen(key, where)) is not None]
        if where not in self._recorded_of:
            # Released later than its batch (it waited for scans before it): the stock was not
            # read for it. Its deadline has come: the runner closes it with the stock next.
            detail = f"{len(scan.tags)} tags; count {count_id} closes at once"
            return [opened, *noted], HandheldResult(seq, HandheldCode.COUNTED, detail)
        tx = counts.close(count_id, self._recorded, at, CountReason.SWEEP)
        assert tx is not None  # opened just above
        detail = (
            f"found {len(tx.found)}, missing {len(tx.missing)}, unexpected {len(tx.unexpected)}"
        )
        return [tx], HandheldResult(seq, HandheldCode.COUNTED, detail, tx.tx_id)

    def _site(self, event: SiteLocationState) -> list[Decision]:
        """Another gateway's pallets at one of its locations: each that it put there later than
        this gateway last recorded it (newest event time wins; a tie goes to the larger gateway
        id) is there now: the forklift rule takes it as the pallet's origin, and this gateway's
        own record of it goes."""
        local, self._local = self._local, {}
        out: list[Decision] = []
        for sscc, since in event.pallets:
            theirs = (since, event.gateway)
            seen = self._site_seen.get(sscc)
            if seen is not None and theirs <= seen:
                continue
            mine = local.get(sscc)
            if mine is not None and theirs <= (mine[1], self.gateway_id):
                continue
            self._site_seen[sscc] = theirs
            self._site_seen.move_to_end(sscc)
            while len(self._site_seen) > self._site_memory:
                self._site_seen.popitem(last=False)
            self.moves.located(sscc, event.location)
            if mine is not None and self.agv is not None:
                self.agv.stock.forget(sscc)
            out.append(
                PalletElsewhere(sscc, event.location, since, event.gateway, mine is not None)
            )
        return out

    def _site_receipt(self, event: SiteReceipt) -> list[Decision]:
        """Another gateway's receipt: the site's task board puts its pallets away."""
        return [] if self.agv is None else self.agv.on_dock(event.tx, site=True)

    def _count(self, command: CountCommand) -> list[Decision]:
        """Open or close a cycle count (`gateway.rules.counts`)."""
        counts, count_id = self.counts, command.count_id
        if counts is None:
            return _answer(command, CountAnswer(count_id, error="no cycle counts at this gateway"))
        if command.open:
            return self._open_count(counts, command)
        recorded, self._recorded, self._recorded_of = self._recorded, {}, frozenset()
        tx = counts.close(count_id, recorded, command.at, command.reason)
        if tx is None:
            done = counts.closed_tx(count_id)
            answer = (
                CountAnswer(count_id, "closed", tx_id=done)
                if done is not None
                else CountAnswer(count_id, error=f"no open count {count_id}")
            )
            return _answer(command, answer)
        self._adjust(tx)
        totals = {
            "expected": tx.expected,
            "found": len(tx.found),
            "missing": len(tx.missing),
            "unexpected": len(tx.unexpected),
            "misplaced": len(tx.misplaced),
            "moved": len(tx.moved),
        }
        answer = CountAnswer(count_id, "closed", tx.locations, tx.tx_id, totals)
        return [tx, *_answer(command, answer)]

    def _open_count(self, counts: CycleCounts, command: CountCommand) -> list[Decision]:
        count_id = command.count_id
        places = self._places(command)
        if isinstance(places, str):
            return _answer(command, CountAnswer(count_id, error=places))
        timeout = command.timeout_s if command.timeout_s is not None else self.count_timeout_s
        deadline = command.at + dt.timedelta(seconds=timeout)
        opened = counts.open(count_id, places, command.at, deadline, command.source)
        if isinstance(opened, str):
            held = counts.get(count_id)
            if held is not None and set(held.locations) == set(places):  # a repeat
                return _answer(command, CountAnswer(count_id, "open", held.locations))
            return _answer(command, CountAnswer(count_id, error=opened))
        out: list[Decision] = [opened]
        # What the zones hold already is seen: it will not arrive again.
        for tracker in self.zones.values():
            for zone, epcs in tracker.snapshot().items():
                if zone in places:
                    for epc in epcs:
                        seen = counts.seen(epc_key(decode_epc(epc), epc), zone)
                        if seen is not None:
                            out.append(seen)
        out.extend(_answer(command, CountAnswer(count_id, "open", opened.locations)))
        return out

    def _places(self, command: CountCommand) -> tuple[str, ...] | str:
        """The locations a count's command names (a zone or an aisle expanded from the location
        master; a zone is also an RFID zone's own location); or why there are none."""
        if command.locations:
            return command.locations
        if command.zone is not None:
            zone = command.zone
            named = {n for n, loc in self.locations.items() if loc.zone == zone}
            named |= {z for t in self.zones.values() for z in t.settings.zones if z == zone}
            return tuple(sorted(named)) or f"no location of zone {zone} is known"
        if command.aisle is not None:
            aisle = command.aisle
            named = {n for n, loc in self.locations.items() if loc.aisle == aisle}
            return tuple(sorted(named)) or f"no location of aisle {aisle} is known"
        return "a count needs locations, a zone or an aisle"

    def _adjust(self, tx: CountTransaction) -> None:
        """The stock the rules hold follows a count's adjustments of pallets."""
        for key, (_, after) in tx.adjustments.items():
            if not key.startswith("sscc:"):
                continue
            sscc = key.removeprefix("sscc:")
            self.moves.located(sscc, after)
            if self.agv is not None:
                if after is None:
                    self.agv.stock.forget(sscc)
                else:
                    self.agv.stock.apply_move(sscc, after)

    def _handheld_move(
        self, scan: HandheldScan, label: Scan
    ) -> tuple[list[Decision], HandheldResult]:
        seq, to = scan.seq, scan.to
        if label.kind is not ScanKind.PALLET:
            return [], HandheldResult(seq, HandheldCode.REJECTED, "a move needs a pallet label")
        if to is None or isinstance(to, RejectedScan) or to.kind is not ScanKind.LOCATION:
            why = to.reason if isinstance(to, RejectedScan) else "a move needs a location label"
            return [], HandheldResult(seq, HandheldCode.REJECTED, why)
        decisions = [*self.moves.on_event(label), *self.moves.on_event(to)]
        decisions = self._to_agv(decisions)
        move = next((d for d in decisions if isinstance(d, MoveTransaction)), None)
        if move is not None:
            return decisions, HandheldResult(seq, HandheldCode.MOVED, None, move.tx_id)
        notice = next(
            (d for d in decisions if isinstance(d, Notice) and d.device_id == label.device_id),
            None,
        )
        if notice is not None:
            return decisions, HandheldResult(seq, notice.code, notice.message)
        return decisions, HandheldResult(seq, HandheldCode.NO_CHANGE)

    def _close(self, command: CloseCommand) -> list[Decision]:
        decisions: list[Decision] = list(self.dock.close(command.reference, command.at))
        if command.reply is not None:
            summary = next((d for d in decisions if isinstance(d, DockSummary)), None)
            answer = (
                CloseAnswer(command.reference, summary.status, summary.tx_id)
                if summary is not None
                else CloseAnswer(
                    command.reference, error="no open receipt or shipment with this reference"
                )
            )
            decisions.append(Reply(command.reply, answer))
        return decisions


# Every event kind and the engine's handler of it.
_HANDLERS: Final[Mapping[type[Any], Callable[[RulesEngine, Any], list[Decision]]]] = {
    Scan: RulesEngine._scan,
    RejectedScan: RulesEngine._scan,
    DeviceGap: RulesEngine._gap,
    TagReadBatch: RulesEngine._reads,
    WeightSample: RulesEngine._sample,
    RefDataUpdate: RulesEngine._updated,
    RefDataDeleted: RulesEngine._deleted,
    CloseCommand: RulesEngine._close,
    NextRequest: RulesEngine._request,
    ProgressRequest: RulesEngine._request,
    CancelRequest: RulesEngine._request,
    WmsTask: RulesEngine._wms_task,
    WmsTaskDeleted: RulesEngine._wms_task,
    RobotReport: RulesEngine._robot,
    Rejected: RulesEngine._rejected,
    HandheldBatch: RulesEngine._handheld,
    CountCommand: RulesEngine._count,
    SiteLocationState: RulesEngine._site,
    SiteReceipt: RulesEngine._site_receipt,
}


def _answer(command: CountCommand, answer: CountAnswer) -> list[Decision]:
    """The reply to a count command, when it asked for one."""
    return [] if command.reply is None else [Reply(command.reply, answer)]


def _swept(scan: HandheldScan) -> str | None:
    """The location a handheld sweep scanned (None: not a sweep, or no location label)."""
    label = scan.label
    if scan.purpose is not Purpose.SWEEP or not isinstance(label, Scan):
        return None
    return label.location if label.kind is ScanKind.LOCATION else None
