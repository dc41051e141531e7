"""AGV transport tasks: the state machine behind the task queue that fleet controllers lease from.

A task moves one pallet (SSCC) from a source to a destination: a putaway from the dock door
where it was received, or a move between locations. A fleet controller leases a queued task for
one robot until a time; progress from that robot (accept, pick, an explicit renew) extends the
lease, and a confirmed drop finishes the task (the caller turns it into a move transaction with
`move_of`). The dispatcher sweeps the leases and sends `LeaseExpired` for the ones that ran out.

Every transition lives in `TRANSITIONS` and is listed here. The table is written for the robot
that holds the lease; before it is looked up:

- an event from a robot that does not hold the lease is refused `not_lease_holder` (on a
  finished task: refused as the table says for that state, e.g. `task_done`);
- `lease` and `renew` with a time not after `now` are refused `lease_in_past`;
- `lease_expired` while the lease still runs at `now` is refused `lease_running` (the robot
  renewed it after the sweep read it);
- a `renew` that does not extend the lease, and a `drop` on a done task at the place it was
  dropped, are `already`; a drop on a done task somewhere else is refused `task_done`.

"already" means the event was applied before (a redelivery, or a late report of a step the task
is past): nothing changes and the robot is not told off. The lease is enforced by the sweep, not
by comparing times on each event: progress from the holder that arrives after `lease_until` but
before the sweep is accepted and extends the lease (the robot is evidently alive).

| state     | event         | outcome                                | effect                                     |
|-----------|---------------|----------------------------------------|--------------------------------------------|
| queued    | lease         | leased                                 | robot, fleet and lease set                 |
| queued    | accept        | refused `not_leased`                   |                                            |
| queued    | pick          | refused `not_leased`                   |                                            |
| queued    | drop          | refused `not_leased`                   |                                            |
| queued    | fail          | refused `not_leased`                   |                                            |
| queued    | cancel        | cancelled                              | reason kept                                |
| queued    | lease_expired | refused `no_lease`                     |                                            |
| queued    | renew         | refused `not_leased`                   |                                            |
| leased    | lease         | already                                |                                            |
| leased    | accept        | accepted                               | lease extended                             |
| leased    | pick          | picked                                 | accept implied; lease extended             |
| leased    | drop          | refused `not_picked`                   | report the pick first                      |
| leased    | fail          | failed                                 | the robot's reason kept                    |
| leased    | cancel        | cancelled                              | the robot is told by the caller            |
| leased    | lease_expired | queued, or failed `max_attempts`       | lease cleared, attempts + 1                |
| leased    | renew         | leased                                 | lease extended                             |
| accepted  | lease         | already                                |                                            |
| accepted  | accept        | already                                |                                            |
| accepted  | pick          | picked                                 | lease extended                             |
| accepted  | drop          | refused `not_picked`                   | report the pick first                      |
| accepted  | fail          | failed                                 | the robot's reason kept                    |
| accepted  | cancel        | cancelled                              | the robot is told by the caller            |
| accepted  | lease_expired | queued, or failed `max_attempts`       | lease cleared, attempts + 1                |
| accepted  | renew         | accepted                               | lease extended                             |
| picked    | lease         | already                                |                                            |
| picked    | accept        | already                                |                                            |
| picked    | pick          | already                                |                                            |
| picked    | drop          | done                                   | drop location kept: a move transaction     |
| picked    | fail          | failed                                 | the pallet is on the robot: a person looks |
| picked    | cancel        | refused `load_on_robot`                | the robot must drop it or fail             |
| picked    | lease_expired | failed `robot_lost_with_load`          | never requeued: the pallet is on the robot |
| picked    | renew         | picked                                 | lease extended                             |
| done      | lease         | refused `task_done`                    |                                            |
| done      | accept        | already                                |                                            |
| done      | pick          | already                                |                                            |
| done      | drop          | already                                |                                            |
| done      | fail          | refused `task_done`                    |                                            |
| done      | cancel        | refused `task_done`                    |                                            |
| done      | lease_expired | refused `task_done`                    |                                            |
| done      | renew         | refused `task_done`                    |                                            |
| failed    | lease         | refused `task_failed`                  |                                            |
| failed    | accept        | refused `task_failed`                  |                                            |
| failed    | pick          | refused `task_failed`                  |                                            |
| failed    | drop          | refused `task_failed`                  |                                            |
| failed    | fail          | already                                |                                            |
| failed    | cancel        | refused `task_failed`                  |                                            |
| failed    | lease_expired | refused `task_failed`                  |                                            |
| failed    | renew         | refused `task_failed`                  |                                            |
| cancelled | lease         | refused `task_cancelled`               |                                            |
| cancelled | accept        | refused `task_cancelled`               |                                            |
| cancelled | pick          | refused `task_cancelled`               |                                            |
| cancelled | drop          | refused `task_cancelled`               |                                            |
| cancelled | fail          | refused `task_cancelled`               |                                            |
| cancelled | cancel        | already                                |                                            |
| cancelled | lease_expired | refused `task_cancelled`               |                                            |
| cancelled | renew         | refused `task_cancelled`               |                                            |

Why a lease that runs out after the pick fails the task instead of requeueing it: the pallet is
on that robot (or wherever it stopped), not at the source, so another robot sent to the source
would find nothing, and a new task would reserve a second slot for the same pallet. The task
fails with `robot_lost_with_load` for a person (or the fleet controller) to find the pallet; the
robot is kept on the failed task so the alarm can say which one. A fleet controller that wants to
give back a task it has not picked lets the lease run out (the task is requeued) or fails it.

`attempts` counts leases that ran out before a pick; when it reaches `max_attempts` the task
fails with `max_attempts` instead of going back to the queue.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import ClassVar, Final

from gateway.domain import MoveTransaction, Task, TaskKind, TaskState, deterministic_id

# States in which a robot holds a lease.
_LEASED = frozenset({TaskState.LEASED, TaskState.ACCEPTED, TaskState.PICKED})


class EventKind(enum.StrEnum):
    """The events of the table, by name."""

    LEASE = "lease"
    ACCEPT = "accept"
    PICK = "pick"
    DROP = "drop"
    FAIL = "fail"
    CANCEL = "cancel"
    LEASE_EXPIRED = "lease_expired"
    RENEW = "renew"


# Reasons a task failed without a robot saying why.
ROBOT_LOST_WITH_LOAD: Final = "robot_lost_with_load"
MAX_ATTEMPTS: Final = "max_attempts"


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """How long progress extends a lease, and how many leases may run out before a pick."""

    lease: dt.timedelta = dt.timedelta(minutes=2)
    max_attempts: int = 3


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lease:
    """The dispatcher hands the task to `robot` of `fleet` until `until`."""

    kind: ClassVar[EventKind] = EventKind.LEASE
    robot: str
    fleet: str
    until: dt.datetime


@dataclass(frozen=True, slots=True)
class Accept:
    """The robot took the task on."""

    kind: ClassVar[EventKind] = EventKind.ACCEPT
    robot: str


@dataclass(frozen=True, slots=True)
class Pick:
    """The robot has the pallet on board; `location` is where, when it says."""

    kind: ClassVar[EventKind] = EventKind.PICK
    robot: str
    location: str | None = None


@dataclass(frozen=True, slots=True)
class Drop:
    """The robot put the pallet down at `location`."""

    kind: ClassVar[EventKind] = EventKind.DROP
    robot: str
    location: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The robot gives up on the task, saying why."""

    kind: ClassVar[EventKind] = EventKind.FAIL
    robot: str
    reason: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The WMS or an operator withdraws the task."""

    kind: ClassVar[EventKind] = EventKind.CANCEL
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseExpired:
    """The dispatcher's sweep found the lease run out."""

    kind: ClassVar[EventKind] = EventKind.LEASE_EXPIRED


