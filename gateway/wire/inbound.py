"""Inbound MQTT messages: one table from topic to decoder to domain event.

Every message the bridge receives is decoded here, at the edge, before the rules' inbox: the
rules never see a topic, a payload or a schema. Each `Route` names the topics it takes, the
subscriptions that bring them, and the decoder that turns one message into a domain event
(or a `Rejected` with the reason). A request's reply address (its MQTT 5 response topic, or
the 3.1.1 `reply_to` in its payload) becomes an opaque handle through `ReplyTo`, which the
bridge answers with the handle or the reason the address is refused; a request whose reply
address is refused is not carried out. The rules pass handles back untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial

from gateway.domain import (
    Asn,
    CloseCommand,
    Event,
    InputKind,
    RefDataDeleted,
    RefDataUpdate,
    Rejected,
    ReplyHandle,
    ResendRequest,
    RobotReport,
    ShipOrder,
    SiteLocationState,
    SiteReceipt,
    WmsTask,
    WmsTaskDeleted,
    key_of,
)
from gateway.drivers.barcode import LabelRules
from gateway.schemas import validator
from gateway.wire import agv as agv_wire
from gateway.wire import counts as count_wire
from gateway.wire import handheld as handheld_wire
from gateway.wire import refdata, vda5050
from gateway.wire import site as site_wire
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line
from gateway.wire.topics import Requester, RequesterKind, Topics

MAX_STATE_BYTES = 1024 * 1024
"""Another gateway's state of one location (thousands of pallets fit); larger is refused."""

MAX_COMMAND_BYTES = 4096
"""A command is a small JSON object; anything larger is refused unread."""

MAX_REMEMBERED_PAYLOADS = 100_000
"""WMS topics whose last payload's digest is kept by default (the least recently changed is
forgotten); the app sizes it from the reference data limits."""


@dataclass(frozen=True, slots=True)
class Received:
    """One MQTT message as the bridge received it."""

    topic: str
    payload: bytes
    retain: bool
    at: dt.datetime
    response_topic: str | None = None  # MQTT 5 request/response
    correlation: bytes | None = None


ReplyTo = Callable[[Requester, str, bytes | None, str | None], ReplyHandle | str]
"""Makes a handle for an answer to `requester` on a reply topic, with the MQTT 5 correlation
data or the MQTT 3.1.1 correlation string to echo; the bridge returns the handle, or the
reason why the gateway must not answer there."""


def reply_handle(
    message: Received,
    reply_to: ReplyTo,
    requester: Requester,
    named: str | None = None,
    echo: str | None = None,
) -> ReplyHandle | str | None:
    """The reply handle of a request (its MQTT 5 response topic first, else the `named`
    3.1.1 `reply_to`); a str: why it is refused; None: the request asks for no answer."""
    if message.response_topic is not None:
        return reply_to(requester, message.response_topic, message.correlation, None)
    if named:
        return reply_to(requester, named, None, echo)
    return None


def _refused_reply(
    kind: InputKind, subject: str, source: str, message: Received, why: str, named: str | None
) -> Rejected:
    """A request not carried out because its answer could not go where it asked; the reason
    names the rule the topic broke (not the topic: rejections are counted per reason)."""
    topic = message.response_topic if message.response_topic is not None else named or ""
    return Rejected(
        kind,
        f"{subject}, reply to {topic[:60]!r}",
        f"not carried out: reply topic refused ({why})",
        message.at,
        source=source,
    )


Decoder = Callable[[Received, ReplyTo], Event | None]
PureDecoder = Callable[[Received], Event | None]
"""A decoder that needs nothing but the message and picklable arguments bound with
`functools.partial`: it may run in another process."""


