"""Pick and drop confirmations from what AGVs report over VDA 5050.

Fleet controllers do not always tell the gateway that a robot picked or dropped a load; the
robots' own `state` messages do. `RobotObserver` is fed the parsed `state` and `connection`
messages of every robot (`gateway.wire.vda5050.parse` makes them) and returns what they
confirm: `PickConfirmed`, `DropConfirmed`, `ActionFailed`, `RobotLost`. It is pure: no clock,
no I/O; every time it reports is the robot's own message timestamp.

Which messages count. Per robot and topic, a message counts when its headerId or its timestamp
is newer than those of the last one that counted. A duplicate (same headerId and timestamp) or
a message overtaken by a later one (both older) is ignored. A headerId that goes back with a
newer timestamp is a robot that restarted and counts its headerIds from 0 again.

Per robot and action, every transition lives in `RobotObserver._on_action` and is listed here
(`actionType` "pick" or "drop", from the state or, when the robot leaves it out, from `expect`):

| action is            | state reports          | result                                          |
|----------------------|------------------------|-------------------------------------------------|
| unknown or waiting   | WAITING                | waiting; the robot's loads now are its "before" |
| unknown              | INITIALIZING, RUNNING, PAUSED, RETRIABLE | started; "before" = the loads of the previous state |
| waiting or started   | the same, not WAITING  | started; remember the node while not driving    |
| unknown or started   | FINISHED               | `PickConfirmed` / `DropConfirmed`; done         |
| unknown or started   | FAILED                 | `ActionFailed`; done                            |
| done                 | anything               | nothing (a FINISHED action stays in every later state) |
| any other type       | anything               | nothing                                         |

Which load. A VDA 5050 state carries no action parameters, so the load is found like this:
1. the robot's `loads` before the action and at its end: a pick confirms the load id that
   appeared, a drop the one that left. When several did, the one the order named wins;
2. otherwise the load id registered with `expect(action_id, load_id)` from the order the
   gateway or the fleet controller sent;
3. otherwise none (`load_id` None, `load_source` UNKNOWN).
`load_source` says which rule gave the id, and `expected_load_id` keeps what the order said, so
a consumer sees a robot that picked a different pallet than it was told to. A failed action
names the order's load, else (a failed drop) the only load still on board, else none.
Robots that leave `loads` out, or list loads without `loadId` (both optional), give no load id
unless `expect` was told one; the task board then takes the load from the task the robot holds
(`gateway.rules.agv`), but only for an action with `seen_before_end`: the observer saw it
WAITING or running before it ended, so it is not a leftover of an order that ended before the
observer started (after a gateway restart, a robot's state still lists its previous order's
FINISHED actions).

Which node and location. The node the order attached the action to (`expect(..., node_id=)`)
when known, else the node the robot stood on while the action ran, else its `lastNodeId` when
the end was reported. `locations` maps node ids to location ids; a node without a mapping keeps
its node id as the location and the event says `location_known=False`.

A robot whose `connection` turns OFFLINE or CONNECTIONBROKEN (the broker's last will) gives one
`RobotLost`; it may be lost again after it was ONLINE once more.

Memory is bounded: per robot, the finished or failed action ids its last state still reports
(a state is at most `gateway.wire.vda5050.MAX_PAYLOAD_BYTES`) and the last `max_done_actions`
others; at most `max_robots` robots (the one heard from least recently is forgotten first) and at most
`max_expected` registered expectations (the oldest is forgotten first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.domain import (
    ActionState,
    ActionStatus,
    ConnectionState,
    LoadSource,
    RobotConnection,
    RobotError,
    RobotId,
    RobotPosition,
    RobotState,
)

__all__ = [
    "ActionFailed",
    "DropConfirmed",
    "PickConfirmed",
    "RobotEvent",
    "RobotLost",
    "RobotObserver",
]


# --- what the observer concludes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PickConfirmed:
    """A pick action finished: the robot took `load_id` at `location`."""

    robot: RobotId
    action_id: str
    load_id: str | None
    node_id: str
    location: str  # the node id itself when the node has no mapping
    location_known: bool
    at: dt.datetime  # the timestamp of the state that reported it
    load_source: LoadSource
    expected_load_id: str | None = None  # what the order said, if registered
    seen_before_end: bool = False  # seen WAITING or running first (see the module docstring)


@dataclass(frozen=True, slots=True)
class DropConfirmed:
    """A drop action finished: the robot set `load_id` down at `location`."""

    robot: RobotId
    action_id: str
    load_id: str | None
    node_id: str
    location: str
    location_known: bool
    at: dt.datetime
    load_source: LoadSource
    expected_load_id: str | None = None
    seen_before_end: bool = False


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A pick or drop action failed; `reason` is the robot's result text and related errors."""

    robot: RobotId
    action_id: str
    action_type: str  # "pick" or "drop"
    load_id: str | None
    node_id: str
    location: str
    location_known: bool
    at: dt.datetime
    reason: str
    seen_before_end: bool = False


