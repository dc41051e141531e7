"""A handheld terminal (PDA) that scans scripted work and sends it to the gateway over MQTT 5.

Like a real warehouse app it numbers its scans from 1, keeps each until it has its final result,
and sends what it has in batches (MQTT 5 request/response on `gw/{site}/{gateway}/handheld/
scans`, the answer on `handheld/{terminal}/answers` with the batch's correlation data; with
`protocol="3.1.1"` the batch names its `reply_to` and `correlation`). While
`offline` it only scans; `flush` then sends the backlog. For tests it misbehaves on purpose,
from a seeded random generator: each batch sent one to `max_copies` times, and a share of
batches sent out of order (`reorder`). A scan answered `held` is sent again with the next flush.

`results` holds each scan's final result (the first one: a repeat must say the same, which
`disagreements` counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridge.suback import subscribe_or_raise

__all__ = ["HandheldTerminal", "Misbehaviour"]


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How a terminal's sending goes wrong (a flaky network, an app retrying)."""

    max_copies: int = 1  # each batch is sent 1 to this many times
    reorder: float = 0.0  # share of batches sent after the next one
    seed: int = 0


@dataclass
class HandheldTerminal:
    """One terminal; use it as an async context manager (it connects to the broker)."""

    terminal: str
    port: int
    host: str = "127.0.0.1"
    site: str = "DC1"
    gateway: str = "dock-1"
    operator: str | None = None
    batch_size: int = 50
    misbehaviour: Misbehaviour = Misbehaviour()
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    offline: bool = False
    answer_timeout_s: float = 20.0
    protocol: str = "5"  # "3.1.1": the reply topic and correlation go in the batch
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> final result
    disagreements: int = 0  # a repeat that gave another result than the first time
    batches_sent: int = 0
    _seq: int = 0
    _backlog: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> scan, not final
    _client: aiomqtt.Client | None = None
    _waiting: dict[bytes, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _listener: asyncio.Task[None] | None = None
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.misbehaviour.seed)

    @property
    def answers_topic(self) -> str:
        """Where the gateway answers this terminal."""
        return f"handheld/{self.terminal}/answers"

    async def __aenter__(self) -> Self:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._disconnect()

    async def reconnect(self) -> None:
        """Connect again (a link the broker dropped: a terminal's app does the same)."""
        await self._disconnect()
        await self._connect()

    async def _connect(self) -> None:
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"handheld-{self.terminal}",
            protocol=(
                aiomqtt.ProtocolVersion.V5 if self.protocol == "5" else aiomqtt.ProtocolVersion.V311
            ),
        )
        await self._client.__aenter__()
        try:
            await subscribe_or_raise(self._client, self.answers_topic)
        except BaseException:
            # Connected but not subscribed (a broker cluster that holds the SUBACK): no answer
            # would ever come on this link, so it is no link.
            await self._disconnect()
            raise
        self._listener = asyncio.create_task(self._listen())

    async def _disconnect(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(None, None, None)
            self._client = None

    def scan(self, purpose: str, barcode: str, **fields: Any) -> int:
        """Scan a label (kept until its result is final); its seq."""
        self._seq += 1
        scan = {
            "seq": self._seq,
            "purpose": purpose,
            "scanned_at": self.clock().isoformat(),
            "barcode": barcode,
            **fields,
        }
        if self.operator is not None:
            scan["operator"] = self.operator
        self._backlog[self._seq] = scan
        return self._seq

    @property
    def pending(self) -> int:
        """Scans without a final result."""
        return len(self._backlog)

    async def flush(self) -> None:
        """Send the backlog (unless offline), misbehaving as configured; wait for the answers."""
        if self.offline or not self._backlog:
            return
        scans = [self._backlog[s] for s in sorted(self._backlog)]
        batches = [scans[i : i + self.batch_size] for i in range(0, len(scans), self.batch_size)]
        order = list(range(len(batches)))
        for i in range(len(order) - 1):
            if self._rng.random() < self.misbehaviour.reorder:
                order[i], order[i + 1] = order[i + 1], order[i]
        for i in order:
            for _ in range(self._rng.randint(1, self.misbehaviour.max_copies)):
                self._take(await self.send(batches[i]))

    async def send(self, scans: list[dict[str, Any]]) -> dict[str, Any]:
        """Send one batch and wait for its answer; `aiomqtt.MqttError` without a link (after
        a failed `reconnect`)."""
        if self._client is None:
            raise aiomqtt.MqttError("not connected to the broker")
        correlation = uuid.uuid4().bytes
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        doc: dict[str, Any] = {"terminal": self.terminal, "scans": scans}
        properties = None
        if self.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = self.answers_topic
            properties.CorrelationData = correlation
        else:  # MQTT 3.1.1 has no response topic: named in the batch, echoed in the answer
            doc |= {"reply_to": self.answers_topic, "correlation": correlation.hex()}
        body = json.dumps(doc)
        topic = f"gw/{self.site}/{self.gateway}/handheld/scans"
        self.batches_sent += 1
        await self._client.publish(topic, body, qos=1, properties=properties)
        try:
            return await asyncio.wait_for(future, self.answer_timeout_s)
        finally:
            self._waiting.pop(correlation, None)

    def _take(self, answer: dict[str, Any]) -> None:
        if not answer.get("ok"):
            raise RuntimeError(f"batch refused: {answer.get('error')}")
        for result in answer["results"]:
            if not result["final"]:
                continue
            seq = result["seq"]
            first = self.results.setdefault(seq, result)
            if (first["result"], first["tx_id"]) != (result["result"], result["tx_id"]):
                self.disagreements += 1
            self._backlog.pop(seq, None)

    async def _listen(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            assert isinstance(message.payload, bytes | bytearray)
            answer = json.loads(message.payload)
            correlation = getattr(message.properties, "CorrelationData", None)
            if correlation is None and isinstance(answer.get("correlation"), str):
                correlation = bytes.fromhex(answer["correlation"])
            future = self._waiting.get(bytes(correlation)) if correlation else None
            if future is not None and not future.done():
                future.set_result(answer)
