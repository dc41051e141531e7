"""The wire contract: MQTT topics and the JSON payloads published on them.

Each payload has a JSON Schema in `gateway/schemas/` (see `docs/mqtt.md`). Payloads are built
only here, so the schema, the docs and the code change together.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.domain import MoveTransaction, Notice, PortalPass, Severity
from gateway.epc import decode_epc
from gateway.rules.receiving import DockSummary, DockTransaction
from gateway.storage import OutboxMessage

if TYPE_CHECKING:  # gateway.rules.agv builds on this module
    from gateway.rules.agv import TaskChanged

WIRE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one gateway: `gw/{site}/{gateway}/...`."""

    site: str
    gateway: str

    @property
    def base(self) -> str:
        """The prefix every topic of this gateway starts with."""
        return f"gw/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        """Retained online/offline status; also the last will."""
        return f"{self.base}/status"

    def device_status(self, device_id: str) -> str:
        """Retained status of one device."""
        return f"{self.base}/device/{device_id}/status"

    def tx(self, kind: str) -> str:
        """Transactions of one kind: receive, ship or move."""
        return f"{self.base}/tx/{kind}"

    def summary(self, kind: str) -> str:
        """Closed receipts (`receipt`) and shipments (`shipment`)."""
        return f"{self.base}/{kind}"

    @property
    def epcis(self) -> str:
        """GS1 EPCIS 2.0 documents of the same transactions (optional output)."""
        return f"{self.base}/epcis"

    @property
    def event(self) -> str:
        """Notices: rejected scans, timed-out moves and other things worth seeing."""
        return f"{self.base}/event"

    def debug_pass(self, door: str) -> str:
        """Portal passes of one door, for commissioning (debug option, rate-limited, QoS 0)."""
        return f"{self.base}/debug/pass/{door}"

    @property
    def alarm(self) -> str:
        """Exceptions that need a person."""
        return f"{self.base}/alarm"

    @property
    def agv_task(self) -> str:
        """Every change of an AGV task."""
        return f"{self.base}/agv/task"

    def agv_request(self, op: str) -> str:
        """Where fleet controllers send `next`, `progress` and `cancel` requests."""
        return f"{self.base}/agv/{op}"


def iso(at: dt.datetime) -> str:
    """RFC 3339 timestamp in UTC with milliseconds."""
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def move_payload(tx: MoveTransaction, topics: Topics) -> dict[str, Any]:
    """The `tx/move` payload."""
    return {
        "version": WIRE_VERSION,
        "tx_id": tx.tx_id,
        "type": "move",
        "site": topics.site,
        "gateway": topics.gateway,
        "status": "confirmed",
        "sscc": tx.sscc,
        "from_location": tx.from_location,
        "to_location": tx.to_location,
        "exceptions": list(tx.exceptions),
        "task_id": tx.task_id,
        "evidence": {
            "device": tx.device_id,
            "pallet_scanned_at": iso(tx.pallet_scanned_at),
            "location_scanned_at": iso(tx.confirmed_at),
        },
        "occurred_at": iso(tx.confirmed_at),
    }


def notice_payload(notice: Notice, topics: Topics) -> dict[str, Any]:
    """The `event` and `alarm` payload."""
    return {
        "version": WIRE_VERSION,
        "event_id": notice.event_id,
        "code": notice.code,
        "severity": notice.severity.value,
        "message": notice.message,
        "site": topics.site,
        "gateway": topics.gateway,
        "device": notice.device_id,
        "location": notice.location,
        "details": notice.details,
        "occurred_at": iso(notice.at),
    }


def move_message(tx: MoveTransaction, topics: Topics) -> OutboxMessage:
    """A move, ready for the outbox."""
    return OutboxMessage(tx.tx_id, topics.tx("move"), encode(move_payload(tx, topics)))


def notice_message(notice: Notice, topics: Topics) -> OutboxMessage:
    """A notice for the outbox: errors go to `alarm`, the rest to `event`."""
    topic = topics.alarm if notice.severity is Severity.ERROR else topics.event
    return OutboxMessage(notice.event_id, topic, encode(notice_payload(notice, topics)))


def gateway_status_payload(
    *,
    online: bool,
    topics: Topics,
    version: str,
    started_at: dt.datetime,
    reason: str,
    outbox: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The retained gateway status (and, offline, the last will)."""
    payload: dict[str, Any] = {
        "version": WIRE_VERSION,
        "state": "online" if online else "offline",
        "site": topics.site,
        "gateway": topics.gateway,
        "software_version": version,
        "started_at": iso(started_at),
        "reason": reason,
    }
    if outbox is not None:
        payload["outbox"] = outbox
    return payload


