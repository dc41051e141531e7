"""The AGV task API's messages: requests from fleet controllers and tasks from the WMS, parsed,
and the answers and task documents rendered.

Pure (no I/O): payload bytes in, a domain request or a `BadRequest` with a reason out; never
raises. Every payload is checked against its JSON Schema in `gateway/schemas/` (agv-next,
agv-progress, agv-cancel, wms-task), after strict JSON decoding (no NaN, no duplicate keys).
Also builds the JSON of a task for answers and for the `agv/task` topic.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from gateway.domain import (
    CancelRequest,
    NextRequest,
    ProgressRequest,
    ProgressStatus,
    Task,
    TaskAnswer,
    TaskKind,
    TaskRequest,
    TaskState,
    WmsTask,
    WmsTaskDeleted,
)
from gateway.schemas import validator
from gateway.wire.codec import WIRE_VERSION, iso
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line, show

__all__ = [
    "MAX_REQUEST_BYTES",
    "OPERATIONS",
    "BadRequest",
    "ParsedRequest",
    "answer_payload",
    "parse_request",
    "parse_wms_task",
    "task_from_json",
    "task_json",
]

MAX_REQUEST_BYTES: Final = 64 * 1024
OPERATIONS: Final = ("next", "progress", "cancel")


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that cannot be carried out as sent; `reason` names the field."""

    reason: str


class ParsedRequest(NamedTuple):
    """A request, and the MQTT 3.1.1 reply address its payload names (if any)."""

    request: TaskRequest | BadRequest
    reply_to: str | None = None  # MQTT 3.1.1 has no response topic: the payload names one
    correlation: str | None = None  # echoed in the answer
    fleet: str | None = None  # the fleet the request names (for where its answer may go)


def parse_request(op: str, payload: bytes, at: dt.datetime) -> ParsedRequest:
    """The request of `op` (next, progress or cancel) in `payload`, received at `at`."""
    if op not in OPERATIONS:
        return ParsedRequest(
            BadRequest(
                f"topic: unknown operation {show(op)}; expected one of next, progress, cancel"
            )
        )
    doc = _document(f"agv-{op}", payload)
    if isinstance(doc, BadRequest):
        return ParsedRequest(doc, fleet=_fleet_named(payload))
    request: TaskRequest | BadRequest
    if op == "next":
        caps = doc.get("capabilities")
        request = NextRequest(
            fleet=doc["fleet"],
            robot=doc["robot"],
            capabilities=None if caps is None else tuple(caps),
            position=doc.get("position"),
            at=at,
        )
    elif op == "progress":
        if doc["status"] == "dropped" and not doc.get("location"):
            request = BadRequest("location: required when status is dropped")
        else:
            request = ProgressRequest(
                fleet=doc["fleet"],
                robot=doc["robot"],
                task_id=doc["task_id"],
                status=ProgressStatus(doc["status"]),
                location=doc.get("location"),
                reason=doc.get("reason"),
                at=at,
            )
    else:
        request = CancelRequest(task_id=doc["task_id"], reason=doc.get("reason"), at=at)
    if isinstance(request, BadRequest):
        # A bad request is answered only on a response topic.
        return ParsedRequest(request, fleet=doc.get("fleet"))
    return ParsedRequest(request, doc.get("reply_to"), doc.get("correlation"), doc.get("fleet"))


