"""The gateway's SQLite file: the durable outbox and the pallet location ledger.

Contract: a message is committed here (WAL, synchronous=FULL) before anything publishes it,
and it is deleted only after the broker acknowledged it. Rows are published in `seq` order.
The rules engine never touches this module; the app commits what the rules decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import aiosqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    qos        INTEGER NOT NULL DEFAULT 1,
    retain     INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pallet_location (
    sscc       TEXT PRIMARY KEY,
    location   TEXT NOT NULL,
    tx_id      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish; `msg_id` makes a second insert of the same message a no-op."""

    msg_id: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A committed message not yet acknowledged by the broker."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class PalletMove:
    """A pallet's new location, recorded with the transaction that moved it."""

    sscc: str
    location: str
    tx_id: str


class OutboxFull(Exception):
    """The outbox reached its size limit; nothing more is taken until the broker drains it."""


class Store:
    """The SQLite file behind the gateway. Open it with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, *, max_rows: int, depth: int) -> None:
        self._db = db
        self.max_rows = max_rows
        self._depth = depth
        # Resolved and replaced on every change: any number of tasks can wait on it.
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._version = 0
        # One connection, several tasks (rules runner, relay): one transaction at a time.
        self._tx_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, max_rows: int = 100_000) -> Self:
        """Open (or create) the file, in WAL mode with full fsync on commit."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.executescript(_SCHEMA)
            async with db.execute("SELECT COUNT(*) FROM outbox") as cursor:
                row = await cursor.fetchone()
        except BaseException:
            await db.close()
            raise
        return cls(db, max_rows=max_rows, depth=int(row[0]) if row else 0)

    async def close(self) -> None:
        """Close the file (committed data is already on disk)."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def depth(self) -> int:
        """Messages committed and not yet acknowledged."""
        return self._depth

    def room(self) -> int:
        """How many more messages fit before the size limit."""
        return max(0, self.max_rows - self._depth)

    async def commit(
        self, messages: Sequence[OutboxMessage], moves: Sequence[PalletMove] = ()
    ) -> int:
        """Commit messages and pallet locations in one transaction; returns rows inserted.

        Raises `OutboxFull` (and commits nothing) when the messages do not fit.
        """
        if len(messages) > self.room():
            raise OutboxFull(f"outbox holds {self._depth} of {self.max_rows} messages")
        now = time.time()
        async with self._transaction():
            before = self._db.total_changes
            await self._db.executemany(
                "INSERT OR IGNORE INTO outbox (msg_id, topic, payload, qos, retain, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(m.msg_id, m.topic, m.payload, m.qos, int(m.retain), now) for m in messages],
            )
            inserted = self._db.total_changes - before
            await self._db.executemany(
                "INSERT INTO pallet_location (sscc, location, tx_id, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sscc) DO UPDATE SET"
                " location = excluded.location, tx_id = excluded.tx_id,"
                " updated_at = excluded.updated_at",
                [(m.sscc, m.location, m.tx_id, now) for m in moves],
            )
        self._depth += inserted
        self._bump()
        return inserted

    async def pending(self, *, after_seq: int = 0, limit: int = 500) -> list[PendingMessage]:
        """Unacknowledged messages after `after_seq`, oldest first."""
        async with self._db.execute(
            "SELECT seq, msg_id, topic, payload, qos, retain FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            PendingMessage(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]), bool(r[5]))
            for r in rows
        ]

    async def acknowledge(self, seqs: Sequence[int]) -> None:
        """Delete messages the broker acknowledged."""
        if not seqs:
            return
        async with self._transaction():
            before = self._db.total_changes
            await self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
            deleted = self._db.total_changes - before
        self._depth -= deleted
        self._bump()

    @property
    def version(self) -> int:
        """Goes up on every commit and acknowledgement; pass it to `wait_changed`."""
        return self._version

    async def wait_changed(self, seen: int, timeout: float | None = None) -> None:
        """Wait until `version` differs from `seen` (or `timeout` passes)."""
        if self._version != seen:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                # shield: a waiter that times out must not cancel the future others wait on.
                await asyncio.shield(self._changed)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._tx_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                # Runs on cancellation too: the statement in flight finishes in aiosqlite's
                # thread, then the whole transaction is undone.
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            await self._db.execute("COMMIT")

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def pallet_locations(self) -> dict[str, str]:
        """Every pallet's last recorded location."""
        async with self._db.execute("SELECT sscc, location FROM pallet_location") as cursor:
            return {str(sscc): str(loc) for sscc, loc in await cursor.fetchall()}
