"""Benchmark: RFID dock-door portal throughput: the portal logic alone, and the LLRP path beside
sllurp's own client.

Prints, in one run:
1. portal logic on one core: tag reads/s through `PortalTracker.on_reads` (batches of up to 100
   reads, as sllurp reports arrive) and `on_tick` every 0.2 s of read time, over a pre-generated
   day at a door (pallets of 5-40 tags crossing both ways, antenna bleed on 4 antennas, stray
   tags); the passes found are checked against the day's ground truth;
2. the LLRP path beside sllurp alone, at 10 and 100 tags per RO_ACCESS_REPORT. The load
   generator is `simulators.llrp.replay.ReportReplayer` in a process of its own: the reports
   (tag reports sampled from a day at a door by the simulator's radio model) are encoded once,
   with the fields the client's ROSpec asks for (EPC, AntennaID, PeakRSSI, First/LastSeenUTC,
   TagSeenCount for the gateway's config), and written in large chunks as fast as the client
   reads them, each chunk stamped with current times and message ids by one big-integer
   addition. Its CPU share, and the share of time it waited for the client to read, are
   printed per run: a run whose generator was over 85% busy is INCONCLUSIVE (the generator may
   have been the limit) and left out of the median.
   (a) sllurp alone: a bare `LLRPReaderClient` (the gateway's reader config) whose tag-report
       callback only counts TagReportData;
   (b) the gateway: `LlrpReader` (its fast report decoder on sllurp's thread, the reader clock,
       `call_soon_threadsafe`) -> the bounded `Inbox` (1024 events; a report that finds it full
       is dropped and counted, by design) -> the app's `RulesRunner` and `RulesEngine` with the
       door's `PortalTracker` (batches of up to 100 events, ticks); the runner's decisions go
       to a recorder that drops them (no storage, no MQTT). Counted: TagReportData the rules
       took from the inbox; also those decoded (offered to the inbox, dropped or not).
   Each run is a fresh process (this script with --child) with a fresh generator process;
   rounds are interleaved (a) (b) (a) (b) (a) (b) per report size. Printed per round: both
   rates, the ratio gateway/sllurp (reads reaching the rules, and reads decoded), CPU shares,
   load average; per report size, the median ratio against the target (>= 1.0).

Run with `python benchmarks/rfid_portal.py` (about 2.5 min), `--quick` (about 1.5 min) or
`--only llrp --rounds 1 --seconds 2` while developing; `--json FILE` keeps the LLRP results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.guard import Figure, keep
from gateway.config import LlrpReaderDevice, RulesConfig, StorageConfig
from gateway.domain import Event, PortalPass, TagRead, TagReadBatch
from gateway.drivers.llrp import KIND, LlrpReader, ReaderClock
from gateway.health import DeviceState, StatusBoard
from gateway.inbox import Inbox
from gateway.logs import configure_logging
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.portal import PortalTracker
from gateway.runner import TICK_S, RulesRunner
from gateway.wiring import portal_settings
from simulators.llrp.scenario import PortalRadio, day_scenario

# The simulator splits reports at 100 TagReportData, as real readers do: sllurp's batches.
BATCH = 100
# Gateway times are seconds since the epoch; the generated day starts here.
EPOCH = 1_750_000_000.0
# A reader's settings in the LLRP runs (the gateway's defaults otherwise).
DEVICE_ID = "bench-reader"
# A generator that outlives its client process (killed hard) stops by itself.
CHILD_LIFETIME_S = 180.0
# Above this CPU share the generator may have been the limit: the run is inconclusive.
GENERATOR_LIMIT = 0.85
# Below this CPU share a client waited for data or for a CPU: noted (its rate may be low).
CLIENT_HELD_BACK = 0.9
# The LLRP path must keep at least sllurp's own rate.
TARGET = 1.0


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def device(port: int) -> LlrpReaderDevice:
    return LlrpReaderDevice.model_validate(
        {
            "id": DEVICE_ID,
            "kind": "llrp_reader",
            "door": "D01",
            "transport": {"type": "tcp", "host": "127.0.0.1", "port": port},
            "antennas": {"outside": [1, 2], "inside": [3, 4]},
            "keepalive_s": 2.0,
            "connect_timeout_s": 10,
        }
    )


def truth_key(direction: str, epcs: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return direction, tuple(sorted(epcs))


# -- 1. the portal logic alone -----------------------------------------------------------------


@dataclass
class Stream:
    """A day at a door as the tracker gets it: batches, and the tick due after each batch."""

    schedule: list[tuple[tuple[TagRead, ...], float | None]]
    reads: int
    seconds: float
    end: float
    truth: list[tuple[str, tuple[str, ...]]]
    strays: int


def generate_stream(pallets: int, strays: int, seed: int, reads_per_s: float) -> Stream:
    """Sample a day with `PortalRadio`, as a reader capped at `reads_per_s` would report it."""
    scenario = day_scenario(pallets, seed=seed, strays=strays, cases=(5, 40))
    radio = PortalRadio(scenario)
    antennas = {*scenario.outside_antennas, *scenario.inside_antennas}
    step = 0.05  # a report every 50 ms, as the simulator sends them
    # Stray tags keep being read after the last pallet: long enough for any of them to turn
    # static (a stray that came back after a quiet spell is not static yet; ending the stream
    # then would make it leave with the last pallet, as if it had crossed).
    end_s = scenario.end_s + portal_settings(device(5084)).static_after_s + 5.0
    hexes: dict[bytes, str] = {}
    schedule: list[tuple[tuple[TagRead, ...], float | None]] = []
    next_tick = EPOCH + TICK_S
    total = 0
    k = 0
    while (t0 := k * step) < end_s:
        k += 1
        reads = radio.inventory(t0, t0 + step, antennas=antennas, max_reads=int(reads_per_s * step))
        compact: list[TagRead] = []
        for epc, antenna, rssi, t in reads:
            name = hexes.get(epc)
            if name is None:
                name = hexes[epc] = epc.hex().upper()
            compact.append((name, antenna, rssi, EPOCH + t, 1))
        total += len(compact)
        batches = [tuple(compact[i : i + BATCH]) for i in range(0, len(compact), BATCH)] or [()]
        schedule.extend((batch, None) for batch in batches[:-1])
        # Time passes with or without reads (quiet spells): a tick when one is due.
        tick = None
        while EPOCH + t0 + step >= next_tick:
            tick = next_tick
            next_tick += TICK_S
        if batches[-1] or tick is not None:
            schedule.append((batches[-1], tick))
    truth = sorted(
        truth_key(c.direction, [e.hex().upper() for e in c.epcs]) for c in scenario.crossings
    )
    return Stream(schedule, total, end_s, EPOCH + end_s, truth, len(scenario.strays))


def run_tracker(stream: Stream, settings: Any) -> tuple[float, list[PortalPass]]:
    tracker = PortalTracker(settings)
    on_reads, on_tick = tracker.on_reads, tracker.on_tick
    passes: list[PortalPass] = []
    began = time.perf_counter()
    for batch, tick in stream.schedule:
        found = on_reads(batch)
        if tick is not None:
            found += on_tick(tick)
        if found:
            passes += found
    passes += on_tick(stream.end + 60.0)  # everything departs
    elapsed = time.perf_counter() - began
    assert tracker.reads == stream.reads
    return elapsed, passes


def bench_portal_logic(args: argparse.Namespace) -> Figure:
    print("1. portal logic (PortalTracker, one core)")
    began = time.perf_counter()
    stream = generate_stream(args.pallets, args.logic_strays, args.seed, args.logic_reads_per_s)
    print(
        f"   stream: {args.pallets} pallets of 5-40 tags + {stream.strays} stray tags, "
        f"4 antennas, {stream.seconds:.0f} s of reads, {stream.reads:,} reads in "
        f"{len(stream.schedule):,} batches (generated in {time.perf_counter() - began:.1f} s)"
    )
    settings = portal_settings(device(5084))
    runs = []
    passes: list[PortalPass] = []
    for _ in range(args.repeat):
        elapsed, passes = run_tracker(stream, settings)
        runs.append(elapsed)
    best = min(runs)
    rate = stream.reads / best
    verdict = "OK" if rate >= 100_000 else "BELOW TARGET"
    print(
        f"   throughput: {rate:,.0f} reads/s (best of {len(runs)}; median "
        f"{stream.reads / statistics.median(runs):,.0f})   target >= 100,000: {verdict}"
    )
    got = sorted(truth_key(p.direction.value, p.epcs) for p in passes)
    correct = sum(1 for key in got if key in set(stream.truth))
    extra = len(got) - correct
    print(
        f"   passes: {correct}/{len(stream.truth)} correct"
        + (f" ({extra} wrong or extra)" if extra else "")
        + ("" if got == stream.truth else "  MISMATCH with the ground truth")
    )
    return Figure(
        "portal logic alone, one core, reads/s",
        rate,
        "reads/s",
        None,
        "no baseline: a target",
        None,
        ">= 100,000 reads/s, every pass right",
        rate >= 100_000 and got == stream.truth,
    )


# -- 2. the LLRP path beside sllurp alone ------------------------------------------------------
#
# Each measurement runs in a fresh process (this script with --child), which starts the load
# generator in a process of its own (its own GIL), measures, prints one JSON line and exits.


def serve_replayer(
    conn: multiprocessing.connection.Connection,
    tags_per_report: int,
    pool: int,
    seed: int,
    chunk_bytes: int,
) -> None:
    """Generator process: replay `pool` tag reports until the parent says stop (or goes away).

    Protocol on `conn`: the child sends its port; each "mark" from the parent is answered with
    (CPU seconds, tags, reports, bytes sent, seconds spent waiting for the client to read).
    """
    from simulators.llrp.replay import ReportReplayer, sample_tags

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        tags = sample_tags(pool, day_scenario(60, seed=seed, strays=12))
        async with ReportReplayer(
            tags, tags_per_report=tags_per_report, chunk_bytes=chunk_bytes
        ) as replayer:

            def serve_parent() -> None:
                with contextlib.suppress(EOFError, OSError):
                    while conn.recv() == "mark":
                        s = replayer.stats
                        conn.send(
                            (
                                time.process_time(),
                                s.tags_sent,
                                s.frames_sent,
                                s.bytes_sent,
                                s.blocked_s,
                            )
                        )
                loop.call_soon_threadsafe(stop.set)

            conn.send(replayer.port)
            threading.Thread(target=serve_parent, daemon=True).start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHILD_LIFETIME_S)

    asyncio.run(serve())


@dataclass(frozen=True)
class Mark:
    """A snapshot of the generator, taken by the client process."""

    at: float  # this process's perf_counter
    cpu_s: float  # the generator's CPU seconds
    tags: int
    frames: int
    sent_bytes: int
    blocked_s: float


class GeneratorProcess:
    """The replayer in a child process (its own GIL), killed on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, self._child_conn = ctx.Pipe()
        self._process = ctx.Process(
            target=serve_replayer,
            args=(
                self._child_conn,
                args.tags_per_report,
                args.pool,
                args.seed,
                args.chunk_kib * 1024,
            ),
            name="llrp-replayer",
            daemon=True,
        )
        self.port = 0
        self._waiting_since: float | None = None

    def __enter__(self) -> GeneratorProcess:
        try:
            self._process.start()
            self._child_conn.close()
            self.port = self._receive(60.0)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def mark(self) -> Mark:
        self._conn.send("mark")
        cpu, tags, frames, sent, blocked = self._receive(5.0)
        return Mark(time.perf_counter(), cpu, tags, frames, sent, blocked)

    def streaming(self) -> bool:
        """Whether reports flow; raises if they do not within 10 s of the first call."""
        if self.mark().tags:
            return True
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        elif time.monotonic() - self._waiting_since > 10.0:
            raise RuntimeError("the generator has not sent a report in 10 s")
        return False

    def _receive(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the generator did not answer within {timeout:g} s")
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError(
                f"the generator process exited (code {self._process.exitcode})"
            ) from None

    def _stop(self) -> None:
        try:
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self._process.join(3.0)
        finally:
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5.0)
            self._conn.close()


