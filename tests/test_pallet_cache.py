"""Pallet locations bounded by configuration: the forklift rule's LRU cache, the runner's
look-ups in SQLite for pallets the cache lacks, and a start-up that loads only the most recent.

The rule is driven with hand-built scans; the runner and the storage run on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.domain import Decision, DoorRole, MoveTransaction, Notice, Scan, ScanKind
from gateway.drivers.base import AlarmOutputs
from gateway.inbox import Inbox
from gateway.recorder import Recorder
from gateway.rules.engine import DockStation, RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.runner import RulesRunner
from gateway.storage import PalletMove, StateChanges, Store
from gateway.wire.topics import Topics
from gateway.wiring import build_engine

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
P1 = "376123450000000016"


def sscc(n: int) -> str:
    """A valid SSCC (company prefix 7612345, serial reference n)."""
    body = f"37612345{n:09d}"
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def at(step: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=10 * step)


def pallet(code: str, when: dt.datetime, device: str = "fl-1") -> Scan:
    return Scan(device, when, "00" + code, ScanKind.PALLET, sscc=code)


def location(where: str, when: dt.datetime, device: str = "fl-1") -> Scan:
    return Scan(device, when, where, ScanKind.LOCATION, location=where)


def move_scans(code: str, where: str, step: int, device: str = "fl-1") -> list[Scan]:
    """A forklift move: the pallet label, then the location label a second later."""
    when = at(step)
    return [pallet(code, when, device), location(where, when + dt.timedelta(seconds=1), device)]


def rule(cached: int, pallets: dict[str, str] | None = None) -> ForkliftMoves:
    return ForkliftMoves(MoveSettings(cached_pallets=cached), pallets)


def test_sscc_helper_makes_valid_check_digits() -> None:
    assert sscc(1) == P1


# --- The cache in the rule --------------------------------------------------------------------


def test_the_cache_keeps_the_most_recently_moved_pallets() -> None:
    moves = rule(cached=2)
    for n, where in ((1, "A-01"), (2, "A-02"), (3, "A-03")):
        moves.located(sscc(n), where)
    assert len(moves) == 2 and moves.evicted == 1
    assert not moves.knows(sscc(1)) and moves.location_of(sscc(1)) is None
    assert moves.location_of(sscc(2)) == "A-02" and moves.location_of(sscc(3)) == "A-03"


def test_a_pallet_used_again_stays_and_the_least_recent_leaves() -> None:
    moves = rule(cached=2)
    for step, (n, where) in enumerate(((1, "A-01"), (2, "A-02"))):
        for scan in move_scans(sscc(n), where, step):
            moves.on_event(scan)
    # Scanned where it already is: used, so pallet 2 is now the least recently used.
    decisions: list[Decision] = []
    for scan in move_scans(sscc(1), "A-01", 2):
        decisions.extend(moves.on_event(scan))
    assert [d.code for d in decisions if isinstance(d, Notice)] == ["already_at_location"]
    moves.located(sscc(3), "A-03")
    assert moves.knows(sscc(1)) and not moves.knows(sscc(2))


def test_start_keeps_only_the_last_pallets_given() -> None:
    stored = {sscc(n): f"R-{n:02d}" for n in range(1, 6)}  # oldest move first
    moves = rule(cached=3, pallets=stored)
    assert len(moves) == 3 and moves.evicted == 0
    assert [moves.knows(sscc(n)) for n in range(1, 6)] == [False, False, True, True, True]


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="cached_pallets"):
        rule(cached=0)


def test_needs_names_the_scanned_pallet_or_the_one_awaited() -> None:
    moves = rule(cached=1)
    assert moves.needs(pallet(P1, at(0))) == P1
    moves.warm(P1, "A-01")
    assert moves.needs(pallet(P1, at(0))) is None
    moves.on_event(pallet(P1, at(0)))  # waiting for a location
    moves.located(sscc(2), "B-01")  # evicts pallet 1 while the forklift carries it
    assert moves.needs(location("C-01", at(1))) == P1
    assert moves.needs(location("C-01", at(1), device="fl-2")) is None  # nothing awaited there
    assert moves.needs(Scan("fl-1", at(1), "0109506000134352", ScanKind.ITEM)) is None


def test_warm_never_overrides_what_the_rules_know() -> None:
    moves = rule(cached=5)
    moves.located(P1, "A-01")
    moves.warm(P1, "OLD")
    assert moves.location_of(P1) == "A-01"


def test_a_shipped_pallet_is_known_to_be_nowhere_and_needs_no_look_up() -> None:
    moves = rule(cached=5, pallets={P1: "D03"})
    moves.located(P1, None)
    assert moves.knows(P1) and moves.location_of(P1) is None
    assert moves.needs(pallet(P1, at(0))) is None


def test_a_pallet_moved_long_ago_keeps_its_origin_with_a_tiny_cache() -> None:
    """The runner's part played by a dict: what storage holds after each commit."""
    storage: dict[str, str] = {}
    moves = rule(cached=3)

    def handle(scans: list[Scan]) -> list[Decision]:
        out: list[Decision] = []
        for scan in scans:
            needed = moves.needs(scan)
            if needed is not None:
                moves.warm(needed, storage.get(needed))
            out.extend(moves.on_event(scan))
        for d in out:
            if isinstance(d, MoveTransaction):
                storage[d.sscc] = d.to_location
        return out

    handle(move_scans(P1, "A-01-01", 0))
    for n in range(2, 1_002):  # a thousand other pallets moved since
        handle(move_scans(sscc(n), f"R-{n}", n))
    assert not moves.knows(P1)
    (again,) = handle(move_scans(P1, "B-02-02", 2_000))
    assert isinstance(again, MoveTransaction)
    assert again.from_location == "A-01-01" and again.exceptions == ()
    for n in range(2, 10):
        handle(move_scans(sscc(n), f"S-{n}", 2_000 + n))
    (notice,) = handle(move_scans(P1, "B-02-02", 3_000))
    assert isinstance(notice, Notice) and notice.code == "already_at_location"


