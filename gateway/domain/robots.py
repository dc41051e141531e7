"""What robots report over VDA 5050 (2.1 and 3.0), as far as the gateway uses it.

The wire layer (`gateway.wire.vda5050`) builds these from the robots' `state` and `connection`
messages; the rules (`gateway.rules.vda5050`) conclude picks and drops from them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum


class ActionStatus(StrEnum):
    """`actionStatus` of VDA 5050 2.1 and 3.0 (RETRIABLE is new in 3.0)."""

    WAITING = "WAITING"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    RETRIABLE = "RETRIABLE"
    FINISHED = "FINISHED"
    FAILED = "FAILED"


class ConnectionState(StrEnum):
    """`connectionState`; 3.0 spells the broken one CONNECTION_BROKEN and adds HIBERNATING."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    CONNECTIONBROKEN = "CONNECTIONBROKEN"
    HIBERNATING = "HIBERNATING"  # connected, deliberately not sending states


class LoadSource(StrEnum):
    """Where the load id of a confirmation comes from."""

    LOADS = "loads"  # the robot's `loads` changed by exactly that load
    ORDER = "order"  # registered with `RobotObserver.expect`
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, order=True)
class RobotId:
    """A robot, as VDA 5050 names it: manufacturer and serial number."""

    manufacturer: str
    serial: str

    def __str__(self) -> str:
        return f"{self.manufacturer}/{self.serial}"


@dataclass(frozen=True, slots=True)
class ActionState:
    """One entry of `actionStates` (or `instantActionStates` in 3.0)."""

    action_id: str
    action_type: str | None
    status: ActionStatus
    result: str | None = None  # 2.1 `resultDescription`, 3.0 `actionResult`
    description: str | None = None  # 2.1 `actionDescription`, 3.0 `actionDescriptor`


@dataclass(frozen=True, slots=True)
class RobotError:
    """One entry of `errors`; `references` are (referenceKey, referenceValue) pairs."""

    error_type: str
    level: str
    description: str | None = None
    references: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RobotState:
    """A robot's `state` message, as far as the gateway uses it.

    `loads` holds the ids of the loads on board; None when the robot does not report loads (it
    leaves the array out), and loads it carries but has not identified are not listed.
    """

    manufacturer: str
    serial: str
    header_id: int
    timestamp: dt.datetime  # aware
    version: str
    order_id: str
    last_node_id: str
    driving: bool
    operating_mode: str
    loads: tuple[str, ...] | None
    action_states: tuple[ActionState, ...] = ()
    errors: tuple[RobotError, ...] = ()

    @property
    def robot(self) -> RobotId:
        return RobotId(self.manufacturer, self.serial)


@dataclass(frozen=True, slots=True)
class RobotConnection:
    """A robot's `connection` message (retained; the broker publishes it as the last will)."""

    manufacturer: str
    serial: str
    header_id: int
    timestamp: dt.datetime  # aware
    version: str
    state: ConnectionState

    @property
    def robot(self) -> RobotId:
        return RobotId(self.manufacturer, self.serial)


@dataclass(frozen=True, slots=True)
class RobotPosition:
    """Where a robot last reported itself: its last node, that node's location (None: not
    mapped), and the state message that first put it there."""

    node_id: str
    location: str | None
    since: dt.datetime
    lost: bool = False
