"""Hostile and heavy MQTT input against a running gateway (issue #11).

`simulators.flood` runs as its own process against a private Mosquitto that saves every 30 s,
as the shipped one does. The figures (scan-to-move latency, the loop's worst stall, RSS) are
measured by `benchmarks/hostile_input.py`; these tests check what must hold whatever the
machine: nothing is lost, the gateway stays on the broker, the flood makes few events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.bridge import mqtt
from gateway.config import GatewayConfig
from gateway.health import DeviceState
from simulators.gs1 import sscc, sscc_label
from simulators.scanner import ScannerSimulator, Type
from tests.gateway_helpers import (
    LOCATIONS,
    ask_to_close,
    build,
    running,
    site_config,
    wait_device,
)
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def site_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto that saves every 30 s, as the shipped configuration does."""
    broker = Mosquitto(tmp_path, save_every_change=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def flood(port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.flood", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )


async def finished(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while process.poll() is None:
            await asyncio.sleep(0.05)
    assert process.returncode == 0


def config(
    tmp_path: Path,
    port: int,
    *,
    scanner: Path | None = None,
    queue_size: int = 1024,
    **broker: object,
) -> GatewayConfig:
    raw = site_config(tmp_path, broker_port=port, scanner=scanner)
    raw["agv"] = {"enabled": True, "vda5050": {"interface": "uagv"}}
    raw["broker"] |= broker
    raw["rules"]["queue_size"] = queue_size
    return build(raw, tmp_path)


async def close_answer(gateway: Gateway, port: int) -> dict[str, object]:
    """Ask the gateway to close an unknown reference, once it listens; its answer."""
    async with asyncio.timeout(20):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.01)
    return await ask_to_close(port, "NOPE")


@pytest.mark.slow(15)
async def test_ten_thousand_retained_asns_at_start_are_all_taken_in(
    tmp_path: Path, site_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The gateway acknowledges a message only once it is in the rules' inbox, and the broker
    # sends at most Receive Maximum unacknowledged: nothing is queued and discarded on the way,
    # however small the inbox.
    await finished(flood(site_broker.port, "--junk", "0", "--big", "0", "--asns", "10000"))
    # Mosquitto 2.0.11 sends a whole Receive Maximum more after each PUBACK: the gateway then
    # stops reading its socket while too many wait (low marks here, so that it does).
    monkeypatch.setattr(mqtt, "PAUSE_READING_AT", 40)
    monkeypatch.setattr(mqtt, "RESUME_READING_AT", 10)
    gateway_config = config(tmp_path, site_broker.port, queue_size=16, receive_maximum=8)
    async with running(gateway_config) as gateway:
        answer = await close_answer(gateway, site_broker.port)
        assert answer["ok"] is False
        assert gateway.store is not None
        async with asyncio.timeout(60):
            while (
                len([r for r in await gateway.store.reference_data() if r.kind == "asn"]) < 10_000
            ):
                await asyncio.sleep(0.2)
        assert gateway.bridge is not None
        assert gateway.bridge.connection_losses == 0
        assert gateway.bridge.qos0_dropped == 0
        assert gateway.bridge.reading_paused > 0
    # At a restart every ASN comes again, unchanged: held, nothing rejected.
    async with running(gateway_config) as gateway:
        await close_answer(gateway, site_broker.port)
        assert gateway.bridge is not None
        async with asyncio.timeout(60):
            while gateway.bridge.received < 10_000:
                await asyncio.sleep(0.1)
        assert gateway.runner is not None
        assert len(gateway.runner.engine.dock.asns) == 10_000
        assert gateway.runner.engine.rejections.rejected == 0


@pytest.mark.slow(15)
async def test_a_flood_neither_loses_a_scan_nor_takes_the_gateway_off_the_broker(
    tmp_path: Path, site_broker: Mosquitto
) -> None:
    gateway_config = config(tmp_path, site_broker.port, scanner=tmp_path / "scan0")
    pallets = [sscc("0376123", 700_000 + n) for n in range(20)]
    async with (
        Collector(site_broker.port, topic="gw/DC1/dock-1/#") as collector,
        ScannerSimulator(tmp_path / "scan0") as sim,
        running(gateway_config) as gateway,
    ):
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        attacker = flood(site_broker.port, "--junk", "3000", "--big", "2")
        for n, pallet in enumerate(pallets):
            await sim.run([Type(sscc_label(pallet), aim="]C1"), Type(LOCATIONS[n % 5])])
            await asyncio.sleep(0.1)
        await finished(attacker)
        await collector.wait_for(lambda c: len(c.on("/tx/move")) >= len(pallets), timeout=30)
        assert gateway.runner is not None
        async with asyncio.timeout(30):  # the two large ship orders are taken in
            while not {"BIG-0", "BIG-1"} <= set(gateway.runner.engine.dock.orders):
                await asyncio.sleep(0.1)
        assert gateway.bridge is not None
        assert gateway.bridge.connection_losses == 0
        await asyncio.sleep(0.5)
    moved = {json.loads(m.payload)["sscc"] for m in collector.on("/tx/move")}
    assert moved == set(pallets)
    # 3,000 junk messages, aggregated per source and reason: a few dozen events.
    events = collector.on("/event") + collector.on("/alarm")
    assert 5 <= len(events) < 100
    assert all(len(m.payload) < 4_000 for m in events)
