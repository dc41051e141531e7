"""VDA 5050: parsing and checking robots' messages, the pick/drop observer, and simulated robots
of both versions on a private Mosquitto."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from dataclasses import replace
from importlib import resources
from typing import Any

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.domain import (
    ActionStatus,
    ConnectionState,
    LoadSource,
    MoveTransaction,
    Notice,
    RobotConnection,
    RobotId,
    RobotReport,
    RobotState,
    Task,
    TaskChanged,
    TaskKind,
    TaskState,
)
from gateway.rules.agv import TaskBoard
from gateway.rules.vda5050 import (
    ActionFailed,
    DropConfirmed,
    PickConfirmed,
    RobotEvent,
    RobotLost,
    RobotObserver,
)
from gateway.wire.vda5050 import (
    MAJOR_VERSIONS,
    Rejected,
    parse,
    parse_topic,
    subscriptions,
    validator,
)
from simulators.vda5050_robot import (
    VERSIONS,
    RobotSnapshot,
    SimAction,
    SimulatedRobot,
    Transport,
    connection_message,
    state_message,
    topic,
    transport_script,
)
from tests.json_strategies import damage, json_values
from tests.mqtt_helpers import Collector, Mosquitto

T0 = dt.datetime(2024, 3, 11, 8, 0, tzinfo=dt.UTC)
MAKER = "Acme"
SERIAL = "agv-7"
ROBOT = RobotId(MAKER, SERIAL)
LOCATIONS = {"dock-1": "DOCK-01", "rack-a": "A-01-01", "dock-2": "DOCK-02", "rack-b": "B-02-03"}
JOB = Transport("order-1", "PAL-1", "dock-1", "rack-a", "order-1-pick", "order-1-drop")


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def state_topic(version: str, serial: str = SERIAL) -> str:
    return topic("uagv", version, MAKER, serial, "state")


def connection_topic(version: str, serial: str = SERIAL) -> str:
    return topic("uagv", version, MAKER, serial, "connection")


def snapshot(**changes: Any) -> RobotSnapshot:
    return replace(RobotSnapshot(MAKER, SERIAL, last_node_id="home"), **changes)


def state_doc(
    version: str, header_id: int = 0, seconds: float = 0, **changes: Any
) -> dict[str, Any]:
    return state_message(
        snapshot(**changes),
        version=version,
        header_id=header_id,
        timestamp=T0 + dt.timedelta(seconds=seconds),
    )


def parsed_state(version: str, snap: RobotSnapshot, header_id: int, seconds: float) -> RobotState:
    message = state_message(
        snap, version=version, header_id=header_id, timestamp=T0 + dt.timedelta(seconds=seconds)
    )
    result = parse(state_topic(version, snap.serial), encode(message))
    assert isinstance(result, RobotState), result
    return result


def parsed_connection(version: str, state: Any, header_id: int, seconds: float) -> RobotConnection:
    message = connection_message(
        version=version,
        manufacturer=MAKER,
        serial=SERIAL,
        header_id=header_id,
        timestamp=T0 + dt.timedelta(seconds=seconds),
        state=state,
    )
    result = parse(connection_topic(version), encode(message))
    assert isinstance(result, RobotConnection), result
    return result


def script_states(
    version: str,
    job: Transport = JOB,
    *,
    fail_drop: bool = False,
    start: RobotSnapshot | None = None,
) -> list[RobotState]:
    """The states a simulated robot publishes for one transport, parsed, one second apart."""
    snaps = [s for s, _ in transport_script(start or snapshot(), job, fail_drop=fail_drop)]
    return [parsed_state(version, s, i, i) for i, s in enumerate(snaps)]


def feed_all(observer: RobotObserver, messages: list[Any]) -> list[RobotEvent]:
    events: list[RobotEvent] = []
    for message in messages:
        events.extend(observer.feed(message))
    return events


def official_validator(kind: str, version: str) -> Draft202012Validator:
    """The vendored official schema, read straight from the package data."""
    path = resources.files("gateway.schemas").joinpath(
        "vendor", f"vda5050-{version}", f"{kind}.schema.json"
    )
    schema = json.loads(path.read_text("utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid(kind: str, version: str, message: Any) -> None:
    errors = [e.message for e in official_validator(kind, version).iter_errors(message)]
    assert errors == [], (kind, version, errors)


# --- the vendored schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_official_schemas_are_shipped_with_their_licence(version: str) -> None:
    folder = resources.files("gateway.schemas").joinpath("vendor", f"vda5050-{version}")
    assert "Verband der Automobilindustrie" in folder.joinpath("LICENSE.txt").read_text("utf-8")
    for kind in ("state", "connection"):
        schema = json.loads(folder.joinpath(f"{kind}.schema.json").read_text("utf-8"))
        assert schema["title"] == kind
    assert version in MAJOR_VERSIONS.values()


def test_validators_are_compiled_once_with_the_draft_the_schema_names() -> None:
    assert validator("state", "3.0.0") is validator("state", "3.0.0")
    assert isinstance(validator("state", "2.1.0"), Draft202012Validator)


# --- builders and parsing ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_state_of_a_transport_is_valid_and_parses(version: str) -> None:
    snaps = [s for s, _ in transport_script(snapshot(), JOB, fail_drop=False)]
    snaps += [s for s, _ in transport_script(snaps[-1], JOB, fail_drop=True)]
    for i, snap in enumerate(snaps):
        message = state_message(snap, version=version, header_id=i, timestamp=T0)
        assert_valid("state", version, message)
        assert isinstance(parse(state_topic(version), encode(message)), RobotState)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_state_parses_into_what_the_gateway_uses(version: str) -> None:
    snap = snapshot(
        order_id="order-9",
        last_node_id="rack-a",
        driving=True,
        loads=("PAL-1", ""),  # "": a load the robot carries but has not identified
        actions=(SimAction("a-1", "drop", "FAILED", result="blocked", description="drop PAL-1"),),
    )
    state = parsed_state(version, snap, 41, 1.5)
    assert state.robot == ROBOT
    assert (state.header_id, state.version, state.order_id) == (41, version, "order-9")
    assert state.timestamp == T0 + dt.timedelta(seconds=1.5)
    assert (state.last_node_id, state.driving, state.operating_mode) == (
        "rack-a",
        True,
        "AUTOMATIC",
    )
    assert state.loads == ("PAL-1",)
    [action] = state.action_states
    assert (action.action_id, action.action_type, action.status) == ("a-1", "drop", "FAILED")
    assert (action.result, action.description) == ("blocked", "drop PAL-1")


def test_a_robot_that_does_not_report_loads_has_none() -> None:
    message = state_doc("2.1.0")
    del message["loads"]
    state = parse(state_topic("2.1.0"), encode(message))
    assert isinstance(state, RobotState)
    assert state.loads is None


@pytest.mark.parametrize(
    ("version", "given", "expected"),
    [
        ("2.1.0", "CONNECTIONBROKEN", ConnectionState.CONNECTIONBROKEN),
        ("3.0.0", "CONNECTION_BROKEN", ConnectionState.CONNECTIONBROKEN),
        ("2.1.0", "ONLINE", ConnectionState.ONLINE),
        ("3.0.0", "OFFLINE", ConnectionState.OFFLINE),
        ("3.0.0", "HIBERNATING", ConnectionState.HIBERNATING),
    ],
)
def test_connection_states_of_both_versions(
    version: str, given: str, expected: ConnectionState
) -> None:
    message = connection_message(
        version=version,
        manufacturer=MAKER,
        serial=SERIAL,
        header_id=3,
        timestamp=T0,
        state="ONLINE",
    )
    message["connectionState"] = given
    assert_valid("connection", version, message)
    result = parse(connection_topic(version), encode(message))
    assert isinstance(result, RobotConnection), result
    assert (result.robot, result.state, result.header_id) == (ROBOT, expected, 3)


def test_the_builder_spells_the_broken_connection_as_each_version_does() -> None:
    for version, text in (("2.1.0", "CONNECTIONBROKEN"), ("3.0.0", "CONNECTION_BROKEN")):
        message = connection_message(
            version=version,
            manufacturer=MAKER,
            serial=SERIAL,
            header_id=0,
            timestamp=T0,
            state="CONNECTIONBROKEN",
        )
        assert message["connectionState"] == text
        assert_valid("connection", version, message)


def test_a_2_0_robot_is_checked_with_the_2_1_schema() -> None:
    result = parse(state_topic("2.1.0"), encode(state_doc("2.1.0") | {"version": "2.0.0"}))
    assert isinstance(result, RobotState)
    assert result.version == "2.0.0"


def test_subscriptions_and_topics() -> None:
    assert subscriptions("uagv") == ("uagv/+/+/+/state", "uagv/+/+/+/connection")
    where = parse_topic("uagv/v2/Acme/agv-7/state")
    assert where is not None
    assert (where.interface, where.major, where.robot, where.kind) == ("uagv", "v2", ROBOT, "state")
    for bad in ("uagv/v2/Acme/agv-7/order", "uagv/v2/Acme/state", "uagv/v2/Acme//state",
                "uagv/v2/Acme/+/state", "a/uagv/v2/Acme/agv-7/state"):  # fmt: skip
        assert parse_topic(bad) is None


def without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != key}


def raw(doc: dict[str, Any]) -> bytes:
    return encode(doc)


V2 = state_doc("2.1.0", 5)
V3 = state_doc("3.0.0", 5)
V2_TOPIC = state_topic("2.1.0")
V3_TOPIC = state_topic("3.0.0")

MALFORMED = [
    # (name, topic, payload, what the reason must say)
    ("bad JSON", V2_TOPIC, b'{"headerId": 1,', "payload: not valid JSON"),
    ("not UTF-8", V2_TOPIC, b'{"a": "\xff"}', "payload: not UTF-8"),
    ("duplicate key", V2_TOPIC, b'{"headerId": 1, "headerId": 2}', 'duplicate key "headerId"'),
    ("NaN", V2_TOPIC, raw(V2).replace(b'"headerId": 5', b'"headerId": NaN'), "NaN is not"),
    ("infinity", V2_TOPIC, b'{"x": 1e400}', "out of range"),
    ("not an object", V2_TOPIC, b"[1, 2]", "payload: must be an object, got an array"),
    ("empty", V2_TOPIC, b"", "payload: not valid JSON"),
    ("missing headerId", V2_TOPIC, raw(without(V2, "headerId")), "headerId: required but missing"),
    ("missing headerId v3", V3_TOPIC, raw(without(V3, "headerId")), "headerId: required"),
    ("missing powerSupply v3", V3_TOPIC, raw(without(V3, "powerSupply")), "powerSupply: required"),
    ("headerId a string", V2_TOPIC, raw(V2 | {"headerId": "5"}), "headerId: must be an integer, got a string"),
    ("headerId a fraction", V3_TOPIC, raw(V3 | {"headerId": 5.5}), "headerId: must be an integer, got a number"),
    ("driving a string", V2_TOPIC, raw(V2 | {"driving": "yes"}), "driving: must be a boolean"),
    ("loads not a list", V3_TOPIC, raw(V3 | {"loads": {"loadId": "P"}}), "loads: must be an array"),
    ("action status", V2_TOPIC, raw(V2 | {"actionStates": [{"actionId": "a", "actionStatus": "DONE"}]}),
     'actionStates[0].actionStatus: "DONE" is not one of'),
    ("RETRIABLE is 3.0 only", V2_TOPIC, raw(V2 | {"actionStates": [{"actionId": "a", "actionStatus": "RETRIABLE"}]}),
     "actionStates[0].actionStatus"),
    ("timestamp without zone", V2_TOPIC, raw(V2 | {"timestamp": "2024-03-11T08:00:00"}),
     'timestamp: "2024-03-11T08:00:00" is not a valid date-time'),
    ("manufacturer mismatch", V2_TOPIC, raw(V2 | {"manufacturer": "Other"}),
     'manufacturer: "Other" does not match the topic\'s "Acme"'),
    ("serial mismatch", state_topic("3.0.0", "agv-8"), raw(V3), 'serialNumber: "agv-7" does not match the topic\'s "agv-8"'),
    ("unknown version", V2_TOPIC, raw(V2 | {"version": "4.0.0"}), 'version: "4.0.0" does not match major version v2'),
    ("2.1 message on a v3 topic", V3_TOPIC, raw(V2), "instantActionStates: required but missing"),
    ("version not semver", V2_TOPIC, raw(V2 | {"version": "2.1"}), 'version: "2.1" is not [major].[minor].[patch]'),
    ("version a number", V2_TOPIC, raw(V2 | {"version": 2}), "version: must be a string"),
    ("unknown major", "uagv/v1/Acme/agv-7/state", raw(V2), 'topic: major version "v1" is not one of v2, v3'),
    ("wrong topic", "uagv/v2/Acme/agv-7/order", raw(V2), "topic: expected {interface}/{major}"),
    ("wildcard topic", "uagv/v2/Acme/#/state", raw(V2), "topic: expected"),
    ("connection state", connection_topic("2.1.0"),
     raw(connection_message(version="2.1.0", manufacturer=MAKER, serial=SERIAL, header_id=0,
                            timestamp=T0, state="ONLINE") | {"connectionState": "CONNECTION_BROKEN"}),
     'connectionState: "CONNECTION_BROKEN" is not one of ONLINE, OFFLINE, CONNECTIONBROKEN'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "topic_name", "payload", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_messages_are_rejected_with_a_reason(
    name: str, topic_name: str, payload: bytes, reason: str
) -> None:
    result = parse(topic_name, payload)
    assert isinstance(result, Rejected), (name, result)
    assert result.topic == topic_name
    assert reason in result.reason, result.reason
    assert "\n" not in result.reason and len(result.reason) <= 300


def test_deep_and_huge_payloads_are_rejected() -> None:
    deep = parse(V2_TOPIC, b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(deep, Rejected)
    assert deep.reason == "payload: JSON nested too deeply"
    huge = parse(V2_TOPIC, b" " * (1024 * 1024 + 1))
    assert isinstance(huge, Rejected)
    assert "more than the limit" in huge.reason


# --- fuzz --------------------------------------------------------------------------------------

FUZZ_TOPICS = st.sampled_from(
    [state_topic(v) for v in VERSIONS]
    + [connection_topic(v) for v in VERSIONS]
    + ["uagv/v9/Acme/agv-7/state", "uagv/v2/Acme/agv-7", ""]
) | st.text(max_size=40)
FIELD_NAMES = sorted(set(V2) | set(V3) | {"actionId", "actionStatus", "loadId", "connectionState"})
JSON_VALUES = json_values(
    ["2024-03-11T08:00:00Z", "2.1.0", "3.0.0", MAKER, SERIAL, "FINISHED"],
    FIELD_NAMES,
    text_size=20,
    key_size=8,
    max_fields=6,
)


def never_raises(topic_name: str, payload: bytes) -> None:
    result = parse(topic_name, payload)
    assert isinstance(result, RobotState | RobotConnection | Rejected)
    if isinstance(result, Rejected):
        assert result.reason and "\n" not in result.reason


@settings(max_examples=300, deadline=None)
@given(topic_name=FUZZ_TOPICS, payload=st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(topic_name: str, payload: bytes) -> None:
    never_raises(topic_name, payload)


@settings(max_examples=300, deadline=None)
@given(topic_name=FUZZ_TOPICS, value=JSON_VALUES)
def test_parse_never_raises_on_arbitrary_json(topic_name: str, value: Any) -> None:
    never_raises(topic_name, json.dumps(value).encode())


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid state of a transport with one value somewhere in it replaced by arbitrary JSON."""
    version = draw(st.sampled_from(VERSIONS))
    snaps = [s for s, _ in transport_script(snapshot(), JOB, fail_drop=draw(st.booleans()))]
    doc = state_message(draw(st.sampled_from(snaps)), version=version, header_id=1, timestamp=T0)
    damage(draw, doc, JSON_VALUES)
    return version, doc


