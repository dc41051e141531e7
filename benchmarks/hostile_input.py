"""Benchmark: the gateway under hostile and heavy MQTT input (issue #11).

Two scenarios, each in a fresh process against a private Mosquitto, each printed beside its
baseline from the same run:

- **flood**: `simulators.flood` (a separate process) sends 10,000 junk messages over every
  topic the gateway reads and 16 retained ship orders of 1 MiB, while a forklift scanner on a
  pseudo-terminal scans a pallet and a location every 200 ms. Printed: the scan-to-move
  latency (p50, p99, max, from the location label typed to the move received by a
  subscriber), the event loop's worst stall (a 10 ms timer's lateness), broker connections
  lost, peak RSS and the events the flood produced. Baseline: the same probe without flood.
- **replay**: 10,000 small retained ASNs wait on the broker. Printed: from the gateway's start
  to the first answer of a `cmd/close`, and to every ASN taken in (stored or rejected), on a
  fresh database and again at a restart (all of them stored and unchanged). Baseline: a start
  with no ASNs.

Run with `make bench` or `python benchmarks/hostile_input.py [--junk N --big N --asns N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from gateway.app import Gateway
from gateway.config import parse_config
from gateway.health import DeviceState
from simulators.gs1 import sscc, sscc_label
from simulators.scanner import ScannerSimulator, Type
from tests.gateway_helpers import LOCATIONS, ask_to_close, site_config
from tests.mqtt_helpers import Collector, Mosquitto

ROOT = Path(__file__).resolve().parent.parent
PROBE_EVERY_S = 0.2


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (`VmRSS`) or its peak (`VmHWM`), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LoopWatch:
    """The event loop's worst stall: how late a 10 ms timer fires, at worst."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self.peak_rss_mb = 0.0

    async def run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            self.worst_s = max(self.worst_s, time.perf_counter() - began - 0.01)
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb())


def config(tmp: Path, port: int, scanner: Path | None) -> Any:
    raw = site_config(tmp, broker_port=port, scanner=scanner)
    raw["logging"] = {"format": "json", "level": "error"}
    raw["agv"] = {"enabled": True, "vda5050": {"interface": "uagv"}}
    raw["broker"]["keepalive_s"] = 10
    return parse_config(raw, tmp / "site.toml")


def flood(port: int, *args: str) -> subprocess.Popen[bytes]:
    """`simulators.flood` in its own process."""
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.flood", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def probe_scan(sim: ScannerSimulator, collector: Collector, n: int) -> float:
    """Scan pallet n and a location; seconds from the location typed to its move received."""
    pallet = sscc("0376123", 500_000 + n)
    await sim.run([Type(sscc_label(pallet), aim="]C1")])
    await asyncio.sleep(0.02)
    await sim.run([Type(LOCATIONS[n % len(LOCATIONS)])])
    typed = time.perf_counter()

    def arrived() -> bool:
        return any(pallet.encode() in m.payload for m in collector.on("/tx/move"))

    if not await wait_until(arrived, 30):
        return float("inf")
    return time.perf_counter() - typed


async def flood_scenario(tmp: Path, junk: int, big: int) -> dict[str, Any]:
    broker = Mosquitto(tmp / "broker", save_every_change=False)
    broker.start()
    try:
        gateway = Gateway(config(tmp, broker.port, tmp / "scan0"))
        stop = asyncio.Event()
        watch = LoopWatch()
        latencies: list[float] = []
        async with (
            Collector(broker.port, topic="gw/DC1/dock-1/#") as collector,
            ScannerSimulator(tmp / "scan0") as sim,
        ):
            run = asyncio.create_task(gateway.run(stop))
            await wait_until(lambda: gateway.bridge is not None and gateway.bridge.subscribed, 20)
            await wait_until(
                lambda: gateway.board.devices["fl-07"].state is DeviceState.CONNECTED, 20
            )
            watcher = asyncio.create_task(watch.run())
            events_before = len(collector.on("/event")) + len(collector.on("/alarm"))
            flooding = (
                flood(broker.port, "--junk", str(junk), "--big", str(big)) if junk or big else None
            )
            began = time.perf_counter()
            n = 0
            while True:
                latencies.append(await probe_scan(sim, collector, n))
                n += 1
                await asyncio.sleep(PROBE_EVERY_S)
                if flooding is None:
                    if n >= 50:
                        break
                elif flooding.poll() is not None and _orders_taken(gateway, big):
                    break
                if time.perf_counter() - began > 300:
                    break
            duration = time.perf_counter() - began
            await asyncio.sleep(1.0)  # the last events
            events = len(collector.on("/event")) + len(collector.on("/alarm")) - events_before
            watcher.cancel()
            stop.set()
            await asyncio.wait_for(run, 30)
        assert gateway.bridge is not None
        latencies.sort()
        return {
            "probes": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "max_ms": latencies[-1] * 1000,
            "worst_stall_ms": watch.worst_s * 1000,
            "connection_losses": gateway.bridge.connection_losses,
            "peak_rss_mb": watch.peak_rss_mb,
            "events": events,
            "duration_s": duration,
            "orders_taken": _orders_taken(gateway, big),
        }
    finally:
        broker.stop()