@dataclass(frozen=True, slots=True)
class Renew:
    """The robot is still on it: extend the lease to `until` (`now` + the policy's lease if None)."""

    kind: ClassVar[EventKind] = EventKind.RENEW
    robot: str
    until: dt.datetime | None = None


TaskEvent = Lease | Accept | Pick | Drop | Fail | Cancel | LeaseExpired | Renew


# --- the table -----------------------------------------------------------------------------------


class Result(enum.StrEnum):
    """What applying an event did."""

    CHANGED = "changed"
    ALREADY = "already"  # applied before: a no-op, not an error
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Step:
    """One cell of the table: the outcome of an event in a state, for the lease holder.

    `to` is the next state of a change; `code` is the refusal code, or the reason a change to
    failed records; `requeue` marks the lease expiry that fails the task at the last attempt.
    """

    result: Result
    to: TaskState | None = None
    code: str = ""
    requeue: bool = False

    def __str__(self) -> str:
        """The outcome column of the docstring's table."""
        if self.result is Result.REFUSED:
            return f"refused `{self.code}`"
        if self.result is Result.ALREADY or self.to is None:
            return "already"
        text = self.to.value + (f" `{self.code}`" if self.code else "")
        return text + (f", or failed `{MAX_ATTEMPTS}`" if self.requeue else "")


