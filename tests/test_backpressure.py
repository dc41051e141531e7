"""Back-pressure that holds (#11, item 10): a full outbox stops intake at the serial line, a
stop commits what was read, and a pair typed across a hold is one move.

Real pseudo-terminals (the scanner simulator), real SQLite files, a broker that is down (its
port has no listener), then a private Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drivers.scanner import BarcodeScanner
from gateway.health import DeviceState
from gateway.storage import OutboxMessage, Store
from simulators.gs1 import sscc, sscc_label
from simulators.scanner import ScannerSimulator, Type, shift_script
from tests.gateway_helpers import LOCATIONS, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto, free_port
from tests.process_helpers import GatewayProcess, outbox_rows, wait_until, write_toml

pytestmark = pytest.mark.broker

BAUD = 115_200  # a fast line: thousands of labels in seconds
SPLIT = {"move_timeout", "location_without_pallet", "move_abandoned"}


def size(step: Type) -> int:
    """Bytes a label takes on the line (AIM identifier, data, CR)."""
    return len(step.aim or "") + len(step.code) + 1


class Moves:
    """The moves a collector received, by tx_id (a redelivery is the same move). Each message
    is parsed once: thousands of moves are checked on every message."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector
        self._seen = 0
        self._by_id: dict[str, Any] = {}

    def __call__(self) -> dict[str, Any]:
        messages = self._collector.messages
        for message in messages[self._seen :]:
            if message.topic.endswith("/tx/move"):
                move = message.json()
                self._by_id[move["tx_id"]] = move
        self._seen = len(messages)
        return self._by_id

    def pairs(self) -> list[tuple[str, str]]:
        """(pallet, location) of every move, sorted."""
        return sorted((m["sscc"], m["to_location"]) for m in self().values())


def codes(collector: Collector) -> set[str]:
    return {m.json()["code"] for m in collector.on("/event")}


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@contextlib.asynccontextmanager
async def broker_down(tmp_path: Path, port: int) -> AsyncIterator[tuple[Mosquitto, Collector]]:
    """A collector subscribed (a persistent session) to a broker then stopped: the gateway
    finds its port closed, and what it publishes after `broker.start()` reaches the collector."""
    broker = Mosquitto(tmp_path, port)
    broker.start()
    try:
        async with Collector(port) as collector:
            broker.stop()
            yield broker, collector
    finally:
        broker.stop()


@pytest.mark.slow(9)
async def test_a_full_outbox_stops_reading_the_serial_line(tmp_path: Path) -> None:
    port = free_port()
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "scan0")
    raw["storage"] |= {"outbox_max_rows": 50}
    raw["rules"]["queue_size"] = 16
    config = build(raw, tmp_path)
    steps, truth = shift_script(pallets=1000, locations=LOCATIONS, seed=21, pause_s=(0.0, 0.0))
    typed = sum(size(s) for s in steps if isinstance(s, Type))
    async with (
        broker_down(tmp_path, port) as (broker, collector),
        ScannerSimulator(tmp_path / "scan0", baudrate=BAUD) as sim,
        running(config) as gateway,
    ):
        moves = Moves(collector)
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        driver = gateway.drivers["fl-07"]
        assert isinstance(driver, BarcodeScanner)
        playing = asyncio.create_task(sim.run(steps))
        # The outbox fills, then the inbox, then the kernel's tty buffer: the scanner finds the
        # line full (the writer side of the pty blocks).
        await wait_until(lambda: sim.stalls > 0, 20, "the scanner to find the line full")
        read = driver.bytes_read
        await asyncio.sleep(1.0)
        assert driver.bytes_read == read, "the driver read on while held"
        assert driver.held
        assert not playing.done()
        assert gateway.store is not None
        assert gateway.store.depth == 50
        assert gateway.queue.qsize() <= 16
        # Taken from the line: the labels behind 50 outbox rows, 16 in the inbox, 6 in the
        # rules' batch and one read of the port (1 KiB). The rest stays unread.
        assert read <= (2 * 50 + 16 + 6) * 22 + 1024, read
        assert typed - read > 16_000
        broker.start()
        await collector.wait_for(lambda _: len(moves()) == len(truth), timeout=30)
        await playing
        assert driver.bytes_read == typed
    # Every pair is one move: none was split by the hold.
    assert moves.pairs() == sorted(truth)
    assert not codes(collector) & SPLIT


