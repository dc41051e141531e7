"""The rules engine: routes each event to the rule that owns it and collects the decisions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.agv_api import BadRequest, parse_wms_task
from gateway.domain import (
    AgvRequest,
    CloseCommand,
    CommandResponse,
    Direction,
    Event,
    MoveTransaction,
    Notice,
    PortalPass,
    RejectedScan,
    RobotMessage,
    Scan,
    Severity,
    TagReadBatch,
    WmsMessage,
)
from gateway.refdata import Asn, Deleted, Location, Product, Rejected, ShipOrder, parse_message
from gateway.rules.agv import TaskBoard, TaskChanged
from gateway.rules.moves import ForkliftMoves
from gateway.rules.portal import PortalTracker
from gateway.rules.receiving import DockRules, DockSummary, DockTransaction
from gateway.rules.weighing import WeightCapture, WeightSample

Decision = (
    MoveTransaction
    | Notice
    | PortalPass
    | DockTransaction
    | DockSummary
    | CommandResponse
    | TaskChanged
)


@dataclass(frozen=True, slots=True)
class DockStation:
    """A scanner at a dock door: what it scans is received or shipped there."""

    door: str
    role: str  # "receiving" or "shipping"


@dataclass(frozen=True, slots=True)
class RefDataChange:
    """Reference data accepted (or deleted): the app stores it so that a restart has it."""

    kind: str
    key: str
    item: Asn | ShipOrder | Product | Location | None  # None: deleted


class RulesEngine:
    """Pure: events with their timestamps in, decisions out; `on_tick` advances time.

    Args:
        moves: the forklift move rule (forklift and station scanners).
        portals: one tracker per RFID reader id.
        dock: receiving and shipping.
        site: the site id (reference data topics carry it).
        door_roles: each door's role (receiving, shipping or both).
        dock_stations: scanners at dock doors, by device id.
        scales: each scale's door and weight capture, by device id.
        agv: the AGV task board; receipts and moves feed it (None: no AGV tasks).
    """

    def __init__(
        self,
        moves: ForkliftMoves,
        portals: Mapping[str, PortalTracker],
        *,
        dock: DockRules | None = None,
        site: str = "",
        door_roles: Mapping[str, str] | None = None,
        dock_stations: Mapping[str, DockStation] | None = None,
        scales: Mapping[str, tuple[str, WeightCapture]] | None = None,
        agv: TaskBoard | None = None,
    ) -> None:
        self.moves = moves
        self.portals = dict(portals)
        self.dock = dock or DockRules()
        self.site = site
        self.door_roles = dict(door_roles or {})
        self.locations: dict[str, Location] = {}
        self.scales = dict(scales or {})
        self.dock_stations = dict(dock_stations or {})
        self.agv = agv

    def on_event(self, event: Event) -> list[Any]:
        """Decisions caused by one event."""
        return self._to_agv(self._decide(event))

    def on_tick(self, now: dt.datetime) -> list[Any]:
        """Decisions that time alone causes: timeouts, tags that departed, idle receipts, leases."""
        decisions: list[Any] = list(self.moves.on_tick(now))
        seconds = now.timestamp()
        for portal in self.portals.values():
            decisions.extend(self._passes(portal.on_tick(seconds)))
        decisions.extend(self.dock.on_tick(now))
        if self.agv is not None:
            decisions.extend(self.agv.on_tick(now))
        return self._to_agv(decisions)

    def _to_agv(self, decisions: list[Any]) -> list[Any]:
        """Receipts and forklift moves also go to the task board (stock, putaway tasks)."""
        if self.agv is None:
            return decisions
        out = list(decisions)
        for d in decisions:
            if isinstance(d, DockTransaction):
                out.extend(self.agv.on_dock(d))
            elif isinstance(d, MoveTransaction) and d.task_id is None:  # forklift or station
                out.extend(self.agv.on_move(d))
        # Receipts, ships and AGV drops tell the forklift rule where pallets are, so that its
        # "from" locations agree with the task board's stock.
        for d in out:
            if isinstance(d, MoveTransaction) and d.task_id is not None:
                self.moves.located(d.sscc, d.to_location)
            elif isinstance(d, DockTransaction):
                for sscc in d.accepted_pallets:
                    self.moves.located(sscc, d.door if d.kind == "receive" else None)
        return out

    def _decide(self, event: Event) -> list[Any]:
        if isinstance(event, AgvRequest | RobotMessage):
            if self.agv is None:
                return []
            if isinstance(event, AgvRequest):
                return self.agv.on_request(event)
            return self.agv.on_robot(event)
        if isinstance(event, TagReadBatch):
            portal = self.portals.get(event.reader_id)
            return self._passes(portal.on_reads(event.reads)) if portal is not None else []
        if isinstance(event, WmsMessage):
            return self._reference(event)
        if isinstance(event, CloseCommand):
            return self._close(event)
        if isinstance(event, WeightSample):
            scale = self.scales.get(event.scale_id)
            if scale is None:
                return []
            door, capture = scale
            weighings = capture.on_sample(event)
            for weighing in weighings:
                self.dock.on_weighing(door, weighing)
            return list(weighings)
        station = self.dock_stations.get(event.device_id)
        if station is not None and isinstance(event, Scan):
            return list(self.dock.on_scan(event, station.door, station.role))
        if station is not None and isinstance(event, RejectedScan):
            return self.moves.on_event(event)  # a rejected label is reported the same way
        return list(self.moves.on_event(event))

    def _passes(self, passes: list[PortalPass]) -> list[Any]:
        out: list[Any] = []
        for portal_pass in passes:
            out.append(portal_pass)
            role = self.door_roles.get(portal_pass.door)
            if role is not None and portal_pass.direction is not Direction.UNKNOWN:
                out.extend(self.dock.on_pass(portal_pass, role))
        return out

    def _reference(self, message: WmsMessage) -> list[Any]:
        task_prefix = f"wms/{self.site}/task/"
        if message.topic.startswith(task_prefix) and self.agv is not None:
            task = parse_wms_task(message.topic.removeprefix(task_prefix), message.payload)
            if isinstance(task, BadRequest):
                return [_rejected(message, task.reason)]
            return self.agv.on_wms_task(task, message.at)
        parsed = parse_message(message.topic, message.payload, self.site)
        if isinstance(parsed, Rejected):
            return [_rejected(message, parsed.reason)]
        if isinstance(parsed, Deleted):
            known = self._known(parsed.kind, parsed.key)
            if parsed.kind == "location":
                self.locations.pop(parsed.key, None)
                if self.agv is not None:
                    self.agv.set_locations(self.locations.values())
            closing: list[Any] = list(self.dock.delete(parsed.kind, parsed.key, message.at))
            return [*closing, RefDataChange(parsed.kind, parsed.key, None)] if known else closing
        if isinstance(parsed, Asn):
            same = self.dock.asns.get(parsed.asn_id) == parsed
            self.dock.set_asn(parsed)
            key = parsed.asn_id
        elif isinstance(parsed, ShipOrder):
            same = self.dock.orders.get(parsed.order_id) == parsed
            self.dock.set_order(parsed)
            key = parsed.order_id
        elif isinstance(parsed, Product):
            same = self.dock.products.get(parsed.gtin) == parsed
            self.dock.set_product(parsed)
            key = parsed.gtin
        else:
            same = self.locations.get(parsed.location) == parsed
            self.locations[parsed.location] = parsed
            key = parsed.location
            if self.agv is not None and not same:
                self.agv.set_locations(self.locations.values())
        # The broker redelivers retained data at every reconnect: store only what changed.
        kind = {Asn: "asn", ShipOrder: "shipment", Product: "product", Location: "location"}[
            type(parsed)
        ]
        return [] if same else [RefDataChange(kind, key, parsed)]

    def _known(self, kind: str, key: str) -> bool:
        if kind == "asn":
            return key in self.dock.asns
        if kind == "shipment":
            return key in self.dock.orders
        if kind == "product":
            return key in self.dock.products
        return key in self.locations

    def _close(self, command: CloseCommand) -> list[Any]:
        decisions: list[Any] = list(self.dock.close(command.reference, command.at))
        if command.response_topic:
            summary = next((d for d in decisions if isinstance(d, DockSummary)), None)
            payload: dict[str, Any] = (
                {
                    "ok": True,
                    "reference": command.reference,
                    "status": summary.status,
                    "tx_id": summary.tx_id,
                }
                if summary is not None
                else {
                    "ok": False,
                    "reference": command.reference,
                    "error": "no open receipt or shipment with this reference",
                }
            )
            decisions.append(CommandResponse(command.response_topic, command.correlation, payload))
        return decisions


def _rejected(message: WmsMessage, reason: str) -> Notice:
    return Notice(
        code="reference_data_rejected",
        message=f"{message.topic}: {reason}",
        at=message.at,
        severity=Severity.WARNING,
        details={"topic": message.topic, "reason": reason},
    )
