"""#15's acceptance: 5,000 scans from 3 terminals with 20 offline spells, every batch sent one to
three times and 10% of them out of order, through 10 SIGKILLs of the gateway: every scan is
applied exactly once, with the result the script says, item by item."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
from pathlib import Path

import aiomqtt
import pytest

from simulators.gs1 import sscc, sscc_label
from simulators.handheld import HandheldTerminal, Misbehaviour
from tests.gateway_helpers import site_config
from tests.mqtt_helpers import Collector, Mosquitto
from tests.process_helpers import GatewayProcess, write_toml

pytestmark = [pytest.mark.broker, pytest.mark.slow(60), pytest.mark.timeout(240)]

TERMINALS = ("pda-1", "pda-2", "pda-3")
SCANS = 5_000
OFFLINE_SPELLS = 20
KILLS = 10


class Script:
    """One terminal's work and the result each of its scans must get."""

    def __init__(self, n: int, scans: int, rng: random.Random) -> None:
        self.door = f"D0{n + 3}"
        self.asn_id = f"ASN-PDA-{n}"
        self.pallets = [sscc("0614141", 100_000 * (n + 1) + i) for i in range(scans)]
        self.steps: list[
            tuple[str, str, dict[str, str], str]
        ] = []  # purpose, label, fields, result
        received: list[str] = []
        used = 0
        while len(self.steps) < scans:
            roll = rng.random()
            if roll < 0.05 and received:  # the same pallet scanned again
                pallet = rng.choice(received)
                self.steps.append(
                    ("receive", sscc_label(pallet), {"door": self.door}, "already_received")
                )
            elif roll < 0.08:  # a pallet not on the ASN
                stranger = sscc("0376123", 10_000 * (n + 1) + len(self.steps))
                self.steps.append(
                    ("receive", sscc_label(stranger), {"door": self.door}, "unexpected")
                )
            elif roll < 0.18 and received:  # a received pallet put away
                pallet = received.pop(rng.randrange(len(received)))
                place = f"A-{rng.randrange(1, 99):02d}-{n + 1:02d}"
                self.steps.append(("move", sscc_label(pallet), {"location": place}, "moved"))
            else:
                pallet = self.pallets[used]
                used += 1
                received.append(pallet)
                self.steps.append(("receive", sscc_label(pallet), {"door": self.door}, "accepted"))
        self.asn = {
            "asn_id": self.asn_id,
            "door": self.door,
            "lines": [
                {"line": i, "sscc": p, "quantity": 1} for i, p in enumerate(self.pallets[:used], 1)
            ],
        }


def ledger_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM handheld_scan").fetchone()[0])


async def test_every_scan_applied_once_through_offline_spells_copies_reorders_and_sigkills(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    rng = random.Random(15)
    per = SCANS // len(TERMINALS)
    scripts = [Script(n, per + (1 if n < SCANS % len(TERMINALS) else 0), rng) for n in range(3)]
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    raw["handheld"] = {"enabled": True, "reorder_wait_s": 2.0}
    raw["logging"] = {"format": "json", "level": "warning"}
    config = write_toml(tmp_path / "site.toml", raw)
    db = tmp_path / "gateway.db"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        for script in scripts:
            await wms.publish(
                f"wms/DC1/asn/{script.asn_id}", json.dumps(script.asn), qos=1, retain=True
            )

    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    gateway.start()
    try:
        await replay(tmp_path, mosquitto, gateway, scripts, rng, db)
    finally:
        gateway.stop()
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        for script in scripts:
            await wms.publish(f"wms/DC1/asn/{script.asn_id}", b"", qos=1, retain=True)


async def replay(
    tmp_path: Path,
    mosquitto: Mosquitto,
    gateway: GatewayProcess,
    scripts: list[Script],
    rng: random.Random,
    db: Path,
) -> None:
    """The terminals' work through the gateway's kills; then the checks."""
    kills = 0

    async def killer(stop: asyncio.Event) -> None:
        nonlocal kills
        while kills < KILLS and not stop.is_set():
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            await gateway.signal_async(signal.SIGKILL)
            kills += 1
            gateway.start()

    async def work(pda: HandheldTerminal, script: Script, spells: int) -> None:
        """Scan in spells: offline for each (the scans pile up), online in between."""
        cuts = sorted(rng.sample(range(1, len(script.steps)), spells * 2))
        bounds = [0, *cuts, len(script.steps)]
        for i in range(len(bounds) - 1):
            pda.offline = i % 2 == 1
            for purpose, label, fields, _ in script.steps[bounds[i] : bounds[i + 1]]:
                pda.scan(purpose, label, **fields)
            await flush(pda)
        pda.offline = False
        while pda.pending:
            await flush(pda)

    async def flush(pda: HandheldTerminal) -> None:
        try:
            await pda.flush()
        except TimeoutError:  # the gateway is down: the terminal keeps its scans, tries later
            process = gateway.process
            if process is not None and process.poll() not in (None, -signal.SIGKILL):
                log = (tmp_path / "gateway.log").read_text()[-2000:]
                raise AssertionError(f"the gateway exited: {log}") from None
            await asyncio.sleep(0.5)

    spells = [OFFLINE_SPELLS // 3 + (1 if n < OFFLINE_SPELLS % 3 else 0) for n in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        collector = await stack.enter_async_context(
            Collector(mosquitto.port, topic="gw/DC1/+/tx/+")
        )
        pdas = [
            await stack.enter_async_context(
                HandheldTerminal(
                    name,
                    mosquitto.port,
                    batch_size=50,
                    answer_timeout_s=3.0,
                    misbehaviour=Misbehaviour(max_copies=3, reorder=0.1, seed=n),
                )
            )
            for n, name in enumerate(TERMINALS)
        ]
        stop = asyncio.Event()
        kill_task = asyncio.create_task(killer(stop))
        try:
            async with asyncio.timeout(200):
                await asyncio.gather(
                    *(work(p, s, k) for p, s, k in zip(pdas, scripts, spells, strict=True))
                )
        finally:
            stop.set()
            await kill_task
        # Every scan, item by item: the result the script says, the same on every repeat.
        for pda, script in zip(pdas, scripts, strict=True):
            got = [pda.results[seq]["result"] for seq in range(1, len(script.steps) + 1)]
            assert got == [step[3] for step in script.steps], pda.terminal
            assert pda.disagreements == 0
        assert kills == KILLS
        assert sum(p.batches_sent for p in pdas) > SCANS / 50 * 1.5  # copies were sent
        # Applied once: one stored result per scan, one transaction per scan that makes one.
        assert ledger_rows(db) == SCANS
        made = {r["tx_id"] for p in pdas for r in p.results.values() if r["tx_id"]}
        await collector.wait_for(
            lambda c: {m.json()["tx_id"] for m in c.messages} >= made, timeout=60
        )
        assert {m.json()["tx_id"] for m in collector.messages} == made
