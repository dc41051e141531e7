"""Benchmark: durable publish, the gateway's outbox and relay beside a bare relay.

Both variants move the same 400-byte payloads through a private Mosquitto with the same
guarantees: each message is committed to SQLite (WAL, synchronous=FULL, `--batch` rows per
transaction) before it is published, published with QoS 1 with `--inflight` in flight, in
order, and deleted only after a successful PUBACK.

- gateway: `gateway.storage.Store` (the outbox) and `gateway.bridge.mqtt.MqttBridge` (the
  relay, aiomqtt over paho-mqtt, MQTT 5), as the app drives them.
  The bridge also keeps what the broker acknowledged for its redelivery window (60 s, the
  default), as it does in production; the store numbers each transaction on its topic, keeps
  a copy for resends and announces the last numbers after each commit (`Sequencing`).
- bare: the relay of about 60 lines in this file (`bare_relay`): plain sqlite3 and paho-mqtt
  (the library under aiomqtt, the same version, MQTT 5), one thread; the committer on its own
  connection in a second thread, numbering each message and keeping a copy for resends in
  the same transaction, as the gateway does (without its announcements).

Two figures each: relay alone (the outbox filled first, then drained) and commit and relay
together (committing batches as fast as possible while the relay publishes). A subscriber in
its own process (paho-mqtt, QoS 1) checks that every id arrives; its CPU share, the broker's
and the relay's are sampled over each timed phase, to say when the subscriber or the broker,
not the relay, was the limit. Each variant runs in a fresh process with its own broker,
interleaved gateway, bare, gateway, bare... (`--rounds`, 3 by default). The figure is the ratio
gateway/bare of the medians (issue #13's target: at least 0.90).

The medians are kept for the regression guard (`benchmarks/guard.py`; `--no-keep`: not).
Run with `make bench` or `python benchmarks/durable_publish.py [--rounds 3] [--count 20000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.guard import Figure, keep
from benchmarks.measure import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "gw/BENCH/gw1/tx/move"
PAYLOAD_BYTES = 400
TARGET = 0.90
LIMIT_SHARE = 0.90  # a process this busy (share of one core) over a phase was the limit
PHASES = (("together", "commit and relay together"), ("alone", "relay alone"))


def payload(n: int) -> bytes:
    """400 bytes of JSON carrying the id `n` (bytes 7..15; the gateway puts its "sequence"
    before)."""
    head = b'{"id":"%08d","pad":"' % n
    return head + b"x" * (PAYLOAD_BYTES - len(head) - 2) + b'"}'


def msg_id(n: int) -> str:
    return f"m{n:08d}"


# --- CPU accounting -------------------------------------------------------------------------


@dataclass
class Meter:
    """Samples wall time, this process's CPU time and that of the subscriber and the broker."""

    subscriber: int
    broker: int
    _began: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def start(self) -> None:
        self._began = (
            time.perf_counter(),
            time.process_time(),
            cpu_seconds(self.subscriber),
            cpu_seconds(self.broker),
        )

    def stop(self, count: int) -> dict[str, float]:
        wall = time.perf_counter() - self._began[0]
        cpu = time.process_time() - self._began[1]
        return {
            "rate": count / wall,
            "seconds": wall,
            "relay_cpu": cpu / wall,
            "cpu_us": 1e6 * cpu / count,  # this process's CPU time per message, every thread
            "subscriber_cpu": (cpu_seconds(self.subscriber) - self._began[2]) / wall,
            "broker_cpu": (cpu_seconds(self.broker) - self._began[3]) / wall,
        }


# --- the subscriber (its own process) -------------------------------------------------------


def subscriber(port: int, expect: int, timeout: float) -> None:
    """Receive until `expect` distinct ids arrived (or `timeout` of silence); print a summary."""
    seen = bytearray(expect)
    state = {"distinct": 0, "duplicates": 0, "out_of_order": 0, "last": -1, "at": time.time()}

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        at = message.payload.find(b'"id":"') + 6  # after the gateway's "sequence", if any
        n = int(message.payload[at : at + 8])
        state["at"] = time.time()
        if seen[n]:
            state["duplicates"] += 1
            return
        seen[n] = 1
        state["distinct"] += 1
        if n < state["last"]:
            state["out_of_order"] += 1
        state["last"] = n

    def on_subscribe(*_args: Any) -> None:
        print("ready", flush=True)

    client = paho.Client(CallbackAPIVersion.VERSION2, "bench-sub", protocol=paho.MQTTv5)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port)
    client.subscribe(TOPIC, qos=1)
    while state["distinct"] < expect and time.time() - state["at"] < timeout:
        client.loop(timeout=0.5)
    client.disconnect()
    summary = {k: state[k] for k in ("distinct", "duplicates", "out_of_order")}
    print(json.dumps({**summary, "missing": expect - state["distinct"]}), flush=True)


