"""Inbound MQTT messages: one table from topic to decoder to domain event.

Every message the bridge receives is decoded here, at the edge, before the rules' inbox: the
rules never see a topic, a payload or a schema. Each `Route` names the topics it takes, the
subscriptions that bring them, and the decoder that turns one message into a domain event
(or a `Rejected` with the reason). A request's reply address stays opaque: the bridge wraps an
MQTT 5 response topic into the `Received.reply` handle, and `ReplyTo` makes one from a 3.1.1
`reply_to` named in the payload; the rules pass handles back untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.domain import CloseCommand, Event, InputKind, Rejected, ReplyHandle, RobotReport
from gateway.wire import agv as agv_wire
from gateway.wire import refdata, vda5050
from gateway.wire.topics import Topics

MAX_COMMAND_BYTES = 4096
"""A command is a small JSON object; anything larger is refused unread."""

MAX_REMEMBERED_PAYLOADS = 100_000
"""WMS topics whose last payload's digest is kept (the least recently changed is forgotten)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One MQTT message as the bridge received it."""

    topic: str
    payload: bytes
    retain: bool
    at: dt.datetime
    reply: ReplyHandle | None = None  # the MQTT 5 response topic, wrapped by the bridge


ReplyTo = Callable[[str, str | None], ReplyHandle | None]
"""Makes a handle for a reply topic named in a payload (MQTT 3.1.1), with the correlation
string to echo; the bridge decides whether it may be used (None: it may not)."""

Decoder = Callable[[Received, ReplyTo], Event | None]


@dataclass(frozen=True, slots=True)
class Route:
    """One kind of inbound message: which topics, how they are subscribed, how decoded."""

    kind: str
    matches: Callable[[str], bool]
    decode: Decoder
    subscriptions: tuple[tuple[str, int], ...]  # (topic filter, QoS)
    # The same payload again on the same topic decodes to the same thing: skipped unread.
    skip_repeats: bool = False


class InboundRoutes:
    """The table of inbound message kinds for one gateway.

    Args:
        topics: the gateway's topic names.
        agv: take AGV requests (`agv/next`, `agv/progress`, `agv/cancel`) and WMS tasks.
        vda5050_interface: take robots' VDA 5050 `state` and `connection` under this
            interface name (None: not at all).
    """

    def __init__(self, topics: Topics, *, agv: bool, vda5050_interface: str | None) -> None:
        self._topics = topics
        self._digests: OrderedDict[str, bytes] = OrderedDict()  # WMS topic -> last payload's
        base, wms = topics.base, topics.wms
        routes: list[Route] = []
        if agv:
            routes.append(
                Route(
                    "wms_task",
                    lambda t: t.startswith(f"{wms}/task/"),
                    self._wms_task,
                    (),  # brought by the reference data subscription
                    skip_repeats=True,
                )
            )
        routes.append(
            Route(
                "reference_data",
                lambda t: t.startswith(f"{wms}/"),
                self._reference,
                ((f"{wms}/+/+", 1),),
                skip_repeats=True,
            )
        )
        routes.append(
            Route(
                "command", lambda t: t.startswith(f"{base}/cmd/"), _command, ((f"{base}/cmd/+", 1),)
            )
        )
        if agv:
            # One by one: `agv/+` would bring back the gateway's own `agv/task` messages.
            routes.append(
                Route(
                    "agv_request",
                    lambda t: t.startswith(f"{base}/agv/"),
                    _agv_request,
                    tuple((topics.agv_request(op), 1) for op in agv_wire.OPERATIONS),
                )
            )
        if vda5050_interface is not None:
            routes.append(
                Route(
                    "vda5050",
                    lambda t: vda5050.parse_topic(t) is not None,
                    _robot,
                    tuple((f, 0) for f in vda5050.subscriptions(vda5050_interface)),
                )
            )
        self.routes: tuple[Route, ...] = tuple(routes)
        # First topic levels no answer may go to besides the gateways' and the WMS's: the
        # robots' VDA 5050 interface (their order and instantActions topics).
        self.reserved_roots: frozenset[str] = (
            frozenset({vda5050_interface.lower()}) if vda5050_interface else frozenset()
        )

    def subscriptions(self) -> list[tuple[str, int]]:
        """Every topic filter to subscribe to, with its QoS."""
        return [s for route in self.routes for s in route.subscriptions]

    def decode(self, message: Received, reply_to: ReplyTo) -> Event | None:
        """The domain event of one message; None for a message the gateway does not take, or
        for the same WMS payload again on the same topic (the broker redelivers every retained
        record at each reconnect: recognised by a digest, before any parsing)."""
        for route in self.routes:
            if route.matches(message.topic):
                if route.skip_repeats and self._repeated(message):
                    return None
                return route.decode(message, reply_to)
        return None

    def _repeated(self, message: Received) -> bool:
        digest = hashlib.blake2b(message.payload, digest_size=16).digest()
        if self._digests.get(message.topic) == digest:
            self._digests.move_to_end(message.topic)
            return True
        self._digests[message.topic] = digest
        self._digests.move_to_end(message.topic)
        if len(self._digests) > MAX_REMEMBERED_PAYLOADS:
            self._digests.popitem(last=False)
        return False

    def _wms_task(self, message: Received, _reply_to: ReplyTo) -> Event:
        task_id = message.topic.removeprefix(f"{self._topics.wms}/task/")
        task = agv_wire.parse_wms_task(task_id, message.payload, message.at)
        if isinstance(task, agv_wire.BadRequest):
            return Rejected(InputKind.REFERENCE_DATA, message.topic, task.reason, message.at)
        return task

    def _reference(self, message: Received, _reply_to: ReplyTo) -> Event:
        return refdata.decode(message.topic, message.payload, self._topics.site, message.at)


def _command(message: Received, _reply_to: ReplyTo) -> Event | None:
    """`cmd/close` with {"reference": "<ASN or order id>"}; a bad request gets an error answer.

    A retained command would be carried out again at every reconnect: ignored.
    """
    if message.retain or message.topic.rpartition("/")[2] != "close":
        return None
    reference = ""
    if len(message.payload) <= MAX_COMMAND_BYTES:
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("reference"), str):
            reference = body["reference"]
    return CloseCommand(reference, message.at, message.reply)


def _agv_request(message: Received, reply_to: ReplyTo) -> Event | None:
    if message.retain:
        return None
    op = message.topic.rpartition("/")[2]
    parsed = agv_wire.parse_request(op, message.payload, message.at)
    reply = message.reply
    if reply is None and parsed.reply_to:
        reply = reply_to(parsed.reply_to, parsed.correlation)
    if isinstance(parsed.request, agv_wire.BadRequest):
        return Rejected(InputKind.AGV_REQUEST, op, parsed.request.reason, message.at, reply)
    return replace(parsed.request, reply=reply)


def _robot(message: Received, _reply_to: ReplyTo) -> Event:
    parsed = vda5050.parse(message.topic, message.payload)
    if isinstance(parsed, vda5050.Rejected):
        return Rejected(InputKind.ROBOT, message.topic, parsed.reason, message.at)
    return RobotReport(parsed, message.at)
