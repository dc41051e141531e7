"""The recorder: one batch of decisions in, one typed commit to SQLite out, then the answers.

What each decision becomes is written once, here: transactions and notices become outbox
messages (rendered by the wire layer; EPCIS documents built from the transaction itself),
ledger rows, pallet locations, lots, task rows and reference data rows; all of a batch is
committed in one SQLite transaction before anything is published. Answers to requests go out
only after the commit, so a lease the gateway would forget in a crash is never given out.

Overflow policy: when the outbox cannot take a batch's transactions, intake is held (the
runner waits, the inbox fills, drivers wait or drop as their own policy says) until the broker
drains it; notices beyond the room left are dropped and counted. A failing disk is retried
with backoff, intake held meanwhile. At a stop (`stop_holding`) nothing waits for room any
more: what was read is committed beyond the limit (counted in `beyond_limit`), a bounded
lot (what the gateway had read and not committed), and published after the next start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gateway.domain import (
    CartonChanged,
    CloseAnswer,
    Committed,
    CountAnswer,
    CountOpened,
    CountSeen,
    CountTransaction,
    Decision,
    DockKind,
    DockResult,
    DockSummary,
    DockTransaction,
    HandheldAnswer,
    HandheldApplied,
    HandheldCode,
    LedgerEntry,
    MoveTransaction,
    Notice,
    PackTransaction,
    PalletElsewhere,
    PalletLot,
    PortalPass,
    PrintJob,
    RefDataChange,
    Reply,
    ReplyHandle,
    Severity,
    TaskAnswer,
    TaskChanged,
    Weighing,
    ZoneEvent,
)
from gateway.drivers.base import AlarmOutputs, Clock
from gateway.rules.agv import received_lots
from gateway.rules.receiving import ledger_entries
from gateway.storage import (
    ClosedRow,
    LedgerRow,
    LotRow,
    MovedRow,
    OutboxMessage,
    PalletMove,
    RefDataRow,
    StateChanges,
    StorageError,
    Store,
    TaskRow,
)
from gateway.supervisor import Backoff
from gateway.wire import epcis, zpl
from gateway.wire.agv import task_json
from gateway.wire.codec import encode, iso
from gateway.wire.counts import opened_json
from gateway.wire.handheld import result_json
from gateway.wire.outbound import (
    count_payload,
    dock_payload,
    move_payload,
    notice_payload,
    pack_payload,
    pass_payload,
    summary_payload,
    task_event_payload,
    zone_event_payload,
)
from gateway.wire.packing import carton_json
from gateway.wire.refdata import to_json
from gateway.wire.state import recent_entry
from gateway.wire.topics import Topics

log = structlog.get_logger("gateway.recorder")


class Publisher(Protocol):
    """What the recorder needs of the bridge: answers and debug output."""

    def reply(
        self, to: ReplyHandle, answer: TaskAnswer | CloseAnswer | HandheldAnswer | CountAnswer
    ) -> None:
        """Send an answer to where its request asked."""

    def publish_debug(self, topic: str, payload: bytes) -> None:
        """Queue a debug message (QoS 0, rate-limited)."""

    def publish_urgent(self, topic: str, payload: bytes) -> None:
        """Publish now, ahead of the outbox's backlog (an alarm about that backlog)."""


@dataclass(slots=True)
class Batch:
    """One batch of decisions as rows: what `Store.commit` takes, and what follows it."""

    messages: list[OutboxMessage] = field(default_factory=list)
    changes: StateChanges = field(default_factory=StateChanges)
    notices: list[Notice] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    committed: list[Committed] = field(default_factory=list)
    counts: dict[tuple[int, str, str], int] = field(default_factory=dict)  # more hourly counts