# --- the bare relay -------------------------------------------------------------------------


def bare_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " msg_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, payload BLOB NOT NULL)"
    )
    db.execute(
        "CREATE TABLE IF NOT EXISTS history (topic TEXT NOT NULL, n INTEGER NOT NULL,"
        " payload BLOB NOT NULL, PRIMARY KEY (topic, n)) WITHOUT ROWID"
    )
    return db


# One writer at a time: a second connection that finds the file locked would wait in SQLite's
# busy handler, which sleeps in steps of milliseconds.
WRITING = threading.Lock()


def bare_commit(db: sqlite3.Connection, start: int, count: int, batch: int) -> None:
    """Commit `count` messages from id `start`, `batch` per transaction."""
    for first in range(start, start + count, batch):
        numbered = [
            (n + 1, b'{"sequence":{"n":%d},' % (n + 1) + payload(n)[1:])
            for n in range(first, min(first + batch, start + count))
        ]
        with WRITING:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO outbox (msg_id, topic, payload) VALUES (?, ?, ?)",
                [(msg_id(n - 1), TOPIC, body) for n, body in numbered],
            )
            db.executemany(
                "INSERT INTO history (topic, n, payload) VALUES (?, ?, ?)",
                [(TOPIC, n, body) for n, body in numbered],
            )
            db.execute("COMMIT")


def bare_relay(db: sqlite3.Connection, client: paho.Client, count: int, inflight: int) -> None:
    """Publish the outbox in `seq` order (QoS 1, `inflight` at a time) until `count` rows were
    acknowledged; delete each row once its PUBACK carries a success code."""
    sent: dict[int, int] = {}  # mid -> seq
    acked: list[int] = []
    queue: deque[tuple[int, str, bytes]] = deque()
    cursor, deleted = 0, 0

    def on_publish(_c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        seq = sent.pop(mid)
        if not reason.is_failure:  # a refused row stays (the bare relay never retries it)
            acked.append(seq)

    client.on_publish = on_publish
    while deleted < count:
        if not queue and len(sent) < inflight:
            queue.extend(
                db.execute(
                    "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT 500",
                    (cursor,),
                )
            )
            if queue:
                cursor = queue[-1][0]
        while queue and len(sent) < inflight:
            seq, topic, body = queue.popleft()
            info = client.publish(topic, body, qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {info.rc}")
            sent[info.mid] = seq
        client.loop(timeout=0.002)  # reads PUBACKs (on_publish), writes what is queued
        if acked:
            done, acked[:] = acked[:], []
            with WRITING:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in done])
                db.execute("COMMIT")
            deleted += len(done)


def bare_connect(port: int, inflight: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, "bare-relay", protocol=paho.MQTTv5)
    client.max_inflight_messages_set(inflight)
    client.connect("127.0.0.1", port)
    while not client.is_connected():
        client.loop(timeout=0.1)
    return client


def run_bare(tmp: Path, port: int, args: argparse.Namespace, meter: Meter) -> list[dict[str, Any]]:
    db = bare_db(tmp / "bare.db")
    bare_commit(db, 0, args.count, args.batch)
    meter.start()
    client = bare_connect(port, args.inflight)
    bare_relay(db, client, args.count, args.inflight)
    alone = meter.stop(args.count)
    committer = bare_db(tmp / "bare.db")
    meter.start()
    thread = threading.Thread(
        target=bare_commit, args=(committer, args.count, args.count, args.batch)
    )
    thread.start()
    bare_relay(db, client, args.count, args.inflight)
    thread.join()
    together = meter.stop(args.count)
    client.disconnect()
    db.close()
    committer.close()
    return [alone, together]


# --- the gateway ----------------------------------------------------------------------------