@dataclass(frozen=True, slots=True)
class RobotLost:
    """The robot went OFFLINE, or the broker announced CONNECTIONBROKEN (its last will)."""

    robot: RobotId
    state: ConnectionState
    at: dt.datetime


RobotEvent = PickConfirmed | DropConfirmed | ActionFailed | RobotLost

_PICK = "pick"
_DROP = "drop"
_HANDLED_TYPES = (_PICK, _DROP)
_STARTED = frozenset(
    {
        ActionStatus.INITIALIZING,
        ActionStatus.RUNNING,
        ActionStatus.PAUSED,
        ActionStatus.RETRIABLE,
    }
)
_LOST = frozenset({ConnectionState.OFFLINE, ConnectionState.CONNECTIONBROKEN})


@dataclass(frozen=True, slots=True)
class _Expected:
    load_id: str | None
    action_type: str | None
    node_id: str | None


@dataclass(slots=True)
class _Tracked:
    """A pick or drop seen before its end."""

    before: tuple[str, ...] | None  # the robot's loads before the action
    started: bool = False
    node_id: str | None = None  # where the robot stood, not driving, while the action ran


@dataclass(frozen=True, slots=True)
class _Mark:
    """The last message that counted on one topic."""

    header_id: int
    timestamp: dt.datetime

    def is_newer(self, header_id: int, timestamp: dt.datetime) -> bool:
        return header_id > self.header_id or timestamp > self.timestamp


@dataclass(slots=True)
class _Robot:
    state_mark: _Mark | None = None
    connection_mark: _Mark | None = None
    loads: tuple[str, ...] | None = None  # from the last state that counted
    lost: bool = False
    tracked: dict[str, _Tracked] = field(default_factory=dict)
    done: OrderedDict[str, None] = field(default_factory=OrderedDict)
    position: RobotPosition | None = None  # the last node the robot reported, since when


