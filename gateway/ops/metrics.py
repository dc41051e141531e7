"""Prometheus metrics of the gateway (prometheus-client; names and labels in docs/metrics.md).

Two kinds. What happens is counted where it is committed (`GatewayMetrics.committed`, called
by the recorder after each commit): transactions by type, their exceptions by code, and the
events and alarms published, so that once the outbox is empty each counter equals the
messages a subscriber received on the matching topic. What *is* (outbox depth and age, broker
connection, devices, inbox, rules-loop lag, AGV tasks by state) is read when Prometheus
scrapes (`_Now`), so nothing is kept up to date for nobody.

Labels are bounded: transaction types, exception and event codes (a fixed set in the rules),
device ids and kinds (from the config), task states. Never an EPC, an SSCC or a tx id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.domain import (
    Committed,
    CountTransaction,
    DockSummary,
    DockTransaction,
    MoveTransaction,
    Notice,
    PackTransaction,
    TaskState,
)
from gateway.health import DeviceHealth, DeviceState

__all__ = ["CONTENT_TYPE", "GatewayMetrics", "Readings"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Readings:
    """Where the scrape-time figures come from (callables: read when scraped)."""

    outbox_depth: Callable[[], int]
    outbox_bytes: Callable[[], int]
    outbox_max_rows: int
    outbox_oldest_age_s: Callable[[], float | None]
    broker_connected: Callable[[], bool]
    published: Callable[[], int]
    publish_refused: Callable[[], int]
    connection_losses: Callable[[], int]
    devices: Mapping[str, DeviceHealth]
    inbox_events: Callable[[], int]
    inbox_capacity: int
    rules_lag_s: Callable[[], float]
    tasks: Callable[[], Iterable[TaskState]] | None


class GatewayMetrics:
    """The gateway's registry: counters fed by commits, gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.transactions = Counter(
            "gateway_transactions",
            "Transactions committed: receive, ship, move (tx/{type}); receipt, shipment (closed).",
            ["type"],
            registry=self.registry,
        )
        self.exceptions = Counter(
            "gateway_transaction_exceptions",
            "Exceptions found in committed transactions (short, over, unexpected, expired ...).",
            ["type", "code"],
            registry=self.registry,
        )
        self.events = Counter(
            "gateway_events",
            "Events and alarms committed for publishing (on event and alarm).",
            ["code", "severity"],
            registry=self.registry,
        )
        self.round_trips = Histogram(
            "gateway_broker_round_trip_seconds",
            "Time from publishing an outbox message to the broker's PUBACK (one sampled at a time).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )

    def watch(self, readings: Readings) -> None:
        """Read these figures at every scrape (the gateway's parts, once they exist)."""
        self.registry.register(_Now(readings))

    def committed(
        self,
        decisions: Sequence[Committed],
        notices: Sequence[Notice],
    ) -> None:
        """Count what one commit holds: its transactions and the notices it publishes."""
        for d in decisions:
            match d:
                case DockTransaction():
                    self._transaction(d.kind.value, d.exception_codes)
                case MoveTransaction():
                    self._transaction("move", d.exceptions)
                case DockSummary():  # a closed receipt or shipment (topic receipt, shipment)
                    self.transactions.labels(d.kind.value).inc()
                case PackTransaction():
                    self.transactions.labels("pack").inc()
                case CountTransaction():
                    self._transaction("count", d.exception_codes)
        for notice in notices:
            self.events.labels(notice.code, notice.severity.value).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    def _transaction(self, kind: str, codes: Iterable[str]) -> None:
        self.transactions.labels(kind).inc()
        for code, count in Tally(codes).items():
            self.exceptions.labels(kind, code).inc(count)


class _Now(Collector):
    """The figures read at scrape time."""

    def __init__(self, readings: Readings) -> None:
        self._r = readings

    def collect(self) -> Iterator[Metric]:
        r = self._r
        yield _gauge("gateway_outbox_messages", "Messages in the outbox.", r.outbox_depth())
        yield _gauge("gateway_outbox_limit_messages", "The outbox's row limit.", r.outbox_max_rows)
        yield _gauge("gateway_outbox_bytes", "Payload bytes in the outbox.", r.outbox_bytes())
        yield _gauge(
            "gateway_outbox_oldest_age_seconds",
            "Age of the oldest message waiting in the outbox (0: empty).",
            r.outbox_oldest_age_s() or 0.0,
        )
        yield _gauge(
            "gateway_broker_connected", "1 while connected to the broker.", r.broker_connected()
        )
        yield _counter(
            "gateway_broker_published",
            "Outbox messages the broker acknowledged.",
            r.published(),
        )
        yield _counter(
            "gateway_broker_publish_refused",
            "Publishes the broker refused (PUBACK reason code 0x80 or more).",
            r.publish_refused(),
        )
        yield _counter(
            "gateway_broker_connection_losses",
            "Broker sessions that ended other than by a stop.",
            r.connection_losses(),
        )
        up = GaugeMetricFamily(
            "gateway_device_up", "1 while the device is connected.", labels=["device", "kind"]
        )
        rate = GaugeMetricFamily(
            "gateway_device_reads_per_second",
            "Reads (tags, scans, weighings) per second over the last 10 s.",
            labels=["device", "kind"],
        )
        counts = CounterMetricFamily(
            "gateway_device_events",
            "What each device did: reads, rejected reads, errors, restarts.",
            labels=["device", "kind", "event"],
        )
        for device_id, health in sorted(r.devices.items()):
            labels = [device_id, health.kind]
            up.add_metric(labels, float(health.state is DeviceState.CONNECTED))
            rate.add_metric(labels, health.reads_per_s())
            for event, count in sorted(health.counts.items()):
                counts.add_metric([*labels, event], count)
        yield up
        yield rate
        yield counts
        yield _gauge("gateway_inbox_events", "Events waiting for the rules.", r.inbox_events())
        yield _gauge("gateway_inbox_capacity_events", "The inbox's bound.", r.inbox_capacity)
        yield _gauge(
            "gateway_rules_loop_lag_seconds",
            "Time since the rules loop last went round (it goes round at least every 0.2 s"
            " unless it waits for room in the outbox).",
            r.rules_lag_s(),
        )
        if r.tasks is not None:
            tasks = GaugeMetricFamily(
                "gateway_agv_tasks", "Open AGV tasks by state.", labels=["state"]
            )
            states = Tally(r.tasks())
            for state in TaskState:
                if not state.terminal:
                    tasks.add_metric([state.value], states.get(state, 0))
            yield tasks


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))
