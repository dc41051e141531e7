"""The gateway's HTTP endpoint (aiohttp's web server): metrics and health probes.

- `GET /metrics`: Prometheus text format (`gateway.ops.metrics`).
- `GET /healthz`: 200 while the process and its rules loop are alive (the loop went round
  within `alive_s`, or it is waiting for room in the outbox, which is the broker's problem, not
  a hang); 503 otherwise. For a container runtime's liveness probe.
- `GET /readyz`: 200 when the broker is connected, the outbox is below its alarm level and the
  storage takes commits; 503 with the reasons otherwise. For a load balancer or a monitor.
- `GET /`: the status page (`static/index.html`, charts by the vendored uPlot); it reads
  `GET /api/status` once and then follows `GET /events` (server-sent events: the same
  document whenever it changed, at most every `PUSH_MIN_S`).

Read-only. Bound to localhost by default; any other address needs `[http] password` (HTTP
basic auth, user `gateway`) or client certificates (`[http.tls] client_ca_file`: mutual TLS),
which the config checks. `[http.tls]` serves HTTPS. It runs in the gateway's TaskGroup and
stops with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import encode_basic_auth, web

from gateway.config import HttpConfig
from gateway.httptls import serve_app
from gateway.ops.metrics import CONTENT_TYPE, GatewayMetrics

__all__ = ["Probes", "serve"]

log = structlog.get_logger("gateway.ops")
USER = "gateway"
STATIC = Path(__file__).parent / "static"
PUSH_MIN_S = 0.25
"""The status page is sent a new document at most this often."""
PUSH_CHECK_S = 1.0
"""...and checked for one this often when the live state did not change (read rates, outbox)."""


@dataclass(frozen=True, slots=True)
class Probes:
    """What the health endpoints ask."""

    alive: Callable[[], str | None]  # None: alive; else why not
    not_ready: Callable[[], list[str]]  # why the gateway is not ready (empty: ready)
    before_scrape: Callable[[], Awaitable[None]]  # refresh what needs the database
    document: Callable[[], Awaitable[dict[str, Any]]]  # what the status page shows
    wait_changed: Callable[[int, float], Awaitable[int]]  # (seen version, timeout) -> version


def application(config: HttpConfig, metrics: GatewayMetrics, probes: Probes) -> web.Application:
    """The aiohttp application (also used by tests without a socket)."""
    middlewares = [] if config.password is None else [_basic_auth(config.password)]
    app = web.Application(middlewares=middlewares)

    async def get_metrics(_: web.Request) -> web.Response:
        await probes.before_scrape()
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        why = probes.alive()
        return _status(why is None, [] if why is None else [why])

    async def readyz(_: web.Request) -> web.Response:
        reasons = probes.not_ready()
        return _status(not reasons, reasons)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=NO_CACHE)

    async def status(_: web.Request) -> web.Response:
        return web.json_response(await probes.document(), headers=NO_CACHE)

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", **NO_CACHE, "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        sent, seen = "", -1
        with contextlib.suppress(ConnectionResetError):
            while True:
                body = json.dumps(await probes.document(), separators=(",", ":"))
                if body != sent:
                    await response.write(f"data: {body}\n\n".encode())
                    sent = body
                seen = await probes.wait_changed(seen, PUSH_CHECK_S)
                await asyncio.sleep(PUSH_MIN_S)
        return response

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", index)
    app.router.add_get("/api/status", status)
    app.router.add_get("/events", events)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(
    config: HttpConfig,
    metrics: GatewayMetrics,
    probes: Probes,
    *,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve until cancelled; `started(port)` once listening (port 0 in the config: any).
    An unbindable address is retried with backoff (`gateway.httptls.serve_app`), the gateway
    working meanwhile (and /healthz failing for a probe that expects it)."""
    await serve_app(
        application(config, metrics, probes),
        config.host,
        config.port,
        config.tls,
        name="http",
        started=started,
    )


NO_CACHE = {"Cache-Control": "no-store"}


def _status(ok: bool, reasons: list[str]) -> web.Response:
    body = json.dumps({"ok": ok, "reasons": reasons}) + "\n"
    return web.Response(
        status=200 if ok else 503, text=body, content_type="application/json", charset="utf-8"
    )


def _basic_auth(password: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = encode_basic_auth(USER, password).encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.Response(
                status=401,
                text="authentication required\n",
                headers={"WWW-Authenticate": 'Basic realm="gateway", charset="UTF-8"'},
            )
        return await handler(request)

    return check
