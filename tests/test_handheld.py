"""Handheld terminals (#15): scans applied exactly once, in each terminal's order, whatever the
network does to the batches; answers per scan; late scans; refused batches answered."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from gateway.app import Gateway
from gateway.domain import (
    HandheldAnswer,
    HandheldApplied,
    HandheldBatch,
    HandheldCode,
    HandheldResult,
    HandheldScan,
    Notice,
    Purpose,
    Reply,
    ReplyHandle,
    Scan,
    ScanKind,
)
from gateway.drivers.barcode import LabelRules
from gateway.ops.report import kpis, per_day
from gateway.rules.handheld import HandheldIntake, HandheldSettings
from gateway.wire.handheld import BadBatch, parse_batch
from simulators.gs1 import sscc, sscc_label
from simulators.handheld import HandheldTerminal, Misbehaviour
from tests.gateway_helpers import (
    ask_to_close,
    assert_valid,
    build,
    running,
    site_config,
    wait_reference_data,
)
from tests.mqtt_helpers import Collector, Mosquitto

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)


# --- the intake alone (pure) ------------------------------------------------------------------


def batch(*seqs: int, terminal: str = "pda-1", at: dt.datetime = T0) -> HandheldBatch:
    scans = tuple(
        HandheldScan(
            seq,
            Purpose.RECEIVE,
            T0 + dt.timedelta(seconds=seq),
            Scan(terminal, T0, f"label {seq}", ScanKind.PALLET, sscc=str(seq)),
            door="D03",
        )
        for seq in seqs
    )
    return HandheldBatch(terminal, scans, at, ReplyHandle(object()))


class Counter:
    """`apply`: records the order scans are carried out in."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, int]] = []

    def __call__(self, terminal: str, scan: HandheldScan) -> tuple[list[Any], HandheldResult]:
        self.applied.append((terminal, scan.seq))
        return [], HandheldResult(scan.seq, "accepted", tx_id=f"tx-{terminal}-{scan.seq}")


def answer(decisions: list[Any]) -> dict[int, HandheldResult]:
    (reply,) = [d for d in decisions if isinstance(d, Reply)]
    assert isinstance(reply.answer, HandheldAnswer)
    return {r.seq: r for r in reply.answer.results}


def test_repeats_and_reordered_batches_apply_each_scan_once_in_order() -> None:
    intake, apply = HandheldIntake(), Counter()
    first = answer(intake.on_batch(batch(3, 4), apply))  # 1 and 2 are late
    assert {s: r.result for s, r in first.items()} == {3: "held", 4: "held"}
    second = answer(intake.on_batch(batch(1, 2), apply))
    assert all(r.result == "accepted" and not r.repeat for r in second.values())
    assert apply.applied == [("pda-1", 1), ("pda-1", 2), ("pda-1", 3), ("pda-1", 4)]
    again = answer(intake.on_batch(batch(1, 2, 3, 4, 4), apply))  # sent again, one twice
    assert all(r.repeat and r.tx_id == f"tx-pda-1-{s}" for s, r in again.items())
    assert len(apply.applied) == 4
    # Another terminal's seqs are its own.
    answer(intake.on_batch(batch(1, terminal="pda-2"), apply))
    assert apply.applied[-1] == ("pda-2", 1)


def test_a_gap_is_given_up_on_after_the_wait_and_a_late_scan_is_still_applied_once() -> None:
    intake, apply = (
        HandheldIntake(HandheldSettings(reorder_wait=dt.timedelta(seconds=10))),
        Counter(),
    )
    intake.on_batch(batch(1), apply)
    intake.on_batch(batch(4, 5, at=T0), apply)  # 2 and 3 lost on the way
    assert intake.on_tick(T0 + dt.timedelta(seconds=9), apply) == []
    out = intake.on_tick(T0 + dt.timedelta(seconds=10), apply)
    (gap,) = [d for d in out if isinstance(d, Notice)]
    assert gap.code == "handheld_gap" and gap.details["missing_from"] == 2
    assert gap.details["missing_to"] == 3
    assert [s for _, s in apply.applied] == [1, 4, 5]
    late = answer(intake.on_batch(batch(3), apply))  # 3 comes after all
    assert late[3].result == "accepted" and not late[3].repeat
    assert answer(intake.on_batch(batch(3), apply))[3].repeat
    assert [s for _, s in apply.applied] == [1, 4, 5, 3]
    assert sum(isinstance(d, HandheldApplied) for d in out) == 2


