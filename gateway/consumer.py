"""A reference WMS-side consumer: the gateways' transactions and events into PostgreSQL, each once.

Several consumers share the load through an MQTT 5 shared subscription (`$share/{group}/...`:
the broker gives each message to one of them). NATS's MQTT listener has no shared
subscriptions; its own equivalent is a JetStream durable pull consumer, on the stream in which
NATS keeps the MQTT messages, that several processes pull from (`JetStreamConsumer`: each
message goes to one of them, and comes again after `ack_wait` if it was not acknowledged). Every message the gateways publish on
`tx/#`, `receipt`, `shipment`, `event`, `alarm`, `agv/task` and `zone/event` carries a
deterministic id (`tx_id` or `event_id`): it is the table's primary key, so a redelivery (a
gateway's redelivery window, a consumer killed before its acknowledgement reached the broker,
the broker giving the message to another consumer) only counts one more delivery.

At least once in, exactly once in the table: messages are acknowledged (MQTT PUBACK, manual)
only after the transaction that stores them committed. A consumer killed in between leaves
them unacknowledged; the broker sends them again (to it, or to another member of the group).
A payload that is not JSON or has no id is counted and acknowledged (it would never store).

Run with `gateway consume --broker HOST:PORT --dsn postgresql://... --site DC1`, or on NATS
`gateway consume --nats nats://HOST:4222 --dsn ... --site DC1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.client import topic_matches_sub

from gateway.bridge.suback import subscribe_or_raise

log = structlog.get_logger("gateway.consumer")

__all__ = ["SCHEMA", "Consumer", "ConsumerStats", "JetStreamConsumer", "durable_name", "topics_of"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_message (
    id          TEXT PRIMARY KEY,          -- the payload's tx_id or event_id
    topic       TEXT NOT NULL,             -- where it came first
    site        TEXT,
    gateway     TEXT,
    body        JSONB NOT NULL,
    consumer    TEXT NOT NULL,             -- the consumer that stored it (its client id)
    first_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    deliveries  INTEGER NOT NULL DEFAULT 1 -- how many times it came
);
"""

SCHEMA_LOCK = 0x67775F6D7367  # a PostgreSQL advisory lock key of the consumers' own

_INSERT = (
    "INSERT INTO gateway_message (id, topic, site, gateway, body, consumer)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET deliveries = gateway_message.deliveries + 1"
    " RETURNING xmax = 0"  # PostgreSQL: true for a row inserted, false for one updated
)

BATCH_MAX = 200
"""Messages stored in one PostgreSQL transaction at most (those that arrived together)."""


def topics_of(site: str) -> list[str]:
    """The topic filters of every gateway of `site` whose messages carry an id."""
    base = f"gw/{site}/+"
    return [
        f"{base}/tx/#",
        f"{base}/receipt",
        f"{base}/shipment",
        f"{base}/event",
        f"{base}/alarm",
        f"{base}/agv/task",
        f"{base}/zone/event",
    ]


MQTT_STREAM = "$MQTT_msgs"
"""The JetStream stream NATS's MQTT listener keeps QoS 1 messages in (NATS 2.9 and later)."""
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."


def _topic_of(subject: str) -> str:
    """The MQTT topic of a NATS subject of `$MQTT_msgs`: NATS maps `a/b` to `a.b`, and a `.`
    within a level to `//` (NATS 2.10; 2.9 refuses such topics)."""
    levels = subject.removeprefix(MQTT_SUBJECT_PREFIX).split(".")
    return "/".join(level.replace("//", ".") for level in levels)


def _subject_level(level: str) -> str:
    """One MQTT topic level as NATS writes it in a subject."""
    return level.replace(".", "//")


def durable_name(group: str, site: str) -> str:
    """The JetStream durable consumer of `group` for `site`: one per site, since the stream is
    the whole cluster's (a durable's name may hold neither `.` nor wildcards)."""
    return f"{group}_{site}".replace(".", "_")


@dataclass
class ConsumerStats:
    """What a consumer did since it started."""

    received: int = 0  # messages taken from the broker (repeats included)
    stored: int = 0  # messages whose row was new
    repeats: int = 0  # messages whose id was stored already
    unusable: int = 0  # not JSON, or no id: acknowledged and dropped


