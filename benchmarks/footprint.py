"""Benchmark: the gateway's start time and idle footprint, beside the floor of any such bridge.

The gateway is started as a service starts it, `gateway run --config site.toml`, in a fresh
process, with the shipped demo configuration (gateway/examples/demo.toml: a forklift scanner
on a serial port, the LLRP readers of doors D03 and D05, a Modbus scale, AGV tasks, EPCIS
output), every device simulated here, against a private Mosquitto. The figures: from the
process's spawn to its retained `online` on `gw/{site}/{gw}/status`; its resident memory
(VmRSS of the process and any children) after it has sat idle for a while with every device
connected; its CPU while idle. Then a forklift scans a pallet and a location, and its memory is
read again once the move is published (what the first scan and the first EPCIS event load).

The baseline, the floor: a bare Python process that imports only what a minimal MQTT + SQLite
bridge needs (asyncio, aiomqtt and so paho-mqtt, aiosqlite), opens its SQLite outbox, connects
and publishes its retained `online`. Gateway and floor run interleaved (A B A B ...), each in a
fresh process. The gateway's modules are byte-compiled first, as `pip install` leaves them.
Issue #13's targets: idle RSS at most 56 MiB, start to `online` under 1 s.

Run with `make bench` or `python benchmarks/footprint.py [--rounds N] [--idle-s S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from benchmarks.guard import Figure, keep
from benchmarks.measure import cpu_seconds, rss_mib
from simulators.gs1 import sscc, sscc_label
from simulators.llrp import LlrpReaderSimulator
from simulators.modbus_scale import ModbusScaleSimulator
from simulators.scanner import ScannerSimulator
from tests.mqtt_helpers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "gateway" / "examples" / "demo.toml"
BASE = "gw/DEMO/dock-1"
TARGET_RSS_MIB = 56.0
TARGET_START_S = 1.0

# The floor: what any MQTT + SQLite bridge on asyncio loads and does before it is online.
FLOOR = """
import asyncio, sys
import aiomqtt, aiosqlite

async def main(port, topic, db):
    async with aiosqlite.connect(db) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)"
        )
        await conn.commit()
        will = aiomqtt.Will(topic, b'{"state": "offline"}', qos=1, retain=True)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="floor", protocol=aiomqtt.ProtocolVersion.V5, will=will
        ) as client:
            await client.publish(topic, b'{"state": "online"}', qos=1, retain=True)
            await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""


def site_toml(workdir: Path, *, broker: int, readers: tuple[int, int, int], scale: int) -> Path:
    """The demo configuration, pointed at this run's broker, simulators and folder."""
    text = DEMO.read_text("utf-8")
    replacements = [
        (r"(?m)^port = 1883$", f"port = {broker}"),
        (r'(?m)^protocol = "3\.1\.1".*$', 'protocol = "5"'),
        (r'(?m)^path = "gateway\.db"$', f'path = "{workdir / "gateway.db"}"'),
        (r'(?m)^format = "console"$', 'format = "json"'),  # as a service logs
        (r'port = "scanner-fl-07"', f'port = "{workdir / "scanner-fl-07"}"'),
        (r"port = 5084 ", f"port = {readers[0]} "),
        (r"port = 5085 ", f"port = {readers[1]} "),
        (r"port = 5086 ", f"port = {readers[2]} "),
        (r"port = 502 ", f"port = {scale} "),
    ]
    for pattern, new in replacements:
        text, count = re.subn(pattern, new, text)
        if count != 1:
            raise RuntimeError(f"demo.toml changed: {pattern!r} matched {count} times")
    path = workdir / "site.toml"
    path.write_text(text, "utf-8")
    return path


@dataclass
class Devices:
    """The demo's devices, simulated: two empty portals, a zone reader, a scale, a forklift
    scanner."""

    d03: int
    d05: int
    zones: int
    scale: int
    scanner: ScannerSimulator
    ids: list[str]


@contextlib.asynccontextmanager
async def devices(workdir: Path) -> AsyncIterator[Devices]:
    from gateway.config import ModbusScaleDevice, load_config  # only the parent needs these

    demo = load_config(DEMO)
    registers = next(d for d in demo.devices if isinstance(d, ModbusScaleDevice))
    async with (
        LlrpReaderSimulator() as d03,
        LlrpReaderSimulator() as d05,
        LlrpReaderSimulator() as zones,
        ModbusScaleSimulator(weight=registers.weight, status=registers.status) as scale,
        ScannerSimulator(workdir / "scanner-fl-07") as scanner,
    ):
        yield Devices(
            d03.port, d05.port, zones.port, scale.port, scanner, [d.id for d in demo.devices]
        )


