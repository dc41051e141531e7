"""Simulated AGV fleet controllers: lease transport tasks from the gateway, run them, record truth.

The wire contract (MQTT 5 request/response; `base` is `gw/{site}/{gateway}`):

- `{base}/agv/next` `{"fleet", "robot", "capabilities", "position"}` -> `{"ok", "task"}`; a null
  task means nothing to do now: the robot asks again after `poll_s`;
- `{base}/agv/progress` `{"fleet", "robot", "task_id", "status", "location", "reason"}` with
  status accepted, picked (location: the source), dropped (location: where it was set down),
  failed (reason) or alive (renews the lease only) -> `{"ok", "result", "code", "message",
  "task"}`, result changed, already or refused;
- `{base}/agv/cancel` `{"task_id", "reason"}` -> the same shape.

Each controller has one MQTT connection for all its robots and one response topic,
`fleet/{fleet_id}/responses`, subscribed before anything is sent. Requests go out at QoS 1, not
retained, with ResponseTopic and CorrelationData; an answer is matched by its correlation data. A
request that is not answered within `request_timeout_s`, or whose connection drops, is sent
again with a new correlation id (the gateway handles repeats idempotently) until it is answered;
a lost connection is re-established with a capped, jittered backoff. An answer other than
`ok: true` is recorded, never raised: the robot leaves the task (ABANDONED) and asks for the next.

A robot runs a task as: accepted; after `step_s` picked at the source; after `step_s` dropped at
the destination. With `alive_s` set, it also reports alive that often while it works. In VDA 5050
mode the controller owns a `SimulatedRobot` per robot (serialNumber = robot id, node ids =
location ids): it reports accepted and then has the robot run the order; the robot's own state
messages (pick and drop FINISHED, load id = the task's SSCC) tell the gateway about the pick and
the drop, which the controller never reports. A failed drop is also reported as failed by the
controller, unless `Vda5050.report_drop_failures` is off. The robot asks for its next task as
soon as its order ended; should the gateway answer with the task it has just finished (the
robot's last state, on the robot's own connection, has not reached the gateway yet), it asks
again after `poll_s` instead of running the task twice.

Faults are drawn per task attempt, before it starts, by `plan_attempt` from a generator seeded
with (seed, robot, attempt number): a robot's n-th attempt always does the same thing for a given
seed, whichever task it gets. A silent robot stops reporting before or after its pick (in VDA 5050
mode it also cuts its connection, so the broker publishes its last will); by default it is then
out of service for the rest of the run (`Faults.silent_pause_s` None): the gateway must take the
task back when the lease runs out. With `silent_pause_s` set it comes back after that pause
(VDA 5050: on a new connection), has forgotten the task, and asks for new work.

Ground truth: `FleetController.log` holds an `Outcome` per task attempt; `exchanges` every
request and its answer (or why there was none); `stray` the answers that matched no waiting
request (an answer to a request the run stopped waiting for, at its end, is `late`, not stray). `overlapping_leases(log)` lists attempts that held one task at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import json
import logging
import random
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bridge.suback import subscribe_or_raise
from simulators.vda5050_robot import VERSIONS, SimulatedRobot

__all__ = [
    "Did",
    "Exchange",
    "Faults",
    "FleetController",
    "LeasedTask",
    "Outcome",
    "Plan",
    "StrayResponse",
    "Vda5050",
    "overlapping_leases",
    "plan_attempt",
    "wrong_drop_location",
]

_logger = logging.getLogger(__name__)

Phase = Literal["before_pick", "after_pick"]
RequestKind = Literal["next", "progress", "cancel"]
Status = Literal["accepted", "picked", "dropped", "failed", "alive"]
Copy = Literal["original", "duplicate", "stale"]

_T = TypeVar("_T")

# The task states in which a robot holds the task's lease (the gateway's TaskState values).
_HELD_STATES: Final = frozenset({"leased", "accepted", "picked"})
_BACKOFF_MIN_S: Final = 0.1
_BACKOFF_MAX_S: Final = 2.0
_CONNECT_TIMEOUT_S: Final = 10.0
# After a publish failed on a connection that is going down, before trying again.
_RETRY_PAUSE_S: Final = 0.05
# How long `run()` waits for its robots to end before cancelling them again.
_RECANCEL_S: Final = 0.1
# How often a VDA 5050 robot's snapshot is looked at to see its pick.
_WATCH_S: Final = 0.005


# --- faults and their plans ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Faults:
    """Probabilities of the injected faults, each drawn once per task attempt.

    Args:
        silent: the robot stops reporting mid-task.
        silent_after_pick: of the silences, the share that come after the pick (the load is on
            the silent robot); the others come right after accepted.
        silent_pause_s: None: a silent robot is out of service for the rest of the run; a
            number: it comes back after that many seconds, without the task, and asks for work.
        fail_drop: the drop fails; the robot reports failed with a reason, the load stays on it.
        duplicate: every progress message of the attempt is sent twice (two requests, two
            correlation ids), as a duplicating link would; in VDA 5050 mode the robot's state
            messages are sent twice too.
        stale: of the duplicating attempts that end with a drop or a failed drop, the share
            that also send an earlier status (accepted or picked) again at the end.
        wrong_location: the load is dropped somewhere other than the destination.
        wrong_locations: where a wrong drop lands (one other than the destination); none given:
            back at the source.

    Precedence in one attempt: silent, then fail_drop, then wrong_location. So the rates seen
    are `silent`, `(1 - silent) * fail_drop` and
    `(1 - silent) * (1 - fail_drop) * wrong_location`; duplicate applies to any attempt.
    """

    silent: float = 0.0
    silent_after_pick: float = 0.5
    silent_pause_s: float | None = None
    fail_drop: float = 0.0
    duplicate: float = 0.0
    stale: float = 0.5
    wrong_location: float = 0.0
    wrong_locations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (
            "silent",
            "silent_after_pick",
            "fail_drop",
            "duplicate",
            "stale",
            "wrong_location",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Faults.{name} must be a probability in [0, 1], got {value!r}")
        if self.silent_pause_s is not None and self.silent_pause_s < 0:
            raise ValueError(
                f"Faults.silent_pause_s must be None or not negative, got {self.silent_pause_s!r}"
            )


@dataclass(frozen=True, slots=True)
class Plan:
    """What one task attempt will do, drawn before it starts (precedence already applied)."""

    silent: Phase | None = None
    fail_drop: bool = False
    wrong_location: bool = False
    duplicate: bool = False
    stale: bool = False
    choice: float = 0.0  # in [0, 1): picks the wrong location and the stale status


def plan_attempt(faults: Faults, *, seed: int, robot: str, attempt: int) -> Plan:
    """The faults of `robot`'s `attempt`-th task attempt (from 1) under `seed`.

    A pure function: the generator is seeded with the three values, and always makes the same
    seven draws, so one fault's probability never shifts another's.
    """
    rng = random.Random(f"{seed}/{robot}/{attempt}")
    silent, after_pick, fail, duplicate, stale, wrong, choice = (rng.random() for _ in range(7))
    phase: Phase | None = None
    if silent < faults.silent:
        phase = "after_pick" if after_pick < faults.silent_after_pick else "before_pick"
    fail_drop = phase is None and fail < faults.fail_drop
    dup = duplicate < faults.duplicate
    return Plan(
        silent=phase,
        fail_drop=fail_drop,
        wrong_location=phase is None and not fail_drop and wrong < faults.wrong_location,
        duplicate=dup,
        stale=dup and phase is None and stale < faults.stale,
        choice=choice,
    )


def wrong_drop_location(task: LeasedTask, faults: Faults, choice: float) -> str:
    """Where a wrong drop of `task` lands: one of `faults.wrong_locations` other than the
    destination, picked by `choice`; the source when there is none."""
    options = [x for x in faults.wrong_locations if x != task.destination]
    if not options:
        options = [task.source if task.source != task.destination else f"{task.source}-beside"]
    return options[min(int(choice * len(options)), len(options) - 1)]


# --- what the gateway sends ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeasedTask:
    """A TASK as the gateway sent it, with the fields the fleet uses parsed; `raw` is all of it."""

    task_id: str
    kind: str
    sscc: str
    source: str
    destination: str
    state: str
    robot: str | None
    fleet: str | None
    lease_until: dt.datetime | None
    updated_at: dt.datetime | None
    raw: Mapping[str, Any]

    @classmethod
    def parse(cls, value: Any) -> LeasedTask | None:
        """The task in `value`, or None if it is null or not a TASK."""
        if not isinstance(value, dict):
            return None
        texts = [value.get(k) for k in ("task_id", "sscc", "source", "destination")]
        if not all(isinstance(x, str) and x for x in texts):
            return None
        return cls(
            task_id=value["task_id"],
            kind=str(value.get("kind", "")),
            sscc=value["sscc"],
            source=value["source"],
            destination=value["destination"],
            state=str(value.get("state", "")),
            robot=_text(value.get("robot")),
            fleet=_text(value.get("fleet")),
            lease_until=_moment(value.get("lease_until")),
            updated_at=_moment(value.get("updated_at")),
            raw=MappingProxyType(dict(value)),
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _moment(value: Any) -> dt.datetime | None:
    """An ISO 8601 time with a zone (2024-05-01T08:00:00Z), or None."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