@settings(max_examples=300, deadline=None)
@given(damaged())
def test_damaged_states_never_raise(case: tuple[str, dict[str, Any]]) -> None:
    version, doc = case
    never_raises(state_topic(version), json.dumps(copy.deepcopy(doc)).encode())


# --- the observer ------------------------------------------------------------------------------


def confirmed(events: list[RobotEvent]) -> list[PickConfirmed | DropConfirmed]:
    """The events, all of which must be pick or drop confirmations."""
    picks_and_drops = [e for e in events if isinstance(e, PickConfirmed | DropConfirmed)]
    assert picks_and_drops == events
    return picks_and_drops


@pytest.mark.parametrize("version", VERSIONS)
def test_a_transport_confirms_one_pick_and_one_drop(version: str) -> None:
    observer = RobotObserver(LOCATIONS)
    states = script_states(version)
    picked, dropped = states[4], states[-1]
    # The robot keeps FINISHED actions in every later state, until its next order.
    last = states[-1]
    states += [replace(last, header_id=last.header_id + n, timestamp=last.timestamp + dt.timedelta(seconds=n))
               for n in range(1, 4)]  # fmt: skip
    events = confirmed(feed_all(observer, states))
    assert events == [
        PickConfirmed(
            robot=ROBOT,
            action_id="order-1-pick",
            load_id="PAL-1",
            node_id="dock-1",
            location="DOCK-01",
            location_known=True,
            at=picked.timestamp,
            load_source=LoadSource.LOADS,
            seen_before_end=True,
        ),
        DropConfirmed(
            robot=ROBOT,
            action_id="order-1-drop",
            load_id="PAL-1",
            node_id="rack-a",
            location="A-01-01",
            location_known=True,
            at=dropped.timestamp,
            load_source=LoadSource.LOADS,
            seen_before_end=True,
        ),
    ]