@dataclass
class Watch:
    """What a subscriber sees of one process: its retained `online`, devices, moves."""

    started: float
    online: asyncio.Event = field(default_factory=asyncio.Event)
    online_at: float = 0.0
    states: dict[str, str] = field(default_factory=dict)
    all_connected_at: float = 0.0
    moves: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, client: aiomqtt.Client, devices: list[str]) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if not isinstance(message.payload, bytes) or not message.payload:
                continue
            doc = json.loads(message.payload)
            if topic.endswith("/tx/move"):
                self.moves.set()
            elif "/device/" in topic:
                self.states[doc["device"]] = doc["state"]
                connected = all(self.states.get(d) == "connected" for d in devices)
                if connected and not self.all_connected_at:
                    self.all_connected_at = time.monotonic() - self.started
            elif message.retain and doc["state"] == "online" and not self.online.is_set():
                self.online_at = time.monotonic() - self.started
                self.online.set()


def child_command(kind: str, config: Path, port: int, db: Path) -> list[str]:
    if kind == "floor":
        return [sys.executable, "-c", FLOOR, str(port), "floor/status", str(db)]
    script = Path(sys.executable).parent / "gateway"  # the console script a service runs
    head = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    return [*head, "run", "--config", str(config)]


async def one_round(
    kind: str, broker: Mosquitto, config: Path, sims: Devices, args: argparse.Namespace, n: int
) -> dict[str, float]:
    """Start `kind` ("gateway" or "floor") in a fresh process and measure it."""
    topics = ["floor/status"] if kind == "floor" else [f"{BASE}/status"]
    if kind == "gateway":
        topics += [f"{BASE}/device/{d}/status" for d in sims.ids]
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"bench-{kind}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for topic in topics:  # nothing retained from an earlier round
            await client.publish(topic, b"", qos=1, retain=True)
        for topic in [*topics, f"{BASE}/tx/move"]:
            await client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        command = child_command(kind, config, broker.port, config.parent / f"floor-{n}.db")
        watch = Watch(time.monotonic())
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=config.parent,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        follow = asyncio.create_task(watch.follow(client, sims.ids if kind == "gateway" else []))
        try:
            async with asyncio.timeout(30):
                await watch.online.wait()
            await asyncio.sleep(args.idle_s)
            rss = rss_mib(process.pid)
            before = cpu_seconds(process.pid, children=True)
            await asyncio.sleep(args.cpu_s)
            idle_cpu = 100 * (cpu_seconds(process.pid, children=True) - before) / args.cpu_s
            rss = max(rss, rss_mib(process.pid))
            result = {"online_s": watch.online_at, "rss_mib": rss, "idle_cpu_pct": idle_cpu}
            if kind == "gateway":
                if not watch.all_connected_at:
                    raise RuntimeError(f"devices not all connected while idle: {watch.states}")  # noqa: TRY301
                result["devices_s"] = watch.all_connected_at
                # The first forklift move: a pallet label, then a location label.
                await sims.scanner.type(sscc_label(sscc("0614141", 100 + n)), aim="]C1")
                await sims.scanner.type("A-01-01")
                async with asyncio.timeout(10):
                    await watch.moves.wait()
                await asyncio.sleep(2.0)
                result["rss_after_move_mib"] = rss_mib(process.pid)
        except BaseException:
            if process.returncode is None:
                process.kill()
            assert process.stderr is not None
            sys.stderr.write((await process.stderr.read()).decode(errors="replace")[-3000:])
            raise
        finally:
            follow.cancel()
        process.terminate()
        assert process.stderr is not None
        await process.stderr.read()
        await process.wait()
    return result


def row(label: str, r: dict[str, float]) -> str:
    devices = f"{r['devices_s'] * 1000:>9.0f}" if "devices_s" in r else f"{'-':>9}"
    after = f"{r['rss_after_move_mib']:>12.1f}" if "rss_after_move_mib" in r else f"{'-':>12}"
    return (
        f"{label:18}{r['online_s'] * 1000:>9.0f}{devices}{r['rss_mib']:>11.1f}"
        f"{r['idle_cpu_pct']:>10.2f}{after}"
    )