def parse_wms_task(
    task_id: str, payload: bytes, at: dt.datetime
) -> WmsTask | WmsTaskDeleted | BadRequest:
    """A task from `wms/{site}/task/{task_id}`; an empty payload withdraws it."""
    if not payload:
        return WmsTaskDeleted(task_id, at)
    doc = _document("wms-task", payload)
    if isinstance(doc, BadRequest):
        return doc
    if doc["task_id"] != task_id:
        return BadRequest(
            f"task_id: {show(doc['task_id'])} is not the id in the topic, {show(task_id)}"
        )
    if ("sscc" in doc) == ("gtin" in doc):
        return BadRequest("payload: give either sscc (with source) or gtin, not both")
    if "sscc" in doc and not doc.get("source"):
        return BadRequest("source: required with sscc")
    import biip  # with the first WMS task (GS1 prefix tables: 10-16 MiB)

    if "sscc" in doc and biip.parse("00" + doc["sscc"]).sscc is None:
        return BadRequest(f"sscc: {show(doc['sscc'])} has a wrong check digit")
    if "gtin" in doc and biip.parse("01" + doc["gtin"]).gtin is None:
        return BadRequest(f"gtin: {show(doc['gtin'])} has a wrong check digit")
    return WmsTask(
        task_id=task_id,
        sscc=doc.get("sscc"),
        source=doc.get("source"),
        destination=doc["destination"],
        priority=int(doc.get("priority", 0)),
        at=at,
        gtin=doc.get("gtin"),
        gateway=doc.get("gateway"),
        zone=doc.get("zone"),
    )


def _fleet_named(payload: bytes) -> str | None:
    """The `fleet` an invalid request names, if it names one: where its error answer may go."""
    if len(payload) > MAX_REQUEST_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    fleet = doc.get("fleet") if isinstance(doc, dict) else None
    return fleet if isinstance(fleet, str) else None


def _document(schema: str, payload: bytes) -> dict[str, Any] | BadRequest:
    try:
        doc = load_valid(payload, validator(schema), max_bytes=MAX_REQUEST_BYTES)
    except InvalidDocument as err:
        return BadRequest(one_line(str(err)))
    assert isinstance(doc, dict)  # every schema here requires an object
    return doc


def task_json(task: Task) -> dict[str, Any]:
    """A task as the API and the `agv/task` topic show it."""
    return {
        "task_id": task.task_id,
        "kind": task.kind.value,
        "sscc": task.sscc,
        "source": task.source,
        "destination": task.destination,
        "priority": task.priority,
        "state": task.state.value,
        "robot": task.robot,
        "fleet": task.fleet,
        "lease_until": _iso_or_none(task.lease_until),
        "attempts": task.attempts,
        "reason": task.reason,
        "picked_from": task.picked_from,
        "picked_at": _iso_or_none(task.picked_at),
        "dropped_at": task.dropped_at,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
    }


def task_from_json(doc: dict[str, Any]) -> Task:
    """The task `task_json` wrote (as stored in SQLite)."""

    def at(key: str) -> dt.datetime | None:
        value = doc.get(key)
        return None if value is None else dt.datetime.fromisoformat(value)

    created, updated = at("created_at"), at("updated_at")
    assert created is not None
    assert updated is not None
    return Task(
        task_id=doc["task_id"],
        kind=TaskKind(doc["kind"]),
        sscc=doc["sscc"],
        source=doc["source"],
        destination=doc["destination"],
        priority=int(doc["priority"]),
        created_at=created,
        updated_at=updated,
        state=TaskState(doc["state"]),
        robot=doc["robot"],
        fleet=doc["fleet"],
        lease_until=at("lease_until"),
        attempts=int(doc["attempts"]),
        reason=doc["reason"],
        picked_from=doc["picked_from"],
        picked_at=at("picked_at"),
        dropped_at=doc["dropped_at"],
    )


def _iso_or_none(at: dt.datetime | None) -> str | None:
    return None if at is None else iso(at)


def answer_payload(answer: TaskAnswer, correlation: str | None = None) -> dict[str, Any]:
    """The answer to an AGV request; `correlation` is echoed for an MQTT 3.1.1 client."""
    payload: dict[str, Any] = {
        "version": WIRE_VERSION,
        "ok": answer.ok,
        "result": answer.result.value,
        "code": answer.code,
        "message": answer.message,
        "task": None if answer.task is None else task_json(answer.task),
    }
    if correlation is not None:
        payload["correlation"] = correlation
    return payload
