"""The MQTT bridge (aiomqtt, MQTT 5 by default): publishes the outbox and the retained statuses.

Delivery contract: each outbox row is published with QoS 1 and deleted only when the broker's
PUBACK carries a success reason code. In-flight publishes are capped at `max_inflight` (the
relay's window, and paho's limit for every publish). When the connection drops,
unacknowledged rows stay in the outbox and are published again, in order, after the
reconnect: a consumer may see a transaction twice, always with the same id.

Inbound flow control: an inbound QoS 1 message is acknowledged (PUBACK) only once the rules
have committed what it brought (`committed`; in arrival order, as MQTT wants its PUBACKs), and
the CONNECT's Receive Maximum caps how many the broker sends unacknowledged; so a full inbox
slows the broker down instead of a queue here discarding what the broker was told had arrived,
and a gateway killed before its commit gets the message again. (Acknowledged once queued, an
ASN taken in just before a SIGKILL was lost from the session; the broker sent it again only
with the retained messages of the next SUBSCRIBE, after the handheld scans queued for the
session, which were then judged without it.) QoS 0 messages (robot states) beyond a bound
are dropped and counted. Large payloads are decoded in a worker process, one at a time in
arrival order, so that the event loop (drivers, rules, publishing) does not stall on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.bridge.decoding import DecodePool
from gateway.bridge.suback import refused as refused_code
from gateway.config import BrokerConfig
from gateway.domain import (
    CloseAnswer,
    CountAnswer,
    Event,
    HandheldAnswer,
    ReplyHandle,
    TaskAnswer,
)
from gateway.health import StatusBoard
from gateway.storage import PendingMessage, StorageError, Store
from gateway.supervisor import Backoff
from gateway.wire.agv import answer_payload
from gateway.wire.codec import encode
from gateway.wire.handheld import answer_payload as handheld_answer_payload
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.outbound import (
    close_answer_payload,
    count_answer_payload,
    gateway_status_payload,
)
from gateway.wire.topics import ReplyPolicy, Requester, RequesterKind, Topics, topic_refusal

log = structlog.get_logger("gateway.bridge")

# How long other operations (SUBSCRIBE, a status publish) may take before the link is taken as
# dead (aiomqtt's `timeout`); the CONNACK has `[broker] connect_timeout_s`.
OPERATION_TIMEOUT_S = 10.0
# How long one publish may wait for its PUBACK before the connection is taken as dead.
PUBACK_TIMEOUT_S = 30.0
# Rows read from the outbox per query.
FETCH_BATCH = 500
# How long the broker keeps the gateway's session (and what the WMS sent) while it is away.
SESSION_EXPIRY_S = 7 * 24 * 3600
# Command answers waiting for the connection.
RESPONSE_BACKLOG = 100
# QoS 0 messages (robot states) waiting to be decoded while the rules cannot take more; the
# newest beyond it are dropped and counted. QoS 1 ones are bounded by the Receive Maximum.
MAX_QUEUED_QOS0 = 1_000
# Received and not yet decoded, at most: beyond either bound the socket is not read (TCP holds
# the broker back) until the queue is down to the resume marks. The Receive Maximum should
# make this unnecessary, but Mosquitto 2.0.11 sends a whole Receive Maximum more after every
# PUBACK, so a flood would otherwise queue thousands of messages here.
PAUSE_READING_AT = 1_000
PAUSE_READING_AT_BYTES = 8 * 1024 * 1024
RESUME_READING_AT = 100
RESUME_READING_AT_BYTES = 2 * 1024 * 1024
# While reading is paused, one message is read this often anyway: the keepalive must see
# packets come in (broker.keepalive_s is at least 5 s), or the client takes the link as dead.
TRICKLE_S = 0.2
# Payloads at least this large are decoded in a worker process (`gateway.bridge.decoding`).
DECODE_ELSEWHERE_BYTES = 64 * 1024
# Debug messages waiting for their turn under the rate limit.
DEBUG_BACKLOG = 100
# A session that lasted this long resets the reconnect backoff (a broker that accepts and
# then drops the client at once must not cause a reconnect storm).
HEALTHY_SESSION_S = 10.0
# A message the broker refused (an ACL) is retried after 5 s, doubling up to 5 minutes.
REFUSED_RETRY_MIN_S = 5.0
REFUSED_RETRY_MAX_S = 300.0
RETRY_SWEEP_S = 1.0
# A subscription the broker refused is asked for again after 1 s, doubling up to a minute.
SUBSCRIBE_RETRY_MIN_S = 1.0
SUBSCRIBE_RETRY_MAX_S = 60.0
# At a stop, how long the acknowledgements of what was committed may take to go out.
ACKS_AT_STOP_S = 1.0
# While the outbox's figures change, the gateway status is republished at most this often.
STATUS_REFRESH_S = 10.0


# Retained state topics published at once (each waits for its PUBACK; all of a window together).
STATE_WINDOW = 100


class StateFeed(Protocol):
    """The live state's retained topics (`gateway.ops.state.LiveState`)."""

    known: set[str]
    refused: int

    def resend_all(self) -> None: ...
    async def take(self, most: int) -> list[tuple[str, bytes]]: ...
    def put_back(self, items: Sequence[tuple[str, bytes]]) -> None: ...


