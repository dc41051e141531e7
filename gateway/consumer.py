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

Nothing lost, even by a broker: every transaction carries its number on its topic
(`sequence`: the gateway's stream and n), and each gateway announces the last number of each
topic (`gw/{site}/{gateway}/sequence`). The consumers keep both in PostgreSQL and look for
numbers missing every `check_s`; one still missing at the next look is asked for again
(`cmd/resend`, the gateway publishes it again from what it keeps), and again while it stays
missing. So a message the broker acknowledged and then lost (a crash between two saves, a
cluster losing a node) still reaches the table.

Run with `gateway consume --broker HOST:PORT --dsn postgresql://... --site DC1`, or on NATS
`gateway consume --nats nats://HOST:4222 --dsn ... --site DC1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.client import topic_matches_sub

from gateway.bridge.suback import subscribe_or_raise
from gateway.storage import RESEND_MAX

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
ALTER TABLE gateway_message ADD COLUMN IF NOT EXISTS stream TEXT;   -- its sequence, if any
ALTER TABLE gateway_message ADD COLUMN IF NOT EXISTS n BIGINT;
-- Every transaction number that arrived (a repeat of an id too, and one PostgreSQL refused
-- to store), or was given up (`given_up`: asked for too long, never came).
CREATE TABLE IF NOT EXISTS gateway_number (
    topic    TEXT NOT NULL,
    stream   TEXT NOT NULL,
    n        BIGINT NOT NULL,
    given_up BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (topic, stream, n)
);
-- Per numbered topic and stream: the numbers the gateway announced (first still kept, last
-- given) and up to where every one is stored.
CREATE TABLE IF NOT EXISTS gateway_sequence (
    topic       TEXT NOT NULL,
    stream      TEXT NOT NULL,
    first       BIGINT NOT NULL,
    last        BIGINT NOT NULL,
    complete_to BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, stream)
);
"""

SCHEMA_LOCK = 0x67775F6D7367  # a PostgreSQL advisory lock key of the consumers' own
CHECK_LOCK = SCHEMA_LOCK + 1  # held by the one member of a group that checks the numbers

_INSERT = (
    "INSERT INTO gateway_message (id, topic, site, gateway, body, stream, n, consumer)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET deliveries = gateway_message.deliveries + 1"
    " RETURNING xmax = 0"  # PostgreSQL: true for a row inserted, false for one updated
)

_SEEN = (  # a numbered message: its topic and stream are known from then on (from 1)
    "INSERT INTO gateway_sequence (topic, stream, first, last) VALUES (%s, %s, 1, %s)"
    " ON CONFLICT (topic, stream) DO UPDATE SET last = GREATEST(gateway_sequence.last, excluded.last)"
)
_ANNOUNCED = (  # a gateway's announcement: from the first it keeps to the last it gave
    "INSERT INTO gateway_sequence (topic, stream, first, last) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (topic, stream) DO UPDATE SET"
    " first = GREATEST(gateway_sequence.first, excluded.first),"
    " last = GREATEST(gateway_sequence.last, excluded.last)"
)
_ARRIVED = (
    "INSERT INTO gateway_number (topic, stream, n, given_up) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_FROM = "GREATEST(s.first, s.complete_to + 1)"
_MISSING = f"""
SELECT s.topic, s.stream, g.n
FROM gateway_sequence s
CROSS JOIN LATERAL (
    SELECT g.n FROM generate_series({_FROM}, LEAST(s.last, {_FROM} + %(span)s - 1)) AS g(n)
    WHERE NOT EXISTS (
        SELECT 1 FROM gateway_number x
        WHERE x.topic = s.topic AND x.stream = s.stream AND x.n = g.n
    )
    ORDER BY g.n
    LIMIT %(limit)s
) g
ORDER BY s.topic, s.stream, g.n
"""  # noqa: S608 - no input in the text: parameters only
"""Numbers missing, per topic and stream from where every one had come last time: at most
`span` looked at and `limit` found (an announcement claiming a huge `last`, forged or not,
costs one span a look, and leaves the other topics their share)."""
_SPANS = f"SELECT s.topic, s.stream, {_FROM}, s.last FROM gateway_sequence s"  # noqa: S608
SPAN = 100_000
"""Numbers of one topic looked at in one check at most."""
STREAM = re.compile(r"[0-9a-f]{16}")
"""A gateway's stream id (`sequence.schema.json`)."""


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
        f"{base}/sequence",
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
    announcements: int = 0  # gateways' sequence announcements taken
    missing: int = 0  # numbers found missing (each once)
    resend_requests: int = 0  # cmd/resend sent
    given_up: int = 0  # numbers asked for in vain for `give_up_s`


Publish = Callable[[str, bytes], Awaitable[None]]
"""Publish a payload on an MQTT topic (the consumer's broker connection)."""


class GapRepair:
    """Finds the numbers missing in PostgreSQL and asks their gateways for them again.

    Every `check_s`: the numbers missing between the first a gateway keeps (or 1) and the
    last it announced or a consumer stored (`_MISSING`, from where every one had come last
    time). A number missing at two looks in a row (not merely in flight to another member
    of the group) is asked for (`cmd/resend` to its gateway, in ranges), and again every
    `again_s` while it stays missing; after `give_up_s` it is given up (logged, counted,
    marked in `gateway_number`): the gateway no longer has it, or never will (a replaced
    file's stream), and the numbers after it are checked on. One member of a group checks
    at a time (a PostgreSQL advisory lock its connection holds), so each number is asked for
    once, not once per member.
    """

    def __init__(
        self,
        dsn: str,
        stats: ConsumerStats,
        *,
        check_s: float = 5.0,
        again_s: float = 15.0,
        give_up_s: float = 3600.0,
        limit: int = 5_000,
    ) -> None:
        self._dsn, self.stats = dsn, stats
        self._check_s, self._again_s, self._limit = check_s, again_s, limit
        self._give_up_s = give_up_s
        self._seen: dict[tuple[str, str, int], float] = {}  # missing since (monotonic)
        self._asked: dict[tuple[str, str, int], float] = {}

    async def run(self, publish: Publish) -> None:
        """Look every `check_s` until cancelled (its own PostgreSQL connection); a lost
        database is retried."""
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as db:
                    await _schema(db)
                    await db.execute("SET statement_timeout = '60s'")  # a look, not a hang
                    while True:
                        await asyncio.sleep(self._check_s)
                        await self.check(db, publish)
            except Exception as err:  # noqa: BLE001 - the database or the broker: look again
                log.warning("consumer: gap check failed; again in 1 s", error=str(err))
                await asyncio.sleep(1.0)

    async def check(self, db: Any, publish: Publish) -> int:
        """One look, by the one member of the group that holds the check's lock (a session
        lock: taken over by another member when its connection ends); returns how many
        numbers were asked for."""
        (mine,) = await (
            await db.execute("SELECT pg_try_advisory_lock(%s)", (CHECK_LOCK,))
        ).fetchone()
        if not mine:
            return 0  # another member checks
        spans = await (await db.execute(_SPANS)).fetchall()
        params = {"span": SPAN, "limit": self._limit}
        rows = await (await db.execute(_MISSING, params)).fetchall()
        now = time.monotonic()
        missing = {(str(t), str(s), int(n)) for t, s, n in rows}
        self._seen = {k: v for k, v in self._seen.items() if k in missing}
        self._asked = {k: v for k, v in self._asked.items() if k in missing}
        due: list[tuple[str, str, int]] = []
        gone: list[tuple[str, str, int]] = []
        for key in sorted(missing):
            if key not in self._seen:
                self._seen[key] = now
                self.stats.missing += 1
            elif now - self._seen[key] >= self._give_up_s:
                gone.append(key)
            elif now - self._asked.get(key, -self._again_s) >= self._again_s:
                due.append(key)
                self._asked[key] = now
        if gone:
            async with db.transaction():
                for key in gone:
                    await db.execute(_ARRIVED, (*key, True))
            self.stats.given_up += len(gone)
            for topic, stream, first, last in _ranges(gone):
                log.error(
                    "consumer: transactions never came; given up",
                    topic=topic,
                    stream=stream,
                    first=first,
                    last=last,
                )
            missing -= set(gone)
        # Up to where every number came, so the next look starts there.
        lowest: dict[tuple[str, str], int] = {}
        found = Counter((str(t), str(s)) for t, s, _n in rows)
        for topic, stream, n in sorted(missing):
            lowest.setdefault((topic, stream), n)
        async with db.transaction():
            for topic, stream, start, last in spans:
                end = min(int(last), int(start) + SPAN - 1)  # the span looked at
                every = found.get((topic, stream), 0) < self._limit  # the span all seen
                to = lowest.get((topic, stream), end + 1 if every else None)
                if to is not None:
                    await db.execute(
                        "UPDATE gateway_sequence SET complete_to = GREATEST(complete_to, %s)"
                        " WHERE topic = %s AND stream = %s",
                        (to - 1, topic, stream),
                    )
        for topic, stream, first, last in _ranges(due):
            base, _, name = topic.rpartition("/tx/")
            request = {
                "version": 1,
                "topic": f"tx/{name}",
                "stream": stream,
                "first": first,
                "last": last,
            }
            await publish(f"{base}/cmd/resend", json.dumps(request).encode())
            self.stats.resend_requests += 1
            log.info(
                "consumer: asked for missing transactions", topic=topic, first=first, last=last
            )
        return len(due)


async def _beside(helper: Awaitable[None], main: Awaitable[None]) -> None:
    """Run `main`, with `helper` beside it until `main` ends (or raises)."""
    task = asyncio.ensure_future(helper)
    try:
        await main
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _ranges(keys: list[tuple[str, str, int]]) -> list[tuple[str, str, int, int]]:
    """Sorted (topic, stream, n) as (topic, stream, first, last) runs of at most RESEND_MAX."""
    out: list[tuple[str, str, int, int]] = []
    for topic, stream, n in keys:
        last = out[-1] if out else None
        if last and last[:2] == (topic, stream) and last[3] == n - 1 and n - last[2] < RESEND_MAX:
            out[-1] = (topic, stream, last[2], n)
            continue
        out.append((topic, stream, n, n))
    return out


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
        check_s: how often to look for transactions missing (see `GapRepair`).
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
        check_s: float = 5.0,
    ) -> None:
        self._host, self._port, self._dsn = host, port, dsn
        self._site, self._group, self._client_id = site, group, client_id
        self._protocol = protocol
        self.stats = ConsumerStats()
        self.repair = GapRepair(dsn, self.stats, check_s=check_s)

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

            async def publish(topic: str, payload: bytes) -> None:
                await client.publish(topic, payload, qos=1)

            await _beside(self.repair.run(publish), self._take(client, db))

    async def _take(self, client: _AckingClient, db: Any) -> None:
        """Store what comes, batch by batch, acknowledging each batch once committed."""
        messages = aiter(client.messages)
        while True:
            batch = [await anext(messages)]
            while len(batch) < BATCH_MAX and len(client.messages):
                batch.append(await anext(messages))
            await store(db, [(str(m.topic), m.payload) for m in batch], self.stats, self._client_id)
            for message in batch:
                client.ack(message)


async def store(db: Any, batch: list[tuple[str, Any]], stats: ConsumerStats, by: str) -> None:
    """Store (topic, payload) pairs in one PostgreSQL transaction; count them in `stats`."""
    rows = []
    announced = []
    for topic, payload in batch:
        stats.received += 1
        if topic.endswith("/sequence"):
            numbers = _announced(topic, payload)
            if not numbers:
                stats.unusable += 1
                log.warning("consumer: a sequence announcement failing its schema", topic=topic)
            announced.extend(numbers)
            stats.announcements += 1
            continue
        row = _row(topic, payload)
        if row is None:
            stats.unusable += 1
            log.warning("consumer: a message without JSON or id", topic=topic)
            continue
        rows.append(row)
    import psycopg

    fresh = refused = 0
    if announced:
        async with db.transaction():
            for topic_numbers in announced:
                await db.execute(_ANNOUNCED, topic_numbers)
    try:
        async with db.transaction():
            for row in rows:
                inserted = await (await db.execute(_INSERT, (*row, by))).fetchone()
                fresh += 1 if inserted and inserted[0] else 0
                await _numbered(db, row)
    except psycopg.DataError:
        # One row PostgreSQL cannot take (a NUL in a JSON string): the others one by one, that
        # one counted and dropped (it would fail, and come again, for ever).
        fresh = 0
        for row in rows:
            try:
                async with db.transaction():
                    inserted = await (await db.execute(_INSERT, (*row, by))).fetchone()
                    await _numbered(db, row)
            except psycopg.DataError as err:
                refused += 1
                log.warning("consumer: PostgreSQL refused a message", id=row[0], error=str(err))
                async with db.transaction():  # its number came: not to be asked for again
                    await _numbered(db, row)
                continue
            fresh += 1 if inserted and inserted[0] else 0
    stats.unusable += refused
    stats.stored += fresh
    stats.repeats += len(rows) - fresh - refused


async def _numbered(db: Any, row: Row) -> None:
    """Note a numbered message's number as come (a repeat of its id too)."""
    if row[5] is not None and row[6] is not None:
        await db.execute(_SEEN, (row[1], row[5], row[6]))
        await db.execute(_ARRIVED, (row[1], row[5], row[6], False))


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
        check_s: how often to look for transactions missing (see `GapRepair`).
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
        check_s: float = 5.0,
    ) -> None:
        self._servers, self._dsn, self._site = servers, dsn, site
        self._group, self._name = group, name
        self._ack_wait_s = ack_wait_s
        self._filters = topics_of(site)
        self.stats = ConsumerStats()
        self.skipped = 0  # messages of the site's other topics, acknowledged unstored
        self.repair = GapRepair(dsn, self.stats, check_s=check_s)

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

        async def publish(topic: str, payload: bytes) -> None:
            # NATS hands a message on a topic's subject to that topic's MQTT subscribers.
            await nc.publish(".".join(_subject_level(level) for level in topic.split("/")), payload)

        await _beside(self.repair.run(publish), self._pull(pull, db))

    async def _pull(self, pull: Any, db: Any) -> None:
        """Store what comes, batch by batch, acknowledging each batch once committed."""
        import nats.errors

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


Row = tuple[str, str, str | None, str | None, str, str | None, int | None]
"""(id, topic, site, gateway, body JSON, stream, n) of a message."""


def _row(topic: str, payload: Any) -> Row | None:
    """The row of a message; None when it has no id."""
    body = _json(payload)
    if body is None:
        return None
    ident = body.get("tx_id") or body.get("event_id")
    if not isinstance(ident, str) or not ident:
        return None
    stream, n = None, None
    sequence = body.get("sequence")
    if (
        "/tx/" in topic  # only transactions are numbered
        and isinstance(sequence, dict)
        and isinstance(sequence.get("stream"), str)
        and STREAM.fullmatch(sequence["stream"])
        and _is_number(sequence.get("n"))
        and sequence["n"] > 0
    ):
        stream, n = sequence["stream"], sequence["n"]
    return ident, topic, body.get("site"), body.get("gateway"), json.dumps(body), stream, n


def _announced(topic: str, payload: Any) -> list[tuple[str, str, int, int]]:
    """(topic, stream, first, last) of each topic a sequence announcement names; none when
    it fails its schema (`sequence`)."""
    from gateway.schemas import validator

    body = _json(payload)
    if body is None or not validator("sequence").is_valid(body):
        return []
    base = topic.removesuffix("/sequence")
    return [
        (f"{base}/{name}", body["stream"], numbers["first"], numbers["last"])
        for name, numbers in body["topics"].items()
    ]


def _json(payload: Any) -> dict[str, Any] | None:
    if isinstance(payload, bytes | bytearray):
        with contextlib.suppress(ValueError, RecursionError):
            body = json.loads(payload)
            if isinstance(body, dict):
                return body
    return None


def _is_number(value: Any) -> bool:
    """A sequence number PostgreSQL's BIGINT takes."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _session_properties() -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    connect.SessionExpiryInterval = 7 * 86400  # what comes while it is away waits a week
    return connect