def test_what_was_applied_before_a_restart_is_not_applied_again() -> None:
    apply = Counter()
    stored = [("pda-1", HandheldResult(s, "accepted", tx_id=f"t{s}")) for s in (1, 2, 3)]
    intake = HandheldIntake(HandheldSettings(remembered_per_terminal=2), applied=stored)
    results = answer(intake.on_batch(batch(1, 2, 3, 4), apply))
    assert results[1].result == HandheldCode.TOO_OLD  # beyond what is remembered
    assert results[2].repeat and results[3].repeat
    assert results[4].result == "accepted"
    assert apply.applied == [("pda-1", 4)]


def test_a_late_move_of_a_pallet_a_later_scan_moved_changes_nothing() -> None:
    intake = HandheldIntake(HandheldSettings(reorder_wait=dt.timedelta(seconds=10)))
    moved: list[int] = []

    def apply(_terminal: str, scan: HandheldScan) -> tuple[list[Any], HandheldResult]:
        moved.append(scan.seq)
        return [], HandheldResult(scan.seq, "moved", tx_id=f"m{scan.seq}")

    def move(seq: int) -> HandheldBatch:
        label = Scan("pda-1", T0, "p", ScanKind.PALLET, sscc="P1")
        to = Scan("pda-1", T0, "l", ScanKind.LOCATION, location=f"A-0{seq}-01")
        scan = HandheldScan(seq, Purpose.MOVE, T0, label, to=to)
        return HandheldBatch("pda-1", (scan,), T0, ReplyHandle(object()))

    intake.on_batch(move(1), apply)
    intake.on_batch(move(3), apply)  # 2 is late
    intake.on_tick(T0 + dt.timedelta(seconds=10), apply)  # given up on: 3 is applied
    late = answer(intake.on_batch(move(2), apply))[2]
    assert (late.result, moved) == ("late_scan", [1, 3])  # the pallet is not moved back
    assert answer(intake.on_batch(move(2), apply))[2].repeat


def test_a_scan_the_rules_raise_on_is_refused_and_the_others_stay_applied() -> None:
    intake, apply = HandheldIntake(), Counter()

    def flaky(terminal: str, scan: HandheldScan) -> tuple[list[Any], HandheldResult]:
        if scan.seq == 2:
            raise OverflowError("a bug")
        return apply(terminal, scan)

    decisions = intake.on_batch(batch(1, 2, 3), flaky)
    results = answer(decisions)
    assert [results[s].result for s in (1, 2, 3)] == ["accepted", "rejected", "accepted"]
    assert [n.code for n in decisions if isinstance(n, Notice)] == ["rules_error"]
    assert sum(isinstance(d, HandheldApplied) for d in decisions) == 3  # all three answered once
    assert intake.on_batch(batch(2), flaky) and intake.errors == 1  # a repeat is not re-run


def test_a_seq_far_ahead_is_refused_and_pruned_results_stay_too_old() -> None:
    intake, apply = HandheldIntake(HandheldSettings(max_ahead=100)), Counter()
    results = answer(intake.on_batch(batch(1, 10**7), apply))
    assert results[10**7].result == "rejected" and "too far ahead" in (results[10**7].detail or "")
    assert results[1].result == "accepted"
    # After a restart whose replay window dropped the results of seqs 1-50: they are too old,
    # the next one expected is 51.
    restarted = HandheldIntake(high_water={"pda-1": 50})
    later = answer(restarted.on_batch(batch(3, 51), apply))
    assert (later[3].result, later[51].result) == ("too_old", "accepted")