# --- the ground truth ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its answer, or why there was none.

    `try_number` counts the sends of one request (a retry has a new correlation id); `copy` says
    whether this was the request itself, its duplicate, or a stale repeat of an earlier status.
    `error` is set when no usable answer came: no answer in time, the connection was lost, or
    the answer was not a JSON object (then the robot treats it as not ok).
    """

    kind: RequestKind
    robot: str | None
    task_id: str | None
    request: Mapping[str, Any]
    correlation: str
    try_number: int
    copy: Copy
    sent_at: dt.datetime
    response: Mapping[str, Any] | None = None
    answered_at: dt.datetime | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The gateway answered `ok: true`."""
        return self.response is not None and self.response.get("ok") is True

    @property
    def result(self) -> str | None:
        """`changed`, `already` or `refused` (progress and cancel)."""
        return None if self.response is None else _text(self.response.get("result"))

    @property
    def code(self) -> str | None:
        """The gateway's code for the result (e.g. `not_lease_holder`)."""
        return None if self.response is None else _text(self.response.get("code"))

    @property
    def task(self) -> LeasedTask | None:
        """The task in the answer."""
        return None if self.response is None else LeasedTask.parse(self.response.get("task"))


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """An answer that matched no waiting request (it came after the request was sent again)."""

    correlation: str | None
    payload: bytes
    received_at: dt.datetime


