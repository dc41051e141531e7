"""Benchmark: the durable outbox and the MQTT relay against a private Mosquitto.

Prints, for N transactions of about 400 bytes:
- commit rate into the SQLite outbox (WAL, synchronous=FULL, batches of `--batch`);
- relay rate: published with QoS 1, acknowledged by the broker and deleted from the outbox;
- both at once: committing while the relay publishes.

Run with `make bench` or `python benchmarks/outbox_relay.py --count 20000`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.bridge.mqtt import MqttBridge
from gateway.config import BrokerConfig
from gateway.health import StatusBoard
from gateway.storage import OutboxMessage, Store
from gateway.wire.topics import Topics
from tests.mqtt_helpers import Mosquitto

PAYLOAD = b'{"pad":"' + b"x" * 380 + b'"}'


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def messages(start: int, count: int) -> list[OutboxMessage]:
    return [
        OutboxMessage(f"m{i}", "gw/BENCH/gw1/tx/move", PAYLOAD) for i in range(start, start + count)
    ]


async def commit_all(store: Store, count: int, batch: int, offset: int = 0) -> float:
    began = time.perf_counter()
    for start in range(offset, offset + count, batch):
        await store.commit(messages(start, min(batch, offset + count - start)))
    return time.perf_counter() - began


async def drain(store: Store, timeout: float = 300) -> None:
    deadline = time.perf_counter() + timeout
    while store.depth:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"outbox still holds {store.depth}")
        await store.wait_changed(store.version, timeout=0.5)


async def main(count: int, batch: int, inflight: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            store = await Store.open(Path(tmp) / "bench.db", max_rows=count * 3)
            commit_s = await commit_all(store, count, batch)
            bridge = MqttBridge(
                BrokerConfig(host="127.0.0.1", port=broker.port, max_inflight=inflight),
                topics=Topics("BENCH", "gw1"),
                store=store,
                board=StatusBoard(now),
                version="bench",
                clock=now,
            )
            began = time.perf_counter()
            task = asyncio.create_task(bridge.run())
            await drain(store)
            relay_s = time.perf_counter() - began

            began = time.perf_counter()
            await commit_all(store, count, batch, offset=count)
            await drain(store)
            both_s = time.perf_counter() - began
            bridge.stop()
            await task
            await store.close()
        finally:
            broker.stop()
    print(
        f"transactions: {count} of {len(PAYLOAD)} bytes, commit batch {batch}, in flight {inflight}"
    )
    print(f"outbox commit (WAL, synchronous=FULL): {count / commit_s:,.0f} tx/s")
    print(f"relay, QoS 1 publish + PUBACK + delete: {count / relay_s:,.0f} tx/s")
    print(f"commit and relay together:              {count / both_s:,.0f} tx/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--inflight", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.batch, args.inflight))
