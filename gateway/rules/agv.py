"""The AGV task board: putaway tasks from receipts, leases to fleet controllers, drops to moves.

Pure and clock-free, like every rule: requests and robot states come in with their times, and
decisions come out (`TaskChanged` to store and publish, `MoveTransaction`, `Reply`, `Notice`). One board serves every fleet controller; requests are handled one at a time by the
rules runner, so two controllers can never lease the same task: a task is leased only from
the queue, and leasing takes it out.

- **Putaway**: a pallet (its SSCC) accepted at a receiving door that is on the site layout gets
  a putaway task to the location `choose_location` picks: free places counted from the stock
  projection plus the destinations of open tasks, the product's velocity class (ABC over the
  moves of the last `velocity_window`), zone rules, nearest to the door. No location: an event.
- **Locations** come from `[agv.layout]` (with coordinates); the WMS's location master
  (`wms/{site}/location/{id}`) overrides their zone, kind and capacity (0: blocked).
- **Tasks from the WMS** (`wms/{site}/task/{id}`): a move task with the WMS's id; the same id
  again changes nothing; withdrawn, it is cancelled unless its pallet is on a robot. A task for
  a product (a GTIN, not a pallet) picks the pallet by FEFO among the pallets the gateway
  received (lot and earliest expiry from the receipt) that are in stock and not on a task:
  earliest expiry first, undated last, expired never (`no_pallet_to_pick` event otherwise).
- **Answers** (`TaskAnswer`) go back in a `Reply` to the request's opaque reply handle; the
  bridge knows where that is (an MQTT 5 response topic, or a 3.1.1 `reply_to`).
- **next**: a robot that holds an open task gets it again (an answer was lost); otherwise the
  highest-priority, oldest queued task, leased until now + the lease time. Among tasks of the
  same priority, one whose source is the robot's position goes first.
- **progress** and **cancel** go through the task state machine (`gateway.rules.tasks`).
  A drop that finishes a task becomes a move transaction; `check_drop` against the stock adds
  `wrong_location` / `location_full` / `unknown_pallet` exceptions to it, and an alarm.
- **VDA 5050**: the robots' own state confirms picks and drops for the fleet controllers that
  do not report them: the robot id in the API is the robot's `serialNumber`, and a finished
  pick or drop whose load is the task's SSCC, by the robot holding the task, is applied as the
  robot's progress. A robot that reports no load ids (`loads` left out, or without `loadId`)
  has its pick confirmed from the task it holds when the pick was at the task's source, its
  drop when the task is picked (at another place than the destination: `wrong_location`), and
  a failed pick or drop likewise; only actions the observer saw before they ended (not an
  earlier order's, still FINISHED in the state after a gateway restart). Such an action by a
  robot holding no task, or that does not fit its task, is ignored (no load to name). A state
  from the holder renews its lease. A robot gone OFFLINE or CONNECTIONBROKEN keeps its lease
  until it runs out: a robot that comes back in time carries on. A robot that picks or drops the pallet of an open task it does not hold
  (its lease ran out unnoticed), or of its own task that failed `robot_lost_with_load`,
  raises `agv_unexpected_load` and changes nothing.
- **Robots** are told apart by (fleet, robot id); a robot id another fleet holds a task with
  is refused (`robot_id_in_use`).
- **Leases** run out in `on_tick`: before the pick the task goes back to the queue (or fails
  after `max_attempts`); after the pick it fails `robot_lost_with_load`, with an alarm. A
  repeated report renews the lease once half of it has passed; after a restart every open
  lease runs at least a full lease from `resumed_at`.
- **Ships** take pallets off the stock and cancel their queued tasks.
- **Time** does not go back on the board: an event stamped before the board's latest time by
  less than a lease (one that waited to be queued while later ones were handled) is taken as
  happening then, so a task's `updated_at` grows and a lease never starts before the one it
  replaces ended. A bigger step back (the clock was set back) is taken as it comes, so one
  wrong time cannot hold the leases still for long.

Memory: open tasks (bounded by the pallets on their way), the last `max_finished` finished
tasks (so late repeats get "already", not "unknown task"), each received pallet's product, lot
and expiry, and the recent moves used for velocity classes (both stored with the transactions
that make them, so they survive a restart); each bounded.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Final

from gateway.domain import (
    AnswerResult,
    CancelRequest,
    Decision,
    DockKind,
    DockTransaction,
    Location,
    MoveTransaction,
    NextRequest,
    Notice,
    PalletLot,
    ProgressRequest,
    ProgressStatus,
    Reply,
    RobotReport,
    RobotState,
    Severity,
    SiteLayout,
    Task,
    TaskAnswer,
    TaskChanged,
    TaskKind,
    TaskRequest,
    TaskState,
    VelocityClass,
    WmsTask,
    WmsTaskDeleted,
    deterministic_id,
)
from gateway.rules.open_tasks import OpenTasks
from gateway.rules.putaway import (
    NoLocation,
    Occupancy,
    choose_fefo,
    choose_location,
    classify_velocity,
    velocity_of,
)
from gateway.rules.stock import StockProjection
from gateway.rules.tasks import (
    ROBOT_LOST_WITH_LOAD,
    Accept,
    Cancel,
    Drop,
    Fail,
    Lease,
    LeaseExpired,
    Outcome,
    Pick,
    Renew,
    Result,
    TaskEvent,
    TaskPolicy,
    apply,
    create_task,
    move_of,
)
from gateway.rules.vda5050 import (
    ActionFailed,
    DropConfirmed,
    PickConfirmed,
    RobotLost,
    RobotObserver,
)

__all__ = ["TaskBoard", "received_lots"]

# A task is offered only to robots that can carry pallets (or that list no capabilities).
PALLET_CAPABILITY: Final = "pallet"
_LOTS_KEPT: Final = 100_000
_MOVES_KEPT: Final = 100_000


_EVENT_OF: Final = {
    TaskState.LEASED: "leased",
    TaskState.ACCEPTED: "accepted",
    TaskState.PICKED: "picked",
    TaskState.DONE: "done",
    TaskState.FAILED: "failed",
    TaskState.CANCELLED: "cancelled",
    TaskState.QUEUED: "requeued",
}


class TaskBoard:
    """Every AGV task of the gateway, and the decisions about them.

    Args:
        policy: lease time and attempts.
        layout: the site plan for putaway; None: no putaway tasks from receipts.
        stock: where pallets are (the gateway's own receipts and moves).
        observer: the VDA 5050 observer (nodes mapped to locations).
        tasks: the tasks stored at the last stop (open ones and recent finished ones).
        velocity_window: how far back moves count for ABC classes.
        max_finished: finished tasks remembered for late repeats.
        resumed_at: when the gateway started again; open leases run at least a full lease
            from then (the robots could not report while it was down).
        lots: what the pallets received before the restart hold (`received_lots`, stored).
        moves: the recent moves (GTIN, time) the velocity classes count, oldest first.
    """

    def __init__(
        self,
        *,
        policy: TaskPolicy | None = None,
        layout: SiteLayout | None = None,
        stock: StockProjection | None = None,
        observer: RobotObserver | None = None,
        tasks: Iterable[Task] = (),
        velocity_window: dt.timedelta = dt.timedelta(days=30),
        max_finished: int = 10_000,
        resumed_at: dt.datetime | None = None,
        lots: Mapping[str, PalletLot] | None = None,
        moves: Iterable[tuple[str, dt.datetime]] = (),
    ) -> None:
        self.policy = policy or TaskPolicy()
        self._layout = layout
        self._configured_layout = layout
        self._reference: Iterable[Location] | None = None  # not merged into the layout yet
        self.stock = stock or StockProjection()
        self.observer = observer or RobotObserver()
        self.velocity_window = velocity_window
        self._max_finished = max_finished
        self.open = OpenTasks()
        self.finished: OrderedDict[str, Task] = OrderedDict()
        # Pallet -> its product, lot and expiry (from its receipt): velocity classes and FEFO.
        self._lots: OrderedDict[str, PalletLot] = OrderedDict()
        for sscc, lot in (lots or {}).items():
            self._remember_lot(sscc, lot)
        self._moves: deque[tuple[str, dt.datetime]] = deque(moves, maxlen=_MOVES_KEPT)
        self._latest: dt.datetime | None = None  # the board's time (see `now`)
        for task in sorted(tasks, key=lambda t: t.updated_at):
            if resumed_at is not None and task.lease_until is not None:
                # The gateway's downtime is not the robot's fault: a full lease from the restart.
                renewed = max(task.lease_until, resumed_at + self.policy.lease)
                task = replace(task, lease_until=renewed)
            self._keep(task)
            if not task.state.terminal and task.sscc not in self.stock:
                self.stock.apply_move(task.sscc, task.source)

    def now(self, at: dt.datetime) -> dt.datetime:
        """`at`, or the board's time if that is later by up to a lease (then `at` is late);
        moves the board's time on."""
        if self._latest is None or at > self._latest or self._latest - at > self.policy.lease:
            self._latest = at
        return self._latest

    def set_locations(self, records: Iterable[Location]) -> None:
        """The WMS's location master changed: its zone, kind and capacity override the config's.

        Merged when the layout is next used, so replaying thousands of stored location records
        at start merges once, not once per record.
        """
        self._reference = records

    @property
    def layout(self) -> SiteLayout | None:
        """The configured layout, with the WMS location master's zone, kind and capacity."""
        if self._reference is not None and self._configured_layout is not None:
            self._layout = self._configured_layout.with_reference(self._reference)
        self._reference = None
        return self._layout

    # --- lookups ---------------------------------------------------------------------------

    def task(self, task_id: str) -> Task | None:
        """An open or recently finished task."""
        return self.open.get(task_id) or self.finished.get(task_id)

    def lot_of(self, sscc: str) -> PalletLot | None:
        """What a received pallet holds (None: not received here, or forgotten)."""
        return self._lots.get(sscc)

    def held_by(self, robot: str, fleet: str | None = None) -> Task | None:
        """The open task a robot holds, if any; `fleet` None: a robot of any fleet."""
        return self.open.held_by(robot, fleet)

    # --- what creates tasks and moves pallets ------------------------------------------------

    def on_dock(self, tx: DockTransaction, *, site: bool = False) -> list[Decision]:
        """A receive creates putaway tasks for its pallets; a ship takes pallets off stock.

        `site`: another gateway's receipt (this board puts the site's pallets away); it may
        come again (its redelivery, this gateway's restart): a pallet whose putaway task for
        this receipt exists already, open or finished, is left alone."""
        pallets = tx.accepted_pallets
        if tx.kind == DockKind.SHIP:
            shipped: list[Decision] = []
            for sscc in pallets:
                self.stock.apply_ship(sscc)
                self._lots.pop(sscc, None)
                for task in self.open.for_pallet(sscc):
                    reason = f"pallet shipped at {tx.door}"
                    now = self.now(tx.occurred_at)
                    shipped.extend(self._apply(task, Cancel(reason), now))
            return shipped
        lots = dict(received_lots(tx))
        out: list[Decision] = []
        classes: dict[str, VelocityClass] | None = None  # the same for the whole receipt
        for sscc in pallets:
            if site and self.task(deterministic_id("putaway", tx.tx_id, sscc)) is not None:
                continue
            self.stock.apply_receive(sscc, tx.door)
            if sscc in lots:
                self._remember_lot(sscc, lots[sscc])
            if self.layout is None or self.layout.door(tx.door) is None:
                continue
            if self.open.has_pallet(sscc):
                continue  # already on its way somewhere
            if classes is None:
                classes = classify_velocity(self._moves, tx.occurred_at, self.velocity_window)
            out.extend(self._putaway(sscc, tx, classes))
        return out

    def on_move(self, move: MoveTransaction) -> list[Decision]:
        """A forklift or station move: the stock follows; a queued task for the pallet is moot."""
        self.stock.apply_move(move.sscc, move.to_location)
        self._record_move(move.sscc, move.confirmed_at)
        out: list[Decision] = []
        for task in self.open.for_pallet(move.sscc):
            if task.state is TaskState.QUEUED:
                reason = f"pallet moved to {move.to_location} by {move.device_id}"
                out.extend(self._apply(task, Cancel(reason), self.now(move.confirmed_at)))
        return out

    def on_wms_task(self, message: WmsTask | WmsTaskDeleted) -> list[Decision]:
        """A task from the WMS (created once per id), or its withdrawal."""
        at = self.now(message.at)
        if isinstance(message, WmsTaskDeleted):
            task = self.open.get(message.task_id)
            if task is None:
                return []
            return self._apply(task, Cancel("withdrawn by the WMS"), at)
        if self.task(message.task_id) is not None:
            return []  # retained redelivery, or a repeat
        if message.sscc is None:
            picked = self._fefo(message.gtin or "", message.task_id, at)
            if isinstance(picked, Notice):
                return [picked]
            sscc, source = picked
        else:
            sscc, source = message.sscc, message.source or ""
            busy = next(iter(self.open.for_pallet(sscc)), None)
            if busy is not None:
                return [
                    Notice(
                        code="agv_task_rejected",
                        message=(
                            f"task {message.task_id}: pallet {sscc} already has open task "
                            f"{busy.task_id} ({busy.state.value}); cancel that one first"
                        ),
                        at=at,
                        severity=Severity.WARNING,
                        details={"task_id": message.task_id, "sscc": sscc, "open": busy.task_id},
                    )
                ]
            if sscc not in self.stock:
                self.stock.apply_move(sscc, source)
        task = create_task(
            kind=TaskKind.MOVE,
            sscc=sscc,
            source=source,
            destination=message.destination,
            now=at,
            priority=message.priority,
            task_id=message.task_id,
        )
        self._keep(task)
        return [TaskChanged(task, "created")]

    def _fefo(self, gtin: str, task_id: str, at: dt.datetime) -> tuple[str, str] | Notice:
        """The pallet of `gtin` to pick by FEFO (SSCC, location), or why there is none."""
        busy = self.open.pallets()
        candidates = [
            (sscc, lot.gtin, lot.lot, lot.expiry, where)
            for sscc, lot in self._lots.items()
            if sscc not in busy and (where := self.stock.location_of(sscc)) is not None
        ]
        pick = choose_fefo(candidates, gtin, at.date())
        if pick.first is not None:
            return pick.first.sscc, pick.first.location
        return Notice(
            code="no_pallet_to_pick",
            message=f"task {task_id}: {pick.reason}",
            at=at,
            severity=Severity.WARNING,
            details={
                "task_id": task_id,
                "gtin": gtin,
                "expired": [p.sscc for p in pick.expired],
            },
        )

    # --- the API -----------------------------------------------------------------------------

    def on_request(self, request: TaskRequest) -> list[Decision]:
        """Carry out a request; the answer goes back to its reply handle (if it has one)."""
        at = self.now(request.at)
        decisions: list[Decision]
        match request:
            case NextRequest():
                decisions, answer = self._next(request, at)
            case ProgressRequest():
                decisions, answer = self._progress(request, at)
            case CancelRequest():
                decisions, answer = self._cancel(request, at)
        if request.reply is not None:
            decisions.append(Reply(request.reply, answer))
        return decisions

    def _next(self, req: NextRequest, now: dt.datetime) -> tuple[list[Decision], TaskAnswer]:
        held = self.held_by(req.robot, req.fleet)
        if held is not None:
            return [], TaskAnswer(
                True, AnswerResult.ALREADY, "", "the robot already holds this task", held
            )
        other = self.held_by(req.robot)
        if other is not None:
            return [], TaskAnswer(
                False,
                AnswerResult.REFUSED,
                "robot_id_in_use",
                f"robot {req.robot} of fleet {other.fleet} holds task {other.task_id}: robot ids "
                "must be unique across fleets",
                None,
            )
        if req.capabilities is not None and PALLET_CAPABILITY not in req.capabilities:
            return [], TaskAnswer(
                True, AnswerResult.NONE, "", "no task for a robot that cannot carry pallets", None
            )
        task = self.open.next_queued(req.position)
        if task is None:
            return [], TaskAnswer(True, AnswerResult.NONE, "", "no task queued", None)
        until = now + self.policy.lease
        decisions = self._apply(task, Lease(req.robot, req.fleet, until), now)
        leased = self.open.get(task.task_id, task)
        return decisions, TaskAnswer(
            True, AnswerResult.CHANGED, "", f"leased until {until.isoformat()}", leased
        )

    def _progress(
        self, req: ProgressRequest, now: dt.datetime
    ) -> tuple[list[Decision], TaskAnswer]:
        task = self.task(req.task_id)
        if task is None:
            return [], TaskAnswer(
                False, AnswerResult.REFUSED, "unknown_task", f"no task {req.task_id}", None
            )
        if task.robot == req.robot and task.fleet is not None and task.fleet != req.fleet:
            return [], TaskAnswer(
                False,
                AnswerResult.REFUSED,
                "not_lease_holder",
                f"task {task.task_id} is held by robot {task.robot} of fleet {task.fleet}, "
                f"not of fleet {req.fleet}",
                task,
            )
        event: TaskEvent
        match req.status:
            case ProgressStatus.ACCEPTED:
                event = Accept(req.robot)
            case ProgressStatus.PICKED:
                event = Pick(req.robot, req.location)
            case ProgressStatus.DROPPED:
                assert req.location is not None  # checked when parsed
                event = Drop(req.robot, req.location)
            case ProgressStatus.FAILED:
                event = Fail(req.robot, req.reason or "failed (no reason given)")
            case _:
                event = Renew(req.robot)
        return self._answered(task, event, now)

    def _cancel(self, req: CancelRequest, now: dt.datetime) -> tuple[list[Decision], TaskAnswer]:
        task = self.task(req.task_id)
        if task is None:
            return [], TaskAnswer(
                False, AnswerResult.REFUSED, "unknown_task", f"no task {req.task_id}", None
            )
        return self._answered(task, Cancel(req.reason or "cancelled"), now)

    def _answered(
        self, task: Task, event: TaskEvent, now: dt.datetime
    ) -> tuple[list[Decision], TaskAnswer]:
        outcome = apply(task, event, now, self.policy)
        decisions = self._record(task, outcome, now)
        answer = TaskAnswer(
            not outcome.refused,
            AnswerResult(outcome.result.value),
            outcome.code,
            outcome.message,
            outcome.task,
        )
        if outcome.result is Result.ALREADY and isinstance(event, Accept | Pick):
            # A repeated report from the holder still says the robot is alive.
            decisions.extend(self._renew(outcome.task, event.robot, now))
        return decisions, answer

    def _renew(self, task: Task, robot: str, now: dt.datetime) -> list[Decision]:
        """Extend the holder's lease, once more than half of it has passed (fewer writes)."""
        if task.state.terminal or task.robot != robot or task.lease_until is None:
            return []
        if task.lease_until - now > self.policy.lease / 2:
            return []
        return self._apply(task, Renew(robot), now)

    # --- robots' own state (VDA 5050) ----------------------------------------------------------

    def on_robot(self, message: RobotReport) -> list[Decision]:
        """A robot's state or connection message: finished picks and drops count as progress."""
        at = self.now(message.at)
        out: list[Decision] = []
        if isinstance(message.message, RobotState):
            held = self.held_by(message.message.serial)
            if held is not None:  # a robot that reports its state is alive
                out.extend(self._renew(held, message.message.serial, at))
        for event in self.observer.feed(message.message):
            robot = event.robot.serial
            if not isinstance(event, RobotLost) and event.load_id is None:
                out.extend(self._without_load_id(robot, event, at))
                continue
            match event:
                case PickConfirmed():
                    task = self._robot_task(robot, event.load_id)
                    if task is not None:
                        out.extend(self._apply(task, Pick(robot, event.location), at))
                    else:
                        out.extend(self._unexpected(robot, "picked", event.load_id, event, at))
                case DropConfirmed():
                    task = self._robot_task(robot, event.load_id)
                    if task is not None:
                        out.extend(self._apply(task, Drop(robot, event.location), at))
                    else:
                        out.extend(self._unexpected(robot, "dropped", event.load_id, event, at))
                case ActionFailed():
                    task = self._robot_task(robot, event.load_id)
                    if task is not None:
                        reason = f"{event.action_type} failed at {event.location}: {event.reason}"
                        out.extend(self._apply(task, Fail(robot, reason), at))
                case RobotLost():
                    held = self.held_by(robot)
                    out.append(
                        Notice(
                            code="robot_lost",
                            message=(
                                f"robot {event.robot} is {event.state.value.lower()}"
                                + (f" holding task {held.task_id}" if held else "")
                            ),
                            at=at,
                            severity=Severity.WARNING,
                            details={
                                "robot": str(event.robot),
                                "state": event.state.value,
                                "task_id": held.task_id if held else None,
                            },
                        )
                    )
        return out

    def _without_load_id(
        self, robot: str, event: PickConfirmed | DropConfirmed | ActionFailed, at: dt.datetime
    ) -> list[Decision]:
        """A finished or failed pick or drop that names no load (the robot does not report load
        ids): it is about the task the robot holds, if it fits that task.

        A pick fits the held task at the task's source; a drop fits it once it is picked,
        wherever it happened (elsewhere than the destination the move gets `wrong_location`, as
        for a drop with a load id). Nothing else is known about the load, so nothing else is
        applied: a pick elsewhere, a drop before the pick, an action the observer did not see
        before its end (it may be an earlier order's, still FINISHED in the robot's state after
        a gateway restart), and any action of a robot holding no task.
        """
        task = self.held_by(robot)
        if task is None or not event.seen_before_end:
            return []
        match event:
            case PickConfirmed() if event.location == task.source:
                return self._apply(task, Pick(robot, event.location), at)
            case DropConfirmed() if task.state is TaskState.PICKED:
                return self._apply(task, Drop(robot, event.location), at)
            case ActionFailed() if (
                task.state is TaskState.PICKED
                if event.action_type == "drop"
                else task.state is not TaskState.PICKED and event.location == task.source
            ):
                reason = f"{event.action_type} failed at {event.location}: {event.reason}"
                return self._apply(task, Fail(robot, reason), at)
        return []

    def _unexpected(
        self,
        robot: str,
        did: str,
        load_id: str | None,
        event: PickConfirmed | DropConfirmed,
        at: dt.datetime,
    ) -> list[Notice]:
        """A robot handled a pallet the board has a task for, without holding that task: an
        alarm, nothing changed.

        The task is an open one (the robot's lease ran out unnoticed, or its fleet controller
        ran a task it was not given), or the robot's own task that failed while the pallet was
        on it (`robot_lost_with_load`: now it is known where the pallet went). An action from
        before the open task was created is an older order's, late: not an alarm.
        """
        if load_id is None:
            return []
        task = next(iter(self.open.for_pallet(load_id)), None)
        if task is not None and event.at < task.created_at:
            return []
        if task is None:
            task = next(
                (
                    t
                    for t in reversed(self.finished.values())
                    if t.sscc == load_id and t.robot == robot and t.reason == ROBOT_LOST_WITH_LOAD
                ),
                None,
            )
            if task is None:
                return []
        if task.robot == robot:
            holder = f"its own, {task.reason}" if task.state.terminal else "given back"
        else:
            holder = f"held by robot {task.robot} of fleet {task.fleet}" if task.robot else "queued"
        return [
            Notice(
                code="agv_unexpected_load",
                message=(
                    f"robot {robot} {did} pallet {task.sscc} at {event.location}, but its "
                    f"task {task.task_id} is {task.state.value} ({holder})"
                ),
                at=at,
                severity=Severity.ERROR,
                device_id=robot,
                location=event.location,
                details={
                    "robot": robot,
                    "action": did,
                    "action_id": event.action_id,
                    "sscc": task.sscc,
                    "task_id": task.task_id,
                    "state": task.state.value,
                    "holder": task.robot,
                },
            )
        ]

    def _robot_task(self, robot: str, load_id: str | None) -> Task | None:
        """The task a robot's finished action is about: the one it holds, for that very load.

        (An action without a load id goes to `_without_load_id`.)
        """
        task = self.held_by(robot)
        if task is None or load_id is None or load_id != task.sscc:
            return None
        return task

    # --- time ----------------------------------------------------------------------------------

    def on_tick(self, now: dt.datetime) -> list[Decision]:
        """Leases that ran out: back to the queue before the pick, failed after it."""
        now = self.now(now)
        out: list[Decision] = []
        for task in self.open.expired(now):
            out.extend(self._apply(task, LeaseExpired(), now))
        return out

    # --- inside --------------------------------------------------------------------------------

    def _putaway(
        self, sscc: str, tx: DockTransaction, classes: Mapping[str, VelocityClass]
    ) -> list[Decision]:
        assert self.layout is not None
        known = self._lots.get(sscc)
        gtin = known.gtin if known else None
        velocity = velocity_of(classes, gtin) if gtin else "C"
        occupancy = Occupancy(stored=self.stock.occupancy(), reserved=self.open.reserved())
        choice = choose_location(self.layout, occupancy, door=tx.door, velocity=velocity, gtin=gtin)
        if isinstance(choice, NoLocation):
            return [
                Notice(
                    code="putaway_no_location",
                    message=f"pallet {sscc} received at {tx.door}: {choice.reason}",
                    at=tx.occurred_at,
                    severity=Severity.WARNING,
                    location=tx.door,
                    details={"sscc": sscc, "reason": choice.code, "tx_id": tx.tx_id},
                )
            ]
        task = create_task(
            kind=TaskKind.PUTAWAY,
            sscc=sscc,
            source=tx.door,
            destination=choice.location,
            now=self.now(tx.occurred_at),
            task_id=deterministic_id("putaway", tx.tx_id, sscc),
        )
        self._keep(task)
        return [TaskChanged(task, "created")]

    def _apply(self, task: Task, event: TaskEvent, now: dt.datetime) -> list[Decision]:
        return self._record(task, apply(task, event, now, self.policy), now)

    def _record(self, before: Task, outcome: Outcome, now: dt.datetime) -> list[Decision]:
        """Keep a changed task; the decisions its change makes."""
        if not outcome.changed:
            return []
        task = outcome.task
        self._keep(task)
        event = "renewed" if task.state is before.state else _EVENT_OF[task.state]
        out: list[Decision] = [TaskChanged(task, event)]
        if task.state is TaskState.DONE:
            out.extend(self._done(task))
        elif task.state is TaskState.FAILED:
            lost_load = before.state is TaskState.PICKED
            out.append(
                Notice(
                    code="agv_task_failed",
                    message=(
                        f"task {task.task_id} for pallet {task.sscc} failed: {task.reason}"
                        + (f"; the pallet is on robot {task.robot}" if lost_load else "")
                    ),
                    at=now,
                    severity=Severity.ERROR if lost_load else Severity.WARNING,
                    device_id=task.robot,
                    details={
                        "task_id": task.task_id,
                        "sscc": task.sscc,
                        "robot": task.robot,
                        "reason": task.reason,
                        "load_on_robot": lost_load,
                    },
                )
            )
        return out

    def _done(self, task: Task) -> list[Decision]:
        assert task.dropped_at is not None
        capacity = None
        if self.layout is not None:
            capacity = next(
                (
                    loc.capacity_pallets
                    for loc in self.layout.locations
                    if loc.location == task.dropped_at
                ),
                None,
            )
        exceptions = self.stock.check_drop(task.sscc, task.dropped_at, task.destination, capacity)
        move = move_of(task, exceptions)
        assert move is not None
        self.stock.apply_move(task.sscc, task.dropped_at)
        self._record_move(task.sscc, move.confirmed_at)
        out: list[Decision] = [move]
        if exceptions:
            out.append(
                Notice(
                    code="agv_drop_exception",
                    message=(
                        f"robot {task.robot} dropped pallet {task.sscc} at {task.dropped_at} "
                        f"(task to {task.destination}): {', '.join(exceptions)}"
                    ),
                    at=move.confirmed_at,
                    severity=Severity.ERROR,
                    device_id=task.robot,
                    location=task.dropped_at,
                    details={
                        "task_id": task.task_id,
                        "sscc": task.sscc,
                        "exceptions": list(exceptions),
                        "tx_id": move.tx_id,
                    },
                )
            )
        return out

    def _keep(self, task: Task) -> None:
        if task.state.terminal:
            self.open.pop(task.task_id)
            self.finished[task.task_id] = task
            self.finished.move_to_end(task.task_id)
            while len(self.finished) > self._max_finished:
                self.finished.popitem(last=False)
        else:
            self.open.put(task)

    def _remember_lot(self, sscc: str, lot: PalletLot) -> None:
        self._lots[sscc] = lot
        self._lots.move_to_end(sscc)
        while len(self._lots) > _LOTS_KEPT:
            self._lots.popitem(last=False)

    def _record_move(self, sscc: str, at: dt.datetime) -> None:
        known = self._lots.get(sscc)
        if known is not None:
            self._moves.append((known.gtin, at))


def received_lots(tx: DockTransaction) -> list[tuple[str, PalletLot]]:
    """The pallets a receipt accepted, each with the product most of its items are, that
    product's most common lot and its earliest expiry. Pallets with no item: left out."""
    if tx.kind != DockKind.RECEIVE:
        return []
    gtins = Counter(r.item.gtin for r in tx.items if r.item.gtin)
    if not gtins:
        return []
    gtin = gtins.most_common(1)[0][0]
    items = [r.item for r in tx.items if r.item.gtin == gtin]
    expiries = [i.expiry for i in items if i.expiry is not None]
    lots = Counter(i.lot for i in items if i.lot)
    lot = PalletLot(gtin, lots.most_common(1)[0][0] if lots else None, min(expiries, default=None))
    return [(sscc, lot) for sscc in tx.accepted_pallets]
