"""Benchmark: AGV task requests and answers under load, with 10,000 open tasks.

Fifty fleet controllers (MQTT 5 clients, each with its own response topic) send requests at a
fixed total rate (`--rate`, 200/s by default), on a schedule that does not wait for answers
(so a slow answer cannot hide the requests queued behind it). Each robot leases a task
(`next`), reports it `picked`, then `dropped`: a third of the requests change a task and the
drop publishes a move transaction from the outbox. The gateway starts from a database that
already holds `--tasks` queued WMS tasks, over 200 pick-up places.

The baseline, interleaved with the gateway in fresh processes (A B A B), is a bare responder
written here: one MQTT 5 client on the same private Mosquitto that answers every request at
once on its response topic, with an answer of the same size. It is the broker round trip and
the clients' own cost, which no gateway can beat. Printed per run: requests answered, rate,
p50/p99/max latency, the responder's and the load generator's CPU share (a generator near a
full core limits the run), and the load average; then the gateway's p99 against the target
(under 50 ms) and beside the baseline's.

Run with `make bench` or `python benchmarks/agv_requests.py [--rate 200 --seconds 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.guard import Figure, keep
from benchmarks.measure import cpu_seconds
from simulators.gs1 import sscc
from tests.agv_helpers import BASE, agv_section
from tests.gateway_helpers import build, running, site_config
from tests.mqtt_helpers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = 50
PLACES = 200
TARGET_P99_MS = 50.0
# An answer like the gateway's `next` answer (a leased task), for the bare responder.
BARE_ANSWER = json.dumps(
    {
        "ok": True,
        "result": "changed",
        "code": "",
        "message": "leased until 2026-12-07T14:00:00+00:00",
        "task": {
            "task_id": "T000001",
            "kind": "move",
            "sscc": "006141410000000001",
            "source": "STAGE-001",
            "destination": "A-01",
            "priority": 0,
            "state": "leased",
            "robot": "r00-0000",
            "fleet": "f00",
            "lease_until": "2026-12-07T14:00:00+00:00",
            "created_at": "2026-12-07T13:00:00+00:00",
            "updated_at": "2026-12-07T13:00:00+00:00",
        },
    }
).encode()


def client_for(port: int, name: str) -> aiomqtt.Client:
    """An MQTT 5 client that sends small packets at once (TCP_NODELAY), as the gateway does."""
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


# --- the processes under test ---------------------------------------------------------------


def gateway_config(folder: Path, port: int) -> Any:
    raw = site_config(folder, broker_port=port, scanner=None)
    raw["logging"] = {"format": "json", "level": "error"}
    raw["agv"] = agv_section(lease_s=600.0)
    return build(raw, folder)


async def serve_gateway(folder: Path, port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with running(gateway_config(folder, port)):
        (folder / "ready").touch()
        await stop.wait()


async def serve_bare(folder: Path, port: int) -> None:
    """The baseline: answer every request at once, on its response topic."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with client_for(port, "bench-bare") as client:
        await client.subscribe(f"{BASE}/agv/#", qos=1)
        (folder / "ready").touch()

        async def answer() -> None:
            async for message in client.messages:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
                topic = message.properties.ResponseTopic  # type: ignore[union-attr]
                await client.publish(topic, BARE_ANSWER, qos=1, properties=properties)

        task = asyncio.create_task(answer())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the load generator -----------------------------------------------------------------------


@dataclass
class Fleet:
    """One fleet controller: its client, its robots' next steps, and the answers awaited."""

    name: str
    client: aiomqtt.Client
    sent: dict[bytes, tuple[float, str, str]] = field(default_factory=dict)  # corr -> t, robot, op
    # robot -> its next request (op, task id, where to drop), and where it stands
    steps: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    position: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # no answer awaited

    async def send(self, robot: str) -> None:
        op, task_id, destination = self.steps.get(robot, ("next", "", ""))
        body: dict[str, Any] = {"fleet": self.name, "robot": robot}
        if op == "next":
            body["position"] = self.position.setdefault(
                robot, f"STAGE-{zlib.crc32(robot.encode()) % PLACES:03d}"
            )
        else:
            body |= {"task_id": task_id, "status": op}
            if op == "dropped":
                body["location"] = destination
        correlation = uuid.uuid4().bytes
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = f"fleet/{self.name}/responses"
        properties.CorrelationData = correlation
        self.sent[correlation] = (time.perf_counter(), robot, op)
        self.drained.clear()
        topic = f"{BASE}/agv/{'next' if op == 'next' else 'progress'}"
        await self.client.publish(topic, json.dumps(body), qos=1, properties=properties)

    async def listen(self) -> None:
        async for message in self.client.messages:
            correlation = bytes(message.properties.CorrelationData)  # type: ignore[union-attr]
            sent = self.sent.pop(correlation, None)
            if sent is None:
                continue
            if not self.sent:
                self.drained.set()
            at, robot, op = sent
            self.latencies.append(time.perf_counter() - at)
            answer = json.loads(message.payload)
            result = f"{op}:{answer.get('result')}"
            self.answers[result] = self.answers.get(result, 0) + 1
            task = answer.get("task") or {}
            if op == "next" and task.get("task_id"):
                self.steps[robot] = ("picked", task["task_id"], task["destination"])
            elif op == "picked" and answer.get("ok"):
                self.steps[robot] = ("dropped", task["task_id"], task["destination"])
            else:
                if op == "dropped":
                    self.position[robot] = self.steps[robot][2]
                self.steps.pop(robot, None)


