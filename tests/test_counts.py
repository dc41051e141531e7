"""Cycle counts (#16, the rules): found, missing and unexpected pallets of a storage area equal
the ground truth exactly, and the adjustments follow from them."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from typing import TypeVar

from gateway.domain import CountOpened, CountReason
from gateway.rules.counts import CycleCounts

T0 = dt.datetime(2026, 12, 7, 6, tzinfo=dt.UTC)
LATER = T0 + dt.timedelta(hours=1)
T = TypeVar("T")


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
    assert isinstance(counts.open("C-1", locations, T0, LATER), CountOpened)
    assert isinstance(counts.open("C-2", locations[:1], T0, LATER), str)  # overlapping: refused
    truth: dict[str, str] = {}
    for pallet in pallets:
        if pallet in missing or pallet in outside:
            continue
        where = misplaced.get(pallet, recorded[pallet])
        truth[pallet] = where
    truth |= elsewhere | {intruder: locations[0]}
    for pallet, where in rng.sample(sorted(truth.items()), len(truth)) * 2:  # each seen twice
        counts.seen(f"sscc:{pallet}", where)
    assert counts.seen(f"sscc:{shuffled[20]}", "B-01-01") is None  # no count covers B-01-01
    stock = {f"sscc:{p}": where for p, where in recorded.items()}
    result = counts.close("C-1", stock, T0 + dt.timedelta(minutes=30))
    assert result is not None

    def by_sscc(keys: Mapping[str, T]) -> dict[str, T]:
        return {k.removeprefix("sscc:"): v for k, v in keys.items()}

    assert set(by_sscc(result.missing)) == missing | set(outside)
    assert by_sscc(result.unexpected) == elsewhere | {intruder: locations[0]}
    assert by_sscc(result.misplaced) == {intruder: "B-02-02"}  # the others moved within the area
    assert {p: seen for p, (_, seen) in by_sscc(result.moved).items()} == misplaced
    assert set(by_sscc(result.found)) == set(truth) - set(misplaced) - set(elsewhere) - {intruder}
    after = {k: to for k, (_, to) in by_sscc(result.adjustments).items()}
    assert all(after[p] is None for p in missing)
    assert {p: after[p] for p in misplaced} == misplaced
    assert counts.close("C-1", stock, T0) is None  # closed once
    assert counts.closed_tx("C-1") == result.tx_id
    assert isinstance(counts.open("C-1", locations, T0, LATER), str)  # an id is counted once


def test_deadlines_bounds_and_restore() -> None:
    counts = CycleCounts(max_open=2, max_seen=3)
    opened = counts.open("C-1", ["A"], T0, T0 + dt.timedelta(minutes=5))
    assert isinstance(opened, CountOpened)
    assert counts.open("C-2", [], T0, LATER) == "a count needs at least one location"
    assert isinstance(counts.open("C-2", ["B"], T0, LATER), CountOpened)
    assert counts.open("C-3", ["C"], T0, LATER) == "2 counts are open already"
    assert counts.seen("sscc:1", "A") is not None
    assert counts.seen("sscc:1", "A") is None  # seen twice is seen once
    assert counts.seen("sscc:1", "B", count_id="C-1") is None  # B is C-2's
    for n in range(2, 6):
        counts.seen(f"sscc:{n}", "A")
    assert counts.seen_keys("C-1") == {"sscc:1", "sscc:2", "sscc:3"}
    assert counts.dropped == 2
    assert counts.due(T0 + dt.timedelta(minutes=4)) == []
    assert counts.due(T0 + dt.timedelta(minutes=5)) == ["C-1"]
    # A restart: the same count and what it saw, closed by its deadline.
    again = CycleCounts()
    again.restore(opened, [("sscc:1", "A"), ("sscc:9", "A")])
    tx = again.close("C-1", {"sscc:1": "A", "sscc:2": "A"}, LATER, CountReason.TIMEOUT)
    assert tx is not None
    assert dict(tx.found) == {"sscc:1": "A"}
    assert dict(tx.missing) == {"sscc:2": "A"}
    assert dict(tx.unexpected) == {"sscc:9": "A"}
    assert tx.reason is CountReason.TIMEOUT
    assert tx.exception_codes == ["missing", "unexpected"]
