"""Cycle counts (#16, the rules): found, missing and unexpected pallets of a storage area equal
the ground truth exactly, and the adjustments follow from them."""

from __future__ import annotations

import datetime as dt
import random

from gateway.rules.counts import CycleCounts

T0 = dt.datetime(2026, 12, 7, 6, tzinfo=dt.UTC)


def test_a_count_of_forty_locations_against_the_recorded_stock() -> None:
    rng = random.Random(16)
    locations = [f"A-{n // 10 + 1:02d}-{n % 10 + 1:02d}" for n in range(40)]
    pallets = [f"3{n:017d}" for n in range(400)]
    recorded = {p: locations[n // 10] for n, p in enumerate(pallets)}  # 10 a location
    shuffled = rng.sample(pallets, len(pallets))
    missing = set(shuffled[:12])  # 3% gone
    misplaced = {p: rng.choice([x for x in locations if x != recorded[p]]) for p in shuffled[12:20]}
    elsewhere = {f"4{n:017d}": rng.choice(locations) for n in range(5)}  # unknown to the gateway
    outside = {shuffled[20]: "B-01-01"}  # recorded here, found outside the count's area
    intruder = "500000000000000001"  # recorded outside the area, found in it
    recorded[intruder] = "B-02-02"
    counts = CycleCounts()
    assert counts.open("C-1", locations, T0) is None
    assert counts.open("C-2", locations[:1], T0) is not None  # overlapping: refused
    truth: dict[str, str] = {}
    for pallet in pallets:
        if pallet in missing or pallet in outside:
            continue
        where = misplaced.get(pallet, recorded[pallet])
        truth[pallet] = where
    truth |= elsewhere | {intruder: locations[0]}
    for pallet, where in rng.sample(sorted(truth.items()), len(truth)) * 2:  # each seen twice
        assert counts.seen(pallet, where)
    assert not counts.seen(shuffled[20], "B-01-01")  # no count covers B-01-01
    result = counts.close("C-1", recorded, T0 + dt.timedelta(minutes=30))
    assert result is not None
    assert set(result.missing) == missing | set(outside)
    assert result.unexpected == elsewhere | {intruder: locations[0]}
    assert result.misplaced == {intruder: "B-02-02"}  # the others moved within the area
    assert {p: seen for p, (_, seen) in result.moved.items()} == misplaced
    assert result.found == frozenset(truth) - set(misplaced) - set(elsewhere) - {intruder}
    adjustments = result.adjustments
    assert all(adjustments[p] is None for p in missing)
    assert {p: adjustments[p] for p in misplaced} == misplaced
    assert counts.close("C-1", recorded, T0) is None  # closed once
