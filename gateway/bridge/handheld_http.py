"""Handheld batches over HTTP (aiohttp's web server): `POST /handheld/scans`.

For terminals that speak HTTP rather than MQTT. The body is the same batch as on MQTT
(`handheld-batch` schema); the request carries `Authorization: Bearer <token>`, and the batch
must name the terminal the token belongs to (`[handheld] tokens`). The answer (the
`handheld-answer` schema) comes once what the batch did is committed:

- 200: the results, one per scan (`held` ones are to be sent again later);
- 400: the batch was refused as a whole (`"ok": false`, `error`); nothing of it was applied;
- 401: no token, or an unknown one; 403: the batch names another terminal than the token's;
- 413: larger than `MAX_BATCH_BYTES`; 503: no answer within `ANSWER_TIMEOUT_S` (the gateway
  is holding intake: send it again later, nothing is applied twice).

It runs in the gateway's TaskGroup (`[handheld.http] enabled`), and stops with it.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog
from aiohttp import web

from gateway.config import HandheldHttpConfig
from gateway.domain import (
    CloseAnswer,
    Event,
    HandheldAnswer,
    InputKind,
    Rejected,
    ReplyHandle,
    TaskAnswer,
)
from gateway.drivers.barcode import LabelRules
from gateway.drivers.base import Clock
from gateway.httptls import serve_app
from gateway.wire.handheld import MAX_BATCH_BYTES, BadBatch, answer_payload, parse_batch

__all__ = ["ANSWER_TIMEOUT_S", "application", "serve"]

log = structlog.get_logger("gateway.handheld")

ANSWER_TIMEOUT_S = 30.0


class _Waiter:
    """The reply address of one HTTP request: the recorder calls `deliver` after the commit."""

    def __init__(self) -> None:
        self.future: asyncio.Future[HandheldAnswer] = asyncio.get_running_loop().create_future()

    def deliver(self, answer: TaskAnswer | CloseAnswer | HandheldAnswer) -> None:
        if isinstance(answer, HandheldAnswer) and not self.future.done():
            self.future.set_result(answer)


def application(
    tokens: Mapping[str, str],
    labels: LabelRules,
    put: Callable[[Event], Awaitable[object]],
    clock: Clock,
) -> web.Application:
    """The aiohttp application (`put` hands an event to the rules' queue)."""
    by_token = [(token.encode(), terminal) for terminal, token in tokens.items()]
    app = web.Application(client_max_size=MAX_BATCH_BYTES)

    def terminal_of(request: web.Request) -> str | None:
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return None
        token = given.removeprefix("Bearer ").strip().encode()
        found = None
        for known, terminal in by_token:  # every token compared: no timing tells which
            if hmac.compare_digest(token, known):
                found = terminal
        return found

    async def scans(request: web.Request) -> web.Response:
        terminal = terminal_of(request)
        if terminal is None:
            return _json({"ok": False, "error": "a terminal's bearer token is needed"}, 401)
        try:
            payload = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json({"ok": False, "error": f"larger than {MAX_BATCH_BYTES} bytes"}, 413)
        at = clock()
        parsed = parse_batch(payload, at, labels)
        batch = parsed.batch
        if isinstance(batch, BadBatch):
            await put(Rejected(InputKind.HANDHELD, terminal, batch.reason, at, None, terminal))
            refused = HandheldAnswer(terminal, (), batch.reason)
            return _json(answer_payload(refused), 400)
        if batch.terminal != terminal:
            reason = f"the batch names terminal {batch.terminal!r}, the token is {terminal!r}'s"
            return _json(answer_payload(HandheldAnswer(terminal, (), reason)), 403)
        waiter = _Waiter()
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):  # intake held: the queue is full
                await put(replace(batch, reply=ReplyHandle(waiter)))
                answer = await asyncio.shield(waiter.future)
        except TimeoutError:
            busy = HandheldAnswer(terminal, (), "no answer in time: send the batch again later")
            return _json(answer_payload(busy), 503)
        return _json(answer_payload(answer), 200)

    app.router.add_post("/handheld/scans", scans)
    return app


async def serve(
    config: HandheldHttpConfig,
    tokens: Mapping[str, str],
    labels: LabelRules,
    put: Callable[[Event], Awaitable[object]],
    clock: Clock,
    *,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve until cancelled; `started(port)` once listening (an unbindable address is
    retried with backoff: `gateway.httptls.serve_app`)."""
    await serve_app(
        application(tokens, labels, put, clock),
        config.host,
        config.port,
        config.tls,
        name="handheld",
        started=started,
    )


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.json_response(body, status=status)
