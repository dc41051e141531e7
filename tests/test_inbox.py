"""The rules' inbox knows how long its oldest event has waited (the runner's event time)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from gateway.domain import WmsMessage
from gateway.inbox import Inbox

AT = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


def message(n: int) -> WmsMessage:
    return WmsMessage(f"wms/DC1/asn/{n}", b"{}", AT)


async def test_the_wait_is_the_oldest_queued_events() -> None:
    inbox = Inbox(maxsize=3)
    assert inbox.waited_s() == 0.0
    inbox.put_nowait(message(1))
    time.sleep(0.05)  # noqa: ASYNC251 - the wait itself is what is measured
    inbox.put_nowait(message(2))
    assert inbox.waited_s() >= 0.05
    assert (await inbox.get()).topic.endswith("/1")
    assert inbox.waited_s() < 0.05  # the second one is the oldest now
    assert (await inbox.get()).topic.endswith("/2")
    assert inbox.waited_s() == 0.0


async def test_the_inbox_stays_bounded_and_in_order() -> None:
    inbox = Inbox(maxsize=2)
    inbox.put_nowait(message(1))
    inbox.put_nowait(message(2))
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(message(3))
    blocked = asyncio.create_task(inbox.put(message(3)))
    await asyncio.sleep(0)
    assert not blocked.done()
    got = [(await inbox.get()).topic for _ in range(2)]
    await blocked
    got.append((await inbox.get()).topic)
    assert got == [f"wms/DC1/asn/{n}" for n in (1, 2, 3)]
    assert inbox.empty() and inbox.waited_s() == 0.0