class _AckingClient(aiomqtt.Client):
    """aiomqtt's client acknowledging inbound QoS 1 messages only when told (`ack`).

    aiomqtt 2.x has no such switch; its paho client (`_client`) has (the gateway's bridge does
    the same)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client.manual_ack_set(True)

    def ack(self, message: aiomqtt.Message) -> None:
        """PUBACK for one message (QoS 0 has none)."""
        if message.qos > 0:
            self._client.ack(message.mid, message.qos)


class Consumer:
    """One member of a consumer group (see the module docstring).

    Args:
        host, port: the broker (one node of a cluster).
        dsn: the PostgreSQL connection string.
        site: the site whose gateways' messages it takes.
        group: the shared subscription's group (None: a plain subscription, one consumer).
        client_id: its MQTT client id (persistent session: what comes while it is away waits).
        protocol: "5" or "3.1.1".
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        dsn: str,
        site: str,
        group: str | None = "wms",
        client_id: str = "wms-consumer-1",
        protocol: str = "5",
    ) -> None:
        self._host, self._port, self._dsn = host, port, dsn
        self._site, self._group, self._client_id = site, group, client_id
        self._protocol = protocol
        self.stats = ConsumerStats()

    async def run(self) -> None:
        """Consume until cancelled; a lost broker or database is retried after a second."""
        import psycopg  # the consumer's own dependency (extra "consumer")

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as db:
                    await _schema(db)
                    await self._consume(db)
            except (aiomqtt.MqttError, psycopg.Error) as err:
                log.warning("consumer: connection lost; again in 1 s", error=str(err))
                await asyncio.sleep(1.0)

    async def _consume(self, db: Any) -> None:
        v5 = self._protocol == "5"
        # A persistent session: what comes while the consumer is away waits for it.
        session: dict[str, Any] = (
            {"clean_start": False, "properties": _session_properties()}
            if v5
            else {"clean_session": False}
        )
        client = _AckingClient(
            self._host,
            self._port,
            identifier=self._client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            max_queued_incoming_messages=0,
            **session,
        )
        async with client:
            for topic in topics_of(self._site):
                shared = f"$share/{self._group}/{topic}" if self._group else topic
                await subscribe_or_raise(client, shared)
            log.info("consumer subscribed", site=self._site, group=self._group)
            messages = aiter(client.messages)
            while True:
                batch = [await anext(messages)]
                while len(batch) < BATCH_MAX and len(client.messages):
                    batch.append(await anext(messages))
                await store(
                    db, [(str(m.topic), m.payload) for m in batch], self.stats, self._client_id
                )
                for message in batch:
                    client.ack(message)


async def store(db: Any, batch: list[tuple[str, Any]], stats: ConsumerStats, by: str) -> None:
    """Store (topic, payload) pairs in one PostgreSQL transaction; count them in `stats`."""
    rows = []
    for topic, payload in batch:
        stats.received += 1
        row = _row(topic, payload)
        if row is None:
            stats.unusable += 1
            log.warning("consumer: a message without JSON or id", topic=topic)
            continue
        rows.append(row)
    import psycopg

    fresh = refused = 0
    try:
        async with db.transaction():
            for row in rows:
                inserted = await (await db.execute(_INSERT, (*row, by))).fetchone()
                fresh += 1 if inserted and inserted[0] else 0
    except psycopg.DataError:
        # One row PostgreSQL cannot take (a NUL in a JSON string): the others one by one, that
        # one counted and dropped (it would fail, and come again, for ever).
        fresh = 0
        for row in rows:
            try:
                async with db.transaction():
                    inserted = await (await db.execute(_INSERT, (*row, by))).fetchone()
            except psycopg.DataError as err:
                refused += 1
                log.warning("consumer: PostgreSQL refused a message", id=row[0], error=str(err))
                continue
            fresh += 1 if inserted and inserted[0] else 0
    stats.unusable += refused
    stats.stored += fresh
    stats.repeats += len(rows) - fresh - refused


async def _schema(db: Any) -> None:
    async with db.transaction():  # one at a time: CREATE races otherwise
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await db.execute(SCHEMA)