class PublishRefused(Exception):
    """The broker answered a publish with a failure reason code (e.g. not authorized)."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"broker refused publish to {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class _Client(aiomqtt.Client):
    """aiomqtt's client, plus the PUBACK reason code (aiomqtt 2.x discards it).

    `publish_acked` follows aiomqtt 2.5's own `publish`; it relies on two private helpers of
    that version (`_pending_call`, `_wait_for`), which is why the dependency is pinned below 3.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reasons: dict[int, ReasonCode] = {}
        # Inbound QoS 1 messages are acknowledged by `ack`, once handed on (module docstring).
        self._client.manual_ack_set(True)
        self.qos0_dropped = 0
        self.queued_bytes = 0  # topics and payloads received and not yet taken
        self.reading_paused = 0  # times the socket was left unread for a while
        self._reader: tuple[int, Callable[[], None]] | None = None
        self._paused = False
        # Publishes whose PUBACK goes to a callback (`publish_nowait`), by message id.
        self._on_ack: dict[int, Callable[[int, ReasonCode | None], None]] = {}
        # Writes from the event loop's thread are flushed once per loop iteration
        # (`_on_socket_register_write`); a writer is registered only when the socket is full.
        self._loop_thread = threading.get_ident()
        self._flush_scheduled = False
        self._writer: int | None = None
        self._valid_topics: set[str] = set()  # topics `topic_refusal` let through
        _fast_pubacks(self._client)
        _cheap_inflight_updates(self._client)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """As aiomqtt 2.5 does (read when the socket is readable), keeping the reader so that
        reading can pause (`_on_message`) and resume (`taken`)."""

        def read() -> None:
            try:
                while not self._paused:
                    client.loop_read()
                    # loop_read() does not always consume what an SSL socket has decoded.
                    pending = getattr(client._sock, "pending", None)
                    if pending is not None and pending() > 0:
                        continue
                    break
            except Exception as exc:  # noqa: BLE001 - a broken connection: disconnect
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        # Answers are small packets: sent at once, not held back for Nagle's algorithm.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fileno = sock.fileno()
        self._reader = (fileno, read)
        self._paused = False

        def start() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # Called on the thread that connects: nothing may touch the loop directly.
        self._loop.call_soon_threadsafe(self._loop.add_reader, fileno, read)
        self._loop.call_soon_threadsafe(start)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._reader = None  # the file number may be reused by the next socket
        self._writer = None
        super()._on_socket_close(client, userdata, sock)

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho queued a packet. aiomqtt registers a writer for the socket then, through
        `call_soon_threadsafe` (a wake-up of the loop) and two `epoll_ctl` calls, per publish.
        On the loop's own thread the queue is written once the current callback is over
        instead (every publish made meanwhile goes out in the same pass), and a writer is
        registered only if the socket cannot take it all."""
        if threading.get_ident() != self._loop_thread:  # connecting, on an executor thread
            self._writer = sock.fileno()
            super()._on_socket_register_write(client, userdata, sock)
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush, client, sock)

    def _flush(self, client: paho.Client, sock: Any) -> None:
        self._flush_scheduled = False
        fileno = sock.fileno()

        def write() -> None:
            try:
                client.loop_write()  # unregisters (`_on_socket_unregister_write`) once all is out
            except Exception as exc:  # noqa: BLE001 - a broken connection: disconnect
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        write()
        if client.want_write() and self._writer is None and client.socket() is sock:
            # The socket is full: write the rest when it can take more.
            self._writer = fileno
            self._loop.add_writer(fileno, write)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writer is not None or threading.get_ident() != self._loop_thread:
            self._writer = None
            super()._on_socket_unregister_write(client, userdata, sock)  # remove_writer

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """Queue a message; a QoS 0 one is dropped (and counted) when too many wait. QoS 1
        ones are never dropped: beyond the bounds, the socket is left unread instead."""
        if message.qos == 0 and (
            self._queue.qsize() >= MAX_QUEUED_QOS0 or self.queued_bytes >= PAUSE_READING_AT_BYTES
        ):
            self.qos0_dropped += 1
            return
        self.queued_bytes += len(message.payload) + len(message._topic)
        super()._on_message(client, userdata, message)
        full = (
            self._queue.qsize() >= PAUSE_READING_AT or self.queued_bytes >= PAUSE_READING_AT_BYTES
        )
        if full and not self._paused and self._reader is not None:
            self._loop.remove_reader(self._reader[0])
            self._paused = True
            self.reading_paused += 1
            self._loop.call_later(TRICKLE_S, self._trickle, self._reader)

    def _trickle(self, reader: tuple[int, Callable[[], None]]) -> None:
        """Read on while paused, until the next message (which pauses again while full)."""
        if self._paused and self._reader is reader:
            self._loop.add_reader(*reader)
            self._paused = False

    def taken(self, message: aiomqtt.Message) -> None:
        """A queued message was taken: read the socket again once the queue has room."""
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        self.queued_bytes -= len(payload) + len(str(message.topic).encode())
        room = (
            self._queue.qsize() <= RESUME_READING_AT
            and self.queued_bytes <= RESUME_READING_AT_BYTES
        )
        if room and self._paused and self._reader is not None:
            self._loop.add_reader(*self._reader)
            self._paused = False

    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge an inbound QoS 1 message (PUBACK)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        on_ack = self._on_ack.pop(mid, None)
        if on_ack is not None:
            on_ack(mid, reason_code)
            return
        self._reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        on_ack: Callable[[int, ReasonCode | None], None],
    ) -> int:
        """Publish without waiting; returns the message id. `on_ack(mid, reason)` is called
        from the reader once the broker acknowledged it (QoS 0: once it is written), never
        before this returns. Refuses a topic as `publish_acked` does; raises MqttCodeError
        when paho cannot take the message (no connection)."""
        if topic not in self._valid_topics:  # the outbox's topics are few: checked once each
            bad = topic_refusal(topic)
            if bad is not None:
                raise PublishRefused(topic[:200], f"not a valid topic: {bad}")
            if len(self._valid_topics) >= 1024:
                self._valid_topics.clear()
            self._valid_topics.add(topic)
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        self._on_ack[info.mid] = on_ack
        return info.mid

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait for the broker's acknowledgement; raise if it refused. A topic the
        broker would take for a malformed packet (and drop the connection) is never sent."""
        bad = topic_refusal(topic)
        if bad is not None:
            raise PublishRefused(topic[:200], f"not a valid topic: {bad}")
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=PUBACK_TIMEOUT_S)
        reason = self._reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise PublishRefused(topic, str(reason))