def test_duplicated_states_confirm_once() -> None:
    observer = RobotObserver(LOCATIONS)
    events = confirmed(feed_all(observer, [s for s in script_states("2.1.0") for _ in range(3)]))
    assert [type(e) for e in events] == [PickConfirmed, DropConfirmed]


def test_reordered_states_confirm_once() -> None:
    states = script_states("3.0.0")
    # Each pair swapped: every second message is overtaken by the one after it.
    swapped = [s for i in range(0, len(states) - 1, 2) for s in (states[i + 1], states[i])]
    swapped += states[len(swapped) :]
    observer = RobotObserver(LOCATIONS)
    events = confirmed(feed_all(observer, swapped + states))  # and then everything again
    assert [type(e) for e in events] == [PickConfirmed, DropConfirmed]
    assert [e.load_id for e in events] == ["PAL-1", "PAL-1"]


def test_states_heard_only_at_the_end_fall_back_to_the_order() -> None:
    states = script_states("2.1.0")
    observer = RobotObserver(LOCATIONS)
    observer.expect(JOB.pick_action_id, "PAL-1")
    observer.expect(JOB.drop_action_id, "PAL-1")
    # Only the last state arrives, then older ones (overtaken): both actions end in it at once.
    events = confirmed(feed_all(observer, [states[-1], *states]))
    assert [(type(e), e.load_id, e.load_source) for e in events] == [
        (PickConfirmed, "PAL-1", LoadSource.ORDER),
        (DropConfirmed, "PAL-1", LoadSource.ORDER),
    ]
    assert [e.location for e in events] == ["A-01-01", "A-01-01"]


