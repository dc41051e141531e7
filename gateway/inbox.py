"""The rules' inbox: a bounded event queue that knows how long its oldest event has waited.

The rules run on event time. While the rules runner is behind (a burst of reads, a slow disk),
the events still queued were received earlier than the wall clock says; a timeout that ran on
the wall clock would fire although the evidence that prevents it (a robot's report, the next
reads of a pallet still in the portal) has arrived and is only waiting. So the runner's ticks
use the wall clock less `Inbox.waited_s`: the wait of the oldest event queued, or offered to
a full inbox and not yet taken in (a producer waiting in `put`).

A producer that reads a backlog its device held while the inbox was full (a scanner after a
hold) declares it with `backlog(since)`: while it reads it, and until the events it put meanwhile
are taken, the wait counts from `since`, so no timeout comes due on evidence that waited at the
device.

At a stop, `keep` takes what a driver has already read even beyond the bound: it is committed
rather than dropped, and what a driver holds in memory is bounded.

The waits are measured on the monotonic clock: a gateway run on an accelerated test clock
subtracts real seconds from it.

Events are numbered as they are queued. The rules take them in that order and mark each done
(`task_done`) once the batch holding it is committed; so `committed(n)` returns once event `n`,
and every event queued before it, is committed. The MQTT bridge acknowledges a message only
then: a gateway killed before its commit gets the message again from the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Iterator

from gateway.domain import Event


class Inbox(asyncio.Queue[Event]):
    """An `asyncio.Queue` of events that stamps each one with the monotonic time it was offered."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._stamps: deque[float] = deque()  # the queued events', in queue order
        # The least stamp from each queued event on, increasing: the head is the least of all.
        self._least: deque[float] = deque()
        self._offered: list[float] = []  # the events waiting in `put` for room
        self._backlogs: list[float] = []  # since when the backlogs being read waited
        self._taken = asyncio.Event()  # set whenever an event is taken: room may have come
        self._beyond_bound = False  # `keep` is queueing
        self._queued_total = 0  # events ever queued: the number of the last one
        self._done_total = 0  # events ever marked done (committed)
        # (event number, tie-breaker, future) of those waiting for a commit, least first.
        self._commit_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tie = itertools.count()

    def _put(self, item: Event) -> None:
        stamp = time.monotonic()
        if self._backlogs:
            stamp = min(stamp, *self._backlogs)
        self._stamps.append(stamp)
        self._push_least(stamp)
        self._queued_total += 1
        super()._put(item)

    def _get(self) -> Event:
        self._taken.set()
        stamp = self._stamps.popleft()
        if self._least[0] == stamp:
            self._least.popleft()
        return super()._get()

    def _push_least(self, stamp: float) -> None:
        least = self._least
        while least and least[-1] > stamp:
            least.pop()
        least.append(stamp)

    async def put(self, item: Event) -> None:
        """Put `item`, waiting for room; its wait counts from now, not from when room came."""
        if not self.full():
            self.put_nowait(item)
            return
        offered = time.monotonic()
        self._offered.append(offered)
        try:
            await super().put(item)
            # `put_nowait` has just appended this event's stamp, with nothing run in between:
            # it is the last of `_stamps`, and of `_least`.
            if offered < self._stamps[-1]:
                self._stamps[-1] = offered
                self._least.pop()
                self._push_least(offered)
        finally:
            self._offered.remove(offered)

    async def put_leaving(self, item: Event, room: int) -> int:
        """Put `item` once fewer than `maxsize - room` events are queued: a producer that must
        not fill the inbox (the network) leaves `room` for the others (the devices). Its number
        (for `committed`)."""
        while self.maxsize and self.qsize() >= self.maxsize - room:
            self._taken.clear()
            await self._taken.wait()
        await self.put(item)
        # Nothing ran since `put_nowait` numbered it: it is the last one queued.
        return self._queued_total

    def task_done(self) -> None:
        """Mark the oldest event taken and not done as done (its batch is committed)."""
        super().task_done()
        self._done_total += 1
        waiters = self._commit_waiters
        while waiters and waiters[0][0] <= self._done_total:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    async def committed(self, number: int) -> None:
        """Return once event `number` (from `put_leaving`) and all queued before it are done."""
        if number <= self._done_total:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (number, next(self._tie), future)
        heapq.heappush(self._commit_waiters, entry)
        try:
            await future
        finally:
            if entry in self._commit_waiters:  # cancelled: forget it
                self._commit_waiters.remove(entry)
                heapq.heapify(self._commit_waiters)

    def full(self) -> bool:
        """Whether `put` would wait (never while `keep` queues)."""
        return not self._beyond_bound and super().full()

    def keep(self, item: Event) -> None:
        """Queue `item` now, beyond the bound if need be: at a stop, for what was already read."""
        self._beyond_bound = True
        try:
            self.put_nowait(item)
        finally:
            self._beyond_bound = False

    @contextlib.contextmanager
    def backlog(self, since: float) -> Iterator[None]:
        """A producer reads events that waited at its device since `since` (monotonic): until
        the block ends, the wait counts from then."""
        self._backlogs.append(since)
        try:
            yield
        finally:
            self._backlogs.remove(since)

    def unfinished(self) -> int:
        """Events taken in and not done yet (`task_done`): queued, or in the rules' batch."""
        return int(getattr(self, "_unfinished_tasks", self.qsize()))

    def offer(self, item: Event) -> bool:
        """Put `item` if there is room now; False (and nothing queued) when the inbox is full."""
        try:
            self.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def waited_s(self) -> float:
        """Seconds the oldest event queued, offered or in a backlog has waited; 0 when none."""
        # The waiting producers and backlogs are few: one per source.
        head = (self._least[0],) if self._least else ()
        oldest = min((*self._offered, *self._backlogs, *head), default=None)
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
