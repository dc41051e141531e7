"""Keeps a device driver running: restart on failure with capped, jittered backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from gateway.health import DeviceHealth

log = structlog.get_logger("gateway.supervisor")


class DeviceError(Exception):
    """A device failed in a way the driver understood (port gone, reader refused config)."""


class Backoff:
    """Full-jitter exponential backoff between `min_s` and `max_s`."""

    def __init__(self, min_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The next wait: uniform in [min, min * 2**attempt], capped at max."""
        ceiling = min(self.max_s, self.min_s * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return self._rng.uniform(self.min_s, max(self.min_s, ceiling))

    def reset(self) -> None:
        """Start again from the shortest wait (after a healthy run)."""
        self._attempt = 0


async def supervise(
    run: Callable[[], Awaitable[None]],
    health: DeviceHealth,
    backoff: Backoff,
    *,
    healthy_after_s: float = 10.0,
) -> None:
    """Run `run()` until cancelled; a failure is recorded in `health` and retried after a wait.

    A driver's `run()` returns only when it was told to stop; any exception is a device failure.
    """
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
        except asyncio.CancelledError:
            health.stopped()
            raise
        except Exception as err:  # noqa: BLE001 - the supervisor is the boundary for every driver failure
            message = str(err) or type(err).__name__
            health.failed(message)
            log.debug("device failed", device=health.device_id, error=message)
        else:
            health.stopped()
            return
        if loop.time() - started >= healthy_after_s:
            backoff.reset()
        health.count("restarts")
        try:
            await asyncio.sleep(backoff.next_delay())
        except asyncio.CancelledError:
            health.stopped()
            raise
