"""The open-task index answers exactly what the task board's scans answered before it."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import Task, TaskKind, TaskState
from gateway.rules.open_tasks import OpenTasks
from gateway.rules.tasks import lease_ran_out, queue_order

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
PLACES = ["D03", "D05", "A-01", "A-02"]
ROBOTS = ["r1", "r2", "r3"]


def task(
    n: int, state: TaskState, priority: int, source: str, robot: int, lease_s: int, made_s: int
) -> Task:
    holds = state is not TaskState.QUEUED
    return Task(
        task_id=f"T{n}",
        kind=TaskKind.PUTAWAY,
        sscc=f"00{n % 7:016d}",
        source=source,
        destination=PLACES[(n + priority) % len(PLACES)],
        priority=priority,
        created_at=T0 + dt.timedelta(seconds=made_s),
        updated_at=T0 + dt.timedelta(seconds=made_s),
        state=state,
        robot=ROBOTS[robot] if holds else None,
        fleet=("f1" if robot % 2 else "f2") if holds else None,
        lease_until=T0 + dt.timedelta(seconds=lease_s) if holds else None,
    )


tasks = st.builds(
    task,
    st.integers(0, 12),
    st.sampled_from([TaskState.QUEUED, TaskState.LEASED, TaskState.ACCEPTED, TaskState.PICKED]),
    st.integers(0, 2),
    st.sampled_from(PLACES),
    st.integers(0, 2),
    st.integers(0, 100),
    st.integers(0, 50),
)
operations = st.lists(st.one_of(tasks, st.integers(0, 12).map(lambda n: f"T{n}")), max_size=40)


def scan_next(open_: dict[str, Task], position: str | None) -> Task | None:
    """What `TaskBoard._next` computed by scanning before the index."""
    queued = [t for t in open_.values() if t.state is TaskState.QUEUED]
    if not queued:
        return None
    top = min(queue_order(t)[0] for t in queued)
    first = [t for t in queued if -t.priority == top]
    nearby = [t for t in first if position is not None and t.source == position]
    return min(nearby or first, key=queue_order)


def scan_held(open_: dict[str, Task], robot: str, fleet: str | None) -> Task | None:
    return next(
        (
            t
            for t in open_.values()
            if t.robot == robot
            and t.state is not TaskState.QUEUED
            and (fleet is None or t.fleet == fleet)
        ),
        None,
    )


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(0, 120))
def test_every_answer_equals_the_scan(ops: list[Task | str], now_s: int) -> None:
    index = OpenTasks()
    reference: dict[str, Task] = {}
    for op in ops:
        if isinstance(op, Task):
            index.put(op)
            reference[op.task_id] = op
        else:
            assert index.pop(op) == reference.pop(op, None)
        assert list(index.items()) == list(reference.items())
        for position in [None, *PLACES]:
            assert index.next_queued(position) == scan_next(reference, position)
        for robot in ROBOTS:
            for fleet in (None, "f1", "f2"):
                assert index.held_by(robot, fleet) == scan_held(reference, robot, fleet)
        for sscc in {t.sscc for t in reference.values()}:
            assert index.for_pallet(sscc) == [t for t in reference.values() if t.sscc == sscc]
        assert index.pallets() == {t.sscc for t in reference.values()}
        destinations = [t.destination for t in reference.values()]
        assert index.reserved() == {d: destinations.count(d) for d in set(destinations)}
    now = T0 + dt.timedelta(seconds=now_s)
    for _ in range(2):  # a task the caller did not change is found again, as by a scan
        assert index.expired(now) == [t for t in reference.values() if lease_ran_out(t, now)]


def test_stale_heap_entries_stay_bounded() -> None:
    """A task leased and given back 10,000 times does not grow the heaps."""
    index = OpenTasks()
    for n in range(20_000):
        state = TaskState.QUEUED if n % 2 else TaskState.LEASED
        index.put(task(1, state, 0, "D03", 0, n, 0))
    assert len(index._queue) <= 2 * index._queued + 65
    assert len(index._leases) <= 2 * len(index) + 65
    assert index.next_queued("D03") == task(1, TaskState.QUEUED, 0, "D03", 0, 19_999, 0)


def test_tasks_leased_without_a_position_leave_no_entries_behind() -> None:
    """Fleets that never say where their robots stand: the per-place heaps, which only a
    request at that place would clean, are still rebuilt and stay bounded."""
    index = OpenTasks()
    for n in range(5_000):
        index.put(task(n, TaskState.QUEUED, 0, PLACES[n % 4], 0, 0, 0))
        leased = index.next_queued(None)
        assert leased is not None
        index.put(task(n, TaskState.LEASED, 0, PLACES[n % 4], 0, 600, 0))
        index.pop(leased.task_id)
    assert len(index) == 0
    assert sum(len(heap) for heap in index._queue_at.values()) <= 65
