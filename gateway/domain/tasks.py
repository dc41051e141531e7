"""AGV transport tasks, the fleet controllers' requests about them, and the answers.

The state machine that changes tasks is `gateway.rules.tasks`; the wire layer
(`gateway.wire.agv`) decodes requests and renders answers.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from gateway.domain.ids import deterministic_id
from gateway.domain.replies import ReplyHandle


class TaskKind(enum.StrEnum):
    """What the task is for."""

    PUTAWAY = "putaway"  # from the dock door where the pallet was received into storage
    MOVE = "move"  # between two locations (replenishment, consolidation)


class TaskState(enum.StrEnum):
    """Where a task is in its life; done, failed and cancelled are final."""

    QUEUED = "queued"
    LEASED = "leased"
    ACCEPTED = "accepted"
    PICKED = "picked"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Nothing changes a task in this state any more."""
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Task:
    """One pallet to move, and how far it got.

    `robot` and `fleet` name the lease holder while the task is leased, accepted or picked;
    they are kept on a finished task (who did it, who has the pallet) and cleared when the task
    goes back to the queue. `lease_until` is set only while a lease runs. `reason` says why a
    task failed or was cancelled.
    """

    task_id: str
    kind: TaskKind
    sscc: str  # the load: the pallet's SSCC
    source: str  # where the pallet is to be picked (the dock door for a putaway)
    destination: str
    priority: int  # higher goes first
    created_at: dt.datetime
    updated_at: dt.datetime
    state: TaskState = TaskState.QUEUED
    robot: str | None = None
    fleet: str | None = None
    lease_until: dt.datetime | None = None
    attempts: int = 0  # leases that ran out before a pick
    reason: str | None = None
    picked_from: str | None = None  # where the robot said it picked, when it said
    picked_at: dt.datetime | None = None
    dropped_at: str | None = None  # the location of the drop that finished the task


@dataclass(frozen=True, slots=True)
class TaskChanged:
    """A task changed: stored, and (unless only its lease was renewed) published on agv/task."""

    task: Task
    event: str  # created, leased, accepted, picked, done, failed, cancelled, requeued, renewed

    @property
    def event_id(self) -> str:
        """Deterministic: the same change always has the same id."""
        t = self.task
        return deterministic_id(
            "agv-task", t.task_id, self.event, t.updated_at.isoformat(), t.attempts
        )

    @property
    def published(self) -> bool:
        """Renewals are stored, not published (one per progress report would be noise)."""
        return self.event != "renewed"


@dataclass(frozen=True, slots=True)
class PalletLot:
    """A received pallet's main product, its lot and earliest expiry (velocity class, FEFO)."""

    gtin: str
    lot: str | None
    expiry: dt.date | None


class ProgressStatus(enum.StrEnum):
    """What a robot reports about the task it holds."""

    ACCEPTED = "accepted"
    PICKED = "picked"
    DROPPED = "dropped"
    FAILED = "failed"
    ALIVE = "alive"  # nothing happened; renew the lease


class AnswerResult(enum.StrEnum):
    """What a request did, as its answer says."""

    CHANGED = "changed"
    ALREADY = "already"  # done before (a redelivery): nothing changed
    REFUSED = "refused"
    NONE = "none"  # nothing to hand out


@dataclass(frozen=True, slots=True)
class NextRequest:
    """A fleet controller asks for a task for `robot`."""

    fleet: str
    robot: str
    capabilities: tuple[str, ...] | None
    position: str | None
    at: dt.datetime
    reply: ReplyHandle | None = None  # where the answer goes: the bridge's, passed back untouched


@dataclass(frozen=True, slots=True)
class ProgressRequest:
    """The robot holding `task_id` reports a step."""

    fleet: str
    robot: str
    task_id: str
    status: ProgressStatus
    location: str | None
    reason: str | None
    at: dt.datetime
    reply: ReplyHandle | None = None


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel `task_id`."""

    task_id: str
    reason: str | None
    at: dt.datetime
    reply: ReplyHandle | None = None


@dataclass(frozen=True, slots=True)
class WmsTask:
    """A move the WMS asks for (`wms/{site}/task/{task_id}`): a pallet, or one of a product.

    With `gtin` (and no `sscc`), the gateway picks the pallet by FEFO from its stock.
    """

    task_id: str
    sscc: str | None
    source: str | None
    destination: str
    priority: int
    at: dt.datetime
    gtin: str | None = None
    gateway: str | None = None  # the gateway whose task board takes it (None: by zone)
    zone: str | None = None  # the zone whose board takes it (None, or no board: the site's)


@dataclass(frozen=True, slots=True)
class WmsTaskDeleted:
    """The WMS withdrew a task (empty retained payload)."""

    task_id: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class TaskAnswer:
    """The answer to a fleet controller's request; `task` as it is after the request."""

    ok: bool
    result: AnswerResult
    code: str  # why it was refused ("" when it was not)
    message: str
    task: Task | None = None


TaskRequest = NextRequest | ProgressRequest | CancelRequest
WmsTaskMessage = WmsTask | WmsTaskDeleted
