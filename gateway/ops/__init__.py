"""The operations surface: Prometheus metrics, health probes over HTTP, systemd notifications.

`Operations` is built by the app from its parts and runs in its TaskGroup; it only reads
them (and counts commits through `Recorder.on_committed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.bridge.mqtt import MqttBridge
from gateway.config import GatewayConfig
from gateway.health import StatusBoard
from gateway.inbox import Inbox
from gateway.ops.state import LiveState
from gateway.ops.status import Alarms, chained, trend_series
from gateway.ops.systemd import Notifier
from gateway.recorder import Recorder
from gateway.rules.agv import TaskBoard
from gateway.runner import RulesRunner
from gateway.storage import StorageError, Store

if TYPE_CHECKING:
    from gateway.ops.metrics import GatewayMetrics

__all__ = ["Operations"]

DOCUMENT_REUSE_S = 0.2
"""The status page's document is built at most this often (many open pages share it)."""
TRENDS_REUSE_S = 2.0
"""The trend charts are read from SQLite at most this often."""


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
        live: LiveState | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        version: str = "",
        listening: asyncio.Event | None = None,
    ) -> None:
        self._config = config
        self._store, self._bridge, self._runner, self._recorder = store, bridge, runner, recorder
        self._board, self._tasks, self._live, self._clock = board, tasks, live, clock
        self._version = version
        self.listening = listening or asyncio.Event()  # set once the HTTP endpoint listens
        self._started_at = clock()
        self.alarms = Alarms()
        self._trends: tuple[float, dict[str, Any]] | None = None  # (read at, the two charts)
        self._document: tuple[float, dict[str, Any]] | None = None
        self.notifier = Notifier()
        self.port: int | None = None  # the HTTP port, once listening
        self._oldest_age_s: float | None = None
        self.metrics: GatewayMetrics | None = None
        if config.http.enabled:  # prometheus-client and aiohttp only where they are used
            self.metrics = self._metrics(store, bridge, board, inbox, tasks)
            recorder.on_committed = chained(self.metrics.committed, self.alarms.committed)
            bridge.on_round_trip = self.metrics.round_trips.observe

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

    async def document(self) -> dict[str, Any]:
        """What the status page shows (`gateway.ops.status`), built at most every 0.2 s."""
        loop = asyncio.get_running_loop()
        if self._document is not None and loop.time() - self._document[0] < DOCUMENT_REUSE_S:
            return self._document[1]
        await self.before_scrape()
        store, live = self._store, self._live
        devices = []
        for health in self._board.devices.values():
            payload = health.payload()
            devices.append(
                {
                    key: payload[key]
                    for key in (
                        "device",
                        "kind",
                        "state",
                        "since",
                        "last_error",
                        "last_error_at",
                        "reads_per_s",
                        "counts",
                    )
                }
            )
        tasks = self._tasks
        reasons = self.not_ready()
        document = {
            "gateway": {
                "site": self._config.gateway.site,
                "id": self._config.gateway.id,
                "version": self._version,
                "started_at": self._started_at.isoformat(),
                "broker_connected": self._bridge.connected,
                "ready": not reasons,
                "not_ready": reasons,
            },
            "outbox": {
                "depth": store.depth,
                "limit": store.max_rows,
                "bytes": store.size,
                "oldest_age_s": self._oldest_age_s,
            },
            "doors": list(live.view("door").values()) if live else [],
            "robots": list(live.view("robot").values()) if live else [],
            "devices": devices,
            "tasks": None
            if tasks is None
            else dict(Counter(t.state.value for t in tasks.open.values())),
            "alarms": self.alarms.json(),
            "trends": await self._trend_charts(),
        }
        self._document = (loop.time(), document)
        return document

    async def wait_changed(self, seen: int, timeout: float) -> int:
        """Wait for the live state to change (or `timeout`); its version."""
        if self._live is None:
            await asyncio.sleep(timeout)
            return seen
        return await self._live.changed(seen, timeout)

    async def _trend_charts(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if self._trends is not None and loop.time() - self._trends[0] < TRENDS_REUSE_S:
            return self._trends[1]
        now = self._clock()
        since = now - dt.timedelta(days=31)
        try:
            hours = await self._store.trends(since=since.timestamp(), until=now.timestamp() + 3600)
        except StorageError:
            hours = []
        per_hour, per_day = trend_series(hours, now)
        charts = {"per_hour": per_hour.json(), "per_day": per_day.json()}
        self._trends = (loop.time(), charts)
        return charts

    async def run(self) -> None:
        """Until cancelled: the HTTP endpoint (if enabled) and systemd's watchdog."""
        self.notifier.ready(self.status())
        async with asyncio.TaskGroup() as tg:
            if self.metrics is not None:
                from gateway.ops.http import Probes, serve

                probes = Probes(
                    self.alive,
                    self.not_ready,
                    self.before_scrape,
                    self.document,
                    self.wait_changed,
                )
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
        self.listening.set()
