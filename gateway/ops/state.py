"""The site's live state, one retained message per thing: `gw/{site}/{gateway}/state/...`.

- `state/door/{door}`: the receipt and shipment open at the door, their progress per line,
  and the door's last transactions (kept in SQLite, so they survive a restart).
- `state/location/{location}`: the pallets the gateway's own transactions put there.
- `state/robot/{serial}`: the AGV task the robot holds and the last node it reported.
- `state/device/{device}`: the device's state and last error.
- `state/zone/{zone}`: the tags an RFID zone holds now (`gateway.rules.zones`).

`LiveState` reads the rules' state (a view: it changes nothing) after every commit, after a
device's transition and every few seconds (an ASN's window opening changes what a door has
open), and keeps each topic's payload. A payload that changed is queued for the bridge, which
publishes it retained (QoS 1) and, after a reconnect, publishes every topic again (a broker
that lost its retained messages gets them back). A thing that is gone (a location emptied, a
robot that holds nothing and never reported a node) gets an empty retained message, which
clears the topic. Which topics may be retained at the broker is kept in SQLite, written before
a topic's first publish: after a restart, topics of things no longer there are cleared.

What is not kept across a restart: robots' positions (until they report again) and the
locations of pallets beyond `max_pallets` (the most recently moved are loaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from gateway.domain import Committed, DockTransaction
from gateway.health import StatusBoard
from gateway.rules.engine import RulesEngine
from gateway.storage import RECENT_PER_DOOR, StateChanges, Store
from gateway.wire.codec import encode
from gateway.wire.state import (
    device_state,
    door_state,
    location_state,
    recent_entry,
    robot_state,
    zone_state,
)
from gateway.wire.topics import Topics, topic_refusal

__all__ = ["KINDS", "LiveState"]

log = structlog.get_logger("gateway.ops.state")

KINDS = ("door", "location", "robot", "device", "zone")
REFRESH_S = 5.0
"""Doors, robots and devices are read again this often without a change (time moves on)."""
COALESCE_S = 0.1
"""A burst of commits is read once, this long after its first."""


class LiveState:
    """The live state as retained topics (see the module docstring).

    Args:
        topics: this gateway's topic names.
        engine: the rules (read only).
        board: the devices' health.
        clock: the gateway's clock.
        max_pallets: the most pallets whose location is loaded at start.
    """

    def __init__(
        self,
        topics: Topics,
        engine: RulesEngine,
        board: StatusBoard,
        clock: Callable[[], Any],
        *,
        max_pallets: int = 200_000,
    ) -> None:
        self._topics = topics
        self._engine = engine
        self._board = board
        self._clock = clock
        self._max_pallets = max_pallets
        self._doors = _doors(engine)
        self._recent: dict[str, deque[dict[str, Any]]] = {
            door: deque(maxlen=RECENT_PER_DOOR) for door in self._doors
        }
        self._where: dict[str, str] = {}  # sscc -> location
        self._since: dict[str, float] = {}  # sscc -> since when (epoch s, event time)
        self._at: dict[str, set[str]] = {}  # location -> sscc
        self._dirty_locations: set[str] = set()
        self.current: dict[str, bytes] = {}  # topic -> its payload now
        self._unsent: dict[str, None] = {}  # topics to publish (their payload now, or clear)
        self.known: set[str] = set()  # topics that may be retained at the broker
        self._dirty = asyncio.Event()
        self._queued = asyncio.Event()
        self.version = 0  # goes up when any payload changes
        self._changed = asyncio.Event()
        self.skipped: set[str] = set()  # names that cannot be a topic level (logged once)
        self.refused = 0  # publishes the broker refused (an ACL)
        board.on_change = self.touch

    async def load(self, store: Store) -> None:
        """Where pallets are, each door's last transactions and the topics retained before."""
        for sscc, (location, since) in (await store.pallet_places(limit=self._max_pallets)).items():
            self._put(sscc, location, since)
        for door, bodies in (await store.door_recent()).items():
            recent = self._recent.setdefault(door, deque(maxlen=RECENT_PER_DOOR))
            recent.extend(json.loads(body) for body in bodies)
        self.known = await store.state_topics()
        self._dirty_locations = set(self._at)
        self.refresh()
        stale = self.known - self.current.keys()
        if stale:
            log.info("clearing state topics of things no longer there", topics=len(stale))
        self.resend_all()

    # --- what changes it ----------------------------------------------------------------------

    def touch(self) -> None:
        """Something changed: read the state again soon."""
        self._dirty.set()

    def committed(
        self,
        changes: StateChanges,
        committed: Sequence[Committed],
    ) -> None:
        """After a commit: pallets moved or shipped, a door's transactions."""
        now = self._clock().timestamp()
        for move in changes.moves:
            self._put(move.sscc, move.location, move.at or now)
        for sscc in (*changes.shipped, *changes.left):
            self._drop(sscc)
        for tx in committed:
            if isinstance(tx, DockTransaction):
                recent = self._recent.setdefault(tx.door, deque(maxlen=RECENT_PER_DOOR))
                recent.append(recent_entry(tx))
        self._dirty.set()

    async def run(self) -> None:
        """Until cancelled: read the state when it changed, or every `REFRESH_S`."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_S):
                    await self._dirty.wait()
            await asyncio.sleep(COALESCE_S)
            self._dirty.clear()
            self.refresh()

    def refresh(self) -> None:
        """Read doors, robots, devices and the locations that changed; queue what differs."""
        now = self._clock()
        payloads: dict[str, dict[str, Any]] = {}
        dock = self._engine.dock
        for door, role in self._doors.items():
            payloads[self._topic("door", door)] = door_state(
                door, role, dock.at_door(door, now), self._recent.get(door, ())
            )
        board = self._engine.agv
        if board is not None:
            held = board.open.holders()
            positions = board.observer.positions()
            for robot in held.keys() | positions.keys():
                payloads[self._topic("robot", robot)] = robot_state(
                    robot, held.get(robot), positions.get(robot)
                )
        for device_id, health in self._board.devices.items():
            payloads[self._topic("device", device_id)] = device_state(health.payload())
        for reader, tracker in self._engine.zones.items():
            for zone, epcs in tracker.snapshot().items():
                payloads[self._topic("zone", zone)] = zone_state(zone, reader, epcs)
        fresh = {topic: encode(p) for topic, p in payloads.items() if topic}
        changed = False
        for prefix in ("door", "robot", "device", "zone"):
            root = self._topics.state(prefix, "")
            for topic in [t for t in self.current if t.startswith(root) and t not in fresh]:
                changed |= self._set(topic, None)
        for topic, payload in fresh.items():
            changed |= self._set(topic, payload)
        dirty, self._dirty_locations = self._dirty_locations, set()
        for location in dirty:
            topic = self._topic("location", location)
            if topic:
                pallets = self._at.get(location)
                since = {p: self._since[p] for p in pallets or () if p in self._since}
                changed |= self._set(
                    topic, encode(location_state(location, pallets, since)) if pallets else None
                )
        if changed:
            self.version += 1
            self._changed.set()

    # --- what the bridge and the page use ------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state now: topic -> decoded payload (what a subscriber rebuilds)."""
        return {topic: json.loads(payload) for topic, payload in self.current.items()}

    def view(self, kind: str) -> dict[str, Any]:
        """The payloads of one kind (door, location, robot, device) by id."""
        root = self._topics.state(kind, "")
        return {
            topic[len(root) :]: json.loads(payload)
            for topic, payload in self.current.items()
            if topic.startswith(root)
        }

    async def changed(self, seen: int, timeout: float) -> int:
        """Wait until `version` differs from `seen` (or `timeout`); return it."""
        if self.version == seen:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        return self.version

    def resend_all(self) -> None:
        """Publish every topic again, and clear those known and gone (a new connection)."""
        self._unsent = dict.fromkeys(sorted(self.current.keys() | self.known))
        if self._unsent:
            self._queued.set()

    async def take(self, most: int) -> list[tuple[str, bytes]]:
        """Wait for topics to publish; up to `most` of them with their payloads (b"": clear)."""
        while not self._unsent:
            self._queued.clear()
            await self._queued.wait()
        out = []
        for topic in list(self._unsent)[:most]:
            del self._unsent[topic]
            out.append((topic, self.current.get(topic, b"")))
        return out

    def put_back(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Topics not published (the connection dropped): first in line again."""
        self._unsent = {**dict.fromkeys(t for t, _ in items), **self._unsent}
        self._queued.set()

    # --- internals ----------------------------------------------------------------------------

    def _set(self, topic: str, payload: bytes | None) -> bool:
        if payload is None:
            if self.current.pop(topic, None) is None:
                return False
        elif self.current.get(topic) == payload:
            return False
        else:
            self.current[topic] = payload
        self._unsent[topic] = None
        self._queued.set()
        return True

    def _topic(self, kind: str, key: str) -> str:
        """The topic of one thing; "" when its name cannot be one topic level."""
        refusal = "has a /" if "/" in key else topic_refusal(key)
        if refusal is None:
            return self._topics.state(kind, key)
        if key not in self.skipped and len(self.skipped) < 1000:
            self.skipped.add(key)
            log.warning(
                "no state topic for a name that is no topic level", kind=kind, name=key, why=refusal
            )
        return ""

    def _put(self, sscc: str, location: str, since: float) -> None:
        before = self._where.get(sscc)
        if before is not None and before != location:
            self._drop(sscc)
        self._since[sscc] = since
        self._where[sscc] = location
        self._at.setdefault(location, set()).add(sscc)
        self._dirty_locations.add(location)
        if len(self._where) > self._max_pallets:  # the pallet moved least recently goes
            self._drop(next(iter(self._where)))

    def _drop(self, sscc: str) -> None:
        self._since.pop(sscc, None)
        location = self._where.pop(sscc, None)
        if location is None:
            return
        pallets = self._at.get(location)
        if pallets is not None:
            pallets.discard(sscc)
            if not pallets:
                del self._at[location]
        self._dirty_locations.add(location)


def _doors(engine: RulesEngine) -> dict[str, str | None]:
    """The doors this gateway serves, with their role (None: a scale's door of unknown role)."""
    doors: dict[str, str | None] = {door: role.value for door, role in engine.door_roles.items()}
    for station in engine.dock_stations.values():
        doors.setdefault(station.door, station.role.value)
    for door, _capture in engine.scales.values():
        doors.setdefault(door, None)
    return dict(sorted(doors.items()))