def _to(state: TaskState, code: str = "", *, requeue: bool = False) -> Step:
    return Step(Result.CHANGED, state, code, requeue)


def _refused(code: str) -> Step:
    return Step(Result.REFUSED, code=code)


_ALREADY = Step(Result.ALREADY)
_S, _E = TaskState, EventKind


def _finished(state: TaskState, already: Iterable[EventKind]) -> dict[tuple[TaskState, str], Step]:
    repeat = set(already)
    return {
        (state, event): _ALREADY if event in repeat else _refused(f"task_{state.value}")
        for event in EventKind
    }


TRANSITIONS: Final[Mapping[tuple[TaskState, str], Step]] = MappingProxyType(
    {
        (_S.QUEUED, _E.LEASE): _to(_S.LEASED),
        (_S.QUEUED, _E.ACCEPT): _refused("not_leased"),
        (_S.QUEUED, _E.PICK): _refused("not_leased"),
        (_S.QUEUED, _E.DROP): _refused("not_leased"),
        (_S.QUEUED, _E.FAIL): _refused("not_leased"),
        (_S.QUEUED, _E.CANCEL): _to(_S.CANCELLED),
        (_S.QUEUED, _E.LEASE_EXPIRED): _refused("no_lease"),
        (_S.QUEUED, _E.RENEW): _refused("not_leased"),
        (_S.LEASED, _E.LEASE): _ALREADY,
        (_S.LEASED, _E.ACCEPT): _to(_S.ACCEPTED),
        (_S.LEASED, _E.PICK): _to(_S.PICKED),
        (_S.LEASED, _E.DROP): _refused("not_picked"),
        (_S.LEASED, _E.FAIL): _to(_S.FAILED),
        (_S.LEASED, _E.CANCEL): _to(_S.CANCELLED),
        (_S.LEASED, _E.LEASE_EXPIRED): _to(_S.QUEUED, requeue=True),
        (_S.LEASED, _E.RENEW): _to(_S.LEASED),
        (_S.ACCEPTED, _E.LEASE): _ALREADY,
        (_S.ACCEPTED, _E.ACCEPT): _ALREADY,
        (_S.ACCEPTED, _E.PICK): _to(_S.PICKED),
        (_S.ACCEPTED, _E.DROP): _refused("not_picked"),
        (_S.ACCEPTED, _E.FAIL): _to(_S.FAILED),
        (_S.ACCEPTED, _E.CANCEL): _to(_S.CANCELLED),
        (_S.ACCEPTED, _E.LEASE_EXPIRED): _to(_S.QUEUED, requeue=True),
        (_S.ACCEPTED, _E.RENEW): _to(_S.ACCEPTED),
        (_S.PICKED, _E.LEASE): _ALREADY,
        (_S.PICKED, _E.ACCEPT): _ALREADY,
        (_S.PICKED, _E.PICK): _ALREADY,
        (_S.PICKED, _E.DROP): _to(_S.DONE),
        (_S.PICKED, _E.FAIL): _to(_S.FAILED),
        (_S.PICKED, _E.CANCEL): _refused("load_on_robot"),
        (_S.PICKED, _E.LEASE_EXPIRED): _to(_S.FAILED, ROBOT_LOST_WITH_LOAD),
        (_S.PICKED, _E.RENEW): _to(_S.PICKED),
        **_finished(_S.DONE, already=(_E.ACCEPT, _E.PICK, _E.DROP)),
        **_finished(_S.FAILED, already=(_E.FAIL,)),
        **_finished(_S.CANCELLED, already=(_E.CANCEL,)),
    }
)


