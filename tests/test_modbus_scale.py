"""The Modbus scale driver: register decoding, and the driver against real Modbus servers.

Servers: the pymodbus scale simulator over Modbus TCP and over Modbus RTU on a pseudo-terminal
(every fault), and pyModbusTCP's server, which shares no code with pymodbus, for every data
type, word order and byte order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.constants import ExcCodes
from pyModbusTCP.server import ModbusServer

from gateway.config import ModbusScaleDevice, StatusRegister, WeightRegister
from gateway.drivers.base import utc_now
from gateway.drivers.modbus_scale import (
    KIND,
    ModbusScale,
    ScaleReading,
    decode_status,
    decode_weight,
    plan_reads,
)
from gateway.health import DeviceHealth, DeviceState, StatusBoard
from gateway.supervisor import Backoff, DeviceError, supervise
from simulators.modbus_scale import ModbusScaleSimulator, encode_registers
from tests.scale_helpers import Samples, running, settled_at

pytestmark = pytest.mark.timeout(30)

TYPES = ("int16", "uint16", "int32", "uint32", "float32")
ORDERS = ("big", "little")
STATUS = StatusRegister(address=20, stable=0, overload=2, underload=3, zero=4)
WEIGHT = WeightRegister(address=10, type="int32", scale=0.01)  # hundredths of a kilogram


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture
def health() -> DeviceHealth:
    return StatusBoard(now).add("scale-d03", KIND)


def device(transport: dict[str, Any], **fields: Any) -> ModbusScaleDevice:
    spec: dict[str, Any] = {
        "id": "scale-d03",
        "kind": "modbus_scale",
        "transport": transport,
        "door": "D03",
        "weight": WEIGHT.model_dump(),
        "status": STATUS.model_dump(),
        "poll_s": 0.05,
        "timeout_s": 0.3,
    }
    spec.update(fields)
    return ModbusScaleDevice.model_validate(spec)


def transport_of(sim: ModbusScaleSimulator) -> dict[str, Any]:
    if sim.transport == "tcp":
        return {"type": "tcp", "host": sim.host, "port": sim.port}
    return {"type": "rtu", "port": str(sim.link), "baudrate": 9600}


def driver_for(
    sim: ModbusScaleSimulator, health: DeviceHealth, samples: Samples, **fields: Any
) -> ModbusScale:
    fields.setdefault("weight", sim.weight.model_dump())
    fields.setdefault("status", None if sim.status is None else sim.status.model_dump())
    return ModbusScale(
        device(transport_of(sim), **fields),
        emit=samples.emit,
        health=health,
        clock=utc_now,
    )


@pytest.fixture(params=["tcp", "rtu"])
async def sim(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ModbusScaleSimulator]:
    async with ModbusScaleSimulator(
        weight=WEIGHT, status=STATUS, transport=request.param, link=tmp_path / "scale0"
    ) as scale:
        yield scale


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "kind", "word_order", "byte_order", "expected"),
    [
        ([0x0001, 0x86A0], "int32", "big", "big", 100_000),  # ABCD
        ([0x86A0, 0x0001], "int32", "little", "big", 100_000),  # CDAB
        ([0x0100, 0xA086], "int32", "big", "little", 100_000),  # BADC
        ([0xA086, 0x0100], "int32", "little", "little", 100_000),  # DCBA
        ([0xFFFF], "int16", "big", "big", -1),
        ([0xFFFF], "uint16", "big", "big", 65535),
        ([0x34FF], "int16", "big", "little", -204),  # 0xFF34
        ([0xFFFF, 0xFFFE], "int32", "big", "big", -2),
        ([0xFFFF, 0xFFFE], "uint32", "big", "big", 4_294_967_294),
        ([0x4448, 0x4000], "float32", "big", "big", 801.0),
        ([0x4000, 0x4448], "float32", "little", "big", 801.0),
    ],
)
def test_decode_weight_known_encodings(
    words: list[int], kind: str, word_order: str, byte_order: str, expected: float
) -> None:
    reg = WeightRegister.model_validate(
        {"address": 0, "type": kind, "word_order": word_order, "byte_order": byte_order}
    )
    assert decode_weight(words, reg) == expected


def test_scale_and_unit_give_kilograms() -> None:
    grams = WeightRegister(address=0, type="int32", unit="g")
    tenths_lb = WeightRegister(address=0, type="uint16", scale=0.1, unit="lb")
    assert decode_weight([0x0001, 0x86A0], grams) == pytest.approx(100.0)
    assert decode_weight([1000], tenths_lb) == pytest.approx(45.359237)


@given(
    kind=st.sampled_from(TYPES),
    word_order=st.sampled_from(ORDERS),
    byte_order=st.sampled_from(ORDERS),
    value=st.integers(-(2**31), 2**32 - 1),
)
def test_decoding_inverts_the_simulators_struct_encoding(
    kind: str, word_order: str, byte_order: str, value: int
) -> None:
    reg = WeightRegister.model_validate(
        {"address": 0, "type": kind, "word_order": word_order, "byte_order": byte_order}
    )
    lows = {"int16": -(2**15), "uint16": 0, "int32": -(2**31), "uint32": 0, "float32": -1e6}
    highs = {"int16": 2**15 - 1, "uint16": 2**16 - 1, "int32": 2**31 - 1, "uint32": 2**32 - 1}
    value = min(highs.get(kind, 10**6), max(lows[kind], value))
    decoded = decode_weight(encode_registers(value, reg), reg)
    if kind == "float32":
        assert decoded == struct.unpack(">f", struct.pack(">f", value))[0]
    else:
        assert decoded == value


def test_status_bits() -> None:
    assert decode_status(0b00001, STATUS) == ScaleReading(stable=True, zero=False)
    assert decode_status(0b10001, STATUS) == ScaleReading(stable=True, zero=True)
    assert decode_status(0b00100, STATUS) == ScaleReading(stable=False, overload=True, zero=False)
    assert decode_status(0b01000, STATUS) == ScaleReading(stable=False, underload=True, zero=False)
    motion_only = StatusRegister(address=0, motion=7)
    assert decode_status(1 << 7, motion_only).stable is False
    assert decode_status(0, motion_only).stable is True
    assert decode_status(0xFFFF, StatusRegister(address=0)) == ScaleReading()


def test_weight_and_status_are_read_in_one_request_when_close() -> None:
    assert [(r.address, r.count) for r in plan_reads(WEIGHT, STATUS)] == [(10, 11)]
    far = StatusRegister(address=500, stable=0)
    assert [(r.address, r.count) for r in plan_reads(WEIGHT, far)] == [(10, 2), (500, 1)]
    other_table = StatusRegister(table="input", address=11, stable=0)
    assert len(plan_reads(WEIGHT, other_table)) == 2
    assert [(r.address, r.count) for r in plan_reads(WEIGHT, None)] == [(10, 2)]


def test_the_register_map_is_validated() -> None:
    with pytest.raises(ValidationError, match="share a bit"):
        StatusRegister(address=0, stable=1, motion=1)
    with pytest.raises(ValidationError, match="runs past"):
        WeightRegister(address=65535, type="float32")
    with pytest.raises(ValidationError, match="scale must not be 0"):
        WeightRegister(address=0, scale=0)
    with pytest.raises(ValidationError):
        device({"type": "tcp", "host": "x"}, unit_id=300)


def test_unit_id_0_is_refused_on_rtu_where_it_is_the_broadcast_address() -> None:
    with pytest.raises(ValidationError, match="broadcast address"):
        device({"type": "rtu", "port": "/dev/ttyUSB0"}, unit_id=0)
    assert device({"type": "rtu", "port": "/dev/ttyUSB0"}, unit_id=247).unit_id == 247
    # Over TCP, unit 0 is an ordinary address (many indicators answer to any unit id).
    assert device({"type": "tcp", "host": "x"}, unit_id=0).unit_id == 0


# --- against the pymodbus simulator, over TCP and RTU ----------------------------------------


async def test_each_placed_load_gives_exactly_one_weighing_with_its_value(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(driver_for(sim, health, samples).run):
        for load in (412.37, 987.65, 1500.0):
            sim.load.place(load, settle_s=0.4)
            await samples.wait_for(settled_at(load))
            await asyncio.sleep(0.3)  # more stable polls of the same load: no new weighing
            sim.load.remove(settle_s=0.2)
            await samples.wait_for(lambda s: s.stable is True and abs(s.kg) < 0.01)
    assert [round(w.kg, 2) for w in samples.weighings] == [412.37, 987.65, 1500.0]
    assert all(w.method == "scale_stable" for w in samples.weighings)
    # The load moved before it settled: the driver saw readings in motion, none of them weighed.
    assert any(s.stable is False and s.kg > 5 for s in samples.items)
    assert health.counts["reads"] == len(samples.items)


async def test_without_status_bits_a_load_is_weighed_when_readings_settle(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(driver_for(sim, health, samples, status=None).run):
        sim.load.place(640.0, settle_s=0.3)
        await samples.wait_for(lambda s: s.kg == pytest.approx(640.0))
        await asyncio.sleep(0.5)
    assert all(s.stable is None for s in samples.items)
    # One weighing: the mean of the settled readings, each within the settle tolerance (0.5 kg
    # by default) of the others; on a busy machine the last readings of the ramp can be among
    # them (639.9 was seen).
    (weighing,) = samples.weighings
    assert weighing.kg == pytest.approx(640.0, abs=0.5)
    assert weighing.method == "settled"


async def test_overload_and_underload_give_flagged_samples_without_a_weight(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(driver_for(sim, health, samples).run):
        sim.load.place(3500.0, settle_s=0.0)  # above the 3000 kg capacity
        over = await samples.wait_for(lambda s: s.overload)
        sim.load.underload()
        under = await samples.wait_for(lambda s: s.underload)
    for sample in (over, under):
        assert math.isnan(sample.kg)
        assert sample.stable is False
    assert samples.weighings == []


async def test_exception_responses_are_counted_and_polling_goes_on(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    async with running(driver_for(sim, health, samples).run) as task:
        await samples.wait_for(lambda s: True)
        sim.fail_with(ExcCodes.DEVICE_BUSY)
        await asyncio.sleep(0.4)
        assert health.counts["exception_responses"] >= 3
        assert health.last_error is not None and "DEVICE_BUSY" in health.last_error
        assert health.last_error_at is not None
        assert health.state is DeviceState.CONNECTED  # it answers, with a refusal
        sim.fail_with(None)
        sim.load.place(250.0, settle_s=0.0)
        await samples.wait_for(settled_at(250.0))
        assert not task.done()
        assert health.state is DeviceState.CONNECTED
        # A valid reading again: the refusal is history, no longer the current error.
        assert health.last_error is None
        assert health.previous_error is not None and "DEVICE_BUSY" in health.previous_error


async def test_a_register_map_pointing_nowhere_gets_illegal_address(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    wrong = WeightRegister(address=4000, type="int32")
    async with running(driver_for(sim, health, samples, weight=wrong.model_dump()).run):
        async with asyncio.timeout(3):
            while health.counts.get("exception_responses", 0) < 2:
                await asyncio.sleep(0.05)
    assert health.last_error is not None and "ILLEGAL_ADDRESS" in health.last_error
    assert samples.items == []


async def test_a_silent_scale_fails_run_after_max_missed_polls(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    task = asyncio.ensure_future(driver_for(sim, health, samples, max_missed=2).run())
    await samples.wait_for(lambda s: True)
    sim.silence(True)
    with pytest.raises(DeviceError, match="2 polls without an answer"):
        await asyncio.wait_for(task, 5.0)
    assert health.counts["no_answer"] == 2


async def test_garbage_on_the_line_is_survived(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    driver = driver_for(sim, health, samples)
    async with running(lambda: supervise(driver.run, health, Backoff(0.05, 0.2))):
        await samples.wait_for(lambda s: True)
        for _ in range(5):
            sim.garbage()
            await asyncio.sleep(0.07)
        sim.load.place(321.0, settle_s=0.0)
        await samples.wait_for(settled_at(321.0))
    assert [round(w.kg, 2) for w in samples.weighings] == [321.0]


async def test_unplug_fails_run_and_the_supervisor_reconnects_after_replug(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    samples = Samples()
    driver = driver_for(sim, health, samples)
    async with running(lambda: supervise(driver.run, health, Backoff(0.05, 0.2))):
        await samples.wait_for(lambda s: True)
        await sim.unplug()
        async with asyncio.timeout(5):
            while health.state is not DeviceState.DISCONNECTED:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.4)  # several failed attempts while unplugged
        await sim.plug()
        sim.load.place(20.0, settle_s=0.0)
        await samples.wait_for(settled_at(20.0), timeout=5.0)
        assert health.state is DeviceState.CONNECTED
        assert health.counts["restarts"] >= 1


async def test_nobody_listening_fails_run(health: DeviceHealth, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nobody listens once closed
    samples = Samples()
    tcp = ModbusScale(
        device({"type": "tcp", "host": "127.0.0.1", "port": port}),
        emit=samples.emit,
        health=health,
        clock=utc_now,
    )
    with pytest.raises(DeviceError, match="cannot connect"):
        await tcp.run()
    rtu = ModbusScale(
        device({"type": "rtu", "port": str(tmp_path / "no-such-port")}),
        emit=samples.emit,
        health=health,
        clock=utc_now,
    )
    with pytest.raises(DeviceError, match="cannot connect"):
        await rtu.run()


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize(("value", "shown"), [(math.nan, "NaN"), (math.inf, "infinite")])
async def test_a_float_register_holding_nan_is_rejected_and_shown(
    tmp_path: Path,
    health: DeviceHealth,
    transport: Literal["tcp", "rtu"],
    value: float,
    shown: str,
) -> None:
    weight = WeightRegister(address=0, type="float32")
    async with ModbusScaleSimulator(
        weight=weight, status=None, transport=transport, link=tmp_path / "scale0"
    ) as sim:
        samples = Samples()
        sim.stick_weight(value)  # a broken float register
        async with running(driver_for(sim, health, samples).run):
            async with asyncio.timeout(3):
                while health.counts["rejected"] < 2:
                    await asyncio.sleep(0.02)
            # The indicator answers: connected, with the bad reading as its current error.
            assert health.state is DeviceState.CONNECTED
            assert health.last_error is not None
            assert health.last_error.startswith(f"reading is {shown}: the float32")
            assert health.last_error_at is not None
            sim.stick_weight(None)
            sim.load.place(75.5, settle_s=0.0)
            await samples.wait_for(lambda s: s.kg == pytest.approx(75.5))
            assert health.last_error is None
            assert health.previous_error is not None
            assert health.previous_error.startswith(f"reading is {shown}")
    assert all(math.isfinite(s.kg) for s in samples.items)
    assert health.counts["device_errors"] >= 2


async def test_a_nan_load_is_rejected(tmp_path: Path, health: DeviceHealth) -> None:
    weight = WeightRegister(address=0, type="float32")
    async with ModbusScaleSimulator(weight=weight, status=None) as sim:
        samples = Samples()
        async with running(driver_for(sim, health, samples).run):
            sim.load.place(math.nan, settle_s=0.0)
            async with asyncio.timeout(3):
                while health.counts["rejected"] < 2:
                    await asyncio.sleep(0.02)
            assert (health.last_error or "").startswith("reading is NaN")
            sim.load.place(75.5, settle_s=0.0)
            await samples.wait_for(lambda s: s.kg == pytest.approx(75.5))
    assert all(math.isfinite(s.kg) for s in samples.items)


async def test_an_indicator_that_does_not_answer_is_not_connected(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    # The TCP connection is accepted, the serial port opens: nothing has answered yet.
    sim.silence(True)
    samples = Samples()
    async with running(driver_for(sim, health, samples, max_missed=100).run) as task:
        async with asyncio.timeout(5):
            while health.counts.get("no_answer", 0) < 2:
                await asyncio.sleep(0.02)
        assert health.state is DeviceState.STARTING
        sim.silence(False)
        await samples.wait_for(lambda s: True, timeout=5.0)
        assert health.state is DeviceState.CONNECTED
        assert not task.done()


async def test_a_dead_indicator_under_the_supervisor_is_never_connected(
    sim: ModbusScaleSimulator, health: DeviceHealth
) -> None:
    sim.silence(True)
    samples = Samples()
    driver = driver_for(sim, health, samples, max_missed=2)
    states: set[DeviceState] = set()
    async with running(lambda: supervise(driver.run, health, Backoff(0.02, 0.05))):
        async with asyncio.timeout(10):
            while health.counts["errors"] < 3:
                states.add(health.state)
                await asyncio.sleep(0.005)
    assert DeviceState.CONNECTED not in states
    assert health.state is DeviceState.STOPPED
    assert health.last_error is not None and "scale silent" in health.last_error
    assert samples.items == []


# --- against a Modbus server that is not pymodbus ---------------------------------------------


@pytest.fixture(scope="module")
def other_server() -> Iterator[ModbusServer]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ModbusServer(host="127.0.0.1", port=port, no_block=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


VALUES = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -1_234_567,
    "uint32": 3_000_000_001,
    "float32": 1234.5,
}


@pytest.mark.parametrize(
    ("kind", "word_order", "byte_order", "table"),
    [
        (kind, wo, bo, table)
        for kind, wo, bo in itertools.product(TYPES, ORDERS, ORDERS)
        if not (kind.endswith("16") and wo == "little")  # one word has no word order
        for table in ("holding", "input")
        if table == "holding" or (kind, wo, bo) == ("int32", "little", "little")
    ],
)
async def test_reads_every_type_and_order_from_pymodbustcp(
    other_server: ModbusServer,
    health: DeviceHealth,
    kind: str,
    word_order: Literal["big", "little"],
    byte_order: Literal["big", "little"],
    table: Literal["holding", "input"],
) -> None:
    reg = WeightRegister.model_validate(
        {
            "table": table,
            "address": 100,
            "type": kind,
            "word_order": word_order,
            "byte_order": byte_order,
            "scale": 0.1,
        }
    )
    status = StatusRegister(table=table, address=102, stable=5)
    # Written with struct, independently of the simulator's and the driver's code.
    packed = struct.pack(
        ">" + {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I"}.get(kind, "f"),
        VALUES[kind],
    )
    words = [packed[i : i + 2] for i in range(0, len(packed), 2)]
    if word_order == "little":
        words.reverse()
    if byte_order == "little":
        words = [w[::-1] for w in words]
    registers = [int.from_bytes(w, "big") for w in words]
    block = [*[*registers, 0][:2], 1 << 5]  # weight, padding for a 16-bit one, status
    if table == "holding":
        other_server.data_bank.set_holding_registers(100, block)
    else:
        other_server.data_bank.set_input_registers(100, block)
    samples = Samples()
    driver = ModbusScale(
        device(
            {"type": "tcp", "host": "127.0.0.1", "port": other_server.port},
            weight=reg.model_dump(),
            status=status.model_dump(),
        ),
        emit=samples.emit,
        health=health,
        clock=utc_now,
    )
    async with running(driver.run):
        sample = await samples.wait_for(lambda s: True)
    assert sample.kg == pytest.approx(VALUES[kind] * 0.1)
    assert sample.stable is True


@pytest.mark.parametrize(
    "code", [ExcCodes.GATEWAY_PATH_UNAVIABLE, ExcCodes.GATEWAY_NO_RESPONSE], ids=["path", "none"]
)
async def test_a_modbus_gateway_answering_for_a_dead_indicator_is_no_answer(
    sim: ModbusScaleSimulator, health: DeviceHealth, code: ExcCodes
) -> None:
    # A TCP-to-RTU gateway says the indicator behind it did not respond: the scale is silent,
    # not "connected and refusing".
    samples = Samples()
    task = asyncio.ensure_future(driver_for(sim, health, samples, max_missed=2).run())
    sim.fail_with(code)
    with pytest.raises(DeviceError, match="2 polls without an answer"):
        await asyncio.wait_for(task, 5)
    assert health.counts.get("exception_responses", 0) == 0
    assert health.state is not DeviceState.CONNECTED
