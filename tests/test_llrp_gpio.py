"""Reader GPIO (#16): a presence sensor on a GPI port gates an LLRP reader's reading at a door,
and a GPO port follows the door's alarms. The door gate's table, the config, then real TCP
against the reader simulator: the driver alone, the gateway with a private Mosquitto, and a
bare LLRP client for the simulator's own GPI triggers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sllurp.llrp import LLRPMessage

from gateway.config import ConfigError, LlrpReaderDevice
from gateway.domain.epc import encode_sscc96
from gateway.drivers import llrp_gpio
from gateway.drivers.llrp import LlrpReader
from gateway.drivers.llrp_gpio import TRANSITIONS, DoorGate, DoorState, GateEvent
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.inbox import Inbox
from gateway.supervisor import Backoff, supervise
from simulators.llrp import GpiChange, LlrpReaderSimulator, Pallet, PortalRadio, Scenario, StrayTag
from simulators.llrp.codec import (
    Frame,
    FrameDecoder,
    MessageType,
    ParamType,
    decode_tag_reports,
    encode_frame,
    split_params,
    tlv,
)
from tests.dock_helpers import CP, cases, gtin, sscc
from tests.gateway_helpers import (
    assert_valid,
    build,
    running,
    site_config,
    wait_device,
    wait_reference_data,
)
from tests.mqtt_helpers import Collector, Mosquitto
from tests.test_llrp_driver import device, now
from tests.time_helpers import SPEED, AcceleratedClock

STRAYS = [encode_sscc96(CP, f"90000000{n:02d}") for n in range(3)]
# How late a switch may come on a busy machine: a GPI edge or an alarm, through the driver's
# loop and a request, to the simulator.
SLACK_S = 0.4


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    """Wait for `predicate`; the monotonic time it came true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
    return time.monotonic()


@contextlib.asynccontextmanager
async def supervised(config: LlrpReaderDevice) -> AsyncIterator[tuple[LlrpReader, DeviceHealth]]:
    health = StatusBoard(now).add(config.id, "llrp_reader")
    reader = LlrpReader(config, sink=Inbox(maxsize=100_000), health=health, clock=now)
    task = asyncio.create_task(supervise(reader.run, health, Backoff(0.05, 0.2)))
    try:
        yield reader, health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()  # it never ended by itself: no crash


# -- the door gate ------------------------------------------------------------------------------


def test_the_door_gates_docstring_table_is_the_table_the_code_uses() -> None:
    assert llrp_gpio.__doc__ is not None
    rows = {}
    for line in llrp_gpio.__doc__.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in {s.value for s in DoorState}:
            rows[DoorState(cells[0]), GateEvent(cells[1])] = DoorState(cells[2])
    assert rows == TRANSITIONS
    assert len(rows) == len(DoorState) * len(GateEvent)


def test_the_gate_holds_after_the_sensor_clears_and_a_return_calls_the_hold_off() -> None:
    gate = DoorGate(active=False, hold_s=2.0)  # a light barrier: low while interrupted
    assert not gate.reading and gate.state is DoorState.UNKNOWN
    gate.level(True, 0.0)
    assert gate.state is DoorState.IDLE
    gate.level(False, 1.0)
    assert gate.reading and gate.hold_until is None
    gate.level(True, 3.0)  # cleared: reading goes on for hold_s
    assert gate.reading and gate.hold_until == 5.0
    gate.tick(4.9)
    gate.level(False, 4.9)  # back before the hold ran out: it never stopped
    gate.tick(5.1)
    assert gate.state is DoorState.READING and gate.hold_until is None
    gate.level(True, 6.0)
    gate.level(True, 7.0)  # the same level again does not move the hold on
    gate.tick(7.99)
    assert gate.reading
    gate.tick(8.0)
    assert not gate.reading and gate.state is DoorState.IDLE
    gate.reset()
    assert gate.state is DoorState.UNKNOWN


# -- config -------------------------------------------------------------------------------------