def pass_payload(portal_pass: PortalPass, topics: Topics) -> dict[str, Any]:
    """The `debug/pass/{door}` payload: a portal pass with decoded EPCs and the evidence."""
    tags = []
    for tag in portal_pass.tags:
        epc = decode_epc(tag.epc)
        tags.append(
            {
                "epc": tag.epc,
                "scheme": epc.scheme,
                "uri": epc.uri,
                "gtin": epc.gtin,
                "sscc": epc.sscc,
                "reads": tag.reads,
                "antennas": list(tag.antennas),
                "peak_rssi": tag.peak_rssi,
                "first_seen": iso(dt.datetime.fromtimestamp(tag.first_seen, dt.UTC)),
                "last_seen": iso(dt.datetime.fromtimestamp(tag.last_seen, dt.UTC)),
            }
        )
    return {
        "version": WIRE_VERSION,
        "pass_id": portal_pass.pass_id,
        "site": topics.site,
        "gateway": topics.gateway,
        "door": portal_pass.door,
        "reader": portal_pass.reader_id,
        "direction": portal_pass.direction.value,
        "separation_s": portal_pass.separation_s,
        "started_at": iso(dt.datetime.fromtimestamp(portal_pass.started_at, dt.UTC)),
        "ended_at": iso(dt.datetime.fromtimestamp(portal_pass.ended_at, dt.UTC)),
        "tags": tags,
    }


def dock_payload(tx: DockTransaction, topics: Topics) -> dict[str, Any]:
    """The `tx/receive` and `tx/ship` payload."""
    items = [
        {
            "key": r.item.key,
            "epc": r.item.epc,
            "uri": r.item.uri,
            "gtin": r.item.gtin,
            "serial": r.item.serial,
            "sscc": r.item.sscc,
            "lot": r.item.lot,
            "expiry": r.item.expiry.isoformat() if r.item.expiry else None,
            "line": r.line,
            "result": r.result,
            "detail": r.detail,
        }
        for r in tx.items
    ]
    return {
        "version": WIRE_VERSION,
        "tx_id": tx.tx_id,
        "type": tx.kind,
        "site": topics.site,
        "gateway": topics.gateway,
        "door": tx.door,
        ("asn_id" if tx.kind == "receive" else "order_id"): tx.reference,
        "status": tx.status,
        "items": items,
        "exceptions": [
            {
                "code": r.result,
                "item": r.item.key or r.item.gtin,
                "line": r.line,
                "detail": r.detail,
            }
            for r in tx.items
            if r.result != "accepted"
        ]
        + _weight_exceptions(tx),
        "weight": None
        if tx.weight is None
        else {
            "measured_kg": round(tx.weight.measured_kg, 3),
            "expected_kg": round(tx.weight.expected_kg, 3),
            "difference_kg": round(tx.weight.difference_kg, 3),
            "tolerance_kg": round(tx.weight.tolerance_kg, 3),
            "within": tx.weight.within,
        },
        "evidence": {
            "source": tx.source,
            "device": tx.device,
            "evidence_id": tx.evidence_id,
            "direction": tx.direction,
            "started_at": iso(tx.started_at),
        },
        "occurred_at": iso(tx.occurred_at),
    }


def _weight_exceptions(tx: DockTransaction) -> list[dict[str, Any]]:
    check = tx.weight
    if check is None or check.within:
        return []
    detail = (
        f"measured {check.measured_kg:.1f} kg, expected {check.expected_kg:.1f}"
        f" ± {check.tolerance_kg:.1f} kg"
    )
    return [{"code": "weight_mismatch", "item": None, "line": None, "detail": detail}]


def summary_payload(summary: DockSummary, topics: Topics) -> dict[str, Any]:
    """The `receipt` and `shipment` payload: a closed receipt or shipment."""
    return {
        "version": WIRE_VERSION,
        "tx_id": summary.tx_id,
        "type": summary.kind,
        "site": topics.site,
        "gateway": topics.gateway,
        "reference": summary.reference,
        "door": summary.door,
        "status": summary.status,
        "reason": summary.reason,
        "lines": [
            {
                "line": line.line,
                "what": line.what,
                "expected": line.expected,
                "done": line.done,
                "short": line.short,
                "over": line.over,
            }
            for line in summary.lines
        ],
        "closed_at": iso(summary.closed_at),
    }


def task_event_payload(change: TaskChanged, task: dict[str, Any], topics: Topics) -> dict[str, Any]:
    """The `agv/task` payload: what happened to a task, and the task as it is now."""
    return {
        "version": WIRE_VERSION,
        "event_id": change.event_id,
        "site": topics.site,
        "gateway": topics.gateway,
        "event": change.event,
        "task": task,
    }
