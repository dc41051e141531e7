"""Receiving and shipping rules (pure): ASNs, ship orders, exceptions, the ledger, closing."""

from __future__ import annotations

import dataclasses
import datetime as dt

from gateway.domain import (
    Asn,
    AsnLine,
    Direction,
    DockSummary,
    DockTransaction,
    Notice,
    PortalPass,
    Product,
    Scan,
    ScanKind,
    Severity,
    ShipLine,
    ShipOrder,
    TagEvidence,
)
from gateway.domain.epc import encode_sgtin96, encode_sscc96
from gateway.rules.receiving import DockRules, ledger_entries

T0 = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)
CP = "0614141"


def sgtin(item: str, serial: int) -> str:
    return encode_sgtin96(CP, item, serial).hex().upper()


def sscc_epc(ref: str) -> str:
    return encode_sscc96(CP, ref).hex().upper()


GTIN_A = "00614141123452"  # item reference 012345 (indicator 0)
GTIN_B = "00614141543212"


def a(serial: int) -> str:
    return sgtin("012345", serial)


def b(serial: int) -> str:
    return sgtin("054321", serial)


def passing(
    epcs: list[str], *, door: str = "D03", inbound: bool = True, at: float = 0.0
) -> PortalPass:
    start = T0.timestamp() + at
    return PortalPass(
        door=door,
        reader_id="r1",
        direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
        tags=tuple(TagEvidence(e, 5, (1, 3), -50, start, start + 2) for e in sorted(epcs)),
        started_at=start,
        ended_at=start + 2,
        separation_s=1.0 if inbound else -1.0,
    )


def asn(**lines: AsnLine) -> Asn:
    return Asn(asn_id="ASN-1", door="D03", lines=tuple(lines.values()), supplier="ACME")


def tx_of(decisions: list[object]) -> DockTransaction:
    (tx,) = [d for d in decisions if isinstance(d, DockTransaction)]
    return tx


def results(tx: DockTransaction) -> dict[str, str]:
    return {f"epc:{r.item.epc}" if r.item.epc else r.item.key: r.result for r in tx.items}


def test_pass_received_against_the_asn_by_gtin_quantity() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=3, gtin=GTIN_A)))
    tx = tx_of(rules.on_pass(passing([a(1), a(2), a(3)]), "receiving"))
    assert tx.kind == "receive"
    assert tx.reference == "ASN-1"
    assert tx.status == "accepted"
    assert set(results(tx).values()) == {"accepted"}
    assert all(r.line == 1 for r in tx.items)


def test_a_receipt_names_the_asns_supplier_and_the_same_pass_id_as_without() -> None:
    rules = DockRules()
    rules.set_asn(
        dataclasses.replace(
            asn(l1=AsnLine(line=1, quantity=3, gtin=GTIN_A)), supplier_gln="5901234123457"
        )
    )
    tx = tx_of(rules.on_pass(passing([a(1), a(2)]), "receiving"))
    assert tx.party_gln == "5901234123457"
    # The party is no part of what identifies the transaction.
    assert tx.tx_id == dataclasses.replace(tx, party_gln=None).tx_id


def test_unexpected_and_over_receipt_are_flagged_at_once() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=2, gtin=GTIN_A)))
    tx = tx_of(rules.on_pass(passing([a(1), a(2), a(3), b(1)]), "receiving"))
    got = results(tx)
    assert sorted(got.values()) == ["accepted", "accepted", "over_receipt", "unexpected"]
    assert got[f"epc:{b(1)}"] == "unexpected"
    assert tx.status == "accepted_with_exceptions"


def test_epc_and_sscc_lines() -> None:
    rules = DockRules()
    pallet = sscc_epc("1234567890")
    rules.set_asn(
        asn(
            l1=AsnLine(line=1, quantity=2, epcs=(a(7), a(8))),
            l2=AsnLine(line=2, quantity=1, sscc="106141412345678908"),
        )
    )
    tx = tx_of(rules.on_pass(passing([a(7), a(8), pallet]), "receiving"))
    assert tx.status == "accepted"
    assert {r.line for r in tx.items} == {1, 2}


def test_nothing_is_received_twice_also_after_a_restart() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=5, gtin=GTIN_A)))
    first = tx_of(rules.on_pass(passing([a(1), a(2)]), "receiving"))
    again = tx_of(rules.on_pass(passing([a(1), a(2)], at=60), "receiving"))
    assert set(results(again).values()) == {"already_received"}
    # A restart: the ledger the app stored is given back.
    restarted = DockRules(ledger=ledger_entries(first))
    restarted.set_asn(asn(l1=AsnLine(line=1, quantity=5, gtin=GTIN_A)))
    third = tx_of(restarted.on_pass(passing([a(1), a(2), a(3)], at=120), "receiving"))
    assert sorted(results(third).values()) == ["accepted", "already_received", "already_received"]
    summary, alarm = restarted.close("ASN-1", T0 + dt.timedelta(hours=1))
    assert isinstance(summary, DockSummary)
    assert [(line.done, line.short) for line in summary.lines] == [(3, 2)]
    assert isinstance(alarm, Notice) and alarm.code == "receipt_short"  # closed short


