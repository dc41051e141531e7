"""The outbox on a real SQLite file: commit, order, idempotence, limits, survival."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.storage import OutboxFull, OutboxMessage, PalletMove, Store


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
    await store.commit([msg(1)], [PalletMove("376123450000000016", "A-01-01", "id-1")])
    await store.commit([msg(2)], [PalletMove("376123450000000016", "B-02-02", "id-2")])
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