def _orders_taken(gateway: Gateway, big: int) -> bool:
    runner = gateway.runner
    if runner is None:
        return False
    orders = runner.engine.dock.orders
    return all(f"BIG-{n}" in orders for n in range(big))


async def first_answer(port: int, gateway: Gateway, began: float) -> float:
    """Seconds from `began` to the answer of a close command sent once the gateway is up."""
    await wait_until(lambda: gateway.bridge is not None and gateway.bridge.subscribed, 60)
    await ask_to_close(port, "NOPE", timeout=120)
    return time.perf_counter() - began


async def start_once(tmp: Path, port: int, asns: int) -> dict[str, float]:
    """Start a gateway; time to the first answer and to every retained ASN taken in."""
    gateway = Gateway(config(tmp, port, None))
    stop = asyncio.Event()
    watch = LoopWatch()
    watcher = asyncio.create_task(watch.run())
    began = time.perf_counter()
    run = asyncio.create_task(gateway.run(stop))
    answer = await first_answer(port, gateway, began)

    def all_taken() -> bool:
        bridge = gateway.bridge
        return bridge is not None and bridge.received >= asns and gateway.queue.empty()

    await wait_until(all_taken, 300)
    taken = time.perf_counter() - began
    held = len(gateway.runner.engine.dock.asns) if gateway.runner else 0
    watcher.cancel()
    stop.set()
    await asyncio.wait_for(run, 30)
    return {
        "first_answer_s": answer,
        "all_taken_s": taken,
        "held": held,
        "worst_stall_ms": watch.worst_s * 1000,
    }


async def replay_scenario(tmp: Path, asns: int) -> dict[str, Any]:
    broker = Mosquitto(tmp / "broker", save_every_change=False)
    broker.start()
    try:
        empty = await start_once(tmp / "empty", broker.port, 0)
        if asns:
            publisher = flood(broker.port, "--junk", "0", "--big", "0", "--asns", str(asns))
            publisher.wait(timeout=300)
        (tmp / "site").mkdir()
        fresh = await start_once(tmp / "site", broker.port, asns)
        restart = await start_once(tmp / "site", broker.port, asns)
        return {"empty": empty, "fresh": fresh, "restart": restart}
    finally:
        broker.stop()


def in_subprocess(scenario: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--scenario",
        scenario,
        "--junk",
        str(args.junk),
        "--big",
        str(args.big),
        "--asns",
        str(args.asns),
        *extra,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(args: argparse.Namespace) -> None:
    quiet = in_subprocess("flood", args, ["--quiet"])
    loud = in_subprocess("flood", args, [])
    print(f"flood: {args.junk:,} junk messages and {args.big} retained 1 MiB ship orders")
    print(f"{'':32}{'baseline: no flood':>22}{'flood':>14}")
    rows = [
        ("probe scans", "probes", "{:.0f}"),
        ("scan to move p50 (ms)", "p50_ms", "{:.0f}"),
        ("scan to move p99 (ms)", "p99_ms", "{:.0f}"),
        ("scan to move max (ms)", "max_ms", "{:.0f}"),
        ("event loop worst stall (ms)", "worst_stall_ms", "{:.0f}"),
        ("broker connections lost", "connection_losses", "{:.0f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("events published", "events", "{:.0f}"),
        ("duration (s)", "duration_s", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:32}{fmt.format(quiet[key]):>22}{fmt.format(loud[key]):>14}")
    print(f"all {args.big} ship orders taken in: {loud['orders_taken']}")
    replay = in_subprocess("replay", args, [])
    print()
    print(f"replay: {args.asns:,} retained ASNs on the broker at start")
    print(f"{'':32}{'baseline: none':>18}{'fresh database':>16}{'restart':>10}")
    for label, key, fmt in [
        ("first answer (s)", "first_answer_s", "{:.2f}"),
        ("all taken in (s)", "all_taken_s", "{:.2f}"),
        ("ASNs held", "held", "{:.0f}"),
        ("event loop worst stall (ms)", "worst_stall_ms", "{:.0f}"),
    ]:
        values = [fmt.format(replay[name][key]) for name in ("empty", "fresh", "restart")]
        print(f"{label:32}{values[0]:>18}{values[1]:>16}{values[2]:>10}")


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--junk", type=int, default=10_000)
    cli.add_argument("--big", type=int, default=16)
    cli.add_argument("--asns", type=int, default=10_000)
    cli.add_argument("--scenario", choices=["flood", "replay"], help=argparse.SUPPRESS)
    cli.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = cli.parse_args()
    if args.scenario is None:
        report(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.scenario == "flood":
            junk = 0 if args.quiet else args.junk
            result = asyncio.run(flood_scenario(Path(tmp), junk, 0 if args.quiet else args.big))
        else:
            result = asyncio.run(replay_scenario(Path(tmp), args.asns))
    print(json.dumps(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