def test_expired_and_short_dated_lots_raise_an_alarm() -> None:
    rules = DockRules()
    rules.set_product(Product(gtin=GTIN_A, min_remaining_shelf_life_days=30))
    rules.set_asn(
        asn(
            l1=AsnLine(line=1, quantity=1, epcs=(a(1),), expiry=dt.date(2026, 11, 1)),
            l2=AsnLine(line=2, quantity=1, epcs=(a(2),), expiry=dt.date(2026, 12, 10)),
            l3=AsnLine(line=3, quantity=1, epcs=(a(3),), expiry=dt.date(2027, 6, 1)),
        )
    )
    decisions = rules.on_pass(passing([a(1), a(2), a(3)]), "receiving")
    got = results(tx_of(decisions))
    assert got == {
        f"epc:{a(1)}": "expired",
        f"epc:{a(2)}": "short_dated",
        f"epc:{a(3)}": "accepted",
    }
    alarms = [d for d in decisions if getattr(d, "code", None) == "expired_lot"]
    assert len(alarms) == 1


def test_lot_mismatch_from_a_scanned_label() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=4, gtin=GTIN_A, lot="L1")))
    label = Scan("rcv-1", T0, "raw", ScanKind.ITEM, gtin=GTIN_A, lot="L2", serial="99")
    tx = tx_of(rules.on_scan(label, "D03", "receiving"))
    assert [r.result for r in tx.items] == ["lot_mismatch"]
    assert tx.source == "scanner"


def test_unplanned_receipt_when_no_asn_is_open_at_the_door() -> None:
    rules = DockRules()
    rules.set_asn(
        Asn(asn_id="ASN-9", door="D07", lines=(AsnLine(line=1, quantity=1, gtin=GTIN_A),))
    )
    decisions = rules.on_pass(passing([a(1)]), "receiving")
    tx = tx_of(decisions)
    assert tx.status == "unplanned"
    assert tx.reference is None
    assert [getattr(d, "code", None) for d in decisions if not isinstance(d, DockTransaction)] == [
        "unplanned_receipt"
    ]


def test_close_by_command_and_by_idle_timeout() -> None:
    rules = DockRules(idle_close=dt.timedelta(minutes=10))
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=3, gtin=GTIN_A)))
    rules.on_pass(passing([a(1)]), "receiving")
    assert rules.on_tick(T0 + dt.timedelta(minutes=5)) == []
    summary, alarm = rules.on_tick(T0 + dt.timedelta(minutes=11))
    assert isinstance(summary, DockSummary)
    assert (summary.reason, summary.status) == ("idle", "short")
    assert isinstance(alarm, Notice) and alarm.severity is Severity.ERROR
    assert alarm.details["lines"] == [{"line": 1, "short": 2, "reported_short": 0}]
    assert summary.lines[0].short == 2
    assert rules.close("ASN-1", T0) == []  # already closed
    # After the close, the door has no open ASN: the next pallet is unplanned.
    assert tx_of(rules.on_pass(passing([a(5)], at=3600), "receiving")).status == "unplanned"


def test_wrong_pallet_at_a_shipping_door_raises_an_alarm() -> None:
    rules = DockRules()
    good, wrong = "106141412345678908", "106141419999999990"
    rules.set_order(
        ShipOrder(
            order_id="SO-1",
            door="D05",
            pallets=(good,),
            lines=(ShipLine(line=1, gtin=GTIN_B, quantity=2),),
        )
    )
    decisions = rules.on_pass(
        passing([sscc_epc("1234567890"), b(1), b(2)], door="D05", inbound=False), "shipping"
    )
    assert tx_of(decisions).status == "accepted"
    scan = Scan("shp-1", T0, "raw", ScanKind.PALLET, sscc=wrong)
    decisions = rules.on_scan(scan, "D05", "shipping")
    assert [r.result for r in tx_of(decisions).items] == ["not_on_order"]
    assert any(getattr(d, "code", None) == "wrong_pallet_at_shipping" for d in decisions)
    (summary,) = rules.close("SO-1", T0)
    assert isinstance(summary, DockSummary)
    assert summary.status == "complete"


def test_inbound_pass_at_a_shipping_door_is_not_a_shipment() -> None:
    rules = DockRules()
    rules.set_order(
        ShipOrder(order_id="SO-1", door="D05", pallets=("106141412345678908",), lines=())
    )
    assert rules.on_pass(passing([b(1)], door="D05", inbound=True), "shipping") == []


def test_transaction_ids_are_deterministic() -> None:
    def run() -> str:
        rules = DockRules()
        rules.set_asn(asn(l1=AsnLine(line=1, quantity=3, gtin=GTIN_A)))
        return tx_of(rules.on_pass(passing([a(1), a(2)]), "receiving")).tx_id

    assert run() == run()