def window(start: Mark, end: Mark, cpu_s: float) -> dict[str, Any]:
    """What the generator did over a measurement, and this process's CPU share."""
    wall = end.at - start.at
    frames = end.frames - start.frames
    return {
        "seconds": wall,
        "client_busy": cpu_s / wall,
        "generator_busy": (end.cpu_s - start.cpu_s) / wall,
        "generator_waiting": (end.blocked_s - start.blocked_s) / wall,
        "sent_per_s": (end.tags - start.tags) / wall,
        "report_bytes": (end.sent_bytes - start.sent_bytes) / frames if frames else 0.0,
        "tag_bytes": (end.sent_bytes - start.sent_bytes) / max(1, end.tags - start.tags),
    }


def measure_sllurp(args: argparse.Namespace) -> dict[str, Any]:
    """(a) a bare sllurp client; its tag-report callback counts the TagReportData it gets."""
    from sllurp.llrp import LLRPReaderClient, LLRPReaderState

    with GeneratorProcess(args) as gen:
        config = device(gen.port)
        reader = LlrpReader(
            config, sink=Inbox(maxsize=1), health=StatusBoard(now).add(DEVICE_ID, KIND), clock=now
        )
        client = LLRPReaderClient("127.0.0.1", gen.port, reader.sllurp_config())
        count = 0
        inventorying = threading.Event()

        def on_tags(_: Any, tags: Sequence[dict[str, Any]]) -> None:
            nonlocal count
            count += len(tags)

        client.add_tag_report_callback(on_tags)
        client.add_state_callback(LLRPReaderState.STATE_INVENTORYING, lambda *_: inventorying.set())
        try:
            client.connect()
            if not inventorying.wait(config.connect_timeout_s):
                raise RuntimeError("sllurp did not reach STATE_INVENTORYING")
            while not gen.streaming():
                time.sleep(0.01)
            time.sleep(args.warmup)
            start, before, cpu = gen.mark(), count, time.process_time()
            time.sleep(args.seconds)
            end, after, cpu = gen.mark(), count, time.process_time() - cpu
            if not client.is_alive():
                raise RuntimeError("sllurp's thread died during the measurement")
        finally:
            close_client(client)
    result = window(start, end, cpu)
    result["tags_per_s"] = (after - before) / result["seconds"]
    return result


