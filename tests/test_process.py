"""The gateway as a real process: SIGKILL and restart, SIGTERM, the last will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.scanner import ScannerSimulator, shift_script
from tests.gateway_helpers import LOCATIONS, assert_valid, site_config
from tests.mqtt_helpers import Collector, Mosquitto, free_port
from tests.process_helpers import GatewayProcess, outbox_rows, wait_until, write_toml

pytestmark = pytest.mark.broker


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayProcess]:
    holder: list[GatewayProcess] = []

    def make(config: Path) -> GatewayProcess:
        proc = GatewayProcess(config, tmp_path / "gateway.log")
        holder.append(proc)
        return proc

    yield make  # type: ignore[misc]
    for proc in holder:
        proc.stop()


@pytest.mark.slow(8)
async def test_sigkill_then_restart_delivers_everything_committed(
    tmp_path: Path, gateway_process: Any
) -> None:
    port = free_port()  # the broker is down at first: everything waits in the outbox
    raw = site_config(tmp_path, broker_port=port, scanner=tmp_path / "scan0")
    raw["logging"] = {"format": "json", "level": "info"}
    config = write_toml(tmp_path / "site.toml", raw)
    steps, truth = shift_script(pallets=10, locations=LOCATIONS, seed=3, pause_s=(0.0, 0.02))
    db = tmp_path / "gateway.db"
    async with ScannerSimulator(tmp_path / "scan0") as sim:
        first = gateway_process(config)
        first.start()
        # Scans typed before the gateway opens the port are lost (as with a real scanner).
        log = tmp_path / "gateway.log"
        await wait_until(
            lambda: log.exists() and "device connected" in log.read_text(), 20, "scanner open"
        )
        await sim.run(steps)
        await wait_until(lambda: outbox_rows(db) == len(truth), 20, "moves committed")
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL

        broker = Mosquitto(tmp_path, port)
        broker.start()
        try:
            async with Collector(port) as collector:
                second = gateway_process(config)
                second.start()
                await collector.wait_for(
                    lambda c: len({m.json()["tx_id"] for m in c.on("/tx/move")}) >= len(truth)
                )
                moves = {m.json()["tx_id"]: m.json() for m in collector.on("/tx/move")}
                assert sorted((m["sscc"], m["to_location"]) for m in moves.values()) == sorted(
                    truth
                )
                for move in moves.values():
                    assert_valid("move", move)
                await wait_until(lambda: outbox_rows(db) == 0, 10, "outbox emptied")

                # SIGTERM: a clean stop, exit code 0, retained status offline.
                assert second.signal(signal.SIGTERM) == 0
                await collector.wait_for(
                    lambda c: (
                        c.on("dock-1/status")
                        and c.on("dock-1/status")[-1].json()["reason"] == "stopped"
                    )
                )
                # Killed while connected, the broker publishes the last will.
                third = gateway_process(config)
                third.start()
                await collector.wait_for(
                    lambda c: c.on("dock-1/status")[-1].json()["state"] == "online"
                )
                third.signal(signal.SIGKILL)
                await collector.wait_for(
                    lambda c: c.on("dock-1/status")[-1].json()["reason"] == "connection lost"
                )
                will = collector.on("dock-1/status")[-1].json()
                assert will["state"] == "offline"
                assert_valid("gateway-status", will)
        finally:
            broker.stop()
    log_lines = (tmp_path / "gateway.log").read_text().splitlines()
    assert "Traceback" not in "\n".join(log_lines)
    # A service logs JSON lines, one event each.
    records = [json.loads(line) for line in log_lines]
    assert {
        "gateway starting",
        "device connected",
        "transaction committed",
        "broker connected",
    } <= {r["event"] for r in records}


def test_run_with_a_bad_config_exits_2_and_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text('[gateway]\nsite = "DC1"\nid = "x"\n[storage]\npath = "g.db"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert "broker: required key is missing" in result.stderr
