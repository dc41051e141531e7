"""Test helpers for the AGV task API: a site with a layout, and an MQTT 5 requester."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

BASE = "gw/DC1/dock-1"
LAYOUT: dict[str, Any] = {
    "doors": [{"door": "D03", "x": 0.0, "y": 0.0}],
    "locations": [
        {
            "location": f"A-{n:02d}",
            "zone": "AMB",
            "velocity": "A",
            "capacity_pallets": 1,
            "x": 5.0 * n,
            "y": 10.0,
        }
        for n in range(1, 5)
    ]
    + [
        {
            "location": f"C-{n:02d}",
            "zone": "AMB",
            "velocity": "C",
            "capacity_pallets": 2,
            "x": 5.0 * n,
            "y": 40.0,
        }
        for n in range(1, 5)
    ],
}


def agv_section(**overrides: Any) -> dict[str, Any]:
    """The `[agv]` table of a test site."""
    return {"enabled": True, "lease_s": 30.0, "layout": LAYOUT, **overrides}


class Requester:
    """Sends AGV requests as a fleet controller does (MQTT 5 request/response) and waits."""

    def __init__(self, client: aiomqtt.Client, name: str) -> None:
        self.client = client
        self.response_topic = f"fleet/{name}/responses"
        self._waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = {}

    async def ask(self, op: str, payload: dict[str, Any] | bytes, timeout: float = 10) -> Any:
        """Send one request; its answer."""
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = self.response_topic
        properties.CorrelationData = correlation
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(f"{BASE}/agv/{op}", body, qos=1, properties=properties)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(correlation, None)

    async def listen(self) -> None:
        async for message in self.client.messages:
            correlation = getattr(message.properties, "CorrelationData", None)
            future = self._waiting.get(bytes(correlation)) if correlation else None
            if future is not None and not future.done():
                assert isinstance(message.payload, bytes | bytearray)
                future.set_result(json.loads(message.payload))


@contextlib.asynccontextmanager
async def requester(port: int, name: str = "fleet-1") -> AsyncIterator[Requester]:
    """A connected requester, subscribed to its response topic."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"test-{name}", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        r = Requester(client, name)
        await client.subscribe(r.response_topic, qos=1)
        task = asyncio.create_task(r.listen())
        try:
            yield r
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