def test_a_scan_time_out_of_range_or_far_ahead_refuses_the_batch_with_its_reason() -> None:
    labels = LabelRules(re.compile(r"^A-\\d\\d-\\d\\d$"))
    now = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
    for when, why in [
        ("9999-12-31T23:59:59-01:00", "out of range"),
        ("2026-12-07T13:00:00+00:00", "after the gateway's time"),
        ("2026-01-01T00:00:00+00:00", "days old"),
        ("2026-12-07T12:00:00", "not a valid date-time"),  # RFC 3339 needs the offset
    ]:
        scan = {"seq": 1, "purpose": "receive", "scanned_at": when, "barcode": "x", "door": "D1"}
        parsed = parse_batch(json.dumps({"terminal": "t", "scans": [scan]}).encode(), now, labels)
        assert isinstance(parsed.batch, BadBatch) and why in parsed.batch.reason, (when, parsed)


# --- over MQTT, against the rules ---------------------------------------------------------------

PALLETS = [sscc("0614141", 700 + n) for n in range(12)]
STRANGER = sscc("0614141", 799)


def site(tmp_path: Path, port: int) -> Any:
    raw = site_config(tmp_path, broker_port=port, scanner=None)
    raw["handheld"] = {"enabled": True, "reorder_wait_s": 1.0}
    return build(raw, tmp_path)


async def subscribed(gateway: Gateway) -> None:
    async with asyncio.timeout(10):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)


async def publish_asn(port: int, asn_id: str, pallets: list[str]) -> None:
    asn = {
        "asn_id": asn_id,
        "door": "D03",
        "lines": [{"line": n, "sscc": p, "quantity": 1} for n, p in enumerate(pallets, 1)],
    }
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-wms") as wms:
        await wms.publish(f"wms/DC1/asn/{asn_id}", json.dumps(asn), qos=1, retain=True)


async def test_a_terminal_offline_then_replaying_badly_gets_each_scan_applied_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    await publish_asn(mosquitto.port, "ASN-H1", PALLETS)
    truth: dict[int, str] = {}
    async with (
        Collector(mosquitto.port) as collector,
        running(site(tmp_path, mosquitto.port)) as gateway,
        HandheldTerminal(
            "pda-1",
            mosquitto.port,
            batch_size=3,
            operator="anna",
            misbehaviour=Misbehaviour(max_copies=3, reorder=0.3, seed=5),
        ) as pda,
    ):
        await wait_reference_data(gateway, "asn/ASN-H1")
        pda.offline = True  # in the freezer: scans pile up
        for pallet in PALLETS[:8]:
            truth[pda.scan("receive", sscc_label(pallet), door="D03")] = "accepted"
        truth[pda.scan("receive", sscc_label(PALLETS[0]), door="D03")] = "already_received"
        truth[pda.scan("receive", sscc_label(STRANGER), door="D03")] = "unexpected"
        truth[pda.scan("receive", "]C1not a label", door="D03")] = "rejected"
        pda.offline = False
        for _ in range(5):
            await pda.flush()
            if not pda.pending:
                break
        assert pda.pending == 0
        assert {s: r["result"] for s, r in pda.results.items()} == truth
        assert pda.disagreements == 0
        for result in pda.results.values():
            if result["result"] != "rejected":
                assert result["tx_id"]
        # One receive transaction per scan applied (not per copy sent), the label refused.
        await collector.wait_for(lambda c: len(c.on("/tx/receive")) >= 10)
        receives = {m.json()["tx_id"] for m in collector.on("/tx/receive")}
        made = {r["tx_id"] for r in pda.results.values() if r["tx_id"]}
        assert receives == made and len(made) == 10
        # The report counts the terminal's scans and its operator's, as applied (not as sent).
        assert gateway.store is not None
        hours = await gateway.store.trends(since=0, until=2e9)
        kpi = {code: n for _, kind, code, n in kpis(per_day(hours)) if kind == "kpi"}
        assert (kpi["scans:pda-1"], kpi["operator_scans:anna"]) == (11, 11)
        assert kpi["operator_rejection_rate:anna"] == round(1 / 11, 4)
        # The receipt closes; a scan made before, sent after, is a late scan and changes nothing.
        await ask_to_close(mosquitto.port, "ASN-H1")
        late = pda.scan("receive", sscc_label(PALLETS[9]), door="D03", reference="ASN-H1")
        await pda.flush()
        assert pda.results[late]["result"] == "late_scan"
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-H1", b"", qos=1, retain=True)


