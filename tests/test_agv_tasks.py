"""The AGV task state machine: the table in the docstring is the table the code uses, every
transition of it, idempotent progress, the lease holder, lease expiry before and after the
pick, and random event sequences.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import Task, TaskKind, TaskState
from gateway.rules import tasks
from gateway.rules.tasks import (
    MAX_ATTEMPTS,
    ROBOT_LOST_WITH_LOAD,
    TRANSITIONS,
    Accept,
    Cancel,
    Drop,
    EventKind,
    Fail,
    Lease,
    LeaseExpired,
    Pick,
    Renew,
    Result,
    TaskEvent,
    TaskPolicy,
    apply,
    create_task,
    lease_ran_out,
    move_of,
    queue_order,
    reservations,
)

T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC)
P1 = "376123450000000016"
DOOR = "DOCK-1"
DEST = "R-01-01"
POLICY = TaskPolicy(lease=dt.timedelta(seconds=120), max_attempts=3)


def t(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def queued() -> Task:
    return create_task(kind=TaskKind.PUTAWAY, sscc=P1, source=DOOR, destination=DEST, now=T0)


def step(task: Task, event: TaskEvent, at: dt.datetime, policy: TaskPolicy = POLICY) -> Task:
    outcome = apply(task, event, at, policy)
    assert outcome.changed, outcome
    return outcome.task


def in_state(state: TaskState, robot: str = "r1") -> Task:
    """A task brought to `state` by real events; the lease (when one runs) ends at t(60)."""
    task = queued()
    if state is TaskState.QUEUED:
        return task
    if state is TaskState.CANCELLED:
        return step(task, Cancel("withdrawn by the WMS"), t(1))
    task = step(task, Lease(robot, "fleet-a", t(60)), t(1))
    short = TaskPolicy(lease=dt.timedelta(seconds=58))  # progress at t(2) keeps t(60)
    if state is TaskState.ACCEPTED:
        return step(task, Accept(robot), t(2), short)
    if state is TaskState.FAILED:
        return step(task, Fail(robot, "source blocked"), t(2))
    if state in (TaskState.PICKED, TaskState.DONE):
        task = step(task, Pick(robot, DOOR), t(2), short)
        if state is TaskState.DONE:
            return step(task, Drop(robot, DEST), t(3))
    return task


def event_of(kind: EventKind, robot: str = "r1", at: dt.datetime | None = None) -> TaskEvent:
    at = at or t(10)
    match kind:
        case EventKind.LEASE:
            return Lease(robot, "fleet-a", at + dt.timedelta(seconds=60))
        case EventKind.ACCEPT:
            return Accept(robot)
        case EventKind.PICK:
            return Pick(robot, DOOR)
        case EventKind.DROP:
            return Drop(robot, DEST)
        case EventKind.FAIL:
            return Fail(robot, "source blocked")
        case EventKind.CANCEL:
            return Cancel("withdrawn by the WMS")
        case EventKind.LEASE_EXPIRED:
            return LeaseExpired()
        case EventKind.RENEW:
            return Renew(robot)


# --- the table ---------------------------------------------------------------------------------


def docstring_rows() -> dict[tuple[str, str], str]:
    rows: dict[tuple[str, str], str] = {}
    assert tasks.__doc__ is not None
    for line in tasks.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in {"state"} or set(cells[0]) <= {"-"}:
            continue
        key = (cells[0], cells[1])
        assert key not in rows, f"row {key} listed twice"
        rows[key] = cells[2]
    return rows


def test_docstring_table_is_the_table_the_code_uses() -> None:
    rows = docstring_rows()
    assert rows == {(s.value, e): str(v) for (s, e), v in TRANSITIONS.items()}


def test_table_covers_every_state_and_event() -> None:
    assert set(TRANSITIONS) == {(s, e) for s in TaskState for e in EventKind}
    assert len(docstring_rows()) == len(TaskState) * len(EventKind)


def test_finished_states_never_change() -> None:
    for (state, _), cell in TRANSITIONS.items():
        if state.terminal:
            assert cell.result is not Result.CHANGED


@pytest.mark.parametrize(("state", "kind"), sorted(TRANSITIONS, key=str))
def test_every_transition_of_the_table(state: TaskState, kind: EventKind) -> None:
    task = in_state(state)
    at = t(61) if kind is EventKind.LEASE_EXPIRED else t(10)
    outcome = apply(task, event_of(EventKind(kind), at=at), at, POLICY)
    cell = TRANSITIONS[(state, kind)]
    assert outcome.result is cell.result, outcome
    if cell.result is Result.CHANGED:
        assert outcome.task.state is cell.to
        assert outcome.task.updated_at == at
        assert outcome.code == ""
    else:
        assert outcome.task is task
    if cell.result is Result.REFUSED:
        assert outcome.code == cell.code
        assert task.task_id in outcome.message


# --- progress, idempotency, the holder -----------------------------------------------------------


def test_a_whole_putaway() -> None:
    task = queued()
    assert task.state is TaskState.QUEUED and task.attempts == 0
    task = step(task, Lease("r1", "fleet-a", t(120)), t(0))
    assert (task.robot, task.fleet, task.lease_until) == ("r1", "fleet-a", t(120))
    task = step(task, Accept("r1"), t(30))
    assert task.lease_until == t(150)  # progress extends the lease
    task = step(task, Pick("r1", "STAGE-1"), t(60))
    assert (task.picked_from, task.picked_at, task.lease_until) == ("STAGE-1", t(60), t(180))
    task = step(task, Drop("r1", DEST), t(90))
    assert task.state is TaskState.DONE
    assert (task.dropped_at, task.lease_until, task.robot) == (DEST, None, "r1")
    move = move_of(task, ["wrong_location"])
    assert move is not None
    assert (move.sscc, move.from_location, move.to_location) == (P1, "STAGE-1", DEST)
    assert (move.device_id, move.pallet_scanned_at, move.confirmed_at) == ("r1", t(60), t(90))
    assert move.exceptions == ("wrong_location",)


def test_pick_without_accept_and_without_a_location() -> None:
    task = step(in_state(TaskState.LEASED), Pick("r1"), t(5))
    assert task.state is TaskState.PICKED and task.picked_from is None
    done = step(task, Drop("r1", DEST), t(6))
    move = move_of(done)
    assert move is not None and move.from_location == DOOR  # the task's source


def test_move_of_an_unfinished_task_is_none() -> None:
    assert move_of(in_state(TaskState.PICKED)) is None


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (TaskState.LEASED, Lease("r1", "fleet-a", t(90))),
        (TaskState.ACCEPTED, Accept("r1")),
        (TaskState.PICKED, Accept("r1")),
        (TaskState.PICKED, Pick("r1", DOOR)),
        (TaskState.PICKED, Pick("r1", "somewhere else")),
        (TaskState.DONE, Pick("r1", DOOR)),
        (TaskState.DONE, Drop("r1", DEST)),
        (TaskState.FAILED, Fail("r1", "again")),
        (TaskState.CANCELLED, Cancel("again")),
    ],
)
def test_the_same_event_again_is_already(state: TaskState, event: TaskEvent) -> None:
    task = in_state(state)
    outcome = apply(task, event, t(10), POLICY)
    assert outcome.result is Result.ALREADY
    assert not outcome.changed and not outcome.refused
    assert outcome.task is task
    assert "already" in outcome.message


def test_a_second_drop_somewhere_else_is_refused() -> None:
    outcome = apply(in_state(TaskState.DONE), Drop("r1", "R-09-09"), t(10), POLICY)
    assert outcome.refused and outcome.code == "task_done"
    assert DEST in outcome.message and "R-09-09" in outcome.message


@pytest.mark.parametrize("state", [TaskState.LEASED, TaskState.ACCEPTED, TaskState.PICKED])
@pytest.mark.parametrize(
    "kind",
    [EventKind.LEASE, EventKind.ACCEPT, EventKind.PICK, EventKind.FAIL, EventKind.RENEW],
)
def test_a_robot_without_the_lease_is_refused(state: TaskState, kind: EventKind) -> None:
    task = in_state(state)
    outcome = apply(task, event_of(kind, robot="r2"), t(10), POLICY)
    assert outcome.refused and outcome.code == "not_lease_holder", outcome
    assert "robot r2 does not hold the lease" in outcome.message
    assert "robot r1 does" in outcome.message
    assert outcome.task is task


def test_a_drop_by_another_robot_is_refused() -> None:
    outcome = apply(in_state(TaskState.PICKED), Drop("r2", DEST), t(10), POLICY)
    assert outcome.code == "not_lease_holder"


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (TaskState.DONE, "task_done"),
        (TaskState.FAILED, "task_failed"),
        (TaskState.CANCELLED, "task_cancelled"),
    ],
)
def test_events_after_the_end_are_refused(state: TaskState, code: str) -> None:
    task = in_state(state)
    for kind in EventKind:
        outcome = apply(task, event_of(kind, robot="r2"), t(10), POLICY)
        if kind is EventKind.CANCEL and state is TaskState.CANCELLED:
            assert outcome.result is Result.ALREADY
            continue
        assert outcome.refused and outcome.code == code, (kind, outcome)
        assert f"already {state.value}" in outcome.message


def test_the_refusal_of_a_failed_task_says_why_it_failed() -> None:
    outcome = apply(in_state(TaskState.FAILED), Pick("r1"), t(10), POLICY)
    assert outcome.message == f"task {outcome.task.task_id} already failed (source blocked)"


def test_a_queued_task_refuses_robot_progress() -> None:
    outcome = apply(queued(), Pick("r1"), t(1), POLICY)
    assert outcome.code == "not_leased"
    assert "queued" in outcome.message


def test_a_drop_before_the_pick_is_refused() -> None:
    outcome = apply(in_state(TaskState.ACCEPTED), Drop("r1", DEST), t(5), POLICY)
    assert outcome.code == "not_picked"


def test_cancel_with_the_pallet_on_the_robot_is_refused() -> None:
    outcome = apply(in_state(TaskState.PICKED), Cancel("changed plan"), t(5), POLICY)
    assert outcome.code == "load_on_robot"
    assert "robot r1" in outcome.message


def test_cancel_before_the_pick_keeps_the_robot_to_tell() -> None:
    task = step(in_state(TaskState.ACCEPTED), Cancel("order withdrawn"), t(5))
    assert (task.state, task.robot, task.reason, task.lease_until) == (
        TaskState.CANCELLED,
        "r1",
        "order withdrawn",
        None,
    )


def test_fail_keeps_the_robots_reason() -> None:
    task = step(in_state(TaskState.PICKED), Fail("r1", "pallet fell"), t(5))
    assert (task.state, task.reason, task.lease_until) == (TaskState.FAILED, "pallet fell", None)


# --- leases ------------------------------------------------------------------------------------


def test_a_lease_must_end_in_the_future() -> None:
    outcome = apply(queued(), Lease("r1", "fleet-a", t(5)), t(5), POLICY)
    assert outcome.code == "lease_in_past"
    outcome = apply(in_state(TaskState.LEASED), Renew("r1", t(3)), t(5), POLICY)
    assert outcome.code == "lease_in_past"


def test_renew_extends_the_lease_and_never_shortens_it() -> None:
    task = in_state(TaskState.LEASED)  # until t(60)
    longer = step(task, Renew("r1", t(200)), t(10))
    assert longer.lease_until == t(200) and longer.state is TaskState.LEASED
    shorter = apply(longer, Renew("r1", t(100)), t(20), POLICY)
    assert shorter.result is Result.ALREADY and shorter.task.lease_until == t(200)
    default = step(task, Renew("r1"), t(10))
    assert default.lease_until == t(130)  # now + the policy's lease
    # Progress extends to now + lease, but never below what runs already.
    assert step(longer, Accept("r1"), t(20)).lease_until == t(200)


def test_lease_expiry_before_the_pick_requeues() -> None:
    for state in (TaskState.LEASED, TaskState.ACCEPTED):
        task = step(in_state(state), LeaseExpired(), t(60))
        assert task.state is TaskState.QUEUED
        assert (task.robot, task.fleet, task.lease_until, task.attempts) == (None, None, None, 1)
        assert task.reason is None
        # Another robot may lease it now; the former holder is refused.
        assert apply(task, Accept("r1"), t(61), POLICY).code == "not_leased"
        assert step(task, Lease("r2", "fleet-b", t(200)), t(61)).robot == "r2"


def test_lease_expiry_after_the_pick_fails_with_the_load() -> None:
    task = step(in_state(TaskState.PICKED), LeaseExpired(), t(60))
    assert (task.state, task.reason, task.robot) == (TaskState.FAILED, ROBOT_LOST_WITH_LOAD, "r1")
    assert task.attempts == 0 and task.lease_until is None
    late = apply(task, Drop("r1", DEST), t(70), POLICY)
    assert late.code == "task_failed" and ROBOT_LOST_WITH_LOAD in late.message


def test_max_attempts_fails_the_task() -> None:
    task = queued()
    for attempt in range(1, 4):
        start = t(100 * attempt)
        task = step(task, Lease(f"r{attempt}", "fleet-a", start + dt.timedelta(seconds=30)), start)
        task = step(task, LeaseExpired(), start + dt.timedelta(seconds=30))
        assert task.attempts == attempt
    assert (task.state, task.reason, task.robot) == (TaskState.FAILED, MAX_ATTEMPTS, None)
    # Finished with no robot on it: every robot gets "already failed".
    assert apply(task, Fail("r3", "x"), t(500), POLICY).code == "task_failed"


def test_max_attempts_of_one() -> None:
    policy = TaskPolicy(max_attempts=1)
    task = apply(in_state(TaskState.LEASED), LeaseExpired(), t(60), policy).task
    assert (task.state, task.reason) == (TaskState.FAILED, MAX_ATTEMPTS)


def test_a_lease_still_running_does_not_expire() -> None:
    task = in_state(TaskState.ACCEPTED)
    outcome = apply(task, LeaseExpired(), t(59), POLICY)
    assert outcome.code == "lease_running"
    assert lease_ran_out(task, t(59)) is False
    assert lease_ran_out(task, t(60)) is True
    assert lease_ran_out(in_state(TaskState.DONE), t(9999)) is False


def test_late_progress_before_the_sweep_is_accepted() -> None:
    task = in_state(TaskState.ACCEPTED)  # lease until t(60)
    picked = step(task, Pick("r1", DOOR), t(90))
    assert picked.state is TaskState.PICKED and picked.lease_until == t(210)


# --- queue helpers ---------------------------------------------------------------------------


def test_task_ids_are_deterministic() -> None:
    assert queued().task_id == queued().task_id
    other = create_task(kind=TaskKind.MOVE, sscc=P1, source=DOOR, destination=DEST, now=T0)
    assert other.task_id != queued().task_id
    named = create_task(
        kind=TaskKind.MOVE, sscc=P1, source=DOOR, destination=DEST, now=T0, task_id="t-7"
    )
    assert named.task_id == "t-7"


def test_queue_order_is_priority_then_age_then_id() -> None:
    def make(task_id: str, priority: int, at: float) -> Task:
        return create_task(
            kind=TaskKind.PUTAWAY,
            sscc=P1,
            source=DOOR,
            destination=DEST,
            now=t(at),
            priority=priority,
            task_id=task_id,
        )

    found = sorted(
        [make("c", 0, 1), make("b", 0, 1), make("a", 0, 5), make("z", 9, 9)], key=queue_order
    )
    assert [x.task_id for x in found] == ["z", "b", "c", "a"]


def test_reservations_count_open_tasks_only() -> None:
    open_tasks = [in_state(s) for s in (TaskState.QUEUED, TaskState.LEASED, TaskState.PICKED)]
    finished = [in_state(s) for s in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)]
    assert reservations([*open_tasks, *finished]) == {DEST: 3}


# --- random sequences ----------------------------------------------------------------------------

ROBOTS = st.sampled_from(["r1", "r2"])
PLACES = st.sampled_from([DOOR, DEST, "R-02-02"])
OFFSETS = st.integers(min_value=-30, max_value=300).map(lambda s: dt.timedelta(seconds=s))

EVENTS = st.one_of(
    st.builds(
        Lease, ROBOTS, st.sampled_from(["fleet-a", "fleet-b"]), st.just(T0)
    ),  # until set below
    st.builds(Accept, ROBOTS),
    st.builds(Pick, ROBOTS, st.none() | PLACES),
    st.builds(Drop, ROBOTS, PLACES),
    st.builds(Fail, ROBOTS, st.sampled_from(["blocked", "battery"])),
    st.builds(Cancel, st.sampled_from(["wms", "operator"])),
    st.builds(LeaseExpired),
    st.builds(Renew, ROBOTS, st.none() | st.just(T0)),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(EVENTS, st.integers(min_value=0, max_value=200), OFFSETS), max_size=40),
    st.integers(min_value=1, max_value=4),
)
def test_random_sequences_never_raise_and_never_leave_an_end(
    steps: list[tuple[TaskEvent, int, dt.timedelta]], max_attempts: int
) -> None:
    policy = TaskPolicy(lease=dt.timedelta(seconds=60), max_attempts=max_attempts)
    task = queued()
    now = T0
    for event, advance, offset in steps:
        now += dt.timedelta(seconds=advance)
        # Times of leases and renewals relative to now, some of them in the past.
        if isinstance(event, Lease):
            event = Lease(event.robot, event.fleet, now + offset)
        elif isinstance(event, Renew) and event.until is not None:
            event = Renew(event.robot, now + offset)
        before = task
        outcome = apply(task, event, now, policy)
        task = outcome.task
        if not outcome.changed:
            assert task is before
            assert (outcome.code != "") == outcome.refused
        else:
            assert task.updated_at == now
        if before.state.terminal:
            assert not outcome.changed and task.state is before.state
        # Invariants of every state.
        leased = task.state in (TaskState.LEASED, TaskState.ACCEPTED, TaskState.PICKED)
        assert (task.lease_until is not None) == leased
        if leased:
            assert task.robot is not None and task.fleet is not None
        if task.state is TaskState.QUEUED:
            assert task.robot is None and task.lease_until is None
        assert 0 <= task.attempts <= max_attempts
        if task.state is TaskState.DONE:
            assert task.dropped_at is not None and move_of(task) is not None
        if task.state is TaskState.FAILED:
            assert task.reason


def test_refusal_codes_are_documented() -> None:
    assert tasks.__doc__ is not None
    documented = set(re.findall(r"`([a-z_]+)`", tasks.__doc__))
    codes = {cell.code for cell in TRANSITIONS.values() if cell.code}
    extra = {"not_lease_holder", "lease_in_past", "lease_running", MAX_ATTEMPTS}
    assert codes | extra <= documented
