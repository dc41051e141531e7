"""The gateway's SQLite file: the durable outbox and the pallet location ledger.

Contract: a message is committed here (WAL, synchronous=FULL) before anything publishes it,
and it is deleted only after the broker acknowledged it. Rows are published in `seq` order;
a row the broker refuses is set aside for a later retry (`refuse`) so it does not hold up the
rows behind it. The rules engine never touches this module; the app commits what they decide.

Every transaction runs to its end even when the task that asked for it is cancelled (it runs
in a shielded task), so a cancelled commit or acknowledgement never leaves a transaction open
or the depth count wrong. SQLite failures (disk full, I/O error, locked) raise `StorageError`.

The connection lives on a thread of its own (`_Sqlite`), and each transaction or read runs
there as one function: one hand-over between the event loop and that thread per transaction,
not one per statement (the relay acknowledges and reads the outbox hundreds of times a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from gateway.domain import ResendRequest

T = TypeVar("T")

# Seqs per `IN (...)` list: SQLite bounds the variables of one statement (999 before 3.32).
_MAX_IN = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    qos        INTEGER NOT NULL DEFAULT 1,
    retain     INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,  -- refusals by the broker so far
    retry_at   REAL NOT NULL DEFAULT 0,     -- 0: in the normal stream; else when to retry
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_retry ON outbox (retry_at) WHERE retry_at > 0;
-- Messages the broker acknowledged, kept for the redelivery window: a broker that crashes
-- loses what it acknowledged since its last save, so they are published again at the next
-- connection (`Store.requeue_sent`).
CREATE TABLE IF NOT EXISTS outbox_sent (
    seq        INTEGER PRIMARY KEY,
    msg_id     TEXT NOT NULL,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    created_at REAL NOT NULL,
    acked_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_sent_acked ON outbox_sent (acked_at);
-- Transactions are numbered per topic (`Sequencing`): the stream's id (new with the file),
-- the last number given on each topic, and what was published, kept for resends.
CREATE TABLE IF NOT EXISTS sequence_stream (
    id           TEXT NOT NULL,
    announce_seq INTEGER               -- the outbox row of the announcement not yet published
);
CREATE TABLE IF NOT EXISTS sequence_last (
    topic TEXT PRIMARY KEY,            -- gw/{site}/{gateway}/tx/receive
    n     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sequence_history (
    topic      TEXT NOT NULL,
    n          INTEGER NOT NULL,
    msg_id     TEXT NOT NULL,
    payload    BLOB NOT NULL,
    qos        INTEGER NOT NULL,
    retain     INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (topic, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sequence_history_age ON sequence_history (created_at);
CREATE INDEX IF NOT EXISTS sequence_history_msg ON sequence_history (msg_id);
CREATE TABLE IF NOT EXISTS dock_ledger (
    kind       TEXT NOT NULL,              -- receive or ship
    key        TEXT NOT NULL,              -- epc:HEX, sscc:N, sgtin:GTIN.SERIAL
    reference  TEXT NOT NULL,              -- the ASN or ship order
    line       INTEGER,
    result     TEXT NOT NULL,              -- accepted (counted) or over_receipt
    tx_id      TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS dock_closed (
    reference  TEXT PRIMARY KEY,
    tx_id      TEXT NOT NULL,
    closed_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refdata (
    kind       TEXT NOT NULL,              -- asn, shipment, product, location
    key        TEXT NOT NULL,
    body       TEXT NOT NULL,              -- canonical JSON
    updated_at REAL NOT NULL,
    digest     BLOB,                       -- of the message it came in (NULL: unknown)
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS pallet_location (
    sscc       TEXT PRIMARY KEY,
    location   TEXT NOT NULL,
    tx_id      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- Start-up loads the most recently moved pallets only (files of earlier versions get it here).
CREATE INDEX IF NOT EXISTS pallet_location_updated ON pallet_location (updated_at);
CREATE TABLE IF NOT EXISTS trend_hour (
    hour       INTEGER NOT NULL,           -- UTC hour of what happened: epoch s // 3600
    kind       TEXT NOT NULL,              -- receive, ship, move, receipt, shipment, event, alarm
    code       TEXT NOT NULL,              -- '': the transactions (or notices) themselves;
                                           -- else an exception or notice code
    count      INTEGER NOT NULL,
    PRIMARY KEY (hour, kind, code)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS company_prefix (
    prefix     TEXT PRIMARY KEY            -- a GS1 company prefix an RFID tag's partition showed
);
CREATE TABLE IF NOT EXISTS pallet_lot (
    sscc       TEXT PRIMARY KEY,           -- a received pallet (AGV tasks on): its product
    gtin       TEXT NOT NULL,
    lot        TEXT,
    expiry     TEXT,                       -- ISO date
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS move_history (
    gtin       TEXT NOT NULL,              -- the moved pallet's product (AGV tasks on)
    at         REAL NOT NULL               -- when (epoch s): ABC velocity classes count these
);
CREATE INDEX IF NOT EXISTS move_history_at ON move_history (at);
CREATE TABLE IF NOT EXISTS agv_task (
    task_id    TEXT PRIMARY KEY,
    state      TEXT NOT NULL,              -- queued ... done, failed, cancelled
    body       TEXT NOT NULL,              -- the task as JSON (gateway.wire.agv.task_json)
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS agv_task_finished ON agv_task (updated_at)
    WHERE state IN ('done', 'failed', 'cancelled');
-- Pallets received at a dock door and not moved away yet: dock-to-stock time (`trend_hour`
-- kind `dock_to_stock`: code '' the pallets put away, code `seconds` their time summed).
CREATE TABLE IF NOT EXISTS pallet_received (
    sscc       TEXT PRIMARY KEY,
    door       TEXT NOT NULL,
    at         REAL NOT NULL               -- epoch s of the receive transaction
);
-- Handheld terminals' scans applied (`gateway.rules.handheld`): never applied twice.
CREATE TABLE IF NOT EXISTS handheld_scan (
    terminal   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    body       TEXT NOT NULL,              -- its result, JSON (gateway.wire.handheld)
    scanned_at REAL NOT NULL,              -- the terminal's clock
    applied_at REAL NOT NULL,              -- the gateway's: the replay window counts from it
    PRIMARY KEY (terminal, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS handheld_scan_applied ON handheld_scan (applied_at);
-- Each terminal's highest seq ever applied, never pruned: a seq up to it whose result was
-- pruned is too old, never applied again.
CREATE TABLE IF NOT EXISTS handheld_terminal (
    terminal   TEXT PRIMARY KEY,
    high_water INTEGER NOT NULL
) WITHOUT ROWID;
-- Packing (`gateway.rules.packing`): each terminal's open carton, what closed cartons hold per
-- ship order line, the next SSCC serial (never given twice), and the labels to print.
CREATE TABLE IF NOT EXISTS carton_open (
    terminal   TEXT PRIMARY KEY,
    body       TEXT NOT NULL               -- JSON (gateway.wire.packing)
);
CREATE TABLE IF NOT EXISTS pack_done (
    order_id   TEXT NOT NULL,
    line       INTEGER NOT NULL,
    packed     INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sscc_next (
    id         INTEGER PRIMARY KEY CHECK (id = 0),
    serial     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS print_job (
    job_id     TEXT PRIMARY KEY,
    station    TEXT NOT NULL,
    body       TEXT NOT NULL,              -- what the printer is sent (ZPL)
    created_at REAL NOT NULL,
    printed_at REAL                        -- NULL: still to print
);
CREATE INDEX IF NOT EXISTS print_job_pending ON print_job (station, created_at)
    WHERE printed_at IS NULL;
-- The last transactions at each door, for its live state (`gateway.ops.state`).
CREATE TABLE IF NOT EXISTS door_recent (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    door       TEXT NOT NULL,
    body       TEXT NOT NULL               -- JSON (gateway.wire.state.recent_entry)
);
CREATE INDEX IF NOT EXISTS door_recent_door ON door_recent (door, seq);
-- Retained state topics the gateway may have published (written before it publishes one,
-- deleted once the broker acknowledged its clearing): what to clear after a restart.
CREATE TABLE IF NOT EXISTS state_topic (
    topic      TEXT PRIMARY KEY
) WITHOUT ROWID;
-- Cycle counts (`gateway.rules.counts`): those open, what each saw so far, those closed (their
-- transaction is never made twice), and the cases on each received pallet (what a count of
-- the pallet's location expects).
CREATE TABLE IF NOT EXISTS count_open (
    count_id   TEXT PRIMARY KEY,
    body       TEXT NOT NULL               -- JSON: locations, opened_at, deadline, source
);
CREATE TABLE IF NOT EXISTS count_seen (
    count_id   TEXT NOT NULL,
    key        TEXT NOT NULL,              -- sscc:N, sgtin:GTIN.SERIAL or epc:HEX
    location   TEXT NOT NULL,
    PRIMARY KEY (count_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS count_closed (
    count_id   TEXT PRIMARY KEY,
    tx_id      TEXT NOT NULL,
    closed_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS count_closed_at ON count_closed (closed_at);
CREATE TABLE IF NOT EXISTS pallet_case (
    key        TEXT PRIMARY KEY,           -- sgtin:GTIN.SERIAL (or epc:HEX) of a tagged case
    sscc       TEXT NOT NULL               -- the pallet it was received on
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pallet_case_sscc ON pallet_case (sscc);
CREATE INDEX IF NOT EXISTS pallet_location_at ON pallet_location (location);
"""