def test_without_loads_or_order_the_load_is_unknown() -> None:
    states = [replace(s, loads=None) for s in script_states("2.1.0")]
    events = confirmed(feed_all(RobotObserver(LOCATIONS), states))
    assert [(e.load_id, e.load_source) for e in events] == [
        (None, LoadSource.UNKNOWN),
        (None, LoadSource.UNKNOWN),
    ]


def test_the_order_names_the_node_and_the_type_when_the_robot_does_not() -> None:
    states = script_states("3.0.0")
    untyped = [
        replace(s, action_states=tuple(replace(a, action_type=None) for a in s.action_states))
        for s in states
    ]
    observer = RobotObserver(LOCATIONS)
    observer.expect(JOB.pick_action_id, "PAL-1", action_type="pick", node_id="dock-2")
    observer.expect(JOB.drop_action_id, "PAL-1", action_type="drop")
    events = confirmed(feed_all(observer, untyped))
    assert [(type(e), e.node_id, e.location) for e in events] == [
        (PickConfirmed, "dock-2", "DOCK-02"),
        (DropConfirmed, "rack-a", "A-01-01"),
    ]
    # Without the order's word, an action of no known type is not followed.
    assert feed_all(RobotObserver(LOCATIONS), untyped) == []


def test_a_different_load_than_ordered_is_reported_with_the_order_s() -> None:
    observer = RobotObserver(LOCATIONS)
    observer.expect(JOB.pick_action_id, "PAL-9")
    [pick, drop] = feed_all(observer, script_states("2.1.0"))
    assert isinstance(pick, PickConfirmed)
    assert (pick.load_id, pick.load_source, pick.expected_load_id) == (
        "PAL-1",
        LoadSource.LOADS,
        "PAL-9",
    )
    assert isinstance(drop, DropConfirmed) and drop.expected_load_id is None