async def test_a_refused_batch_is_answered_with_its_reason(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with (
        running(site(tmp_path, mosquitto.port)) as gateway,
        HandheldTerminal("pda-9", mosquitto.port) as pda,
    ):
        await subscribed(gateway)
        answer = await pda.send([{"seq": 0, "purpose": "receive", "barcode": "x"}])
        assert_valid("handheld-answer", answer)
        assert answer["ok"] is False and answer["terminal"] == "pda-9"
        assert "seq" in answer["error"] or "required" in answer["error"]


TOKENS = {"pda-1": "token-of-pda-1-xxxx", "pda-2": "token-of-pda-2-xxxx"}


async def test_over_http_with_a_terminal_token(tmp_path: Path, mosquitto: Mosquitto) -> None:
    await publish_asn(mosquitto.port, "ASN-H2", PALLETS[:3])
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    raw["handheld"] = {
        "enabled": True,
        "tokens": TOKENS,
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
    }
    scans = [
        {
            "seq": n,
            "purpose": "receive",
            "scanned_at": (T0 + dt.timedelta(seconds=n)).isoformat(),
            "barcode": sscc_label(p),
            "door": "D03",
        }
        for n, p in enumerate(PALLETS[:3], 1)
    ]
    body = {"terminal": "pda-1", "scans": scans}
    async with running(build(raw, tmp_path)) as gateway, aiohttp.ClientSession() as http:
        await wait_reference_data(gateway, "asn/ASN-H2")
        async with asyncio.timeout(10):
            while gateway.handheld_port is None:
                await asyncio.sleep(0.02)
        url = f"http://127.0.0.1:{gateway.handheld_port}/handheld/scans"

        async def post(payload: Any, token: str | None) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            async with http.post(url, data=data, headers=headers) as response:
                return response.status, await response.json()

        status, answer = await post(body, TOKENS["pda-1"])
        assert status == 200, answer
        assert_valid("handheld-answer", answer)
        assert [r["result"] for r in answer["results"]] == ["accepted"] * 3
        status, again = await post(body, TOKENS["pda-1"])  # the same batch again
        assert status == 200 and all(r["repeat"] for r in again["results"])
        assert [r["tx_id"] for r in again["results"]] == [r["tx_id"] for r in answer["results"]]
        # No token, a wrong one, another terminal's, a bad batch.
        assert (await post(body, None))[0] == 401
        assert (await post(body, "not-a-token-at-all-xx"))[0] == 401
        status, other = await post(body, TOKENS["pda-2"])
        assert status == 403 and "pda-1" in other["error"]
        status, bad = await post(b"{not json", TOKENS["pda-2"])
        assert status == 400 and bad["ok"] is False and bad["error"]
        assert_valid("handheld-answer", bad)
        assert (await post(b"x" * (300 * 1024), TOKENS["pda-2"]))[0] == 413
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-H2", b"", qos=1, retain=True)


async def test_damage_and_short_reports_reach_the_receipt_its_summary_alarms_and_epcis(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallets = PALLETS[:3]
    await publish_asn(mosquitto.port, "ASN-H3", pallets)
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    raw["handheld"] = {"enabled": True}
    raw["epcis"] = {"enabled": True, "read_point_base": "urn:epc:id:sgln:0614141.00001"}
    async with (
        Collector(mosquitto.port) as collector,
        running(build(raw, tmp_path)) as gateway,
        HandheldTerminal("pda-1", mosquitto.port, operator="li") as pda,
    ):
        await wait_reference_data(gateway, "asn/ASN-H3")
        received = pda.scan("receive", sscc_label(pallets[0]), door="D03")
        crushed = pda.scan("damage", sscc_label(pallets[0]), door="D03", reason="crushed")
        missing = pda.scan(
            "short", sscc_label(pallets[2]), door="D03", reason="not_shipped", quantity=1
        )
        unknown = pda.scan("damage", sscc_label(pallets[1]), door="D03", reason="eaten")
        stranger = pda.scan("damage", sscc_label(STRANGER), door="D03", reason="wet")
        await pda.flush()
        got = {seq: pda.results[seq] for seq in (received, crushed, missing, unknown, stranger)}
        assert [r["result"] for r in got.values()] == [
            "accepted",
            "damaged",
            "reported_short",
            "rejected",
            "rejected",
        ]
        assert "eaten" in got[unknown]["detail"] and "crushed" in got[unknown]["detail"]
        assert "no line" in got[stranger]["detail"] or "on no line" in got[stranger]["detail"]
        await collector.wait_for(lambda c: len(c.on("/alarm")) >= 2)
        codes = sorted(m.json()["code"] for m in collector.on("/alarm"))
        assert codes == ["damage_reported", "short_reported"]
        report = next(
            m.json()
            for m in collector.on("/tx/receive")
            if m.json()["tx_id"] == got[crushed]["tx_id"]
        )
        assert_valid("receive", report)
        assert report["status"] == "reported"
        assert [(e["code"], e["detail"]) for e in report["exceptions"]] == [("damaged", "crushed")]
        # The receipt closes: its summary counts the reports, and it closes short: an alarm.
        await ask_to_close(mosquitto.port, "ASN-H3")
        await collector.wait_for(lambda c: c.on("/receipt") and len(c.on("/alarm")) >= 3)
        (summary,) = [m.json() for m in collector.on("/receipt")]
        assert_valid("dock-summary", summary)
        lines = {ln["line"]: ln for ln in summary["lines"]}
        assert (lines[1]["done"], lines[1]["damaged"]) == (1, 1)
        assert (lines[3]["short"], lines[3]["reported_short"]) == (1, 1)
        assert "receipt_short" in [m.json()["code"] for m in collector.on("/alarm")]
        for alarm in collector.on("/alarm"):
            assert_valid("event", alarm.json())
        dispositions = {
            e["disposition"]
            for m in collector.on("/epcis")
            for e in m.json()["epcisBody"]["eventList"]
        }
        assert "damaged" in dispositions
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-H3", b"", qos=1, retain=True)


async def test_counts_are_checked_against_where_the_gateway_has_each_pallet(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    await publish_asn(mosquitto.port, "ASN-H4", PALLETS[:2])
    async with (
        Collector(mosquitto.port) as collector,
        running(site(tmp_path, mosquitto.port)) as gateway,
        HandheldTerminal("pda-4", mosquitto.port) as pda,
    ):
        await wait_reference_data(gateway, "asn/ASN-H4")
        pda.scan("receive", sscc_label(PALLETS[0]), door="D03")
        pda.scan("move", sscc_label(PALLETS[0]), location="A-01-01")
        here = pda.scan("count", sscc_label(PALLETS[0]), location="A-01-01")
        there = pda.scan("count", sscc_label(PALLETS[0]), location="B-02-02")
        nowhere = pda.scan("count", sscc_label(STRANGER), location="B-02-02")
        await pda.flush()
        assert [pda.results[s]["result"] for s in (here, there, nowhere)] == [
            "counted",
            "misplaced",
            "unknown_pallet",
        ]
        assert pda.results[there]["detail"] == "recorded at A-01-01"
        await collector.wait_for(lambda c: len(c.on("dock-1/event")) >= 2)
        events = [m.json() for m in collector.on("dock-1/event")]
        assert [e["code"] for e in events] == ["count_mismatch", "count_mismatch"]
        assert (
            collector.on("/tx/move") and len(collector.on("/tx/move")) == 1
        )  # counts move nothing
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-H4", b"", qos=1, retain=True)
