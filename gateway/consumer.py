"""A reference WMS-side consumer: the gateways' transactions and events into PostgreSQL, each once.

Several consumers share the load through an MQTT 5 shared subscription (`$share/{group}/...`:
the broker gives each message to one of them); on a broker without shared subscriptions (NATS's
MQTT listener) run one, with a persistent session. Every message the gateways publish on
`tx/#`, `receipt`, `shipment`, `event`, `alarm`, `agv/task` and `zone/event` carries a
deterministic id (`tx_id` or `event_id`): it is the table's primary key, so a redelivery (a
gateway's redelivery window, a consumer killed before its acknowledgement reached the broker,
the broker giving the message to another consumer) only counts one more delivery.

At least once in, exactly once in the table: messages are acknowledged (MQTT PUBACK, manual)
only after the transaction that stores them committed. A consumer killed in between leaves
them unacknowledged; the broker sends them again (to it, or to another member of the group).
A payload that is not JSON or has no id is counted and acknowledged (it would never store).

Run with `gateway consume --broker HOST:PORT --dsn postgresql://... --site DC1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog

from gateway.bridge.suback import subscribe_or_raise

log = structlog.get_logger("gateway.consumer")

__all__ = ["SCHEMA", "Consumer", "ConsumerStats", "topics_of"]

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
                    async with db.transaction():  # one at a time: CREATE races otherwise
                        await db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                        await db.execute(SCHEMA)
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
                await self._store(db, batch)
                for message in batch:
                    client.ack(message)

    async def _store(self, db: Any, batch: list[aiomqtt.Message]) -> None:
        """One transaction for the batch; then the counts."""
        rows = []
        for message in batch:
            self.stats.received += 1
            row = _row(str(message.topic), message.payload)
            if row is None:
                self.stats.unusable += 1
                log.warning("consumer: a message without JSON or id", topic=str(message.topic))
                continue
            rows.append(row)
        fresh = 0
        async with db.transaction():
            for row in rows:
                inserted = await (await db.execute(_INSERT, (*row, self._client_id))).fetchone()
                fresh += 1 if inserted and inserted[0] else 0
        self.stats.stored += fresh
        self.stats.repeats += len(rows) - fresh


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