def close_client(client: Any) -> None:
    sllurp_log = logging.getLogger("sllurp")
    level, sllurp_log.level = sllurp_log.level, logging.CRITICAL  # closing logs noise
    client.hard_disconnect()  # the socket is full of reports: a polite STOP_ROSPEC would wait
    client.join(2.0)
    sllurp_log.setLevel(level)


class CountingInbox(Inbox):
    """The rules' inbox, counting TagReportData offered by the driver and taken by the rules."""

    offered = 0
    taken = 0

    def offer(self, item: Event) -> bool:
        if isinstance(item, TagReadBatch):
            self.offered += len(item.reads)
        return super().offer(item)

    def _get(self) -> Event:
        item = super()._get()
        if isinstance(item, TagReadBatch):
            self.taken += len(item.reads)
        return item


class DroppingRecorder:
    """Where the runner hands each batch's decisions: dropped (no storage, no MQTT)."""

    def __init__(self) -> None:
        self.decisions = 0

    async def record(self, decisions: Sequence[Any], _counts: object = None) -> None:
        self.decisions += len(decisions)


async def run_gateway(args: argparse.Namespace, gen: GeneratorProcess) -> dict[str, Any]:
    config = device(gen.port)
    inbox = CountingInbox(maxsize=RulesConfig().queue_size)
    health = StatusBoard(now).add(config.id, KIND)
    reader = LlrpReader(config, sink=inbox, health=health, clock=now, reader_clock=ReaderClock())
    engine = RulesEngine(
        ForkliftMoves(MoveSettings()), {config.id: PortalTracker(portal_settings(config))}
    )

    async def nowhere(_: str) -> str | None:
        return None

    runner = RulesRunner(
        engine,
        inbox,
        DroppingRecorder(),  # type: ignore[arg-type]
        clock=now,
        batch_max=StorageConfig.model_fields["commit_batch"].default,
        lookup=nowhere,
    )
    driver = asyncio.create_task(reader.run(), name="driver")
    rules = asyncio.create_task(runner.run(), name="rules")
    try:
        deadline = time.monotonic() + config.connect_timeout_s + 5
        while health.state is not DeviceState.CONNECTED or not gen.streaming():
            if driver.done():
                driver.result()  # raises the driver's error
            if time.monotonic() > deadline:
                raise RuntimeError("the driver did not reach inventorying")
            await asyncio.sleep(0.005)
        await asyncio.sleep(args.warmup)
        counts = health.counts
        start, cpu = gen.mark(), time.process_time()
        offered, taken, dropped = inbox.offered, inbox.taken, counts.get("dropped", 0)
        await asyncio.sleep(args.seconds)
        end, cpu = gen.mark(), time.process_time() - cpu
        offered, taken = inbox.offered - offered, inbox.taken - taken
        dropped = counts.get("dropped", 0) - dropped
        for task in (driver, rules):
            if task.done():
                task.result()
    finally:
        # Closing makes sllurp log a "reader configuration error": not news here.
        logging.getLogger("sllurp").setLevel(logging.CRITICAL)
        for task in (driver, rules):
            task.cancel()
        await asyncio.wait({driver, rules}, timeout=10)
    result = window(start, end, cpu)
    result["tags_per_s"] = taken / result["seconds"]
    result["decoded_per_s"] = offered / result["seconds"]
    result["dropped"] = dropped / offered if offered else 0.0
    return result


