"""The AGV task board, pure: putaway from receipts, leasing, VDA 5050 confirmations, leases."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_layout
from gateway.domain import (
    DockKind,
    DockResult,
    DockTransaction,
    Event,
    Item,
    ItemResult,
    Location,
    MoveTransaction,
    Notice,
    PalletLot,
    Rejected,
    Reply,
    ReplyHandle,
    RobotReport,
    TaskChanged,
    TaskState,
)
from gateway.rules.agv import TaskBoard
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.stock import StockProjection
from gateway.rules.tasks import TaskPolicy
from gateway.rules.vda5050 import RobotObserver
from gateway.wire.agv import MAX_REQUEST_BYTES, answer_payload, parse_wms_task
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.outbound import notice_payload
from gateway.wire.topics import Requester, Topics
from gateway.wire.vda5050 import parse
from simulators.gs1 import sscc
from simulators.vda5050_robot import (
    RobotSnapshot,
    Transport,
    state_message,
    topic,
    transport_script,
)
from tests.agv_helpers import LAYOUT
from tests.gateway_helpers import assert_valid

T0 = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)
GTIN = "00614141123452"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def board(**kwargs: Any) -> TaskBoard:
    kwargs.setdefault("layout", parse_layout(LAYOUT))
    return TaskBoard(policy=TaskPolicy(lease=dt.timedelta(seconds=60)), **kwargs)


def receipt(
    pallet: str,
    door: str = "D03",
    when: float = 0.0,
    result: str = DockResult.ACCEPTED,
    lot: str | None = None,
    expiry: dt.date | None = None,
) -> DockTransaction:
    items = (
        ItemResult(Item(key=f"sscc:{pallet}", sscc=pallet), result, line=1),
        *(
            ItemResult(
                Item(key=f"sgtin:{GTIN}.{n}", gtin=GTIN, serial=str(n), lot=lot, expiry=expiry),
                DockResult.ACCEPTED,
                line=2,
            )
            for n in range(3)
        ),
    )
    return DockTransaction(
        kind=DockKind.RECEIVE,
        door=door,
        reference="ASN-1",
        items=items,
        source="portal",
        device="d03-reader",
        evidence_id=f"pass-{pallet}",
        started_at=at(when),
        occurred_at=at(when),
    )


ROUTES = InboundRoutes(Topics("DC1", "gw1"), agv=True, vda5050_interface="uagv")
REPLY = ReplyHandle("fleet/resp")


def decoded(op: str, payload: bytes, when: float) -> Event:
    """An AGV request as the bridge hands it to the rules, answered to `REPLY`."""
    message = Received(f"gw/DC1/gw1/agv/{op}", payload, False, at(when), "fleet/resp")
    event = ROUTES.decode(message, lambda _requester, _topic, _data, _echo: REPLY)
    assert event is not None
    return event


def request(op: str, when: float, **body: Any) -> Any:
    return decoded(op, json.dumps(body).encode(), when)


def progress(task_id: str, when: float, status: str, where: str | None = None) -> Any:
    """Robot r1 of fleet f1 reports a step of `task_id`."""
    return request(
        "progress", when, fleet="f1", robot="r1", task_id=task_id, status=status, location=where
    )


def answer(decisions: list[Any]) -> dict[str, Any]:
    (reply,) = [d for d in decisions if isinstance(d, Reply)]
    assert reply.to is REPLY
    payload = answer_payload(reply.answer)
    assert_valid("agv-response", payload)
    return payload


def test_a_received_pallet_gets_a_putaway_task_to_the_nearest_free_place() -> None:
    b = board()
    first = [d for d in b.on_dock(receipt(sscc("0614141", 1))) if isinstance(d, TaskChanged)]
    second = [
        d for d in b.on_dock(receipt(sscc("0614141", 2), when=1)) if isinstance(d, TaskChanged)
    ]
    # Nothing has moved yet: every product is class C; C-01 takes 2 pallets (one reserved).
    assert [(c.task.kind.value, c.task.source, c.task.destination) for c in first] == [
        ("putaway", "D03", "C-01")
    ]
    assert second[0].task.destination == "C-01"
    third = b.on_dock(receipt(sscc("0614141", 3), when=2))
    assert [d.task.destination for d in third if isinstance(d, TaskChanged)] == ["C-02"]
    # The same receipt again (a replay) makes no second task.
    assert b.on_dock(receipt(sscc("0614141", 1))) == []


def test_no_putaway_without_a_layout_an_unknown_door_or_a_free_place() -> None:
    pallet = sscc("0614141", 9)
    assert TaskBoard().on_dock(receipt(pallet)) == []
    assert board().on_dock(receipt(pallet, door="D99")) == []
    full = parse_layout(
        {**LAYOUT, "locations": [{**LAYOUT["locations"][0], "capacity_pallets": 0}]}
    )
    (notice,) = board(layout=full).on_dock(receipt(pallet))
    assert isinstance(notice, Notice)
    assert (notice.code, notice.details["reason"]) == ("putaway_no_location", "all_full")


def test_lease_report_and_drop_make_one_move() -> None:
    b = board()
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    leased = answer(b.on_request(request("next", 1, fleet="f1", robot="r1")))
    task_id = leased["task"]["task_id"]
    assert leased["task"]["lease_until"] == "2026-11-25T08:01:01.000Z"
    decisions = []
    for n, (status, where) in enumerate(
        (("accepted", None), ("picked", "D03"), ("dropped", "C-01"))
    ):
        decisions = b.on_request(progress(task_id, 2 + n, status, where))
    moves = [d for d in decisions if isinstance(d, MoveTransaction)]
    assert [(m.sscc, m.from_location, m.to_location, m.exceptions, m.task_id) for m in moves] == [
        (pallet, "D03", "C-01", (), task_id)
    ]
    assert b.stock.location_of(pallet) == "C-01"
    assert b.held_by("r1") is None
    assert answer(decisions)["task"]["state"] == "done"


def carry(b: TaskBoard, pallet: str, when: float) -> list[Any]:
    """Robot agv-7 carries `pallet` from N-DOCK-3 to C-01 from `when`: the board's decisions
    on its VDA 5050 states, one a second."""
    start = RobotSnapshot(manufacturer="acme", serial="agv-7", last_node_id="N-PARK")
    job = Transport("order-1", pallet, "N-DOCK-3", "C-01", "order-1-pick", "order-1-drop")
    decisions: list[Any] = []
    for n, (snapshot, _) in enumerate(transport_script(start, job)):
        message = state_message(snapshot, version="2.1.0", header_id=n, timestamp=at(when + n))
        where = topic("uagv", "2.1.0", "acme", "agv-7", "state")
        parsed = parse(where, json.dumps(message).encode())
        assert not hasattr(parsed, "reason"), parsed
        decisions += b.on_robot(RobotReport(parsed, at(when + n)))  # type: ignore[arg-type]
    return decisions


def test_a_robot_confirms_pick_and_drop_over_vda5050() -> None:
    b = board(observer=RobotObserver({"N-DOCK-3": "D03"}))
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    leased = answer(b.on_request(request("next", 1, fleet="f1", robot="agv-7")))
    assert leased["task"]["destination"] == "C-01"
    decisions = carry(b, pallet, when=2)
    changes = [d.event for d in decisions if isinstance(d, TaskChanged)]
    assert changes == ["picked", "done"]
    (move,) = [d for d in decisions if isinstance(d, MoveTransaction)]
    assert (move.from_location, move.to_location, move.device_id) == ("D03", "C-01", "agv-7")


def test_a_robot_that_picks_a_task_it_lost_raises_an_alarm() -> None:
    # agv-7's lease ran out before its pick was heard (its fleet controller never learned):
    # its pick of the pallet is an alarm, and the task stays in the queue for the operator.
    b = board(observer=RobotObserver({"N-DOCK-3": "D03"}))
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    leased = answer(b.on_request(request("next", 1, fleet="f1", robot="agv-7")))["task"]
    assert [d.event for d in b.on_tick(at(62)) if isinstance(d, TaskChanged)] == ["requeued"]
    decisions = carry(b, pallet, when=63)
    assert not [d for d in decisions if isinstance(d, TaskChanged | MoveTransaction)]
    alarms = [d for d in decisions if isinstance(d, Notice)]
    assert [(a.code, a.details["action"], a.location) for a in alarms] == [
        ("agv_unexpected_load", "picked", "D03"),
        ("agv_unexpected_load", "dropped", "C-01"),
    ]
    assert alarms[0].details | {"action": None} == {
        "robot": "agv-7",
        "action": None,
        "action_id": "order-1-pick",
        "sscc": pallet,
        "task_id": leased["task_id"],
        "state": "queued",
        "holder": None,
    }
    assert b.open[leased["task_id"]].state is TaskState.QUEUED
    for alarm in alarms:
        assert_valid("event", notice_payload(alarm, Topics("DC1", "dock-1")))


def test_a_robot_lost_with_its_load_that_drops_it_later_says_where() -> None:
    b = board(observer=RobotObserver({"N-DOCK-3": "D03"}))
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    task = answer(b.on_request(request("next", 1, fleet="f1", robot="agv-7")))["task"]
    report = {"fleet": "f1", "robot": "agv-7", "task_id": task["task_id"]}
    b.on_request(request("progress", 2, **report, status="picked", location="D03"))
    (failed,) = [d.task for d in b.on_tick(at(63)) if isinstance(d, TaskChanged)]
    assert (failed.state, failed.reason) == (TaskState.FAILED, "robot_lost_with_load")
    decisions = carry(b, pallet, when=100)  # the robot comes back and finishes its order
    alarms = [d for d in decisions if isinstance(d, Notice)]
    assert [(a.code, a.details["action"], a.location, a.details["state"]) for a in alarms] == [
        ("agv_unexpected_load", "picked", "D03", "failed"),
        ("agv_unexpected_load", "dropped", "C-01", "failed"),
    ]
    assert "robot_lost_with_load" in alarms[1].message
    assert not [d for d in decisions if isinstance(d, TaskChanged | MoveTransaction)]


def test_a_robots_action_from_before_the_task_is_not_an_alarm() -> None:
    # The pallet's task was created at 100; a late state with an order finished at 2 is about
    # an older order.
    b = board(observer=RobotObserver({"N-DOCK-3": "D03"}))
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet, when=100))
    assert [d for d in carry(b, pallet, when=2) if isinstance(d, Notice)] == []


def test_a_rejected_robot_message_is_an_event() -> None:
    message = Received("uagv/v2/acme/x/state", b"{}", False, T0)
    rejected = ROUTES.decode(message, lambda _topic, _correlation: None)
    engine = RulesEngine(ForkliftMoves(MoveSettings()), {}, agv=board())
    assert rejected is not None
    (notice,) = engine.on_event(rejected)
    assert isinstance(notice, Notice)
    assert notice.code == "vda5050_rejected"
    assert notice.details["topic"] == "uagv/v2/acme/x/state"


def test_leases_run_out_before_and_after_the_pick() -> None:
    b = board()
    for n in (1, 2):
        b.on_dock(receipt(sscc("0614141", n), when=n))
    t1 = answer(b.on_request(request("next", 10, fleet="f1", robot="r1")))["task"]
    t2 = answer(b.on_request(request("next", 10, fleet="f1", robot="r2")))["task"]
    b.on_request(
        request("progress", 20, fleet="f1", robot="r2", task_id=t2["task_id"], status="picked")
    )
    assert b.on_tick(at(69)) == []
    out = b.on_tick(at(71))  # r1's lease (10 + 60) ran out; r2's was renewed at 20
    assert [(d.task.task_id, d.event) for d in out if isinstance(d, TaskChanged)] == [
        (t1["task_id"], "requeued")
    ]
    out = b.on_tick(at(81))
    failed = [d for d in out if isinstance(d, TaskChanged)]
    assert [(d.task.state, d.task.reason) for d in failed] == [
        (TaskState.FAILED, "robot_lost_with_load")
    ]
    (alarm,) = [d for d in out if isinstance(d, Notice)]
    assert alarm.details["load_on_robot"] is True


def test_a_forklift_move_cancels_a_queued_putaway() -> None:
    b = board()
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    move = MoveTransaction(pallet, "D03", "A-03", "fl-07", at(5), at(6))
    out = b.on_move(move)
    assert [(d.event, d.task.reason) for d in out if isinstance(d, TaskChanged)] == [
        ("cancelled", "pallet moved to A-03 by fl-07")
    ]
    assert b.stock.location_of(pallet) == "A-03"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["next", "progress", "cancel", "tick", "receipt"]),
            st.sampled_from(["r1", "r2", "r3"]),
            st.sampled_from(["accepted", "picked", "dropped", "failed", "alive"]),
            st.integers(0, 4),
            st.sampled_from(["C-01", "C-02", "A-01", "D03"]),
        ),
        max_size=60,
    )
)
def test_random_traffic_never_gives_one_task_to_two_robots(ops: list[Any]) -> None:
    b = board()
    now = 0.0
    for op, robot, status, n, where in ops:
        now += 7
        if op == "receipt":
            b.on_dock(receipt(sscc("0614141", n), when=now))
        elif op == "tick":
            b.on_tick(at(now))
        elif op == "next":
            b.on_request(request("next", now, fleet="f", robot=robot))
        else:
            ids = sorted(b.open) or ["none"]
            task_id = ids[n % len(ids)]
            body = {
                "fleet": "f",
                "robot": robot,
                "task_id": task_id,
                "status": status,
                "location": where,
            }
            sent = request(op, now, **(body if op == "progress" else {"task_id": task_id}))
            if not isinstance(sent, Rejected):  # a drop without a location is refused unread
                b.on_request(sent)
        holders = [t.robot for t in b.open.values() if t.state is not TaskState.QUEUED]
        assert len(holders) == len(set(holders)), holders
        assert all(t.state.terminal for t in b.finished.values())


def test_a_wms_zone_longer_than_the_configs_limit_still_merges() -> None:
    # The WMS's schema allows zones up to 200 characters; the config's layout only 64. A merge
    # must take the WMS's word, not fail on every later use of the layout.
    b = board()
    zone = "Z" * 200
    b.set_locations([Location("C-01", zone=zone)])
    layout = b.layout
    assert layout is not None
    assert next(loc.zone for loc in layout.locations if loc.location == "C-01") == zone
    assert [d for d in b.on_dock(receipt(sscc("0614141", 1))) if isinstance(d, TaskChanged)]


def test_the_wms_location_master_blocks_a_location() -> None:
    b = board()
    b.set_locations([Location("C-01", capacity_pallets=0)])
    out = b.on_dock(receipt(sscc("0614141", 1)))
    assert [d.task.destination for d in out if isinstance(d, TaskChanged)] == ["C-02"]


def test_a_wms_task_for_a_product_picks_its_pallet_first_expired_first_out() -> None:
    b = board(layout=None)
    day = T0.date()
    lots = {  # pallet serial -> (lot, expiry)
        1: ("L-LATE", day + dt.timedelta(days=90)),
        2: ("L-SOON", day + dt.timedelta(days=10)),
        3: ("L-GONE", day - dt.timedelta(days=1)),
        4: ("L-NONE", None),
    }
    for n, (lot, expiry) in lots.items():
        b.on_dock(receipt(sscc("0614141", n), when=n, lot=lot, expiry=expiry))
    picks = []
    for k in range(4):
        task_id = f"W{k}"
        body = {"task_id": task_id, "gtin": GTIN, "destination": "PICK-1"}
        out = b.on_wms_task(parse_wms_task(task_id, json.dumps(body).encode(), at(10 + k)))  # type: ignore[arg-type]
        picks.append(
            [d.task.sscc for d in out if isinstance(d, TaskChanged)]
            or [d.code for d in out if isinstance(d, Notice)]
        )
    assert picks == [
        [sscc("0614141", 2)],  # the earliest expiry that may still be picked
        [sscc("0614141", 1)],
        [sscc("0614141", 4)],  # no date: last
        ["no_pallet_to_pick"],  # only the expired pallet is left: never picked
    ]
    assert b.open["W0"].source == "D03"


def lease(b: TaskBoard, robot: str, when: float, fleet: str = "f1") -> dict[str, Any]:
    return answer(b.on_request(request("next", when, fleet=fleet, robot=robot)))


def test_a_request_that_waited_behind_a_tick_is_handled_at_the_ticks_time() -> None:
    # r1's lease runs out at 70; the tick at 71 requeues the task. r2's `next` arrived at 69.9
    # but was handled after that tick: its lease starts at 71, after r1's ended, and the task's
    # times never go back.
    b = board()
    b.on_dock(receipt(sscc("0614141", 1)))
    first = lease(b, "r1", 10)["task"]
    requeued = [d for d in b.on_tick(at(71)) if isinstance(d, TaskChanged)]
    assert [d.event for d in requeued] == ["requeued"]
    second = lease(b, "r2", 69.9)["task"]
    assert second["task_id"] == first["task_id"]
    assert second["robot"] == "r2"
    assert dt.datetime.fromisoformat(second["updated_at"]) == at(71)
    assert dt.datetime.fromisoformat(second["lease_until"]) == at(131)
    assert dt.datetime.fromisoformat(first["lease_until"]) <= at(71)


def test_a_clock_set_back_does_not_hold_the_leases_still() -> None:
    # One tick an hour ahead (a clock stepped forward, then back): later times are taken as
    # they come, and leases run out on time again.
    b = board()
    b.on_dock(receipt(sscc("0614141", 1)))
    lease(b, "r1", 10)
    assert [d.event for d in b.on_tick(at(3600)) if isinstance(d, TaskChanged)] == ["requeued"]
    second = lease(b, "r2", 20)["task"]
    assert dt.datetime.fromisoformat(second["lease_until"]) == at(80)
    assert [d.event for d in b.on_tick(at(81)) if isinstance(d, TaskChanged)] == ["requeued"]


def test_robot_ids_are_told_apart_by_fleet() -> None:
    b = board()
    b.on_dock(receipt(sscc("0614141", 1)))
    b.on_dock(receipt(sscc("0614141", 2)))
    task = lease(b, "1", 1, fleet="fleet-a")["task"]
    twin = lease(b, "1", 2, fleet="fleet-b")
    assert (twin["ok"], twin["code"], twin["task"]) == (False, "robot_id_in_use", None)
    report = answer(
        b.on_request(
            request(
                "progress", 3, fleet="fleet-b", robot="1", task_id=task["task_id"], status="picked"
            )
        )
    )
    assert (report["ok"], report["code"]) == (False, "not_lease_holder")
    assert b.open[task["task_id"]].state is TaskState.LEASED


def test_a_wms_task_for_a_pallet_on_another_task_is_rejected() -> None:
    b = board()
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))  # a putaway task is open for it
    body = {"task_id": "W1", "sscc": pallet, "source": "D03", "destination": "RA-01"}
    out = b.on_wms_task(parse_wms_task("W1", json.dumps(body).encode(), at(1)))  # type: ignore[arg-type]
    assert [(n.code, n.details["open"]) for n in out if isinstance(n, Notice)] == [
        ("agv_task_rejected", next(iter(b.open)))
    ]
    assert "W1" not in b.open


def test_a_wms_task_with_both_a_pallet_and_a_product_is_refused() -> None:
    both = {"task_id": "W1", "sscc": sscc("0614141", 1), "gtin": GTIN, "destination": "X"}
    no_source = {"task_id": "W1", "sscc": sscc("0614141", 1), "destination": "X"}
    for body in (both, no_source):
        parsed = parse_wms_task("W1", json.dumps(body).encode(), T0)
        assert hasattr(parsed, "reason"), parsed


def test_repeated_reports_and_robot_states_keep_the_lease_alive() -> None:
    b = board()  # lease 60 s
    b.on_dock(receipt(sscc("0614141", 1)))
    task_id = lease(b, "r1", 0)["task"]["task_id"]
    b.on_request(request("progress", 1, fleet="f1", robot="r1", task_id=task_id, status="picked"))
    for when in (40, 80, 120):  # the same report again, each past half the lease
        b.on_request(
            request("progress", when, fleet="f1", robot="r1", task_id=task_id, status="picked")
        )
    assert b.on_tick(at(150)) == []
    assert b.open[task_id].lease_until == at(180)


def test_a_finished_action_without_the_tasks_load_confirms_nothing() -> None:
    b = board(observer=RobotObserver())
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    lease(b, "agv-7", 1)
    # An earlier order's pick and drop, still FINISHED in the robot's state (after a gateway
    # restart the observer has not seen them before): no load id names this task's pallet.
    old = Transport("order-0", "OTHER-PALLET", "N-1", "N-2", "order-0-pick", "order-0-drop")
    start = RobotSnapshot(manufacturer="acme", serial="agv-7")
    *_, (last, _) = transport_script(start, old)
    where = topic("uagv", "2.1.0", "acme", "agv-7", "state")
    message = state_message(last, version="2.1.0", header_id=1, timestamp=at(2))
    parsed = parse(where, json.dumps(message).encode())
    out = b.on_robot(RobotReport(parsed, at(2)))  # type: ignore[arg-type]
    assert not [d for d in out if isinstance(d, TaskChanged) and d.event != "renewed"]
    assert next(iter(b.open.values())).state is TaskState.LEASED


def test_leases_run_a_full_lease_after_a_restart() -> None:
    b = board()
    b.on_dock(receipt(sscc("0614141", 1)))
    lease(b, "r1", 0)
    tasks = list(b.open.values())
    restarted = board(tasks=tasks, resumed_at=at(500))
    assert [t.lease_until for t in restarted.open.values()] == [at(560)]


def test_a_shipped_pallet_leaves_the_stock_and_its_queued_task() -> None:
    b = board()
    pallet = sscc("0614141", 1)
    b.on_dock(receipt(pallet))
    shipment = replace(receipt(pallet, when=5), kind=DockKind.SHIP)
    out = b.on_dock(shipment)
    assert [(d.event, d.task.reason) for d in out if isinstance(d, TaskChanged)] == [
        ("cancelled", "pallet shipped at D03")
    ]
    assert pallet not in b.stock


def test_the_forklift_rule_learns_where_robots_and_receipts_put_pallets() -> None:
    b = board()
    engine = RulesEngine(ForkliftMoves(MoveSettings()), {}, agv=b)
    pallet = sscc("0614141", 1)
    engine._to_agv([receipt(pallet)])
    assert engine.moves.location_of(pallet) == "D03"
    task_id = lease(b, "r1", 1)["task"]["task_id"]
    for n, (status, where) in enumerate((("picked", "D03"), ("dropped", "RC-01"))):
        engine.on_event(progress(task_id, 2 + n, status, where))
    assert engine.moves.location_of(pallet) == "RC-01"


def test_fefo_works_from_lots_stored_before_a_restart() -> None:
    soon, late = sscc("0614141", 1), sscc("0614141", 2)
    day = T0.date()
    b = board(
        layout=None,
        stock=StockProjection({soon: "RA-01", late: "RA-02"}),
        lots={
            late: PalletLot(GTIN, "L-LATE", day + dt.timedelta(days=60)),
            soon: PalletLot(GTIN, "L-SOON", day + dt.timedelta(days=5)),
        },
    )
    body = {"task_id": "W1", "gtin": GTIN, "destination": "PICK-1"}
    out = b.on_wms_task(parse_wms_task("W1", json.dumps(body).encode(), at(1)))  # type: ignore[arg-type]
    assert [(d.task.sscc, d.task.source) for d in out if isinstance(d, TaskChanged)] == [
        (soon, "RA-01")
    ]


def test_velocity_classes_count_the_moves_stored_before_a_restart() -> None:
    pallet = sscc("0614141", 1)
    busy = [(GTIN, at(-60 * n)) for n in range(1, 20)]  # the product moved often lately
    b = board(moves=busy)
    out = b.on_dock(receipt(pallet))
    # A fast mover goes to the nearest A location, not to the C rows a new product gets.
    assert [d.task.destination for d in out if isinstance(d, TaskChanged)] == ["A-01"]
    assert b.lot_of(pallet) == PalletLot(GTIN, None, None)


def test_a_bad_request_names_no_reply_topic() -> None:
    # Only an MQTT 5 response topic gets a bad_request answer; a reply_to in a payload that
    # failed its checks is not trusted.
    body = {"fleet": "f", "robot": "r", "task_id": "T1", "status": "dropped", "reply_to": "x/y"}
    message = Received("gw/DC1/gw1/agv/progress", json.dumps(body).encode(), False, T0)
    asked: list[str] = []

    def reply_to(
        _requester: Requester, topic: str, _data: bytes | None, _echo: str | None
    ) -> ReplyHandle | str:
        asked.append(topic)
        return ReplyHandle(topic)

    rejected = ROUTES.decode(message, reply_to)
    assert isinstance(rejected, Rejected)
    assert rejected.reply is None
    assert asked == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "payload: not UTF-8"),
        (b'{"fleet": "f", "fleet": "g", "robot": "r"}', 'duplicate key "fleet"'),
        (b"[" * 5_000 + b"]" * 5_000, "payload: JSON nested too deeply"),
        (b" " * (MAX_REQUEST_BYTES + 1), "more than the limit of"),
        (b'{"fleet": "f", "robot": "r", "capabilities": "pallet"}', "capabilities: must be"),
    ],
)
def test_malformed_requests_are_answered_bad_request(payload: bytes, reason: str) -> None:
    engine = RulesEngine(ForkliftMoves(MoveSettings()), {}, agv=board())
    decisions = engine.on_event(decoded("next", payload, 0))
    refused = answer(decisions)
    assert (refused["ok"], refused["code"]) == (False, "bad_request")
    assert reason in refused["message"]
    (notice,) = [d for d in decisions if isinstance(d, Notice)]
    assert notice.code == "agv_request_rejected"
