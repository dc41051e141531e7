"""The rules' inbox knows how long its oldest event has waited (the runner's event time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from gateway.domain import CloseCommand, Event
from gateway.inbox import Inbox

AT = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def message(n: int) -> CloseCommand:
    return CloseCommand(str(n), AT)


async def take(inbox: Inbox) -> str:
    event: Event = await inbox.get()
    assert isinstance(event, CloseCommand)
    return event.reference


async def test_the_wait_is_the_oldest_queued_events() -> None:
    inbox = Inbox(maxsize=3)
    assert inbox.waited_s() == 0.0
    inbox.put_nowait(message(1))
    time.sleep(0.05)  # noqa: ASYNC251 - the wait itself is what is measured
    inbox.put_nowait(message(2))
    assert inbox.waited_s() >= 0.05
    assert await take(inbox) == "1"
    assert inbox.waited_s() < 0.05  # the second one is the oldest now
    assert await take(inbox) == "2"
    assert inbox.waited_s() == 0.0


async def test_an_event_waiting_for_room_counts_from_when_it_was_offered() -> None:
    # The inbox is full: the third event waits in `put`. Its wait counts while it is not yet
    # queued, and still counts once it is (the rules' clock must not jump past it).
    inbox = Inbox(maxsize=2)
    inbox.put_nowait(message(1))
    inbox.put_nowait(message(2))
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(message(3))
    blocked = asyncio.create_task(inbox.put(message(3)))
    await asyncio.sleep(0)
    assert not blocked.done()
    time.sleep(0.05)  # noqa: ASYNC251 - the wait itself is what is measured
    await take(inbox)
    await take(inbox)
    await blocked  # queued only now, 0.05 s after it was offered
    assert inbox.qsize() == 1 and inbox.waited_s() >= 0.05
    assert await take(inbox) == "3"
    assert inbox.empty() and inbox.waited_s() == 0.0


async def test_a_waiting_producer_counts_before_its_event_is_queued() -> None:
    inbox = Inbox(maxsize=1)
    inbox.put_nowait(message(1))
    blocked = asyncio.create_task(inbox.put(message(2)))
    await asyncio.sleep(0)
    await take(inbox)  # room again, but the producer has not run yet
    time.sleep(0.05)  # noqa: ASYNC251 - the wait itself is what is measured
    assert inbox.empty() and inbox.waited_s() >= 0.05
    await blocked
    assert await take(inbox) == "2"
    assert inbox.waited_s() == 0.0


async def test_a_cancelled_producer_leaves_no_wait_behind() -> None:
    inbox = Inbox(maxsize=1)
    inbox.put_nowait(message(1))
    blocked = asyncio.create_task(inbox.put(message(2)))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await take(inbox)
    assert inbox.empty() and inbox.waited_s() == 0.0


async def test_events_put_during_a_backlog_count_from_its_start_until_taken() -> None:
    # A scanner reads what its device held since `since`: the rules' clock stays there while
    # it reads, and while what it put meanwhile is still queued, behind a later event.
    inbox = Inbox(maxsize=4)
    since = time.monotonic()
    time.sleep(0.05)  # noqa: ASYNC251 - the wait itself is what is measured
    inbox.put_nowait(message(1))  # another source, after the hold began
    with inbox.backlog(since):
        assert inbox.waited_s() >= 0.05
        inbox.put_nowait(message(2))
    assert inbox.waited_s() >= 0.05  # its event still counts from `since`
    assert await take(inbox) == "1"
    assert inbox.waited_s() >= 0.05
    assert await take(inbox) == "2"
    assert inbox.waited_s() == 0.0


async def test_keep_queues_beyond_the_bound_and_put_still_waits() -> None:
    # At a stop, what a driver has read is kept even when the inbox is full.
    inbox = Inbox(maxsize=1)
    inbox.put_nowait(message(1))
    inbox.keep(message(2))
    assert inbox.qsize() == 2 and inbox.unfinished() == 2
    assert not inbox.offer(message(3))
    blocked = asyncio.create_task(inbox.put(message(3)))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert [await take(inbox), await take(inbox)] == ["1", "2"]
    await blocked
    assert await take(inbox) == "3"
