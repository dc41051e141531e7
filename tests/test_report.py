"""Hourly counts in SQLite (trends that survive restarts) and `gateway report`."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.health import DeviceState
from gateway.ops.report import kpis, per_day, render
from gateway.storage import PalletMove, StateChanges, Store
from simulators.gs1 import corrupt_check_digit, sscc, sscc_label
from simulators.scanner import Garbage, ScannerSimulator, Type, shift_script
from tests.gateway_helpers import LOCATIONS, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto

HOUR = 3600
DAY = 24 * HOUR


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def site_file(folder: Path, database: str) -> Path:
    """A minimal site configuration on disk, as `gateway report --config` reads it."""
    path = folder / "site.toml"
    path.write_text(
        '[gateway]\nsite = "DC1"\nid = "dock-1"\n[broker]\nhost = "127.0.0.1"\n'
        f'[storage]\npath = "{database}"\n'
    )
    return path


def test_hours_are_summed_per_utc_day() -> None:
    midnight = int(dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()) // HOUR
    hours = [
        (midnight - 1, "move", "", 3),  # 23:00 on the 6th
        (midnight, "move", "", 2),
        (midnight + 23, "move", "", 1),
        (midnight + 23, "move", "origin_unknown", 1),
        (midnight + 24, "alarm", "expired_lot", 1),
    ]
    assert per_day(hours) == [
        ("2026-12-06", "move", "", 3),
        ("2026-12-07", "move", "", 3),
        ("2026-12-07", "move", "origin_unknown", 1),
        ("2026-12-08", "alarm", "expired_lot", 1),
    ]
    table = render(per_day(hours), "table").splitlines()
    assert table[0].split() == ["day", "kind", "code", "count"]
    assert table[1].split() == ["2026-12-06", "move", "(all)", "3"]


async def test_counts_add_up_across_commits_and_old_hours_are_pruned(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.db")
    now = dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC).timestamp()
    hour = int(now // HOUR)
    old = hour - 100 * 24
    for _ in range(2):
        await store.commit([], StateChanges(trends={(hour, "move", ""): 2, (old, "move", ""): 1}))
    assert await store.trends(since=0, until=now + HOUR) == [
        (old, "move", "", 2),
        (hour, "move", "", 4),
    ]
    assert await store.trends(since=now, until=now + 1) == [(hour, "move", "", 4)]
    assert await store.prune_trends(before=now - 90 * DAY) == 1
    assert await store.trends(since=0, until=now + HOUR) == [(hour, "move", "", 4)]
    await store.close()


async def test_dock_to_stock_runs_from_the_receipt_to_the_first_move_off_the_door(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "gw.db")
    t0 = dt.datetime(2026, 12, 7, 10, 5, tzinfo=dt.UTC).timestamp()
    hour = int(t0 // HOUR)

    def moves(*rows: PalletMove) -> StateChanges:
        return StateChanges(moves=list(rows))

    await store.commit([], moves(PalletMove("P1", "D03", "t1", t0, received=True)))
    await store.commit([], moves(PalletMove("P2", "D03", "t2", t0 + 60, received=True)))
    await store.commit([], moves(PalletMove("P3", "D03", "t3", t0, received=True)))
    await store.commit([], moves(PalletMove("P1", "D03", "t4", t0 + 30)))  # still at the door
    await store.commit([], moves(PalletMove("P1", "A-01", "t5", t0 + 600)))  # 10 minutes
    await store.commit([], moves(PalletMove("P1", "A-02", "t6", t0 + 900)))  # not again
    await store.commit([], moves(PalletMove("P2", "A-03", "t7", t0 + 60 + 1200)))  # 20 minutes
    await store.commit([], StateChanges(shipped=["P3"]))  # shipped from the door: not stocked
    await store.commit([], moves(PalletMove("P3", "A-04", "t8", t0 + 3000)))
    hours = await store.trends(since=t0 - HOUR, until=t0 + 2 * HOUR)
    assert hours == [(hour, "dock_to_stock", "", 2), (hour, "dock_to_stock", "seconds", 1800)]
    assert ("2026-12-07", "kpi", "dock_to_stock_mean_min", 15.0) in kpis(per_day(hours))
    await store.close()


@pytest.mark.broker
async def test_the_report_counts_two_shifts_across_a_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=tmp_path / "scan0")
    config = build(raw, tmp_path)
    # An hour from long ago, beyond `storage.trend_days` (90): pruned at start.
    store = await Store.open(config.storage.path)
    ancient = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp()) // HOUR
    await store.commit([], StateChanges(trends={(ancient, "move", ""): 7}))
    await store.close()
    moves = labels = 0
    async with Collector(mosquitto.port) as collector, ScannerSimulator(tmp_path / "scan0") as sim:
        for seed in (1, 2):  # two runs of the gateway: the counts survive the restart
            steps, truth = shift_script(pallets=3, locations=LOCATIONS, seed=seed, pause_s=(0, 0))
            bad = Type(corrupt_check_digit(sscc_label(sscc("0376123", seed))), aim="]C1")
            moves += len(truth)
            labels += sum(isinstance(step, Type) for step in steps) + 2  # and the two bad ones
            async with running(config) as gateway:
                await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
                await sim.run([Garbage(b"\x00junk\r"), bad, *steps])
                await collector.wait_for(lambda c, n=moves: len(c.on("/tx/move")) >= n)
                await collector.wait_for(lambda c, n=2 * seed: len(c.on("dock-1/event")) >= n)
    today = dt.datetime.now(dt.UTC).date()
    since = (today - dt.timedelta(days=1)).isoformat()
    site = str(site_file(tmp_path, str(config.storage.path)))
    # The command runs its own event loop: from a thread, as from a shell.
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["report", "--config", site, "--since", since]
    )
    assert result.exit_code == 0, result.output
    counted = {(r["kind"], r["code"]): float(r["count"]) for r in rows(result.output)}
    assert {r["day"] for r in rows(result.output)} == {today.isoformat()}
    published = [m.json() for m in collector.on("/tx/move")]
    assert counted["move", ""] == len({m["tx_id"] for m in published}) == moves
    origin = sum(1 for m in published if "origin_unknown" in m["exceptions"])
    assert counted.get(("move", "origin_unknown"), 0) == origin
    events = [m.json()["code"] for m in collector.on("dock-1/event")]
    assert counted["event", ""] == len(events)
    assert counted["event", "scan_rejected"] == events.count("scan_rejected") == 4
    # The KPIs: every label the scanner sent, and the share of them rejected.
    assert counted["kpi", "scans:fl-07"] == labels
    assert counted["kpi", "rejection_rate:fl-07"] == round(4 / labels, 4)
    assert counted["kpi", "receipts"] == 0
    everything = await asyncio.to_thread(
        CliRunner().invoke, app, ["report", "--config", site, "--since", "2019-12-31"]
    )
    assert "2020-01-01" not in everything.output  # the ancient hour was pruned at start


def test_the_report_says_what_is_wrong(tmp_path: Path) -> None:
    site = site_file(tmp_path, str(tmp_path / "nothing-here.db"))
    runner = CliRunner()
    args = ["report", "--config", str(site), "--since", "2026-12-01"]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 1
    assert "no database" in missing.output
    bad = runner.invoke(app, [*args, "--format", "xml"])
    assert bad.exit_code == 2
    assert "csv or table" in bad.output