async def run_gateway(
    tmp: Path, port: int, args: argparse.Namespace, meter: Meter
) -> list[dict[str, Any]]:
    from gateway.bridge.mqtt import MqttBridge
    from gateway.config import BrokerConfig
    from gateway.health import StatusBoard
    from gateway.storage import OutboxMessage, Sequencing, Store
    from gateway.wire.topics import Topics

    def batches(start: int) -> list[list[OutboxMessage]]:
        end = start + args.count
        return [
            [
                OutboxMessage(msg_id(n), TOPIC, payload(n))
                for n in range(first, min(first + args.batch, end))
            ]
            for first in range(start, end, args.batch)
        ]

    async def commit_all(store: Store, start: int) -> None:
        for messages in batches(start):
            await store.commit(messages)

    async def drain(store: Store) -> None:
        # Polled: a waiter woken by every transaction would add to the gateway's figures.
        while store.depth:  # noqa: ASYNC110 - polled on purpose (above)
            await asyncio.sleep(0.002)

    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    store = await Store.open(tmp / "gateway.db", max_rows=args.count * 3)
    # As a gateway does: each transaction numbered and kept for resends, an announcement
    # after each commit (the bare relay does neither).
    await store.number(Sequencing("gw/BENCH/gw1", "BENCH", "gw1"))
    await commit_all(store, 0)
    bridge = MqttBridge(
        BrokerConfig(host="127.0.0.1", port=port, max_inflight=args.inflight),
        topics=Topics("BENCH", "gw1"),
        store=store,
        board=StatusBoard(now),
        version="bench",
        clock=now,
    )
    meter.start()
    task = asyncio.create_task(bridge.run())
    await drain(store)
    alone = meter.stop(args.count)
    meter.start()
    await commit_all(store, args.count)
    await drain(store)
    together = meter.stop(args.count)
    bridge.stop()
    await task
    await store.close()
    return [alone, together]


# --- one variant in this process ------------------------------------------------------------


def child(args: argparse.Namespace) -> dict[str, Any]:
    from tests.mqtt_helpers import Mosquitto

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        broker = Mosquitto(tmp / "broker", save_every_change=False)
        broker.start()
        assert broker.process is not None
        sub = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", str(broker.port), str(2 * args.count)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert sub.stdout is not None
            if sub.stdout.readline().strip() != "ready":
                raise RuntimeError("the subscriber did not subscribe")
            meter = Meter(sub.pid, broker.process.pid)
            if args.child == "gateway":
                phases = asyncio.run(run_gateway(tmp, broker.port, args, meter))
            else:
                phases = run_bare(tmp, broker.port, args, meter)
            out, _ = sub.communicate(timeout=120)
            check = json.loads(out.strip().splitlines()[-1])
        finally:
            if sub.poll() is None:
                sub.kill()
                sub.wait()
            broker.stop()
    return {
        "variant": args.child,
        "alone": phases[0],
        "together": phases[1],
        "check": check,
        "load": os.getloadavg()[0],
    }