@pytest.mark.slow(4)
async def test_a_pair_typed_across_a_hold_is_one_move(tmp_path: Path) -> None:
    port = free_port()
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "scan0", timeout_s=1.5)
    raw["storage"] |= {"outbox_max_rows": 10}
    raw["rules"]["queue_size"] = 8
    config = build(raw, tmp_path)
    # An outbox already full from an earlier outage: the first move holds the rules.
    async with await Store.open(config.storage.path, max_rows=10) as store:
        await store.commit(
            [OutboxMessage(f"old-{n}", "gw/DC1/dock-1/test/old", b"{}") for n in range(10)]
        )
    pallets = [sscc("0614141", 500 + n) for n in range(8)]
    places = [LOCATIONS[n % len(LOCATIONS)] for n in range(8)]
    labels = [
        (Type(sscc_label(p), aim="]C1"), Type(loc)) for p, loc in zip(pallets, places, strict=True)
    ]
    async with (
        broker_down(tmp_path, port) as (broker, collector),
        ScannerSimulator(tmp_path / "scan0", baudrate=BAUD) as sim,
        running(config) as gateway,
    ):
        moves = Moves(collector)
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        driver = gateway.drivers["fl-07"]
        assert isinstance(driver, BarcodeScanner)
        inbox = gateway.queue

        async def read(step: Type) -> None:
            before = driver.bytes_read
            await sim.type(step.code, aim=step.aim)
            await wait_until(lambda: driver.bytes_read >= before + size(step), 5, step.code)

        await read(labels[0][0])
        await read(labels[0][1])
        # The move waits for room: the rules hold it, the inbox is empty.
        await wait_until(lambda: inbox.empty() and inbox.unfinished() > 0, 5, "rules held")
        for pallet, location in labels[1:5]:  # 8 labels: the inbox is full
            await read(pallet)
            await read(location)
        assert inbox.full()
        await read(labels[5][0])  # read; it waits for room: the hold begins
        await wait_until(lambda: driver.held, 5, "the scanner held")
        await asyncio.sleep(2.0)  # longer than the move timeout
        held = driver.bytes_read
        # Typed during the hold: they wait at the device.
        for step in (labels[5][1], *labels[6], labels[7][0]):
            await sim.type(step.code, aim=step.aim)
        await asyncio.sleep(0.3)
        assert driver.bytes_read == held
        broker.start()
        await collector.wait_for(lambda c: len(moves()) == 7, timeout=20)
        # The forklift driver scans the last location after the hold (and its backlog).
        await wait_until(lambda: not driver.held, 5, "the backlog read")
        await sim.type(places[7])
        await collector.wait_for(lambda c: len(moves()) == 8, timeout=10)
    assert moves.pairs() == sorted(zip(pallets, places, strict=True))
    assert not codes(collector) & SPLIT
    evidence = {m["sscc"]: m["evidence"] for m in moves().values()}
    held_pair, typed_in_hold, across_end = (evidence[p] for p in pallets[5:8])
    began = at(held_pair["location_scanned_at"])  # the hold's start
    # The pallet read just before the hold, its location typed 2 s later: one move, the
    # location stamped with when the hold began.
    assert began - at(held_pair["pallet_scanned_at"]) < dt.timedelta(seconds=0.5)
    # A pair typed during the hold: both at the hold's start.
    for stamp in (typed_in_hold["pallet_scanned_at"], typed_in_hold["location_scanned_at"]):
        assert abs(at(stamp) - began) < dt.timedelta(milliseconds=2)
    # The pallet typed during the hold, its location after it (and after the move timeout
    # from the hold's start): one move, timed out from when the pallet was read.
    assert abs(at(across_end["pallet_scanned_at"]) - began) < dt.timedelta(milliseconds=2)
    assert at(across_end["location_scanned_at"]) - began > dt.timedelta(seconds=2)


