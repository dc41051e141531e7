"""Cycle counts (#16, the rules): found, missing and unexpected pallets of a storage area equal
the ground truth exactly, and the adjustments follow from them."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from typing import TypeVar

from gateway.domain import (
    CountCommand,
    CountOpened,
    CountReason,
    CountTransaction,
    TagReadBatch,
    decode_epc,
    epc_key,
)
from gateway.domain.epc import encode_sscc96
from gateway.rules.counts import CycleCounts
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.zones import ZoneSettings, ZoneTracker

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


# --- counts in the engine: zones, handheld count scans, the stock handed in -------------------


def test_a_count_of_an_rfid_zone_takes_what_is_there_and_what_arrives() -> None:
    zones = ZoneSettings("r1", {"A-01": frozenset({1}), "A-02": frozenset({2})}, min_reads=1)
    engine = RulesEngine(
        ForkliftMoves(MoveSettings()), {}, zones={"r1": ZoneTracker(zones)}, counts=CycleCounts()
    )
    tags = [encode_sscc96("0614141", f"3{n:09d}").hex().upper() for n in range(4)]
    key = [epc_key(decode_epc(t), t) for t in tags]
    t0 = T0.timestamp()

    def read(epc: str, antenna: int, t: float) -> None:  # heard for longer than the window
        for dt_s in (0.0, 1.0, 2.5):
            at = dt.datetime.fromtimestamp(t + dt_s, dt.UTC)
            engine.on_event(TagReadBatch("r1", at, ((epc, antenna, -50, t + dt_s, 1),)))

    read(tags[0], 1, t0)  # in A-01 before the count
    read(tags[1], 2, t0)  # in A-02: not counted
    opened = engine.on_event(CountCommand("Z-1", True, T0, zone="A-01"))
    assert [d.key for d in opened if hasattr(d, "key")] == [key[0]]  # what is there is seen
    read(tags[2], 1, t0 + 5)  # arrives during the count
    recorded = {key[0]: "A-01", key[3]: "A-01", key[1]: "A-02"}  # tags[3] is not there
    close = CountCommand("Z-1", False, T0 + dt.timedelta(minutes=1))
    assert engine.stock_needed(close) == (frozenset({"A-01"}), frozenset({key[0], key[2]}))
    engine.stock_found(recorded, frozenset({"A-01"}))
    (tx,) = [d for d in engine.on_event(close) if isinstance(d, CountTransaction)]
    assert dict(tx.found) == {key[0]: "A-01"}
    assert dict(tx.missing) == {key[3]: "A-01"}
    assert dict(tx.unexpected) == {key[2]: "A-01"}
    # The rules' own stock follows: the missing pallet is gone, the unexpected one is there.
    assert engine.moves.knows(key[3].removeprefix("sscc:"))
    assert engine.moves.location_of(key[3].removeprefix("sscc:")) is None
    assert engine.moves.location_of(key[2].removeprefix("sscc:")) == "A-01"
    assert engine.counts is not None and engine.counts.closed_tx("Z-1") == tx.tx_id