# --- applying events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """The task after an event, and whether the event changed it, was a repeat or was refused.

    `code` is the refusal code ("" otherwise); `message` is one line for the log and the robot.
    """

    task: Task
    result: Result
    code: str = ""
    message: str = ""

    @property
    def changed(self) -> bool:
        """The task changed: store it (and publish what follows from it)."""
        return self.result is Result.CHANGED

    @property
    def refused(self) -> bool:
        """The event was refused; `code` and `message` say why."""
        return self.result is Result.REFUSED


_MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "not_leased": "task {id} is queued: no robot holds it",
        "no_lease": "task {id} is queued: no lease runs",
        "not_picked": "task {id} has no pick yet: report the pick before the drop",
        "load_on_robot": "task {id} cannot be cancelled: the pallet is on robot {robot}",
        "task_done": "task {id} already done",
        "task_failed": "task {id} already failed",
        "task_cancelled": "task {id} already cancelled",
    }
)


def apply(
    task: Task, event: TaskEvent, now: dt.datetime, policy: TaskPolicy | None = None
) -> Outcome:
    """Apply one event to a task at `now`: the new task, or why nothing changed. Never raises."""
    policy = policy or TaskPolicy()
    step = TRANSITIONS[(task.state, event.kind)]
    robot = None if isinstance(event, Cancel | LeaseExpired) else event.robot
    if step.result is Result.REFUSED:
        return _refuse(task, step.code)
    if robot is not None and robot != task.robot:
        if task.state.terminal:  # finished by another robot, or by none (max attempts)
            return _refuse(task, f"task_{task.state.value}")
        if task.robot is not None:
            return _refuse(
                task,
                "not_lease_holder",
                f"robot {robot} does not hold the lease of task {task.task_id} "
                f"(robot {task.robot} does)",
            )
    if step.result is Result.ALREADY:
        return _already(task, event)
    return _change(task, event, step, now, policy)


def _refuse(task: Task, code: str, message: str = "") -> Outcome:
    text = message or _MESSAGES[code].format(id=task.task_id, robot=task.robot)
    if task.reason and code in {"task_failed", "task_cancelled"}:
        text += f" ({task.reason})"
    return Outcome(task, Result.REFUSED, code, text)


def _already(task: Task, event: TaskEvent) -> Outcome:
    if (
        isinstance(event, Drop)
        and task.state is TaskState.DONE
        and event.location != task.dropped_at
    ):
        return _refuse(
            task,
            "task_done",
            f"task {task.task_id} already done: dropped at {task.dropped_at}, not {event.location}",
        )
    return Outcome(task, Result.ALREADY, message=f"task {task.task_id} is already {task.state}")


def _change(
    task: Task, event: TaskEvent, step: Step, now: dt.datetime, policy: TaskPolicy
) -> Outcome:
    assert step.to is not None  # every change in the table names its state
    match event:
        case Lease(robot, fleet, until):
            if until <= now:
                return _lease_in_past(task, until, now)
            new = replace(task, robot=robot, fleet=fleet, lease_until=until)
        case Renew(robot, until):
            if until is None:
                until = now + policy.lease
            if until <= now:
                return _lease_in_past(task, until, now)
            if task.lease_until is not None and until <= task.lease_until:
                return Outcome(
                    task,
                    Result.ALREADY,
                    message=f"the lease of task {task.task_id} already runs until "
                    f"{task.lease_until.isoformat()}",
                )
            new = replace(task, lease_until=until)
        case Accept():
            new = replace(task, lease_until=_extended(task, now, policy))
        case Pick(_, location):
            new = replace(
                task,
                lease_until=_extended(task, now, policy),
                picked_from=location,
                picked_at=now,
            )
        case Drop(_, location):
            new = replace(task, lease_until=None, dropped_at=location)
        case Fail(_, reason):
            new = replace(task, lease_until=None, reason=reason)
        case Cancel(reason):
            new = replace(task, lease_until=None, reason=reason)
        case LeaseExpired():
            if task.lease_until is not None and now < task.lease_until:
                return _refuse(
                    task,
                    "lease_running",
                    f"the lease of task {task.task_id} runs until {task.lease_until.isoformat()}",
                )
            return _expire(task, step, now, policy)
    return Outcome(replace(new, state=step.to, updated_at=now), Result.CHANGED)


def _expire(task: Task, step: Step, now: dt.datetime, policy: TaskPolicy) -> Outcome:
    if not step.requeue:  # after the pick: the pallet went with the robot
        failed = replace(
            task, state=TaskState.FAILED, lease_until=None, reason=step.code, updated_at=now
        )
        return Outcome(failed, Result.CHANGED)
    attempts = task.attempts + 1
    last = attempts >= policy.max_attempts
    back = replace(
        task,
        state=TaskState.FAILED if last else TaskState.QUEUED,
        robot=None,
        fleet=None,
        lease_until=None,
        attempts=attempts,
        reason=MAX_ATTEMPTS if last else None,
        updated_at=now,
    )
    return Outcome(back, Result.CHANGED)


def _lease_in_past(task: Task, until: dt.datetime, now: dt.datetime) -> Outcome:
    return _refuse(
        task,
        "lease_in_past",
        f"a lease of task {task.task_id} until {until.isoformat()} is not after {now.isoformat()}",
    )


def _extended(task: Task, now: dt.datetime, policy: TaskPolicy) -> dt.datetime:
    """Progress extends the lease to `now` + the policy's lease; it never shortens it."""
    until = now + policy.lease
    return until if task.lease_until is None else max(task.lease_until, until)