def measure_gateway(args: argparse.Namespace) -> dict[str, Any]:
    """(b) the gateway's LLRP path: driver -> inbox -> rules runner and engine (portal)."""
    with GeneratorProcess(args) as gen:
        return asyncio.run(run_gateway(args, gen))


def child(args: argparse.Namespace) -> int:
    """One measurement in this (fresh) process: one JSON line on stdout."""
    signal.alarm(int(args.warmup + args.seconds + 90))
    configure_logging("console", "error")
    logging.getLogger("sllurp").setLevel(logging.ERROR)
    result = measure_sllurp(args) if args.child == "sllurp" else measure_gateway(args)
    result["load"] = os.getloadavg()[0]
    print(json.dumps(result), flush=True)
    return 0


def run_child(args: argparse.Namespace, which: str, tags_per_report: int) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        which,
        "--tags-per-report",
        str(tags_per_report),
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--pool",
        str(args.pool),
        "--chunk-kib",
        str(args.chunk_kib),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=args.warmup + args.seconds + 120
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the {which} run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    result["limited"] = result["generator_busy"] > GENERATOR_LIMIT
    return result


def describe_run(result: dict[str, Any]) -> str:
    return (
        f"client {result['client_busy']:.0%} busy; generator {result['generator_busy']:.0%} busy, "
        f"{result['generator_waiting']:.0%} waiting for the client; load {result['load']:.2f}"
        + ("  INCONCLUSIVE (generator saturated)" if result["limited"] else "")
        + (
            "  (client under 90% of a CPU: held back by other load?)"
            if result["client_busy"] < CLIENT_HELD_BACK
            else ""
        )
    )