@dataclass(frozen=True, slots=True)
class Ownership:
    """What of the site's WMS data is this gateway's own (a site of several gateways).

    `doors`: the dock doors it owns (None: every door); an ASN or ship order for another door
    is decoded as withdrawn, so that one it held and the WMS moved to another door is dropped.
    A WMS task goes to exactly one task board: the gateway it names, else the board of its
    `zone` (`zone_boards`: zone -> gateway, the same on every gateway of the site), else the
    site's board (`task_board`). Frozen and picklable: decoders running in the worker process
    take it.
    """

    gateway: str
    doors: frozenset[str] | None = None
    task_board: bool = True
    zone_boards: tuple[tuple[str, str], ...] = ()  # (zone, gateway)

    def owns_door(self, door: str) -> bool:
        """Whether ASNs and ship orders for `door` are this gateway's."""
        return self.doors is None or door in self.doors

    def owns_task(self, gateway: str | None, zone: str | None = None) -> bool:
        """Whether a WMS task naming `gateway` and `zone` (None: none) is this gateway's."""
        if gateway is not None:
            return gateway == self.gateway
        board = next((g for z, g in self.zone_boards if z == zone), None)
        return self.task_board if board is None else board == self.gateway


@dataclass(frozen=True, slots=True)
class Route:
    """One kind of inbound message: which topics, how they are subscribed, how decoded.

    `pure` is set when decoding needs no reply address: the bridge may then run it in a
    worker process (large reference data, robot states); `decode` runs it in place.
    """

    kind: str
    matches: Callable[[str], bool]
    decode: Decoder
    subscriptions: tuple[tuple[str, int], ...]  # (topic filter, QoS)
    # The same payload again on the same topic decodes to the same thing: skipped unread.
    skip_repeats: bool = False
    pure: PureDecoder | None = None


def _pure_route(
    kind: str,
    matches: Callable[[str], bool],
    pure: PureDecoder,
    subscriptions: tuple[tuple[str, int], ...],
    *,
    skip_repeats: bool = False,
) -> Route:
    def decode(message: Received, _reply_to: ReplyTo) -> Event | None:
        return pure(message)

    return Route(kind, matches, decode, subscriptions, skip_repeats, pure)


