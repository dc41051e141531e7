"""A site of three gateways (#17), end to end, with faults: the harness behind tests/test_site.py.

Three gateway processes of site DC1 on one broker (a Mosquitto, MQTT 5) or a three-node NATS
cluster (MQTT 3.1.1): dock-1 owns doors D01-D04, dock-2 D05-D08, dock-3 no door but the site's
task board (`[agv] site_putaway`). A clerk's handheld at each dock gateway receives every
pallet of its doors' ASNs; dock-3's board puts them away with a simulated fleet, and runs the
WMS's move tasks; the dock-2 clerk then moves some pallets received at dock-1 and put away by
dock-3 (their true origin comes from dock-3's retained state). Two reference consumers write
everything into PostgreSQL (on Mosquitto through an MQTT 5 shared subscription, on NATS
pulling from one JetStream durable consumer); an auditor subscribes to everything.

Meanwhile: dock-1 is SIGKILLed three times (restarted after a second), one consumer is
SIGKILLed and restarted, and on the cluster one broker node is SIGKILLed and restarted after
`outage_s`. `run_site` returns what happened; the checks are the test's.

Run the full-length acceptance (300+ transactions, 100 WMS tasks, a 30 s broker outage):
    python -m tests.site_scenario --broker nats --outage 30 --pallets 15 --tasks 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import psycopg

from gateway.consumer import _MISSING
from simulators.fleet import Did, FleetController, Outcome, overlapping_leases
from simulators.gs1 import sscc, sscc_label
from simulators.handheld import HandheldTerminal
from tests.cluster_helpers import NatsCluster
from tests.mqtt_helpers import Collector, Mosquitto
from tests.pg_helpers import Postgres
from tests.process_helpers import GatewayProcess, write_toml

DOORS = {"dock-1": ["D01", "D02", "D03", "D04"], "dock-2": ["D05", "D06", "D07", "D08"]}
STORAGE = [f"R{row}-{n:02d}" for row in "ABC" for n in range(1, 9)]


@dataclass
class SiteRun:
    """What happened in one run (see the module docstring)."""

    received: dict[str, str] = field(default_factory=dict)  # pallet -> door
    moved_by_hand: dict[str, str] = field(default_factory=dict)  # pallet -> to
    wms_tasks: set[str] = field(default_factory=set)
    auditor: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (topic, payload)
    stored: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # id -> (topic, by, n)
    outcomes: list[Outcome] = field(default_factory=list)
    handheld: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    missing_numbers: int = -1  # transaction numbers missing in PostgreSQL at the end
    resends: int = 0  # resend requests the gateways carried out
    gateway_kills: int = 0
    consumer_kills: int = 0
    node_kills: int = 0
    seconds: float = 0.0

    def transactions(self) -> dict[str, dict[str, Any]]:
        """tx_id -> payload of every transaction the auditor saw (repeats folded)."""
        return {p["tx_id"]: p for t, p in self.auditor if "/tx/" in t}

    def repeats_with_other_ids(self) -> list[str]:
        """Transactions seen twice with different ids (by what they are: topic and body)."""
        seen: dict[tuple[str, str], str] = {}
        bad = []
        for topic, payload in self.auditor:
            if "/tx/" not in topic:
                continue
            body = json.dumps({k: v for k, v in payload.items() if k != "tx_id"}, sort_keys=True)
            if seen.setdefault((topic, body), payload["tx_id"]) != payload["tx_id"]:
                bad.append(payload["tx_id"])
        return bad


def _gateway_config(
    workdir: Path, name: str, endpoints: list[int], protocol: str
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "gateway": {"site": "DC1", "id": name, "shutdown_grace_s": 2, "doors": DOORS.get(name, [])},
        "broker": {
            "host": "127.0.0.1",
            "port": endpoints[0],
            "protocol": protocol,
            "failover": [f"127.0.0.1:{p}" for p in endpoints[1:]],
            "keepalive_s": 5,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
            "connect_timeout_s": 2.0,
        },
        "storage": {"path": str(workdir / name / "gateway.db")},
        "logging": {"format": "json", "level": "info"},
        "handheld": {"enabled": True, "reorder_wait_s": 1.0},
        "state": {"follow_site": True},
    }
    if name == "dock-3":
        doors = [d for ds in DOORS.values() for d in ds]
        raw["agv"] = {
            "enabled": True,
            "task_board": True,
            "site_putaway": True,
            "lease_s": 10,
            "layout": {
                "doors": [{"door": d, "x": 0.0, "y": 4.0 * n} for n, d in enumerate(doors)],
                "locations": [
                    {
                        "location": loc,
                        "zone": "AMBIENT",
                        "velocity": loc[1],
                        "capacity_pallets": 40,
                        "x": 10.0 + n,
                        "y": 5.0,
                    }
                    for n, loc in enumerate(STORAGE)
                ],
            },
        }
    else:
        raw["agv"] = {"enabled": False, "task_board": False}
    (workdir / name).mkdir(parents=True, exist_ok=True)
    return raw


def _consume(dsn: str, name: str, *where: str) -> subprocess.Popen[bytes]:
    """`gateway consume` for site DC1 as a child process (its output dropped)."""
    command = [sys.executable, "-m", "gateway", "consume", "--dsn", dsn, "--site", "DC1"]
    return subprocess.Popen(
        [*command, "--client-id", name, *where],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def consumer_process(
    port: int, dsn: str, name: str, protocol: str = "5", shared: bool = True
) -> subprocess.Popen[bytes]:
    """The MQTT consumer (an MQTT 5 shared subscription, group `wms`, unless not `shared`)."""
    return _consume(
        dsn,
        name,
        *("--broker", f"127.0.0.1:{port}", "--protocol", protocol),
        *("--group", "wms" if shared else ""),
    )


def jetstream_consumer_process(
    servers: list[str], dsn: str, name: str, ack_wait_s: float = 5.0
) -> subprocess.Popen[bytes]:
    """The NATS consumer (JetStream, group `wms`)."""
    return _consume(dsn, name, "--nats", ",".join(servers), "--ack-wait-s", str(ack_wait_s))


async def jetstream_ready(
    server: str, stream: str = "$MQTT_msgs", durable: str = "wms_DC1"
) -> None:
    """Wait until the consumers made their durable consumer on NATS's MQTT stream (what is
    published from then on is kept for it)."""
    import nats
    import nats.errors
    import nats.js.errors

    async with asyncio.timeout(30):
        nc = await nats.connect(servers=[server], connect_timeout=2)
        try:
            js = nc.jetstream(timeout=2)
            while True:
                try:
                    await js.consumer_info(stream, durable)
                except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.2)
                else:
                    return
        finally:
            await nc.close()


async def _stored(dsn: str) -> dict[str, tuple[str, str, int]]:
    async with await psycopg.AsyncConnection.connect(dsn) as db:
        try:
            rows = await (
                await db.execute("SELECT id, topic, consumer, deliveries FROM gateway_message")
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


async def _missing_numbers(dsn: str) -> int:
    """Transaction numbers the gateways gave (announced or seen) that PostgreSQL lacks."""
    async with await psycopg.AsyncConnection.connect(dsn) as db:
        try:
            rows = await (await db.execute(_MISSING, {"span": 10**6, "limit": 10**6})).fetchall()
        except psycopg.errors.UndefinedTable:
            return 0
    return len(rows)


def _say(what: str) -> None:
    """Progress, on stderr (pytest shows it for a failed run)."""
    print(f"{time.strftime('%H:%M:%S')} site: {what}", file=sys.stderr, flush=True)


async def _until(what: Any, timeout: float, label: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            _say(f"timed out waiting for {label}")
            raise AssertionError(f"timed out waiting for {label}")
        await asyncio.sleep(0.1)


async def _flush(pda: HandheldTerminal) -> None:
    """Send what the terminal holds; a gateway that is down is tried again later, a link the
    broker dropped is connected again."""
    try:
        await pda.flush()
    except (TimeoutError, RuntimeError):
        pass
    except aiomqtt.MqttError:
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await pda.reconnect()


async def run_site(
    workdir: Path,
    *,
    broker: Literal["mosquitto", "nats"],
    pallets_per_door: int,
    wms_tasks: int,
    outage_s: float,
    robots: int = 8,
) -> SiteRun:
    """Run the site (see the module docstring); what happened."""
    began = time.monotonic()
    run = SiteRun()
    protocol = "5" if broker == "mosquitto" else "3.1.1"
    shared = broker == "mosquitto"
    postgres = Postgres()
    postgres.start()
    mosquitto = cluster = None
    if broker == "mosquitto":
        mosquitto = Mosquitto(workdir)
        mosquitto.start()
        endpoints = [mosquitto.port]
    else:
        cluster = NatsCluster(workdir)
        cluster.start_all()
        endpoints = list(cluster.mqtt_ports)
    auditor_port = endpoints[-1]  # the node never killed
    gateways: dict[str, GatewayProcess] = {}
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("dock-1", "dock-2", "dock-3"):
            # Each gateway starts on another node of the cluster.
            order = (
                endpoints[len(gateways) % len(endpoints) :]
                + endpoints[: len(gateways) % len(endpoints)]
            )
            path = write_toml(
                workdir / f"{name}.toml", _gateway_config(workdir, name, order, protocol)
            )
            gateways[name] = GatewayProcess(path, workdir / f"{name}.log")
        if cluster is None:

            def new_consumer(name: str) -> subprocess.Popen[bytes]:
                return consumer_process(auditor_port, postgres.dsn, name, protocol, shared)

        else:  # NATS's own competing consumers: a JetStream stream over every node
            urls = [f"nats://127.0.0.1:{p}" for p in cluster.client_ports]

            def new_consumer(name: str) -> subprocess.Popen[bytes]:
                return jetstream_consumer_process(urls, postgres.dsn, name)

        # The first MQTT client of a NATS cluster waits for JetStream to make its MQTT streams.
        async with Collector(auditor_port, client_id="auditor", subscribe_timeout_s=60) as auditor:
            consumers.extend(new_consumer(f"wms-{n}") for n in (1, 2))
            if cluster is not None:  # the stream takes what is published once it exists
                await jetstream_ready(f"nats://127.0.0.1:{cluster.client_ports[-1]}")
            for process in gateways.values():
                process.start()
            await _until(
                lambda: (
                    len(
                        {
                            m.topic
                            for m in auditor.on("/status")
                            if m.json().get("state") == "online"
                        }
                    )
                    >= 3
                ),
                60,  # a loaded NATS cluster can take long to store three new sessions
                "three gateways online",
            )
            _say("gateways online")
            await asyncio.sleep(2.0)  # subscribed, consumers too
            # The WMS: ASNs for every door, and its move tasks.
            serial = 1
            asns: dict[str, list[str]] = {}
            async with aiomqtt.Client("127.0.0.1", auditor_port, identifier="wms") as wms:
                for doors in DOORS.values():
                    for door in doors:
                        pallets = [sscc("0614141", serial + i) for i in range(pallets_per_door)]
                        serial += pallets_per_door
                        asns[door] = pallets
                        doc = {
                            "asn_id": f"ASN-{door}",
                            "door": door,
                            "lines": [
                                {"line": i + 1, "sscc": p, "quantity": 1}
                                for i, p in enumerate(pallets)
                            ],
                        }
                        await wms.publish(
                            f"wms/DC1/asn/ASN-{door}", json.dumps(doc), qos=1, retain=True
                        )
                for n in range(1, wms_tasks + 1):
                    task_id = f"T-{n:03d}"
                    run.wms_tasks.add(task_id)
                    doc = {
                        "task_id": task_id,
                        "sscc": sscc("0614141", 900_000 + n),
                        "source": f"S-{n % 10:02d}",
                        "destination": STORAGE[n % len(STORAGE)],
                    }
                    await wms.publish(
                        f"wms/DC1/task/{task_id}", json.dumps(doc), qos=1, retain=True
                    )
            _say("ASNs and WMS tasks published")
            await asyncio.sleep(2.0)  # the ASNs reached their gateways
            fleet = FleetController(
                "127.0.0.1",
                auditor_port,
                base="gw/DC1/dock-3",
                fleet_id="fleet-1",
                robots=[f"r{n}" for n in range(1, robots + 1)],
                capabilities=("pallet",),
                step_s=0.1,
                poll_s=0.3,
                request_timeout_s=3.0,
                protocol="5" if protocol == "5" else "3.1.1",
            )
            clerks = {
                name: HandheldTerminal(
                    f"pda-{name}",
                    auditor_port,
                    gateway=name,
                    batch_size=10,
                    answer_timeout_s=3.0,
                    protocol=protocol,
                )
                for name in DOORS
            }
            async with fleet, clerks["dock-1"] as pda1, clerks["dock-2"] as pda2:
                fleet_task = asyncio.create_task(fleet.run())
                pdas = {"dock-1": pda1, "dock-2": pda2}
                faults = asyncio.create_task(
                    _faults(run, gateways["dock-1"], consumers, new_consumer, cluster, outage_s)
                )
                # The clerks receive every pallet, ten at a time, door by door.
                for name, pda in pdas.items():
                    for door in DOORS[name]:
                        for pallet in asns[door]:
                            pda.scan("receive", sscc_label(pallet), door=door)
                            run.received[pallet] = door
                for _ in range(600):
                    for pda in pdas.values():
                        await _flush(pda)
                    if all(p.pending == 0 for p in pdas.values()):
                        break
                    await asyncio.sleep(0.2)
                _say(f"receiving done: {sum(p.pending for p in pdas.values())} scans pending")
                await faults
                _say("faults done")
                # dock-2's clerk moves pallets dock-1 received and dock-3 put away.
                from_dock1 = [p for p, d in run.received.items() if d in DOORS["dock-1"]]
                try:
                    await _until(
                        lambda: all(p in _putaways(auditor) for p in from_dock1[:10]),
                        120,
                        "the first pallets of dock-1 put away",
                    )
                except AssertionError:
                    _say(
                        f"fleet: {len(fleet.exchanges)} exchanges, {len(fleet.log)} attempts,"
                        f" last error {fleet.last_error}; moves seen {len(_moves(auditor))};"
                        f" last {fleet.exchanges[-1] if fleet.exchanges else None}"
                    )
                    raise
                await asyncio.sleep(1.0)  # dock-3's state reached dock-2
                for pallet in from_dock1[:10]:
                    pda2.scan("move", sscc_label(pallet), location="M-01-01")
                    run.moved_by_hand[pallet] = "M-01-01"
                for _ in range(300):
                    await _flush(pda2)
                    if pda2.pending == 0:
                        break
                    await asyncio.sleep(0.2)
                _say(f"hand moves done: {pda2.pending} pending")
                # Every task done: the putaways and the WMS's.
                await _until(
                    lambda: (
                        len(_putaways(auditor)) >= len(run.received)
                        and run.wms_tasks <= {p.get("task_id") for p in _moves(auditor)}
                    ),
                    240,
                    "every task done",
                )
                _say("every task done")
                fleet.stop()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(fleet_task, 10)
                run.outcomes = list(fleet.log)
                run.handheld = {name: dict(p.results) for name, p in pdas.items()}
            # The consumers have stored what the auditor saw.
            await asyncio.sleep(1.0)  # the last transactions reach the auditor
            run.auditor = [
                (m.topic, m.json()) for m in auditor.on("") if m.payload and "/tx/" in m.topic
            ]
            wanted = {payload["tx_id"] for _, payload in run.auditor}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run.stored = await _stored(postgres.dsn)
                run.missing_numbers = await _missing_numbers(postgres.dsn)
                if wanted <= set(run.stored) and run.missing_numbers == 0:
                    break
                await asyncio.sleep(0.5)
    finally:
        for process in gateways.values():
            process.stop()
            if process.log.exists():
                text = process.log.read_text(errors="replace")
                run.resends += text.count("transactions published again on request")
        for consumer in consumers:
            with contextlib.suppress(ProcessLookupError):
                consumer.kill()
            consumer.wait(10)
        if mosquitto is not None:
            mosquitto.stop()
        if cluster is not None:
            cluster.stop()
        postgres.stop()
    run.seconds = time.monotonic() - began
    return run


def _moves(auditor: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in auditor.on("/tx/move")]


def _putaways(auditor: Collector) -> dict[str, str]:
    """Pallet -> where its putaway (an AGV move from a dock door) put it."""
    return {
        p["sscc"]: p["to_location"]
        for p in _moves(auditor)
        if p.get("task_id") and (p.get("from_location") or "").startswith("D0")
    }


async def _faults(
    run: SiteRun,
    dock1: GatewayProcess,
    consumers: list[subprocess.Popen[bytes]],
    new_consumer: Callable[[str], subprocess.Popen[bytes]],
    cluster: NatsCluster | None,
    outage_s: float,
) -> None:
    """dock-1 SIGKILLed three times, a consumer once, a broker node for `outage_s`."""
    node: asyncio.Task[None] | None = None
    if cluster is not None:

        async def node_outage() -> None:
            cluster.kill(0)
            run.node_kills += 1
            await asyncio.sleep(outage_s)
            cluster.start(0)

        node = asyncio.create_task(node_outage())
    for n in range(3):
        await asyncio.sleep(1.5)
        await dock1.signal_async(signal.SIGKILL)
        run.gateway_kills += 1
        await asyncio.sleep(1.0)
        dock1.start()
        if n == 0:
            consumers[1].kill()
            consumers[1].wait(10)
            run.consumer_kills += 1
            consumers[1] = new_consumer("wms-2")
    if node is not None:
        await node


def check_site(run: SiteRun) -> None:
    """What every run must show (the issue's acceptance)."""
    txs = run.transactions()
    # Every pallet received once, by the gateway of its door.
    receipts = [p for p in txs.values() if p["type"] == "receive"]
    received = Counter(i["sscc"] for p in receipts for i in p["items"] if i["result"] == "accepted")
    assert set(received) == set(run.received) and set(received.values()) == {1}
    for p in receipts:
        owner = next(
            g
            for g, doors in (("dock-1", "D01 D02 D03 D04"), ("dock-2", "D05 D06 D07 D08"))
            if p["door"] in doors
        )
        assert p["gateway"] == owner
    # PostgreSQL holds every transaction the auditor saw, each once (its id the key).
    stored = {i for i, (topic, _, _) in run.stored.items() if "/tx/" in topic}
    assert set(txs) == stored, (len(set(txs) - stored), len(stored - set(txs)))
    # ... and every transaction the gateways numbered (what the auditor did not see too).
    assert run.missing_numbers == 0, run.missing_numbers
    assert not run.repeats_with_other_ids()  # a repeat carries its first id
    # Every task leased to one robot at a time, and each done once.
    assert overlapping_leases(run.outcomes) == []
    done = Counter(o.task_id for o in run.outcomes if o.did is Did.DROPPED)
    assert set(done.values()) <= {1}, [t for t, n in done.items() if n > 1]
    moves = [p for p in txs.values() if p["type"] == "move"]
    by_task = Counter(p["task_id"] for p in moves if p.get("task_id"))
    assert run.wms_tasks <= set(by_task) and set(by_task.values()) == {1}
    assert all(p["gateway"] == "dock-3" for p in moves if p.get("task_id"))
    # The hand moves on dock-2 start where dock-3's robots put the pallets.
    putaway = {
        p["sscc"]: p["to_location"]
        for p in moves
        if p.get("task_id") and p["from_location"] in run.received.values()
    }
    by_hand = [p for p in moves if not p.get("task_id")]
    hand = {p["sscc"] for p in by_hand}
    assert hand == set(run.moved_by_hand), (
        hand - set(run.moved_by_hand),
        set(run.moved_by_hand) - hand,
    )
    for p in by_hand:
        assert p["gateway"] == "dock-2"
        assert p["from_location"] == putaway[p["sscc"]], p
    assert run.gateway_kills == 3 and run.consumer_kills == 1


def main() -> None:
    """The full-length run, with its figures (see the module docstring)."""
    cli = argparse.ArgumentParser(description="A site of three gateways with faults.")
    cli.add_argument("--broker", choices=["mosquitto", "nats"], default="nats")
    cli.add_argument("--outage", type=float, default=30.0)
    cli.add_argument("--pallets", type=int, default=15, help="per door (8 doors)")
    cli.add_argument("--tasks", type=int, default=100)
    cli.add_argument(
        "--workdir",
        type=Path,
        help="keep the gateways' and brokers' logs here (default: a temporary folder)",
    )
    args = cli.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="site-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = asyncio.run(
            run_site(
                workdir,
                broker=args.broker,
                pallets_per_door=args.pallets,
                wms_tasks=args.tasks,
                outage_s=args.outage,
            )
        )
    txs = run.transactions()
    try:
        check_site(run)
        verdict = "every check passed"
    except AssertionError as err:
        verdict = f"FAILED: {err!r}"[:2000]
    print(
        json.dumps(
            {
                "broker": args.broker,
                "seconds": round(run.seconds, 1),
                "transactions": len(txs),
                "stored": len([i for i, (t, _, _) in run.stored.items() if "/tx/" in t]),
                "missing_in_postgres": len(set(txs) - set(run.stored)),
                "numbers_missing": run.missing_numbers,
                "resends": run.resends,
                "repeats_with_other_ids": len(run.repeats_with_other_ids()),
                "gateway_kills": run.gateway_kills,
                "node_kills": run.node_kills,
                "consumer_kills": run.consumer_kills,
                "rows_per_consumer": dict(Counter(by for _, by, _ in run.stored.values())),
                "checks": verdict,
            }
        )
    )


if __name__ == "__main__":
    main()
