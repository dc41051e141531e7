"""Benchmark: what the operations surface costs in CPU at 2,000 tag reads/s.

The operations surface (issue #14) is the HTTP endpoint (`[http] enabled`: /metrics for
Prometheus, /healthz and /readyz, the status page with /api/status and its server-sent-events
stream /events) and the live state on retained MQTT topics (`[state] enabled`,
`gw/{site}/{gateway}/state/...`). The gateway is started as a service starts it,
`gateway run --config site.toml`, in a fresh process, with one LLRP reader at receiving door
D03 (the simulator, in this process, at 2,000 tag reads/s: an inbound pallet of an SSCC-96
label and 12 SGTIN-96 cases crossing every 3 s, plus two dozen stray tags always heard inside
the door; unplanned receipts, no ASN), against a private Mosquitto (a fresh one per round).

The baseline: the same gateway with the surface off (`[http] enabled = false`,
`[state] enabled = false`). With it on, clients use it the whole time: one HTTP client
scrapes /metrics and asks /healthz and /readyz every second (Prometheus and the probes), one
holds /events open and reads every event (the status page). The figure is the CPU of the
gateway process (and any children) in % of one core over the window, the median over rounds,
ON minus OFF; issue #14's target: under 5% of one core. Rounds alternate OFF, ON, OFF, ON ...
each one with a fresh simulator, broker and database; each waits for the gateway's retained
`online` and its reader `connected`, warms up, then measures. Also printed per round: the tag
reads/s the simulator sent (below 1,900: the load generator was the limit), the receive
transactions a subscriber got, the HTTP requests and events served, the load average.

Run with `make bench` or `python benchmarks/ops_surface.py [--rounds N] [--window-s S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from benchmarks.guard import Figure, keep
from benchmarks.measure import cpu_seconds
from gateway.domain.epc import encode_sgtin96, encode_sscc96
from simulators.llrp import LlrpReaderSimulator, Pallet, Scenario, StrayTag
from tests.dock_helpers import CP, cases
from tests.mqtt_helpers import Mosquitto, free_port

SITE, GATEWAY = "DC1", "dock-1"
BASE = f"gw/{SITE}/{GATEWAY}"
READER = "d03-reader"
READS_PER_S = 2000.0
MIN_READS_PER_S = 1900.0  # below this, the load generator was the limit
TARGET_PCT = 5.0
PALLET_EVERY_S = 3.0
PALLET_IN_ZONE_S = 2.0  # each pallet's pass is over before the next one comes
CASES_PER_PALLET = 12
STRAYS = 24
PROBE_EVERY_S = 1.0
START_TIMEOUT_S = 30.0


def scenario(seconds: float) -> Scenario:
    """Inbound pallets crossing D03 every few seconds for `seconds`, stray tags always heard.

    The strays (strong, on the inside antennas only) keep the reader at its read budget all
    the time; being read from one side only, they never make a pass."""
    pallets = [
        Pallet(
            [
                encode_sscc96(CP, f"{5_000_000_000 + n}"),
                *cases("012345", 1000 + CASES_PER_PALLET * n, CASES_PER_PALLET),
            ],
            "inbound",
            2.0 + n * PALLET_EVERY_S,
            PALLET_IN_ZONE_S,
        )
        for n in range(int(seconds / PALLET_EVERY_S) + 1)
    ]
    strays = [
        StrayTag(encode_sgtin96(CP, "054321", 900_000 + i), (3, 4), -60.0) for i in range(STRAYS)
    ]
    return Scenario(pallets=pallets, strays=strays, door="D03", seed=14)


def gateway_toml(workdir: Path, n: int, broker: int) -> str:
    """Round `n`'s gateway, broker, storage and logging sections (a fresh database a round)."""
    return f"""\
[gateway]
site = "{SITE}"
id = "{GATEWAY}"
shutdown_grace_s = 3

[broker]
host = "127.0.0.1"
port = {broker}
protocol = "5"

[storage]
path = "{workdir / f"gateway-{n}.db"}"

[logging]
format = "json"
level = "warning"
"""


def site_toml(
    workdir: Path, n: int, *, broker: int, reader: int, surface: bool, http_port: int
) -> Path:
    """One round's configuration: the reader at D03, the surface on or off."""
    on = "true" if surface else "false"
    text = f"""{gateway_toml(workdir, n, broker)}
[http]
enabled = {on}
host = "127.0.0.1"
port = {http_port}

[state]
enabled = {on}

[[devices]]
id = "{READER}"
kind = "llrp_reader"
door = "D03"
role = "receiving"
transport = {{ type = "tcp", host = "127.0.0.1", port = {reader} }}
antennas = {{ outside = [1, 2], inside = [3, 4] }}
"""
    path = workdir / f"site-{n}.toml"
    path.write_text(text, "utf-8")
    return path


