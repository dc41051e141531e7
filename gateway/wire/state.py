"""The retained live-state payloads `gw/{site}/{gateway}/state/{door|location|robot|device}/{id}`.

Each is the whole state of one thing, so that a subscriber that joins at any time rebuilds the
site from the retained messages alone; none carries the time it was published, so the same
state always gives the same bytes (and is published only when it changes). Schemas:
`gateway/schemas/state-*.schema.json`; see `docs/mqtt.md`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.domain import DockProgress, DockTransaction, RobotPosition, Task
from gateway.wire.codec import WIRE_VERSION, iso

__all__ = [
    "device_state",
    "door_state",
    "location_state",
    "recent_entry",
    "robot_state",
    "zone_state",
]


def recent_entry(tx: DockTransaction) -> dict[str, Any]:
    """One transaction in a door's `recent` list."""
    return {
        "tx_id": tx.tx_id,
        "type": tx.kind.value,
        "reference": tx.reference,
        "status": tx.status,
        "items": len(tx.items),
        "exceptions": sorted(set(tx.exception_codes)),
        "source": tx.source.value,
        "device": tx.device,
        "at": iso(tx.occurred_at),
    }


def door_state(
    door: str, role: str | None, open_now: Sequence[DockProgress], recent: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """`state/door/{door}`: what is open there and how far it got, and its last transactions
    (newest last)."""
    return {
        "version": WIRE_VERSION,
        "door": door,
        "role": role,
        "open": [_progress(p) for p in open_now],
        "recent": list(recent),
    }


def _progress(progress: DockProgress) -> dict[str, Any]:
    return {
        "type": progress.kind.value,
        "reference": progress.reference,
        "under_way": progress.under_way,
        "last_activity": None if progress.last_activity is None else iso(progress.last_activity),
        "lines": [
            {
                "line": line.line,
                "what": line.what,
                "expected": line.expected,
                "done": line.done,
                "over": line.over,
                "short": line.short,
                "damaged": line.damaged,
                "reported_short": line.reported_short,
            }
            for line in progress.lines
        ],
        "pallets_expected": progress.pallets_expected,
        "pallets_done": progress.pallets_done,
    }


def location_state(
    location: str, pallets: Iterable[str], since: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """`state/location/{location}`: the pallets (SSCCs) the gateway's transactions put there,
    and since when each (event time: the transaction that put it there)."""
    ordered = sorted(pallets)
    doc: dict[str, Any] = {"version": WIRE_VERSION, "location": location, "pallets": ordered}
    if since:
        doc["since"] = {
            p: iso(dt.datetime.fromtimestamp(since[p], dt.UTC)) for p in ordered if p in since
        }
    return doc


def robot_state(robot: str, task: Task | None, position: RobotPosition | None) -> dict[str, Any]:
    """`state/robot/{serial}`: the task the robot holds and the last node it reported."""
    return {
        "version": WIRE_VERSION,
        "robot": robot,
        "task": None
        if task is None
        else {
            "task_id": task.task_id,
            "kind": task.kind.value,
            "state": task.state.value,
            "sscc": task.sscc,
            "source": task.source,
            "destination": task.destination,
            "fleet": task.fleet,
        },
        "position": None
        if position is None
        else {
            "node_id": position.node_id,
            "location": position.location,
            "since": iso(position.since),
            "lost": position.lost,
        },
    }


def device_state(status: dict[str, Any]) -> dict[str, Any]:
    """`state/device/{device}`: a device's state and last error, from its status payload
    (`gateway.health.DeviceHealth.payload`) without the counts and rates that change all
    the time (those are on `device/{device}/status` and `/metrics`)."""
    return {
        "version": WIRE_VERSION,
        **{
            key: status[key]
            for key in ("device", "kind", "state", "connected", "since", "last_error")
        },
        "last_error_at": status["last_error_at"],
    }


def zone_state(zone: str, reader: str, epcs: list[str]) -> dict[str, Any]:
    """`state/zone/{zone}`: the tags (EPC hex) an RFID zone holds now, sorted."""
    return {"version": WIRE_VERSION, "zone": zone, "reader": reader, "epcs": epcs}