def _number(
    db: sqlite3.Connection,
    numbering: Sequencing,
    stream: str,
    messages: Sequence[OutboxMessage],
    now: float,
) -> tuple[int, int, int]:
    """Insert `messages` in their order, the transactions numbered on their topics (see
    `Sequencing`; one numbered before keeps its number) and kept for resends; returns the
    outbox rows and payload bytes added, and the total of the numbers given so far (0:
    none given now)."""
    rows = size = 0
    last = {str(t): int(n) for t, n in db.execute("SELECT topic, n FROM sequence_last")}
    there: set[str] = set()  # already in the outbox (rare): not inserted again
    given: dict[str, bytes] = {}  # numbered before (a transaction committed again): as then
    for first in range(0, len(messages), _MAX_IN):
        chunk = [m.msg_id for m in messages[first : first + _MAX_IN]]
        marks = ",".join("?" * len(chunk))
        there.update(
            str(row[0])
            for row in db.execute(f"SELECT msg_id FROM outbox WHERE msg_id IN ({marks})", chunk)  # noqa: S608 - placeholders only
        )
        given.update(
            (str(row[0]), bytes(row[1]))
            for row in db.execute(
                f"SELECT msg_id, payload FROM sequence_history WHERE msg_id IN ({marks})",  # noqa: S608 - placeholders only
                chunk,
            )
        )
    rows_in: list[tuple[str, str, bytes, int, int, float]] = []
    kept: list[tuple[str, int, str, bytes, int, int, float]] = []
    for m in messages:
        if m.msg_id in there:
            continue
        there.add(m.msg_id)
        payload = m.payload
        if m.msg_id in given:  # the same transaction: the same number, the same message
            payload = given[m.msg_id]
        elif m.topic.startswith(numbering.prefix):
            n = last[m.topic] = last.get(m.topic, 0) + 1
            payload = _with_sequence(payload, stream, n)
            kept.append((m.topic, n, m.msg_id, payload, m.qos, int(m.retain), now))
        rows_in.append((m.msg_id, m.topic, payload, m.qos, int(m.retain), now))
        rows, size = rows + 1, size + len(payload)
    db.executemany(
        "INSERT INTO outbox (msg_id, topic, payload, qos, retain, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows_in,
    )
    numbered = bool(kept)
    db.executemany(
        "INSERT OR REPLACE INTO sequence_history"
        " (topic, n, msg_id, payload, qos, retain, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        kept,
    )
    db.executemany(
        "INSERT INTO sequence_last (topic, n) VALUES (?, ?)"
        " ON CONFLICT (topic) DO UPDATE SET n = excluded.n",
        [(topic, last[topic]) for topic in {k[0] for k in kept}],
    )
    # Now and then (each 500th number): what is kept stays bounded.
    if any(k[1] % 500 == 0 for k in kept):
        _prune_history(
            db, now - numbering.history_s, numbering.history_rows, numbering.history_bytes
        )
    return rows, size, sum(last.values()) if numbered else 0


def _announce(
    db: sqlite3.Connection, numbering: Sequencing, stream: str, now: float
) -> tuple[int, int, int, int]:
    """Put the announcement of the numbers given so far in the outbox, after them, replacing
    one not yet published; returns the outbox rows, payload bytes and refused rows added, and
    the numbers' total it announces."""
    rows = size = refused = 0
    # One announcement waits in the outbox at most: the last, after what it announces (one
    # the broker refused too: refused ones would pile up, and an old one overwrite a new).
    pending = db.execute("SELECT announce_seq FROM sequence_stream").fetchone()
    if pending is not None and pending[0] is not None:
        old = db.execute(
            "SELECT LENGTH(payload), retry_at FROM outbox WHERE seq = ?", (pending[0],)
        ).fetchone()
        if old is not None:
            db.execute("DELETE FROM outbox WHERE seq = ?", (pending[0],))
            rows, size = rows - 1, size - int(old[0])
            refused = -1 if old[1] else 0
    topics: dict[str, dict[str, int]] = {}
    total = 0
    for topic, last in db.execute("SELECT topic, n FROM sequence_last ORDER BY topic"):
        total += int(last)
        (first,) = db.execute(
            "SELECT MIN(n) FROM sequence_history WHERE topic = ?", (topic,)
        ).fetchone()
        key = str(topic).removeprefix(numbering.base + "/")
        topics[key] = {"first": int(first) if first is not None else int(last) + 1, "last": last}
    payload = json.dumps(
        {
            "version": 1,
            "site": numbering.site,
            "gateway": numbering.gateway,
            "stream": stream,
            "topics": topics,
            "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z"),
        },
        separators=(",", ":"),
    ).encode()
    cursor = db.execute(
        "INSERT INTO outbox (msg_id, topic, payload, qos, retain, created_at)"
        " VALUES (?, ?, ?, 1, 1, ?)",
        (f"sequence-{uuid.uuid4().hex}", numbering.announce_topic, payload, now),
    )
    db.execute("UPDATE sequence_stream SET announce_seq = ?", (cursor.lastrowid,))
    return rows + 1, size + len(payload), refused, total


