"""A VDA 5050 robot (AGV) on a real MQTT broker, scriptable for tests and the demo.

The robot speaks VDA 5050 2.1.0 or 3.0.0 over MQTT 5 with aiomqtt, as a vehicle does:

- on connect it publishes `connection` ONLINE, retained, at QoS 1, having set the last will the
  standard prescribes: the same topic, retained, with CONNECTIONBROKEN (3.0 spells it
  CONNECTION_BROKEN). Leaving in order publishes OFFLINE before disconnecting;
- it publishes `state` (QoS 0) on every change and every `state_interval_s` in between, with
  `headerId` counting up per topic and every field its version's schema requires.

`transport(load_id, from_node, to_node)` runs one order: drive to `from_node`, a `pick` action
(WAITING -> RUNNING -> FINISHED, the load appears in `loads`), drive to `to_node`, a `drop`
action (the load leaves `loads`). Each step takes `step_s`. Faults: `fail_drop=True` (the drop
ends FAILED with an error naming the action, the load stays on board), `duplicate=True` (every
state is sent twice) and `go_silent()` (publishing stops and the network connection is cut
without an MQTT DISCONNECT, so the broker publishes the last will). With `report_load_ids=False`
the robot lists its loads without `loadId` (optional in both versions), as robots that cannot
identify what they carry do.

The message builders (`state_message`, `connection_message`, `topic`) and the states of a
transport (`transport_script`) are pure functions, for tests that need valid messages without a
broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Literal, Self

import aiomqtt

__all__ = [
    "VERSIONS",
    "RobotSnapshot",
    "SimAction",
    "SimError",
    "SimulatedRobot",
    "Transport",
    "connection_message",
    "state_message",
    "timestamp_text",
    "topic",
    "transport_script",
]

VERSIONS: Final = ("2.1.0", "3.0.0")
"""The VDA 5050 versions the robot can speak."""

ConnectionText = Literal["ONLINE", "OFFLINE", "CONNECTIONBROKEN"]

_LOAD_TYPE: Final = "EUR-pallet"
_DISCONNECT_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class SimAction:
    """One action state of the robot."""

    action_id: str
    action_type: str
    status: str = "WAITING"
    result: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class SimError:
    """One active error; `action_id` becomes an errorReference."""

    error_type: str
    level: str = "WARNING"
    description: str | None = None
    action_id: str | None = None


@dataclass(frozen=True, slots=True)
class RobotSnapshot:
    """Everything a state message tells, apart from the header's counter and time."""

    manufacturer: str
    serial: str
    order_id: str = ""
    order_update_id: int = 0
    last_node_id: str = ""
    last_node_sequence_id: int = 0
    driving: bool = False
    node_states: tuple[tuple[str, int], ...] = ()  # (nodeId, sequenceId) still to traverse
    edge_states: tuple[tuple[str, int], ...] = ()  # (edgeId, sequenceId)
    actions: tuple[SimAction, ...] = ()
    loads: tuple[str, ...] = ()  # load ids on board
    errors: tuple[SimError, ...] = ()
    battery_charge: float = 80.0
    operating_mode: str = "AUTOMATIC"


@dataclass(frozen=True, slots=True)
class Transport:
    """One transport order the robot ran, and the ids it reported it under."""

    order_id: str
    load_id: str
    from_node: str
    to_node: str
    pick_action_id: str
    drop_action_id: str


def topic(interface: str, version: str, manufacturer: str, serial: str, kind: str) -> str:
    """`{interface}/v{major}/{manufacturer}/{serialNumber}/{kind}`."""
    return f"{interface}/v{_major(version)}/{manufacturer}/{serial}/{kind}"


def timestamp_text(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as VDA 5050 writes it: 2024-03-11T11:40:03.123Z."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def connection_message(
    *,
    version: str,
    manufacturer: str,
    serial: str,
    header_id: int,
    timestamp: dt.datetime,
    state: ConnectionText,
) -> dict[str, Any]:
    """A `connection` message of `version` (CONNECTIONBROKEN is CONNECTION_BROKEN in 3.0)."""
    text = "CONNECTION_BROKEN" if state == "CONNECTIONBROKEN" and _major(version) >= 3 else state
    return {
        **_header(version, manufacturer, serial, header_id, timestamp),
        "connectionState": text,
    }


