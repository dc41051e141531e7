"""The gateway's HTTP listeners (the operations endpoint, the handheld intake): TLS, and serving
an aiohttp application until cancelled."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog
from aiohttp import web

from gateway.config import HttpTlsConfig
from gateway.supervisor import Backoff

__all__ = ["serve_app", "server_tls"]

log = structlog.get_logger("gateway.http")


def server_tls(tls: HttpTlsConfig | None) -> ssl.SSLContext | None:
    """HTTPS (TLS 1.2 or later), with client certificates required when a client CA is given;
    None: plain HTTP."""
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    tls: HttpTlsConfig | None,
    *,
    name: str,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve `app` until cancelled; `started(port)` once listening (port 0: any).

    An address that cannot be bound (the port is taken, the address is not this host's, a bad
    certificate file) is logged once and tried again with backoff: the gateway goes on with
    its work meanwhile, without this endpoint."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    backoff, failing = Backoff(1.0, 30.0), False
    try:
        while True:
            try:
                await web.TCPSite(runner, host, port, ssl_context=server_tls(tls)).start()
                break
            except OSError as err:  # ssl.SSLError too
                if not failing:
                    log.error(  # noqa: TRY400 - the reason is the whole story
                        f"{name} endpoint cannot listen; retrying",
                        host=host,
                        port=port,
                        error=str(err),
                    )
                    failing = True
                await asyncio.sleep(backoff.next_delay())
        bound = runner.addresses[0][1]
        log.info(f"{name} endpoint listening", host=host, port=bound)
        if started is not None:
            started(bound)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await runner.cleanup()
