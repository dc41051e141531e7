"""VDA 5050 `state` and `connection` messages from AGVs, checked and parsed; no I/O here.

The MQTT bridge subscribes to `{interface}/+/+/+/state` and `{interface}/+/+/+/connection`
(`subscriptions`) and hands every message to `parse`, which returns a `RobotState`, a
`RobotConnection` or a `Rejected` with a one-line reason naming the field. It never raises.

Checks, in order:
1. the topic is `{interface}/{major}/{manufacturer}/{serialNumber}/{state|connection}` with a
   major version the gateway knows: `v2` (checked against the official VDA 5050 2.1.0 schemas)
   or `v3` (3.0.0). The schemas are shipped in `gateway/schemas/vendor/vda5050-*`, unchanged;
2. the payload is strict JSON: UTF-8, no duplicate keys, no NaN or infinities;
3. the message passes the official schema of its major version, formats included (the
   `timestamp` must be an RFC 3339 date-time with a time zone);
4. `version` is `[major].[minor].[patch]` with the topic's major. Minor versions of one major
   only add optional fields, so a 2.0.0 robot is checked with the 2.1.0 schema, and a newer
   minor with the newest schema of its major;
5. `manufacturer` and `serialNumber` in the header are those in the topic.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # jsonschema comes with the first validator (see `validator`)
    from jsonschema.protocols import Validator

from gateway.domain import (
    ActionState,
    ActionStatus,
    ConnectionState,
    RobotConnection,
    RobotError,
    RobotId,
    RobotState,
)
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line, show

__all__ = [
    "KINDS",
    "MAJOR_VERSIONS",
    "MAX_PAYLOAD_BYTES",
    "Rejected",
    "RobotConnection",
    "RobotState",
    "RobotTopic",
    "parse",
    "parse_topic",
    "schema",
    "subscriptions",
    "validator",
]

MAJOR_VERSIONS: Final = {"v2": "2.1.0", "v3": "3.0.0"}
"""Topic major version -> the VDA 5050 release whose schemas check its messages."""

KINDS: Final = ("state", "connection")
"""The topics read, the last level of a VDA 5050 topic."""

MAX_PAYLOAD_BYTES: Final = 1024 * 1024
"""A bigger payload is rejected unread."""

_VERSION = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
# 3.0 renamed the broken state; the observer knows one name for it.
_CONNECTION_STATES: Final = {
    "ONLINE": ConnectionState.ONLINE,
    "OFFLINE": ConnectionState.OFFLINE,
    "CONNECTIONBROKEN": ConnectionState.CONNECTIONBROKEN,
    "CONNECTION_BROKEN": ConnectionState.CONNECTIONBROKEN,
    "HIBERNATING": ConnectionState.HIBERNATING,
}


@dataclass(frozen=True, slots=True)
class RobotTopic:
    """The levels of a VDA 5050 topic."""

    interface: str
    major: str  # "v2"
    manufacturer: str
    serial: str
    kind: str  # "state" or "connection"

    @property
    def robot(self) -> RobotId:
        return RobotId(self.manufacturer, self.serial)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that was not accepted; `reason` is one line and names the field."""

    topic: str
    reason: str


def subscriptions(interface: str) -> tuple[str, ...]:
    """The topic filters that carry every robot's state and connection on `interface`."""
    return tuple(f"{interface}/+/+/+/{kind}" for kind in KINDS)


def parse_topic(topic: str) -> RobotTopic | None:
    """`{interface}/{major}/{manufacturer}/{serialNumber}/{state|connection}`; None otherwise."""
    levels = topic.split("/")
    if len(levels) != 5 or levels[4] not in KINDS:
        return None
    if any(not level or "+" in level or "#" in level for level in levels):
        return None
    interface, major, manufacturer, serial, kind = levels
    return RobotTopic(interface, major, manufacturer, serial, kind)


@cache
def schema(kind: str, release: str) -> dict[str, Any]:
    """The official schema of `kind` ("state" or "connection") of VDA 5050 `release` ("2.1.0")."""
    path = resources.files("gateway.schemas").joinpath(
        "vendor", f"vda5050-{release}", f"{kind}.schema.json"
    )
    loaded: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return loaded