def state_message(
    snapshot: RobotSnapshot,
    *,
    version: str,
    header_id: int,
    timestamp: dt.datetime,
    load_ids: bool = True,
) -> dict[str, Any]:
    """A `state` message of `version` with every field its schema requires; `load_ids` False:
    the loads on board are listed without their `loadId`."""
    v3 = _major(version) >= 3
    message: dict[str, Any] = {
        **_header(version, snapshot.manufacturer, snapshot.serial, header_id, timestamp),
        "orderId": snapshot.order_id,
        "orderUpdateId": snapshot.order_update_id,
        "lastNodeId": snapshot.last_node_id,
        "lastNodeSequenceId": snapshot.last_node_sequence_id,
        "nodeStates": [
            {"nodeId": node, "sequenceId": seq, "released": True}
            for node, seq in snapshot.node_states
        ],
        "edgeStates": [
            {"edgeId": edge, "sequenceId": seq, "released": True}
            for edge, seq in snapshot.edge_states
        ],
        "driving": snapshot.driving,
        "paused": False,
        "operatingMode": snapshot.operating_mode,
        "loads": [
            {"loadId": load, "loadType": _LOAD_TYPE} if load_ids else {"loadType": _LOAD_TYPE}
            for load in snapshot.loads
        ],
        "actionStates": [_action(action, v3=v3) for action in snapshot.actions],
        "errors": [_error(error) for error in snapshot.errors],
        "information": [],
    }
    if v3:
        message["instantActionStates"] = []
        message["powerSupply"] = {"stateOfCharge": snapshot.battery_charge, "charging": False}
        message["safetyState"] = {"activeEmergencyStop": "NONE", "fieldViolation": False}
    else:
        message["batteryState"] = {"batteryCharge": snapshot.battery_charge, "charging": False}
        message["safetyState"] = {"eStop": "NONE", "fieldViolation": False}
    return message


def transport_script(
    start: RobotSnapshot, job: Transport, *, fail_drop: bool = False
) -> Iterator[tuple[RobotSnapshot, bool]]:
    """The states a robot reports while it runs `job`, in order, from `start`.

    Each comes with whether a step's time passes before the next one (driving, lifting,
    setting down). The robot drives to `from_node` if it is elsewhere, picks (WAITING ->
    RUNNING -> FINISHED, the load appears in `loads` when it is lifted), drives to `to_node`,
    and drops (the load leaves `loads`), or fails the drop (FAILED, an error naming the action,
    the load stays on board).
    """
    pick, drop = job.pick_action_id, job.drop_action_id
    # A new order replaces the previous one's action states and clears its errors.
    state = replace(
        start,
        order_id=job.order_id,
        order_update_id=0,
        node_states=((job.from_node, 0), (job.to_node, 2)),
        edge_states=((f"{job.from_node}-{job.to_node}", 1),),
        actions=(
            SimAction(pick, "pick", description=f"pick {job.load_id}"),
            SimAction(drop, "drop", description=f"drop {job.load_id}"),
        ),
        errors=(),
    )
    yield state, False
    if state.last_node_id != job.from_node:
        state = replace(state, driving=True)
        yield state, True
    state = replace(
        state,
        driving=False,
        last_node_id=job.from_node,
        last_node_sequence_id=0,
        node_states=((job.to_node, 2),),
    )
    yield state, False
    state = _with_action(state, pick, "RUNNING")
    yield state, True
    state = _with_action(state, pick, "FINISHED", loads=(*state.loads, job.load_id))
    yield state, False
    state = replace(state, driving=True)
    yield state, True
    state = replace(
        state,
        driving=False,
        last_node_id=job.to_node,
        last_node_sequence_id=2,
        node_states=(),
        edge_states=(),
    )
    yield state, False
    state = _with_action(state, drop, "RUNNING")
    yield state, True
    if fail_drop:
        error = SimError(
            "loadHandlingError",
            description=f"drop position at {job.to_node} is occupied",
            action_id=drop,
        )
        state = _with_action(
            state, drop, "FAILED", result="drop position occupied", errors=(*state.errors, error)
        )
    else:
        loads = tuple(x for x in state.loads if x != job.load_id)
        state = _with_action(state, drop, "FINISHED", loads=loads)
    yield state, False