# --- helpers for the queue and the move transaction ----------------------------------------------


def create_task(
    *,
    kind: TaskKind,
    sscc: str,
    source: str,
    destination: str,
    now: dt.datetime,
    priority: int = 0,
    task_id: str | None = None,
) -> Task:
    """A queued task; its id is deterministic over what it moves and when, unless given."""
    if task_id is None:
        task_id = deterministic_id("task", kind.value, sscc, source, destination, now.isoformat())
    return Task(
        task_id=task_id,
        kind=kind,
        sscc=sscc,
        source=source,
        destination=destination,
        priority=priority,
        created_at=now,
        updated_at=now,
    )


def queue_order(task: Task) -> tuple[int, dt.datetime, str]:
    """Sort key for leasing queued tasks: highest priority, then oldest, then by id."""
    return (-task.priority, task.created_at, task.task_id)


def lease_ran_out(task: Task, now: dt.datetime) -> bool:
    """The sweep should send `LeaseExpired` for this task."""
    return task.state in _LEASED and task.lease_until is not None and task.lease_until <= now


def reservations(tasks: Iterable[Task]) -> dict[str, int]:
    """Pallets on their way to each destination: one per open (not finished) task."""
    return dict(Counter(t.destination for t in tasks if not t.state.terminal))


def move_of(task: Task, exceptions: Iterable[str] = ()) -> MoveTransaction | None:
    """The move transaction of a done task (None before it is done).

    From where the robot said it picked (the task's source if it did not say) to where it
    dropped; `exceptions` are the codes of `StockProjection.check_drop`.
    """
    if task.state is not TaskState.DONE or task.dropped_at is None or task.robot is None:
        return None
    return MoveTransaction(
        sscc=task.sscc,
        from_location=task.picked_from or task.source,
        to_location=task.dropped_at,
        device_id=task.robot,
        pallet_scanned_at=task.picked_at or task.updated_at,
        confirmed_at=task.updated_at,
        exceptions=tuple(exceptions),
        task_id=task.task_id,
    )
