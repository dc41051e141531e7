"""The JSON payloads the gateway publishes, built from domain values.

Each payload has a JSON Schema in `gateway/schemas/` (see `docs/mqtt.md`). Payloads are built
only here (AGV task answers in `gateway.wire.agv`, EPCIS in `gateway.wire.epcis`), so the
schema, the docs and the code change together.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.domain import (
    WEIGHT_MISMATCH,
    CloseAnswer,
    CountAnswer,
    CountTransaction,
    DockSummary,
    DockTransaction,
    MoveTransaction,
    Notice,
    PackTransaction,
    PortalPass,
    TaskChanged,
    ZoneEvent,
    decode_epc,
    thing_kind,
)
from gateway.wire.codec import WIRE_VERSION, iso
from gateway.wire.topics import Topics


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
    return [{"code": WEIGHT_MISMATCH, "item": None, "line": None, "detail": detail}]


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
                "damaged": line.damaged,
                "reported_short": line.reported_short,
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


def close_answer_payload(answer: CloseAnswer) -> dict[str, Any]:
    """The answer to `cmd/close`."""
    if answer.ok:
        return {
            "ok": True,
            "reference": answer.reference,
            "status": answer.status,
            "tx_id": answer.tx_id,
        }
    return {"ok": False, "reference": answer.reference, "error": answer.error}


def pack_payload(tx: PackTransaction, topics: Topics) -> dict[str, Any]:
    """The `tx/pack` payload: a carton closed at a pack station, with its SSCC and contents."""
    return {
        "version": WIRE_VERSION,
        "tx_id": tx.tx_id,
        "type": "pack",
        "site": topics.site,
        "gateway": topics.gateway,
        "sscc": tx.sscc,
        "order_id": tx.order_id,
        "station": tx.station,
        "carton": tx.carton,
        "device": tx.device,
        "items": [
            {
                "gtin": p.item.gtin,
                "serial": p.item.serial,
                "lot": p.item.lot,
                "expiry": None if p.item.expiry is None else p.item.expiry.isoformat(),
                "line": p.line,
                "packed_at": iso(p.at),
            }
            for p in tx.items
        ],
        "opened_at": iso(tx.opened_at),
        "closed_at": iso(tx.closed_at),
    }


def zone_event_payload(event: ZoneEvent, topics: Topics) -> dict[str, Any]:
    """The `zone/event` payload: a tag arrived in, moved between or departed from zones."""
    decoded = decode_epc(event.epc)
    return {
        "version": WIRE_VERSION,
        "event_id": event.event_id,
        "site": topics.site,
        "gateway": topics.gateway,
        "change": event.change.value,
        "epc": event.epc,
        "uri": decoded.uri,
        "zone": event.zone,
        "previous": event.previous,
        "reader": event.reader_id,
        "at": iso(dt.datetime.fromtimestamp(event.at, dt.UTC)),
    }


def _thing(key: str) -> dict[str, Any]:
    """A counted thing by its key: {"sscc"}, {"gtin", "serial"} or {"epc"}."""
    kind, _, rest = key.partition(":")
    if kind == "sscc":
        return {"sscc": rest}
    if kind == "sgtin":
        gtin, _, serial = rest.partition(".")
        return {"gtin": gtin, "serial": serial}
    return {"epc": rest}


def count_payload(tx: CountTransaction, topics: Topics) -> dict[str, Any]:
    """The `tx/count` payload: a closed cycle count, its pallets and items, its adjustments."""
    groups: dict[str, dict[str, list[Any]]] = {
        kind: {"found": [], "missing": [], "unexpected": [], "moved": []}
        for kind in ("pallets", "items")
    }

    def group(key: str) -> dict[str, list[Any]]:
        return groups["pallets" if thing_kind(key) == "pallet" else "items"]

    for key in sorted(tx.found):
        group(key)["found"].append(_thing(key))
    for key, where in sorted(tx.missing.items()):
        group(key)["missing"].append(_thing(key) | {"recorded": where})
    for key, seen in sorted(tx.unexpected.items()):
        recorded = tx.misplaced.get(key)
        group(key)["unexpected"].append(_thing(key) | {"seen": seen, "recorded": recorded})
    for key, (recorded, seen) in sorted(tx.moved.items()):
        group(key)["moved"].append(_thing(key) | {"recorded": recorded, "seen": seen})
    adjustments = [
        _thing(key) | {"from_location": before, "to_location": after}
        for key, (before, after) in sorted(tx.adjustments.items())
    ]
    return {
        "version": WIRE_VERSION,
        "tx_id": tx.tx_id,
        "type": "count",
        "site": topics.site,
        "gateway": topics.gateway,
        "count_id": tx.count_id,
        "locations": list(tx.locations),
        "reason": tx.reason.value,
        "source": tx.source,
        "opened_at": iso(tx.opened_at),
        "occurred_at": iso(tx.closed_at),
        "status": "adjusted" if adjustments else "confirmed",
        "totals": {kind: {k: len(v) for k, v in g.items()} for kind, g in groups.items()},
        **groups,
        "adjustments": adjustments,
    }


def count_answer_payload(answer: CountAnswer) -> dict[str, Any]:
    """The answer to `cmd/count`."""
    if not answer.ok:
        return {"ok": False, "count_id": answer.count_id, "error": answer.error}
    out: dict[str, Any] = {"ok": True, "count_id": answer.count_id, "status": answer.status}
    if answer.locations:
        out["locations"] = list(answer.locations)
    if answer.tx_id is not None:
        out["tx_id"] = answer.tx_id
    if answer.totals:
        out["totals"] = dict(answer.totals)
    return out