def _with_action(
    state: RobotSnapshot, action_id: str, status: str, *, result: str | None = None, **changes: Any
) -> RobotSnapshot:
    actions = tuple(
        replace(a, status=status, result=result or a.result) if a.action_id == action_id else a
        for a in state.actions
    )
    return replace(state, actions=actions, **changes)


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _header(
    version: str, manufacturer: str, serial: str, header_id: int, timestamp: dt.datetime
) -> dict[str, Any]:
    return {
        "headerId": header_id,
        "timestamp": timestamp_text(timestamp),
        "version": version,
        "manufacturer": manufacturer,
        "serialNumber": serial,
    }


def _action(action: SimAction, *, v3: bool) -> dict[str, Any]:
    # 3.0 renamed actionDescription to actionDescriptor and resultDescription to actionResult.
    entry: dict[str, Any] = {
        "actionId": action.action_id,
        "actionType": action.action_type,
        "actionStatus": action.status,
    }
    if action.description is not None:
        entry["actionDescriptor" if v3 else "actionDescription"] = action.description
    if action.result is not None:
        entry["actionResult" if v3 else "resultDescription"] = action.result
    return entry


def _error(error: SimError) -> dict[str, Any]:
    entry: dict[str, Any] = {"errorType": error.error_type, "errorLevel": error.level}
    if error.description is not None:
        entry["errorDescription"] = error.description
    if error.action_id is not None:
        entry["errorReferences"] = [{"referenceKey": "actionId", "referenceValue": error.action_id}]
    return entry


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SimulatedRobot:
    """A VDA 5050 vehicle connected to an MQTT broker; use it as an async context manager.

    Args:
        host: the broker's address.
        port: the broker's port.
        version: "2.1.0" or "3.0.0".
        interface: the first topic level ("uagv" in the standard's examples).
        manufacturer: the header's and topic's manufacturer.
        serial: the header's and topic's serial number.
        start_node: the node the robot stands on at start.
        state_interval_s: a state is published at least this often.
        step_s: how long each step of a transport takes (driving, lifting, setting down).
        duplicate: send every state message twice (a duplicating network or bridge).
        report_load_ids: False: the loads on board are listed without `loadId`.
        clock: aware wall-clock time for the timestamps.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        version: str = "2.1.0",
        interface: str = "uagv",
        manufacturer: str = "SimBots",
        serial: str = "agv-001",
        start_node: str = "home",
        state_interval_s: float = 1.0,
        step_s: float = 0.5,
        duplicate: bool = False,
        report_load_ids: bool = True,
        clock: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        if state_interval_s <= 0 or step_s < 0:
            raise ValueError("state_interval_s must be positive and step_s not negative")
        self.version = version
        self.interface = interface
        self.duplicate = duplicate
        self.report_load_ids = report_load_ids
        self._host = host
        self._port = port
        self._state_interval_s = state_interval_s
        self._step_s = step_s
        self._clock = clock
        self._snapshot = RobotSnapshot(manufacturer, serial, last_node_id=start_node)
        self._state_header = 0
        self._connection_header = 0
        self._orders = 0
        self._silent = False
        self._lock = asyncio.Lock()
        self._client: aiomqtt.Client | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._beat_stop = asyncio.Event()

    @property
    def snapshot(self) -> RobotSnapshot:
        """What the robot's next state message will say."""
        return self._snapshot

    @property
    def silent(self) -> bool:
        """Whether `go_silent` was called: nothing is published any more."""
        return self._silent

    def topic(self, kind: str) -> str:
        """This robot's topic for `kind` ("state", "connection", "order", ...)."""
        s = self._snapshot
        return topic(self.interface, self.version, s.manufacturer, s.serial, kind)

    async def __aenter__(self) -> Self:
        # The will is fixed at connect time: it carries the connection headerId after ONLINE's,
        # and ONLINE's timestamp, so a retained ONLINE delivered late is never newer than it.
        now = self._clock()
        will = self._connection_payload("CONNECTIONBROKEN", self._connection_header + 1, now)
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=f"{self._snapshot.manufacturer}-{self._snapshot.serial}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.topic("connection"), will, qos=1, retain=True),
            timeout=10,
        )
        await client.__aenter__()
        self._client = client
        online = self._connection_payload("ONLINE", self._connection_header, now)
        self._connection_header += 2  # the will took the next one
        try:
            await client.publish(self.topic("connection"), online, qos=1, retain=True)
            await self._publish_state()
        except BaseException:
            self._client = None
            await client.__aexit__(None, None, None)
            raise
        self._beat_stop = asyncio.Event()
        self._heartbeat = asyncio.get_running_loop().create_task(
            self._beat(), name=f"vda5050-robot[{self._snapshot.serial}].state"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_heartbeat()
        client, self._client = self._client, None
        if client is None:
            return
        if not self._silent:
            # An orderly goodbye: OFFLINE replaces the retained ONLINE; the will is discarded.
            offline = self._connection_payload("OFFLINE", self._connection_header, self._clock())
            self._connection_header += 1
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topic("connection"), offline, qos=1, retain=True)
        await client.__aexit__(exc_type, exc, tb)

    # --- the script --------------------------------------------------------------------------

    async def transport(
        self,
        load_id: str,
        from_node: str,
        to_node: str,
        *,
        fail_drop: bool = False,
        order_id: str | None = None,
    ) -> Transport:
        """Run one order: pick `load_id` at `from_node`, drop it at `to_node`.

        Action ids are `{order_id}-pick` and `{order_id}-drop`; `order_id` defaults to
        `{serial}-order-{n}`. Returns when the drop has ended (FINISHED, or FAILED if
        `fail_drop`). The states are those of `transport_script`, each published as it is
        reached, with `step_s` between the steps that take time.
        """
        self._orders += 1
        order = order_id or f"{self._snapshot.serial}-order-{self._orders}"
        job = Transport(order, load_id, from_node, to_node, f"{order}-pick", f"{order}-drop")
        for snapshot, takes_time in transport_script(self._snapshot, job, fail_drop=fail_drop):
            self._snapshot = snapshot
            await self._publish_state()
            if takes_time:
                await asyncio.sleep(self._step_s)
        return job

    async def go_silent(self) -> None:
        """Stop publishing and cut the network connection without an MQTT DISCONNECT.

        The broker sees the connection drop and publishes the robot's last will
        (CONNECTIONBROKEN). The robot keeps its state; nothing it does later is published.
        """
        self._silent = True
        await self._stop_heartbeat()
        client = self._client
        if client is None:
            return
        # aiomqtt has no public way to drop a connection abruptly: shut paho's socket down, as
        # a WLAN dropout would. The broker reads end-of-stream and sends the will at once.
        sock = client._client.socket()
        if isinstance(sock, socket.socket):  # TCP; an SSL socket is one too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        # Wait until the client noticed; iterating its messages collects the disconnection.
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(_DISCONNECT_TIMEOUT_S):
                async for _ in client.messages:
                    pass

    # --- internals ---------------------------------------------------------------------------

    async def _beat(self) -> None:
        # A lost connection ends the heartbeat quietly; the script's next publish raises.
        # The loop also watches `_beat_stop`: aiomqtt waits for a publish with
        # `asyncio.wait_for`, which on Python 3.11 can swallow the cancellation that stops
        # the heartbeat, and the robot would then never stop publishing.
        with contextlib.suppress(aiomqtt.MqttError):
            while not self._beat_stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._state_interval_s):
                        await self._beat_stop.wait()
                if self._beat_stop.is_set():
                    return
                await self._publish_state()

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        self._beat_stop.set()
        if task is None:
            return
        # A state being published is finished first (both copies, on a duplicating robot):
        # the loop then sees the stop. Cancelled only if the publish hangs.
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_TIMEOUT_S)
        if not done:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _publish_state(self) -> None:
        async with self._lock:
            client = self._client
            if client is None or self._silent:
                return
            message = state_message(
                self._snapshot,
                version=self.version,
                header_id=self._state_header,
                timestamp=self._clock(),
                load_ids=self.report_load_ids,
            )
            self._state_header += 1
            payload = json.dumps(message).encode()
            for _ in range(2 if self.duplicate else 1):
                await client.publish(self.topic("state"), payload, qos=0)

    def _connection_payload(
        self, state: ConnectionText, header_id: int, moment: dt.datetime
    ) -> bytes:
        s = self._snapshot
        message = connection_message(
            version=self.version,
            manufacturer=s.manufacturer,
            serial=s.serial,
            header_id=header_id,
            timestamp=moment,
            state=state,
        )
        return json.dumps(message).encode()


if __name__ == "__main__":
    from simulators.agv_cli import robot_main

    raise SystemExit(robot_main())