def verdict(ratio: float | None) -> str:
    if ratio is None:
        return "INCONCLUSIVE"
    return "PASS" if ratio >= TARGET else "BELOW TARGET"


def bench_llrp_path(args: argparse.Namespace) -> dict[str, Any]:
    import sllurp

    print(
        f"2. LLRP path: the gateway's driver and rules beside sllurp {sllurp.__version__}'s own "
        "client, on a load generator that replays pre-encoded reports"
    )
    print(
        f"   generator: simulators.llrp.replay in its own process; {args.pool:,} tag reports "
        "sampled from a day at a door (60 pallets of 5-40 cases, 12 strays; EPC-96 and "
        "128-bit EPCs, 4 antennas, peak RSSI, seen count), encoded once with the fields the "
        f"ROSpec asks for, written in ~{args.chunk_kib} KiB chunks as fast as the client reads, "
        "each chunk stamped with current first/last-seen times and message ids"
    )
    print(
        "   (a) sllurp alone: LLRPReaderClient with the gateway's reader config; its tag-report "
        "callback counts TagReportData"
    )
    print(
        "   (b) gateway: LlrpReader (its decoder on sllurp's thread, ReaderClock) -> Inbox "
        f"({RulesConfig().queue_size} events; a report that finds it full is dropped, by design) "
        "-> RulesRunner + RulesEngine with the door's PortalTracker; decisions are dropped "
        "(no storage, no MQTT). Counted: TagReportData taken by the rules (and decoded = taken + "
        "dropped + queued)"
    )
    print(
        f"   tags = TagReportData per second; every run in a fresh client process with a fresh "
        f"generator process, {args.warmup:g} s warm-up then {args.seconds:g} s measured; rounds "
        f"interleaved (a) (b); a run whose generator was over {GENERATOR_LIMIT:.0%} busy is "
        "INCONCLUSIVE"
    )
    summary: dict[str, Any] = {"sizes": {}}
    for tags_per_report in args.sizes:
        print(f"   -- {tags_per_report} tags per report --")
        ratios: list[float] = []
        decoded_ratios: list[float] = []
        drops: list[float] = []
        rounds = []
        for round_ in range(1, args.rounds + 1):
            alone = run_child(args, "sllurp", tags_per_report)
            print(
                f"   round {round_} (a) sllurp  {alone['tags_per_s']:>9,.0f} tags/s"
                f"{'':41}  {describe_run(alone)}"
            )
            gateway = run_child(args, "gateway", tags_per_report)
            print(
                f"   round {round_} (b) gateway {gateway['tags_per_s']:>9,.0f} tags/s to the rules "
                f"({gateway['decoded_per_s']:,.0f} decoded, {gateway['dropped']:.2%} dropped)  "
                f"{describe_run(gateway)}"
            )
            ratio = gateway["tags_per_s"] / alone["tags_per_s"]
            decoded = gateway["decoded_per_s"] / alone["tags_per_s"]
            conclusive = not (alone["limited"] or gateway["limited"])
            print(
                f"   round {round_} ratio gateway/sllurp: {ratio:.2f} to the rules, {decoded:.2f} "
                f"decoded" + ("" if conclusive else "  (INCONCLUSIVE: not counted)")
            )
            if conclusive:
                ratios.append(ratio)
                decoded_ratios.append(decoded)
            drops.append(gateway["dropped"])
            rounds.append({"sllurp": alone, "gateway": gateway, "ratio": ratio, "decoded": decoded})
        median = statistics.median(ratios) if ratios else None
        median_decoded = statistics.median(decoded_ratios) if decoded_ratios else None
        first = rounds[0]["sllurp"]
        print(
            f"   {tags_per_report} tags per report ({first['report_bytes']:,.0f} bytes a report, "
            f"{first['tag_bytes']:.0f} a tag), median of {len(ratios)} conclusive rounds of "
            f"{args.rounds}:"
        )
        print(
            "     gateway/sllurp "
            + (f"{median:.2f}" if median is not None else "n/a")
            + f" reaching the rules: {verdict(median)} (target >= {TARGET:.1f}); "
            + (f"{median_decoded:.2f}" if median_decoded is not None else "n/a")
            + f" decoded: {verdict(median_decoded)}; the gateway dropped "
            f"{statistics.median(drops):.2%} of its decoded reads (inbox full, by design)"
        )
        summary["sizes"][str(tags_per_report)] = {
            "rounds": rounds,
            "median_ratio": median,
            "median_decoded_ratio": median_decoded,
            "verdict": verdict(median),
            "verdict_decoded": verdict(median_decoded),
        }
    return summary


