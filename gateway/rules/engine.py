"""The rules engine: routes each event to the rule that owns it and collects the decisions.

Every event kind meets its handler in one table (`_HANDLERS`); every handler returns typed
`Decision` values. Pure: events with their timestamps in, decisions out; `on_tick` advances time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.domain import (
    AnswerResult,
    Asn,
    CancelRequest,
    CloseAnswer,
    CloseCommand,
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
    TagReadBatch,
    TaskAnswer,
    WeightSample,
    WmsTask,
    WmsTaskDeleted,
    key_of,
)
from gateway.rules.agv import TaskBoard
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
            decisions.extend(zones.on_tick(seconds))
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
            out.extend(zones.on_reads(event.reads))
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
        return self.handheld.on_batch(batch, self._handheld_scan)

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
        if recorded == found:
            return [], HandheldResult(seq, HandheldCode.COUNTED)
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
        return [notice], HandheldResult(seq, code, detail)

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
}
