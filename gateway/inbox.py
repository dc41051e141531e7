"""The rules' inbox: a bounded event queue that knows how long its oldest event has waited.

The rules run on event time. While the rules runner is behind (a burst of reads, a slow disk),
the events still queued were received earlier than the wall clock says; a timeout that ran on
the wall clock would fire although the evidence that prevents it (a robot's report, the next
reads of a pallet still in the portal) has arrived and is only waiting. So the runner's ticks
use `Inbox.received_before`: the wall clock less the wait of the oldest queued event.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from gateway.domain import Event


class Inbox(asyncio.Queue[Event]):
    """An `asyncio.Queue` of events that stamps each one with the monotonic time it was put."""

    def _init(self, maxsize: int) -> None:
        super()._init(maxsize)
        self._stamps: deque[float] = deque()

    def _put(self, item: Event) -> None:
        self._stamps.append(time.monotonic())
        super()._put(item)

    def _get(self) -> Event:
        self._stamps.popleft()
        return super()._get()

    def waited_s(self) -> float:
        """Seconds the oldest queued event has waited; 0 when the inbox is empty."""
        return time.monotonic() - self._stamps[0] if self._stamps else 0.0