class JetStreamConsumer:
    """One member of a consumer group on a NATS cluster (see the module docstring).

    NATS's MQTT listener stores every QoS 1 message it takes in its JetStream stream
    `$MQTT_msgs` (subjects `$MQTT.msgs.<topic as subject>`) before it sends the PUBACK; the
    stream keeps a message while a consumer has an interest in it. So a durable pull consumer
    `group` on that stream, filtered to the site's gateways (`$MQTT.msgs.gw.{site}.>`), holds
    everything a gateway was acknowledged for, until a member stored it: members pull batches,
    store each in one PostgreSQL transaction and acknowledge its messages after the commit.
    Messages of other topics (statuses, live state) are acknowledged unstored. What is
    published before the durable consumer exists is not kept for it: start a consumer (it
    makes the durable consumer once NATS has made its stream, at the first MQTT client)
    before the gateways publish.

    Args:
        servers: NATS URLs of the cluster's nodes (nats://host:4222).
        dsn: the PostgreSQL connection string.
        site: the site whose gateways' messages it takes.
        group: the durable consumer's name, shared by the group's members.
        name: this member's name (stored with each row it wrote first).
        ack_wait_s: how long a message a member took may stay unacknowledged before it goes
            again (to any member).
    """

    def __init__(
        self,
        *,
        servers: list[str],
        dsn: str,
        site: str,
        group: str = "wms",
        name: str = "wms-consumer-1",
        ack_wait_s: float = 30.0,
    ) -> None:
        self._servers, self._dsn, self._site = servers, dsn, site
        self._group, self._name = group, name
        self._ack_wait_s = ack_wait_s
        self._filters = topics_of(site)
        self.stats = ConsumerStats()
        self.skipped = 0  # messages of the site's other topics, acknowledged unstored

    async def run(self) -> None:
        """Consume until cancelled; a lost cluster or database is retried after a second."""
        import nats
        import nats.errors
        import nats.js.errors
        import psycopg

        while True:
            try:
                nc = await nats.connect(
                    servers=self._servers,
                    name=self._name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                )
                try:
                    async with await psycopg.AsyncConnection.connect(
                        self._dsn, autocommit=True
                    ) as db:
                        await _schema(db)
                        await self._consume(nc, db)
                finally:
                    with contextlib.suppress(Exception):
                        await nc.close()
            except (nats.errors.Error, psycopg.Error, OSError, TimeoutError) as err:
                log.warning("consumer: connection lost; again in 1 s", error=str(err) or repr(err))
                await asyncio.sleep(1.0)

    async def _consume(self, nc: Any, db: Any) -> None:
        import nats.errors
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = nc.jetstream(timeout=5)
        while True:  # NATS makes its MQTT streams at the first MQTT client
            try:
                await js.stream_info(MQTT_STREAM)
                break
            except nats.js.errors.NotFoundError:
                log.info("consumer: waiting for NATS's MQTT stream", stream=MQTT_STREAM)
                await asyncio.sleep(1.0)
        durable = durable_name(self._group, self._site)
        await js.add_consumer(
            MQTT_STREAM,
            ConsumerConfig(
                durable_name=durable,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                filter_subject=f"{MQTT_SUBJECT_PREFIX}gw.{_subject_level(self._site)}.>",
                ack_wait=self._ack_wait_s,
                max_ack_pending=10 * BATCH_MAX,
            ),
        )
        pull = await js.pull_subscribe_bind(durable=durable, stream=MQTT_STREAM)
        log.info("consumer pulling", stream=MQTT_STREAM, durable=durable, name=self._name)
        while True:
            try:
                batch = await pull.fetch(BATCH_MAX, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            items = []
            for message in batch:
                topic = _topic_of(message.subject)
                if any(topic_matches_sub(f, topic) for f in self._filters):
                    items.append((topic, message.data))
                else:
                    self.skipped += 1
            await store(db, items, self.stats, self._name)
            for message in batch:
                await message.ack()


def _row(topic: str, payload: Any) -> tuple[str, str, str | None, str | None, str] | None:
    """(id, topic, site, gateway, body JSON) of a message; None when it has no id."""
    if not isinstance(payload, bytes | bytearray):
        return None
    with contextlib.suppress(ValueError, RecursionError):
        body = json.loads(payload)
        if isinstance(body, dict):
            ident = body.get("tx_id") or body.get("event_id")
            if isinstance(ident, str) and ident:
                return ident, topic, body.get("site"), body.get("gateway"), json.dumps(body)
    return None


def _session_properties() -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = 7 * 86400  # what comes while it is away waits a week
    return connect