# -- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs: 2 s, a smaller day")
    parser.add_argument("--pallets", type=int, default=150, help="pallets in the logic's day")
    parser.add_argument("--logic-strays", type=int, default=12, help="stray tags in that day")
    parser.add_argument(
        "--logic-reads-per-s", type=float, default=20_000, help="read cap of that day's reader"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the logic benchmark")
    parser.add_argument("--seconds", type=float, default=5.0, help="each LLRP measurement (s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="before each measurement (s)")
    parser.add_argument("--rounds", type=int, default=3, help="(a) (b) rounds per report size")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10, 100], help="tags per report to measure"
    )
    parser.add_argument("--pool", type=int, default=40_000, help="tag reports replayed")
    parser.add_argument("--chunk-kib", type=int, default=256, help="generator write size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the LLRP results here")
    parser.add_argument(
        "--only", choices=("logic", "llrp"), help="run only the logic or only the LLRP part"
    )
    parser.add_argument("--child", choices=("sllurp", "gateway"), help=argparse.SUPPRESS)
    parser.add_argument("--tags-per-report", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.seconds = min(args.seconds, 2.0)
        args.warmup = min(args.warmup, 0.5)
        args.pallets = min(args.pallets, 40)
        args.repeat = 1
    # A last resort against a hang: the children are killed on the way out.
    budget_s = 180 + 2 * len(args.sizes) * args.rounds * (args.warmup + args.seconds + 15)

    def overtime(*_: object) -> None:
        raise TimeoutError(f"the benchmark ran over {budget_s:.0f} s")

    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(int(budget_s))
    configure_logging("console", "error")

    print(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}, {platform.processor() or '?'}), "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.system()} {platform.release()}, load average {os.getloadavg()[0]:.2f}, "
        f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    figures: list[Figure] = []
    if args.only != "llrp":
        figures.append(bench_portal_logic(args))
    if args.only == "logic":
        return 0
    summary = bench_llrp_path(args)
    for size, result in summary["sizes"].items():
        rates = {
            side: statistics.median(r[side]["tags_per_s"] for r in result["rounds"])
            for side in ("gateway", "sllurp")
        }
        ratio = result["median_ratio"]
        figures.append(
            Figure(
                f"LLRP path, {size} tags a report: tags reaching the rules per second",
                rates["gateway"],
                "tags/s",
                rates["sllurp"],
                "sllurp's own client alone",
                ratio,
                ">= 1.0 of sllurp, generator not the limit",
                ratio is not None and ratio >= TARGET,
            )
        )
    if not args.quick and args.only is None:
        keep("rfid_portal", figures)
    if args.json:
        summary["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        summary["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