class Did(enum.StrEnum):
    """What the robot did with a task, in the end."""

    DROPPED = "dropped"  # set down at `location`: the destination, unless `wrong_location`
    DROP_FAILED = "drop_failed"  # the drop failed at the destination: the load is on the robot
    SILENT_BEFORE_PICK = "silent_before_pick"  # went silent after accepting
    SILENT_AFTER_PICK = "silent_after_pick"  # went silent with the load on board
    ABANDONED = "abandoned"  # left the task when the gateway refused a report (`refusal`)
    STOPPED = "stopped"  # the run was stopped during the task


@dataclass(frozen=True, slots=True)
class Outcome:
    """One task attempt of one robot, as it really happened.

    `location` is where the load ended up: the drop location (DROPPED); the destination (a
    failed drop: on the robot, standing there); the source (silent or abandoned after the pick);
    otherwise None. `load_on_robot` says the robot still carries it.

    `held_from` and `held_until` bound the time the task was leased to this robot, in the
    gateway's time: from the task's `updated_at` in the `next` answer, until the `updated_at` of
    the first answer showing the task no longer leased to the robot (done, failed, cancelled,
    requeued, another robot), else the last `lease_until` seen (the gateway gives the task back
    by then at the latest). In VDA 5050 mode the gateway learns of the drop from the robot, so
    `held_until` is the last `lease_until` seen: an upper bound.
    """

    task_id: str
    robot: str
    fleet: str
    attempt: int  # the robot's n-th task attempt, from 1
    sscc: str
    source: str
    destination: str
    did: Did
    location: str | None
    load_on_robot: bool
    wrong_location: bool
    reason: str | None  # the failed drop's reason
    refusal: str | None  # "code: message" of the first report the gateway refused
    plan: Plan
    vda5050: bool
    relinks: int  # VDA 5050: the robot's connection was lost and its order sent again
    started_at: dt.datetime  # our clock: the task arrived
    picked_at: dt.datetime | None
    ended_at: dt.datetime
    held_from: dt.datetime | None
    held_until: dt.datetime | None
    reports: tuple[Exchange, ...]  # every progress request of the attempt, copies included


def overlapping_leases(outcomes: Sequence[Outcome]) -> list[tuple[Outcome, Outcome]]:
    """Pairs of attempts by different robots that held the same task at the same time.

    Attempts without both ends of their lease interval are left out.
    """
    pairs: list[tuple[Outcome, Outcome]] = []
    known = [
        (o, o.held_from, o.held_until)
        for o in outcomes
        if o.held_from is not None and o.held_until is not None
    ]
    for i, (a, a_from, a_until) in enumerate(known):
        for b, b_from, b_until in known[i + 1 :]:
            same_task = a.task_id == b.task_id and (a.robot, a.fleet) != (b.robot, b.fleet)
            if same_task and a_from < b_until and b_from < a_until:
                pairs.append((a, b))
    return pairs


@dataclass(frozen=True, slots=True)
class Vda5050:
    """VDA 5050 mode: each robot is a `SimulatedRobot` with serialNumber = robot id.

    Args:
        version: "2.1.0" or "3.0.0".
        interface: the first topic level.
        manufacturer: the robots' manufacturer.
        state_interval_s: a robot publishes its state at least this often.
        start_node: where the robots stand at start.
        report_drop_failures: the controller also reports a failed drop as failed.
        report_load_ids: False: the robots list their loads without `loadId`, so the gateway
            takes the load of a pick or drop from the task the robot holds.
    """

    version: str = "2.1.0"
    interface: str = "uagv"
    manufacturer: str = "SimBots"
    state_interval_s: float = 1.0
    start_node: str = "home"
    report_drop_failures: bool = True
    report_load_ids: bool = True

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(
                f"Vda5050.version must be one of {', '.join(VERSIONS)}, got {self.version!r}"
            )


# --- the controller ------------------------------------------------------------------------------


class _Refused(Exception):
    """A report the gateway did not answer with ok: the robot leaves the task."""

    def __init__(self, exchange: Exchange) -> None:
        response = exchange.response or {}
        self.text = f"{response.get('code') or exchange.error}: {response.get('message', '')}"
        super().__init__(f"{exchange.kind} refused: {self.text}")
        self.exchange = exchange


class _LinkLost(Exception):
    """The controller's connection dropped while a request waited for its answer."""


