"""The rules runner: takes events from the inbox in batches, ticks time, hands decisions on.

Events are taken in batches of at most `batch_max` (one commit per batch); the rules engine
is called for each, and every `tick_s` it is ticked so that departures, timeouts and leases
come due. Ticks run on event time: the wall clock less the wait of the oldest event still
queued (`Inbox.waited_s`), so a lease or a portal pass does not run out while the evidence
that prevents it waits in the queue. A rule that raises on an event (a bug) is logged with its
traceback and reported as a `rules_error` alarm; the event is skipped, the doors go on.

Pallet locations: the rules keep only a bounded cache of them. Before an event that needs a
pallet the cache lacks (`RulesEngine.pallet_needed`), the runner looks it up in storage and
hands the answer to the rules (`pallet_found`). The decisions of the batch so far are committed
first, so that storage already holds every move the rules made, evicted ones included. A failing
lookup is retried with backoff, intake held meanwhile.

Reference data the rules did not take (a new record beyond its kind's count limit) is handed to
`not_taken`, so that the bridge forgets its payload's digest: the same payload again (the WMS
publishing it anew, the broker's retained copy at the next connection) is then decoded and
offered to the rules again, and taken once there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import structlog

from gateway.domain import (
    Decision,
    Event,
    Notice,
    RefDataUpdate,
    RejectedScan,
    ResendRequest,
    Scan,
    Severity,
    key_of,
)
from gateway.drivers.base import Clock
from gateway.inbox import Inbox
from gateway.recorder import Recorder
from gateway.rules.engine import RulesEngine
from gateway.storage import OutboxFull, StorageError
from gateway.supervisor import Backoff

log = structlog.get_logger("gateway.runner")

T = TypeVar("T")

TICK_S = 0.2
"""How often time alone is given to the rules (timeouts, departures, leases); a portal pass
that is due sooner gets its own tick (`RulesEngine.next_due`)."""

ANNOUNCE_S = 1.0
"""Transaction numbers are announced at most this often (`Store.announce`)."""

DUE_MARGIN_S = 0.002
"""A due tick comes this long after the due time (departure is strictly after the window)."""

MIN_TICK_GAP_S = 0.02
"""Due ticks come at most this often (a busy door's departures are coalesced)."""

PalletLookup = Callable[[str], Awaitable[str | None]]
"""A pallet's (SSCC's) stored location, None when storage has none (`Store.pallet_location`)."""

StockLookup = Callable[[Iterable[str], Iterable[str]], Awaitable[dict[str, str]]]
"""The recorded stock of locations and of things seen (`Store.count_stock`)."""

Resend = Callable[[ResendRequest], Awaitable[int]]
"""Queue numbered transactions again (`Store.resend`); returns how many."""

PlacesLookup = Callable[[Iterable[str]], Awaitable[dict[str, tuple[str, float]]]]
"""Pallets' recorded locations and since when (`Store.pallet_times`)."""


class RulesRunner:
    """Feeds the rules engine from the inbox and hands each batch's decisions to the recorder.

    Args:
        engine: the rules.
        inbox: the bounded queue the drivers and the bridge fill.
        recorder: what turns decisions into commits.
        clock: the gateway's clock.
        batch_max: events per batch (one commit each).
        lookup: a pallet's stored location, for pallets the rules' cache lacks.
        stock: the stored stock a cycle count closes against (None: counts see none).
        places: pallets' stored locations and times, for other gateways' state (None: none).
        tick_s: time between ticks.
        not_taken: told (kind, key) of each reference data record the rules did not take.
    """

    def __init__(
        self,
        engine: RulesEngine,
        inbox: Inbox,
        recorder: Recorder,
        *,
        clock: Clock,
        batch_max: int,
        lookup: PalletLookup,
        stock: StockLookup | None = None,
        places: PlacesLookup | None = None,
        tick_s: float = TICK_S,
        not_taken: Callable[[str, str], None] | None = None,
        resend: Resend | None = None,
    ) -> None:
        self.engine = engine
        self.inbox = inbox
        self.recorder = recorder
        self._clock = clock
        self._batch_max = max(1, batch_max)
        self._tick_s = tick_s
        self._lookup = lookup
        self._stock = stock
        self._places = places
        self._not_taken = not_taken
        self._resend = resend
        self.resends = 0  # resend requests carried out
        self.resent = 0  # messages they queued again
        self.resends_failed = 0  # requests that could not be carried out (outbox full, storage)
        self.rules_errors = 0  # events the rules raised on (bugs), skipped
        self.lookups = 0  # pallets looked up in storage (not in the rules' cache)
        self.went_round: float | None = None  # the event loop's time the loop last went round

    async def run(self) -> None:
        """Run until cancelled."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._tick_s
        next_announce = loop.time()
        self.went_round = loop.time()
        while True:
            events: list[Event] = []
            with contextlib.suppress(TimeoutError):
                events.append(
                    await asyncio.wait_for(
                        self.inbox.get(), timeout=max(0.0, next_tick - loop.time())
                    )
                )
            while events and len(events) < self._batch_max and not self.inbox.empty():
                events.append(self.inbox.get_nowait())
            decisions: list[Decision] = []
            scans = scan_counts(events)
            for event in events:
                if isinstance(event, ResendRequest):  # storage's business, not the rules'
                    await self._resend_now(event)
                    continue
                decisions = await self._prepare(event, decisions)
                decisions.extend(self._handle(event))
                if isinstance(event, RefDataUpdate) and self._not_taken is not None:
                    kind, key = key_of(event.item)
                    if not self.engine.holds(kind, key):
                        self._not_taken(kind.value, key)
            # Time moves on even while events pour in: departures and timeouts are due. It is
            # event time (see the module docstring); a clock stepped back is passed on, the
            # rules handle it.
            if loop.time() >= next_tick:
                now = self._clock() - dt.timedelta(seconds=self.inbox.waited_s())
                decisions.extend(self.engine.on_tick(now))
                for close in self.engine.counts_due(now):  # a count's deadline came
                    decisions = await self._prepare(close, decisions)
                    decisions.extend(self._handle(close))
                next_tick = loop.time() + self._tick_s
            await self.recorder.record(decisions, scans)
            if loop.time() >= next_announce:
                next_announce = loop.time() + ANNOUNCE_S
                try:
                    await self.recorder.announce()
                except StorageError as err:  # told again at the next chance
                    log.warning("cannot announce transaction numbers", error=str(err))
            self.went_round = loop.time()
            for _ in events:
                self.inbox.task_done()
            next_tick = min(next_tick, max(self._due_tick(loop), loop.time() + MIN_TICK_GAP_S))

    async def _resend_now(self, request: ResendRequest) -> None:
        """Carry out a resend request; one that cannot be (the outbox full, storage failing)
        is logged and counted: the consumer asks again."""
        if self._resend is None:
            return
        try:
            queued = await self._resend(request)
        except (OutboxFull, StorageError) as err:
            self.resends_failed += 1
            log.warning("cannot publish transactions again", topic=request.topic, error=str(err))
            return
        self.resends += 1
        self.resent += queued
        log.info(
            "transactions published again on request",
            topic=request.topic,
            stream=request.stream,  # none queued for another stream (a replaced file)
            first=request.first,
            last=request.last,
            queued=queued,
        )

    def _due_tick(self, loop: asyncio.AbstractEventLoop) -> float:
        """The loop time of the next portal departure: a pass is decided when it is due, not
        on the next regular tick (up to `tick_s` later)."""
        due = self.engine.next_due()
        if due is None:
            return float("inf")
        now = self._clock().timestamp() - self.inbox.waited_s()
        # Just after: a tag departs once more than `depart_after_s` passed since its last read.
        return loop.time() + max(0.0, due - now) + DUE_MARGIN_S

    def _handle(self, event: Event) -> list[Decision]:
        """The rules' decisions on one event; a rule that raises is reported, not fatal."""
        try:
            return self.engine.on_event(event)
        except Exception as err:  # noqa: BLE001 - a bug must not stop every door
            return [self._failed(event, err)]

    async def _prepare(self, event: Event, decisions: list[Decision]) -> list[Decision]:
        """Hand the rules what `event` needs of storage: a pallet's location their cache lacks,
        the stock a count closes against. `decisions` are committed first (then none are
        left), so that storage holds all the rules did; returns the decisions to record."""
        decisions = await self._pallets(event, decisions)
        ssccs = self.engine.site_needed(event)
        if ssccs and self._places is not None:
            if decisions:
                await self.recorder.record(decisions)
                decisions = []
            places = self._places
            self.engine.site_found(await self._retried(lambda: places(ssccs)))
        try:
            wanted = self.engine.stock_needed(event)
        except Exception:  # a bug: the event itself is handled (and reported) next
            log.exception("rules failed to say which stock an event needs")
            return decisions
        if wanted is None or self._stock is None:
            return decisions
        if decisions:
            await self.recorder.record(decisions)
            decisions = []
        locations, keys = wanted
        stock = self._stock
        self.engine.stock_found(await self._retried(lambda: stock(locations, keys)), locations)
        return decisions

    async def _retried(self, read: Callable[[], Awaitable[T]]) -> T:
        """`read()` from storage; a failure is retried with backoff (intake held)."""
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await read()
            except StorageError as err:
                log.warning(
                    "cannot read what the rules need from storage; retrying", error=str(err)
                )
                await asyncio.sleep(backoff.next_delay())

    async def _pallets(self, event: Event, decisions: list[Decision]) -> list[Decision]:
        """Hand the rules a pallet's stored location if `event` needs one their cache lacks."""
        asked: set[str] = set()
        while True:  # a handheld batch may need several, one after the other
            try:
                sscc = self.engine.pallet_needed(event)
            except Exception:  # a bug: the event itself is handled (and reported) next
                log.exception("rules failed to say which pallet an event needs")
                return decisions
            if sscc is None or sscc in asked:
                return decisions
            asked.add(sscc)
            if decisions:  # storage must hold every move the rules made so far
                await self.recorder.record(decisions)
                decisions = []
            self.engine.pallet_found(sscc, await self._look_up(sscc))

    async def _look_up(self, sscc: str) -> str | None:
        """The pallet's stored location; a storage failure is retried (intake held)."""
        self.lookups += 1
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await self._lookup(sscc)
            except StorageError as err:
                log.warning(
                    "cannot look up a pallet's location; retrying", sscc=sscc, error=str(err)
                )
                await asyncio.sleep(backoff.next_delay())

    def _failed(self, event: Event, err: Exception) -> Notice:
        """An event the rules could not handle (a bug): logged with its traceback, an alarm."""
        self.rules_errors += 1
        log.exception("rules failed on an event", event_type=type(event).__name__)
        return Notice(
            code="rules_error",
            message=f"the rules could not handle a {type(event).__name__}: {err!r}; it was skipped",
            at=self._clock(),
            severity=Severity.ERROR,
            details={"event": type(event).__name__, "error": repr(err)[:500]},
        )


def scan_counts(events: Sequence[Event]) -> dict[tuple[int, str, str], int]:
    """Scans per (UTC hour, `scan` or `scan_rejected`, device) among `events`: kept in
    `trend_hour` with the batch, for `gateway report`'s rejection rate per device."""
    counts: dict[tuple[int, str, str], int] = {}
    for event in events:
        if isinstance(event, Scan | RejectedScan):
            kind = "scan" if isinstance(event, Scan) else "scan_rejected"
            key = (int(event.at.timestamp() // 3600), kind, event.device_id)
            counts[key] = counts.get(key, 0) + 1
    return counts
