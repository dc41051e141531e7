"""Benchmark: the RFID zone rules' throughput on one core, beside the portal logic's.

A storage area read by one reader: 8 zones of 2 antennas, 2,000 tags (400 pallets of 5 cases),
each heard by its own zone's antennas and, with bleed, by a neighbour's; 2% of the pallets are
moved to another zone halfway. Reads come in batches of 100 (as reader reports do), stamped
4,000 reads a second of read time, and `on_tick` runs every 0.2 s of read time. The figure:
tag reads/s through `ZoneTracker.on_reads` and `on_tick` (pre-generated reads, one core, the
best of the rounds); the baseline, from the same run: the portal logic (`PortalTracker`) on the
same reads, with the antennas split outside/inside. The moves found are checked against the
ones made (each once, with the right zones; none for the others).

Then the same reads through the rules engine with a cycle count of all eight zones open
(`RulesEngine.on_event`: the zone rules, and the count noting each arrival and move), closed
against the recorded stock at the end: its found and moved sets are checked against the ones
made. Issue #16's target: the zone and count rules keep at least 100,000 reads/s.

Run with `make bench` or `python benchmarks/zone_rules.py [--reads N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.guard import Figure, keep
from gateway.domain import (
    CountCommand,
    CountTransaction,
    TagRead,
    TagReadBatch,
    ZoneChange,
    ZoneEvent,
    decode_epc,
    epc_key,
)
from gateway.rules.counts import CycleCounts
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.portal import PortalSettings, PortalTracker
from gateway.rules.zones import ZoneSettings, ZoneTracker

ZONES = 8
TAGS = 2_000
CASES = 5
READS_PER_S = 4_000.0
TARGET = 100_000.0
ZONE_ANTENNAS = {f"L-{n:02d}": frozenset({2 * n + 1, 2 * n + 2}) for n in range(ZONES)}


def generate(
    reads: int, seed: int
) -> tuple[list[list[TagRead]], dict[str, tuple[str, str]], dict[str, str]]:
    """Batches of reads, the moved tags' (from, to) zones, and where each tag was first."""
    rng = random.Random(seed)
    epcs = [f"30{n:022X}" for n in range(TAGS)]
    home = {e: rng.randrange(ZONES) for e in epcs[::CASES]}
    zone_of = {e: home[epcs[(i // CASES) * CASES]] for i, e in enumerate(epcs)}
    moved_pallets = rng.sample(sorted(home), len(home) // 50)
    moves: dict[str, tuple[str, str]] = {}
    later = dict(zone_of)
    for pallet in moved_pallets:
        start = epcs.index(pallet)
        target = (home[pallet] + 1 + rng.randrange(ZONES - 1)) % ZONES
        for e in epcs[start : start + CASES]:
            moves[e] = (f"L-{zone_of[e]:02d}", f"L-{target:02d}")
            later[e] = target
    flat: list[TagRead] = []
    for i in range(reads):
        t = i / READS_PER_S
        epc = epcs[rng.randrange(TAGS)]
        zone = (later if i > reads // 2 else zone_of)[epc]
        bleed = rng.random() < 0.3
        antenna_zone = (zone + 1) % ZONES if bleed else zone
        antenna = 2 * antenna_zone + 1 + rng.randrange(2)
        rssi = (-72 if bleed else -55) + rng.randrange(-3, 4)
        flat.append((epc, antenna, rssi, t, 1))
    first = {e: f"L-{z:02d}" for e, z in zone_of.items()}
    return [flat[i : i + 100] for i in range(0, len(flat), 100)], moves, first


def count_rate(
    batches: Sequence[list[TagRead]], moves: dict[str, tuple[str, str]], first: dict[str, str]
) -> tuple[float, bool]:
    """Reads/s through the engine with a count of every zone open; whether the count, closed
    against `first` (the recorded stock), found the moves made and the rest where recorded."""
    engine = RulesEngine(
        ForkliftMoves(MoveSettings()),
        {},
        zones={"r1": ZoneTracker(ZoneSettings("r1", ZONE_ANTENNAS))},
        counts=CycleCounts(),
    )
    start = dt.datetime.fromtimestamp(0, dt.UTC)
    engine.on_event(CountCommand("bench", True, start, locations=tuple(ZONE_ANTENNAS)))

    def feed(batch: list[TagRead]) -> list[object]:
        at = dt.datetime.fromtimestamp(batch[-1][3], dt.UTC)
        return engine.on_event(TagReadBatch("r1", at, tuple(batch)))  # type: ignore[return-value]

    def tick(t: float) -> list[object]:
        return engine.on_tick(dt.datetime.fromtimestamp(t, dt.UTC))  # type: ignore[return-value]

    rate, _ = run(batches, feed, tick)
    key = {e: epc_key(decode_epc(e), e) for e in first}
    engine.stock_found({key[e]: where for e, where in first.items()}, frozenset(ZONE_ANTENNAS))
    end = dt.datetime.fromtimestamp(batches[-1][-1][3], dt.UTC)
    (tx,) = [
        d
        for d in engine.on_event(CountCommand("bench", False, end))
        if isinstance(d, CountTransaction)
    ]
    right = dict(tx.moved) == {key[e]: m for e, m in moves.items()} and set(tx.found) == {
        key[e] for e in first if e not in moves
    }
    return rate, right and not tx.missing and not tx.unexpected


def run(
    batches: Sequence[list[TagRead]],
    feed: Callable[[list[TagRead]], list[object]],
    tick: Callable[[float], list[object]],
) -> tuple[float, list[object]]:
    """Reads/s through `feed` and `tick` (every 0.2 s of read time); the events made."""
    events: list[object] = []
    next_tick = 0.2
    gc.collect()
    start = time.perf_counter()
    for batch in batches:
        events += feed(batch)
        t = batch[-1][3]
        if t >= next_tick:
            events += tick(t)
            next_tick = t + 0.2
    seconds = time.perf_counter() - start
    return sum(len(b) for b in batches) / seconds, events


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--reads", type=int, default=1_000_000)
    cli.add_argument("--rounds", type=int, default=3)
    args = cli.parse_args()
    batches, moves, first = generate(args.reads, seed=16)
    print(
        f"zone rules: {args.reads:,} reads of {TAGS:,} tags in {ZONES} zones (30% bleed), "
        f"{len(moves)} tags moved halfway; one core, best of {args.rounds} rounds"
    )
    zone_rates, portal_rates, count_rates = [], [], []
    for n in range(args.rounds):
        tracker = ZoneTracker(ZoneSettings("r1", ZONE_ANTENNAS))
        rate, events = run(batches, tracker.on_reads, tracker.on_tick)  # type: ignore[arg-type]
        moved = [e for e in events if isinstance(e, ZoneEvent) and e.change is ZoneChange.MOVED]
        found = {e.epc: (e.previous, e.zone) for e in moved}
        moved_events = len(moved)
        right = found == moves and moved_events == len(moves)
        portal = PortalTracker(
            PortalSettings(
                "D",
                "r1",
                frozenset(range(1, ZONES + 1)),
                frozenset(range(ZONES + 1, 2 * ZONES + 1)),
            )
        )
        base, _ = run(batches, portal.on_reads, portal.on_tick)  # type: ignore[arg-type]
        counted, count_right = count_rate(batches, moves, first)
        right = right and count_right
        zone_rates.append(rate)
        portal_rates.append(base)
        count_rates.append(counted)
        print(
            f"round {n + 1}: zone rules {rate:,.0f} reads/s, with a count open (engine) "
            f"{counted:,.0f} reads/s, portal logic {base:,.0f} reads/s; moves {moved_events} of "
            f"{len(moves)} made, {'each right' if right else 'WRONG'} (count: "
            f"{'equal to the truth' if count_right else 'WRONG'})"
        )
        if not right:
            missing = {e: m for e, m in moves.items() if found.get(e) != m}
            print(f"  moves not found as made: {len(missing)}; extra: {moved_events - len(moves)}")
    best, baseline, counting = max(zone_rates), max(portal_rates), max(count_rates)
    met = best >= TARGET
    count_met = counting >= TARGET
    print(
        f"zone rules {best:,.0f} reads/s beside the portal logic's {baseline:,.0f} "
        f"({best / baseline:.2f}); target >= {TARGET:,.0f}: {'PASS' if met else 'BELOW TARGET'}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"zone and count rules through the engine {counting:,.0f} reads/s beside the portal "
        f"logic's {baseline:,.0f} ({counting / baseline:.2f}); target >= {TARGET:,.0f}: "
        f"{'PASS' if count_met else 'BELOW TARGET'}"
    )
    keep(
        "zone_rules",
        [
            Figure(
                "zone rules on one core, reads/s (2,000 tags, 8 zones, bleed, moves)",
                round(best),
                "reads/s",
                round(baseline),
                "the portal logic on the same reads",
                best / baseline,
                ">= 100,000 reads/s",
                met,
            ),
            Figure(
                "zone and count rules (engine, a count of every zone open), reads/s",
                round(counting),
                "reads/s",
                round(baseline),
                "the portal logic on the same reads",
                counting / baseline,
                ">= 100,000 reads/s",
                count_met,
            ),
        ],
    )


if __name__ == "__main__":
    main()
