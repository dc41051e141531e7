"""Benchmark: the gateway's idle memory against the number of pallets it has ever moved.

Builds SQLite files holding 0, 100,000 and 1,000,000 distinct pallet locations, then starts the
whole gateway on each (no devices, a broker that is not there) in a fresh process and prints its
idle RSS (VmRSS from /proc/self/status once started), beside the baseline of the same run: the
gateway on the empty file. Three configurations:
- now: the defaults (`rules.move.cached_pallets` = 50,000, AGV tasks off);
- now, AGV on: also the AGV stock projection (`agv.stock_max_pallets` = 200,000);
- before: the whole table held in memory, as the previous version did (the cache made larger
  than the table: `cached_pallets` = 10,000,000).
It also times the look-up of a pallet the cache lacks (the runner does one per such scan).

Run with `make bench` or `python benchmarks/pallet_memory.py --sizes 0 100000 1000000`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.storage import Store

MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "now": ("now (cache 50,000, AGV off)", {}),
    "agv": ("now, AGV on (stock cap 200,000)", {"agv": {"enabled": True}}),
    "before": (
        "before: whole table in memory",
        {"rules": {"move": {"cached_pallets": 10_000_000}}},
    ),
}


def sscc(n: int) -> str:
    return f"37612345{n:010d}"


def build_db(path: Path, pallets: int) -> float:
    """A gateway file (its own schema) with `pallets` distinct pallet locations; seconds taken."""
    began = time.perf_counter()

    async def schema() -> None:
        store = await Store.open(path)
        await store.close()

    asyncio.run(schema())
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO pallet_location (sscc, location, tx_id, updated_at) VALUES (?, ?, ?, ?)",
        (
            (sscc(n), f"A-{n % 60:02d}-{n % 40:02d}-{n % 5}", f"{n:032x}", 1.7e9 + n)
            for n in range(pallets)
        ),
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - began


def vmrss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def child(path: Path, mode: str, pallets: int) -> dict[str, Any]:
    """Start the gateway on `path`, wait until it idles, measure, stop it."""
    raw: dict[str, Any] = {
        "gateway": {"site": "BENCH", "id": "gw1", "shutdown_grace_s": 0.1},
        "broker": {"host": "127.0.0.1", "port": free_port()},  # nothing listens there
        "storage": {"path": str(path)},
        "logging": {"level": "error"},
        **MODES[mode][1],
    }
    config = GatewayConfig.model_validate(raw)
    gateway = Gateway(config)
    stop = asyncio.Event()
    began = time.perf_counter()
    task = asyncio.create_task(gateway.run(stop))
    while gateway.runner is None:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    start_s = time.perf_counter() - began
    await asyncio.sleep(1.0)  # idle: the bridge retries the broker, the rules tick
    gc.collect()
    rss = vmrss_kb()
    engine = gateway.runner.engine
    result: dict[str, Any] = {
        "rss_kb": rss,
        "start_s": start_s,
        "cached": len(engine.moves),
        "stock": len(engine.agv.stock) if engine.agv is not None else 0,
    }
    if pallets and gateway.store is not None:  # a pallet the cache lacks: one indexed read
        picks = [sscc(random.randrange(pallets)) for _ in range(2000)]
        began = time.perf_counter()
        for code in picks:
            assert await gateway.store.pallet_location(code) is not None
        result["lookup_us"] = (time.perf_counter() - began) / len(picks) * 1e6
    stop.set()
    await task
    return result


def measure(path: Path, mode: str, pallets: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--mode", mode, "--pallets", str(pallets)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line.removeprefix("RESULT ")))


def main(sizes: list[int]) -> None:
    results: dict[tuple[str, int], dict[str, Any]] = {}
    lookup_us: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for pallets in sizes:
            path = Path(tmp) / f"pallets-{pallets}.db"
            built_s = build_db(path, pallets)
            size_mb = path.stat().st_size / 1e6
            print(f"file with {pallets:,} pallets: {size_mb:.0f} MB, built in {built_s:.1f} s")
            for mode in MODES:
                results[mode, pallets] = measure(path, mode, pallets)
                lookup_us = results[mode, pallets].get("lookup_us", lookup_us)
            path.unlink()
    base = results["now", sizes[0]]["rss_kb"] / 1024
    print()
    print(f"idle RSS of the gateway (MB); baseline: now, {sizes[0]:,} pallets = {base:.1f} MB")
    header = "".join(f"{f'{n:,} pallets':>26}" for n in sizes)
    print(f"{'':34}{header}")
    for mode, (label, _) in MODES.items():
        cells = []
        for pallets in sizes:
            rss = results[mode, pallets]["rss_kb"] / 1024
            cells.append(f"{f'{rss:.1f} ({rss - base:+.1f})':>26}")
        print(f"{label:34}{''.join(cells)}")
    print()
    print("held in memory (pallets in the move cache / in the AGV stock), start-up time:")
    for mode, (label, _) in MODES.items():
        cells = []
        for pallets in sizes:
            r = results[mode, pallets]
            held = f"{r['cached']:,} / {r['stock']:,}, {r['start_s']:.2f} s"
            cells.append(f"{held:>26}")
        print(f"{label:34}{''.join(cells)}")
    if lookup_us is not None:
        print()
        print(
            f"look-up of a pallet the cache lacks ({sizes[-1]:,} in the file): {lookup_us:.0f} µs"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=list(MODES), default="now", help=argparse.SUPPRESS)
    parser.add_argument("--pallets", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        with contextlib.redirect_stdout(sys.stderr):  # the gateway's logs stay out of the result
            result = asyncio.run(child(args.child, args.mode, args.pallets))
        print("RESULT " + json.dumps(result))
    else:
        main(args.sizes)