@cache
def validator(kind: str, release: str) -> Validator:
    """A validator of the official schema, of the draft its `$schema` names, checking formats."""
    from jsonschema.validators import validator_for  # with the first robot message

    document = schema(kind, release)
    cls = validator_for(document)
    cls.check_schema(document)
    return cls(document, format_checker=cls.FORMAT_CHECKER)


def parse(topic: str, payload: bytes) -> RobotState | RobotConnection | Rejected:
    """One VDA 5050 message as a robot state, a connection state or a rejection. Never raises."""
    where = parse_topic(topic)
    if where is None:
        return Rejected(
            topic,
            "topic: expected {interface}/{major}/{manufacturer}/{serialNumber}/"
            f"{{{'|'.join(KINDS)}}}",
        )
    release = MAJOR_VERSIONS.get(where.major)
    if release is None:
        known = ", ".join(MAJOR_VERSIONS)
        return Rejected(topic, f"topic: major version {show(where.major)} is not one of {known}")
    try:
        result = _parse(where, release, payload)
    except RecursionError:
        result = "payload: JSON nested too deeply"
    return Rejected(topic, one_line(result)) if isinstance(result, str) else result


def _parse(where: RobotTopic, release: str, payload: bytes) -> RobotState | RobotConnection | str:
    try:
        doc = load_valid(payload, validator(where.kind, release), max_bytes=MAX_PAYLOAD_BYTES)
    except InvalidDocument as err:
        return str(err)
    version = _VERSION.fullmatch(doc["version"])
    if version is None:
        return f"version: {show(doc['version'])} is not [major].[minor].[patch]"
    if f"v{version[1]}" != where.major:
        return f"version: {show(doc['version'])} does not match major version {where.major} of the topic"
    for field, expected in (("manufacturer", where.manufacturer), ("serialNumber", where.serial)):
        if doc[field] != expected:
            return f"{field}: {show(doc[field])} does not match the topic's {show(expected)}"
    try:
        timestamp = dt.datetime.fromisoformat(doc["timestamp"].upper())
        timestamp.astimezone(dt.UTC)  # out of range once converted (year 1 or 9999)
    except (ValueError, OverflowError) as err:
        return f"timestamp: {show(doc['timestamp'])} is not a usable date-time ({err})"
    if where.kind == "connection":
        return RobotConnection(
            manufacturer=where.manufacturer,
            serial=where.serial,
            header_id=int(doc["headerId"]),
            timestamp=timestamp,
            version=doc["version"],
            state=_CONNECTION_STATES[doc["connectionState"]],
        )
    return _state(where, doc, timestamp)


def _state(where: RobotTopic, doc: dict[str, Any], timestamp: dt.datetime) -> RobotState:
    """A state that passed its schema, as a RobotState (2.1 and 3.0 name some fields apart)."""
    loads = doc.get("loads")
    actions = [*doc["actionStates"], *doc.get("instantActionStates", ())]
    return RobotState(
        manufacturer=where.manufacturer,
        serial=where.serial,
        header_id=int(doc["headerId"]),
        timestamp=timestamp,
        version=doc["version"],
        order_id=doc["orderId"],
        last_node_id=doc["lastNodeId"],
        driving=doc["driving"],
        operating_mode=doc["operatingMode"],
        # A load without an id (or with "", not identified yet) cannot be told apart: left out.
        loads=None if loads is None else tuple(x["loadId"] for x in loads if x.get("loadId")),
        action_states=tuple(
            ActionState(
                action_id=a["actionId"],
                action_type=a.get("actionType"),
                status=ActionStatus(a["actionStatus"]),
                result=a.get("actionResult", a.get("resultDescription")),
                description=a.get("actionDescriptor", a.get("actionDescription")),
            )
            for a in actions
        ),
        errors=tuple(
            RobotError(
                error_type=e["errorType"],
                level=e["errorLevel"],
                description=e.get("errorDescription"),
                references=tuple(
                    (r["referenceKey"], r["referenceValue"]) for r in e.get("errorReferences", ())
                ),
            )
            for e in doc["errors"]
        ),
    )