def test_cases_ride_with_their_pallet_at_a_shipping_door() -> None:
    rules = DockRules()
    on_order = sscc_epc("1234567890")
    rules.set_order(
        ShipOrder(order_id="SO-2", door="D05", pallets=(decode_sscc(on_order),), lines=())
    )
    good = tx_of(
        rules.on_pass(passing([on_order, b(1), b(2)], door="D05", inbound=False), "shipping")
    )
    assert set(results(good).values()) == {"accepted"}
    wrong_pallet = sscc_epc("1999999999")
    bad = tx_of(
        rules.on_pass(passing([wrong_pallet, b(3)], door="D05", inbound=False, at=30), "shipping")
    )
    assert set(results(bad).values()) == {"not_on_order"}


def decode_sscc(epc_hex: str) -> str:
    from gateway.domain.epc import decode_epc

    value = decode_epc(epc_hex).sscc
    assert value is not None
    return value


def test_restart_keeps_over_counts_closes_once_and_closes_on_idle() -> None:
    rules = DockRules()
    plan = asn(l1=AsnLine(line=1, quantity=1, gtin=GTIN_A))
    rules.set_asn(plan)
    tx = tx_of(rules.on_pass(passing([a(1), a(2)]), "receiving"))
    assert sorted(results(tx).values()) == ["accepted", "over_receipt"]
    restart = T0 + dt.timedelta(hours=1)
    again = DockRules(
        ledger=ledger_entries(tx), idle_close=dt.timedelta(minutes=10), resumed_at=restart
    )
    again.set_asn(plan)
    # A receipt under way at the restart closes on idle, counted from the restart.
    assert again.on_tick(restart + dt.timedelta(minutes=5)) == []
    (summary,) = again.on_tick(restart + dt.timedelta(minutes=11))
    assert isinstance(summary, DockSummary)
    assert [(line.done, line.over) for line in summary.lines] == [(1, 1)]
    assert summary.status == "over"
    # Closed for good, also after another restart.
    third = DockRules(ledger=ledger_entries(tx), closed={"ASN-1"}, resumed_at=restart)
    third.set_asn(plan)
    assert third.close("ASN-1", restart) == []
    assert third.on_tick(restart + dt.timedelta(days=1)) == []


def test_an_item_refused_once_is_received_when_the_wms_puts_it_right() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=1, gtin=GTIN_A)))
    first = tx_of(rules.on_pass(passing([b(1)]), "receiving"))
    assert results(first) == {f"epc:{b(1)}": "unexpected"}
    rules.set_asn(
        asn(
            l1=AsnLine(line=1, quantity=1, gtin=GTIN_A), l2=AsnLine(line=2, quantity=1, gtin=GTIN_B)
        )
    )
    second = tx_of(rules.on_pass(passing([b(1)], at=60), "receiving"))
    assert results(second) == {f"epc:{b(1)}": "accepted"}
    assert ledger_entries(first) == []  # refused items are not recorded as received


def test_an_asn_withdrawn_mid_receipt_closes_it_with_what_was_done() -> None:
    rules = DockRules()
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=3, gtin=GTIN_A)))
    rules.on_pass(passing([a(1)]), "receiving")
    (summary,) = rules.delete("asn", "ASN-1", T0 + dt.timedelta(minutes=5))
    assert isinstance(summary, DockSummary)
    assert (summary.reason, summary.status, summary.lines[0].done) == ("withdrawn", "short", 1)
    assert rules.delete("asn", "ASN-1", T0) == []


def test_a_pallet_much_lighter_than_its_contents_is_flagged() -> None:
    from gateway.domain import Weighing

    rules = DockRules()
    rules.set_product(Product(gtin=GTIN_A, unit_weight_kg=10.0))
    rules.set_asn(asn(l1=AsnLine(line=1, quantity=10, gtin=GTIN_A)))
    # 3 cases of 10 kg on a 25 kg pallet: 55 kg expected.
    rules.on_weighing("D03", Weighing("scale-1", 55.8, T0.timestamp(), 1, "scale_stable"))
    ok = tx_of(rules.on_pass(passing([a(1), a(2), a(3)], at=10), "receiving"))
    assert ok.weight is not None
    assert ok.weight.within
    assert ok.status == "accepted"
    rules.on_weighing("D03", Weighing("scale-1", 40.0, T0.timestamp() + 60, 1, "scale_stable"))
    decisions = rules.on_pass(passing([a(4), a(5), a(6)], at=70), "receiving")
    light = tx_of(decisions)
    assert light.weight is not None
    assert not light.weight.within
    assert light.status == "accepted_with_exceptions"
    assert [getattr(d, "code", None) for d in decisions if not isinstance(d, DockTransaction)] == [
        "weight_mismatch"
    ]
    # A weighing is used once, and only when recent.
    assert tx_of(rules.on_pass(passing([a(7)], at=80), "receiving")).weight is None
    rules.on_weighing("D03", Weighing("scale-1", 35.0, T0.timestamp(), 1, "scale_stable"))
    assert tx_of(rules.on_pass(passing([a(8)], at=600), "receiving")).weight is None