@dataclass(slots=True)
class _Attempt:
    """One task attempt while it runs."""

    robot: str
    number: int
    task: LeasedTask
    plan: Plan
    started_at: dt.datetime
    fleet: str
    reports: list[Exchange] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    picked_at: dt.datetime | None = None
    lease_until: dt.datetime | None = None
    released_at: dt.datetime | None = None
    refusal: str | None = None
    relinks: int = 0

    def see(self, exchange: Exchange) -> None:
        """Follow the lease in the task an answer carries."""
        task = exchange.task
        if task is None or task.task_id != self.task.task_id:
            return
        if (
            task.robot == self.robot
            and task.fleet in (None, self.fleet)
            and (task.state in _HELD_STATES)
        ):
            if task.lease_until is not None and (
                self.lease_until is None or task.lease_until > self.lease_until
            ):
                self.lease_until = task.lease_until
        elif self.released_at is None:
            self.released_at = task.updated_at


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class FleetController:
    """A fleet controller for `robots`, leasing tasks from one gateway; an async context manager.

    Entering connects (raising ConnectionError if the broker cannot be reached in 10 s) and, in
    VDA 5050 mode, connects each robot. `run()` runs the robots until `stop()`; `run_until()`
    until a number of attempts ended or an event is set.

    Args:
        host: the broker's address.
        port: the broker's port.
        base: the gateway's topic base, `gw/{site}/{gateway}`.
        fleet_id: this fleet's id in the API; also names the response topic.
        robots: the robots' ids (in VDA 5050 mode: their serial numbers).
        capabilities: what the robots can do, sent with every `next`.
        vda5050: VDA 5050 mode (a `Vda5050`, or a mapping of its fields); None: the controller
            reports pick and drop itself.
        step_s: how long each step of a task takes.
        poll_s: the pause before asking again when there is nothing to do.
        request_timeout_s: how long to wait for an answer before sending the request again.
        alive_s: while a task runs, report alive this often; None: never.
        faults: the injected faults.
        seed: seeds the faults (see `plan_attempt`).
        clock: aware wall-clock time for the records.
        protocol: "5" (response topic and correlation data as MQTT 5 properties) or "3.1.1"
            (no properties: `reply_to` and `correlation` go in the request's payload and the
            answer carries `correlation`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        base: str,
        fleet_id: str,
        robots: Sequence[str],
        capabilities: Sequence[str] = ("putaway", "move"),
        vda5050: Vda5050 | Mapping[str, Any] | None = None,
        step_s: float = 0.5,
        poll_s: float = 1.0,
        request_timeout_s: float = 5.0,
        alive_s: float | None = None,
        faults: Faults = Faults(),  # frozen: one shared default is safe
        seed: int = 0,
        clock: Callable[[], dt.datetime] = _utc_now,
        protocol: Literal["5", "3.1.1"] = "5",
    ) -> None:
        if not robots or len(set(robots)) != len(robots):
            raise ValueError(f"robots must be distinct ids, at least one, got {list(robots)!r}")
        if step_s < 0 or poll_s <= 0 or request_timeout_s <= 0:
            raise ValueError("step_s must not be negative; poll_s and request_timeout_s positive")
        if alive_s is not None and alive_s <= 0:
            raise ValueError(f"alive_s must be None or positive, got {alive_s!r}")
        if protocol == "3.1.1" and vda5050 is not None:
            raise ValueError("VDA 5050 robots speak MQTT 5: use protocol 5 in VDA 5050 mode")
        self.protocol = protocol
        if "+" in fleet_id or "#" in fleet_id or "/" in fleet_id:
            raise ValueError(f"fleet_id must be one topic level without wildcards: {fleet_id!r}")
        self.base = base.rstrip("/")
        self.fleet_id = fleet_id
        self.robots: tuple[str, ...] = tuple(robots)
        self.capabilities: tuple[str, ...] = tuple(capabilities)
        self.vda5050 = (
            vda5050 if vda5050 is None or isinstance(vda5050, Vda5050) else (Vda5050(**vda5050))
        )
        if self.vda5050 is not None and step_s <= _WATCH_S:
            # The controller sees a robot's pick by looking at it every _WATCH_S.
            raise ValueError(f"in VDA 5050 mode step_s must be above {_WATCH_S} s, got {step_s!r}")
        self.faults = faults
        self.seed = seed
        self.log: list[Outcome] = []
        """One `Outcome` per task attempt, in the order they ended."""
        self.exchanges: list[Exchange] = []
        """Every request sent, with its answer or why there was none, in the order they ended."""
        self.stray: list[StrayResponse] = []
        """Answers that matched no waiting request."""
        self.late: list[StrayResponse] = []
        """Answers to requests the run was stopped while waiting for."""
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        self._host = host
        self._port = port
        self._step_s = step_s
        self._poll_s = poll_s
        self._request_timeout_s = request_timeout_s
        self._alive_s = alive_s
        self._clock = clock
        self._jitter = random.Random()
        self._client: aiomqtt.Client | None = None
        self._up = asyncio.Event()
        self._pending: dict[bytes, asyncio.Future[tuple[bytes, dt.datetime]]] = {}
        # Requests given up when the run stopped (bounded): their answers may still come.
        self._abandoned: deque[bytes] = deque(maxlen=1024)
        self._link_task: asyncio.Task[None] | None = None
        self._vehicles: dict[str, SimulatedRobot] = {}
        self._attempts = dict.fromkeys(self.robots, 0)
        self._positions: dict[str, str | None] = dict.fromkeys(self.robots)
        self._out_of_service: set[str] = set()
        self._stopping = asyncio.Event()
        self._logged = asyncio.Event()
        self._closing = False

    @property
    def response_topic(self) -> str:
        """Where the gateway's answers to this controller go."""
        return f"fleet/{self.fleet_id}/responses"

    @property
    def out_of_service(self) -> frozenset[str]:
        """Robots that went silent for good."""
        return frozenset(self._out_of_service)

    @property
    def vehicles(self) -> Mapping[str, SimulatedRobot]:
        """VDA 5050 mode: the simulated robot of each robot id (replaced when it reconnects)."""
        return MappingProxyType(self._vehicles)

    async def __aenter__(self) -> Self:
        self._link_task = asyncio.get_running_loop().create_task(
            self._link(), name=f"fleet[{self.fleet_id}].link"
        )
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await self._up.wait()
                if self.vda5050 is not None:
                    for robot in self.robots:
                        self._vehicles[robot] = await self._connect_vehicle(
                            robot, self.vda5050.start_node
                        )
        except TimeoutError as err:
            await self._close()
            raise ConnectionError(
                f"fleet {self.fleet_id}: broker {self._host}:{self._port} not reachable"
                f" ({self.last_error})"
            ) from err
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        await self._close()

    async def _close(self) -> None:
        for robot, vehicle in list(self._vehicles.items()):
            with contextlib.suppress(aiomqtt.MqttError):
                await vehicle.__aexit__(None, None, None)
            del self._vehicles[robot]
        self._closing = True
        task, self._link_task = self._link_task, None
        if task is not None:
            while not task.done():  # see `run()`: a cancellation can be lost
                task.cancel()
                await asyncio.wait([task], timeout=_RECANCEL_S)
            with contextlib.suppress(asyncio.CancelledError):
                task.result()
        self.connected = False

    # --- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every robot in service until `stop()`, or until none is left in service."""
        self._stopping.clear()
        working = [r for r in self.robots if r not in self._out_of_service]
        remaining = len(working)

        async def robot_loop(robot: str) -> None:
            nonlocal remaining
            try:
                await self._robot_loop(robot)
            finally:
                remaining -= 1
                if remaining == 0:
                    self._stopping.set()

        if not working:
            return
        async with asyncio.TaskGroup() as tg:
            loops = [
                tg.create_task(robot_loop(r), name=f"fleet[{self.fleet_id}].robot[{r}]")
                for r in working
            ]
            try:
                await self._stopping.wait()
            finally:
                self._stopping.set()  # also when run() is cancelled: the robot loops end
            # A robot in the middle of a task records it as STOPPED. A cancellation can be lost
            # in a library's `asyncio.wait_for` (Python 3.11): cancel until they are gone.
            while pending := [job for job in loops if not job.done()]:
                for job in pending:
                    job.cancel()
                await asyncio.wait(pending, timeout=_RECANCEL_S)

    async def run_until(self, target: int | asyncio.Event) -> None:
        """Run until `log` holds `target` outcomes, or until the event `target` is set (or no
        robot is left in service)."""

        async def watch() -> None:
            if isinstance(target, asyncio.Event):
                await target.wait()
            else:
                while len(self.log) < target:
                    self._logged.clear()
                    await self._logged.wait()
            self.stop()

        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(watch(), name=f"fleet[{self.fleet_id}].until")
            await self.run()
            watcher.cancel()

    def stop(self) -> None:
        """Make `run()` return; robots in the middle of a task stop where they are."""
        self._stopping.set()

    async def cancel(self, task_id: str, reason: str) -> Exchange:
        """Ask the gateway to cancel a task; the answer is returned and recorded, not raised."""
        return await self._request(
            "cancel", {"task_id": task_id, "reason": reason}, robot=None, task_id=task_id
        )

    async def _robot_loop(self, robot: str) -> None:
        # VDA 5050 mode: the task whose end only the robot's own state told the gateway.
        ended_unreported: str | None = None
        while not self._stopping.is_set():
            asked = await self._request(
                "next",
                {
                    "fleet": self.fleet_id,
                    "robot": robot,
                    "capabilities": list(self.capabilities),
                    "position": self._positions[robot],
                },
                robot=robot,
                task_id=None,
            )
            task = asked.task if asked.ok else None
            if task is not None and task.task_id == ended_unreported and asked.result == "already":
                # The gateway says the robot still holds the task it has just finished: the
                # robot's last state (on the robot's own connection) has not reached the
                # gateway before this request (on the controller's). Not a task to run again:
                # ask again shortly. (Once the lease ran out and the task was leased anew, the
                # answer is "changed".)
                task = None
            if task is None:
                await asyncio.sleep(self._poll_s)
                continue
            outcome = await self._attempt(robot, task, asked)
            ended_unreported = (
                task.task_id
                if self.vda5050 is not None
                and (
                    outcome.did is Did.DROPPED
                    or (outcome.did is Did.DROP_FAILED and not self.vda5050.report_drop_failures)
                )
                else None
            )
            if outcome.location is not None:
                self._positions[robot] = outcome.location
            if outcome.did in (Did.SILENT_BEFORE_PICK, Did.SILENT_AFTER_PICK):
                pause = self.faults.silent_pause_s
                if pause is None:
                    self._out_of_service.add(robot)
                    _logger.info("robot %s of fleet %s is out of service", robot, self.fleet_id)
                    return
                await asyncio.sleep(pause)
                if self.vda5050 is not None:
                    await self._replace_vehicle(robot)

    async def _attempt(self, robot: str, task: LeasedTask, asked: Exchange) -> Outcome:
        self._attempts[robot] += 1
        number = self._attempts[robot]
        draft = _Attempt(
            robot=robot,
            number=number,
            task=task,
            plan=plan_attempt(self.faults, seed=self.seed, robot=robot, attempt=number),
            started_at=self._clock(),
            fleet=self.fleet_id,
        )
        draft.see(asked)
        held_from = task.updated_at
        try:
            if self.vda5050 is None:
                did, location, reason = await self._run_plain(draft)
            else:
                did, location, reason = await self._run_vda5050(draft)
        except asyncio.CancelledError:
            self._record(draft, held_from, Did.STOPPED, None, None)
            raise
        except _Refused as refused:
            draft.refusal = draft.refusal or refused.text
            location = task.source if draft.picked_at is not None else None
            return self._record(draft, held_from, Did.ABANDONED, location, None)
        if draft.plan.stale and did in (Did.DROPPED, Did.DROP_FAILED):
            await self._send_stale(draft)
        return self._record(draft, held_from, did, location, reason)

    async def _run_plain(self, draft: _Attempt) -> tuple[Did, str | None, str | None]:
        task, plan = draft.task, draft.plan
        await self._report(draft, "accepted")
        if plan.silent == "before_pick":
            return Did.SILENT_BEFORE_PICK, None, None
        await self._with_alive(draft, asyncio.sleep(self._step_s))
        draft.picked_at = self._clock()
        await self._report(draft, "picked", location=task.source)
        if plan.silent == "after_pick":
            return Did.SILENT_AFTER_PICK, task.source, None
        await self._with_alive(draft, asyncio.sleep(self._step_s))
        if plan.fail_drop:
            reason = _drop_failure(task.destination)
            await self._report(draft, "failed", reason=reason, final=True)
            return Did.DROP_FAILED, task.destination, reason
        at = task.destination
        if plan.wrong_location:
            at = wrong_drop_location(task, self.faults, plan.choice)
        await self._report(draft, "dropped", location=at, final=True)
        return Did.DROPPED, at, None

    async def _run_vda5050(self, draft: _Attempt) -> tuple[Did, str | None, str | None]:
        assert self.vda5050 is not None
        task, plan = draft.task, draft.plan
        await self._report(draft, "accepted")
        vehicle = self._vehicles[draft.robot]
        vehicle.duplicate = plan.duplicate
        if plan.silent == "before_pick":
            await vehicle.go_silent()
            return Did.SILENT_BEFORE_PICK, None, None
        at = task.destination
        if plan.wrong_location:
            at = wrong_drop_location(task, self.faults, plan.choice)
        while True:
            order_id = f"{task.task_id}-{draft.robot}-{draft.number}"
            if draft.relinks:
                order_id += f"-{draft.relinks}"
            try:
                await self._with_alive(draft, self._drive(vehicle, draft, order_id, at))
                break
            except aiomqtt.MqttError as err:
                # The robot's connection dropped (a broker restart): it reconnects and is sent
                # the order again.
                _logger.info(
                    "robot %s lost its connection (%s): order sent again", draft.robot, err
                )
                draft.relinks += 1
                vehicle = await self._replace_vehicle(draft.robot)
                vehicle.duplicate = plan.duplicate
        if plan.silent == "after_pick":  # `_drive` silenced the robot
            return Did.SILENT_AFTER_PICK, task.source, None
        if plan.fail_drop:
            reason = _drop_failure(task.destination)
            if self.vda5050.report_drop_failures:
                await self._report(draft, "failed", reason=reason, final=True)
            return Did.DROP_FAILED, task.destination, reason
        return Did.DROPPED, at, None

    async def _drive(
        self, vehicle: SimulatedRobot, draft: _Attempt, order_id: str, to_node: str
    ) -> None:
        """Run the order on the robot; with a silence after the pick planned, silence and stop
        it once the pick is published and the robot drives on (so the gateway heard the pick)."""
        task, plan = draft.task, draft.plan
        pick_id = f"{order_id}-pick"
        try:
            async with asyncio.TaskGroup() as tg:
                job = tg.create_task(
                    vehicle.transport(
                        task.sscc, task.source, to_node, fail_drop=plan.fail_drop, order_id=order_id
                    ),
                    name=f"fleet[{self.fleet_id}].order[{order_id}]",
                )
                while not job.done():
                    snapshot = vehicle.snapshot
                    picked = any(
                        a.action_id == pick_id and a.status == "FINISHED" for a in snapshot.actions
                    )
                    if picked and draft.picked_at is None:
                        draft.picked_at = self._clock()
                    if picked and snapshot.driving and plan.silent == "after_pick":
                        # Silent first: should the cancellation be lost, the rest of the order
                        # runs unheard.
                        await vehicle.go_silent()
                        job.cancel()
                        break
                    await asyncio.sleep(_WATCH_S)
        except ExceptionGroup as group:
            raise _sole(group) from None
        if draft.picked_at is None:
            draft.picked_at = self._clock()

    async def _with_alive(self, draft: _Attempt, work: Coroutine[Any, Any, _T]) -> _T:
        """Await `work`, reporting alive every `alive_s` meanwhile; a refused alive stops it."""
        if self._alive_s is None:
            return await work
        alive_s = self._alive_s
        done = asyncio.Event()

        async def working() -> _T:
            try:
                return await work
            finally:
                done.set()

        async def beating() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(alive_s):
                        await done.wait()
                if done.is_set():
                    return
                await self._report(draft, "alive")

        try:
            async with asyncio.TaskGroup() as tg:
                job = tg.create_task(working())
                tg.create_task(beating())
        except ExceptionGroup as group:
            raise _sole(group) from None
        return job.result()

    async def _report(
        self,
        draft: _Attempt,
        status: Status,
        *,
        location: str | None = None,
        reason: str | None = None,
        final: bool = False,
    ) -> None:
        """Send one progress report (twice on a duplicating attempt).

        A report the gateway does not accept raises `_Refused`, except the final one (the
        robot has already set the load down, or failed to): that is only recorded.
        """
        payload: dict[str, Any] = {
            "fleet": self.fleet_id,
            "robot": draft.robot,
            "task_id": draft.task.task_id,
            "status": status,
            "location": location,
            "reason": reason,
        }
        copies: list[Copy] = ["original", "duplicate"] if draft.plan.duplicate else ["original"]
        exchanges = await asyncio.gather(
            *(
                self._request(
                    "progress", payload, robot=draft.robot, task_id=draft.task.task_id, copy=c
                )
                for c in copies
            )
        )
        for exchange in exchanges:
            draft.reports.append(exchange)
            draft.see(exchange)
        if status != "alive":
            draft.sent.append(payload)
        first = exchanges[0]
        if not first.ok:
            refused = _Refused(first)
            if final:
                draft.refusal = draft.refusal or refused.text
                return
            raise refused

    async def _send_stale(self, draft: _Attempt) -> None:
        """Send an earlier status of the attempt again, after its last one."""
        earlier = [p for p in draft.sent if p["status"] in ("accepted", "picked")]
        if not earlier:
            return
        payload = earlier[min(int(draft.plan.choice * len(earlier)), len(earlier) - 1)]
        exchange = await self._request(
            "progress", payload, robot=draft.robot, task_id=draft.task.task_id, copy="stale"
        )
        draft.reports.append(exchange)
        draft.see(exchange)

    def _record(
        self,
        draft: _Attempt,
        held_from: dt.datetime | None,
        did: Did,
        location: str | None,
        reason: str | None,
    ) -> Outcome:
        task = draft.task
        outcome = Outcome(
            task_id=task.task_id,
            robot=draft.robot,
            fleet=self.fleet_id,
            attempt=draft.number,
            sscc=task.sscc,
            source=task.source,
            destination=task.destination,
            did=did,
            location=location,
            load_on_robot=draft.picked_at is not None and did is not Did.DROPPED,
            wrong_location=did is Did.DROPPED and location != task.destination,
            reason=reason,
            refusal=draft.refusal,
            plan=draft.plan,
            vda5050=self.vda5050 is not None,
            relinks=draft.relinks,
            started_at=draft.started_at,
            picked_at=draft.picked_at,
            ended_at=self._clock(),
            held_from=held_from,
            held_until=draft.released_at or draft.lease_until,
            reports=tuple(draft.reports),
        )
        self.log.append(outcome)
        self._logged.set()
        return outcome

    # --- VDA 5050 robots ---------------------------------------------------------------------

    async def _connect_vehicle(self, robot: str, start_node: str) -> SimulatedRobot:
        """A connected simulated robot; tries again until the broker takes it."""
        assert self.vda5050 is not None
        backoff = _BACKOFF_MIN_S
        while True:
            vehicle = SimulatedRobot(
                host=self._host,
                port=self._port,
                version=self.vda5050.version,
                interface=self.vda5050.interface,
                manufacturer=self.vda5050.manufacturer,
                serial=robot,
                start_node=start_node,
                state_interval_s=self.vda5050.state_interval_s,
                step_s=self._step_s,
                report_load_ids=self.vda5050.report_load_ids,
                clock=self._clock,
            )
            try:
                return await vehicle.__aenter__()
            except aiomqtt.MqttError as err:
                self.last_error = f"robot {robot}: {err}"
            await asyncio.sleep(backoff * (0.5 + self._jitter.random()))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    async def _replace_vehicle(self, robot: str) -> SimulatedRobot:
        old = self._vehicles.pop(robot)
        with contextlib.suppress(aiomqtt.MqttError):
            await old.__aexit__(None, None, None)
        vehicle = await self._connect_vehicle(robot, old.snapshot.last_node_id)
        self._vehicles[robot] = vehicle
        return vehicle

    # --- requests and the connection ---------------------------------------------------------

    async def _request(
        self,
        kind: RequestKind,
        payload: Mapping[str, Any],
        *,
        robot: str | None,
        task_id: str | None,
        copy: Copy = "original",
    ) -> Exchange:
        """Send a request until it is answered; every try is recorded in `exchanges`."""
        topic = f"{self.base}/agv/{kind}"
        body = json.dumps(payload).encode()
        loop = asyncio.get_running_loop()
        try_number = 0
        while True:
            try_number += 1
            client = await self._ready_client()
            correlation = uuid.uuid4().hex
            key = correlation.encode()
            future: asyncio.Future[tuple[bytes, dt.datetime]] = loop.create_future()
            self._pending[key] = future
            sent = Exchange(
                kind=kind,
                robot=robot,
                task_id=task_id,
                request=payload,
                correlation=correlation,
                try_number=try_number,
                copy=copy,
                sent_at=self._clock(),
            )
            try:
                properties: Properties | None = None
                if self.protocol == "5":
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    properties.ResponseTopic = self.response_topic
                    properties.CorrelationData = key
                    sent_body = body
                else:
                    fields = {"reply_to": self.response_topic, "correlation": correlation}
                    sent_body = json.dumps({**payload, **fields}).encode()
                async with asyncio.timeout(self._request_timeout_s):
                    await client.publish(topic, sent_body, qos=1, properties=properties)
                    raw, answered_at = await future
            except TimeoutError:
                error = f"no answer within {self._request_timeout_s} s"
            except (aiomqtt.MqttError, _LinkLost) as err:
                error = f"connection lost: {err}"
            except asyncio.CancelledError:
                self._abandoned.append(key)  # the run stops: its answer is late, not stray
                raise
            else:
                response, problem = _decode(raw)
                exchange = replace(sent, response=response, answered_at=answered_at, error=problem)
                self.exchanges.append(exchange)
                return exchange
            finally:
                self._pending.pop(key, None)
                if future.done() and not future.cancelled():
                    future.exception()  # a lost link's, when publish failed first: seen
            self.exchanges.append(replace(sent, error=error))
            if error.startswith("connection lost"):
                await asyncio.sleep(_RETRY_PAUSE_S)

    async def _ready_client(self) -> aiomqtt.Client:
        while True:
            await self._up.wait()
            if self._client is not None:
                return self._client
            await asyncio.sleep(_RETRY_PAUSE_S)

    async def _link(self) -> None:
        """Keep the connection up: subscribe to the response topic, then hand answers over."""
        backoff = _BACKOFF_MIN_S
        ever_up = False
        while not self._closing:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=f"fleet-{self.fleet_id}-{uuid.uuid4().hex[:8]}",
                    protocol=(
                        aiomqtt.ProtocolVersion.V5
                        if self.protocol == "5"
                        else aiomqtt.ProtocolVersion.V311
                    ),
                    timeout=10,
                ) as client:
                    await subscribe_or_raise(client, self.response_topic)
                    self._client = client
                    if ever_up:
                        self.reconnects += 1
                        _logger.info("fleet %s: connection to the broker is back", self.fleet_id)
                    ever_up = True
                    self.connected = True
                    self._up.set()
                    backoff = _BACKOFF_MIN_S
                    async for message in client.messages:
                        self._on_message(message)
            except aiomqtt.MqttError as err:
                self.last_error = str(err)
            finally:
                self._client = None
                self._up.clear()
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(_LinkLost(self.last_error or "disconnected"))
            if self.connected:
                self.connected = False
                _logger.warning("fleet %s: connection to the broker lost", self.fleet_id)
            await asyncio.sleep(backoff * (0.5 + self._jitter.random()))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _on_message(self, message: aiomqtt.Message) -> None:
        raw = message.payload
        payload = bytes(raw) if isinstance(raw, bytes | bytearray) else str(raw or "").encode()
        correlation = getattr(message.properties, "CorrelationData", None)
        key = bytes(correlation) if isinstance(correlation, bytes | bytearray) else None
        if key is None and self.protocol == "3.1.1":
            body, _ = _decode(payload)
            text = body.get("correlation") if body is not None else None
            key = text.encode() if isinstance(text, str) else None
        now = self._clock()
        future = self._pending.get(key) if key is not None else None
        if future is None or future.done():
            text = key.decode(errors="replace") if key is not None else None
            late = key is not None and key in self._abandoned
            (self.late if late else self.stray).append(StrayResponse(text, payload, now))
            return
        future.set_result((payload, now))


def _decode(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as err:
        return None, f"malformed answer: {err}"
    if not isinstance(body, dict):
        return None, f"malformed answer: a JSON {type(body).__name__}, not an object"
    return body, None


def _sole(group: ExceptionGroup[Exception]) -> Exception:
    """The one exception of a task group's failure (a refusal, a robot's lost connection), so
    that callers handle it as such; the group itself when there are more."""
    return group.exceptions[0] if len(group.exceptions) == 1 else group


def _drop_failure(destination: str) -> str:
    # The same words as the simulated VDA 5050 robot's loadHandlingError.
    return f"drop position at {destination} is occupied"


if __name__ == "__main__":
    from simulators.agv_cli import fleet_main

    raise SystemExit(fleet_main())