class Recorder:
    """Turns batches of decisions into commits, then sends what may go out only after them.

    Args:
        topics: this gateway's topic names.
        store: the SQLite outbox and state.
        clock: the gateway's clock (for the recorder's own notices).
        alarms: stack lights and horns by door: an alarm at a door sets them off at once.
        epcis_settings: EPCIS output (None: off).
        agv: keep the stock and lots the AGV task board needs after a restart.
        lot_of: a received pallet's lot (velocity classes count its moves).
        place_gln: a door's or location's own GLN from the location master (EPCIS, for names
            that are no SGLN extension).
        alarm_ratio: the outbox depth (share of its limit) that raises `outbox_high`.
        debug_passes: publish every portal pass on the debug topic.
    """

    def __init__(
        self,
        *,
        topics: Topics,
        store: Store,
        clock: Clock,
        alarms: AlarmOutputs,
        epcis_settings: epcis.EpcisSettings | None = None,
        agv: bool = False,
        lot_of: Callable[[str], PalletLot | None] = lambda _sscc: None,
        place_gln: Callable[[str], str | None] = lambda _name: None,
        alarm_ratio: float = 0.8,
        debug_passes: bool = False,
    ) -> None:
        self._topics = topics
        self._store = store
        self._clock = clock
        self._alarms = alarms
        self._epcis = epcis_settings
        self._agv = agv
        self._lot_of = lot_of
        self._place_gln = place_gln
        self._alarm_ratio = alarm_ratio
        self._debug_passes = debug_passes
        self.publisher: Publisher | None = None
        # After each commit: its transactions and the notices it publishes (the metrics).
        self.on_committed: Callable[[Sequence[Committed], Sequence[Notice]], None] | None = None
        # After each commit: what it changed (the live state).
        self.on_state: Callable[[StateChanges, Sequence[Committed]], None] | None = None
        # After each commit: the labels it queued (job id, station, body) for the printers.
        self.on_print: Callable[[Sequence[tuple[str, str, str]]], None] | None = None
        self.notices_dropped = 0
        self.passes_seen = 0
        self._late: list[Notice] = []  # notices made between batches, committed with the next
        # GS1 company prefixes RFID tags showed (for numbers GS1's table has no length for):
        # one per supplier, kept in SQLite too.
        self._prefixes: set[str] = set()
        self._prefixes_loaded = False
        self._storage_failing = False
        self._intake_held = False
        self._alarm_raised = False
        self._stopping = asyncio.Event()
        self.beyond_limit = 0  # messages committed beyond the outbox limit at a stop

    @property
    def holding(self) -> bool:
        """Intake is held: the outbox is full (waiting for the broker) or the disk fails."""
        return self._intake_held or self._storage_failing

    @property
    def storage_failing(self) -> bool:
        """The last commit failed (it is being retried)."""
        return self._storage_failing

    def stop_holding(self) -> None:
        """The gateway stops: commit every batch at once, beyond the outbox limit if need be."""
        self._stopping.set()

    def late_notice(self, notice: Notice) -> None:
        """A notice from outside a batch (the bridge's refusals): committed with the next one."""
        self._late.append(notice)

    async def announce(self) -> None:
        """Announce the transaction numbers given since the last time (`Store.announce`)."""
        await self._store.announce()

    async def record(
        self,
        decisions: Sequence[Decision],
        counts: Mapping[tuple[int, str, str], int] | None = None,
    ) -> None:
        """Act on one batch: alarms at once, then one commit (retried), then the answers.
        `counts`: more hourly counts for `trend_hour` (the batch's scans per device)."""
        self._observe(decisions)
        # Notices made while rows are built (epcis_failed) go with the next batch.
        late, self._late = self._late, []
        if self._epcis is not None and not self._prefixes_loaded:
            await self._load_prefixes()
        batch = self.rows([*decisions, *late])
        for key, n in (counts or {}).items():
            batch.counts[key] = batch.counts.get(key, 0) + n
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                notices = await self._commit(batch)
            except StorageError as err:
                # Intake is held (the queue fills, drivers wait) until the disk recovers.
                if not self._storage_failing:
                    log.error("cannot commit to the outbox; retrying", error=str(err))  # noqa: TRY400
                    self._storage_failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._storage_failing:
                log.info("outbox commits again")
                self._storage_failing = False
            break
        if self.on_committed is not None:
            self.on_committed(batch.committed, notices)
        if self.on_state is not None:
            self.on_state(batch.changes, batch.committed)
        if self.on_print is not None and batch.changes.print_jobs:
            self.on_print(batch.changes.print_jobs)
        for reply in batch.replies:
            # An answer to a request over HTTP goes back to its waiting handler; others to MQTT.
            deliver = getattr(reply.to.address, "deliver", None)
            if callable(deliver):
                deliver(reply.answer)
            elif self.publisher is not None:
                self.publisher.reply(reply.to, reply.answer)
        for tx in batch.committed:
            log.info("transaction committed", tx_id=tx.tx_id, kind=type(tx).__name__)

    def _observe(self, decisions: Sequence[Decision]) -> None:
        """What needs no disk: logs, debug output, and alarms lighting their door's lights."""
        for decision in decisions:
            match decision:
                case PortalPass():
                    self.passes_seen += 1
                    log.info(
                        "portal pass",
                        door=decision.door,
                        direction=decision.direction.value,
                        tags=len(decision.tags),
                        separation_s=decision.separation_s,
                    )
                    self._debug(decision)
                case Weighing():
                    log.info(
                        "weighing",
                        scale=decision.scale_id,
                        kg=round(decision.kg, 2),
                        method=decision.method.value,
                    )
                case Notice() if decision.severity is Severity.ERROR:
                    self._alarms.raise_at(decision.location)
                case _:
                    pass

    def _debug(self, portal_pass: PortalPass) -> None:
        if not self._debug_passes or self.publisher is None:
            return
        try:
            payload = encode(pass_payload(portal_pass, self._topics))
        except (ValueError, OverflowError) as err:  # debug output must never stop the rules
            log.warning("cannot render a pass for the debug topic", error=str(err))
            return
        self.publisher.publish_debug(self._topics.debug_pass(portal_pass.door), payload)

    def rows(self, decisions: Sequence[Decision]) -> Batch:
        """The rows one batch of decisions makes (no I/O)."""
        batch = Batch()
        state = batch.changes
        topics = self._topics
        for d in decisions:
            match d:
                case MoveTransaction():
                    payload = move_payload(d, topics)
                    batch.messages.append(
                        OutboxMessage(d.tx_id, topics.tx("move"), encode(payload))
                    )
                    state.moves.append(
                        PalletMove(d.sscc, d.to_location, d.tx_id, d.confirmed_at.timestamp())
                    )
                    lot = self._lot_of(d.sscc)
                    if lot is not None:  # counts for the product's velocity class
                        state.moved.append(MovedRow(lot.gtin, d.confirmed_at.timestamp()))
                    batch.messages.extend(self._epcis_of(d, d.confirmed_at))
                    batch.committed.append(d)
                case DockTransaction():
                    self._dock(d, batch)
                case DockSummary():
                    payload = summary_payload(d, topics)
                    batch.messages.append(
                        OutboxMessage(d.tx_id, topics.summary(d.kind), encode(payload))
                    )
                    state.closed.append(ClosedRow(d.reference, d.tx_id))
                    batch.committed.append(d)
                case RefDataChange():
                    body = None if d.item is None else json.dumps(to_json(d.item), sort_keys=True)
                    state.refdata.append(RefDataRow(d.kind, d.key, body, d.digest))
                case TaskChanged():
                    shown = task_json(d.task)
                    state.tasks[d.task.task_id] = TaskRow(
                        d.task.task_id, d.task.state.value, json.dumps(shown)
                    )
                    if d.published:
                        payload = task_event_payload(d, shown, topics)
                        batch.messages.append(
                            OutboxMessage(d.event_id, topics.agv_task, encode(payload))
                        )
                case Reply():
                    batch.replies.append(d)
                case PackTransaction():
                    payload = pack_payload(d, topics)
                    batch.messages.append(
                        OutboxMessage(d.tx_id, topics.tx("pack"), encode(payload))
                    )
                    for packed in d.items:
                        key = (d.order_id, packed.line)
                        state.packed[key] = state.packed.get(key, 0) + 1
                    batch.committed.append(d)
                case PrintJob():
                    state.print_jobs.append((d.job_id, d.station, zpl.label(d)))
                case CartonChanged():
                    state.cartons[d.terminal] = None if d.carton is None else carton_json(d.carton)
                    if d.next_serial is not None:
                        state.sscc_next = d.next_serial
                case ZoneEvent():
                    payload = zone_event_payload(d, topics)
                    batch.messages.append(
                        OutboxMessage(d.event_id, topics.zone_event, encode(payload))
                    )
                case CountOpened():
                    state.counts_opened.append((d.count_id, opened_json(d)))
                case CountSeen():
                    state.count_seen.append((d.count_id, d.key, d.location))
                case CountTransaction():
                    self._count(d, batch)
                case PalletElsewhere():
                    if d.held_here:  # another gateway has it since: not here any more
                        state.left.append(d.sscc)
                case HandheldApplied():
                    _count_handheld(batch.counts, d)
                    state.handheld.append(
                        (
                            d.terminal,
                            d.result.seq,
                            json.dumps(result_json(d.result)),
                            d.scanned_at.timestamp(),
                        )
                    )
                case Notice():
                    batch.notices.append(d)
                case PortalPass() | Weighing():
                    pass  # observed, not stored
        return batch

    async def _load_prefixes(self) -> None:
        """The company prefixes RFID tags showed before the restart (one per supplier), once;
        a failing read is tried again with the next batch (GS1's table and the site's
        settings give URIs meanwhile)."""
        try:
            self._prefixes |= await self._store.learned_prefixes()
        except StorageError as err:
            log.warning("cannot read the company prefixes learned from tags", error=str(err))
            return
        self._prefixes_loaded = True

    def _dock(self, tx: DockTransaction, batch: Batch) -> None:
        state = batch.changes
        if self._epcis is not None:
            learned = epcis.learned_prefixes(tx) - self._prefixes
            state.prefixes |= learned
            self._prefixes |= learned
        payload = dock_payload(tx, self._topics)
        tx_id = tx.tx_id  # computed over every item: once
        batch.messages.append(OutboxMessage(tx_id, self._topics.tx(tx.kind), encode(payload)))
        batch.messages.extend(self._epcis_of(tx, tx.occurred_at))
        state.ledger.extend(_ledger_row(e, tx_id) for e in ledger_entries(tx))
        state.recent.append((tx.door, json.dumps(recent_entry(tx))))
        batch.committed.append(tx)
        # Where pallets are (the live state, forklift moves, the AGV stock after a restart): a
        # received pallet is at the door until it is moved; a shipped one is gone.
        if tx.kind == DockKind.RECEIVE:
            at = tx.occurred_at.timestamp()
            state.moves.extend(
                PalletMove(sscc, tx.door, tx.tx_id, at, received=True)
                for sscc in tx.accepted_pallets
            )
            state.cases.extend(cases_on_pallet(tx))
            if self._agv:
                state.lots.extend(
                    LotRow(sscc, lot.gtin, lot.lot, lot.expiry.isoformat() if lot.expiry else None)
                    for sscc, lot in received_lots(tx)
                )
        else:
            state.shipped.extend(tx.accepted_pallets)

    def _count(self, tx: CountTransaction, batch: Batch) -> None:
        """A closed count: published, its rows gone, and its adjustments recorded (pallets
        where they were seen, those missing gone with their cases; missing cases off their
        pallet)."""
        state = batch.changes
        payload = count_payload(tx, self._topics)
        batch.messages.append(OutboxMessage(tx.tx_id, self._topics.tx("count"), encode(payload)))
        batch.messages.extend(self._epcis_of(tx, tx.closed_at))
        state.counts_closed.append((tx.count_id, tx.tx_id))
        at = tx.closed_at.timestamp()
        for key, (_before, after) in tx.adjustments.items():
            if key.startswith("sscc:"):
                sscc = key.removeprefix("sscc:")
                if after is None:
                    state.shipped.append(sscc)
                else:
                    state.moves.append(PalletMove(sscc, after, tx.tx_id, at))
            elif after is None:
                state.cases_gone.append(key)
        batch.committed.append(tx)

    def _epcis_of(
        self, tx: MoveTransaction | DockTransaction | CountTransaction, at: dt.datetime
    ) -> list[OutboxMessage]:
        """The same transaction as a GS1 EPCIS 2.0 document, when the site asked for it: its
        accepted items and the items a door did not accept, each in the event of its
        disposition (`epcis.object_events`); none when nothing moved (only repeats).

        A transaction that cannot be expressed in EPCIS (a location name too long for an SGLN
        extension, a tag that is no GS1 identifier) is still committed; the EPCIS document is
        left out, with an event saying why."""
        if self._epcis is None:
            return []
        try:
            events = (
                epcis.count_events(tx, self._epcis, self._prefixes, self._place_gln)
                if isinstance(tx, CountTransaction)
                else epcis.object_events(tx, self._epcis, self._prefixes, self._place_gln)
            )
        except ValueError as err:
            self._late.append(
                Notice(
                    code="epcis_failed",
                    message=f"no EPCIS event for transaction {tx.tx_id}: {err}",
                    at=self._clock(),
                    details={"tx_id": tx.tx_id, "reason": str(err)},
                )
            )
            return []
        if not events:
            return []
        doc = epcis.document(events, created=iso(at))
        return [OutboxMessage(f"epcis:{tx.tx_id}", self._topics.epcis, encode(doc))]

    async def _commit(self, batch: Batch) -> list[Notice]:
        """Commit a batch; transactions wait for room, notices beyond it are dropped. Returns
        the notices committed (to be published)."""
        store = self._store
        messages = list(batch.messages)
        for notice in batch.notices:
            log.info("notice", code=notice.code, device=notice.device_id, message=notice.message)
        # A batch too large for the byte limit on its own is taken by an empty outbox.
        while not store.fits(messages) and store.depth and not self._stopping.is_set():
            if not self._intake_held:
                log.error(
                    "outbox full: intake held back",
                    depth=store.depth,
                    limit=store.max_rows,
                    bytes=store.size,
                    bytes_limit=store.max_bytes,
                )
                self._intake_held = True
            await self._room_or_stop()
        stopping = self._stopping.is_set()
        if self._intake_held:
            if stopping:
                log.warning("stopping: what was read is committed beyond the outbox limit")
            else:
                log.info("outbox has room again: intake resumed", depth=store.depth)
            self._intake_held = False
        # At a stop every notice is kept too: they come from what is in memory, a bounded lot.
        notices: list[Notice] = []
        for notice in batch.notices:
            message = self._notice_message(notice)
            if stopping or store.fits([*messages, message]):
                messages.append(message)
                notices.append(notice)
            else:
                self.notices_dropped += 1
        alarm = self._outbox_alarm(extra=messages)
        if alarm is not None:
            # Published at once, beside the backlog it warns about; committed too if it fits
            # (the same event id: a consumer sees it once or twice).
            message = self._notice_message(alarm)
            if self.publisher is not None:
                self.publisher.publish_urgent(message.topic, message.payload)
            if store.fits([*messages, message]):
                messages.append(message)
                notices.append(alarm)
        trends = trend_counts(batch.committed, notices)
        for key, n in batch.counts.items():
            trends[key] = trends.get(key, 0) + n
        batch.changes.trends = trends
        beyond = max(0, len(messages) - store.room())
        if messages or batch.changes:
            await store.commit(messages, batch.changes, over_limit=stopping)
        self.beyond_limit += beyond
        return notices

    async def _room_or_stop(self) -> None:
        """Wait until the outbox changes (the broker took some), the stop, or a second."""
        store = self._store
        changed = asyncio.ensure_future(store.wait_changed(store.version, timeout=1.0))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopping.cancel()

    def _notice_message(self, notice: Notice) -> OutboxMessage:
        """A notice for the outbox: errors go to `alarm`, the rest to `event`."""
        topic = self._topics.alarm if notice.severity is Severity.ERROR else self._topics.event
        return OutboxMessage(notice.event_id, topic, encode(notice_payload(notice, self._topics)))

    def _outbox_alarm(self, *, extra: Sequence[OutboxMessage]) -> Notice | None:
        """An alarm the first time the outbox passes its alarm level (rows or bytes); re-armed
        below 90% of it."""
        store = self._store
        depth = store.depth + len(extra)
        size = store.size + sum(len(m.payload) for m in extra)
        fill = max(depth / store.max_rows, size / store.max_bytes)
        if fill < self._alarm_ratio * 0.9:
            self._alarm_raised = False
            return None
        if fill < self._alarm_ratio or self._alarm_raised:
            return None
        self._alarm_raised = True
        log.error("outbox nearly full", depth=depth, limit=store.max_rows, bytes=size)
        return Notice(
            code="outbox_high",
            message=(
                f"outbox holds {depth} of {store.max_rows} messages ({size} of {store.max_bytes}"
                " bytes): the broker is not taking them; at the limit new scans are held back"
            ),
            at=self._clock(),
            severity=Severity.ERROR,
            details={
                "depth": depth,
                "limit": store.max_rows,
                "bytes": size,
                "bytes_limit": store.max_bytes,
            },
        )


