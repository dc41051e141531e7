"""Benchmark: how many RFID dock doors one gateway serves on this PC (sizing a site, #17).

The gateway is started as a service starts it (`gateway run --config site.toml`), in a fresh
process per round, with N LLRP readers, one per receiving door D01..DN. Each reader is the
simulator (in this process) reading `--reads-per-s` tags a second: an inbound pallet of an
SSCC-96 label and 12 SGTIN-96 cases crossing its door every 3 s, plus stray tags always heard
inside the door (unplanned receipts, no ASN), against a private Mosquitto (a fresh one per
round). A subscriber takes every receive transaction and notes when it came.

Per round: the gateway's CPU (process and children, % of one core) over the window, the tag
reads/s the simulators sent (below 95% of the target: the load generator was the limit, and
the figure says less than it seems), the receipts per door against the pallets that crossed,
and the pass latency: the receive transaction at the subscriber minus its `occurred_at` (the
pass's last read; it includes the portal's wait for the pallet to leave, `depart_after_s`).
The baseline is one door in the same run; rounds alternate door counts (1, 4, 8, 16, 1, 4 ...),
and each figure is the median over its rounds.

The sizing question it answers: at N doors, is the gateway still well under one core, and is
a pass still published as fast as with one door?

Run with `make bench` or `python benchmarks/site_sizing.py [--doors 1 2 4 8] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from benchmarks.guard import Figure, keep
from benchmarks.handheld_ack import percentile as nearest_rank
from benchmarks.measure import cpu_seconds
from benchmarks.ops_surface import GATEWAY, SITE, gateway_command, gateway_toml
from gateway.domain.epc import encode_sgtin96, encode_sscc96
from simulators.llrp import LlrpReaderSimulator, Pallet, Scenario, StrayTag
from tests.dock_helpers import CP, cases
from tests.mqtt_helpers import Mosquitto

BASE = f"gw/{SITE}/{GATEWAY}"
READS_PER_S = 1000.0
PALLET_EVERY_S = 3.0
PALLET_IN_ZONE_S = 2.0
CASES_PER_PALLET = 12
STRAYS = 12
START_TIMEOUT_S = 30.0
CPU_TARGET_PCT = 50.0  # at the largest door count: half a core, the other half for the rest


def door_id(n: int) -> str:
    return f"D{n:02d}"


def scenario(door: int, seconds: float) -> Scenario:
    """Inbound pallets crossing door `door` every few seconds for `seconds`, strays always heard.

    Pallets of different doors carry different serials; doors start their pallets at
    staggered times, as trucks do not all arrive at once."""
    offset = (door * 0.37) % PALLET_EVERY_S
    pallets = [
        Pallet(
            [
                encode_sscc96(CP, f"{5_000_000_000 + door * 100_000 + n}"),
                *cases(
                    "012345",
                    door * 1_000_000 + CASES_PER_PALLET * n,
                    CASES_PER_PALLET,
                ),
            ],
            "inbound",
            2.0 + offset + n * PALLET_EVERY_S,
            PALLET_IN_ZONE_S,
        )
        for n in range(int(seconds / PALLET_EVERY_S) + 1)
    ]
    strays = [
        StrayTag(encode_sgtin96(CP, "054321", door * 10_000 + i), (3, 4), -60.0)
        for i in range(STRAYS)
    ]
    return Scenario(pallets=pallets, strays=strays, door=door_id(door), seed=17 + door)


def site_toml(workdir: Path, n: int, *, broker: int, readers: list[int]) -> Path:
    """One round's configuration: a reader per door."""
    devices = "".join(
        f"""
[[devices]]
id = "{door_id(i + 1).lower()}-reader"
kind = "llrp_reader"
door = "{door_id(i + 1)}"
role = "receiving"
transport = {{ type = "tcp", host = "127.0.0.1", port = {port} }}
antennas = {{ outside = [1, 2], inside = [3, 4] }}
"""
        for i, port in enumerate(readers)
    )
    text = gateway_toml(workdir, n, broker) + devices
    path = workdir / f"site-{n}.toml"
    path.write_text(text, "utf-8")
    return path