# What paho passes `on_publish` for a successful PUBACK without properties (MQTT 3.1.1: every
# PUBACK), by reason code: 0 success, 0x10 no matching subscribers (MQTT 5's two successes).
# Shared: nothing here changes them.
_PUBACK_SUCCESSES = {code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0, 0x10)}
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _fast_pubacks(client: paho.Client) -> None:
    """Handle the common PUBACK (the message id; in MQTT 5 perhaps a success reason code and an
    empty property length) without paho's decoding, which builds a ReasonCode, a Properties
    (a dictionary of every property name) and a named tuple for each one: about a fifth of the
    relay's CPU time in a profile. Any other PUBACK (a failure code, properties, a malformed one) and every
    PUBCOMP go through paho as before. This relies on internals of paho-mqtt 2.x
    (`_handle_pubackcomp`, `_in_packet`, `_out_messages`, `_do_on_publish`), pinned below 3;
    without them paho's own handling stays."""
    original: Callable[[str], MQTTErrorCode] | None = getattr(client, "_handle_pubackcomp", None)
    needed = ("_protocol", "_in_packet", "_out_message_mutex", "_out_messages", "_do_on_publish")
    if original is None or not all(hasattr(client, name) for name in needed):
        return

    def handle(cmd: str) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        size = len(packet)
        v5 = client._protocol == paho.MQTTv5
        reason = None
        # The message id; then, in MQTT 5, the reason code and the property length (0: none),
        # each only if sent.
        if cmd == "PUBACK" and (size == 2 or (v5 and (size == 3 or (size == 4 and not packet[3])))):
            reason = _PUBACK_SUCCESSES.get(packet[2] if size > 2 else 0)
        if reason is None:
            return original(cmd)
        mid = (packet[0] << 8) | packet[1]
        with client._out_message_mutex:
            if mid in client._out_messages:  # acknowledged once only, as paho does
                return client._do_on_publish(mid, reason, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = handle  # type: ignore[method-assign]


def _cheap_inflight_updates(client: paho.Client) -> None:
    """After every PUBACK, paho (with a `max_inflight` limit) walks every message in flight for
    one queued behind the limit to send: about 3 us per PUBACK with 100 in flight, a tenth of
    the event loop's CPU time per relayed message. The walk can only find one when some stored
    message is not in flight (paho counts those in flight; QoS 0 ones are not stored): it is
    skipped otherwise, which sends exactly what the walk would. Relies on paho-mqtt 2.x
    internals (`_update_inflight`, `_out_messages`, `_inflight_messages`)."""
    original: Callable[[], MQTTErrorCode] | None = getattr(client, "_update_inflight", None)
    if original is None or not all(
        hasattr(client, name) for name in ("_out_messages", "_inflight_messages")
    ):
        return

    def update() -> MQTTErrorCode:
        if len(client._out_messages) <= client._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS  # every stored message is in flight
        return original()

    client._update_inflight = update  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True)
class _ReplyAddress:
    """What a `ReplyHandle` holds for the bridge: where an answer goes, and how it is marked."""

    topic: str
    correlation: bytes | None = None  # MQTT 5 correlation data, sent back as a property
    echo: str | None = None  # MQTT 3.1.1: the request's `correlation`, echoed in the payload


