"""Device health as data: state, last error and counts, published retained on every change.

A device going down is logged once, and coming back once; repeated failures while it stays
down only update the counts.

`last_error` is the device's current problem, with `last_error_at`, when it was last seen.
Once the device answers again (it becomes connected, or a driver clears a problem the device
had while connected), the error is no longer current: it moves to `previous_error` and
`previous_error_at`, kept as history until the next error replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from gateway.wire.codec import WIRE_VERSION, iso

log = structlog.get_logger("gateway.health")


class DeviceState(enum.StrEnum):
    """Where a device is in its life."""

    STARTING = "starting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


class DeviceHealth:
    """Health of one device, updated by its driver and supervisor."""

    def __init__(
        self,
        device_id: str,
        kind: str,
        *,
        on_change: Callable[[], None],
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self.state = DeviceState.STARTING
        self.last_error: str | None = None
        self.last_error_at: dt.datetime | None = None
        self.previous_error: str | None = None
        self.previous_error_at: dt.datetime | None = None
        self.since = clock()
        self.counts: dict[str, int] = {"reads": 0, "rejected": 0, "errors": 0, "restarts": 0}
        # (monotonic time, reads) per batch, for the reads/s figure; bounded.
        self._recent: deque[tuple[float, int]] = deque(maxlen=10_000)
        self._last_data: float | None = None
        self._on_change = on_change
        self._clock = clock

    def connected(self) -> None:
        """The device answered: it is open and talking. Its last error becomes history."""
        if self.state is not DeviceState.CONNECTED:
            log.info("device connected", device=self.device_id, kind=self.kind)
            self._archive_error()
            self._transition(DeviceState.CONNECTED)

    def failed(self, error: str) -> None:
        """The device failed; the supervisor will try again."""
        self.counts["errors"] += 1
        if self.state is not DeviceState.DISCONNECTED or error != self.last_error:
            if self.state is not DeviceState.DISCONNECTED:
                log.warning("device down", device=self.device_id, kind=self.kind, error=error)
            self._set_error(error)
            self._transition(DeviceState.DISCONNECTED)
        else:
            self.last_error_at = self._clock()  # the same failure again: seen again now

    def note_error(self, error: str) -> None:
        """The device reports a problem but keeps working: shown as `last_error`, counted.

        A new error is published at once; the same one again (a scale refusing every poll)
        only moves `last_error_at` on, published with the counts at the next refresh.
        """
        self.counts["device_errors"] = self.counts.get("device_errors", 0) + 1
        changed = error != self.last_error
        self._set_error(error)
        if changed:
            self._on_change()

    def clear_error(self) -> None:
        """The device answered properly again while connected: its last error (noted with
        `note_error`) is no longer current and becomes history. No-op without one."""
        if self.last_error is not None:
            self._archive_error()
            self._on_change()

    def stopped(self) -> None:
        """The gateway stopped the device on purpose."""
        if self.state is not DeviceState.STOPPED:
            log.info("device stopped", device=self.device_id)
            self._transition(DeviceState.STOPPED)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a counter; `reads` also feeds the reads-per-second figure."""
        self.counts[name] = self.counts.get(name, 0) + n
        if name == "reads":
            now = time.monotonic()
            self._recent.append((now, n))

    def data_received(self) -> None:
        """The device sent something (a label, a tag report)."""
        self._last_data = time.monotonic()

    def reads_per_s(self, window_s: float = 10.0) -> float:
        """Average read rate over the last `window_s` seconds."""
        cutoff = time.monotonic() - window_s
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return round(sum(n for _, n in self._recent) / window_s, 2)

    def payload(self) -> dict[str, Any]:
        """The retained `device/{id}/status` payload."""
        return {
            "version": WIRE_VERSION,
            "device": self.device_id,
            "kind": self.kind,
            "state": self.state.value,
            "connected": self.state is DeviceState.CONNECTED,
            "since": iso(self.since),
            "last_error": self.last_error,
            "last_error_at": _iso_or_none(self.last_error_at),
            "previous_error": self.previous_error,
            "previous_error_at": _iso_or_none(self.previous_error_at),
            "counts": dict(self.counts),
            "reads_per_s": self.reads_per_s(),
            "last_data_age_s": (
                None if self._last_data is None else round(time.monotonic() - self._last_data, 3)
            ),
            "at": iso(self._clock()),
        }

    def _set_error(self, error: str) -> None:
        self.last_error = error
        self.last_error_at = self._clock()

    def _archive_error(self) -> None:
        if self.last_error is not None:
            self.previous_error, self.previous_error_at = self.last_error, self.last_error_at
            self.last_error = self.last_error_at = None

    def _transition(self, state: DeviceState) -> None:
        self.state = state
        self.since = self._clock()
        self._on_change()


def _iso_or_none(at: dt.datetime | None) -> str | None:
    return None if at is None else iso(at)


class StatusBoard:
    """The latest health of every device; the bridge publishes what changed.

    State transitions are published at once; counts that changed without a transition are
    published at most every `refresh_s` seconds, so a busy device does not flood the broker.
    """

    def __init__(self, clock: Callable[[], dt.datetime], *, refresh_s: float = 10.0) -> None:
        self._clock = clock
        self.refresh_s = refresh_s
        self.devices: dict[str, DeviceHealth] = {}
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()
        self._published_counts: dict[str, dict[str, int]] = {}
        self.on_change: Callable[[], None] | None = None  # a transition or a new last error

    def add(self, device_id: str, kind: str) -> DeviceHealth:
        """Register a device and return its health record."""
        health = DeviceHealth(
            device_id, kind, on_change=lambda: self._mark(device_id), clock=self._clock
        )
        self.devices[device_id] = health
        self._mark(device_id)
        return health

    def mark_all(self) -> None:
        """Publish every device again (after a reconnect)."""
        for device_id in self.devices:
            self._mark(device_id)

    async def changed(self) -> list[DeviceHealth]:
        """Wait for a transition (or the refresh period); return the devices to publish."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.refresh_s)
        self._changed.clear()
        dirty, self._dirty = self._dirty, set()
        for device_id, health in self.devices.items():
            if health.counts != self._published_counts.get(device_id):
                dirty.add(device_id)
        for device_id in dirty:
            self._published_counts[device_id] = dict(self.devices[device_id].counts)
        return [self.devices[d] for d in sorted(dirty)]

    def _mark(self, device_id: str) -> None:
        self._dirty.add(device_id)
        self._changed.set()
        if self.on_change is not None:
            self.on_change()