def _prune_history(
    db: sqlite3.Connection, before: float, keep_rows: int, keep_bytes: int = 1 << 62
) -> int:
    """Forget numbered messages kept since before `before`, then the oldest beyond
    `keep_rows` or `keep_bytes` of payload; returns how many."""
    changed = db.total_changes
    db.execute("DELETE FROM sequence_history WHERE created_at < ?", (before,))
    rows, size = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM sequence_history"
    ).fetchone()
    over = max(0, rows - keep_rows)
    if size > keep_bytes:  # about: as if all were of the average size
        over = max(over, int(rows * (1 - keep_bytes / size)) + 1)
    if over:
        db.execute(
            "DELETE FROM sequence_history WHERE (topic, n) IN (SELECT topic, n FROM"
            " sequence_history ORDER BY created_at, n LIMIT ?)",
            (over,),
        )
    return db.total_changes - changed


def _with_sequence(payload: bytes, stream: str, n: int) -> bytes:
    """`payload` (a JSON object) with `"sequence": {"stream": stream, "n": n}` first."""
    if not payload.startswith(b"{") or payload.startswith(b"{}"):
        return payload
    head = b'{"sequence":{"stream":"' + stream.encode() + b'","n":' + str(n).encode() + b"},"
    return head + payload[1:]


def _dock_to_stock(
    db: sqlite3.Connection, move: PalletMove, at: float, trends: dict[tuple[int, str, str], int]
) -> None:
    """Note a received pallet; count the first move of one away from its door."""
    if move.received:
        db.execute(
            "INSERT INTO pallet_received (sscc, door, at) VALUES (?, ?, ?) ON CONFLICT (sscc)"
            " DO UPDATE SET door = excluded.door, at = excluded.at",
            (move.sscc, move.location, at),
        )
        return
    row = db.execute("SELECT door, at FROM pallet_received WHERE sscc = ?", (move.sscc,)).fetchone()
    if row is None or row[0] == move.location:
        return
    db.execute("DELETE FROM pallet_received WHERE sscc = ?", (move.sscc,))
    hour = int(at // 3600)
    for code, n in (("", 1), ("seconds", round(max(0.0, at - float(row[1]))))):
        trends[hour, "dock_to_stock", code] = trends.get((hour, "dock_to_stock", code), 0) + n


RECENT_PER_DOOR = 10
"""Transactions kept per door in `door_recent`."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish; `msg_id` makes a second insert of the same message a no-op."""

    msg_id: str
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Sequencing:
    """Number the messages published under `base` + `/tx/`, per topic, in one stream.

    Each such message gets `"sequence": {"stream": ..., "n": ...}` at its commit: n counts
    from 1 on each topic, and `stream` is the SQLite file's own (a new file starts again at
    1 in a new stream). `Store.announce` puts a retained announcement on `base/sequence`
    (`sequence` schema) after them: the last number of each topic and the first still
    kept; what was numbered is kept `history_s` (at most `history_rows`), so a
    consumer that finds a number missing asks for it again (`cmd/resend`, `Store.resend`).
    """

    base: str  # gw/{site}/{gateway}
    site: str
    gateway: str
    history_s: float = 86_400.0
    history_rows: int = 200_000
    history_bytes: int = 256 * 1024 * 1024

    @property
    def prefix(self) -> str:
        """What a numbered message's topic starts with."""
        return f"{self.base}/tx/"

    @property
    def announce_topic(self) -> str:
        """Where the announcement goes (retained)."""
        return f"{self.base}/sequence"


_SEQUENCE_BYTES = len(b'"sequence":{"stream":"0123456789abcdef","n":9223372036854775807},')
"""What numbering adds to a transaction's payload at most."""

RESEND_MAX = 1000
"""Messages one resend request may ask for."""


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A committed message not yet acknowledged by the broker."""

    seq: int
    msg_id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """An item a receive or ship transaction recorded."""

    kind: str
    key: str
    reference: str
    line: int | None
    result: str
    tx_id: str


@dataclass(frozen=True, slots=True)
class RefDataRow:
    """Reference data to keep (`body` JSON) or to forget (`body` None)."""

    kind: str
    key: str
    body: str | None
    digest: bytes | None = None  # of the message it came in (see `RefDataUpdate.digest`)


@dataclass(frozen=True, slots=True)
class PalletMove:
    """A pallet's new location, recorded with the transaction that moved it, at `at` (epoch s;
    0: when committed). `received`: the pallet was received at `location`, a dock door; its
    first move away from the door counts for the dock-to-stock time."""

    sscc: str
    location: str
    tx_id: str
    at: float = 0.0
    received: bool = False


@dataclass(frozen=True, slots=True)
class ClosedRow:
    """A receipt or shipment closed, by the summary transaction `tx_id`."""

    reference: str
    tx_id: str


@dataclass(frozen=True, slots=True)
class TaskRow:
    """An AGV task as it is now: its state and its JSON document."""

    task_id: str
    state: str
    body: str


@dataclass(frozen=True, slots=True)
class LotRow:
    """A received pallet's main product, lot and earliest expiry (ISO date)."""

    sscc: str
    gtin: str
    lot: str | None
    expiry: str | None


@dataclass(frozen=True, slots=True)
class MovedRow:
    """A move of a received pallet's product, at `at` (epoch s), for velocity classes."""

    gtin: str
    at: float


@dataclass(slots=True)
class StateChanges:
    """What one batch of decisions changes besides the outbox, committed with its messages.

    `moves`: pallet locations; `ledger`: items received or shipped; `closed`: receipts and
    shipments closed; `refdata`: reference data kept or forgotten; `tasks`: AGV tasks as they
    are now (the last change of a task in the batch wins); `shipped`: pallets (SSCCs) that left
    the building, whose recorded location and lot are forgotten; `lots`: received pallets'
    product, lot and expiry; `moved`: moves of received pallets, for velocity classes;
    `prefixes`: GS1 company prefixes RFID tags showed (for EPC URIs); `trends`: what the batch
    publishes, counted per (UTC hour, kind, code) (`gateway.recorder.trend_counts`); `recent`:
    (door, JSON) of each dock transaction, the last `RECENT_PER_DOOR` of a door kept;
    `handheld`: (terminal, seq, result JSON, scanned_at) of each handheld scan applied;
    `counts_opened`, `count_seen`, `counts_closed`: cycle counts (a closed one's rows go);
    `cases`, `cases_gone`: tagged cases on received pallets. A pallet in `shipped` (shipped,
    or missing at a count) takes its cases with it.
    """

    moves: list[PalletMove] = field(default_factory=list)
    ledger: list[LedgerRow] = field(default_factory=list)
    closed: list[ClosedRow] = field(default_factory=list)
    refdata: list[RefDataRow] = field(default_factory=list)
    tasks: dict[str, TaskRow] = field(default_factory=dict)
    shipped: list[str] = field(default_factory=list)
    lots: list[LotRow] = field(default_factory=list)
    moved: list[MovedRow] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)
    trends: dict[tuple[int, str, str], int] = field(default_factory=dict)
    recent: list[tuple[str, str]] = field(default_factory=list)
    handheld: list[tuple[str, int, str, float]] = field(default_factory=list)
    cartons: dict[str, str | None] = field(default_factory=dict)  # terminal -> JSON (None: closed)
    packed: dict[tuple[str, int], int] = field(default_factory=dict)  # (order, line) -> more packed
    sscc_next: int | None = None
    print_jobs: list[tuple[str, str, str]] = field(default_factory=list)  # job id, station, body
    counts_opened: list[tuple[str, str]] = field(default_factory=list)  # count id, JSON
    count_seen: list[tuple[str, str, str]] = field(default_factory=list)  # count, key, location
    counts_closed: list[tuple[str, str]] = field(default_factory=list)  # count id, tx id
    cases: list[tuple[str, str]] = field(default_factory=list)  # case key, its pallet's SSCC
    cases_gone: list[str] = field(default_factory=list)  # case keys no longer on their pallet
    left: list[str] = field(default_factory=list)  # pallets another gateway has seen since

    def __bool__(self) -> bool:
        return any(
            (
                self.moves,
                self.ledger,
                self.closed,
                self.refdata,
                self.tasks,
                self.shipped,
                self.lots,
                self.moved,
                self.prefixes,
                self.trends,
                self.recent,
                self.handheld,
                self.cartons,
                self.packed,
                self.sscc_next is not None,
                self.print_jobs,
                self.counts_opened,
                self.count_seen,
                self.counts_closed,
                self.cases,
                self.cases_gone,
                self.left,
            )
        )


