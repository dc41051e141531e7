"""The operations surface: Prometheus metrics, health probes over HTTP, systemd notifications.

`Operations` is built by the app from its parts and runs in its TaskGroup; it only reads
them (and counts commits through `Recorder.on_committed`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from gateway.bridge.mqtt import MqttBridge
from gateway.config import GatewayConfig
from gateway.health import StatusBoard
from gateway.inbox import Inbox
from gateway.ops.systemd import Notifier
from gateway.recorder import Recorder
from gateway.rules.agv import TaskBoard
from gateway.runner import RulesRunner
from gateway.storage import StorageError, Store

if TYPE_CHECKING:
    from gateway.ops.metrics import GatewayMetrics

__all__ = ["Operations"]


class Operations:
    """Metrics, /healthz and /readyz, and sd_notify for one running gateway."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: Store,
        bridge: MqttBridge,
        board: StatusBoard,
        inbox: Inbox,
        runner: RulesRunner,
        recorder: Recorder,
        tasks: TaskBoard | None,
    ) -> None:
        self._config = config
        self._store, self._bridge, self._runner, self._recorder = store, bridge, runner, recorder
        self.notifier = Notifier()
        self.port: int | None = None  # the HTTP port, once listening
        self._oldest_age_s: float | None = None
        self.metrics: GatewayMetrics | None = None
        if config.http.enabled:  # prometheus-client and aiohttp only where they are used
            self.metrics = self._metrics(store, bridge, board, inbox, tasks)
            recorder.on_committed = self.metrics.committed

    def _metrics(
        self,
        store: Store,
        bridge: MqttBridge,
        board: StatusBoard,
        inbox: Inbox,
        tasks: TaskBoard | None,
    ) -> GatewayMetrics:
        from gateway.ops.metrics import GatewayMetrics, Readings

        metrics = GatewayMetrics()

        metrics.watch(
            Readings(
                outbox_depth=lambda: store.depth,
                outbox_bytes=lambda: store.size,
                outbox_max_rows=store.max_rows,
                outbox_oldest_age_s=lambda: self._oldest_age_s,
                broker_connected=lambda: bridge.connected,
                published=lambda: bridge.published,
                publish_refused=lambda: bridge.refused,
                connection_losses=lambda: bridge.connection_losses,
                devices=board.devices,
                inbox_events=inbox.qsize,
                inbox_capacity=inbox.maxsize,
                rules_lag_s=self.rules_lag_s,
                tasks=None if tasks is None else lambda: [t.state for t in tasks.open.values()],
            )
        )
        return metrics

    def rules_lag_s(self) -> float:
        """Seconds since the rules loop last went round (0 before it started)."""
        went = self._runner.went_round
        return 0.0 if went is None else max(0.0, asyncio.get_running_loop().time() - went)

    def alive(self) -> str | None:
        """None while the rules loop goes round (or waits for room in the outbox)."""
        lag = self.rules_lag_s()
        if lag > self._config.http.alive_s and not self._recorder.holding:
            return f"the rules loop has not gone round for {lag:.0f} s"
        return None

    def not_ready(self) -> list[str]:
        """Why the gateway is not ready (empty: ready)."""
        reasons = []
        if not self._bridge.connected:
            reasons.append("not connected to the broker")
        if self._store.fill() >= self._config.storage.outbox_alarm_ratio:
            reasons.append(
                f"outbox at {self._store.fill():.0%} of its limit (alarm at "
                f"{self._config.storage.outbox_alarm_ratio:.0%})"
            )
        if self._recorder.storage_failing:
            reasons.append("the storage does not take commits")
        why = self.alive()
        if why is not None:
            reasons.append(why)
        return reasons

    def status(self) -> str:
        """One line for systemd's STATUS=."""
        broker = "broker connected" if self._bridge.connected else "broker not connected"
        return f"{broker}; outbox {self._store.depth} of {self._store.max_rows}"

    async def before_scrape(self) -> None:
        """Read what the metrics need from the database."""
        with contextlib.suppress(StorageError):
            self._oldest_age_s = await self._store.oldest_age_s()

    async def run(self) -> None:
        """Until cancelled: the HTTP endpoint (if enabled) and systemd's watchdog."""
        self.notifier.ready(self.status())
        async with asyncio.TaskGroup() as tg:
            if self.metrics is not None:
                from gateway.ops.http import Probes, serve

                probes = Probes(self.alive, self.not_ready, self.before_scrape)
                tg.create_task(
                    serve(self._config.http, self.metrics, probes, started=self._listening),
                    name="ops.http",
                )
            tg.create_task(self.notifier.watch(self.alive, self.status), name="ops.watchdog")

    def stopping(self) -> None:
        """The gateway stops (systemd's STOPPING=1)."""
        self.notifier.stopping()

    def _listening(self, port: int) -> None:
        self.port = port
