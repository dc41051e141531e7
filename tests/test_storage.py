"""The outbox on a real SQLite file: commit, order, idempotence, limits, survival."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway.storage import (
    LotRow,
    MovedRow,
    OutboxFull,
    OutboxMessage,
    PalletMove,
    StateChanges,
    StorageError,
    Store,
    TaskRow,
)


def msg(n: int) -> OutboxMessage:
    return OutboxMessage(f"id-{n}", "gw/t/tx/move", f'{{"n":{n}}}'.encode())


async def test_commit_then_pending_in_order_and_acknowledge(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        assert await store.commit([msg(i) for i in range(5)]) == 5
        pending = await store.pending()
        assert [p.msg_id for p in pending] == [f"id-{i}" for i in range(5)]
        assert store.depth == 5
        await store.acknowledge([pending[0].seq, pending[2].seq])
        assert store.depth == 3
        assert [p.msg_id for p in await store.pending()] == ["id-1", "id-3", "id-4"]
        after = await store.pending(after_seq=pending[3].seq)
        assert [p.msg_id for p in after] == ["id-4"]


async def test_same_message_id_is_committed_once(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        assert await store.commit([msg(1), msg(2)]) == 2
        assert await store.commit([msg(2), msg(3)]) == 1
        assert store.depth == 3


async def test_committed_rows_and_locations_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path)
    await store.commit(
        [msg(1)], StateChanges(moves=[PalletMove("376123450000000016", "A-01-01", "id-1")])
    )
    await store.commit(
        [msg(2)], StateChanges(moves=[PalletMove("376123450000000016", "B-02-02", "id-2")])
    )
    await store.close()
    async with await Store.open(path) as again:
        assert again.depth == 2
        assert [p.msg_id for p in await again.pending()] == ["id-1", "id-2"]
        assert await again.pallet_locations() == {"376123450000000016": "B-02-02"}


async def test_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with await Store.open(path) as store:
        await store.commit([msg(1)])
        mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


async def test_size_limit_refuses_whole_batch(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db", max_rows=10) as store:
        await store.commit([msg(i) for i in range(8)])
        assert store.room() == 2
        with pytest.raises(OutboxFull):
            await store.commit([msg(i) for i in range(100, 103)])
        assert store.depth == 8
        assert len(await store.pending()) == 8


async def test_wait_changed_wakes_on_commit(tmp_path: Path) -> None:
    import asyncio

    async with await Store.open(tmp_path / "gw.db") as store:
        seen = store.version
        waiter = asyncio.create_task(store.wait_changed(seen, timeout=5))
        await asyncio.sleep(0)
        await store.commit([msg(1)])
        await asyncio.wait_for(waiter, 1)
        assert store.version != seen


async def test_cancelled_commits_and_acknowledgements_leave_no_open_transaction(
    tmp_path: Path,
) -> None:
    import asyncio
    import random

    rng = random.Random(7)
    path = tmp_path / "gw.db"
    async with await Store.open(path) as store:
        n = 0
        for _ in range(150):
            if rng.random() < 0.6 or store.depth == 0:
                batch = [msg(n + i) for i in range(rng.randint(1, 20))]
                n += len(batch)
                task = asyncio.create_task(store.commit(batch))
            else:
                seqs = [p.seq for p in await store.pending(limit=rng.randint(1, 10))]
                task = asyncio.create_task(store.acknowledge(seqs))
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.1)
        # Whatever was cancelled, every transaction ran to its end or not at all.
        assert await store.commit([msg(10_000)]) == 1
        rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        assert store.depth == rows


async def test_disk_full_is_a_storage_error_and_the_store_recovers(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([msg(1)])
        # SQLite's page limit stands in for a full disk.
        await store._db.execute("PRAGMA max_page_count = 1")
        big = [OutboxMessage(f"big-{i}", "t", b"x" * 4000) for i in range(50)]
        with pytest.raises(StorageError):
            await store.commit(big)
        assert store.depth == 1
        await store._db.execute("PRAGMA max_page_count = 1073741823")
        assert await store.commit(big) == 50
        assert store.depth == 51


async def test_refused_rows_leave_the_stream_until_their_retry_time(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([msg(1), msg(2), msg(3)])
        first = (await store.pending())[0]
        await store.refuse(first.seq, reason="Not authorized", retry_at=1000.0)
        assert store.refused == 1
        assert [p.msg_id for p in await store.pending()] == ["id-2", "id-3"]
        assert await store.due_retries(now=999.0) == []
        (due,) = await store.due_retries(now=1000.0)
        assert (due.msg_id, due.attempts) == ("id-1", 1)
        await store.acknowledge([due.seq])
        assert (store.depth, store.refused) == (2, 0)


async def test_agv_tasks_and_shipped_pallets_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path)
    pallet, other = "376123450000000016", "376123450000000023"
    await store.commit(
        [msg(1)],
        StateChanges(
            moves=[PalletMove(pallet, "D03", "rx-1"), PalletMove(other, "D03", "rx-1")],
            tasks={
                "T1": TaskRow("T1", "queued", '{"task_id": "T1"}'),
                "T2": TaskRow("T2", "done", '{"task_id": "T2"}'),
            },
        ),
    )
    await store.commit(
        [msg(2)], StateChanges(tasks={"T1": TaskRow("T1", "leased", '{"task_id": "T1", "v": 2}')})
    )
    await store.commit([], StateChanges(shipped=[other]))
    await store.close()
    store = await Store.open(path)
    try:
        assert await store.pallet_locations() == {pallet: "D03"}
        assert sorted(await store.agv_tasks()) == ['{"task_id": "T1", "v": 2}', '{"task_id": "T2"}']
        assert await store.agv_tasks(finished=0) == ['{"task_id": "T1", "v": 2}']
        assert await store.prune_agv_tasks(older_than_s=-60) == 1  # T2 is finished
        assert await store.agv_tasks() == ['{"task_id": "T1", "v": 2}']
    finally:
        await store.close()


async def test_received_pallets_lots_survive_reopen_until_shipped(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    pallet, other = "376123450000000016", "376123450000000023"
    async with await Store.open(path) as store:
        await store.commit(
            [],
            StateChanges(
                lots=[
                    LotRow(pallet, "00614141123452", "L1", "2027-01-31"),
                    LotRow(other, "00614141123452", None, None),
                ]
            ),
        )
        await store.commit([], StateChanges(shipped=[other]))
    async with await Store.open(path) as again:
        assert await again.pallet_lots() == [(pallet, "00614141123452", "L1", "2027-01-31")]


async def test_recent_moves_survive_reopen_and_old_ones_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with await Store.open(path) as store:
        await store.commit(
            [],
            StateChanges(
                moved=[MovedRow("00614141123452", 100.0), MovedRow("00614141234561", 200.0)]
            ),
        )
        await store.commit([], StateChanges(moved=[MovedRow("00614141123452", 300.0)]))
    async with await Store.open(path) as again:
        assert await again.recent_moves(since=150.0) == [
            ("00614141234561", 200.0),
            ("00614141123452", 300.0),
        ]
        assert await again.recent_moves(since=0.0) == [
            ("00614141234561", 200.0),
            ("00614141123452", 300.0),
        ]  # the move before 150 s was deleted


async def test_a_new_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    async with await Store.open(path) as store:
        await store.commit([msg(1)])
        for name in ("gw.db", "gw.db-wal", "gw.db-shm"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


async def test_acknowledged_rows_are_kept_for_the_window_and_requeued_in_order(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([msg(n) for n in range(5)])
        rows = await store.pending()
        await store.acknowledge([r.seq for r in rows[:3]], keep_s=60)
        assert store.depth == 2
        assert [r.msg_id for r in await store.pending()] == ["id-3", "id-4"]
    # A crash (the file reopened): what the broker acknowledged comes back, before the rest.
    async with await Store.open(tmp_path / "gw.db") as store:
        assert await store.requeue_sent(within_s=60) == 3
        assert store.depth == 5
        assert [r.msg_id for r in await store.pending()] == [f"id-{n}" for n in range(5)]
        assert await store.requeue_sent(within_s=60) == 0  # once


async def test_the_window_counts_back_from_the_last_acknowledgement_and_a_clean_stop_clears_it(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([msg(n) for n in range(4)])
        rows = await store.pending()
        await store.acknowledge([rows[0].seq], keep_s=60)
        await asyncio.sleep(0.3)
        await store.acknowledge([rows[1].seq], keep_s=60)
        await asyncio.sleep(0.3)  # the broker is down for longer than the window below
        # Only what came within 0.2 s before the last acknowledgement is published again.
        assert await store.requeue_sent(within_s=0.2) == 1
        assert [r.msg_id for r in await store.pending()] == ["id-1", "id-2", "id-3"]
        rows = await store.pending()
        await store.acknowledge([rows[0].seq], keep_s=60)
        await store.forget_sent()  # a clean disconnect
        assert await store.requeue_sent(within_s=60) == 0
        await store.acknowledge([rows[1].seq])  # no window: gone at once
        assert await store.requeue_sent(within_s=60) == 0
        assert store.depth == 1


async def test_the_outbox_has_a_byte_limit_as_well_as_a_row_limit(tmp_path: Path) -> None:
    big = [OutboxMessage(f"big-{n}", "gw/x/y/epcis", b"x" * 400) for n in range(3)]
    async with await Store.open(tmp_path / "gw.db", max_rows=100, max_bytes=1000) as store:
        await store.commit(big[:2])
        assert (store.depth, store.size) == (2, 800)
        assert store.fits([msg(0)])
        assert not store.fits(big[2:])  # 1,200 bytes: over the byte limit, rows to spare
        with pytest.raises(OutboxFull):
            await store.commit(big[2:])
        assert store.fill() == pytest.approx(0.8)
        await store.acknowledge([r.seq for r in await store.pending()][:1])
        assert (store.depth, store.size) == (1, 400)
        await store.commit(big[2:])
    async with await Store.open(tmp_path / "gw.db", max_bytes=1000) as store:
        assert (store.depth, store.size) == (2, 800)  # counted again at start


async def test_thousands_acknowledged_at_once_are_counted_kept_and_requeued_in_order(
    tmp_path: Path,
) -> None:
    # More seqs than one statement may bind (SQLite bounds its variables): taken in chunks,
    # all in the one transaction.
    async with await Store.open(tmp_path / "gw.db") as store:
        await store.commit([msg(n) for n in range(1_500)])
        size = store.size
        rows = await store.pending(limit=2_000)
        await store.refuse(rows[7].seq, reason="not authorized", retry_at=1.0)
        assert store.refused == 1
        await store.acknowledge([r.seq for r in rows[:1_400]], keep_s=60)
        assert store.depth == 100
        assert store.refused == 0
        assert store.size == size - sum(len(r.payload) for r in rows[:1_400])
        assert await store.requeue_sent(within_s=60) == 1_400
        assert [r.msg_id for r in await store.pending(limit=2_000)] == [
            f"id-{n}" for n in range(1_500)
        ]
        assert (store.depth, store.size) == (1_500, size)


async def test_a_transaction_that_fails_outside_sqlite_is_rolled_back(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:

        def broken(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM outbox")
            raise ValueError("a bug in the middle of a transaction")

        await store.commit([msg(1)])
        with pytest.raises(ValueError, match="a bug"):
            await store._transaction(broken, lambda _: None)
        await store.commit([msg(2)])  # no transaction was left open
        assert [r.msg_id for r in await store.pending()] == ["id-1", "id-2"]


async def test_a_closed_store_says_so_and_closes_once(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    await store.close()
    await store.close()  # again: nothing
    with pytest.raises(StorageError):
        await store.commit([OutboxMessage("m1", "gw/S/g/tx/move", b"{}")])