def in_subprocess(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant]
    command += ["--count", str(args.count), "--batch", str(args.batch)]
    command += ["--inflight", str(args.inflight)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- report ---------------------------------------------------------------------------------


def limits(phase: dict[str, float]) -> str:
    """Which process was the limit over a phase, as far as CPU shares tell."""
    said = []
    if phase["subscriber_cpu"] >= LIMIT_SHARE:
        said.append("limited by the subscriber")
    if phase["broker_cpu"] >= LIMIT_SHARE:
        said.append("limited by the broker")
    if phase["relay_cpu"] >= LIMIT_SHARE:
        said.append("relay CPU-bound")
    total = phase["subscriber_cpu"] + phase["broker_cpu"] + phase["relay_cpu"]
    if total >= 0.9 * (os.cpu_count() or 1):
        said.append("all cores busy")
    return ", ".join(said) or "-"


def row(label: str, result: dict[str, Any], phase: str) -> str:
    p = result[phase]
    check = result["check"]
    ok = "ok" if not check["missing"] and not check["out_of_order"] else "FAILED"
    return (
        f"  {label:8}{p['rate']:>9,.0f}{p['cpu_us']:>8.1f}{p['relay_cpu']:>7.0%}"
        f"{p['subscriber_cpu']:>7.0%}{p['broker_cpu']:>7.0%}  ids {ok}  {limits(p)}"
    )


def verdict(ratio: float) -> str:
    return "PASS" if ratio >= TARGET else "BELOW TARGET"


def report(
    runs: list[tuple[int, dict[str, Any]]], args: argparse.Namespace, load: tuple[float, ...]
) -> dict[str, Any]:
    print(
        f"durable publish: {args.count} messages of {PAYLOAD_BYTES} bytes per phase,"
        f" commit batch {args.batch}, {args.inflight} in flight, {args.rounds} rounds,"
        f" {os.cpu_count()} cores, {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        "columns: tx/s; the relay's CPU time per message (us, all its threads); CPU, as a share"
        " of one core, of the relay, the subscriber and the broker; the id check; the limit"
    )
    summary: dict[str, Any] = {"rounds": [], "median": {}, "load_before": load}
    for number in range(1, args.rounds + 1):
        pair = {r["variant"]: r for n, r in runs if n == number}
        gw, bare = pair["gateway"], pair["bare"]
        print(
            f"round {number} (1-minute load average after each: gateway {gw['load']:.2f},"
            f" bare {bare['load']:.2f})"
        )
        ratios = {}
        for phase, title in PHASES:
            ratios[phase] = gw[phase]["rate"] / bare[phase]["rate"]
            print(f" {title}: gateway/bare {ratios[phase]:.2f}")
            print(row("gateway", gw, phase))
            print(row("bare", bare, phase))
        summary["rounds"].append({"gateway": gw, "bare": bare, "ratio": ratios})
    print("median of the rounds:")
    for phase, title in PHASES:
        median = {
            f"{variant}{key}": statistics.median(
                r[variant][phase][field] for r in summary["rounds"]
            )
            for variant in ("gateway", "bare")
            for key, field in (("", "rate"), ("_cpu_us", "cpu_us"))
        }
        ratio = median["gateway"] / median["bare"]
        rounds = statistics.median(r["ratio"][phase] for r in summary["rounds"])
        summary["median"][phase] = {**median, "ratio": ratio, "ratio_of_rounds": rounds}
        print(
            f" {title:26} gateway {median['gateway']:>7,.0f} tx/s ({median['gateway_cpu_us']:.1f} us)"
            f"  bare {median['bare']:>7,.0f} tx/s ({median['bare_cpu_us']:.1f} us)"
        )
        print(
            f" {'':26} ratio {ratio:.2f} (the rounds' own: {rounds:.2f}), target {TARGET:.2f}:"
            f" {verdict(ratio)}"
        )
    phases = [r[phase] for _, r in runs for phase, _ in PHASES]
    busiest = max(p["subscriber_cpu"] for p in phases)
    limited = sum(p["subscriber_cpu"] >= LIMIT_SHARE for p in phases)
    if limited:
        print(f"load generator: limited by the subscriber in {limited} of {len(phases)} phases")
    else:
        print(
            f"load generator: not the limit (the subscriber used at most {busiest:.0%} of a core;"
            f" the committer runs in the relay's own process)"
        )
    saturated = sum("all cores busy" in limits(p) for p in phases)
    print(f"all cores busy (relay + subscriber + broker) in {saturated} of {len(phases)} phases")
    after = os.getloadavg()
    summary["load_after"] = after
    print(f"load average after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}")
    bad = [r for _, r in runs if r["check"]["missing"] or r["check"]["out_of_order"]]
    if bad:
        print(f"ID CHECK FAILED in {len(bad)} runs: {[r['check'] for r in bad]}")
    return summary


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--rounds", type=int, default=3)
    cli.add_argument("--count", type=int, default=20_000, help="messages per phase")
    cli.add_argument("--batch", type=int, default=100, help="messages per commit")
    cli.add_argument("--inflight", type=int, default=100)
    cli.add_argument("--json", type=Path, help="also write every round's figures here")
    cli.add_argument(
        "--no-keep", action="store_true", help="do not keep the medians (benchmarks/guard.py)"
    )
    cli.add_argument("--child", choices=("gateway", "bare"), help=argparse.SUPPRESS)
    cli.add_argument("--subscriber", nargs=2, type=int, help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.subscriber:
        port, expect = args.subscriber
        subscriber(port, expect, timeout=30.0)
        return
    if args.child:
        print(json.dumps(child(args)))
        return
    order: list[tuple[int, str]] = [
        (n, variant) for n in range(1, args.rounds + 1) for variant in ("gateway", "bare")
    ]
    load = os.getloadavg()
    runs = [(n, in_subprocess(variant, args)) for n, variant in order]
    summary = report(runs, args, load)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if not args.no_keep:
        keep("durable_publish", figures(summary["median"], args.rounds))


def figures(median: dict[str, dict[str, float]], rounds: int) -> list[Figure]:
    """The medians for the regression guard (`benchmarks/guard.py`)."""
    return [
        Figure(
            f"durable publish, {title} (median of {rounds} rounds)",
            median[phase]["gateway"],
            "tx/s",
            median[phase]["bare"],
            "bare relay (sqlite3 + paho-mqtt)",
            median[phase]["ratio"],
            f">= {TARGET:.2f} of the bare relay",
            median[phase]["ratio"] >= TARGET,
        )
        for phase, title in PHASES
    ]


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