@dataclass
class Watch:
    """What a subscriber sees: online, readers connected, receipts per door and their delays."""

    doors: int
    online: bool = False
    connected: set[str] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    receipts: dict[str, int] = field(default_factory=dict)
    delays: list[float] = field(default_factory=list)
    window: tuple[dt.datetime, dt.datetime] | None = None  # receipts of passes in it count

    async def follow(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            doc = json.loads(message.payload)
            if topic.endswith("/tx/receive"):
                at = dt.datetime.fromisoformat(doc["occurred_at"])
                if self.window is not None and self.window[0] <= at < self.window[1]:
                    door = str(doc["door"])
                    self.receipts[door] = self.receipts.get(door, 0) + 1
                    self.delays.append((dt.datetime.now(dt.UTC) - at).total_seconds())
            elif topic == f"{BASE}/status":
                self.online = doc.get("state") == "online"
            elif "/device/" in topic and topic.endswith("/status"):
                device = topic.split("/")[-2]
                if doc.get("state") == "connected":
                    self.connected.add(device)
                else:
                    self.connected.discard(device)
            if self.online and len(self.connected) >= self.doors:
                self.ready.set()


@dataclass(frozen=True, slots=True)
class Round:
    """One round's measurements over the window."""

    doors: int
    cpu_pct: float
    reads_per_s: float  # sent by all the simulators
    receipts: int  # of passes within the window
    pallets: float  # that crossed a door within the window (a receipt is due for each)
    p50_s: float
    p99_s: float
    loadavg: float


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; NaN without values (no receipt in the window)."""
    return nearest_rank(values, q) if values else float("nan")


async def one_round(n: int, doors: int, workdir: Path, args: argparse.Namespace) -> Round:
    """Start a fresh gateway with `doors` readers and measure it under load."""
    broker = Mosquitto(workdir / f"broker-{n}", save_every_change=False)
    broker.start()
    log = workdir / f"gateway-{n}.log"
    seconds = START_TIMEOUT_S + args.warmup_s + args.window_s + 30
    try:
        async with contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(
                    LlrpReaderSimulator(scenario(d, seconds), reads_per_s=args.reads_per_s)
                )
                for d in range(1, doors + 1)
            ]
            client = await stack.enter_async_context(
                aiomqtt.Client(
                    "127.0.0.1",
                    broker.port,
                    identifier="bench-sizing",
                    protocol=aiomqtt.ProtocolVersion.V5,
                )
            )
            for topic in (f"{BASE}/status", f"{BASE}/device/+/status", f"{BASE}/tx/receive"):
                await client.subscribe(topic, options=SubscribeOptions(qos=1))
            config = site_toml(workdir, n, broker=broker.port, readers=[r.port for r in readers])
            watch = Watch(doors)
            follow = asyncio.create_task(watch.follow(client))
            with log.open("wb") as stderr:
                process = await asyncio.create_subprocess_exec(
                    *gateway_command(config),
                    cwd=workdir,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=stderr,
                )
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await watch.ready.wait()
                await asyncio.sleep(args.warmup_s)
                reads = sum(r.stats.reads_sent for r in readers)
                cpu, started = cpu_seconds(process.pid, children=True), time.monotonic()
                began = dt.datetime.now(dt.UTC)
                watch.window = (began, began + dt.timedelta(seconds=args.window_s))
                await asyncio.sleep(args.window_s)
                cpu = cpu_seconds(process.pid, children=True) - cpu
                elapsed = time.monotonic() - started
                sent = sum(r.stats.reads_sent for r in readers) - reads
                # The passes of the window are decided up to a few seconds after it.
                await asyncio.sleep(3.0)
                if process.returncode is not None:
                    raise RuntimeError(f"the gateway exited ({process.returncode})")  # noqa: TRY301
            except BaseException:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
                raise
            finally:
                follow.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await follow
            if process.returncode is None:
                process.terminate()
            await process.wait()
    finally:
        broker.stop()
    return Round(
        doors=doors,
        cpu_pct=100 * cpu / elapsed,
        reads_per_s=sent / elapsed,
        receipts=sum(watch.receipts.values()),
        pallets=doors * args.window_s / PALLET_EVERY_S,
        p50_s=percentile(watch.delays, 0.5),
        p99_s=percentile(watch.delays, 0.99),
        loadavg=os.getloadavg()[0],
    )


def row(label: str, r: Round, target_reads: float) -> str:
    limited = " (generator)" if r.reads_per_s < 0.95 * target_reads else ""
    return (
        f"{label:14}{r.cpu_pct:>9.1f}{r.reads_per_s:>10.0f}{r.receipts:>10}{r.pallets:>9.0f}"
        f"{r.p50_s:>9.2f}{r.p99_s:>9.2f}{r.loadavg:>7.2f}{limited}"
    )


async def measure(args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        n = 0
        for round_ in range(args.rounds):
            for doors in args.doors:
                result = await one_round(n, doors, workdir, args)
                n += 1
                rounds.append(result)
                target = doors * args.reads_per_s
                print(row(f"r{round_ + 1} {doors} door(s)", result, target), flush=True)
    return rounds


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--doors", type=int, nargs="+", default=[1, 4, 8, 16])
    cli.add_argument("--rounds", type=int, default=2)
    cli.add_argument("--window-s", type=float, default=15.0, help="the CPU measurement window")
    cli.add_argument("--warmup-s", type=float, default=5.0, help="after the readers connected")
    cli.add_argument("--reads-per-s", type=float, default=READS_PER_S, help="per door")
    args = cli.parse_args()
    print(
        f"site sizing: one gateway with N LLRP readers (one per receiving door), each at "
        f"{args.reads_per_s:,.0f} tag reads/s, a pallet of {CASES_PER_PALLET + 1} tags through "
        f"each door every {PALLET_EVERY_S:g} s, {STRAYS} strays per door"
    )
    print(
        f"CPU over {args.window_s:g} s after {args.warmup_s:g} s of warm-up, % of one core "
        "(gateway process and children); latency: receive transaction at a subscriber minus "
        "its occurred_at (includes the portal's departure wait)"
    )
    print(
        f"{'':14}{'CPU':>9}{'reads':>10}{'receipts':>10}{'pallets':>9}{'p50':>9}{'p99':>9}"
        f"{'load':>7}\n{'':14}{'(%)':>9}{'sent/s':>10}{'':>10}{'':>9}{'(s)':>9}{'(s)':>9}"
        f"{'avg':>7}"
    )
    rounds = asyncio.run(measure(args))
    by_doors = {d: [r for r in rounds if r.doors == d] for d in args.doors}

    def med(d: int, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in by_doors[d])

    base = min(args.doors)
    print(f"{'median':14}")
    for d in args.doors:
        print(
            f"{d:>3} door(s)    CPU {med(d, 'cpu_pct'):6.1f}% ({med(d, 'cpu_pct') / med(base, 'cpu_pct'):4.1f}x "
            f"{base} door)  reads {med(d, 'reads_per_s'):7.0f}/s  p99 {med(d, 'p99_s'):5.2f} s "
            f"(1 door {med(base, 'p99_s'):.2f} s)  receipts {med(d, 'receipts'):.0f} of "
            f"{med(d, 'pallets'):.0f}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    top = max(args.doors)
    generator_limited = any(r.reads_per_s < 0.95 * r.doors * args.reads_per_s for r in rounds)
    if generator_limited:
        print("warning: the load generator sent less than 95% of its target in some round")
    short = [r for r in rounds if abs(r.receipts - r.pallets) > r.doors]
    if short:
        print(f"warning: rounds whose receipts differ from the pallets: {[r.doors for r in short]}")
    met = med(top, "cpu_pct") < CPU_TARGET_PCT and not short
    print(
        f"site sizing: {top} doors at {args.reads_per_s:,.0f} reads/s each use "
        f"{med(top, 'cpu_pct'):.1f}% of one core ({base} door: {med(base, 'cpu_pct'):.1f}%), "
        f"target < {CPU_TARGET_PCT:g}%: {'PASS' if met else 'BELOW TARGET'}"
    )
    keep(
        "site_sizing",
        [
            Figure(
                name=f"gateway CPU with {top} RFID doors at {args.reads_per_s:,.0f} reads/s each",
                value=med(top, "cpu_pct"),
                unit="% of a core",
                baseline=med(base, "cpu_pct"),
                baseline_name=f"the same gateway with {base} door",
                ratio=med(base, "cpu_pct") * top / base / med(top, "cpu_pct"),
                target=f"< {CPU_TARGET_PCT:g}% of one core",
                met=met,
            ),
            Figure(
                name=f"pass latency p99 with {top} RFID doors (transaction at a subscriber)",
                value=med(top, "p99_s"),
                unit="s",
                baseline=med(base, "p99_s"),
                baseline_name=f"the same gateway with {base} door",
                ratio=med(base, "p99_s") / med(top, "p99_s"),
                target="near the one-door figure",
                met=med(top, "p99_s") < 2 * med(base, "p99_s"),
            ),
        ],
    )


if __name__ == "__main__":
    main()