def gateway_command(config: Path) -> list[str]:
    """The gateway as a service runs it (the console script), else `python -m gateway`."""
    script = Path(sys.executable).parent / "gateway"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    return [*head, "run", "--config", str(config)]


@dataclass
class Watch:
    """What a subscriber sees of the gateway: online, its reader, receipts, state messages."""

    online: bool = False
    connected: bool = False
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    receipts: int = 0
    state_messages: int = 0

    async def follow(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic.endswith("/tx/receive"):
                self.receipts += 1
            elif topic.startswith(f"{BASE}/state/"):
                self.state_messages += 1
            elif isinstance(message.payload, bytes) and message.payload:
                doc = json.loads(message.payload)
                if topic == f"{BASE}/status":
                    self.online = doc.get("state") == "online"
                elif topic == f"{BASE}/device/{READER}/status":
                    self.connected = doc.get("state") == "connected"
                if self.online and self.connected:
                    self.ready.set()


@dataclass
class Clients:
    """The surface's users: a Prometheus-like scraper with probes, and the status page."""

    port: int
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    events: int = 0
    event_bytes: int = 0
    metrics: str = ""  # the last /metrics scraped

    def gateway_reads_per_s(self) -> float | None:
        """The reader's read rate as the gateway counts it, from the last scrape."""
        for line in self.metrics.splitlines():
            if line.startswith("gateway_device_reads_per_second{") and f'"{READER}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    async def _get(self, session: aiohttp.ClientSession, path: str) -> None:
        async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
            body = await response.read()
            self.requests += 1
            if path == "/metrics":
                self.metrics = body.decode()
            if response.status != 200:
                self.failures.append(f"{path}: {response.status}")

    async def scrape(self) -> None:
        """/metrics, /healthz and /readyz every second, as Prometheus and the probes do."""
        async with aiohttp.ClientSession() as session:
            due = time.monotonic()
            while True:
                for path in ("/metrics", "/healthz", "/readyz"):
                    await self._get(session, path)
                due += PROBE_EVERY_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def page(self) -> None:
        """The status page: /api/status once, then /events held open, every event read."""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self._get(session, "/api/status")
            async with session.get(f"http://127.0.0.1:{self.port}/events") as response:
                if response.status != 200:
                    self.failures.append(f"/events: {response.status}")
                    return
                async for line in response.content:
                    self.event_bytes += len(line)
                    if line.startswith(b"data: "):
                        json.loads(line[6:])  # as the page parses it
                        self.events += 1


@dataclass(frozen=True, slots=True)
class Round:
    """One round's measurements over the window."""

    surface: bool
    cpu_pct: float
    reads_per_s: float
    gateway_reads_per_s: float | None  # as the gateway counts them (ON: from /metrics)
    receipts: int
    state_messages: int
    requests: int
    events: int
    event_kib: float
    loadavg: float


async def one_round(
    n: int, surface: bool, workdir: Path, http_port: int, args: argparse.Namespace
) -> Round:
    """Start a fresh gateway, surface on or off, and measure it under load."""
    broker = Mosquitto(workdir / f"broker-{n}", save_every_change=False)
    broker.start()
    log = workdir / f"gateway-{n}.log"
    try:
        play = scenario(START_TIMEOUT_S + args.warmup_s + args.window_s + 30)
        async with (
            LlrpReaderSimulator(play, reads_per_s=args.reads_per_s) as reader,
            aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                identifier="bench-ops",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client,
        ):
            for topic in (
                f"{BASE}/status",
                f"{BASE}/device/{READER}/status",
                f"{BASE}/tx/receive",
                f"{BASE}/state/#",
            ):
                await client.subscribe(topic, options=SubscribeOptions(qos=1))
            config = site_toml(
                workdir,
                n,
                broker=broker.port,
                reader=reader.port,
                surface=surface,
                http_port=http_port,
            )
            watch = Watch()
            follow = asyncio.create_task(watch.follow(client))
            users = Clients(http_port)
            tasks: list[asyncio.Task[None]] = []
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
                if surface:
                    tasks = [asyncio.create_task(users.scrape()), asyncio.create_task(users.page())]
                await asyncio.sleep(args.warmup_s)
                reads, receipts, states = (
                    reader.stats.reads_sent,
                    watch.receipts,
                    watch.state_messages,
                )
                requests, events, event_bytes = users.requests, users.events, users.event_bytes
                cpu, started = cpu_seconds(process.pid, children=True), time.monotonic()
                await asyncio.sleep(args.window_s)
                cpu = cpu_seconds(process.pid, children=True) - cpu
                elapsed = time.monotonic() - started
                result = Round(
                    surface=surface,
                    cpu_pct=100 * cpu / elapsed,
                    reads_per_s=(reader.stats.reads_sent - reads) / elapsed,
                    gateway_reads_per_s=users.gateway_reads_per_s(),
                    receipts=watch.receipts - receipts,
                    state_messages=watch.state_messages - states,
                    requests=users.requests - requests,
                    events=users.events - events,
                    event_kib=(users.event_bytes - event_bytes) / 1024,
                    loadavg=os.getloadavg()[0],
                )
                for task in tasks:
                    if task.done():
                        task.result()  # a client that died: its error
                if users.failures:
                    raise RuntimeError(f"HTTP answers other than 200: {users.failures[:5]}")  # noqa: TRY301
                if process.returncode is not None:
                    raise RuntimeError(f"the gateway exited ({process.returncode})")  # noqa: TRY301
            except BaseException:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                sys.stderr.write(log.read_text(errors="replace")[-3000:])
                raise
            finally:
                for task in [follow, *tasks]:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if process.returncode is None:
                process.terminate()
            await process.wait()
    finally:
        broker.stop()
    return result


def row(label: str, r: Round) -> str:
    taken = "-" if r.gateway_reads_per_s is None else f"{r.gateway_reads_per_s:.0f}"
    return (
        f"{label:16}{r.cpu_pct:>9.1f}{r.reads_per_s:>9.0f}{taken:>9}{r.receipts:>9}"
        f"{r.state_messages:>8}{r.requests:>7}{r.events:>8}{r.event_kib:>9.1f}{r.loadavg:>7.2f}"
    )


async def measure(args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        http_port = free_port()
        for n in range(2 * args.rounds):
            surface = n % 2 == 1
            result = await one_round(n, surface, workdir, http_port, args)
            rounds.append(result)
            label = f"round {n // 2 + 1} {'ON' if surface else 'OFF'}"
            print(row(label, result), flush=True)
    return rounds


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--rounds", type=int, default=3, help="OFF and ON runs, interleaved")
    cli.add_argument("--window-s", type=float, default=20.0, help="the CPU measurement window")
    cli.add_argument("--warmup-s", type=float, default=5.0, help="after the reader connected")
    cli.add_argument("--reads-per-s", type=float, default=READS_PER_S, help=argparse.SUPPRESS)
    args = cli.parse_args()
    print(
        f"operations surface: gateway CPU at {args.reads_per_s:,.0f} tag reads/s (LLRP reader "
        f"at D03, a pallet of {CASES_PER_PALLET + 1} tags every {PALLET_EVERY_S:g} s, "
        f"{STRAYS} strays)"
    )
    print(
        "OFF: [http] and [state] disabled; ON: both enabled, /metrics + /healthz + /readyz "
        "every 1 s, /events held open"
    )
    print(
        f"CPU over {args.window_s:g} s after {args.warmup_s:g} s of warm-up, "
        f"% of one core (gateway process and children)"
    )
    print(
        f"{'':16}{'CPU':>9}{'reads':>9}{'gateway':>9}{'receipts':>9}{'state':>8}{'HTTP':>7}"
        f"{'events':>8}{'events':>9}{'load':>7}\n"
        f"{'':16}{'(%)':>9}{'sent/s':>9}{'reads/s':>9}{'':>9}{'msgs':>8}{'reqs':>7}{'':>8}"
        f"{'(KiB)':>9}{'avg':>7}"
    )
    rounds = asyncio.run(measure(args))
    off = [r for r in rounds if not r.surface]
    on = [r for r in rounds if r.surface]
    off_cpu = statistics.median(r.cpu_pct for r in off)
    on_cpu = statistics.median(r.cpu_pct for r in on)
    cost = on_cpu - off_cpu
    for label, group in (("median OFF", off), ("median ON", on)):
        print(
            f"{label:16}{statistics.median(r.cpu_pct for r in group):>9.1f}"
            f"{statistics.median(r.reads_per_s for r in group):>9.0f}{'':>9}"
            f"{statistics.median(r.receipts for r in group):>9.0f}"
        )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    slowest = min(r.reads_per_s for r in rounds)
    if slowest < MIN_READS_PER_S:
        print(
            f"warning: load generator below target: {slowest:,.0f} tag reads/s in a round "
            f"(target {args.reads_per_s:,.0f}, at least {MIN_READS_PER_S:,.0f})"
        )
    if any(r.receipts == 0 for r in rounds):
        print("warning: a round saw no receive transaction")
    met = cost < TARGET_PCT
    print(
        f"operations surface: {cost:+.2f} percentage points of one core "
        f"(ON {on_cpu:.2f}% - OFF {off_cpu:.2f}%), target < {TARGET_PCT:g}: "
        f"{'PASS' if met else 'BELOW TARGET'}"
    )
    keep(
        "ops_surface",
        [
            Figure(
                name=(
                    "CPU of the operations surface at 2,000 tag reads/s (HTTP, metrics scraped "
                    "every 1 s, status page open, live state topics)"
                ),
                value=cost,
                unit="% of a core",
                baseline=off_cpu,
                baseline_name="the gateway without it",
                ratio=off_cpu / on_cpu,
                target=f"< {TARGET_PCT:g}% of one core",
                met=met,
            )
        ],
    )


if __name__ == "__main__":
    main()
