"""The open AGV tasks, indexed for the questions the task board asks on every request.

A fleet of robots asks `next` many times a second while thousands of tasks are open, so no
question is answered by a scan: the queue is a heap per priority order (and one per pick-up
place, for "a task whose source is where the robot stands"), leases that run out are a heap by
`lease_until`, and pallets, robots and destinations are dictionaries. Heaps are cleaned lazily:
each time a task is stored it gets a new serial, and an entry whose serial is not the task's
current one (or whose task is no longer queued or leased) is dropped when it reaches the top.
Iteration is in the order tasks were first stored, as a dict's, so every decision comes out
in the same order as before the index.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import Counter
from collections.abc import Iterator, KeysView, Mapping
from typing import Final

from gateway.domain import Task, TaskState
from gateway.rules.tasks import lease_ran_out, queue_order

__all__ = ["OpenTasks"]

_HOLDING: Final = frozenset({TaskState.LEASED, TaskState.ACCEPTED, TaskState.PICKED})
_QueueEntry = tuple[tuple[int, dt.datetime, str], int]  # (queue_order, serial)
_LeaseEntry = tuple[dt.datetime, int, str]  # (lease_until, serial, task id)


class OpenTasks(Mapping[str, Task]):
    """Open (not finished) tasks by id, with indexes by pallet, holder, queue and lease."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._serial: dict[str, int] = {}  # task id -> serial of its current version
        self._order: dict[str, int] = {}  # task id -> when it was first stored (iteration order)
        self._next_serial = 0
        self._by_pallet: dict[str, dict[str, None]] = {}
        self._by_robot: dict[str, dict[str, None]] = {}  # holders only (not queued)
        self._reserved: Counter[str] = Counter()  # destination -> open tasks going there
        self._queue: list[_QueueEntry] = []
        self._queue_at: dict[str, list[_QueueEntry]] = {}  # source -> its queued tasks
        self._leases: list[_LeaseEntry] = []
        self._queued = 0
        self._queue_entries = 0  # in `_queue` (and, split by source, in `_queue_at`), stale too

    # --- Mapping ------------------------------------------------------------------------------

    def __getitem__(self, task_id: str) -> Task:
        return self._tasks[task_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    # --- changes ------------------------------------------------------------------------------

    def put(self, task: Task) -> None:
        """Store a task that is open (new, or a new version of one already here)."""
        task_id = task.task_id
        old = self._tasks.get(task_id)
        if old is not None:
            self._unindex(old)
        self._next_serial += 1
        serial = self._next_serial
        self._tasks[task_id] = task  # a new version keeps its place in the iteration order
        self._serial[task_id] = serial
        self._order.setdefault(task_id, serial)
        self._by_pallet.setdefault(task.sscc, {})[task_id] = None
        self._reserved[task.destination] += 1
        if task.state is TaskState.QUEUED:
            self._queued += 1
            entry = (queue_order(task), serial)
            heapq.heappush(self._queue, entry)
            heapq.heappush(self._queue_at.setdefault(task.source, []), entry)
            self._queue_entries += 1
        elif task.robot is not None:
            self._by_robot.setdefault(task.robot, {})[task_id] = None
        if task.state in _HOLDING and task.lease_until is not None:
            heapq.heappush(self._leases, (task.lease_until, serial, task_id))
        self._compact()

    def pop(self, task_id: str) -> Task | None:
        """Take a task out (it finished); None if it was not here."""
        task = self._tasks.pop(task_id, None)
        if task is not None:
            self._unindex(task)
            del self._serial[task_id], self._order[task_id]
        return task

    # --- questions ----------------------------------------------------------------------------

    def for_pallet(self, sscc: str) -> list[Task]:
        """The open tasks for one pallet, in the order they were first stored."""
        ids = self._by_pallet.get(sscc, {})
        return sorted((self._tasks[i] for i in ids), key=lambda t: self._order[t.task_id])

    def has_pallet(self, sscc: str) -> bool:
        """An open task is about this pallet."""
        return sscc in self._by_pallet

    def pallets(self) -> KeysView[str]:
        """Every pallet an open task is about (a live view)."""
        return self._by_pallet.keys()

    def held_by(self, robot: str, fleet: str | None = None) -> Task | None:
        """The open task a robot holds (the first stored, if ever more than one)."""
        held = [
            self._tasks[i]
            for i in self._by_robot.get(robot, {})
            if fleet is None or self._tasks[i].fleet == fleet
        ]
        return min(held, key=lambda t: self._order[t.task_id], default=None)

    def holders(self) -> dict[str, Task]:
        """The task each robot holds (the first stored, if ever more than one), by robot."""
        out: dict[str, Task] = {}
        for robot, held in self._by_robot.items():
            tasks = [self._tasks[i] for i in held]
            if tasks:
                out[robot] = min(tasks, key=lambda t: self._order[t.task_id])
        return out

    def reserved(self) -> dict[str, int]:
        """Pallets on their way to each destination: one per open task."""
        return dict(self._reserved)

    def next_queued(self, position: str | None) -> Task | None:
        """The queued task to lease: the highest priority, then oldest, then by id; among the
        tasks of that priority, one whose source is `position` goes first."""
        first = self._top(self._queue)
        if first is None or position is None:
            return first
        nearby = self._top(self._queue_at.get(position, []))
        if nearby is not None and nearby.priority == first.priority:
            return nearby
        return first

    def expired(self, now: dt.datetime) -> list[Task]:
        """Tasks whose lease ran out by `now`, in the order they were first stored."""
        out: dict[str, Task] = {}
        found: list[_LeaseEntry] = []
        while self._leases and self._leases[0][0] <= now:
            entry = heapq.heappop(self._leases)
            _, serial, task_id = entry
            task = self._tasks.get(task_id)
            if task is not None and self._serial[task_id] == serial and lease_ran_out(task, now):
                out[task_id] = task
                found.append(entry)
        for entry in found:
            # Kept until the task changes (the caller's `put` makes the entry stale): a task
            # the caller could not change is found again by the next sweep, as a scan would.
            heapq.heappush(self._leases, entry)
        return sorted(out.values(), key=lambda t: self._order[t.task_id])

    # --- upkeep -------------------------------------------------------------------------------

    def _unindex(self, task: Task) -> None:
        _remove(self._by_pallet, task.sscc, task.task_id)
        self._reserved[task.destination] -= 1
        if not self._reserved[task.destination]:
            del self._reserved[task.destination]
        if task.state is TaskState.QUEUED:
            self._queued -= 1
        elif task.robot is not None:
            _remove(self._by_robot, task.robot, task.task_id)

    def _current(self, entry: _QueueEntry) -> Task | None:
        (_, _, task_id), serial = entry
        task = self._tasks.get(task_id)
        if task is None or self._serial[task_id] != serial or task.state is not TaskState.QUEUED:
            return None
        return task

    def _top(self, heap: list[_QueueEntry]) -> Task | None:
        while heap:
            task = self._current(heap[0])
            if task is not None:
                return task
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        """Rebuild the heaps once stale entries outnumber live ones (bounded memory).

        Entries popped from `_queue` are not subtracted: `_queue_at` keeps its copies until a
        robot asks at that place, so the count is of entries pushed since the last rebuild."""
        if self._queue_entries > 2 * self._queued + 64:
            self._queue = [e for e in self._queue if self._current(e) is not None]
            heapq.heapify(self._queue)
            at: dict[str, list[_QueueEntry]] = {}
            for entry in self._queue:
                at.setdefault(self._tasks[entry[0][2]].source, []).append(entry)
            for heap in at.values():
                heapq.heapify(heap)
            self._queue_at = at
            self._queue_entries = len(self._queue)
        if len(self._leases) > 2 * len(self._tasks) + 64:
            self._leases = [e for e in self._leases if self._serial.get(e[2]) == e[1]]
            heapq.heapify(self._leases)


def _remove(index: dict[str, dict[str, None]], key: str, task_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.pop(task_id, None)
        if not ids:
            del index[key]