class MqttBridge:
    """Owns the broker connection: statuses, the outbox relay, reconnects.

    Args:
        config: the broker section of the site config.
        topics: this gateway's topic names.
        store: the outbox.
        board: device statuses to publish retained.
        version: software version for the gateway status.
        clock: wall clock.
        outbox_alarm_ratio: outbox fill (rows or bytes, a share of the limit) at which the
            gateway status shows the alarm.
        on_refused: called once per topic the broker refuses to take publishes on (topic,
            reason), or to subscribe to (topic, reason, True).
        inbox: where decoded messages go (the rules' queue); returns the event's number there.
        committed: returns once the event of that number is committed (None: at once).
        routes: the inbound message kinds to subscribe to and decode (None: none).
        notices_dropped: how many events the full outbox had no room for (shown on the status).
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        topics: Topics,
        store: Store,
        board: StatusBoard,
        version: str,
        clock: Callable[[], dt.datetime],
        outbox_alarm_ratio: float | None = None,
        on_refused: Callable[..., None] | None = None,
        inbox: Callable[[Event], Awaitable[int | None]] | None = None,
        committed: Callable[[int], Awaitable[None]] | None = None,
        routes: InboundRoutes | None = None,
        notices_dropped: Callable[[], int] = lambda: 0,
    ) -> None:
        self._config = config
        self._routes = routes
        self._replies = ReplyPolicy(
            {
                RequesterKind.FLEET: config.reply_topics.fleet,
                RequesterKind.WMS: config.reply_topics.wms,
                RequesterKind.HANDHELD: config.reply_topics.handheld,
            },
            topics,
            reserved=routes.reserved_roots if routes is not None else frozenset(),
        )
        self._notices_dropped = notices_dropped
        self._topics = topics
        self._store = store
        self._board = board
        self._version = version
        self._started_at = clock()
        self._outbox_alarm_ratio = outbox_alarm_ratio
        self._on_refused = on_refused
        self._inbox = inbox
        self._committed = committed
        self._last_number: int | None = None  # of the last event this bridge queued
        self._clock = clock
        # Answers to commands: published directly, QoS 1, the oldest dropped past the bound.
        self._responses: deque[tuple[str, bytes | None, bytes]] = deque(maxlen=RESPONSE_BACKLOG)
        self._responses_ready = asyncio.Event()
        self._refused_topics: set[str] = set()
        self._reported_down = False
        self._stop = asyncio.Event()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._endpoints = config.endpoints()
        self._node = 0  # the node of `_endpoints` connected to, or tried next
        self.connected = False  # CONNACK taken and the online status acknowledged
        # When the last CONNACK came (`time.monotonic()`) and from which node: on a cluster
        # the status publish after it may wait longer for the node's storage than the CONNACK.
        self.last_connack: tuple[float, tuple[str, int]] | None = None
        self.subscribed = False  # to the WMS's reference data and the commands
        self.published = 0
        self.refused = 0
        self.responses_refused = 0  # answers not sent: on the gateway's or the site's WMS topics
        self.decode_errors = 0  # messages a decoder raised on (bugs), skipped
        self.received = 0  # inbound messages handled (and acknowledged)
        self.connection_losses = 0  # sessions that ended other than by `stop()`
        self.qos0_dropped = 0  # inbound QoS 0 messages dropped while too many waited
        self.reading_paused = 0  # times the socket was left unread while too many waited
        # Topic filters the broker refuses now (an ACL, or a cluster that cannot take them yet).
        self.subscriptions_refused: set[str] = set()
        self._decoding = DecodePool()
        self._refusals_logged: set[str] = set()  # reasons a reply topic was refused, logged once
        self.statuses_pending = True
        self.state: StateFeed | None = None  # the live state topics (None: not published)
        # Told the time from publish to PUBACK of outbox messages, one in flight at a time.
        self.on_round_trip: Callable[[float], None] | None = None
        # Debug output: newest first to go when more comes than the rate allows.
        self._debug: deque[tuple[str, bytes]] = deque(maxlen=DEBUG_BACKLOG)
        self._debug_ready = asyncio.Event()
        self.debug_max_per_s = 10.0
        self.debug_dropped = 0

    def publish_debug(self, topic: str, payload: bytes) -> None:
        """Queue a debug message (QoS 0, rate-limited; the oldest is dropped when too many wait)."""
        if len(self._debug) == self._debug.maxlen:
            self.debug_dropped += 1
        self._debug.append((topic, payload))
        self._debug_ready.set()

    def reply(
        self, to: ReplyHandle, answer: TaskAnswer | CloseAnswer | HandheldAnswer | CountAnswer
    ) -> None:
        """Send an answer to where its request asked (MQTT 5 request/response, or 3.1.1
        `reply_to`), rendered here; a handle this bridge did not make is refused."""
        address = to.address
        if not isinstance(address, _ReplyAddress):
            self.responses_refused += 1
            log.warning("not answering: a reply handle the bridge did not make")
            return
        if isinstance(answer, TaskAnswer):
            payload = answer_payload(answer, address.echo)
        elif isinstance(answer, HandheldAnswer):
            payload = handheld_answer_payload(answer, address.echo)
        elif isinstance(answer, CountAnswer):
            payload = count_answer_payload(answer)
            if address.echo is not None:
                payload["correlation"] = address.echo
        else:
            payload = close_answer_payload(answer)
        self._responses.append((address.topic, address.correlation, encode(payload)))
        self._responses_ready.set()

    def _reply_handle(
        self, requester: Requester, topic: str, correlation: bytes | None, echo: str | None
    ) -> ReplyHandle | str:
        """A handle for an answer to `requester` on `topic`, or why the gateway must not
        answer there (`ReplyPolicy`: the MQTT topic rules, never a gateway's, the WMS's
        reference data or the robots' topics, and only the configured patterns of the
        requester's kind). A request must not make the gateway publish, with its own
        credentials, where it has no business, nor send a packet the broker rejects as
        malformed (which would cost the connection). A refusal is counted and logged once per
        reason; the rules report it as a rejected request."""
        refusal = self._replies.refusal(requester, topic)
        if refusal is not None:
            self.responses_refused += 1
            if refusal not in self._refusals_logged:
                self._refusals_logged.add(refusal)
                log.warning(
                    "not answering a request: its reply topic is refused",
                    reason=refusal,
                    requester=str(requester),
                    topic=topic[:80],
                )
            return refusal
        return ReplyHandle(_ReplyAddress(topic, correlation, echo))

    @property
    def endpoint(self) -> tuple[str, int]:
        """The broker node connected to, or tried next: (host, port)."""
        return self._endpoints[self._node]

    def stop(self) -> None:
        """Ask the bridge to publish its offline status and disconnect."""
        self._stop.set()

    async def run(self) -> None:
        """Connect, publish, reconnect on failure; returns after `stop()`."""
        loop = asyncio.get_running_loop()
        try:
            await self._reconnecting(loop)
        finally:
            self._decoding.close()

    async def _reconnecting(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            began = loop.time()
            try:
                await self._session()
            except* (aiomqtt.MqttError, OSError, PublishRefused, StorageError) as group:
                self._down(_first(group))
            if loop.time() - began >= HEALTHY_SESSION_S:
                self._backoff.reset()
            if self._stop.is_set():
                return
            # The next node of the cluster: the one lost or refusing may be down.
            self._node = (self._node + 1) % len(self._endpoints)
            delay = self._backoff.next_delay()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _down(self, error: BaseException) -> None:
        if self.connected:
            self.connection_losses += 1
            log.warning("broker connection lost", error=str(error))
        elif not self._reported_down:
            host, port = self.endpoint
            log.warning("broker not reachable", host=host, port=port, error=str(error))
        else:
            log.debug("broker still not reachable", error=str(error))
        self._reported_down = True
        self.connected = False
        self.subscribed = False

    def _client(self) -> _Client:
        config = self._config
        will_payload = encode(
            gateway_status_payload(
                online=False,
                topics=self._topics,
                version=self._version,
                started_at=self._started_at,
                reason="connection lost",
            )
        )
        tls_params = None
        if config.tls is not None:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        # A persistent session: while the gateway is away, the broker keeps what the WMS sends
        # it (a deleted ASN is an empty retained message, which leaves nothing to redeliver).
        v5 = config.protocol == "5"
        session: dict[str, Any] = {"clean_session": False}
        if v5:
            connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect.SessionExpiryInterval = SESSION_EXPIRY_S
            # The broker refuses to send anything larger, instead of the gateway buffering it.
            connect.MaximumPacketSize = config.max_packet_bytes
            # At most this many inbound QoS 1 messages unacknowledged (see the module docstring).
            connect.ReceiveMaximum = config.receive_maximum
            session = {"clean_start": False, "properties": connect}
        host, port = self.endpoint
        client = _Client(
            host,
            port,
            username=config.username,
            password=config.password(),
            identifier=config.client_id or f"gw-{self._topics.site}-{self._topics.gateway}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._topics.status, will_payload, qos=1, retain=True),
            **session,
            keepalive=config.keepalive_s,
            timeout=OPERATION_TIMEOUT_S,
            max_inflight_messages=config.max_inflight,
            # Unbounded here: QoS 1 messages are bounded by the Receive Maximum, QoS 0 ones by
            # `_Client._on_message`.
            max_queued_incoming_messages=0,
            tls_params=tls_params,
        )
        # aiomqtt warns above this many pending calls; the relay's window (`max_inflight`,
        # also paho's cap) is the real one.
        client.pending_calls_threshold = config.max_inflight + 50
        return client

    async def _session(self) -> None:
        client = self._client()
        async with contextlib.AsyncExitStack() as stack:
            # The CONNACK within the connect timeout (a node may hold clients without one);
            # later operations (a SUBACK a cluster takes long to give) have their own.
            async with asyncio.timeout(self._config.connect_timeout_s):
                await stack.enter_async_context(client)
            self.last_connack = (time.monotonic(), self.endpoint)
            tg = await stack.enter_async_context(asyncio.TaskGroup())
            # Messages of the persistent session come at once: taken before anything waits for
            # a PUBACK, which would otherwise wait behind them.
            acks = _Acks(client, self._committed)
            tasks = [
                tg.create_task(self._receive(client, acks), name="bridge.receive"),
                tg.create_task(acks.run(), name="bridge.acks"),
            ]
            await self._publish_status(client, online=True, reason="started")
            await self._requeue_sent()
            if not self.connected:
                host, port = self.endpoint
                log.info("broker connected", host=host, port=port)
            self.connected = True
            self._reported_down = False
            self._board.mark_all()
            tasks += [
                tg.create_task(self._subscribe(client), name="bridge.subscribe"),
                tg.create_task(self._publish_responses(client), name="bridge.responses"),
                tg.create_task(self._publish_statuses(client), name="bridge.statuses"),
                tg.create_task(self._publish_state(client), name="bridge.state"),
                tg.create_task(self._relay(client), name="bridge.relay"),
                tg.create_task(self._retry_refused(client), name="bridge.retries"),
                tg.create_task(self._refresh_status(client), name="bridge.status"),
                tg.create_task(self._publish_debug(client), name="bridge.debug"),
            ]
            await self._stop.wait()
            # The gateway committed what it had queued before stopping the bridge: what came
            # is acknowledged now, or comes again at the next start.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acks.drained(), ACKS_AT_STOP_S)
            for task in tasks:
                task.cancel()
            await self._publish_status(client, online=False, reason="stopped")
            # A clean disconnect: the broker still runs, nothing needs publishing again.
            await self._store.forget_sent()
        self.connected = False
        log.info("broker disconnected: gateway stopping")

    async def _requeue_sent(self) -> None:
        """Publish again what the broker acknowledged within the redelivery window before the
        last connection ended other than cleanly (a lost connection, a crash of the gateway or
        of the whole PC): if the broker crashed, it lost what it took since its last save.
        Consumers see the same ids twice at worst."""
        window = self._config.redeliver_window_s
        if window <= 0:
            return
        requeued = await self._store.requeue_sent(within_s=window)
        if requeued:
            log.info(
                "publishing again what the broker acknowledged just before the connection ended",
                messages=requeued,
                window_s=window,
            )

    def outbox_state(self) -> dict[str, Any]:
        """The outbox as the gateway status shows it."""
        store = self._store
        return {
            "depth": store.depth,
            "limit": store.max_rows,
            "bytes": store.size,
            "bytes_limit": store.max_bytes,
            "refused": store.refused,
            "alarm": self._outbox_alarm_ratio is not None
            and store.fill() >= self._outbox_alarm_ratio,
            "notices_dropped": self._notices_dropped(),
        }

    async def _publish_status(self, client: _Client, *, online: bool, reason: str) -> None:
        payload = gateway_status_payload(
            online=online,
            topics=self._topics,
            version=self._version,
            started_at=self._started_at,
            reason=reason,
            outbox=self.outbox_state(),
        )
        await client.publish_acked(self._topics.status, encode(payload), qos=1, retain=True)

    async def _receive(self, client: _Client, acks: _Acks) -> None:
        """Messages in, decoded at the edge, acknowledged once committed; raises MqttError
        when the link drops. Messages are taken while the subscriptions are made: a broker
        may hold a SUBACK until the retained messages it sends first are acknowledged."""
        async for message in client.messages:
            client.taken(message)
            routes = self._routes
            number = None
            if (
                self._inbox is not None
                and routes is not None
                and isinstance(message.payload, bytes | bytearray | None)
            ):
                try:
                    event = await self._decode(routes, message)
                    if event is not None:
                        number = await self._inbox(event)
                        self._last_number = number
                    else:
                        # Nothing queued: maybe a repeat of one taken in before (a redelivery
                        # after a lost link), whose event may not be committed yet. Acknowledged
                        # once everything this bridge queued so far is.
                        number = self._last_number
                except BaseException:
                    # Not handed on (the link dropped meanwhile): the broker sends it again,
                    # and it must not be taken for a repeat then.
                    routes.forget(str(message.topic))
                    raise
            acks.add(message, number)
            self.received += 1
            self.qos0_dropped = client.qos0_dropped
            self.reading_paused = client.reading_paused
            # A queue of messages would otherwise be decoded without a break: let the rest of
            # the gateway run between two of them.
            await asyncio.sleep(0)

    async def _subscribe(self, client: _Client) -> None:
        """Subscribe to every inbound route, in one SUBSCRIBE; what the broker refuses is asked
        for again with backoff while the connection lasts. A refusal may be an ACL (lasting)
        or a broker that cannot make the subscription now: a NATS cluster without a JetStream
        leader answers 0x80 for a QoS 1 subscription it could not store, and what comes on
        that topic would otherwise never reach the gateway until its next connection."""
        if self._inbox is None or self._routes is None:
            return
        wanted = list(self._routes.subscriptions())
        delay = SUBSCRIBE_RETRY_MIN_S
        while True:
            granted = await client.subscribe(wanted)
            refused = []
            for (topic, qos), code in zip(wanted, granted, strict=False):
                if refused_code(code):
                    refused.append((topic, qos))
                    if topic not in self.subscriptions_refused:
                        self.subscriptions_refused.add(topic)
                        log.error("broker refused a subscription", topic=topic, reason=str(code))
                        if self._on_refused is not None:
                            self._on_refused(topic, str(code), True)
                elif topic in self.subscriptions_refused:
                    self.subscriptions_refused.discard(topic)
                    log.info("broker took a subscription it had refused", topic=topic)
            self.subscribed = True
            if not refused:
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, SUBSCRIBE_RETRY_MAX_S)
            wanted = refused

    async def _decode(self, routes: InboundRoutes, message: aiomqtt.Message) -> Event | None:
        """The domain event of one message (a large one decoded in the worker process); None
        when there is none or the decoder failed (a bug: logged and counted)."""
        correlation = getattr(message.properties, "CorrelationData", None)
        payload = bytes(message.payload or b"")
        received = Received(
            topic=str(message.topic),
            payload=payload,
            retain=message.retain,
            at=self._clock(),
            response_topic=getattr(message.properties, "ResponseTopic", None),
            correlation=None if correlation is None else bytes(correlation),
        )
        try:
            route = routes.route_for(received)
            if route is None:
                return None
            if route.pure is not None and len(payload) >= DECODE_ELSEWHERE_BYTES:
                return await self._decoding.decode(route.pure, received)
            return route.decode(received, self._reply_handle)
        except Exception:  # a decoder bug must not take the gateway off the broker
            self.decode_errors += 1
            routes.forget(received.topic)
            log.exception("cannot decode a message; skipped", topic=received.topic[:200])
            return None

    def publish_urgent(self, topic: str, payload: bytes) -> None:
        """Publish now, ahead of the outbox's backlog (an alarm about that backlog), QoS 1."""
        self._responses.append((topic, None, payload))
        self._responses_ready.set()

    async def _publish_responses(self, client: _Client) -> None:
        """Answers and urgent alarms, each acknowledged; one the broker refuses (an ACL) is
        counted, logged once per topic and reported like any refused publish, not retried."""
        while True:
            await self._responses_ready.wait()
            while self._responses:
                topic, correlation, payload = self._responses.popleft()
                properties = None
                if correlation is not None:
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.CorrelationData = correlation
                try:
                    await client.publish_acked(
                        topic, payload, qos=1, retain=False, properties=properties
                    )
                except (aiomqtt.MqttError, asyncio.CancelledError):
                    # The link dropped (or the session ends): sent again on the next one.
                    self._responses.appendleft((topic, correlation, payload))
                    raise
                except PublishRefused as err:
                    self.refused += 1
                    self.responses_refused += 1
                    if err.topic not in self._refused_topics:
                        self._refused_topics.add(err.topic)
                        log.error(  # noqa: TRY400 - a refusal, not a bug: no traceback
                            "broker refused an answer", topic=err.topic, reason=err.reason
                        )
                        if self._on_refused is not None:
                            self._on_refused(err.topic, err.reason)
            self._responses_ready.clear()

    async def _publish_statuses(self, client: _Client) -> None:
        while True:
            self.statuses_pending = False
            for health in await self._board.changed():
                self.statuses_pending = True
                await client.publish_acked(
                    self._topics.device_status(health.device_id),
                    encode(health.payload()),
                    qos=1,
                    retain=True,
                )

    async def _publish_state(self, client: _Client) -> None:
        """The live state's retained topics: all of them at each connection, then each change.
        A topic is noted in SQLite before its first publish (so that it is cleared once its
        thing is gone, also after a restart) and forgotten once its clearing is acknowledged."""
        state = self.state
        if state is None:
            return
        state.resend_all()
        while True:
            window = await state.take(STATE_WINDOW)
            new = [topic for topic, payload in window if payload and topic not in state.known]
            try:
                if new:
                    await self._store.add_state_topics(new)
                    state.known.update(new)
            except StorageError as err:  # not published unnoted: tried again in a second
                state.put_back(window)
                log.error("cannot note state topics; retrying", error=str(err))  # noqa: TRY400
                await asyncio.sleep(1.0)
                continue
            try:
                results = await asyncio.gather(
                    *(
                        client.publish_acked(topic, payload, qos=1, retain=True)
                        for topic, payload in window
                    ),
                    return_exceptions=True,
                )
            except BaseException:
                state.put_back(window)
                raise
            lost = [
                item
                for item, result in zip(window, results, strict=True)
                if isinstance(result, BaseException) and not isinstance(result, PublishRefused)
            ]
            if lost:  # the link dropped: the rest go at the next connection
                state.put_back(lost)
                raise next(r for r in results if isinstance(r, BaseException))
            for result in results:
                if isinstance(result, PublishRefused):
                    state.refused += 1
                    self._log_refused_once(result)
            cleared = [topic for topic, payload in window if not payload]
            if cleared:
                with contextlib.suppress(StorageError):  # cleared again after a restart
                    await self._store.forget_state_topics(cleared)
                    state.known.difference_update(cleared)

    def _log_refused_once(self, err: PublishRefused) -> None:
        """One alarm for the whole state tree (an ACL that predates it refuses every topic)."""
        tree = self._topics.state("#", "").removesuffix("/")
        if tree not in self._refused_topics:
            self._refused_topics.add(tree)
            log.error("broker refused a state topic", topic=err.topic, reason=err.reason)
            if self._on_refused is not None:
                self._on_refused(tree, err.reason)

    async def _refresh_status(self, client: _Client) -> None:
        """Republish the online status when the outbox's alarm state flips, or every refresh
        period while its figures change, so that a backlog is visible before it drains."""
        shown = self.outbox_state()
        last = asyncio.get_running_loop().time()
        while True:
            await self._store.wait_changed(self._store.version, timeout=1.0)
            state = self.outbox_state()
            now = asyncio.get_running_loop().time()
            if state["alarm"] != shown["alarm"] or (
                state != shown and now - last >= STATUS_REFRESH_S
            ):
                await self._publish_status(client, online=True, reason="started")
                shown, last = state, now

    async def _retry_refused(self, client: _Client) -> None:
        """Publish refused messages again when their retry time comes."""
        while True:
            await asyncio.sleep(RETRY_SWEEP_S)
            for row in await self._store.due_retries(now=time.time()):
                await self._publish_one(client, row)

    async def _publish_debug(self, client: _Client) -> None:
        interval = 1.0 / self.debug_max_per_s
        while True:
            await self._debug_ready.wait()
            while self._debug:
                topic, payload = self._debug.popleft()
                await client.publish(topic, payload, qos=0)
                await asyncio.sleep(interval)
            self._debug_ready.clear()

    async def _relay(self, client: _Client) -> None:
        """Publish the outbox in `seq` order, `max_inflight` at a time, and take each message
        out once the broker's PUBACK carries a success code (`_record_acks`).

        Publishing costs no task, future or timer per message: a PUBACK calls `on_ack` from
        the reader, which frees a place in the window and queues the row's `seq` for the next
        acknowledgement transaction (a refused row is set aside instead); this task wakes once
        per read of PUBACKs to fill the window again. `_watch_pubacks` ends the session when the oldest publish waits for its
        PUBACK longer than `PUBACK_TIMEOUT_S`."""
        limit = self._config.max_inflight
        sent: dict[int, PendingMessage] = {}  # by message id, oldest first
        acked: list[int] = []
        ack_ready = asyncio.Event()
        room = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            timed: tuple[int, float] | None = None  # one publish at a time: (mid, sent at)

            def on_ack(mid: int, reason: ReasonCode | None) -> None:
                nonlocal timed
                row = sent.pop(mid)
                room.set()
                if timed is not None and timed[0] == mid:
                    if self.on_round_trip is not None:
                        self.on_round_trip(time.monotonic() - timed[1])
                    timed = None
                if reason is not None and reason.is_failure:
                    # Kept in the outbox, set aside for a retry; the rows behind it go on.
                    refusal = self._refused(row, PublishRefused(row.topic, str(reason)))
                    try:
                        tg.create_task(refusal)
                    except RuntimeError:  # the session is ending: the row is published again
                        refusal.close()
                    return
                acked.append(row.seq)
                ack_ready.set()
                self.published += 1

            tg.create_task(self._record_acks(acked, ack_ready), name="bridge.acks")
            tg.create_task(self._watch_pubacks(sent), name="bridge.pubacks")
            cursor = 0
            while True:
                seen = self._store.version
                rows = await self._store.pending(after_seq=cursor, limit=FETCH_BATCH)
                if not rows:
                    await self._store.wait_changed(seen, timeout=5.0)
                    continue
                for row in rows:
                    while len(sent) >= limit:
                        room.clear()
                        await room.wait()
                    try:
                        mid = client.publish_nowait(
                            row.topic, row.payload, qos=row.qos, retain=row.retain, on_ack=on_ack
                        )
                    except PublishRefused as err:  # a topic no broker takes
                        await self._refused(row, err)
                        continue
                    sent[mid] = row
                    if timed is None:
                        timed = (mid, time.monotonic())
                cursor = rows[-1].seq

    async def _watch_pubacks(self, sent: dict[int, PendingMessage]) -> None:
        """End the session (the connection is taken as dead) when the same publish has been the
        oldest in flight for longer than `PUBACK_TIMEOUT_S`, waiting for its PUBACK (checked a
        few times per timeout, so that no publish needs a time of its own)."""
        loop = asyncio.get_running_loop()
        oldest: tuple[int, float] | None = None  # its seq, since when it was seen the oldest
        while True:
            await asyncio.sleep(min(1.0, PUBACK_TIMEOUT_S / 4))
            row = next(iter(sent.values()), None)  # insertion order: the oldest first
            if row is None:
                oldest = None
            elif oldest is None or oldest[0] != row.seq:
                oldest = (row.seq, loop.time())
            elif loop.time() - oldest[1] > PUBACK_TIMEOUT_S:
                raise aiomqtt.MqttError("Operation timed out")

    async def _publish_one(self, client: _Client, row: PendingMessage) -> None:
        """Publish one message outside the pipelined stream (retries)."""
        try:
            await client.publish_acked(row.topic, row.payload, qos=row.qos, retain=row.retain)
        except PublishRefused as err:
            await self._refused(row, err)
            return
        await self._store.acknowledge([row.seq], keep_s=self._config.redeliver_window_s)
        self.published += 1
        log.info("refused message accepted on retry", topic=row.topic, attempts=row.attempts)

    async def _refused(self, row: PendingMessage, err: PublishRefused) -> None:
        """Keep a refused row, set aside for a retry with backoff; tell the app once per topic.

        Some brokers (Mosquitto 2.0.11) also drop the connection right after the refusal, which
        cancels this task: the app is told first, and the store finishes its update regardless.
        """
        self.refused += 1
        if row.topic not in self._refused_topics:
            self._refused_topics.add(row.topic)
            log.error(
                "broker refused a message; kept for retry", topic=row.topic, reason=err.reason
            )
            if self._on_refused is not None:
                self._on_refused(row.topic, err.reason)
        delay = min(REFUSED_RETRY_MAX_S, REFUSED_RETRY_MIN_S * 2 ** min(row.attempts, 16))
        await self._store.refuse(row.seq, reason=err.reason, retry_at=time.time() + delay)

    async def _record_acks(self, acked: list[int], ack_ready: asyncio.Event) -> None:
        while True:
            await ack_ready.wait()
            ack_ready.clear()
            batch = acked[:]
            del acked[: len(batch)]
            await self._store.acknowledge(batch, keep_s=self._config.redeliver_window_s)


class _Acks:
    """Inbound QoS 1 messages of one connection still to acknowledge, in arrival order (MQTT
    wants PUBACKs in the order of the PUBLISHes), each once what it brought is committed."""

    def __init__(self, client: _Client, committed: Callable[[int], Awaitable[None]] | None) -> None:
        self._client = client
        self._committed = committed
        self._waiting: deque[tuple[aiomqtt.Message, int | None]] = deque()
        self._changed = asyncio.Event()

    def add(self, message: aiomqtt.Message, number: int | None) -> None:
        """Acknowledge `message` once inbox event `number` is committed (None: nothing queued
        for it; after those before it)."""
        if message.qos > 0:
            self._waiting.append((message, number))
            self._changed.set()

    async def run(self) -> None:
        """Acknowledge, in order, as commits come; until cancelled with the connection."""
        while True:
            while not self._waiting:
                self._changed.clear()
                await self._changed.wait()
            message, number = self._waiting[0]
            if number is not None and self._committed is not None:
                await self._committed(number)
            self._waiting.popleft()
            self._client.ack(message)
            self._changed.set()

    async def drained(self) -> None:
        """Return once nothing waits to be acknowledged."""
        while self._waiting:
            self._changed.clear()
            await self._changed.wait()


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