async def generate_load(port: int, rate: float, seconds: float) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        fleets: list[Fleet] = []
        for n in range(CLIENTS):
            client = await stack.enter_async_context(client_for(port, f"bench-fleet-{n}"))
            fleet = Fleet(f"f{n:02d}", client)
            await client.subscribe(f"fleet/{fleet.name}/responses", qos=1)
            fleets.append(fleet)
        listeners = [asyncio.create_task(f.listen()) for f in fleets]
        robots = [[f"r{n:02d}-{k}" for k in range(4)] for n in range(CLIENTS)]
        began = time.perf_counter()
        cpu_began = time.process_time()
        total = int(rate * seconds)
        for i in range(total):
            due = began + i / rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            which = i % CLIENTS
            await fleets[which].send(robots[which][(i // CLIENTS) % 4])
        sending_s = time.perf_counter() - began
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.gather(*(f.drained.wait() for f in fleets))
        busy = (time.process_time() - cpu_began) / (time.perf_counter() - began)
        for task in listeners:
            task.cancel()
    latencies = sorted(x for f in fleets for x in f.latencies)
    answers: dict[str, int] = {}
    for f in fleets:
        for key, count in f.answers.items():
            answers[key] = answers.get(key, 0) + count
    return {
        "sent": total,
        "answered": len(latencies),
        "rate": total / sending_s,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "max_ms": 1000 * latencies[-1],
        "generator_busy": busy,
        "answers": answers,
    }


# --- one run: a fresh server process, the load, the figures -----------------------------------


def run_once(kind: str, seeded: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One run on a fresh broker (nothing queued for the gateway's session from another run)."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        if kind == "gateway":
            shutil.copy(seeded, folder / "gateway.db")
        broker = Mosquitto(folder / "broker", save_every_change=False)
        broker.start()
        port = broker.port
        server = start_child(kind, port, folder)
        try:
            wait_ready(server, folder)
            time.sleep(args.settle)  # retained redelivery over, caches warm
            cpu_before, wall_before = cpu_seconds(server.pid), time.perf_counter()
            result = asyncio.run(generate_load(port, args.rate, args.seconds))
            result["server_busy"] = (cpu_seconds(server.pid) - cpu_before) / (
                time.perf_counter() - wall_before
            )
        finally:
            stop_child(server, folder)
            broker.stop()
        if kind == "gateway":
            result["open_after"] = open_tasks(folder / "gateway.db")
    result["load"] = os.getloadavg()[0]
    return result


def start_child(kind: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    """The gateway or the bare responder in a fresh process; its output in `folder`/log."""
    command = [sys.executable, __file__, "--child", kind, "--port", str(port)]
    with (folder / "log").open("wb") as log:
        return subprocess.Popen(
            [*command, "--folder", str(folder)], cwd=ROOT, stdout=log, stderr=log
        )


def wait_ready(server: subprocess.Popen[bytes], folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (folder / "ready").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            log = (folder / "log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server did not start:\n{log}")
        time.sleep(0.05)


def stop_child(server: subprocess.Popen[bytes], folder: Path) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        log = (folder / "log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the server did not stop in 30 s:\n{log}") from None


def open_tasks(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as con:
        row = con.execute(
            "SELECT count(*) FROM agv_task WHERE state NOT IN ('done', 'failed', 'cancelled')"
        ).fetchone()
    return int(row[0])


async def publish_wms_tasks(port: int, count: int) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-wms") as wms:
        for n in range(count):
            body = {
                "task_id": f"T{n:06d}",
                "sscc": sscc("0614141", n + 1),
                "source": f"STAGE-{n % PLACES:03d}",
                "destination": f"A-{n % 4 + 1:02d}",
                "priority": n % 3,
            }
            await wms.publish(f"wms/DC1/task/T{n:06d}", json.dumps(body), qos=1, retain=True)


def seed(folder: Path, tasks: int) -> Path:
    """A gateway database holding `tasks` queued WMS tasks."""
    broker = Mosquitto(folder / "broker", save_every_change=False)
    broker.start()
    asyncio.run(publish_wms_tasks(broker.port, tasks))
    server = start_child("gateway", broker.port, folder)
    try:
        wait_ready(server, folder)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(1)
            with contextlib.suppress(sqlite3.OperationalError):
                if open_tasks(folder / "gateway.db") >= tasks:
                    break
        else:
            raise RuntimeError("the gateway did not take the WMS tasks in time")
    finally:
        stop_child(server, folder)
        broker.stop()
    return folder / "gateway.db"


def report(kind: str, r: dict[str, Any]) -> None:
    extra = f" open tasks after {r['open_after']:,}" if "open_after" in r else ""
    limited = "  GENERATOR-LIMITED" if r["generator_busy"] > 0.85 else ""
    print(
        f"{kind:8}{r['answered']:>6}/{r['sent']:<6}{r['rate']:>7.0f}/s"
        f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['max_ms']:>9.1f}"
        f"{r['server_busy']:>8.0%}{r['generator_busy']:>8.0%}{r['load']:>7.2f}"
        f"  {r['answers']}{extra}{limited}"
    )


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--rate", type=float, default=200.0, help="requests per second, in all")
    cli.add_argument("--seconds", type=float, default=20.0, help="how long each run sends")
    cli.add_argument("--tasks", type=int, default=10_000, help="open tasks at the start")
    cli.add_argument("--rounds", type=int, default=2)
    cli.add_argument("--settle", type=float, default=3.0, help=argparse.SUPPRESS)
    cli.add_argument("--child", choices=["gateway", "bare"], help=argparse.SUPPRESS)
    cli.add_argument("--port", type=int, help=argparse.SUPPRESS)
    cli.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.child == "gateway":
        asyncio.run(serve_gateway(args.folder, args.port))
        return
    if args.child == "bare":
        asyncio.run(serve_bare(args.folder, args.port))
        return
    with tempfile.TemporaryDirectory() as folder:
        seeded = seed(Path(folder), args.tasks)
        print(
            f"AGV requests: {CLIENTS} fleet clients, {args.rate:.0f} requests/s for "
            f"{args.seconds:.0f} s, {args.tasks:,} open tasks at the start "
            f"(next, picked, dropped per robot)"
        )
        print(
            f"{'':8}{'answered':>13}{'rate':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
            f"{'server':>8}{'gen':>8}{'load1':>7}"
        )
        runs: dict[str, list[dict[str, Any]]] = {"bare": [], "gateway": []}
        for _ in range(args.rounds):
            for kind in ("bare", "gateway"):
                result = run_once(kind, seeded, args)
                runs[kind].append(result)
                report(kind, result)
    gateway_p99 = statistics.median(r["p99_ms"] for r in runs["gateway"])
    bare_p99 = statistics.median(r["p99_ms"] for r in runs["bare"])
    lost = sum(r["sent"] - r["answered"] for r in runs["gateway"])
    met = gateway_p99 < TARGET_P99_MS and not lost
    print(
        f"gateway p99 {gateway_p99:.1f} ms (median of runs), bare responder {bare_p99:.1f} ms "
        f"(x{gateway_p99 / bare_p99:.1f}); target under {TARGET_P99_MS:.0f} ms: "
        + ("PASS" if met else "BELOW TARGET")
        + (f"; {lost} requests unanswered" if lost else "")
    )
    answered = {
        k: statistics.median(r["answered"] / args.seconds for r in v) for k, v in runs.items()
    }
    keep(
        "agv_requests",
        [
            Figure(
                f"AGV answer p99, {CLIENTS} fleet clients at {args.rate:.0f}/s, "
                f"{args.tasks:,} open tasks",
                gateway_p99,
                "ms",
                bare_p99,
                "bare MQTT responder",
                bare_p99 / gateway_p99,
                f"< {TARGET_P99_MS:.0f} ms, none lost",
                met,
            ),
            Figure(
                "AGV requests answered per second",
                answered["gateway"],
                "/s",
                answered["bare"],
                "bare MQTT responder",
                answered["gateway"] / answered["bare"],
                f"{args.rate:.0f}/s",
                answered["gateway"] >= 0.99 * args.rate,
            ),
        ],
    )


if __name__ == "__main__":
    main()