def cases_on_pallet(tx: DockTransaction) -> list[tuple[str, str]]:
    """(case key, SSCC) of the tagged cases a receipt accepted with exactly one pallet: what a
    count of the pallet's location expects to find there. A receipt of several pallets (or
    none) says nothing of which case is on which."""
    pallets = tx.accepted_pallets
    if len(pallets) != 1:
        return []
    return [
        (row.item.key, pallets[0])
        for row in tx.items
        if row.result is DockResult.ACCEPTED and row.item.key and not row.item.sscc
    ]


def trend_counts(
    committed: Sequence[Committed],
    notices: Sequence[Notice],
) -> dict[tuple[int, str, str], int]:
    """What a commit publishes, per (UTC hour it happened, kind, code): each transaction under
    code '' and each of its exceptions under its code (a closed receipt or shipment: each line
    short under `short`, each line over under `over`); each notice under `event` or `alarm`
    (its topic), with code '' and its own code. Kept in SQLite (`trend_hour`) for the trends."""
    counts: Counter[tuple[int, str, str]] = Counter()

    def add(at: dt.datetime, kind: str, codes: Sequence[str]) -> None:
        hour = int(at.timestamp() // 3600)
        counts[hour, kind, ""] += 1
        for code in codes:
            counts[hour, kind, code] += 1

    for d in committed:
        match d:
            case DockTransaction():
                add(d.occurred_at, d.kind.value, d.exception_codes)
            case MoveTransaction():
                add(d.confirmed_at, "move", d.exceptions)
            case PackTransaction():
                add(d.closed_at, "pack", ())
            case CountTransaction():  # each thing missing or unexpected
                add(d.closed_at, "count", d.exception_codes)
            case DockSummary():  # lines short or over at the close
                add(
                    d.closed_at,
                    d.kind.value,
                    [
                        c
                        for line in d.lines
                        for c, n in (("short", line.short), ("over", line.over))
                        if n
                    ],
                )
    for notice in notices:
        add(notice.at, "alarm" if notice.severity is Severity.ERROR else "event", (notice.code,))
    return dict(counts)


def _count_handheld(counts: dict[tuple[int, str, str], int], applied: HandheldApplied) -> None:
    """A handheld scan applied, for the report: per terminal as a scanner's scans are
    (`scan`, `scan_rejected`), and per operator (`operator_scan`, `operator_scan_rejected`)."""
    hour = int(applied.scanned_at.timestamp() // 3600)
    rejected = applied.result.result == HandheldCode.REJECTED
    keys = [(hour, "scan_rejected" if rejected else "scan", applied.terminal)]
    if applied.operator is not None:
        kind = "operator_scan_rejected" if rejected else "operator_scan"
        keys.append((hour, kind, applied.operator))
    for key in keys:
        counts[key] = counts.get(key, 0) + 1


def _ledger_row(entry: LedgerEntry, tx_id: str) -> LedgerRow:
    return LedgerRow(entry.kind, entry.key, entry.reference, entry.line, entry.result, tx_id)