class InboundRoutes:
    """The table of inbound message kinds for one gateway.

    Args:
        topics: the gateway's topic names.
        agv: take AGV requests (`agv/next`, `agv/progress`, `agv/cancel`) and WMS tasks.
        vda5050_interface: take robots' VDA 5050 `state` and `connection` under this
            interface name (None: not at all).
        refdata_max_bytes: the largest reference data payload of each kind (`asn`,
            `shipment`, `product`, `location`); a larger one is rejected unread. A kind not
            given: `refdata.MAX_PAYLOAD_BYTES`, the ceiling of every kind.
        handheld: take handheld terminals' batches (`handheld/scans`), their labels read
            with these rules (None: not at all).
        ownership: what of the site's WMS data is this gateway's (None: all of it).
        site_state: take the other gateways' `state/location/+` (retained).
        site_receipts: take the other gateways' `tx/receive` (the site's task board).
    """

    def __init__(
        self,
        topics: Topics,
        *,
        agv: bool,
        vda5050_interface: str | None,
        refdata_max_bytes: Mapping[str, int] | None = None,
        remembered: int = MAX_REMEMBERED_PAYLOADS,
        handheld: LabelRules | None = None,
        ownership: Ownership | None = None,
        site_state: bool = False,
        site_receipts: bool = False,
    ) -> None:
        self._topics = topics
        self._remembered = remembered
        owns = ownership or Ownership(topics.gateway)
        # The digest of a WMS topic -> the digest of its last payload.
        self._digests: OrderedDict[bytes, bytes] = OrderedDict()
        base, wms = topics.base, topics.wms
        routes: list[Route] = []
        if agv:
            routes.append(
                _pure_route(
                    "wms_task",
                    lambda t: t.startswith(f"{wms}/task/"),
                    partial(_wms_task, f"{wms}/task/", owns),
                    ((f"{wms}/task/+", 1),),
                    skip_repeats=True,
                )
            )
        routes.append(
            _pure_route(
                "reference_data",
                lambda t: t.startswith(f"{wms}/"),
                # A plain dict: the decoder is pickled to the worker process.
                partial(_reference, topics.site, dict(refdata_max_bytes or {}), owns),
                # Kind by kind, not `wms/{site}/+/+`, which would bring back the answers the
                # gateway publishes on `wms/{site}/replies/...`.
                tuple((f"{wms}/{kind}/+", 1) for kind in refdata.KINDS),
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
        if handheld is not None:
            routes.append(
                Route(
                    "handheld",
                    lambda t: t == topics.handheld_scans,
                    partial(_handheld, handheld),
                    ((topics.handheld_scans, 1),),
                )
            )
        if vda5050_interface is not None:
            routes.append(
                _pure_route(
                    "vda5050",
                    lambda t: vda5050.parse_topic(t) is not None,
                    _robot,
                    tuple((f, 0) for f in vda5050.subscriptions(vda5050_interface)),
                )
            )
        if site_state:
            site_root = f"gw/{topics.site}/"
            routes.append(
                Route(
                    "site_state",
                    lambda t: t.startswith(site_root) and _other_location_state(t, topics),
                    lambda message, _reply: _site_location(message),
                    ((f"gw/{topics.site}/+/state/location/+", 1),),
                )
            )
        if site_receipts:
            routes.append(
                _pure_route(
                    "site_receipt",
                    partial(_other_receipt, f"gw/{topics.site}/", topics.gateway),
                    _site_receipt,
                    ((f"gw/{topics.site}/+/tx/receive", 1),),
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
        for the same WMS payload again on the same topic (see `route_for`)."""
        route = self.route_for(message)
        return None if route is None else route.decode(message, reply_to)

    def route_for(self, message: Received) -> Route | None:
        """The route that decodes `message`; None for a message the gateway does not take, or
        for the same WMS payload again on the same topic (the broker redelivers every retained
        record at each reconnect: recognised by a digest, before any parsing)."""
        for route in self.routes:
            if route.matches(message.topic):
                if route.skip_repeats and self._repeated(message):
                    return None
                return route
        return None

    def remember(self, topic: str, digest: bytes) -> None:
        """A payload of `topic` already taken in (before a restart): the same again is skipped."""
        key = _topic_key(topic)
        self._digests[key] = digest
        self._digests.move_to_end(key)
        if len(self._digests) > self._remembered:
            self._digests.popitem(last=False)

    def forget(self, topic: str) -> None:
        """The payload last seen on `topic` was not taken in (the rules refused it for want of
        room): the same payload again is decoded again, not skipped."""
        self._digests.pop(_topic_key(topic), None)

    def forget_reference(self, kind: str, key: str) -> None:
        """`forget` the topic of the reference data record `key` of this `kind`."""
        self.forget(f"{self._topics.wms}/{kind}/{key}")

    def _repeated(self, message: Received) -> bool:
        digest = payload_digest(message.payload)
        key = _topic_key(message.topic)
        if self._digests.get(key) == digest:
            self._digests.move_to_end(key)
            return True
        self.remember(message.topic, digest)
        return False


def _topic_key(topic: str) -> bytes:
    """What a topic is remembered by: its digest (a flood of distinct 60 kB topics must not be
    kept)."""
    return hashlib.blake2b(topic.encode(), digest_size=16).digest()


def _wms_task(prefix: str, owns: Ownership, message: Received) -> Event:
    """A WMS task (`wms/{site}/task/{task_id}`); another gateway's is withdrawn here (see
    `Ownership`)."""
    task = agv_wire.parse_wms_task(message.topic.removeprefix(prefix), message.payload, message.at)
    if isinstance(task, WmsTask) and not owns.owns_task(task.gateway, task.zone):
        return WmsTaskDeleted(task.task_id, task.at)
    if isinstance(task, agv_wire.BadRequest):
        return Rejected(
            InputKind.REFERENCE_DATA,
            message.topic,
            task.reason,
            message.at,
            source=_levels(message.topic, 3),
        )
    return task


def _reference(
    site: str, max_bytes: Mapping[str, int], owns: Ownership, message: Received
) -> Event:
    """Reference data (`wms/{site}/{kind}/{key}`), with the digest of the payload; a payload
    over its kind's limit in `max_bytes` is rejected unread; an ASN or ship order for a door
    of another gateway is withdrawn here (see `Ownership`)."""
    event = refdata.decode(message.topic, message.payload, site, message.at, max_bytes)
    item = event.item if isinstance(event, RefDataUpdate) else None
    if isinstance(item, Asn | ShipOrder) and not owns.owns_door(item.door):
        kind, key = key_of(item)
        return RefDataDeleted(kind, key, event.at)
    if isinstance(event, RefDataUpdate):
        return replace(event, digest=payload_digest(message.payload))
    return event


def payload_digest(payload: bytes) -> bytes:
    """What recognises the same payload again (`RefDataUpdate.digest`)."""
    return hashlib.blake2b(payload, digest_size=16).digest()


def _command(message: Received, reply_to: ReplyTo) -> Event | None:
    """`cmd/close` with {"reference": "<ASN or order id>"}; a bad request gets an error answer.

    A retained command would be carried out again at every reconnect: ignored.
    """
    if message.retain:
        return None
    name = message.topic.rpartition("/")[2]
    if name == "count":
        return _count_command(message, reply_to)
    if name == "resend":
        return _resend_command(message)
    if name != "close":
        return None
    reply = reply_handle(message, reply_to, Requester(RequesterKind.WMS))
    if isinstance(reply, str):
        return _refused_reply(InputKind.COMMAND, message.topic, "wms", message, reply, None)
    reference = ""
    if len(message.payload) <= MAX_COMMAND_BYTES:
        try:
            body = json.loads(message.payload)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("reference"), str):
            reference = body["reference"]
    return CloseCommand(reference, message.at, reply)


MAX_RESEND_BYTES = 1024
"""A resend request is a few fields: a larger one is refused unread."""


def _resend_command(message: Received) -> Event:
    """`cmd/resend`: publish numbered transactions again (`resend-command` schema)."""
    try:
        doc = load_valid(message.payload, validator("resend-command"), max_bytes=MAX_RESEND_BYTES)
    except InvalidDocument as err:
        return Rejected(
            InputKind.COMMAND, "cmd/resend", one_line(str(err)), message.at, source="resend"
        )
    if doc["last"] < doc["first"]:
        why = f"last ({doc['last']}) comes before first ({doc['first']})"
        return Rejected(InputKind.COMMAND, "cmd/resend", why, message.at, source="resend")
    return ResendRequest(doc["topic"], doc["stream"], doc["first"], doc["last"], message.at)


def _count_command(message: Received, reply_to: ReplyTo) -> Event:
    """`cmd/count`: open or close a cycle count; a bad one is refused, with its answer."""
    parsed = count_wire.parse_count_command(message.payload, message.at)
    requester = Requester(RequesterKind.WMS)
    reply = reply_handle(message, reply_to, requester, parsed.reply_to, parsed.correlation)
    subject = parsed.count_id or "cmd/count"
    if isinstance(reply, str):
        return _refused_reply(InputKind.COMMAND, subject, "wms", message, reply, parsed.reply_to)
    if isinstance(parsed.command, str):
        return Rejected(InputKind.COMMAND, subject, parsed.command, message.at, reply, source="wms")
    return replace(parsed.command, reply=reply)


def _agv_request(message: Received, reply_to: ReplyTo) -> Event | None:
    if message.retain:
        return None
    op = message.topic.rpartition("/")[2]
    parsed = agv_wire.parse_request(op, message.payload, message.at)
    # `next` and `progress` come from fleet controllers; a `cancel` from one names its fleet.
    requester = (
        Requester(RequesterKind.WMS)
        if op == "cancel" and parsed.fleet is None
        else Requester(RequesterKind.FLEET, parsed.fleet)
    )
    source = f"agv/{op[:20]} from {requester}"[:120]
    reply = reply_handle(message, reply_to, requester, parsed.reply_to, parsed.correlation)
    if isinstance(reply, str):
        return _refused_reply(InputKind.AGV_REQUEST, op, source, message, reply, parsed.reply_to)
    if isinstance(parsed.request, agv_wire.BadRequest):
        return Rejected(
            InputKind.AGV_REQUEST, op, parsed.request.reason, message.at, reply, source=source
        )
    return replace(parsed.request, reply=reply)


def _handheld(labels: LabelRules, message: Received, reply_to: ReplyTo) -> Event | None:
    """A batch of handheld scans (MQTT 5 request/response, or `reply_to` in a 3.1.1 one)."""
    if message.retain:  # carried out again at every reconnect
        return None
    parsed = handheld_wire.parse_batch(message.payload, message.at, labels)
    terminal = parsed.batch.terminal
    requester = Requester(RequesterKind.HANDHELD, terminal=terminal)
    source = f"terminal {terminal}"[:120] if terminal else "handheld"
    reply = reply_handle(message, reply_to, requester, parsed.reply_to, parsed.correlation)
    subject = terminal or "unknown terminal"
    if isinstance(reply, str):
        return _refused_reply(InputKind.HANDHELD, subject, source, message, reply, parsed.reply_to)
    if isinstance(parsed.batch, handheld_wire.BadBatch):
        return Rejected(
            InputKind.HANDHELD, subject, parsed.batch.reason, message.at, reply, source=source
        )
    return replace(parsed.batch, reply=reply)


def _other_location_state(topic: str, topics: Topics) -> bool:
    """`gw/{site}/{gateway}/state/location/{location}` of a gateway other than this one."""
    levels = topic.split("/")
    return len(levels) == 6 and levels[3:5] == ["state", "location"] and levels[2] != topics.gateway


def _site_location(message: Received) -> Event:
    """Another gateway's pallets at one of its locations (empty: none there any more)."""
    _, _, gateway, _, _, location = message.topic.split("/")
    source = f"gateway {gateway}"[:120]
    if not message.payload:
        return SiteLocationState(gateway, location, (), message.at)
    try:
        doc = load_valid(message.payload, validator("state-location"), max_bytes=MAX_STATE_BYTES)
    except InvalidDocument as err:
        reason = one_line(str(err))
        return Rejected(InputKind.SITE_STATE, message.topic, reason, message.at, source=source)
    if doc["location"] != location:
        why = f"location: {doc['location'][:60]!r} is not the topic's, {location[:60]!r}"
        return Rejected(InputKind.SITE_STATE, message.topic, why, message.at, source=source)
    since = doc.get("since", {})
    pallets = tuple(
        (p, dt.datetime.fromisoformat(since[p]).timestamp() if p in since else 0.0)
        for p in doc["pallets"]
    )
    return SiteLocationState(gateway, location, pallets, message.at)


def _other_receipt(root: str, own: str, topic: str) -> bool:
    """`gw/{site}/{gateway}/tx/receive` of a gateway other than `own`."""
    levels = topic.split("/")
    return (
        topic.startswith(root)
        and len(levels) == 5
        and levels[3:] == ["tx", "receive"]
        and levels[2] != own
    )


def _site_receipt(message: Received) -> Event | None:
    """Another gateway's receive transaction (retained ones are none: ignored)."""
    if message.retain:
        return None
    gateway = message.topic.split("/")[2]
    parsed = site_wire.parse_receipt(message.payload)
    if isinstance(parsed, str):
        source = f"gateway {gateway}"[:120]
        return Rejected(InputKind.SITE_STATE, message.topic, parsed, message.at, source=source)
    return SiteReceipt(gateway, parsed, message.at)


def _robot(message: Received) -> Event:
    """A robot's VDA 5050 `state` or `connection`."""
    parsed = vda5050.parse(message.topic, message.payload)
    if isinstance(parsed, vda5050.Rejected):
        return Rejected(
            InputKind.ROBOT,
            message.topic,
            parsed.reason,
            message.at,
            source=_levels(message.topic, 4),
        )
    return RobotReport(parsed, message.at)


def _levels(topic: str, count: int) -> str:
    """The first `count` levels of a topic, shortened: where a message came from."""
    return "/".join(topic.split("/", count)[:count])[:120]
