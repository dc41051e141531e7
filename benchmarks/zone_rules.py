"""Benchmark: the RFID zone rules' throughput on one core, beside the portal logic's.

A storage area read by one reader: 8 zones of 2 antennas, 2,000 tags (400 pallets of 5 cases),
each heard by its own zone's antennas and, with bleed, by a neighbour's; 2% of the pallets are
moved to another zone halfway. Reads come in batches of 100 (as reader reports do), stamped
4,000 reads a second of read time, and `on_tick` runs every 0.2 s of read time. The figure:
tag reads/s through `ZoneTracker.on_reads` and `on_tick` (pre-generated reads, one core, the
best of the rounds); the baseline, from the same run: the portal logic (`PortalTracker`) on the
same reads, with the antennas split outside/inside. The moves found are checked against the
ones made (each once, with the right zones; none for the others). Issue #16's target: at least
100,000 reads/s.

Run with `make bench` or `python benchmarks/zone_rules.py [--reads N] [--rounds N]`.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.guard import Figure, keep
from gateway.domain import TagRead, ZoneChange
from gateway.rules.portal import PortalSettings, PortalTracker
from gateway.rules.zones import ZoneSettings, ZoneTracker

ZONES = 8
TAGS = 2_000
CASES = 5
READS_PER_S = 4_000.0
TARGET = 100_000.0
ZONE_ANTENNAS = {f"L-{n:02d}": frozenset({2 * n + 1, 2 * n + 2}) for n in range(ZONES)}


def generate(reads: int, seed: int) -> tuple[list[list[TagRead]], dict[str, tuple[str, str]]]:
    """Batches of reads, and the moved tags' (from, to) zones."""
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
    return [flat[i : i + 100] for i in range(0, len(flat), 100)], moves


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
    batches, moves = generate(args.reads, seed=16)
    print(
        f"zone rules: {args.reads:,} reads of {TAGS:,} tags in {ZONES} zones (30% bleed), "
        f"{len(moves)} tags moved halfway; one core, best of {args.rounds} rounds"
    )
    zone_rates, portal_rates = [], []
    for n in range(args.rounds):
        tracker = ZoneTracker(ZoneSettings("r1", ZONE_ANTENNAS))
        rate, events = run(batches, tracker.on_reads, tracker.on_tick)  # type: ignore[arg-type]
        found = {
            e.epc: (e.previous, e.zone)  # type: ignore[attr-defined]
            for e in events
            if e.change is ZoneChange.MOVED  # type: ignore[attr-defined]
        }
        moved_events = sum(1 for e in events if e.change is ZoneChange.MOVED)  # type: ignore[attr-defined]
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
        zone_rates.append(rate)
        portal_rates.append(base)
        print(
            f"round {n + 1}: zone rules {rate:,.0f} reads/s, portal logic {base:,.0f} reads/s; "
            f"moves {moved_events} of {len(moves)} made, {'each right' if right else 'WRONG'}"
        )
        if not right:
            missing = {e: m for e, m in moves.items() if found.get(e) != m}
            print(f"  moves not found as made: {len(missing)}; extra: {moved_events - len(moves)}")
    best, baseline = max(zone_rates), max(portal_rates)
    met = best >= TARGET
    print(
        f"zone rules {best:,.0f} reads/s beside the portal logic's {baseline:,.0f} "
        f"({best / baseline:.2f}); target >= {TARGET:,.0f}: {'PASS' if met else 'BELOW TARGET'}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
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
            )
        ],
    )


if __name__ == "__main__":
    main()