class RobotObserver:
    """Turns robots' VDA 5050 states into pick and drop confirmations, each exactly once.

    Args:
        locations: node id -> location id, for the locations in the events.
        max_done_actions: finished or failed action ids remembered per robot besides those
            its last state reports (a message overtaken by others is ignored anyway).
        max_robots: robots remembered.
        max_expected: expectations (`expect`) remembered.
    """

    def __init__(
        self,
        locations: Mapping[str, str] | None = None,
        *,
        max_done_actions: int = 256,
        max_robots: int = 1024,
        max_expected: int = 10_000,
    ) -> None:
        for name, value in (
            ("max_done_actions", max_done_actions),
            ("max_robots", max_robots),
            ("max_expected", max_expected),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self._locations = dict(locations or {})
        self._max_done = max_done_actions
        self._max_robots = max_robots
        self._max_expected = max_expected
        self._robots: OrderedDict[RobotId, _Robot] = OrderedDict()
        self._expected: OrderedDict[str, _Expected] = OrderedDict()

    def expect(
        self,
        action_id: str,
        load_id: str | None,
        *,
        action_type: str | None = None,
        node_id: str | None = None,
    ) -> None:
        """Register what the order says about an action: its load, type ("pick" or "drop")
        and node. Used where the robot's state does not tell (see the module docstring)."""
        self._expected.pop(action_id, None)
        self._expected[action_id] = _Expected(load_id, action_type, node_id)
        while len(self._expected) > self._max_expected:
            self._expected.popitem(last=False)

    def feed(self, message: RobotState | RobotConnection) -> tuple[RobotEvent, ...]:
        """What one parsed message confirms; usually nothing."""
        robot = self._robot(message.robot)
        if isinstance(message, RobotConnection):
            return self._on_connection(robot, message)
        return self._on_state(robot, message)

    def is_lost(self, robot: RobotId) -> bool:
        """Whether the robot's last connection message said OFFLINE or CONNECTIONBROKEN."""
        known = self._robots.get(robot)
        return known is not None and known.lost

    def positions(self) -> dict[str, RobotPosition]:
        """Each robot's last reported node, by serial number (robots not reporting a node are
        left out); `lost` from its last connection message."""
        return {
            robot_id.serial: dataclasses.replace(robot.position, lost=robot.lost)
            for robot_id, robot in self._robots.items()
            if robot.position is not None
        }

    @property
    def robots(self) -> tuple[RobotId, ...]:
        """The robots remembered, least recently heard from first."""
        return tuple(self._robots)

    # --- internals ---------------------------------------------------------------------------

    def _robot(self, robot_id: RobotId) -> _Robot:
        robot = self._robots.pop(robot_id, None) or _Robot()
        self._robots[robot_id] = robot
        while len(self._robots) > self._max_robots:
            self._robots.popitem(last=False)
        return robot

    def _on_connection(self, robot: _Robot, message: RobotConnection) -> tuple[RobotEvent, ...]:
        mark = robot.connection_mark
        if mark is not None and not mark.is_newer(message.header_id, message.timestamp):
            return ()
        robot.connection_mark = _Mark(message.header_id, message.timestamp)
        if message.state in _LOST:
            if robot.lost:
                return ()
            robot.lost = True
            return (RobotLost(message.robot, message.state, message.timestamp),)
        robot.lost = False
        return ()

    def _on_state(self, robot: _Robot, state: RobotState) -> tuple[RobotEvent, ...]:
        mark = robot.state_mark
        if mark is not None and not mark.is_newer(state.header_id, state.timestamp):
            return ()
        robot.state_mark = _Mark(state.header_id, state.timestamp)
        previous_loads, robot.loads = robot.loads, state.loads
        if state.last_node_id and (
            robot.position is None or robot.position.node_id != state.last_node_id
        ):
            robot.position = RobotPosition(
                state.last_node_id, self._locations.get(state.last_node_id), state.timestamp
            )
        events: list[RobotEvent] = []
        present: set[str] = set()
        for action in state.action_states:
            present.add(action.action_id)
            event = self._on_action(robot, state, action, previous_loads)
            if event is not None:
                events.append(event)
        # Actions no longer reported went with the robot's previous order: nothing will end them.
        for action_id in [a for a in robot.tracked if a not in present]:
            del robot.tracked[action_id]
        # Done actions the robot still reports are kept whatever the bound (else each state
        # would confirm them again); of the others, the oldest are forgotten first.
        excess = len(robot.done) - self._max_done
        if excess > 0:
            for action_id in [a for a in robot.done if a not in present][:excess]:
                del robot.done[action_id]
        return tuple(events)

    def _on_action(
        self,
        robot: _Robot,
        state: RobotState,
        action: ActionState,
        previous_loads: tuple[str, ...] | None,
    ) -> RobotEvent | None:
        action_id = action.action_id
        if action_id in robot.done:
            return None
        expected = self._expected.get(action_id)
        kind = _action_kind(action, expected)
        if kind is None:
            return None
        status = action.status
        tracked = robot.tracked.get(action_id)
        if status is ActionStatus.WAITING:
            if tracked is None or not tracked.started:
                robot.tracked[action_id] = _Tracked(before=state.loads)
            return None
        if status in _STARTED:
            if tracked is None:
                tracked = robot.tracked[action_id] = _Tracked(before=previous_loads)
            tracked.started = True
            if not state.driving and state.last_node_id:
                tracked.node_id = state.last_node_id
            return None
        # FINISHED or FAILED: the action ends here, once.
        robot.tracked.pop(action_id, None)
        self._expected.pop(action_id, None)
        robot.done[action_id] = None
        node_id = (
            (expected.node_id if expected is not None else None)
            or (tracked.node_id if tracked is not None else None)
            or state.last_node_id
        )
        location = self._locations.get(node_id)
        if status is ActionStatus.FAILED:
            return ActionFailed(
                robot=state.robot,
                action_id=action_id,
                action_type=kind,
                load_id=_failed_load(kind, state.loads, expected),
                node_id=node_id,
                location=node_id if location is None else location,
                location_known=location is not None,
                at=state.timestamp,
                reason=_failure_reason(action, state.errors),
                seen_before_end=tracked is not None,
            )
        before = tracked.before if tracked is not None else previous_loads
        load_id, source = _load_of(kind, before, state.loads, expected)
        confirmed = PickConfirmed if kind == _PICK else DropConfirmed
        return confirmed(
            robot=state.robot,
            action_id=action_id,
            load_id=load_id,
            node_id=node_id,
            location=node_id if location is None else location,
            location_known=location is not None,
            at=state.timestamp,
            load_source=source,
            expected_load_id=expected.load_id if expected is not None else None,
            seen_before_end=tracked is not None,
        )


def _action_kind(action: ActionState, expected: _Expected | None) -> str | None:
    """The kind of action, "pick" or "drop"; None for one the observer does not follow."""
    given = action.action_type
    if given is None and expected is not None:
        given = expected.action_type
    kind = (given or "").casefold()
    return kind if kind in _HANDLED_TYPES else None


def _load_of(
    kind: str,
    before: tuple[str, ...] | None,
    after: tuple[str, ...] | None,
    expected: _Expected | None,
) -> tuple[str | None, LoadSource]:
    """The load a pick took or a drop left, and where that answer comes from."""
    ordered = expected.load_id if expected is not None else None
    if before is not None and after is not None:
        changed = set(after) - set(before) if kind == _PICK else set(before) - set(after)
        if ordered is not None and ordered in changed:
            return ordered, LoadSource.LOADS
        if len(changed) == 1:
            return next(iter(changed)), LoadSource.LOADS
    if ordered is not None:
        return ordered, LoadSource.ORDER
    return None, LoadSource.UNKNOWN


def _failed_load(
    kind: str, on_board: tuple[str, ...] | None, expected: _Expected | None
) -> str | None:
    """The load a failed action was for: the order's, else the only one a failed drop kept."""
    if expected is not None and expected.load_id is not None:
        return expected.load_id
    if kind == _DROP and on_board is not None and len(on_board) == 1:
        return on_board[0]
    return None


def _failure_reason(action: ActionState, errors: tuple[RobotError, ...]) -> str:
    """The robot's words for a failure: its result text and the errors naming the action."""
    parts = [action.result] if action.result else []
    for error in errors:
        if ("actionId", action.action_id) in error.references:
            text = error.error_type + (f": {error.description}" if error.description else "")
            parts.append(text)
    return "; ".join(parts) or f"{action.action_type or 'action'} {action.status.lower()}"
