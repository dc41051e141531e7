"""The rules' inbox: a bounded event queue that knows how long its oldest event has waited.

The rules run on event time. While the rules runner is behind (a burst of reads, a slow disk),
the events still queued were received earlier than the wall clock says; a timeout that ran on
the wall clock would fire although the evidence that prevents it (a robot's report, the next
reads of a pallet still in the portal) has arrived and is only waiting. So the runner's ticks
use the wall clock less `Inbox.waited_s`: the wait of the oldest event queued, or offered to
a full inbox and not yet taken in (a producer waiting in `put`).

The waits are measured on the monotonic clock: a gateway run on an accelerated test clock
subtracts real seconds from it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from gateway.domain import Event


class Inbox(asyncio.Queue[Event]):
    """An `asyncio.Queue` of events that stamps each one with the monotonic time it was offered."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._stamps: deque[float] = deque()  # the queued events', in queue order
        self._offered: list[float] = []  # the events waiting in `put` for room

    def _put(self, item: Event) -> None:
        self._stamps.append(time.monotonic())
        super()._put(item)

    def _get(self) -> Event:
        self._stamps.popleft()
        return super()._get()

    async def put(self, item: Event) -> None:
        """Put `item`, waiting for room; its wait counts from now, not from when room came."""
        if not self.full():
            self.put_nowait(item)
            return
        offered = time.monotonic()
        self._offered.append(offered)
        try:
            await super().put(item)
            # `put_nowait` has just appended this event's stamp, with nothing run in between.
            self._stamps[-1] = offered
        finally:
            self._offered.remove(offered)

    def offer(self, item: Event) -> bool:
        """Put `item` if there is room now; False (and nothing queued) when the inbox is full."""
        try:
            self.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def waited_s(self) -> float:
        """Seconds the oldest event queued or offered has waited; 0 when there is none."""
        # The head's stamp is the oldest queued one (in the rare race where a producer's
        # `put` finds room just before a waiting one's, the two land a moment apart). The
        # waiting producers are few: one per source.
        oldest = min(self._offered, default=None)
        if self._stamps and (oldest is None or self._stamps[0] < oldest):
            oldest = self._stamps[0]
        return 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