async def measure(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    results: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        broker = Mosquitto(workdir / "broker", save_every_change=False)
        broker.start()
        try:
            async with devices(workdir) as sims:
                config = site_toml(
                    workdir,
                    broker=broker.port,
                    readers=(sims.d03, sims.d05, sims.zones),
                    scale=sims.scale,
                )
                for n in range(args.rounds):
                    for kind in ("gateway", "floor"):
                        result = await one_round(kind, broker, config, sims, args, n)
                        results.append((kind, result))
                        print(row(f"round {n + 1} {kind}", result), flush=True)
        finally:
            broker.stop()
    return results


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--rounds", type=int, default=3, help="gateway and floor runs, interleaved")
    cli.add_argument("--idle-s", type=float, default=5.0, help="idle time before RSS is read")
    cli.add_argument("--cpu-s", type=float, default=5.0, help="window of the idle CPU figure")
    cli.add_argument("--json", type=Path, help="also write the results there")
    args = cli.parse_args()
    # Bytecode as an installed package has it (pip compiles at install; this checkout may
    # never have written any, under PYTHONDONTWRITEBYTECODE).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "gateway")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    demo = tomllib.loads(DEMO.read_text("utf-8"))
    kinds = ", ".join(sorted({d["kind"] for d in demo["devices"]}))
    print(f"footprint: the gateway (demo configuration: {kinds}; AGV, EPCIS), devices simulated,")
    print("vs the floor: a bare MQTT + SQLite bridge on asyncio (asyncio, aiomqtt, aiosqlite)")
    print(
        f"RSS after {args.idle_s:g} s idle with every device connected, CPU over {args.cpu_s:g} s"
    )
    print(
        f"{'':18}{'online':>9}{'devices':>9}{'RSS idle':>11}{'idle CPU':>10}{'RSS after':>12}\n"
        f"{'':18}{'(ms)':>9}{'(ms)':>9}{'(MiB)':>11}{'(%)':>10}{'1st move':>12}"
    )
    results = asyncio.run(measure(args))
    keys = ("online_s", "devices_s", "rss_mib", "idle_cpu_pct", "rss_after_move_mib")
    medians = {
        kind: {
            key: statistics.median(r[key] for k, r in results if k == kind and key in r)
            for key in keys
            if any(k == kind and key in r for k, r in results)
        }
        for kind in ("gateway", "floor")
    }
    for kind, m in medians.items():
        print(row(f"median {kind}", m))
    gateway, floor = medians["gateway"], medians["floor"]
    print(
        f"gateway / floor: start {gateway['online_s'] / floor['online_s']:.2f}x, "
        f"idle RSS {gateway['rss_mib'] / floor['rss_mib']:.2f}x "
        f"(+{gateway['rss_mib'] - floor['rss_mib']:.1f} MiB); load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    rss_ok = gateway["rss_mib"] <= TARGET_RSS_MIB
    start_ok = gateway["online_s"] < TARGET_START_S
    print(
        f"idle RSS {gateway['rss_mib']:.1f} MiB, target <= {TARGET_RSS_MIB:g} MiB: "
        f"{'PASS' if rss_ok else 'BELOW TARGET'}"
    )
    print(
        f"start to online {gateway['online_s'] * 1000:.0f} ms, target < "
        f"{TARGET_START_S * 1000:.0f} ms: {'PASS' if start_ok else 'BELOW TARGET'}"
    )
    keep(
        "footprint",
        [
            Figure(
                "idle RSS, demo configuration, every device connected",
                gateway["rss_mib"],
                "MiB",
                floor["rss_mib"],
                "bare MQTT + SQLite bridge",
                floor["rss_mib"] / gateway["rss_mib"],
                f"<= {TARGET_RSS_MIB:g} MiB",
                rss_ok,
            ),
            Figure(
                "RSS after the first forklift move (GS1 and JSON Schema loaded)",
                gateway["rss_after_move_mib"],
                "MiB",
                floor["rss_mib"],
                "bare MQTT + SQLite bridge",
                floor["rss_mib"] / gateway["rss_after_move_mib"],
                "(for the record)",
                True,
            ),
            Figure(
                "start to retained online",
                gateway["online_s"] * 1000,
                "ms",
                floor["online_s"] * 1000,
                "bare MQTT + SQLite bridge",
                floor["online_s"] / gateway["online_s"],
                f"< {TARGET_START_S * 1000:.0f} ms",
                start_ok,
            ),
        ],
    )
    if args.json:
        report: dict[str, Any] = {
            "rounds": [{"kind": k, **r} for k, r in results],
            "medians": medians,
            "loadavg": os.getloadavg(),
            "targets": {"rss_mib": TARGET_RSS_MIB, "online_s": TARGET_START_S},
            "pass": {"rss": rss_ok, "start": start_ok},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