def reader_entry(**extra: Any) -> dict[str, Any]:
    return {
        "id": "d03-reader",
        "kind": "llrp_reader",
        "door": "D03",
        "transport": {"type": "tcp", "host": "127.0.0.1"},
        "antennas": {"outside": [1, 2], "inside": [3, 4]},
        **extra,
    }


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (reader_entry(gpi={"port": 0}), r"devices\[0\]\.gpi\.port: .*greater than or equal to 1"),
        (reader_entry(gpi={"port": 1, "hold_s": -1}), r"devices\[0\]\.gpi\.hold_s: "),
        (reader_entry(gpo={"port": 70000}), r"devices\[0\]\.gpo\.port: .*less than or equal"),
        (reader_entry(gpo={"port": 1, "colour": "red"}), r"devices\[0\]\.gpo\.colour: unknown"),
        (reader_entry(gpi={"active": True}), r"devices\[0\]\.gpi\.port: required key is missing"),
        (
            {**reader_entry(gpi={"port": 1}), "door": None, "antennas": None, "zones": {"A": [1]}},
            r"devices\[0\]: .*gpi gates the reading at a door: the reader needs a door",
        ),
        (
            {**reader_entry(gpo={"port": 1}), "door": None, "antennas": None, "zones": {"A": [1]}},
            r"devices\[0\]: .*gpo is switched by alarms at the reader's door: it needs a door",
        ),
        (
            reader_entry(gpi={"port": 1}, zones={"A-01": [5]}),
            r"devices\[0\]: .*a reader with zones cannot have gpi",
        ),
    ],
)
def test_gpi_and_gpo_config_errors_name_the_file_and_the_key(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    raw = site_config(tmp_path, broker_port=1883, scanner=None)
    raw["devices"] = [entry]
    with pytest.raises(ConfigError) as caught:
        build(raw, tmp_path)
    (error,) = caught.value.errors
    assert error.startswith(str(tmp_path / "site.toml"))
    assert re.search(expected, error), error


def test_gpi_and_gpo_config_as_documented(tmp_path: Path) -> None:
    raw = site_config(tmp_path, broker_port=1883, scanner=None)
    raw["devices"] = [
        reader_entry(gpi={"port": 1, "active": True, "hold_s": 2.0}, gpo={"port": 1, "hold_s": 10})
    ]
    (reader,) = build(raw, tmp_path).devices
    assert isinstance(reader, LlrpReaderDevice)
    assert reader.gpi is not None and reader.gpo is not None
    assert (reader.gpi.port, reader.gpi.active, reader.gpi.hold_s) == (1, True, 2.0)
    assert (reader.gpo.port, reader.gpo.hold_s) == (1, 10.0)
    assert LlrpReaderDevice.model_validate(reader_entry()).gpi is None  # read always, as before


# -- the driver against the simulator -----------------------------------------------------------


async def test_the_reader_reads_only_while_the_sensor_sees_something_and_hold_s_after() -> None:
    # Strong stray tags in the field all along: any reading at all would report them.
    scenario = Scenario(strays=[StrayTag(epc, (1,), -55.0) for epc in STRAYS])
    hold_s = 0.3
    async with LlrpReaderSimulator(scenario) as sim:
        config = device(sim.port, gpi={"port": 1, "active": True, "hold_s": hold_s})
        async with supervised(config) as (_, health):
            await until(lambda: health.state is DeviceState.CONNECTED, "connected")
            await asyncio.sleep(0.3)
            assert not sim.reading
            assert sim.stats.reads_sent == 0 and health.counts["reads"] == 0

            sim.set_gpi(1, True)  # something in the door
            await until(lambda: sim.reading, "the reader to start")
            await until(lambda: health.counts["reads"] > 0, "reads")
            sim.set_gpi(1, False)
            cleared = time.monotonic()
            stopped = await until(lambda: not sim.reading, "the reader to stop")
            assert hold_s - 0.02 <= stopped - cleared <= hold_s + SLACK_S
            await until(lambda: health.counts.get("reading_stops") == 1, "the stop's answer")
            assert health.counts["reading_starts"] == 1

            sent = sim.stats.reads_sent
            await asyncio.sleep(0.3)
            assert sim.stats.reads_sent == sent  # stopped: nothing more is read

            # The sensor clears and comes back within the hold: the reader never stops.
            sim.set_gpi(1, True)
            await until(lambda: sim.reading, "the reader to start again")
            sim.set_gpi(1, False)
            await asyncio.sleep(hold_s / 2)
            sim.set_gpi(1, True)
            for _ in range(20):
                await asyncio.sleep(hold_s / 10)
                assert sim.reading
            assert health.counts.get("reading_stops") == 1

            # Reconnected while the sensor sees something: reading starts without a new edge
            # (the driver asks for the port's level), and stops when it clears.
            await sim.drop_connections()
            await until(lambda: health.counts["restarts"] == 1, "a reconnect")
            await until(lambda: sim.reading, "the reader to start after the reconnect")
            sim.set_gpi(1, False)
            await until(lambda: not sim.reading, "the reader to stop after the reconnect")
            assert health.counts["gpi_events"] >= 5
            assert health.state is DeviceState.CONNECTED


async def test_the_gpo_follows_alarms_is_rewritten_on_reconnect_and_a_refusal_is_counted() -> None:
    hold_s = 0.3
    async with LlrpReaderSimulator(gpos=4) as sim:
        async with supervised(device(sim.port, gpo={"port": 3, "hold_s": hold_s})) as (
            reader,
            health,
        ):
            await until(lambda: health.state is DeviceState.CONNECTED, "connected")
            # Every connection writes the GPO as it should be: off.
            await until(lambda: sim.stats.gpo_writes == 1, "the first write")
            assert sim.gpo[3] is False
            alarmed = time.monotonic()
            reader.alarm()
            on_at = await until(lambda: sim.gpo[3], "the GPO on")
            assert on_at - alarmed < SLACK_S
            off_at = await until(lambda: not sim.gpo[3], "the GPO off")
            assert hold_s - 0.02 <= off_at - alarmed <= hold_s + SLACK_S
            await until(lambda: health.counts["gpo_writes"] == 3, "the answers to three writes")
            assert health.counts.get("gpo_refused", 0) == 0

            # Mid-alarm, the reader reboots (its outputs come back off): the new connection
            # writes the GPO on again.
            reader.alarm()
            await until(lambda: sim.gpo[3], "the GPO on")
            writes = sim.stats.gpo_writes
            await sim.restart()
            assert sim.gpo[3] is False
            await until(lambda: sim.gpo[3] and sim.stats.gpo_writes > writes, "the GPO rewritten")
            await until(lambda: not sim.gpo[3], "the GPO off after the hold")

        # A GPO port the reader does not have: each write is refused, counted and shown; the
        # reader is not dropped for it and goes on reading.
        stray = Scenario(strays=[StrayTag(STRAYS[0], (3,), -55.0)])
        async with LlrpReaderSimulator(stray, gpos=4) as other:
            config = device(other.port, gpo={"port": 9, "hold_s": hold_s})
            async with supervised(config) as (reader, health):
                await until(lambda: health.counts.get("gpo_refused") == 1, "the refusal")
                assert health.last_error is not None
                assert "reader refused to switch GPO port 9 off" in health.last_error
                assert "GPO port 9 does not exist (this reader has 4)" in health.last_error
                reader.alarm()
                await until(lambda: health.counts.get("gpo_refused") == 2, "the second refusal")
                reads = health.counts["reads"]
                await until(lambda: health.counts["reads"] > reads, "reads going on")
                assert health.state is DeviceState.CONNECTED
                assert health.counts["restarts"] == 0 and other.stats.connections == 1


async def test_a_reader_that_cannot_do_gpi_is_a_clear_device_error() -> None:
    # Its capabilities list no GPI port.
    async with LlrpReaderSimulator(gpis=0) as sim:
        async with supervised(device(sim.port, gpi={"port": 1})) as (_, health):
            await until(lambda: health.counts["errors"] >= 2, "failed setups")
            assert health.state is DeviceState.DISCONNECTED
            assert health.last_error == (
                "gpi.port 1: the reader has no GPI port 1 (its capabilities list 0 GPI ports), "
                "so no presence sensor can start and stop its reading"
            )
        assert not sim.started and sim.stats.reads_sent == 0  # no ROSpec was ever enabled
    # It has the port, but does not take START_ROSPEC: the door would never be read.
    async with LlrpReaderSimulator(unsupported=["START_ROSPEC"]) as sim:
        sim.set_gpi(1, True)
        async with supervised(device(sim.port, gpi={"port": 1})) as (_, health):
            await until(lambda: health.counts["errors"] >= 2, "failed connections")
            assert health.last_error is not None
            assert health.last_error.startswith(
                "reader refused to start the door's reading: ERROR_MESSAGE: UnsupportedMessage"
            )
        assert sim.stats.reads_sent == 0


# -- the gateway: a door with a presence sensor, end to end -------------------------------------


@pytest.mark.broker
async def test_stray_tags_make_no_pass_and_a_pallet_through_the_sensor_makes_one(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallet = [encode_sscc96(CP, "5000000001"), *cases("012345", 500, 4)]
    passer_by = [encode_sscc96(CP, "5000000077"), *cases("077777", 1, 3)]
    asn = {
        "asn_id": "ASN-GPI",
        "door": "D03",
        "lines": [
            {"line": 1, "gtin": gtin("012345"), "quantity": 4},
            {"line": 2, "sscc": sscc(pallet[0]), "quantity": 1},
        ],
    }
    scenario = Scenario(
        # Cases left by the door, heard by one antenna, before and after the pallet (weak: the
        # portal keeps them out of the pass it reads them in); a forklift takes another pallet
        # past the door along the dock, through the antennas' field, not through the sensor's.
        strays=[StrayTag(epc, (1,), -76.0) for epc in STRAYS],
        pallets=[Pallet(passer_by, "outbound", 1.0, 1.5), Pallet(pallet, "inbound", 5.5, 1.5)],
        gpi=[GpiChange(5.0, 1, True), GpiChange(7.2, 1, False)],
        door="D03",
        seed=11,
        time_scale=SPEED,
    )
    radio = PortalRadio(scenario)
    heard = {epc for t in (1.5, 2.0) for epc, _, _ in radio.heard(t, range(1, 5))}
    assert set(passer_by) <= heard and set(STRAYS) <= heard  # a reader reading would hear them
    hold_s = 0.3
    async with (
        LlrpReaderSimulator(scenario, reads_per_s=4000, held=True) as sim,
        Collector(mosquitto.port) as collector,
        aiomqtt.Client("127.0.0.1", mosquitto.port) as wms,
    ):
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None, reader_port=sim.port)
        raw["devices"][0]["gpi"] = {"port": 1, "active": True, "hold_s": hold_s}
        raw["devices"][0]["gpo"] = {"port": 2, "hold_s": 0.4}
        raw["debug"] = {"passes": True, "max_per_s": 50}
        config = build(raw, tmp_path)
        await wms.publish("wms/DC1/asn/ASN-GPI", json.dumps(asn), qos=1, retain=True)
        async with running(config, clock=AcceleratedClock(SPEED)) as gateway:
            await wait_device(gateway, "d03-reader", DeviceState.CONNECTED)
            await wait_reference_data(gateway, "asn/ASN-GPI")
            health = gateway.board.devices["d03-reader"]
            sim.release()
            # Until the sensor sees the pallet: nothing read, nothing reported.
            await until(lambda: sim.scenario_time >= 3.5, "the scenario to reach 3.5 s")
            assert sim.stats.reads_sent == 0 and health.counts["reads"] == 0
            assert not sim.reading and sim.scenario_time < 5.0  # (before the sensor's edge)
            await collector.wait_for(lambda c: len(c.on("/tx/receive")) == 1, timeout=20)
            # The sensor cleared at 7.2 s; the reader stops hold_s later, then reads no more.
            await until(lambda: sim.scenario_time >= 7.2 and not sim.reading, "the stop")
            assert sim.scenario_time - 7.2 >= hold_s * SPEED * 0.9
            sent = sim.stats.reads_sent
            await asyncio.sleep(3 * 1.5 / SPEED)  # three times the portal's depart_after_s
            assert sim.stats.reads_sent == sent
            assert health.counts["reading_starts"] == health.counts["reading_stops"] == 1
            # An alarm at the door lights the reader's GPO (registered as a signal light's).
            gateway.alarms.raise_at("D03")
            await until(lambda: sim.gpo[2], "the GPO on")
            await until(lambda: not sim.gpo[2], "the GPO off after its hold")
        await wms.publish("wms/DC1/asn/ASN-GPI", b"", qos=1, retain=True)
    passes = [m.json() for m in collector.on("/debug/pass/D03")]
    assert len(passes) == 1
    assert_valid("pass", passes[0])
    assert passes[0]["direction"] == "inbound"
    assert {t["epc"] for t in passes[0]["tags"]} == {e.hex().upper() for e in pallet}
    (receipt,) = (m.json() for m in collector.on("/tx/receive"))
    assert_valid("receive", receipt)
    assert {i["epc"]: i["result"] for i in receipt["items"]} == {
        e.hex().upper(): "accepted" for e in pallet
    }
    statuses = [m.json() for m in collector.on("device/d03-reader/status")]
    for payload in statuses:
        assert_valid("device-status", payload)


# -- the simulator's own GPI triggers, for a client that lets the reader do the triggering ------


def gpi_rospec(rospec_id: int, port: int, stop_timeout_ms: int = 0) -> bytes:
    """ADD_ROSPEC's body: start on GPI `port` going high, stop on it going low (or after
    `stop_timeout_ms`), all antennas, a report per tag."""
    start = tlv(
        ParamType.RO_SPEC_START_TRIGGER,
        b"\x03" + tlv(ParamType.GPI_TRIGGER_VALUE, struct.pack("!HBI", port, 0x80, 0)),
    )
    stop = tlv(
        ParamType.RO_SPEC_STOP_TRIGGER,
        struct.pack("!BI", 2, 0)
        + tlv(ParamType.GPI_TRIGGER_VALUE, struct.pack("!HBI", port, 0, stop_timeout_ms)),
    )
    ai = tlv(
        ParamType.AI_SPEC,
        struct.pack("!HH", 1, 0)
        + tlv(184, struct.pack("!BI", 0, 0))  # AISpecStopTrigger: Null
        + tlv(ParamType.INVENTORY_PARAMETER_SPEC, struct.pack("!HB", 1, 1)),
    )
    report = tlv(ParamType.RO_REPORT_SPEC, struct.pack("!BH", 1, 1))
    rospec = struct.pack("!IBB", rospec_id, 0, 0) + tlv(ParamType.RO_BOUNDARY_SPEC, start + stop)
    return tlv(ParamType.RO_SPEC, rospec + ai + report)


class BareClient:
    """An LLRP client on the simulator's own codec: send requests, collect what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self._ids = iter(range(1, 1000))

    async def request(self, msg_type: int, body: bytes = b"") -> Frame:
        msg_id = next(self._ids)
        self._writer.write(encode_frame(msg_type, msg_id, body))
        return await self.wait(lambda f: f.id == msg_id)

    async def wait(self, match: Callable[[Frame], bool], timeout: float = 2.0) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                for frame in self.frames:
                    if match(frame):
                        self.frames.remove(frame)
                        return frame
                self._decoder.feed(await self._reader.read(65536))
                self.frames += [f for f in self._decoder.frames() if isinstance(f, Frame)]

    def close(self) -> None:
        self._writer.close()

    async def drain(self, seconds: float) -> list[Frame]:
        with contextlib.suppress(TimeoutError):
            await self.wait(lambda _: False, seconds)
        out, self.frames = self.frames, []
        return out


def gpi_events(frames: list[Frame]) -> list[tuple[int, bool]]:
    out = []
    for frame in frames:
        if frame.type != MessageType.READER_EVENT_NOTIFICATION:
            continue
        (data,) = split_params(frame.body)
        for param in split_params(data.value):
            if param.type == ParamType.GPI_EVENT:
                port, flags = struct.unpack("!HB", param.value)
                out.append((port, bool(flags & 0x80)))
    return out


def tags_reported(frames: list[Frame]) -> int:
    return sum(
        len(decode_tag_reports(f.body)) for f in frames if f.type == MessageType.RO_ACCESS_REPORT
    )


def status(frame: Frame) -> tuple[int, bytes]:
    (param,) = split_params(frame.body)[:1]
    assert param.type == ParamType.LLRP_STATUS
    code, length = struct.unpack_from("!HH", param.value)
    return code, param.value[4 : 4 + length]


async def test_the_simulator_starts_and_stops_a_rospec_on_its_gpi_triggers() -> None:
    scenario = Scenario(strays=[StrayTag(STRAYS[0], (2,), -50.0)])
    async with LlrpReaderSimulator(scenario, gpis=2, gpos=2) as sim:
        client = BareClient(*await asyncio.open_connection("127.0.0.1", sim.port))
        await client.wait(lambda f: f.type == MessageType.READER_EVENT_NOTIFICATION)
        caps = await client.request(MessageType.GET_READER_CAPABILITIES, b"\x00")
        decoded = LLRPMessage(msgbytes=encode_frame(caps.type, caps.id, caps.body)).msgdict
        gpio = decoded["GET_READER_CAPABILITIES_RESPONSE"]["GeneralDeviceCapabilities"]
        assert gpio["GPIOCapabilities"] == {"NumGPIs": 2, "NumGPOs": 2}

        # A GPI trigger on a port the reader does not have is refused.
        refused = await client.request(MessageType.ADD_ROSPEC, gpi_rospec(7, 3))
        assert status(refused) == (
            101,
            b"GPI trigger: GPI port 3 does not exist (this reader has 2)",
        )
        assert status(await client.request(MessageType.ADD_ROSPEC, gpi_rospec(1, 1, 300)))[0] == 0
        assert status(await client.request(MessageType.ENABLE_ROSPEC, struct.pack("!I", 1)))[0] == 0
        frames = await client.drain(0.2)
        assert tags_reported(frames) == 0 and not sim.reading  # enabled, waiting for its edge

        sim.set_gpi(1, True)  # no GPIEvent asked for: the ROSpec starts, nobody is told
        frames = await client.drain(0.15)
        assert tags_reported(frames) > 0 and gpi_events(frames) == []
        sim.set_gpi(1, False)
        await client.drain(0.1)
        assert not sim.reading
        assert tags_reported(await client.drain(0.15)) == 0

        # GPIEvent notifications on (EventNotificationState type 1), then an edge each way.
        events = tlv(ParamType.EVENT_NOTIFICATION_STATE, struct.pack("!HB", 1, 0x80))
        body = b"\x00" + tlv(ParamType.READER_EVENT_NOTIFICATION_SPEC, events)
        assert status(await client.request(MessageType.SET_READER_CONFIG, body))[0] == 0
        sim.set_gpi(1, True)
        frames = await client.drain(0.1)
        assert gpi_events(frames) == [(1, True)] and tags_reported(frames) > 0
        # The stop trigger's timeout (300 ms from the start) stops it without an edge.
        await client.drain(0.3)
        assert not sim.reading and sim.gpi[1] is True
        assert tags_reported(await client.drain(0.15)) == 0
        sim.set_gpi(1, False)
        assert gpi_events(await client.drain(0.05)) == [(1, False)]

        # GPO writes are recorded; a port the reader does not have refuses the whole request.
        gpo = tlv(ParamType.GPO_WRITE_DATA, struct.pack("!HB", 2, 0x80))
        assert status(await client.request(MessageType.SET_READER_CONFIG, b"\x00" + gpo))[0] == 0
        assert sim.gpo == {1: False, 2: True}
        both = gpo + tlv(ParamType.GPO_WRITE_DATA, struct.pack("!HB", 5, 0x80))
        refused = await client.request(MessageType.SET_READER_CONFIG, b"\x00" + both)
        assert status(refused) == (101, b"GPO port 5 does not exist (this reader has 2)")
        assert sim.stats.gpo_writes == 1 and sim.stats.gpi_events_sent == 2

        # The reader's configuration shows the levels (sllurp decodes it).
        sim.set_gpi(2, True)
        everything = struct.pack("!HBHH", 0, 0, 0, 0)  # AntennaID, RequestedData (0: all), ports
        config = await client.request(MessageType.GET_READER_CONFIG, everything)
        decoded = LLRPMessage(msgbytes=encode_frame(config.type, config.id, config.body)).msgdict
        answer = decoded["GET_READER_CONFIG_RESPONSE"]
        assert llrp_gpio.gpi_level(answer, 1) is False and llrp_gpio.gpi_level(answer, 2) is True
        assert [(g["GPOPortNumber"], g["GPOData"]) for g in answer["GPOWriteData"]] == [
            (1, False),
            (2, True),
        ]
        client.close()
