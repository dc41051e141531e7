"""What every driver is to the application: one protocol, one context, one registry entry.

A driver owns its device's transport and turns its bytes into domain events. The application
builds each configured device's driver through the registry (`gateway.drivers.registry`) with
the same `DriverContext` (where events go, the device's health record, the clock, the alarm
outputs) and runs its `run()` under the supervisor, which restarts it with capped, jittered
backoff when it raises. Adding a device kind is one driver module with a `build` function and
one line in the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.domain import Event
from gateway.health import DeviceHealth

Clock = Callable[[], dt.datetime]
"""The gateway's clock, timezone-aware; tests and demos may run it faster than real time."""


def utc_now() -> dt.datetime:
    """The wall clock, timezone-aware."""
    return dt.datetime.now(dt.UTC)


class EventSink(Protocol):
    """Where a driver hands its events: the rules' bounded inbox."""

    async def put(self, item: Event) -> None:
        """Hand over an event, waiting for room (backpressure to the device)."""

    def offer(self, item: Event) -> bool:
        """Hand over an event if there is room now; False (nothing taken) when full."""

    def keep(self, item: Event) -> None:
        """Hand over an event at once, beyond the bound: at a stop, for what was already read."""

    def backlog(self, since: float) -> contextlib.AbstractContextManager[None]:
        """While the block runs, events that waited at the device since `since` (monotonic
        time) are being read: event time stays there."""


class Driver(Protocol):
    """A device driver: `run()` works the device until cancelled, or raises when it fails."""

    async def run(self) -> None:
        """Connect, read and emit events; raise (a `DeviceError`) when the device is lost."""


class AlarmOutputs:
    """Stack lights and horns by door: output drivers register, the runner raises alarms."""

    def __init__(self) -> None:
        self._by_door: dict[str, list[Callable[[], None]]] = {}

    def register(self, doors: tuple[str, ...] | list[str], alarm: Callable[[], None]) -> None:
        """Call `alarm` whenever an alarm is raised at one of `doors`."""
        for door in doors:
            self._by_door.setdefault(door, []).append(alarm)

    def raise_at(self, door: str | None) -> None:
        """An alarm at `door`: every output of that door goes off."""
        for alarm in self._by_door.get(door or "", ()):
            alarm()


class PrintSpool:
    """Labels waiting for their station's printer, in order; each handed out until a printer
    driver says it printed (then `on_printed` records it, and it is gone)."""

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, str]] = {}  # station -> job id -> body, oldest first
        self._ready: dict[str, asyncio.Event] = {}
        self.on_printed: Callable[[str], Awaitable[None]] | None = None

    def add(self, jobs: Iterable[tuple[str, str, str]]) -> None:
        """Queue labels (job id, station, body); a job id already queued is not queued twice."""
        for job_id, station, body in jobs:
            self._jobs.setdefault(station, {}).setdefault(job_id, body)
            self._event(station).set()

    def pending(self, station: str) -> int:
        """Labels waiting for `station`'s printer."""
        return len(self._jobs.get(station, {}))

    async def next(self, station: str) -> tuple[str, str]:
        """The oldest label for `station` (waits for one); it stays queued until `done`."""
        jobs = self._jobs.setdefault(station, {})
        while not jobs:
            ready = self._event(station)
            ready.clear()
            await ready.wait()
        job_id = next(iter(jobs))
        return job_id, jobs[job_id]

    async def done(self, station: str, job_id: str) -> None:
        """The printer took the label: recorded (`on_printed`), then dropped from the queue."""
        if self.on_printed is not None:
            await self.on_printed(job_id)
        self._jobs.get(station, {}).pop(job_id, None)

    def _event(self, station: str) -> asyncio.Event:
        return self._ready.setdefault(station, asyncio.Event())


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What the application gives every driver it builds.

    Args:
        sink: where events go (the rules' inbox).
        health: this device's health record (state, counters, last error).
        clock: the gateway's clock.
        alarms: the alarm outputs, for drivers that drive a light or horn.
        location_pattern: the site's location label pattern (a regular expression).
        spool: labels for the printers.
    """

    sink: EventSink
    health: DeviceHealth
    clock: Clock
    location_pattern: str
    alarms: AlarmOutputs = field(default_factory=AlarmOutputs)
    spool: PrintSpool = field(default_factory=PrintSpool)


DriverBuilder = Callable[[Any, DriverContext], Driver]
"""How the driver of one configured device of a kind is built: `build(device, ctx)`."""