async def type_pairs(
    sim: ScannerSimulator,
    todo: list[tuple[str, str]],
    done: list[tuple[str, str]],
    pause: asyncio.Event,
) -> None:
    """Type each pair (pallet, then location) until `pause` is set between two pairs."""
    while todo and not pause.is_set():
        pallet, location = todo[0]
        await sim.type(sscc_label(pallet), aim="]C1")
        await sim.type(location)
        done.append(todo.pop(0))


def log_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    ("n", "queue_size"),
    [
        pytest.param(1000, 256, marks=pytest.mark.slow(12), id="1000-pairs"),
        # The figures: 3,000 pairs typed, the default inbox of 1,024 events.
        pytest.param(3000, 1024, marks=pytest.mark.slow(25), id="3000-pairs"),
    ],
)
async def test_sigterm_with_a_full_outbox_and_the_broker_down_loses_no_scan(
    tmp_path: Path, n: int, queue_size: int
) -> None:
    port = free_port()  # nobody listens: the broker is down
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "scan0")
    raw["storage"] |= {"outbox_max_rows": 50}
    raw["rules"]["queue_size"] = queue_size
    raw["logging"] = {"format": "json", "level": "info"}
    config = write_toml(tmp_path / "site.toml", raw)
    db = tmp_path / "gateway.db"
    log = tmp_path / "gateway.log"
    _, truth = shift_script(pallets=n, locations=LOCATIONS, seed=9, pause_s=(0.0, 0.0))
    todo, done = list(truth), list[tuple[str, str]]()
    first = GatewayProcess(config, log)
    second = GatewayProcess(config, log)
    broker = Mosquitto(tmp_path, port)

    def opened() -> int:
        return sum(r["event"] == "device connected" for r in log_records(log))

    try:
        async with ScannerSimulator(tmp_path / "scan0", baudrate=BAUD) as sim:
            first.start()
            await wait_until(lambda: opened() == 1, 20, "the scanner's port open")
            pause = asyncio.Event()
            typing = asyncio.create_task(type_pairs(sim, todo, done, pause))
            # Outbox full, inbox full, the line full: the scanner waits to send.
            await wait_until(lambda: sim.stalls > 0, 20, "the scanner held at the line")
            typed = len(done)
            await asyncio.sleep(0.5)
            assert len(done) == typed, "the gateway read on while the outbox was full"
            # The scanner stops after its pair: a real one, with flow control, keeps what it
            # has while the port is closed (a pty would hand it to the next open, flushed).
            pause.set()
            assert await first.signal_async(signal.SIGTERM) == 0
            await asyncio.wait_for(typing, 5)
            # Everything read was committed, beyond the outbox's limit of 50.
            assert outbox_rows(db) == len(done) > 50 + queue_size // 2
            events = {r["event"]: r for r in log_records(log)}
            assert events["outbox not empty at stop: kept for the next start"]["beyond_limit"] > 0
            assert "rules did not commit what was read in time: lost" not in events
            stopped_with = len(done)

            broker.start()
            async with Collector(port) as collector:
                moves = Moves(collector)
                second.start()
                await wait_until(lambda: opened() == 2, 20, "the scanner's port open again")
                await type_pairs(sim, todo, done, asyncio.Event())
                await collector.wait_for(lambda _: len(moves()) >= n, timeout=60)
                assert await second.signal_async(signal.SIGTERM) == 0
        assert len(done) == n
        assert moves.pairs() == sorted(truth)  # every pair exactly one move, none lost
        assert not codes(collector) & SPLIT
        assert outbox_rows(db) == 0
        assert "Traceback" not in log.read_text()
        print(f"{stopped_with} pairs read before SIGTERM; {n} pairs -> {len(moves())} moves")
    finally:
        first.stop()
        second.stop()
        broker.stop()
