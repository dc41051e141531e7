"""An inbound QoS 1 message is acknowledged only once the rules committed what it brought: a
gateway that dies before that commit gets the message again from its persistent session, in
its place among the others (a real Mosquitto; the rules stand still or are killed)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.bridge import mqtt
from gateway.config import BrokerConfig
from gateway.domain import Event, RefDataUpdate
from gateway.health import StatusBoard
from gateway.inbox import Inbox
from gateway.storage import Store
from gateway.wire.inbound import InboundRoutes
from gateway.wire.topics import Topics
from simulators.gs1 import sscc
from tests.mqtt_helpers import Mosquitto

pytestmark = pytest.mark.broker

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
TOPICS = Topics("DC1", "dock-1")


def asn(n: int) -> bytes:
    line = {"line": 1, "sscc": sscc("0614141", n), "quantity": 1}
    return json.dumps({"asn_id": f"ASN-{n}", "door": "D01", "lines": [line]}).encode()


def new_bridge(store: Store, port: int, inbox: Inbox) -> mqtt.MqttBridge:
    """A bridge with the gateway's client id and persistent session, feeding `inbox` and
    acknowledging what it marks done."""
    return mqtt.MqttBridge(
        BrokerConfig(host="127.0.0.1", port=port, reconnect_max_s=0.5),
        topics=TOPICS,
        store=store,
        board=StatusBoard(lambda: T0),
        version="test",
        clock=lambda: T0,
        inbox=lambda event: inbox.put_leaving(event, 0),
        committed=inbox.committed,
        routes=InboundRoutes(TOPICS, agv=False, vda5050_interface=None),
    )


@contextlib.asynccontextmanager
async def bridge_on(store: Store, port: int, inbox: Inbox) -> AsyncIterator[mqtt.MqttBridge]:
    """`new_bridge` running until the block ends (then stopped cleanly)."""
    bridge = new_bridge(store, port, inbox)
    task = asyncio.create_task(bridge.run())
    try:
        async with asyncio.timeout(10):
            while not bridge.subscribed:
                await asyncio.sleep(0.02)
        yield bridge
    finally:
        bridge.stop()
        try:
            await asyncio.wait_for(task, 5)
        except TimeoutError:
            task.cancel()


async def taken(inbox: Inbox, count: int, timeout: float = 10) -> list[Event]:
    """The next `count` events of `inbox` (left undone: not committed)."""
    async with asyncio.timeout(timeout):
        return [await inbox.get() for _ in range(count)]


def asn_ids(events: list[Event]) -> list[str]:
    return [getattr(e.item, "asn_id", "?") for e in events if isinstance(e, RefDataUpdate)]


async def test_a_message_not_committed_comes_again_and_a_committed_one_does_not(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with await Store.open(tmp_path / "gateway.db") as store:
        # The gateway's first session, so that the broker keeps what comes while it is away.
        async with bridge_on(store, mosquitto.port, Inbox(100)):
            pass
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="wms") as wms:
            for n in (1, 2, 3):  # not retained: only the session brings them again
                await wms.publish(f"wms/DC1/asn/ASN-{n}", asn(n), qos=1)
        # The rules take the three in, and the gateway dies before committing them (the
        # bridge's task cancelled: no clean stop, nothing acknowledged).
        inbox = Inbox(100)
        task = asyncio.create_task(new_bridge(store, mosquitto.port, inbox).run())
        assert asn_ids(await taken(inbox, 3)) == ["ASN-1", "ASN-2", "ASN-3"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Started again: all three come again, in order; the first two are committed.
        inbox = Inbox(100)
        async with bridge_on(store, mosquitto.port, inbox):
            again = await taken(inbox, 3)
            assert asn_ids(again) == ["ASN-1", "ASN-2", "ASN-3"]
            inbox.task_done()
            inbox.task_done()
            await asyncio.sleep(0.5)  # the acknowledgements go out
        # The third was never committed (the stop found it undone): it alone comes again.
        inbox = Inbox(100)
        async with bridge_on(store, mosquitto.port, inbox):
            assert asn_ids(await taken(inbox, 1)) == ["ASN-3"]
            inbox.task_done()
            with pytest.raises(TimeoutError):
                await taken(inbox, 1, timeout=1.0)
        # And once committed it is gone from the session.
        inbox = Inbox(100)
        async with bridge_on(store, mosquitto.port, inbox):
            with pytest.raises(TimeoutError):
                await taken(inbox, 1, timeout=1.0)


async def test_committed_waits_for_every_event_queued_before() -> None:
    inbox = Inbox(10)
    event = RefDataUpdate(item=None, at=T0)  # type: ignore[arg-type]
    numbers = [await inbox.put_leaving(event, 0) for _ in range(3)]
    assert numbers == [1, 2, 3]
    third = asyncio.create_task(inbox.committed(3))
    first = asyncio.create_task(inbox.committed(1))
    for _ in range(3):
        inbox.get_nowait()
    inbox.task_done()
    await asyncio.sleep(0)
    assert first.done() and not third.done()
    inbox.task_done()
    inbox.task_done()
    await asyncio.wait_for(third, 1)
    await inbox.committed(2)  # done before: at once
    waiting = asyncio.create_task(inbox.committed(4))
    await asyncio.sleep(0)
    waiting.cancel()  # a connection lost while it waited: forgotten
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert not inbox._commit_waiters


async def test_a_repeat_redelivered_after_a_lost_link_waits_for_the_first_ones_commit(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The same bridge (its memory of what it took in) loses its link while ASN-1 waits for
    # its commit; the broker sends ASN-1 again, which the bridge knows for a repeat and does
    # not queue: it must not acknowledge it before the first copy is committed either.
    async with await Store.open(tmp_path / "gateway.db") as store:
        async with bridge_on(store, mosquitto.port, Inbox(100)):
            pass  # the session
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="wms") as wms:
            await wms.publish("wms/DC1/asn/ASN-1", asn(1), qos=1)
        inbox = Inbox(100)
        async with bridge_on(store, mosquitto.port, inbox) as bridge:
            assert asn_ids(await taken(inbox, 1)) == ["ASN-1"]
            mosquitto.stop()  # the link lost (the broker keeps the session on disk)
            mosquitto.start()
            async with asyncio.timeout(15):
                while not bridge.connected:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # ASN-1 again, a repeat: nothing queued
            assert inbox.empty()
        # Never committed: a fresh bridge gets it once more.
        inbox = Inbox(100)
        async with bridge_on(store, mosquitto.port, inbox):
            assert asn_ids(await taken(inbox, 1)) == ["ASN-1"]