def test_a_load_already_on_board_is_not_the_one_picked() -> None:
    start = snapshot(loads=("PAL-0",))
    events = confirmed(feed_all(RobotObserver(LOCATIONS), script_states("3.0.0", start=start)))
    assert [e.load_id for e in events] == ["PAL-1", "PAL-1"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_failed_drop(version: str) -> None:
    observer = RobotObserver(LOCATIONS)
    events = feed_all(observer, script_states(version, fail_drop=True))
    assert [type(e) for e in events] == [PickConfirmed, ActionFailed]
    failed = events[1]
    assert isinstance(failed, ActionFailed)
    assert (failed.action_id, failed.action_type, failed.load_id) == (
        "order-1-drop",
        "drop",
        "PAL-1",
    )
    assert (failed.node_id, failed.location, failed.location_known) == ("rack-a", "A-01-01", True)
    assert failed.reason == (
        "drop position occupied; loadHandlingError: drop position at rack-a is occupied"
    )
    # The failed action stays in later states: reported once.
    last = script_states(version, fail_drop=True)[-1]
    later = replace(
        last, header_id=last.header_id + 1, timestamp=last.timestamp + dt.timedelta(seconds=5)
    )
    assert observer.feed(later) == ()


def test_an_unmapped_node_keeps_its_id_and_is_flagged() -> None:
    job = replace(JOB, to_node="floor-17")
    [pick, drop] = feed_all(RobotObserver(LOCATIONS), script_states("2.1.0", job))
    assert isinstance(pick, PickConfirmed) and pick.location_known
    assert isinstance(drop, DropConfirmed)
    assert (drop.node_id, drop.location, drop.location_known) == ("floor-17", "floor-17", False)


def test_a_second_order_confirms_again() -> None:
    observer = RobotObserver(LOCATIONS)
    first = script_states("2.1.0")
    second_job = Transport("order-2", "PAL-2", "rack-a", "dock-2", "order-2-pick", "order-2-drop")
    snaps = [s for s, _ in transport_script(snapshot(last_node_id="rack-a"), second_job)]
    second = [parsed_state("2.1.0", s, 100 + i, 100 + i) for i, s in enumerate(snaps)]
    events = confirmed(feed_all(observer, first + second))
    assert [(type(e), e.load_id, e.location) for e in events] == [
        (PickConfirmed, "PAL-1", "DOCK-01"),
        (DropConfirmed, "PAL-1", "A-01-01"),
        (PickConfirmed, "PAL-2", "A-01-01"),
        (DropConfirmed, "PAL-2", "DOCK-02"),
    ]


def test_a_restarted_robot_counts_again() -> None:
    observer = RobotObserver(LOCATIONS)
    states = script_states("3.0.0")
    feed_all(observer, states[:3])
    # The robot restarts: its headerIds begin at 0 again, its timestamps go on.
    restarted = [
        replace(s, header_id=i, timestamp=s.timestamp + dt.timedelta(hours=1))
        for i, s in enumerate(states[3:])
    ]
    assert [type(e) for e in feed_all(observer, restarted)] == [PickConfirmed, DropConfirmed]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_robot_lost_is_reported_once_per_loss(version: str) -> None:
    observer = RobotObserver(LOCATIONS)
    online = parsed_connection(version, "ONLINE", 0, 0)
    will = parsed_connection(version, "CONNECTIONBROKEN", 1, 0)  # set at connect: same time
    assert observer.feed(online) == ()
    assert not observer.is_lost(ROBOT)
    assert observer.feed(will) == (
        RobotLost(ROBOT, ConnectionState.CONNECTIONBROKEN, will.timestamp),
    )
    assert observer.is_lost(ROBOT)
    assert observer.feed(will) == ()  # redelivered (it is retained)
    assert observer.feed(online) == ()  # overtaken: older than the will
    assert observer.is_lost(ROBOT)
    back = parsed_connection(version, "ONLINE", 2, 60)
    offline = parsed_connection(version, "OFFLINE", 3, 90)
    assert observer.feed(back) == ()
    assert not observer.is_lost(ROBOT)
    assert observer.feed(offline) == (RobotLost(ROBOT, ConnectionState.OFFLINE, offline.timestamp),)


def test_memory_is_bounded() -> None:
    observer = RobotObserver(LOCATIONS, max_done_actions=2, max_robots=2, max_expected=2)
    for n in range(3):
        observer.feed(replace(script_states("2.1.0")[0], serial=f"agv-{n}"))
    assert observer.robots == (RobotId(MAKER, "agv-1"), RobotId(MAKER, "agv-2"))
    observer.expect("a", "PAL-A")
    observer.expect("b", "PAL-B")
    observer.expect("c", "PAL-C")  # "a" is forgotten
    action = SimAction("a", "pick", "FINISHED")
    state = parsed_state("2.1.0", snapshot(serial="agv-9", loads=(), actions=(action,)), 0, 0)
    [pick] = observer.feed(state)
    assert isinstance(pick, PickConfirmed)
    assert (pick.load_id, pick.load_source) == (None, LoadSource.UNKNOWN)

    # Done actions the robot still reports are all kept; of the others, only the last two.
    def finished(prefix: str, header_id: int) -> RobotState:
        actions = tuple(SimAction(f"{prefix}{i}", "pick", "FINISHED") for i in range(3))
        robot = snapshot(serial="agv-9", loads=(), actions=actions)
        return parsed_state("2.1.0", robot, header_id, header_id)

    assert len(observer.feed(finished("x", 1))) == 3
    assert len(observer.feed(finished("x", 2))) == 0
    assert len(observer.feed(finished("y", 3))) == 3  # the next order: x0..x2 are forgotten
    assert len(observer.feed(finished("y", 4))) == 0
    assert len(observer.feed(finished("x", 5))) == 3
    with pytest.raises(ValueError, match="max_robots"):
        RobotObserver(max_robots=0)


# --- robots that report no load ids: the task board takes the load from the robot's task ------

PALLET = "PAL-1"


def held_task(
    robot: str = SERIAL, state: TaskState = TaskState.LEASED, source: str = "DOCK-01"
) -> Task:
    """A task for PALLET from `source` to A-01-01 (rack-a), leased to `robot`."""
    return Task(
        task_id="T1",
        kind=TaskKind.MOVE,
        sscc=PALLET,
        source=source,
        destination="A-01-01",
        priority=0,
        created_at=T0 - dt.timedelta(minutes=1),
        updated_at=T0 - dt.timedelta(minutes=1),
        state=state,
        robot=robot,
        fleet="f1",
        lease_until=T0 + dt.timedelta(minutes=1),
    )


def anonymous_states(
    version: str, job: Transport = JOB, *, how: str = "no-loadId", fail_drop: bool = False
) -> list[RobotState]:
    """A transport's states, parsed, of a robot that lists its loads without `loadId` or leaves
    `loads` out."""
    snaps = [s for s, _ in transport_script(snapshot(), job, fail_drop=fail_drop)]
    states = []
    for n, snap in enumerate(snaps):
        message = state_message(
            snap,
            version=version,
            header_id=n,
            timestamp=T0 + dt.timedelta(seconds=n),
            load_ids=False,
        )
        if how == "omitted":
            del message["loads"]
        else:
            assert all("loadId" not in load for load in message["loads"])
            assert_valid("state", version, message)
        state = parse(state_topic(version), encode(message))
        assert isinstance(state, RobotState), state
        states.append(state)
    return states


def run_board(board: TaskBoard, states: list[RobotState]) -> list[object]:
    decisions: list[object] = []
    for state in states:
        decisions += board.on_robot(RobotReport(state, state.timestamp))
    return decisions


def task_events(decisions: list[object]) -> list[str]:
    return [d.event for d in decisions if isinstance(d, TaskChanged) and d.event != "renewed"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("how", ["no-loadId", "omitted"])
def test_without_load_ids_the_held_task_s_pick_and_drop_are_confirmed(
    version: str, how: str
) -> None:
    states = anonymous_states(version, how=how)
    assert {s.loads for s in states} == ({()} if how == "no-loadId" else {None})
    board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=[held_task()])
    decisions = run_board(board, states)
    assert task_events(decisions) == ["picked", "done"]
    [move] = [d for d in decisions if isinstance(d, MoveTransaction)]
    assert (move.sscc, move.from_location, move.to_location, move.exceptions) == (
        PALLET,
        "DOCK-01",
        "A-01-01",
        (),
    )
    assert move.device_id == SERIAL and move.task_id == "T1"
    done = board.task("T1")
    assert done is not None and done.state is TaskState.DONE


def test_without_load_ids_a_robot_holding_no_task_confirms_nothing() -> None:
    for tasks in ([], [held_task(robot="agv-other")]):
        board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=tasks)
        decisions = run_board(board, anonymous_states("2.1.0"))
        assert decisions == []  # no task change, no move, no alarm
        assert [t.state for t in board.open.values()] == [t.state for t in tasks]