def test_the_engine_asks_only_for_forklift_and_station_scans() -> None:
    engine = RulesEngine(
        rule(cached=5),
        {},
        dock_stations={"dock-1": DockStation("D03", DoorRole.RECEIVING)},
    )
    assert engine.pallet_needed(pallet(P1, at(0))) == P1
    assert engine.pallet_needed(pallet(P1, at(0), device="dock-1")) is None
    engine.pallet_found(P1, "A-01")
    assert engine.pallet_needed(pallet(P1, at(0))) is None
    assert engine.moves.location_of(P1) == "A-01"


# --- The runner and SQLite --------------------------------------------------------------------


async def run_scans(store: Store, engine: RulesEngine, scans: list[Scan]) -> RulesRunner:
    """Queue every scan first (one batch), run the runner until they are handled."""
    inbox = Inbox(maxsize=len(scans) + 1)
    for scan in scans:
        inbox.put_nowait(scan)
    recorder = Recorder(
        topics=Topics("DC1", "gw1"), store=store, clock=lambda: at(10_000), alarms=AlarmOutputs()
    )
    runner = RulesRunner(
        engine,
        inbox,
        recorder,
        clock=lambda: at(10_000),
        batch_max=len(scans),
        lookup=store.pallet_location,
    )
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(inbox.join(), timeout=30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return runner


async def published(store: Store, topic_end: str) -> list[dict[str, Any]]:
    return [
        json.loads(row.payload)
        for row in await store.pending(limit=100_000)
        if row.topic.endswith(topic_end)
    ]


async def test_runner_looks_up_a_pallet_evicted_within_one_batch(tmp_path: Path) -> None:
    scans = move_scans(P1, "A-01-01", 0)
    for n in range(2, 7):  # five other pallets: pallet 1 leaves a cache of two
        scans += move_scans(sscc(n), f"R-{n}", n)
    scans += move_scans(P1, "B-02-02", 10)
    scans += move_scans(P1, "B-02-02", 11)  # already there
    async with await Store.open(tmp_path / "gw.db") as store:
        engine = RulesEngine(rule(cached=2), {})
        runner = await run_scans(store, engine, scans)
        moves = [m for m in await published(store, "/tx/move") if m["sscc"] == P1]
        events = [e["code"] for e in await published(store, "/event")]
        assert await store.pallet_location(P1) == "B-02-02"
    assert [(m["from_location"], m["to_location"]) for m in moves] == [
        (None, "A-01-01"),
        ("A-01-01", "B-02-02"),
    ]
    assert moves[1]["exceptions"] == []
    assert events == ["already_at_location"]
    assert runner.lookups == 7  # the first scan of each pallet, and pallet 1 once more
    assert len(engine.moves) == 2


# --- Storage and start-up ---------------------------------------------------------------------

CONFIG: dict[str, Any] = {
    "gateway": {"site": "DC1", "id": "gw1"},
    "broker": {"host": "127.0.0.1"},
}


async def test_storage_looks_up_one_pallet_and_start_up_loads_only_the_most_recent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    async with await Store.open(path) as store:
        for n in range(1, 6):  # one commit each: moved in this order
            await store.commit(
                [], StateChanges(moves=[PalletMove(sscc(n), f"R-{n:02d}", f"tx-{n}")])
            )
        await store.commit([], StateChanges(moves=[PalletMove(sscc(1), "R-99", "tx-6")]))
        await store.commit([], StateChanges(shipped=[sscc(2)]))
        assert await store.pallet_location(sscc(1)) == "R-99"
        assert await store.pallet_location(sscc(3)) == "R-03"
        assert await store.pallet_location(sscc(2)) is None  # shipped
        assert await store.pallet_location(sscc(42)) is None  # never seen
        assert list((await store.pallet_locations(limit=2)).items()) == [
            (sscc(5), "R-05"),
            (sscc(1), "R-99"),
        ]
        assert list(await store.pallet_locations()) == [sscc(3), sscc(4), sscc(5), sscc(1)]

    config = GatewayConfig.model_validate(
        {
            **CONFIG,
            "storage": {"path": str(path)},
            "rules": {"move": {"cached_pallets": 2}},
            "agv": {"enabled": True, "stock_max_pallets": 3},
        }
    )
    async with await Store.open(path) as store:
        engine = await build_engine(config, store, lambda: at(0))
    assert len(engine.moves) == 2
    assert engine.moves.knows(sscc(5)) and engine.moves.knows(sscc(1))
    assert engine.agv is not None
    assert len(engine.agv.stock) == 3
    assert sscc(4) in engine.agv.stock and sscc(3) not in engine.agv.stock


async def test_a_file_of_the_previous_version_opens_and_gets_the_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the table as the previous version made it
        old.execute(
            "CREATE TABLE pallet_location (sscc TEXT PRIMARY KEY, location TEXT NOT NULL,"
            " tx_id TEXT NOT NULL, updated_at REAL NOT NULL)"
        )
        old.executemany(
            "INSERT INTO pallet_location VALUES (?, ?, ?, ?)",
            [(sscc(n), f"R-{n}", f"tx-{n}", 1_000.0 + n) for n in range(1, 4)],
        )
    old.close()
    async with await Store.open(path) as store:
        assert await store.pallet_locations(limit=1) == {sscc(3): "R-3"}
        assert await store.pallet_location(sscc(1)) == "R-1"
    with sqlite3.connect(path) as db:
        plan = " ".join(
            str(row[-1])
            for row in db.execute(
                "EXPLAIN QUERY PLAN SELECT sscc, location FROM pallet_location"
                " ORDER BY updated_at DESC LIMIT 1"
            )
        )
    db.close()
    assert "pallet_location_updated" in plan