class OutboxFull(Exception):
    """The outbox reached its size limit; nothing more is taken until the broker drains it."""


class StorageError(Exception):
    """The SQLite file failed (disk full, I/O error, locked); the operation did not happen."""


class _Sqlite:
    """One sqlite3 connection, used on its own thread only: `call(fn)` runs `fn(connection)`
    there, so a whole transaction costs one hand-over between the event loop and the thread.
    Calls run one at a time, in the order they were made."""

    def __init__(self, connection: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._connection = connection
        self._thread = thread
        self._closed = False

    @classmethod
    async def connect(cls, path: Path) -> _Sqlite:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-sqlite")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(
                thread, functools.partial(sqlite3.connect, path, isolation_level=None)
            )
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(connection, thread)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the connection's thread; StorageError after `close`."""
        if self._closed:
            raise StorageError("the database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, self._connection)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement, its rows (if any) discarded (PRAGMAs, maintenance, tests)."""
        await self.call(lambda db: db.execute(sql, params).close())

    async def close(self) -> None:
        """Close the connection and end its thread; again: nothing."""
        if self._closed:
            return
        try:
            await self.call(lambda db: db.close())
        finally:
            self._closed = True
            self._thread.shutdown(wait=False)


class Store:
    """The SQLite file behind the gateway. Open it with `await Store.open(path)`."""

    def __init__(self, db: _Sqlite, *, max_rows: int, depth: int, refused: int) -> None:
        self._db = db
        self.max_rows = max_rows
        self.max_bytes = 256 * 1024 * 1024  # payload bytes (`open` sets it)
        self._bytes = 0
        self._depth = depth
        self._refused = refused
        # Resolved and replaced on every change: any number of tasks can wait on it.
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._version = 0
        # One connection, several tasks (rules runner, relay): a transaction is one call on
        # the connection's thread, so transactions run one at a time, in order, and no read
        # comes in the middle of one.
        self._running: set[asyncio.Task[Any]] = set()
        self._sequencing: Sequencing | None = None
        self._stream = ""
        self._numbered = 0  # the total of the numbers given, as of the last commit
        self._announced = 0  # ... as of the last announcement

    @classmethod
    async def open(
        cls, path: Path, *, max_rows: int = 100_000, max_bytes: int = 256 * 1024 * 1024
    ) -> Self:
        """Open (or create) the file, in WAL mode with full fsync on commit."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # A new file is readable by the gateway's user only (SQLite gives its WAL and
            # shared-memory files the database file's permissions).
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            db = await _Sqlite.connect(path)
        except (OSError, sqlite3.Error) as err:
            raise StorageError(f"cannot open {path}: {err}") from err

        def prepare(db: sqlite3.Connection) -> tuple[int, int, int]:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            columns = {str(row[1]) for row in db.execute("PRAGMA table_info(refdata)")}
            if "digest" not in columns:  # a file of an earlier version
                db.execute("ALTER TABLE refdata ADD COLUMN digest BLOB")
            row = db.execute(
                "SELECT COUNT(*), COUNT(NULLIF(retry_at, 0)), COALESCE(SUM(LENGTH(payload)), 0)"
                " FROM outbox"
            ).fetchone()
            return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

        try:
            depth, refused, size = await db.call(prepare)
        except sqlite3.Error as err:
            await db.close()
            raise StorageError(f"cannot prepare {path}: {err}") from err
        store = cls(db, max_rows=max_rows, depth=depth, refused=refused)
        store.max_bytes, store._bytes = max_bytes, size
        return store

    async def close(self) -> None:
        """Let running transactions finish, then close the file."""
        if self._running:
            await asyncio.wait(self._running)
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
        """Messages committed and not yet acknowledged (refused ones included)."""
        return self._depth

    @property
    def refused(self) -> int:
        """Messages the broker refused, waiting for a retry."""
        return self._refused

    async def oldest_age_s(self) -> float | None:
        """How long the oldest message in the outbox has waited (None: the outbox is empty)."""

        def oldest(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
            return None if row is None or row[0] is None else float(row[0])

        created = await self._db.call(oldest)
        return None if created is None else max(0.0, time.time() - created)

    @property
    def size(self) -> int:
        """Payload bytes of the messages committed and not yet acknowledged."""
        return self._bytes

    def room(self) -> int:
        """How many more messages fit before the row limit."""
        return max(0, self.max_rows - self._depth)

    def fits(self, messages: Sequence[OutboxMessage]) -> bool:
        """Whether `messages` fit under both limits: rows and payload bytes (with the
        `sequence` a transaction gets at its commit)."""
        size = sum(len(m.payload) for m in messages)
        numbering = self._sequencing
        if numbering is not None:
            size += _SEQUENCE_BYTES * sum(m.topic.startswith(numbering.prefix) for m in messages)
        return len(messages) <= self.room() and self._bytes + size <= self.max_bytes

    def fill(self) -> float:
        """How full the outbox is: the larger share of its row and byte limits."""
        return max(self._depth / self.max_rows, self._bytes / self.max_bytes)

    async def commit(
        self,
        messages: Sequence[OutboxMessage],
        changes: StateChanges | None = None,
        *,
        over_limit: bool = False,
    ) -> int:
        """Commit messages with the state they record, in one transaction; returns rows inserted.

        Raises `OutboxFull` (and commits nothing) when the messages do not fit (rows or bytes),
        unless `over_limit` (a stop keeps what was read: the limits may then be exceeded).
        """
        state = changes or StateChanges()
        if not over_limit and not self.fits(messages):
            raise OutboxFull(
                f"outbox holds {self._depth} of {self.max_rows} messages,"
                f" {self._bytes} of {self.max_bytes} bytes"
            )
        now = time.time()
        numbering = self._sequencing
        if numbering is not None and not any(
            m.topic.startswith(numbering.prefix) for m in messages
        ):
            numbering = None  # nothing to number: the plain way
        plain = messages if numbering is None else ()

        def body(db: sqlite3.Connection) -> tuple[int, int | None, int, int]:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO outbox (msg_id, topic, payload, qos, retain, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(m.msg_id, m.topic, m.payload, m.qos, int(m.retain), now) for m in plain],
            )
            inserted = db.total_changes - before
            total: int | None = None
            if inserted != len(plain):  # some were there already (rare): count them all
                summed = db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
                total = int(summed.fetchone()[0])
            added = grown = numbers = 0
            if numbering is not None:
                added, grown, numbers = _number(db, numbering, self._stream, messages, now)
            db.executemany(
                "INSERT INTO pallet_location (sscc, location, tx_id, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (sscc) DO UPDATE SET"
                " location = excluded.location, tx_id = excluded.tx_id,"
                " updated_at = excluded.updated_at",
                [(m.sscc, m.location, m.tx_id, m.at or now) for m in state.moves],
            )
            db.executemany(
                "INSERT OR IGNORE INTO dock_ledger"
                " (kind, key, reference, line, result, tx_id, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.kind, r.key, r.reference, r.line, r.result, r.tx_id, now)
                    for r in state.ledger
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO dock_closed (reference, tx_id, closed_at) VALUES (?, ?, ?)",
                [(c.reference, c.tx_id, now) for c in state.closed],
            )
            db.executemany(
                "INSERT INTO pallet_lot (sscc, gtin, lot, expiry, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (sscc) DO UPDATE SET gtin = excluded.gtin, lot = excluded.lot,"
                " expiry = excluded.expiry, updated_at = excluded.updated_at",
                [(r.sscc, r.gtin, r.lot, r.expiry, now) for r in state.lots],
            )
            db.executemany(
                "INSERT INTO move_history (gtin, at) VALUES (?, ?)",
                [(m.gtin, m.at) for m in state.moved],
            )
            db.executemany(
                "INSERT OR IGNORE INTO company_prefix (prefix) VALUES (?)",
                [(prefix,) for prefix in sorted(state.prefixes)],
            )
            trends = dict(state.trends)
            for m in state.moves:
                _dock_to_stock(db, m, m.at or now, trends)
            db.executemany(
                "INSERT INTO trend_hour (hour, kind, code, count) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (hour, kind, code) DO UPDATE SET count = count + excluded.count",
                [(*key, n) for key, n in trends.items()],
            )
            db.executemany("INSERT INTO door_recent (door, body) VALUES (?, ?)", state.recent)
            db.executemany(
                "INSERT OR IGNORE INTO handheld_scan (terminal, seq, body, scanned_at, applied_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(*row, now) for row in state.handheld],
            )
            db.executemany(
                "INSERT INTO handheld_terminal (terminal, high_water) VALUES (?, ?)"
                " ON CONFLICT (terminal) DO UPDATE SET"
                " high_water = MAX(high_water, excluded.high_water)",
                [(terminal, seq) for terminal, seq, _body, _at in state.handheld],
            )
            for terminal, carton in state.cartons.items():
                if carton is None:
                    db.execute("DELETE FROM carton_open WHERE terminal = ?", (terminal,))
                else:
                    db.execute(
                        "INSERT INTO carton_open (terminal, body) VALUES (?, ?)"
                        " ON CONFLICT (terminal) DO UPDATE SET body = excluded.body",
                        (terminal, carton),
                    )
            db.executemany(
                "INSERT INTO pack_done (order_id, line, packed) VALUES (?, ?, ?)"
                " ON CONFLICT (order_id, line) DO UPDATE SET packed = packed + excluded.packed",
                [(order, line, n) for (order, line), n in state.packed.items()],
            )
            if state.sscc_next is not None:
                db.execute(
                    "INSERT INTO sscc_next (id, serial) VALUES (0, ?)"
                    " ON CONFLICT (id) DO UPDATE SET serial = MAX(serial, excluded.serial)",
                    (state.sscc_next,),
                )
            db.executemany(
                "INSERT OR IGNORE INTO print_job (job_id, station, body, created_at)"
                " VALUES (?, ?, ?, ?)",
                [(job, station, body, now) for job, station, body in state.print_jobs],
            )
            for door in {door for door, _ in state.recent}:
                db.execute(
                    "DELETE FROM door_recent WHERE door = ? AND seq NOT IN"
                    " (SELECT seq FROM door_recent WHERE door = ? ORDER BY seq DESC LIMIT ?)",
                    (door, door, RECENT_PER_DOOR),
                )
            gone = [(sscc,) for sscc in state.shipped]
            db.executemany("DELETE FROM pallet_location WHERE sscc = ?", gone)
            db.executemany("DELETE FROM pallet_received WHERE sscc = ?", gone)
            db.executemany("DELETE FROM pallet_lot WHERE sscc = ?", gone)
            db.executemany("DELETE FROM pallet_case WHERE sscc = ?", gone)
            # Pallets another gateway of the site has seen since, elsewhere: no longer here.
            left = [(sscc,) for sscc in state.left]
            db.executemany("DELETE FROM pallet_location WHERE sscc = ?", left)
            db.executemany("DELETE FROM pallet_received WHERE sscc = ?", left)
            db.executemany(
                "INSERT INTO pallet_case (key, sscc) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET sscc = excluded.sscc",
                state.cases,
            )
            db.executemany(
                "DELETE FROM pallet_case WHERE key = ?", [(k,) for k in state.cases_gone]
            )
            db.executemany(
                "INSERT OR IGNORE INTO count_open (count_id, body) VALUES (?, ?)",
                state.counts_opened,
            )
            db.executemany(
                "INSERT INTO count_seen (count_id, key, location) VALUES (?, ?, ?)"
                " ON CONFLICT (count_id, key) DO UPDATE SET location = excluded.location",
                state.count_seen,
            )
            for count_id, tx_id in state.counts_closed:
                db.execute("DELETE FROM count_open WHERE count_id = ?", (count_id,))
                db.execute("DELETE FROM count_seen WHERE count_id = ?", (count_id,))
                db.execute(
                    "INSERT OR IGNORE INTO count_closed (count_id, tx_id, closed_at)"
                    " VALUES (?, ?, ?)",
                    (count_id, tx_id, now),
                )
            db.executemany(
                "INSERT INTO agv_task (task_id, state, body, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET state = excluded.state,"
                " body = excluded.body, updated_at = excluded.updated_at",
                [(t.task_id, t.state, t.body, now) for t in state.tasks.values()],
            )
            for row in state.refdata:
                if row.body is None:
                    db.execute(
                        "DELETE FROM refdata WHERE kind = ? AND key = ?", (row.kind, row.key)
                    )
                else:
                    db.execute(
                        "INSERT INTO refdata (kind, key, body, digest, updated_at)"
                        " VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body,"
                        " digest = excluded.digest, updated_at = excluded.updated_at",
                        (row.kind, row.key, row.body, row.digest, now),
                    )
            return inserted + added, None if total is None else total + grown, grown, numbers

        size = sum(len(m.payload) for m in plain)

        def done(result: tuple[int, int | None, int, int]) -> None:
            inserted, total, grown, numbers = result
            self._depth += inserted
            self._numbered = max(self._numbered, numbers)
            self._bytes = self._bytes + size + grown if total is None else total

        inserted, _total, _grown, _numbers = await self._transaction(body, done)
        return inserted

    async def number(self, sequencing: Sequencing) -> str:
        """Number the transactions committed from now on (see `Sequencing`); returns the
        stream's id, made with the file and kept in it."""

        def body(db: sqlite3.Connection) -> tuple[str, int]:
            (given,) = db.execute("SELECT COALESCE(SUM(n), 0) FROM sequence_last").fetchone()
            row = db.execute("SELECT id FROM sequence_stream").fetchone()
            if row is not None:
                return str(row[0]), int(given)
            stream = uuid.uuid4().hex[:16]
            db.execute("INSERT INTO sequence_stream (id) VALUES (?)", (stream,))
            return stream, int(given)

        self._stream, self._numbered = await self._transaction(body, lambda _: None)
        self._announced = 0  # what was given before the last stop is announced again at once
        self._sequencing = sequencing
        return self._stream

    async def announce(self) -> bool:
        """Announce the numbers given since the last announcement, if any (`Sequencing`);
        True if it did. The rules runner calls it at most once a second: an announcement
        after every commit would double what goes to the broker, and make every commit a
        retained message's."""
        numbering = self._sequencing
        if numbering is None or self._numbered <= self._announced:
            return False
        stream, now = self._stream, time.time()

        def body(db: sqlite3.Connection) -> tuple[int, int, int, int]:
            return _announce(db, numbering, stream, now)

        def done(result: tuple[int, int, int, int]) -> None:
            rows, size, refused, total = result
            self._depth += rows
            self._bytes += size
            self._refused += refused
            self._announced = max(self._announced, total)

        await self._transaction(body, done)
        return True

    @property
    def stream(self) -> str:
        """The id of the stream this file numbers transactions in ("" before `number`)."""
        return self._stream

    async def resend(self, request: ResendRequest) -> int:
        """Publish again the numbered messages `first` to `last` (at most `RESEND_MAX`) of
        `topic` (under the base: "tx/receive") that are still kept; returns how many were
        queued (one still in the outbox is not queued twice; none for another stream: a
        replaced file's numbers are not this gateway's to give again). Raises `OutboxFull`
        when they do not fit."""
        numbering = self._sequencing
        topic, first, last = request.topic, request.first, request.last
        if numbering is None or last < first:
            return 0
        if request.stream != self._stream:
            return 0
        last = min(last, first + RESEND_MAX - 1)
        full = f"{numbering.base}/{topic}"
        rows = await self._fetch(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM sequence_history"
            " WHERE topic = ? AND n BETWEEN ? AND ?",
            (full, first, last),
        )
        count, size = int(rows[0][0]), int(rows[0][1])
        if count == 0:
            return 0
        if self._depth + count > self.max_rows or self._bytes + size > self.max_bytes:
            raise OutboxFull(f"a resend of {count} messages does not fit in the outbox")
        now = time.time()

        return await self._into_outbox(
            "INSERT OR IGNORE INTO outbox (msg_id, topic, payload, qos, retain, created_at)"
            " SELECT msg_id, topic, payload, qos, retain, ? FROM sequence_history"
            " WHERE topic = ? AND n BETWEEN ? AND ? ORDER BY n",
            (now, full, first, last),
        )

    async def _into_outbox(
        self, insert: str, params: Sequence[Any], *, then: str | None = None
    ) -> int:
        """Run `insert` (an INSERT ... SELECT into the outbox), then `then`, in one
        transaction; the outbox's depth and bytes follow. Returns the rows it added."""

        def body(db: sqlite3.Connection) -> tuple[int, int]:
            before = db.total_changes
            db.execute(insert, params)
            moved = db.total_changes - before
            if then is not None:
                db.execute(then)
            row = db.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
            return moved, int(row[0])

        def done(result: tuple[int, int]) -> None:
            moved, total = result
            self._depth += moved
            self._bytes = total

        moved, _total = await self._transaction(body, done)
        return moved

    async def prune_sequence_history(
        self, *, before: float, keep_rows: int, keep_bytes: int = 1 << 62
    ) -> int:
        """Forget numbered messages kept since before `before`, and the oldest beyond
        `keep_rows`; returns how many."""

        def body(db: sqlite3.Connection) -> int:
            return _prune_history(db, before, keep_rows, keep_bytes)

        return await self._transaction(body, lambda _: None)

    async def pending(self, *, after_seq: int = 0, limit: int = 500) -> list[PendingMessage]:
        """Unacknowledged messages of the normal stream after `after_seq`, oldest first."""
        return await self._select(
            "SELECT seq, msg_id, topic, payload, qos, retain, attempts FROM outbox"
            " WHERE seq > ? AND retry_at = 0 ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )

    async def due_retries(self, *, now: float, limit: int = 100) -> list[PendingMessage]:
        """Refused messages whose retry time has come, oldest first."""
        return await self._select(
            "SELECT seq, msg_id, topic, payload, qos, retain, attempts FROM outbox"
            " WHERE retry_at > 0 AND retry_at <= ? ORDER BY seq LIMIT ?",
            (now, limit),
        )

    async def acknowledge(self, seqs: Sequence[int], *, keep_s: float = 0.0) -> None:
        """Take messages the broker acknowledged out of the outbox; with `keep_s`, keep them
        that long among the sent ones (`requeue_sent`), and forget older sent ones."""
        if not seqs:
            return
        now = time.time()

        def body(db: sqlite3.Connection) -> tuple[int, int, int]:
            # What a crashed broker may have lost: the last `keep_s` before the last
            # acknowledgement (so a broker down for long still gets it again).
            db.execute("DELETE FROM outbox_sent WHERE acked_at < ?", (now - keep_s,))
            deleted = refused = size = 0
            for first in range(0, len(seqs), _MAX_IN):  # SQLite bounds a statement's variables
                chunk = list(seqs[first : first + _MAX_IN])
                placeholders = ",".join("?" * len(chunk))
                row = db.execute(
                    "SELECT COUNT(NULLIF(retry_at, 0)), COALESCE(SUM(LENGTH(payload)), 0)"  # noqa: S608 - placeholders only
                    f" FROM outbox WHERE seq IN ({placeholders})",
                    chunk,
                ).fetchone()
                refused, size = refused + int(row[0]), size + int(row[1])
                if keep_s > 0:
                    db.execute(
                        "INSERT OR REPLACE INTO outbox_sent"  # noqa: S608 - placeholders only
                        " (seq, msg_id, topic, payload, qos, retain, created_at, acked_at)"
                        " SELECT seq, msg_id, topic, payload, qos, retain, created_at, ? FROM outbox"
                        f" WHERE seq IN ({placeholders})",
                        [now, *chunk],
                    )
                before = db.total_changes
                db.execute(f"DELETE FROM outbox WHERE seq IN ({placeholders})", chunk)  # noqa: S608 - placeholders only
                deleted += db.total_changes - before
            return deleted, refused, size

        def done(result: tuple[int, int, int]) -> None:
            deleted, were_refused, size = result
            self._depth -= deleted
            self._refused -= were_refused
            self._bytes -= size

        await self._transaction(body, done)

    async def requeue_sent(self, *, within_s: float) -> int:
        """Put the messages the broker acknowledged within `within_s` before its last
        acknowledgement back in the outbox, in their order (a broker that crashed may have lost
        them, however long it then stayed down); returns how many."""
        return await self._into_outbox(
            "INSERT OR IGNORE INTO outbox (seq, msg_id, topic, payload, qos, retain, created_at)"
            " SELECT seq, msg_id, topic, payload, qos, retain, created_at FROM outbox_sent"
            " WHERE acked_at >= (SELECT MAX(acked_at) FROM outbox_sent) - ?",
            (within_s,),
            then="DELETE FROM outbox_sent",
        )

    async def forget_sent(self) -> None:
        """Forget the acknowledged messages kept for redelivery (a clean disconnect)."""

        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM outbox_sent")

        await self._transaction(body, lambda _: None)

    async def refuse(self, seq: int, *, reason: str, retry_at: float) -> None:
        """Set a refused message aside until `retry_at`; the rest of the stream goes on."""

        def body(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT retry_at FROM outbox WHERE seq = ?", (seq,)).fetchone()
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, retry_at = ?, last_error = ?"
                " WHERE seq = ?",
                (retry_at, reason, seq),
            )
            return 1 if row is not None and row[0] == 0 else 0

        def done(newly_refused: int) -> None:
            self._refused += newly_refused

        await self._transaction(body, done)

    async def dock_ledger(self) -> list[LedgerRow]:
        """Every item received or shipped, as recorded."""
        rows = await self._fetch(
            "SELECT kind, key, reference, line, result, tx_id FROM dock_ledger ORDER BY rowid"
        )
        return [
            LedgerRow(
                str(k), str(key), str(r), None if line is None else int(line), str(res), str(t)
            )
            for k, key, r, line, res, t in rows
        ]

    async def prune_dock_history(self, *, closed_before: float) -> int:
        """Forget receipts and shipments closed before `closed_before` (epoch s), and their
        items; returns the items forgotten. Bounds the ledger of a gateway that runs for years."""

        def body(db: sqlite3.Connection) -> int:
            before = db.total_changes
            db.execute(
                "DELETE FROM dock_ledger WHERE reference IN"
                " (SELECT reference FROM dock_closed WHERE closed_at < ?)",
                (closed_before,),
            )
            items = db.total_changes - before
            db.execute("DELETE FROM dock_closed WHERE closed_at < ?", (closed_before,))
            return items

        return await self._transaction(body, lambda _: None)

    async def closed_references(self) -> set[str]:
        """Receipts and shipments already closed."""
        return {str(r[0]) for r in await self._fetch("SELECT reference FROM dock_closed")}

    async def learned_prefixes(self) -> set[str]:
        """The GS1 company prefixes RFID tags showed (one per supplier)."""
        rows = await self._fetch("SELECT prefix FROM company_prefix")
        return {str(prefix) for (prefix,) in rows}

    async def reference_digests(self) -> list[tuple[str, str, bytes]]:
        """(kind, key, digest) of the reference data kept with the digest of its message."""
        rows = await self._fetch("SELECT kind, key, digest FROM refdata WHERE digest IS NOT NULL")
        return [(str(k), str(key), bytes(d)) for k, key, d in rows]

    async def reference_data(self) -> list[RefDataRow]:
        """Reference data kept from the WMS."""
        rows = await self._fetch("SELECT kind, key, body, digest FROM refdata ORDER BY updated_at")
        return [
            RefDataRow(str(k), str(key), str(b), None if d is None else bytes(d))
            for k, key, b, d in rows
        ]

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return db.execute(sql, params).fetchall()

        try:
            return await self._db.call(read)
        except sqlite3.Error as err:
            raise StorageError(f"cannot read: {err}") from err

    async def agv_tasks(self, *, finished: int = 10_000) -> list[str]:
        """The stored AGV tasks (JSON): every open one and the last `finished` finished ones."""
        rows = await self._fetch(
            "SELECT body FROM agv_task WHERE state NOT IN ('done', 'failed', 'cancelled')"
            " UNION ALL SELECT body FROM (SELECT body FROM agv_task"
            " WHERE state IN ('done', 'failed', 'cancelled') ORDER BY updated_at DESC LIMIT ?)",
            (finished,),
        )
        return [str(body) for (body,) in rows]

    async def pallet_lots(self) -> list[tuple[str, str, str | None, str | None]]:
        """Received pallets' (sscc, gtin, lot, ISO expiry), oldest first."""
        rows = await self._fetch(
            "SELECT sscc, gtin, lot, expiry FROM pallet_lot ORDER BY updated_at"
        )
        return [(str(a), str(b), c, d) for a, b, c, d in rows]

    async def recent_moves(self, *, since: float) -> list[tuple[str, float]]:
        """Moves (gtin, epoch s) since `since`, oldest first; older ones are deleted."""

        def prune(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM move_history WHERE at < ?", (since,)).rowcount

        await self._transaction(prune, lambda _: None)
        rows = await self._fetch("SELECT gtin, at FROM move_history ORDER BY at")
        return [(str(gtin), float(at)) for gtin, at in rows]

    async def trends(self, *, since: float, until: float) -> list[tuple[int, str, str, int]]:
        """The hourly counts from `since` to before `until` (epoch s): (hour, kind, code, n)."""
        rows = await self._fetch(
            "SELECT hour, kind, code, count FROM trend_hour WHERE hour >= ? AND hour < ?"
            " ORDER BY hour, kind, code",
            (int(since // 3600), int(-(-until // 3600))),
        )
        return [(int(h), str(k), str(c), int(n)) for h, k, c, n in rows]

    async def door_recent(self) -> dict[str, list[str]]:
        """The last transactions kept per door (JSON), oldest first."""
        rows = await self._fetch("SELECT door, body FROM door_recent ORDER BY seq")
        out: dict[str, list[str]] = {}
        for door, body in rows:
            out.setdefault(str(door), []).append(str(body))
        return out

    async def handheld_scans(self, *, since: float) -> tuple[list[tuple[str, str]], dict[str, int]]:
        """Handheld scans applied (terminal, result JSON), oldest seq first per terminal, and
        each terminal's highest seq ever applied; results applied before `since` (epoch s, the
        gateway's clock) are deleted first (the replay window)."""

        def prune(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM handheld_scan WHERE applied_at < ?", (since,)).rowcount

        await self._transaction(prune, lambda _: None)
        rows = await self._fetch("SELECT terminal, body FROM handheld_scan ORDER BY terminal, seq")
        marks = await self._fetch("SELECT terminal, high_water FROM handheld_terminal")
        return [(str(t), str(b)) for t, b in rows], {str(t): int(m) for t, m in marks}

    async def packing(self) -> tuple[dict[str, str], dict[tuple[str, int], int], int | None]:
        """Open cartons (terminal -> JSON), what closed ones hold per (order, line), and the
        next SSCC serial (None: none given yet)."""
        cartons = await self._fetch("SELECT terminal, body FROM carton_open")
        packed = await self._fetch("SELECT order_id, line, packed FROM pack_done")
        serial = await self._fetch("SELECT serial FROM sscc_next")
        return (
            {str(t): str(b) for t, b in cartons},
            {(str(o), int(ln)): int(n) for o, ln, n in packed},
            int(serial[0][0]) if serial else None,
        )

    async def print_jobs(self) -> list[tuple[str, str, str]]:
        """Labels still to print (job id, station, body), oldest first."""
        rows = await self._fetch(
            "SELECT job_id, station, body FROM print_job WHERE printed_at IS NULL"
            " ORDER BY created_at, job_id"
        )
        return [(str(j), str(s), str(b)) for j, s, b in rows]

    async def prune_print_jobs(self, *, printed_before: float) -> int:
        """Forget labels printed before `printed_before` (epoch s); those not printed stay."""

        def body(db: sqlite3.Connection) -> int:
            sql = "DELETE FROM print_job WHERE printed_at IS NOT NULL AND printed_at < ?"
            return db.execute(sql, (printed_before,)).rowcount

        return await self._transaction(body, lambda _: None)

    async def printed(self, job_id: str) -> None:
        """A printer took the label."""

        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE print_job SET printed_at = ? WHERE job_id = ? AND printed_at IS NULL",
                (time.time(), job_id),
            )

        await self._transaction(body, lambda _: None)

    async def state_topics(self) -> set[str]:
        """The retained state topics the gateway may have published and not cleared."""
        return {str(topic) for (topic,) in await self._fetch("SELECT topic FROM state_topic")}

    async def add_state_topics(self, topics: Iterable[str]) -> None:
        """Note topics about to be published retained (before publishing them)."""
        rows = [(t,) for t in topics]

        def body(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO state_topic (topic) VALUES (?)", rows)

        await self._transaction(body, lambda _: None)

    async def forget_state_topics(self, topics: Iterable[str]) -> None:
        """Forget topics whose clearing (an empty retained message) the broker acknowledged."""
        rows = [(t,) for t in topics]

        def body(db: sqlite3.Connection) -> None:
            db.executemany("DELETE FROM state_topic WHERE topic = ?", rows)

        await self._transaction(body, lambda _: None)

    async def prune_trends(self, *, before: float) -> int:
        """Forget the hourly counts of hours that ended before `before` (epoch s)."""

        def body(db: sqlite3.Connection) -> int:
            cursor = db.execute("DELETE FROM trend_hour WHERE hour < ?", (int(before // 3600),))
            return cursor.rowcount

        return await self._transaction(body, lambda _: None)

    async def prune_agv_tasks(self, *, older_than_s: float) -> int:
        """Forget finished AGV tasks last changed more than `older_than_s` ago."""
        cutoff = time.time() - older_than_s

        def body(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "DELETE FROM agv_task WHERE state IN ('done', 'failed', 'cancelled')"
                " AND updated_at < ?",
                (cutoff,),
            )
            return cursor.rowcount

        return await self._transaction(body, lambda _: None)

    async def pallet_locations(self, *, limit: int | None = None) -> dict[str, str]:
        """Pallets' last recorded locations, oldest move first: the `limit` moved most recently
        (None: every pallet)."""
        rows = await self._fetch(
            "SELECT sscc, location FROM pallet_location ORDER BY updated_at DESC LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return {str(sscc): str(loc) for sscc, loc in reversed(rows)}

    async def open_counts(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """Counts open at the last stop: (count id, JSON, [(key, location) seen])."""

        def read(db: sqlite3.Connection) -> list[tuple[str, str, list[tuple[str, str]]]]:
            out = []
            for count_id, body in db.execute("SELECT count_id, body FROM count_open").fetchall():
                seen = db.execute(
                    "SELECT key, location FROM count_seen WHERE count_id = ?", (count_id,)
                ).fetchall()
                out.append((str(count_id), str(body), [(str(k), str(loc)) for k, loc in seen]))
            return out

        try:
            return await self._db.call(read)
        except sqlite3.Error as err:
            raise StorageError(f"cannot read the open counts: {err}") from err

    async def closed_counts(self, *, limit: int) -> list[tuple[str, str]]:
        """The last `limit` counts closed: (count id, tx id), oldest first."""
        rows = await self._fetch(
            "SELECT count_id, tx_id FROM count_closed ORDER BY closed_at DESC LIMIT ?", (limit,)
        )
        return [(str(c), str(t)) for c, t in reversed(rows)]

    async def prune_closed_counts(self, *, keep: int) -> int:
        """Forget all but the last `keep` closed counts; returns how many went."""
        rows = await self._fetch(
            "SELECT closed_at FROM count_closed ORDER BY closed_at DESC LIMIT 1 OFFSET ?", (keep,)
        )
        if not rows:
            return 0

        def delete(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM count_closed WHERE closed_at <= ?", rows[0]).rowcount

        return await self._transaction(delete, lambda _n: None)

    async def count_stock(self, locations: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
        """The recorded stock a count is compared with: key -> location of every pallet at
        `locations` and of every case on those pallets, and of those of `keys` recorded
        anywhere (a case is where its pallet is)."""
        places = sorted(set(locations))
        wanted = sorted(set(keys))
        pallets = [k.removeprefix("sscc:") for k in wanted if k.startswith("sscc:")]
        cases = [k for k in wanted if not k.startswith("sscc:")]
        by_pallet = "SELECT 'sscc:' || sscc, location FROM pallet_location WHERE {} IN ({})"
        by_case = (
            "SELECT c.key, p.location FROM pallet_case c JOIN pallet_location p"
            " ON p.sscc = c.sscc WHERE {} IN ({})"
        )
        queries = [
            (by_pallet, "location", places),
            (by_case, "p.location", places),
            (by_pallet, "sscc", pallets),
            (by_case, "c.key", cases),
        ]

        def read(db: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for sql, column, values in queries:
                for first in range(0, len(values), _MAX_IN):  # SQLite bounds the variables
                    chunk = values[first : first + _MAX_IN]
                    rows = db.execute(sql.format(column, ",".join("?" * len(chunk))), chunk)
                    out.update((str(key), str(where)) for key, where in rows)
            return out

        try:
            return await self._db.call(read)
        except sqlite3.Error as err:
            raise StorageError(f"cannot read the stock a count is compared with: {err}") from err

    async def pallet_times(self, ssccs: Iterable[str]) -> dict[str, tuple[str, float]]:
        """Where these pallets are recorded and since when (epoch s, event time): those known."""
        wanted = sorted(set(ssccs))

        def read(db: sqlite3.Connection) -> dict[str, tuple[str, float]]:
            out: dict[str, tuple[str, float]] = {}
            for first in range(0, len(wanted), _MAX_IN):
                chunk = wanted[first : first + _MAX_IN]
                marks = ",".join("?" * len(chunk))
                for sscc, where, at in db.execute(
                    "SELECT sscc, location, updated_at FROM pallet_location"  # noqa: S608 - placeholders only
                    f" WHERE sscc IN ({marks})",
                    chunk,
                ):
                    out[str(sscc)] = (str(where), float(at))
            return out

        try:
            return await self._db.call(read)
        except sqlite3.Error as err:
            raise StorageError(f"cannot read pallets' locations: {err}") from err

    async def pallet_places(self, *, limit: int) -> dict[str, tuple[str, float]]:
        """The `limit` most recently moved pallets: sscc -> (location, since), oldest first."""
        rows = await self._fetch(
            "SELECT sscc, location, updated_at FROM pallet_location"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return {str(s): (str(loc), float(at)) for s, loc, at in reversed(rows)}

    async def pallet_location(self, sscc: str) -> str | None:
        """One pallet's last recorded location (None: none recorded, or shipped)."""
        rows = await self._fetch("SELECT location FROM pallet_location WHERE sscc = ?", (sscc,))
        return str(rows[0][0]) if rows else None

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

    async def _select(self, sql: str, args: tuple[object, ...]) -> list[PendingMessage]:
        def read(db: sqlite3.Connection) -> list[PendingMessage]:
            return [
                PendingMessage(
                    int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]), bool(r[5]), int(r[6])
                )
                for r in db.execute(sql, args)
            ]

        try:
            return await self._db.call(read)
        except sqlite3.Error as err:
            raise StorageError(f"cannot read the outbox: {err}") from err

    async def _transaction(
        self, body: Callable[[sqlite3.Connection], T], done: Callable[[T], None]
    ) -> T:
        """Run `body` in BEGIN IMMEDIATE ... COMMIT on the connection's thread, to its end even
        if the caller is cancelled; `done(result)` then updates the counts (in commit order)."""

        def whole(db: sqlite3.Connection) -> T:
            try:
                db.execute("BEGIN IMMEDIATE")
                result = body(db)
                db.execute("COMMIT")
            except BaseException as err:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                if isinstance(err, sqlite3.Error):
                    raise StorageError(str(err)) from err
                raise
            return result

        async def run() -> T:
            result = await self._db.call(whole)
            done(result)
            self._bump()
            return result

        task: asyncio.Task[T] = asyncio.ensure_future(run())
        self._running.add(task)
        task.add_done_callback(_finished(self._running))
        return await asyncio.shield(task)

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)


def _finished(running: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the caller may have been cancelled and never will

    return forget