def test_without_load_ids_a_drop_elsewhere_is_confirmed_with_wrong_location() -> None:
    job = Transport("order-1", PALLET, "dock-1", "rack-b", "order-1-pick", "order-1-drop")
    board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=[held_task()])
    decisions = run_board(board, anonymous_states("3.0.0", job))
    assert task_events(decisions) == ["picked", "done"]
    [move] = [d for d in decisions if isinstance(d, MoveTransaction)]
    assert (move.to_location, move.exceptions) == ("B-02-03", ("wrong_location",))
    [alarm] = [d for d in decisions if isinstance(d, Notice)]
    assert alarm.code == "agv_drop_exception" and alarm.location == "B-02-03"


def test_without_load_ids_a_pick_elsewhere_than_the_source_is_not_the_task_s() -> None:
    # The robot picks at dock-2, the task's pallet waits at dock-1: whatever it took, it is not
    # known to be this pallet; its drop then does not finish the task either.
    job = Transport("order-1", PALLET, "dock-2", "rack-a", "order-1-pick", "order-1-drop")
    board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=[held_task()])
    decisions = run_board(board, anonymous_states("2.1.0", job))
    assert task_events(decisions) == []
    assert board.open["T1"].state is TaskState.LEASED


def test_without_load_ids_actions_not_seen_before_their_end_confirm_nothing() -> None:
    # After a gateway restart the robot's state still lists an earlier order's pick and drop,
    # FINISHED: the observer never saw them run, so they are not taken as the held task's.
    *_, last = anonymous_states("2.1.0")
    events = confirmed(list(RobotObserver(LOCATIONS).feed(last)))
    assert [(type(e), e.load_id, e.seen_before_end) for e in events] == [
        (PickConfirmed, None, False),
        (DropConfirmed, None, False),
    ]
    board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=[held_task()])
    assert task_events(run_board(board, [last])) == []
    assert board.open["T1"].state is TaskState.LEASED


