"""The simulated fleet controller: fault plans, and runs against a stand-in for the gateway's AGV
task API (a test double serving `next` from a list and answering progress with ok) on a private
Mosquitto, in plain and VDA 5050 mode."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.domain import ConnectionState, RobotId
from gateway.rules.vda5050 import (
    ActionFailed,
    DropConfirmed,
    PickConfirmed,
    RobotEvent,
    RobotLost,
    RobotObserver,
)
from gateway.wire.vda5050 import Rejected, parse
from simulators.fleet import (
    Did,
    Faults,
    FleetController,
    LeasedTask,
    Outcome,
    Plan,
    Vda5050,
    overlapping_leases,
    plan_attempt,
    wrong_drop_location,
)
from tests.mqtt_helpers import Collector, Mosquitto

BASE = "gw/site-1/gw-1"
T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC)
FAST: dict[str, Any] = {"base": BASE, "step_s": 0.02, "poll_s": 0.05, "request_timeout_s": 2.0}
# The order in which the stand-in lets a task's state move on.
RANK = {"queued": 0, "leased": 1, "accepted": 2, "picked": 3, "done": 4, "failed": 4}
STATE_OF = {"accepted": "accepted", "picked": "picked", "dropped": "done", "failed": "failed"}


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def make_tasks(n: int) -> list[dict[str, Any]]:
    return [
        {
            "task_id": f"T-{i}",
            "kind": "putaway",
            "sscc": f"3761234500000{i:05d}",
            "source": f"DOCK-{i % 2 + 1}",
            "destination": f"R-01-{i:02d}",
            "priority": 0,
            "state": "queued",
            "robot": None,
            "fleet": None,
            "lease_until": None,
            "attempts": 0,
            "reason": None,
            "created_at": iso(T0),
            "updated_at": iso(T0),
        }
        for i in range(1, n + 1)
    ]


@dataclass
class StandIn:
    """A test double of the gateway's AGV task API, just enough for the simulator's own tests.

    Leases each task once (a robot asking again while it holds a task gets that task again), and
    answers every progress and cancel with ok ("already" for a repeat), except progress on the
    tasks in `refuse`. The first `unanswered` requests get no answer at all. The first `reoffer`
    times a robot that reported a task accepted asks for the next, it gets that task again
    ("already": a gateway that has not heard the robot's VDA 5050 drop yet).
    """

    port: int
    queue: list[dict[str, Any]]
    refuse: set[str] = field(default_factory=set)
    unanswered: int = 0
    answer_after_s: float = 0.0  # how long each answer takes
    reoffer: int = 0
    lease_s: float = 60.0
    requests: list[tuple[str, dict[str, Any], bytes]] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _seen: set[tuple[Any, ...]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False

    async def __aenter__(self) -> StandIn:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._closing = True
        while not self._task.done():  # aiomqtt's wait_for can lose a cancellation (3.11)
            self._task.cancel()
            await asyncio.wait([self._task], timeout=0.1)

    def progress(self, task_id: str) -> list[dict[str, Any]]:
        return [b for k, b, _ in self.requests if k == "progress" and b["task_id"] == task_id]

    async def _run(self) -> None:
        while not self._closing:  # across broker restarts
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier="stand-in",
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as client:
                    await client.subscribe(f"{BASE}/agv/+", qos=1)
                    self.ready.set()
                    async for message in client.messages:
                        await self._answer(client, message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        kind = str(message.topic).rsplit("/", 1)[-1]
        assert isinstance(message.payload, bytes) and message.properties is not None
        assert not message.retain and message.qos == 1
        body = json.loads(message.payload)
        correlation = message.properties.CorrelationData  # type: ignore[attr-defined]
        self.requests.append((kind, body, correlation))
        if self.unanswered > 0:
            self.unanswered -= 1
            return
        await asyncio.sleep(self.answer_after_s)
        now = dt.datetime.now(dt.UTC)
        lease = {"lease_until": iso(now + dt.timedelta(seconds=self.lease_s))}
        if kind == "next":
            robot = body["robot"]
            held = [
                t for t in self.tasks.values() if t["robot"] == robot and t["state"] == "leased"
            ]
            task = held[0] if held else None
            answer: dict[str, Any] = {"ok": True}
            accepted = [
                t for t in self.tasks.values() if t["robot"] == robot and t["state"] == "accepted"
            ]
            if task is None and accepted and self.reoffer > 0:
                self.reoffer -= 1
                task = accepted[0]
                answer["result"] = "already"
            if task is None and self.queue:
                task = self.queue.pop(0) | {
                    "state": "leased",
                    "robot": robot,
                    "fleet": body["fleet"],
                }
                task |= lease | {"updated_at": iso(now)}
                self.tasks[task["task_id"]] = task
            answer["task"] = task
        else:
            task = self.tasks.get(body["task_id"])
            key = tuple(sorted(body.items()))
            result = "already" if key in self._seen else "changed"
            self._seen.add(key)
            if kind == "progress" and body["task_id"] in self.refuse:
                answer = {"ok": False, "result": "refused", "code": "not_lease_holder"}
                answer["message"] = "the task is leased to another robot"
                if task is not None:
                    task["robot"] = "someone-else"
            else:
                state = "cancelled" if kind == "cancel" else STATE_OF.get(body["status"])
                if task is not None and state and RANK.get(state, 9) > RANK[task["state"]]:
                    task |= {"state": state, "updated_at": iso(now)}
                    task |= lease if RANK[state] < 4 else {"lease_until": None}
                answer = {"ok": True, "result": result, "code": result, "message": ""}
            answer["task"] = task
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = correlation
        response_topic = message.properties.ResponseTopic  # type: ignore[attr-defined]
        await client.publish(response_topic, json.dumps(answer), qos=1, properties=properties)


def expected_did(plan: Plan) -> Did:
    if plan.silent == "before_pick":
        return Did.SILENT_BEFORE_PICK
    if plan.silent == "after_pick":
        return Did.SILENT_AFTER_PICK
    return Did.DROP_FAILED if plan.fail_drop else Did.DROPPED


PLAIN_STATUSES = {
    Did.SILENT_BEFORE_PICK: ["accepted"],
    Did.SILENT_AFTER_PICK: ["accepted", "picked"],
    Did.DROP_FAILED: ["accepted", "picked", "failed"],
    Did.DROPPED: ["accepted", "picked", "dropped"],
}


# --- plans, pure -------------------------------------------------------------------------------

FAULTS = Faults(
    silent=0.25,
    silent_pause_s=0.05,
    fail_drop=0.25,
    duplicate=0.3,
    stale=0.5,
    wrong_location=0.3,
    wrong_locations=("FLOOR-1", "FLOOR-2"),
)
SEED = 7


def test_plans_are_deterministic_per_seed_and_follow_the_rates() -> None:
    robots = [f"r{i}" for i in range(8)]
    plans = [
        plan_attempt(FAULTS, seed=SEED, robot=r, attempt=n) for r in robots for n in range(1, 501)
    ]
    again = [
        plan_attempt(FAULTS, seed=SEED, robot=r, attempt=n) for r in robots for n in range(1, 501)
    ]
    other = [
        plan_attempt(FAULTS, seed=SEED + 1, robot=r, attempt=n)
        for r in robots
        for n in range(1, 501)
    ]
    assert plans == again
    assert plans != other
    n = len(plans)
    counts = Counter(expected_did(p) for p in plans)
    silent = counts[Did.SILENT_BEFORE_PICK] + counts[Did.SILENT_AFTER_PICK]
    rates = {
        "silent": (silent / n, 0.25),
        "after_pick": (counts[Did.SILENT_AFTER_PICK] / silent, 0.5),
        "fail_drop": (counts[Did.DROP_FAILED] / n, 0.75 * 0.25),
        "wrong": (sum(p.wrong_location for p in plans) / n, 0.75 * 0.75 * 0.3),
        "duplicate": (sum(p.duplicate for p in plans) / n, 0.3),
        "stale": (sum(p.stale for p in plans) / n, 0.3 * 0.75 * 0.5),
    }
    for name, (seen, wanted) in rates.items():
        assert abs(seen - wanted) < 0.03, (name, seen, wanted)
    # Precedence: a silent attempt neither fails its drop nor drops anywhere; a failed drop is
    # not a wrong one; a stale repeat needs a duplicating attempt that gets to its end.
    for p in plans:
        assert not (p.silent and (p.fail_drop or p.wrong_location or p.stale))
        assert not (p.fail_drop and p.wrong_location)
        assert not p.stale or p.duplicate
    assert plan_attempt(Faults(), seed=1, robot="r", attempt=1) == Plan(
        choice=plan_attempt(Faults(), seed=1, robot="r", attempt=1).choice
    )


def test_faults_and_settings_are_checked() -> None:
    with pytest.raises(ValueError, match=r"Faults.silent must be a probability"):
        Faults(silent=1.5)
    with pytest.raises(ValueError, match="silent_pause_s"):
        Faults(silent_pause_s=-1)
    with pytest.raises(ValueError, match="version"):
        Vda5050(version="1.1.0")
    with pytest.raises(ValueError, match="distinct"):
        FleetController(base=BASE, fleet_id="f", robots=["a", "a"])
    with pytest.raises(ValueError, match="one topic level"):
        FleetController(base=BASE, fleet_id="f/1", robots=["a"])
    with pytest.raises(ValueError, match="VDA 5050 mode step_s"):
        FleetController(
            base=BASE, fleet_id="f", robots=["a"], vda5050={"version": "3.0.0"}, step_s=0
        )


def test_a_wrong_drop_lands_elsewhere_than_the_destination() -> None:
    task = LeasedTask.parse(make_tasks(1)[0])
    assert task is not None
    assert wrong_drop_location(task, Faults(), 0.9) == task.source
    faults = Faults(wrong_locations=("FLOOR-1", task.destination, "FLOOR-2"))
    assert {wrong_drop_location(task, faults, c / 10) for c in range(10)} == {"FLOOR-1", "FLOOR-2"}
    assert LeasedTask.parse({"task_id": "T"}) is None
    assert LeasedTask.parse(None) is None


def outcome(robot: str, start: float, end: float, task_id: str = "T-1") -> Outcome:
    return Outcome(
        task_id=task_id, robot=robot, fleet="f", attempt=1, sscc="s", source="a", destination="b",
        did=Did.SILENT_BEFORE_PICK, location=None, load_on_robot=False, wrong_location=False,
        reason=None, refusal=None, plan=Plan(), vda5050=False, relinks=0, started_at=T0,
        picked_at=None, ended_at=T0, held_from=T0 + dt.timedelta(seconds=start),
        held_until=T0 + dt.timedelta(seconds=end), reports=(),
    )  # fmt: skip


def test_overlapping_leases_are_found() -> None:
    a, b, c = outcome("r1", 0, 60), outcome("r2", 60, 90), outcome("r3", 80, 100)
    assert overlapping_leases([a, b]) == []  # handed over when the lease ran out
    assert overlapping_leases([a, b, c]) == [(b, c)]
    assert overlapping_leases([a, outcome("r2", 10, 20, "T-2")]) == []


# --- on a broker -------------------------------------------------------------------------------


@pytest.mark.broker
async def test_a_fleet_runs_its_tasks(mosquitto: Mosquitto) -> None:
    async with (
        StandIn(mosquitto.port, make_tasks(6)) as gateway,
        FleetController(port=mosquitto.port, fleet_id="fleet-a", robots=["r1", "r2"], **FAST) as fleet,
    ):  # fmt: skip
        await asyncio.wait_for(fleet.run_until(6), 20)
    assert sorted(o.task_id for o in fleet.log) == [f"T-{i}" for i in range(1, 7)]
    for o in fleet.log:
        assert (o.did, o.location, o.wrong_location, o.load_on_robot) == (
            Did.DROPPED,
            o.destination,
            False,
            False,
        )
        assert [b["status"] for b in gateway.progress(o.task_id)] == PLAIN_STATUSES[Did.DROPPED]
        assert [b["location"] for b in gateway.progress(o.task_id)] == [
            None,
            o.source,
            o.destination,
        ]
        assert all(
            b["robot"] == o.robot and b["fleet"] == "fleet-a" for b in gateway.progress(o.task_id)
        )
        assert o.started_at <= o.picked_at <= o.ended_at  # type: ignore[operator]
        # Leased from the `next` answer until the drop's answer showed the task done.
        assert o.held_from is not None and o.held_until is not None
        assert o.held_from <= o.held_until
        assert [e.result for e in o.reports] == ["changed"] * 3
    assert overlapping_leases(fleet.log) == []
    assert {o.robot for o in fleet.log} == {"r1", "r2"}
    # Every request had its own correlation, and every one was answered, once.
    correlations = [c for _, _, c in gateway.requests]
    assert len(set(correlations)) == len(correlations)
    assert all(e.ok and e.error is None and e.try_number == 1 for e in fleet.exchanges)
    assert fleet.stray == []
    nexts = [b for k, b, _ in gateway.requests if k == "next"]
    assert {json.dumps(sorted(b)) for b in nexts} == {
        '["capabilities", "fleet", "position", "robot"]'
    }
    assert any(b["position"] is not None for b in nexts)  # where the robot last dropped


@pytest.mark.broker
@pytest.mark.slow(3)
async def test_faults_follow_the_seeded_plans(mosquitto: Mosquitto) -> None:
    robots = ["r1", "r2", "r3"]
    async with (
        StandIn(mosquitto.port, make_tasks(24)) as gateway,
        FleetController(
            port=mosquitto.port, fleet_id="fleet-f", robots=robots, faults=FAULTS, seed=SEED, **FAST
        ) as fleet,
    ):  # fmt: skip
        await asyncio.wait_for(fleet.run_until(24), 30)
    assert len({o.task_id for o in fleet.log}) == 24
    for robot in robots:
        assert [o.attempt for o in fleet.log if o.robot == robot] == list(
            range(1, 1 + sum(o.robot == robot for o in fleet.log))
        )
    for o in fleet.log:
        assert o.plan == plan_attempt(FAULTS, seed=SEED, robot=o.robot, attempt=o.attempt)
        assert o.did is expected_did(o.plan), o
        statuses = [b["status"] for b in gateway.progress(o.task_id)]
        wanted = PLAIN_STATUSES[o.did]
        if o.plan.duplicate:
            wanted = [s for s in wanted for _ in range(2)]
        if o.plan.stale:
            assert statuses[-1] in ("accepted", "picked"), statuses
            statuses = statuses[:-1]
        assert statuses == wanted, (o, statuses)
        assert len(o.reports) == len(gateway.progress(o.task_id))
        if o.did is Did.DROPPED:
            assert o.wrong_location == o.plan.wrong_location
            if o.wrong_location:
                assert o.location in ("FLOOR-1", "FLOOR-2")
            else:
                assert o.location == o.destination
            assert gateway.progress(o.task_id)[-1 - o.plan.stale]["location"] == o.location
        if o.did is Did.DROP_FAILED:
            assert o.reason == f"drop position at {o.destination} is occupied"
            assert o.load_on_robot and o.location == o.destination
            assert gateway.progress(o.task_id)[-1 - o.plan.stale]["reason"] == o.reason
        if o.did is Did.SILENT_AFTER_PICK:
            assert o.load_on_robot and o.location == o.source
        if o.plan.duplicate:  # the second copy of each status was "already"
            assert [e.copy for e in o.reports[:2]] == ["original", "duplicate"]
            assert sorted(e.result or "" for e in o.reports[:2]) == ["already", "changed"]
    # Seed 7 puts every kind of fault into the first three attempts of the three robots.
    seen = Counter(o.did for o in fleet.log)
    assert seen[Did.SILENT_BEFORE_PICK] and seen[Did.SILENT_AFTER_PICK] and seen[Did.DROP_FAILED]
    assert any(o.wrong_location for o in fleet.log)
    assert any(o.plan.stale for o in fleet.log) and any(o.plan.duplicate for o in fleet.log)
    assert fleet.out_of_service == frozenset()  # silent robots came back after the pause
    assert overlapping_leases(fleet.log) == []


@pytest.mark.broker
async def test_silent_robots_are_out_of_service_for_the_rest_of_the_run(
    mosquitto: Mosquitto,
) -> None:
    faults = Faults(silent=1.0, silent_after_pick=0.5)
    async with (
        StandIn(mosquitto.port, make_tasks(4)) as gateway,
        FleetController(
            port=mosquitto.port, fleet_id="fleet-s", robots=["r1", "r2", "r3"], faults=faults,
            seed=3, **FAST,
        ) as fleet,
    ):  # fmt: skip
        await asyncio.wait_for(fleet.run(), 10)  # returns by itself: nobody is left
    assert fleet.out_of_service == {"r1", "r2", "r3"}
    assert sorted(o.robot for o in fleet.log) == ["r1", "r2", "r3"]
    for o in fleet.log:
        assert o.did in (Did.SILENT_BEFORE_PICK, Did.SILENT_AFTER_PICK)
        assert o.did is expected_did(plan_attempt(faults, seed=3, robot=o.robot, attempt=1))
        assert [b["status"] for b in gateway.progress(o.task_id)] == PLAIN_STATUSES[o.did]
        # The gateway still shows the lease: it runs until this time, then the task goes back.
        assert o.held_until == LeasedTask.parse(gateway.tasks[o.task_id]).lease_until  # type: ignore[union-attr]
    assert len({o.did for o in fleet.log}) == 2  # seed 3: both kinds of silence
    assert len(gateway.queue) == 1


@pytest.mark.broker
async def test_refusals_and_unanswered_requests_are_recorded(mosquitto: Mosquitto) -> None:
    settings = FAST | {"request_timeout_s": 0.3}
    async with (
        StandIn(mosquitto.port, make_tasks(3), refuse={"T-2"}, unanswered=2) as gateway,
        FleetController(port=mosquitto.port, fleet_id="fleet-r", robots=["r1", "r2"], **settings) as fleet,
    ):  # fmt: skip
        await asyncio.wait_for(fleet.run_until(3), 20)
        cancelled = await fleet.cancel("T-9", "withdrawn by the WMS")
    [refused] = [o for o in fleet.log if o.task_id == "T-2"]
    assert refused.did is Did.ABANDONED
    assert refused.refusal == "not_lease_holder: the task is leased to another robot"
    assert [(e.ok, e.result) for e in refused.reports] == [(False, "refused")]
    assert [o.did for o in fleet.log if o.task_id != "T-2"] == [Did.DROPPED, Did.DROPPED]
    # The first two requests went unanswered: each was sent again with a new correlation.
    timed_out = [e for e in fleet.exchanges if e.error is not None]
    assert len(timed_out) == 2
    for lost in timed_out:
        assert lost.kind == "next" and lost.try_number == 1 and lost.response is None
        assert lost.error == "no answer within 0.3 s"
        [retry] = [
            e
            for e in fleet.exchanges
            if e.robot == lost.robot and e.kind == "next" and e.try_number == 2
        ]
        assert retry.ok and retry.correlation != lost.correlation
        assert retry.request == lost.request
    assert len({c for _, _, c in gateway.requests}) == len(gateway.requests)
    assert cancelled.kind == "cancel" and cancelled.ok and cancelled.task is None
    assert cancelled.request == {"task_id": "T-9", "reason": "withdrawn by the WMS"}
    assert fleet.exchanges[-1] is cancelled


@pytest.mark.broker
@pytest.mark.slow(3)
async def test_the_fleet_carries_on_after_a_broker_restart(mosquitto: Mosquitto) -> None:
    settings = FAST | {"step_s": 0.05, "request_timeout_s": 1.0}
    async with (
        StandIn(mosquitto.port, make_tasks(10)) as gateway,
        FleetController(port=mosquitto.port, fleet_id="fleet-b", robots=["r1", "r2"], **settings) as fleet,
        asyncio.TaskGroup() as tg,
    ):  # fmt: skip
        run = tg.create_task(fleet.run_until(10))
        while len(fleet.log) < 2:
            await asyncio.sleep(0.01)
        mosquitto.kill()
        await asyncio.sleep(0.5)
        down = fleet.connected
        mosquitto.start()
        await asyncio.wait_for(run, 30)
        assert not down and fleet.connected and fleet.reconnects >= 1
    assert sorted(o.task_id for o in fleet.log) == sorted(f"T-{i}" for i in range(1, 11))
    assert all(o.did is Did.DROPPED for o in fleet.log)
    assert any(e.error is not None for e in fleet.exchanges)  # something was lost, and sent again
    for o in fleet.log:  # each status reached the gateway, perhaps more than once
        statuses = [b["status"] for b in gateway.progress(o.task_id)]
        assert list(dict.fromkeys(statuses)) == PLAIN_STATUSES[Did.DROPPED]


# --- VDA 5050 mode -----------------------------------------------------------------------------


def robot_events(collector: Collector) -> list[RobotEvent]:
    observer = RobotObserver()
    events: list[RobotEvent] = []
    for message in collector.messages:
        result = parse(message.topic, message.payload)
        assert not isinstance(result, Rejected), result  # schema-valid, of its version
        events.extend(observer.feed(result))
    return events


@pytest.mark.broker
@pytest.mark.parametrize("version", ["2.1.0", "3.0.0"])
async def test_vda5050_mode_drives_simulated_robots(mosquitto: Mosquitto, version: str) -> None:
    vda = {"version": version, "interface": "uagv", "manufacturer": "Acme", "state_interval_s": 0.2}
    faults = Faults(duplicate=1.0, stale=1.0)
    async with Collector(mosquitto.port, topic="uagv/#", client_id="vda-collector") as collector:
        async with (
            StandIn(mosquitto.port, make_tasks(4)) as gateway,
            FleetController(
                port=mosquitto.port, fleet_id="fleet-v", robots=["agv-1", "agv-2"], vda5050=vda,
                faults=faults, **FAST,
            ) as fleet,
        ):  # fmt: skip
            await asyncio.wait_for(fleet.run_until(4), 20)
            topics = {r: v.topic("state") for r, v in fleet.vehicles.items()}

        def offline(c: Collector) -> bool:
            return sum(b'"OFFLINE"' in m.payload for m in c.on("/connection")) == 2

        await collector.wait_for(offline)
    assert set(topics.values()) == {
        f"uagv/v{version[0]}/Acme/{r}/state" for r in ("agv-1", "agv-2")
    }
    events = robot_events(collector)
    for o in fleet.log:
        assert (o.did, o.location, o.vda5050) == (Did.DROPPED, o.destination, True)
        # The controller reported only accepted (twice, and once more at the end: stale); the
        # robot's state told the pick and the drop.
        assert [b["status"] for b in gateway.progress(o.task_id)] == ["accepted"] * 3
        mine = [e for e in events if e.robot == RobotId("Acme", o.robot)]
        [pick] = [e for e in mine if isinstance(e, PickConfirmed) and e.load_id == o.sscc]
        [drop] = [e for e in mine if isinstance(e, DropConfirmed) and e.load_id == o.sscc]
        assert (pick.node_id, drop.node_id) == (o.source, o.destination)
        assert pick.action_id == f"{o.task_id}-{o.robot}-{o.attempt}-pick"
    # Every state from the first task on went out twice (duplicate), with the same headerId.
    # Before it, once: the state at connect, and the heartbeats (every state_interval_s) until
    # the first task's plan turned duplication on. How many heartbeats that is depends on how
    # long the first task took to come (two requests through the broker after the robots
    # connected): none on an idle machine, some on a busy one.
    for topic_name in topics.values():
        states = [m.json() for m in collector.messages if m.topic == topic_name]
        copies = Counter(state["headerId"] for state in states)
        ids = sorted(copies)
        once = [i for i in ids if copies[i] == 1]
        twice = [i for i in ids if copies[i] == 2]
        assert once + twice == ids, copies  # once before the first task, twice from then on
        assert once[0] == 0 and twice, copies
        with_order = {state["headerId"] for state in states if state["orderId"]}
        assert with_order and with_order <= set(twice), copies


@pytest.mark.broker
async def test_a_vda5050_robot_offered_the_task_it_just_finished_asks_again(
    mosquitto: Mosquitto,
) -> None:
    # The gateway hears of a VDA 5050 robot's drop from the robot's own state, on the robot's
    # connection: the controller's next request, on another, can get there first. The gateway
    # then answers that the robot still holds the task; the robot must not run it twice.
    vda = Vda5050(version="2.1.0", manufacturer="Acme", state_interval_s=0.2)
    async with (
        StandIn(mosquitto.port, make_tasks(2), reoffer=2) as gateway,
        FleetController(
            port=mosquitto.port, fleet_id="fleet-v", robots=["agv-1"], vda5050=vda, **FAST
        ) as fleet,
    ):
        await asyncio.wait_for(fleet.run_until(2), 20)
    assert [(o.task_id, o.did) for o in fleet.log] == [("T-1", Did.DROPPED), ("T-2", Did.DROPPED)]
    offered_again = [e for e in fleet.exchanges if e.kind == "next" and e.result == "already"]
    assert [e.task.task_id for e in offered_again if e.task] == ["T-1", "T-1"]
    assert gateway.reoffer == 0


@pytest.mark.broker
async def test_vda5050_faults(mosquitto: Mosquitto) -> None:
    vda = Vda5050(version="3.0.0", manufacturer="Acme", state_interval_s=0.2)
    settings = FAST | {"port": mosquitto.port, "vda5050": vda}
    async with Collector(mosquitto.port, topic="uagv/#", client_id="vda-collector") as collector:
        async with StandIn(mosquitto.port, make_tasks(2)) as gateway:
            async with FleetController(
                fleet_id="fleet-s", robots=["agv-s"], faults=Faults(silent=1.0, silent_after_pick=1.0), **settings
            ) as silent:  # fmt: skip
                await asyncio.wait_for(silent.run(), 10)
            async with FleetController(
                fleet_id="fleet-d", robots=["agv-d"], faults=Faults(fail_drop=1.0), **settings
            ) as failing:
                await asyncio.wait_for(failing.run_until(1), 10)

        def heard(c: Collector) -> bool:
            return len(c.on("/connection")) == 4  # ONLINE and the will; ONLINE and OFFLINE

        await collector.wait_for(heard)
    [lost] = silent.log
    assert (lost.did, lost.load_on_robot, lost.location) == (
        Did.SILENT_AFTER_PICK,
        True,
        lost.source,
    )
    assert [b["status"] for b in gateway.progress(lost.task_id)] == ["accepted"]
    [failed] = failing.log
    assert (failed.did, failed.reason) == (Did.DROP_FAILED, "drop position at R-01-02 is occupied")
    assert [(b["status"], b["reason"]) for b in gateway.progress(failed.task_id)] == [
        ("accepted", None),
        ("failed", failed.reason),
    ]
    events = robot_events(collector)
    by_robot = {
        r: [type(e) for e in events if e.robot == RobotId("Acme", r)] for r in ("agv-s", "agv-d")
    }
    # The silent robot was heard picking, then its last will; the other failed its drop.
    assert by_robot["agv-s"] == [PickConfirmed, RobotLost]
    assert by_robot["agv-d"] == [PickConfirmed, ActionFailed, RobotLost]
    [will] = [e for e in events if isinstance(e, RobotLost) and e.robot.serial == "agv-s"]
    assert will.state is ConnectionState.CONNECTIONBROKEN


@pytest.mark.broker
async def test_an_answer_after_the_run_stopped_waiting_is_late_not_stray(
    mosquitto: Mosquitto,
) -> None:
    stopped = asyncio.Event()
    async with (
        StandIn(mosquitto.port, [], answer_after_s=0.5) as gateway,
        FleetController(port=mosquitto.port, fleet_id="fleet-a", robots=["r1"], **FAST) as fleet,
    ):  # fmt: skip
        run = asyncio.create_task(fleet.run_until(stopped))
        async with asyncio.timeout(5):
            while not gateway.requests:
                await asyncio.sleep(0.01)
        stopped.set()  # the robot is waiting for its answer
        await run
        async with asyncio.timeout(5):
            while not fleet.late:
                await asyncio.sleep(0.02)
    assert fleet.stray == []
    assert [r.correlation for r in fleet.late] == [gateway.requests[0][2].decode()]
