"""systemd's service notifications (sd_notify, through the `sdnotify` package).

With `Type=notify` in the unit, the gateway says READY=1 once it runs (its store open, its
tasks started; the broker may still be down: STATUS says so), STATUS= when the broker
connection changes, WATCHDOG=1 every half `WatchdogSec` while its rules loop is alive (see
`gateway.ops.http`'s /healthz: alive or waiting for room in the outbox), and STOPPING=1 when
it stops. A gateway whose rules loop hangs stops sending WATCHDOG=1 and systemd restarts it.
Without NOTIFY_SOCKET (not under systemd) nothing is sent.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import sdnotify
import structlog

__all__ = ["Notifier"]

log = structlog.get_logger("gateway.ops")


class Notifier:
    """Tells systemd how the gateway is (a no-op outside systemd)."""

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier() if os.environ.get("NOTIFY_SOCKET") else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._status: str | None = None

    def ready(self, status: str) -> None:
        """The gateway runs."""
        self._send(f"READY=1\nSTATUS={status}")
        self._status = status

    def status(self, status: str) -> None:
        """A new one-line status (sent only when it changed)."""
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def stopping(self) -> None:
        """The gateway stops."""
        self._send("STOPPING=1\nSTATUS=stopping")

    async def watch(self, alive: Callable[[], str | None], status: Callable[[], str]) -> None:
        """Until cancelled: WATCHDOG=1 while `alive()` says None, and STATUS= on a change."""
        period = self.watchdog_s or 5.0
        warned = False
        while True:
            why = alive()
            if why is None:
                if self.watchdog_s is not None:
                    self._send("WATCHDOG=1")
                warned = False
            elif not warned:
                log.error("not alive: the watchdog is not fed", reason=why)
                warned = True
            self.status(status())
            await asyncio.sleep(period)

    def _send(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)