def test_without_load_ids_a_failed_drop_fails_the_held_task() -> None:
    board = TaskBoard(observer=RobotObserver(LOCATIONS), tasks=[held_task()])
    decisions = run_board(board, anonymous_states("2.1.0", fail_drop=True))
    assert task_events(decisions) == ["picked", "failed"]
    failed = board.task("T1")
    assert failed is not None and failed.reason is not None
    assert failed.reason.startswith("drop failed at A-01-01")


def test_action_statuses_cover_both_versions() -> None:
    for version in VERSIONS:
        schema = official_validator("state", version).schema
        text = json.dumps(schema)
        for status in ActionStatus:
            if status is ActionStatus.RETRIABLE or status is ActionStatus.PAUSED:
                continue  # 3.0 only (PAUSED is described but not listed in 2.1)
            assert f'"{status}"' in text


# --- simulated robots on a real broker ---------------------------------------------------------


@pytest.mark.broker
async def test_simulated_robots_of_both_versions_on_a_broker(mosquitto: Mosquitto) -> None:
    fast: dict[str, Any] = {"port": mosquitto.port, "state_interval_s": 0.1, "step_s": 0.05}
    async with Collector(mosquitto.port, topic="uagv/#", client_id="vda-collector") as collector:
        async with (
            SimulatedRobot(version="2.1.0", manufacturer=MAKER, serial="agv-21", start_node="home", **fast) as v2,
            SimulatedRobot(version="3.0.0", manufacturer=MAKER, serial="agv-30", duplicate=True, **fast) as v3,
        ):  # fmt: skip
            jobs = await asyncio.gather(
                v2.transport("PAL-21", "dock-1", "rack-a"),
                v3.transport("PAL-30", "dock-2", "rack-b", order_id="o-30"),
            )
            await asyncio.sleep(0.3)  # a few heartbeats repeating the finished actions

        def finished(c: Collector) -> bool:
            offline = [m for m in c.on("/connection") if b'"OFFLINE"' in m.payload]
            return len(offline) == 2

        await collector.wait_for(finished)

    assert jobs[1].drop_action_id == "o-30-drop"
    states = collector.on("/state")
    assert {m.topic for m in states} == {v2.topic("state"), v3.topic("state")}
    assert {m.topic for m in collector.on("/connection")} == {
        v2.topic("connection"),
        v3.topic("connection"),
    }
    # Every message validates against the official schema of its version.
    for message in collector.messages:
        where = parse_topic(message.topic)
        assert where is not None
        assert_valid(where.kind, MAJOR_VERSIONS[where.major], message.json())
    # headerIds count up by one per topic (the duplicating robot sends each one twice).
    for robot, copies in ((v2, 1), (v3, 2)):
        ids = [m.json()["headerId"] for m in states if m.topic == robot.topic("state")]
        assert ids == [i for i in range(len(ids) // copies) for _ in range(copies)]

    observer = RobotObserver(LOCATIONS)
    events: list[RobotEvent] = []
    for message in collector.messages:
        result = parse(message.topic, message.payload)
        assert not isinstance(result, Rejected), result
        events.extend(observer.feed(result))
    by_robot = {
        serial: [e for e in events if e.robot == RobotId(MAKER, serial)]
        for serial in ("agv-21", "agv-30")
    }
    for (serial, load, pick_at, drop_at), job in zip(
        [("agv-21", "PAL-21", "DOCK-01", "A-01-01"), ("agv-30", "PAL-30", "DOCK-02", "B-02-03")], jobs, strict=True
    ):  # fmt: skip
        pick, drop, lost = by_robot[serial]
        assert isinstance(pick, PickConfirmed) and isinstance(drop, DropConfirmed)
        assert (pick.action_id, pick.load_id, pick.location, pick.load_source) == (
            job.pick_action_id,
            load,
            pick_at,
            LoadSource.LOADS,
        )
        assert (drop.action_id, drop.load_id, drop.location, drop.load_source) == (
            job.drop_action_id,
            load,
            drop_at,
            LoadSource.LOADS,
        )
        assert lost == RobotLost(RobotId(MAKER, serial), ConnectionState.OFFLINE, lost.at)  # fmt: skip


@pytest.mark.broker
@pytest.mark.parametrize("version", VERSIONS)
async def test_a_silent_robot_is_lost_through_its_last_will(
    mosquitto: Mosquitto, version: str
) -> None:
    observer = RobotObserver(LOCATIONS)
    async with (
        Collector(mosquitto.port, topic="uagv/#", client_id="vda-collector") as collector,
        SimulatedRobot(
            port=mosquitto.port, version=version, manufacturer=MAKER, serial=SERIAL,
            state_interval_s=0.05, step_s=0.01,
        ) as robot,
    ):  # fmt: skip
        await collector.wait_for(lambda c: len(c.on("/state")) >= 3)
        await robot.go_silent()
        await collector.wait_for(lambda c: len(c.on("/connection")) == 2)
        heard = len(collector.on("/state"))
        await robot.transport("PAL-1", "dock-1", "rack-a")  # nobody hears it
        await asyncio.sleep(0.2)
        assert len(collector.on("/state")) == heard

    online, will = collector.on("/connection")
    assert online.json()["connectionState"] == "ONLINE"
    assert will.json()["connectionState"] == (
        "CONNECTION_BROKEN" if version == "3.0.0" else "CONNECTIONBROKEN"
    )
    events: list[RobotEvent] = []
    for message in collector.messages:
        where = parse_topic(message.topic)
        assert where is not None
        assert_valid(where.kind, version, message.json())
        result = parse(message.topic, message.payload)
        assert isinstance(result, RobotState | RobotConnection), result
        events.extend(observer.feed(result))
    assert events == [RobotLost(ROBOT, ConnectionState.CONNECTIONBROKEN, events[0].at)]
    assert observer.is_lost(ROBOT)
    # The will is retained: whoever subscribes later learns that the robot is gone.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as late:
        await late.subscribe(robot.topic("connection"), qos=1)
        async with asyncio.timeout(5):
            retained = await anext(aiter(late.messages))
    assert retained.retain
    assert retained.payload == will.payload
