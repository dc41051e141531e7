"""The forklift move rule: every row of the transition table, ids, origins, stations, timeouts.

The rule is pure: scans (with their own timestamps) in, decisions out. The tests drive it with
hand-built `Scan` / `RejectedScan` values and assert on the decisions and on `location_of`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import (
    Decision,
    DeviceGap,
    Event,
    MoveTransaction,
    Notice,
    RejectedScan,
    Scan,
    ScanKind,
    Severity,
)
from gateway.rules.moves import ForkliftMoves, MoveSettings

T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC)
TIMEOUT = dt.timedelta(seconds=60)
WINDOW = dt.timedelta(seconds=2)
TICK = dt.timedelta(microseconds=1)

# Valid SSCCs (company prefix 7612345, serial references 1 to 3).
P1 = "376123450000000016"
P2 = "376123450000000023"
P3 = "376123450000000030"
GTIN = "09506000134352"


def t(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def pallet(sscc: str, at: dt.datetime, device: str = "fl-1") -> Scan:
    return Scan(device, at, "00" + sscc, ScanKind.PALLET, sscc=sscc)


def location(where: str, at: dt.datetime, device: str = "fl-1") -> Scan:
    return Scan(device, at, where, ScanKind.LOCATION, location=where)


def item(at: dt.datetime, device: str = "fl-1", gtin: str = GTIN) -> Scan:
    return Scan(device, at, "01" + gtin, ScanKind.ITEM, gtin=gtin)


def rejected(
    at: dt.datetime, device: str = "fl-1", reason: str = "bad check digit"
) -> RejectedScan:
    return RejectedScan(device, at, "00376123450000000013", reason)


def rule(
    pallet_locations: dict[str, str] | None = None,
    stations: dict[str, str] | None = None,
    timeout: dt.timedelta = TIMEOUT,
    repeat_window: dt.timedelta = WINDOW,
) -> ForkliftMoves:
    return ForkliftMoves(MoveSettings(timeout, repeat_window), pallet_locations, stations)


def feed(moves: ForkliftMoves, *events: Event) -> list[Decision]:
    out: list[Decision] = []
    for event in events:
        out.extend(moves.on_event(event))
    return out


def only_move(decisions: list[Decision]) -> MoveTransaction:
    assert len(decisions) == 1, decisions
    (decision,) = decisions
    assert isinstance(decision, MoveTransaction), decision
    return decision


def only_notice(decisions: list[Decision], code: str) -> Notice:
    assert len(decisions) == 1, decisions
    (decision,) = decisions
    assert isinstance(decision, Notice), decision
    assert decision.code == code
    return decision


def codes(decisions: list[Decision]) -> list[str]:
    return ["move" if isinstance(d, MoveTransaction) else d.code for d in decisions]


# --- Idle -------------------------------------------------------------------------------------


def test_idle_pallet_scan_decides_nothing_and_waits_for_a_location() -> None:
    moves = rule()
    assert moves.on_event(pallet(P1, t(0))) == []
    move = only_move(moves.on_event(location("A-01-02", t(5))))
    assert move.sscc == P1
    assert move.to_location == "A-01-02"
    assert move.device_id == "fl-1"
    assert move.pallet_scanned_at == t(0)
    assert move.confirmed_at == t(5)


def test_idle_location_scan_gives_location_without_pallet_and_stays_idle() -> None:
    moves = rule()
    notice = only_notice(moves.on_event(location("A-01-02", t(0))), "location_without_pallet")
    assert notice.at == t(0)
    assert notice.device_id == "fl-1"
    assert notice.location == "A-01-02"
    assert notice.severity is Severity.WARNING
    assert notice.details == {"raw": "A-01-02"}
    # Still idle: another location is refused the same way, and no pallet moved anywhere.
    only_notice(moves.on_event(location("B-01-01", t(10))), "location_without_pallet")
    assert moves.location_of(P1) is None


# --- Awaiting(p) --------------------------------------------------------------------------------


def test_awaiting_then_location_records_a_move_and_returns_to_idle() -> None:
    moves = rule()
    move = only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(3))))
    assert move == MoveTransaction(
        sscc=P1,
        from_location=None,
        to_location="A-01-02",
        device_id="fl-1",
        pallet_scanned_at=t(0),
        confirmed_at=t(3),
        exceptions=("origin_unknown",),
    )
    assert moves.location_of(P1) == "A-01-02"
    # Back to idle: the next location has no pallet to go with.
    only_notice(moves.on_event(location("B-02-03", t(10))), "location_without_pallet")
    assert moves.location_of(P1) == "A-01-02"


def test_same_pallet_again_outside_repeat_window_restarts_the_timer() -> None:
    moves = rule()
    assert feed(moves, pallet(P1, t(0)), pallet(P1, t(30))) == []
    assert moves.repeats_ignored == 0
    # 80 s after the first read but only 50 s after the second: still within the timeout.
    move = only_move(moves.on_event(location("A-01-02", t(80))))
    assert move.pallet_scanned_at == t(30)
    assert move.confirmed_at == t(80)


def test_same_pallet_again_restarts_the_timer_as_seen_by_on_tick() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)), pallet(P1, t(30)))
    assert moves.on_tick(t(61)) == []  # would have expired without the restart
    notice = only_notice(moves.on_tick(t(90) + TICK), "move_timeout")
    assert notice.at == t(90)


def test_another_pallet_abandons_the_first_and_waits_for_the_second() -> None:
    moves = rule(pallet_locations={P1: "A-01-01"})
    assert moves.on_event(pallet(P1, t(0))) == []
    notice = only_notice(moves.on_event(pallet(P2, t(5))), "move_abandoned")
    assert notice.at == t(5)
    assert notice.device_id == "fl-1"
    assert notice.details == {"sscc": P1, "next_sscc": P2}
    assert P1 in notice.message
    move = only_move(moves.on_event(location("B-01-01", t(8))))
    assert move.sscc == P2
    assert move.pallet_scanned_at == t(5)
    # The abandoned pallet stays where it was.
    assert moves.location_of(P1) == "A-01-01"
    assert moves.location_of(P2) == "B-01-01"


def test_abandoning_restarts_the_clock_for_the_new_pallet() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)), pallet(P2, t(50)))
    # 100 s after P1, 50 s after P2: P2 is still waiting.
    assert only_move(moves.on_event(location("A-01-02", t(100)))).sscc == P2


def test_location_where_pallet_already_is_gives_info_notice_and_returns_to_idle() -> None:
    moves = rule(pallet_locations={P1: "A-01-02"})
    moves.on_event(pallet(P1, t(0)))
    notice = only_notice(moves.on_event(location("A-01-02", t(4))), "already_at_location")
    assert notice.severity is Severity.INFO
    assert notice.at == t(4)
    assert notice.device_id == "fl-1"
    assert notice.location == "A-01-02"
    assert notice.details == {"sscc": P1}
    assert moves.location_of(P1) == "A-01-02"
    # Idle again: a different location does not move P1.
    only_notice(moves.on_event(location("B-01-01", t(10))), "location_without_pallet")
    assert moves.location_of(P1) == "A-01-02"


def test_already_at_location_also_applies_to_a_location_learned_from_a_move() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)), location("A-01-02", t(1)))
    decisions = feed(moves, pallet(P1, t(10)), location("A-01-02", t(11)))
    only_notice(decisions, "already_at_location")


# --- Timeouts -----------------------------------------------------------------------------------


def test_timeout_via_on_tick_is_reported_once_at_the_deadline() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    assert moves.on_tick(t(60)) == []  # exactly the timeout is still in time
    notice = only_notice(moves.on_tick(t(60) + TICK), "move_timeout")
    assert notice.at == t(60)  # when it expired, not when the tick happened
    assert notice.device_id == "fl-1"
    assert notice.details == {"sscc": P1}
    assert notice.severity is Severity.WARNING
    assert moves.on_tick(t(500)) == []  # reported once
    only_notice(moves.on_event(location("A-01-02", t(501))), "location_without_pallet")
    assert moves.location_of(P1) is None


def test_location_exactly_at_the_timeout_still_moves() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    assert only_move(moves.on_event(location("A-01-02", t(60)))).to_location == "A-01-02"


def test_timeout_via_a_later_scan_comes_before_that_scans_own_decision() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    decisions = moves.on_event(location("A-01-02", t(60) + TICK))
    assert codes(decisions) == ["move_timeout", "location_without_pallet"]
    assert isinstance(decisions[0], Notice)
    assert decisions[0].at == t(60)
    assert moves.location_of(P1) is None


def test_timeout_is_detected_by_another_devices_scan() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0), device="fl-1"))
    decisions = moves.on_event(item(t(61), device="fl-2"))
    assert codes(decisions) == ["move_timeout", "unexpected_label"]
    assert decisions[0].device_id == "fl-1"
    assert decisions[1].device_id == "fl-2"


def test_timeout_is_detected_by_a_rejected_scan() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    assert codes(moves.on_event(rejected(t(61)))) == ["move_timeout", "scan_rejected"]


def test_pallet_after_timeout_starts_a_fresh_wait_without_abandon_notice() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    assert codes(moves.on_event(pallet(P2, t(70)))) == ["move_timeout"]
    assert only_move(moves.on_event(location("A-01-02", t(75)))).sscc == P2


def test_custom_timeout_is_honoured() -> None:
    moves = rule(timeout=dt.timedelta(seconds=5))
    moves.on_event(pallet(P1, t(0)))
    assert moves.on_tick(t(5)) == []
    notice = only_notice(moves.on_tick(t(6)), "move_timeout")
    assert notice.at == t(5)
    assert "5 s" in notice.message


def test_timeouts_of_several_devices_expire_together() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0), "fl-1"), pallet(P2, t(10), "fl-2"), pallet(P3, t(50), "fl-3"))
    decisions = moves.on_tick(t(71))
    assert all(isinstance(d, Notice) for d in decisions)
    assert sorted((d.device_id, d.details["sscc"]) for d in decisions if isinstance(d, Notice)) == [
        ("fl-1", P1),
        ("fl-2", P2),
    ]
    assert set(codes(decisions)) == {"move_timeout"}
    # fl-3 is still waiting.
    assert only_move(moves.on_event(location("C-01-01", t(72), "fl-3"))).sscc == P3


# --- Repeats ------------------------------------------------------------------------------------


def test_repeated_pallet_within_window_is_ignored_and_does_not_restart_timer() -> None:
    moves = rule()
    assert feed(moves, pallet(P1, t(0)), pallet(P1, t(1))) == []
    assert moves.repeats_ignored == 1
    # The timer still runs from the first read.
    notice = only_notice(moves.on_tick(t(60.5)), "move_timeout")
    assert notice.at == t(60)


def test_repeat_window_boundary_is_inclusive() -> None:
    moves = rule()
    only_notice(moves.on_event(location("A-01-02", t(0))), "location_without_pallet")
    assert moves.on_event(location("A-01-02", t(2))) == []  # exactly the window: a double read
    assert moves.repeats_ignored == 1
    # Just past the window (measured from the last read) it is a new scan.
    later = t(4) + TICK
    only_notice(moves.on_event(location("A-01-02", later)), "location_without_pallet")
    assert moves.repeats_ignored == 1


def test_repeat_window_is_measured_from_the_previous_read() -> None:
    # A scanner in continuous mode held over a label keeps reading it: every read is a repeat.
    moves = rule()
    only_notice(moves.on_event(location("A-01-02", t(0))), "location_without_pallet")
    assert feed(moves, *(location("A-01-02", t(s)) for s in (1.5, 3.0, 4.5, 6.0))) == []
    assert moves.repeats_ignored == 4


def test_location_double_read_after_a_move_is_silent() -> None:
    moves = rule()
    only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(3))))
    assert moves.on_event(location("A-01-02", t(3.2))) == []  # not location_without_pallet
    assert moves.repeats_ignored == 1


def test_item_double_read_is_reported_once() -> None:
    moves = rule()
    only_notice(moves.on_event(item(t(0))), "unexpected_label")
    assert moves.on_event(item(t(0.5))) == []
    assert moves.repeats_ignored == 1


def test_a_different_code_in_between_breaks_the_repeat() -> None:
    moves = rule()
    only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(0.5))))
    # P1 again right away: last read was the location, so this is a new pallet scan.
    assert moves.on_event(pallet(P1, t(1))) == []
    assert moves.repeats_ignored == 0
    move = only_move(moves.on_event(location("B-01-01", t(1.5))))
    assert (move.from_location, move.to_location) == ("A-01-02", "B-01-01")


def test_repeats_are_per_scanner() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0), "fl-1"))
    assert moves.on_event(pallet(P1, t(0.5), "fl-2")) == []
    assert moves.repeats_ignored == 0
    # fl-2 really is waiting for P1.
    move = only_move(moves.on_event(location("A-01-02", t(1), "fl-2")))
    assert (move.sscc, move.device_id) == (P1, "fl-2")


# --- Items and rejected scans -------------------------------------------------------------------


def test_item_label_gives_unexpected_label_without_disturbing_a_waiting_pallet() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    notice = only_notice(moves.on_event(item(t(3))), "unexpected_label")
    assert notice.at == t(3)
    assert notice.device_id == "fl-1"
    assert notice.details == {"raw": "01" + GTIN}
    move = only_move(moves.on_event(location("A-01-02", t(6))))
    assert (move.sscc, move.pallet_scanned_at) == (P1, t(0))


def test_item_label_does_not_restart_the_timer() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)), item(t(50)))
    assert codes(moves.on_event(location("A-01-02", t(61)))) == [
        "move_timeout",
        "location_without_pallet",
    ]


def test_item_label_while_idle_leaves_the_scanner_idle() -> None:
    moves = rule()
    only_notice(moves.on_event(item(t(0))), "unexpected_label")
    only_notice(moves.on_event(location("A-01-02", t(5))), "location_without_pallet")


def test_pallet_scan_without_sscc_is_an_unexpected_label() -> None:
    moves = rule()
    odd = Scan("fl-1", t(0), "00?", ScanKind.PALLET)
    only_notice(moves.on_event(odd), "unexpected_label")
    only_notice(moves.on_event(location("A-01-02", t(5))), "location_without_pallet")


def test_rejected_scan_gives_scan_rejected_without_disturbing_a_waiting_pallet() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0)))
    notice = only_notice(moves.on_event(rejected(t(2), reason="bad check digit")), "scan_rejected")
    assert notice.at == t(2)
    assert notice.device_id == "fl-1"
    assert notice.severity is Severity.WARNING
    assert "bad check digit" in notice.message
    assert notice.details == {"raw": "00376123450000000013", "reason": "bad check digit"}
    move = only_move(moves.on_event(location("A-01-02", t(4))))
    assert (move.sscc, move.pallet_scanned_at) == (P1, t(0))


def test_rejected_scan_while_idle_leaves_the_scanner_idle() -> None:
    moves = rule()
    only_notice(moves.on_event(rejected(t(0))), "scan_rejected")
    only_notice(moves.on_event(location("A-01-02", t(5))), "location_without_pallet")


def test_rejected_scans_are_never_swallowed_as_repeats() -> None:
    moves = rule()
    assert codes(feed(moves, rejected(t(0)), rejected(t(0.1)))) == ["scan_rejected"] * 2
    assert moves.repeats_ignored == 0


# --- Origins and location_of --------------------------------------------------------------------


def test_unknown_origin_is_flagged() -> None:
    moves = rule()
    assert moves.location_of(P1) is None
    move = only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(1))))
    assert move.from_location is None
    assert move.exceptions == ("origin_unknown",)


def test_origin_seeded_from_storage_gives_from_location() -> None:
    moves = rule(pallet_locations={P1: "R-01-01"})
    assert moves.location_of(P1) == "R-01-01"
    move = only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(1))))
    assert move.from_location == "R-01-01"
    assert move.exceptions == ()
    assert moves.location_of(P1) == "A-01-02"


def test_second_move_knows_the_origin_from_the_first() -> None:
    moves = rule()
    first = only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(1))))
    second = only_move(feed(moves, pallet(P1, t(10)), location("B-03-04", t(12))))
    assert first.exceptions == ("origin_unknown",)
    assert (second.from_location, second.to_location) == ("A-01-02", "B-03-04")
    assert second.exceptions == ()


def test_seed_mapping_is_copied_not_mutated() -> None:
    seed = {P1: "R-01-01"}
    moves = rule(pallet_locations=seed)
    only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(1))))
    assert seed == {P1: "R-01-01"}
    seed[P1] = "Z-99-99"
    assert moves.location_of(P1) == "A-01-02"


def test_notices_never_change_locations() -> None:
    moves = rule(pallet_locations={P1: "R-01-01"})
    feed(
        moves,
        pallet(P1, t(0)),
        pallet(P2, t(1)),  # abandons P1
        location("R-01-01", t(2)),  # moves P2 (origin unknown)
        pallet(P1, t(3)),
        item(t(4)),
        rejected(t(5)),
    )
    moves.on_tick(t(200))  # P1 times out
    assert moves.location_of(P1) == "R-01-01"
    assert moves.location_of(P2) == "R-01-01"
    assert moves.location_of(P3) is None


# --- tx_id ----------------------------------------------------------------------------------------


def _replay(confirm_at: dt.datetime, device: str = "fl-1") -> MoveTransaction:
    moves = rule(pallet_locations={P1: "R-01-01"})
    return only_move(feed(moves, pallet(P1, t(0), device), location("A-01-02", confirm_at, device)))


def test_tx_id_is_deterministic_for_the_same_scans() -> None:
    first, second = _replay(t(5)), _replay(t(5))
    assert first is not second
    assert first == second
    assert first.tx_id == second.tx_id
    assert uuid.UUID(first.tx_id).version == 5


def test_tx_id_differs_with_confirm_time() -> None:
    assert _replay(t(5)).tx_id != _replay(t(5) + TICK).tx_id


def test_tx_id_differs_with_device() -> None:
    assert _replay(t(5), "fl-1").tx_id != _replay(t(5), "fl-2").tx_id


def test_tx_id_differs_with_origin_and_destination() -> None:
    base = _replay(t(5))
    moves = rule()  # origin unknown this time
    unknown = only_move(feed(moves, pallet(P1, t(0)), location("A-01-02", t(5))))
    moves = rule(pallet_locations={P1: "R-01-01"})
    elsewhere = only_move(feed(moves, pallet(P1, t(0)), location("A-01-03", t(5))))
    assert len({base.tx_id, unknown.tx_id, elsewhere.tx_id}) == 3


# --- Several scanners ----------------------------------------------------------------------------


def test_two_scanners_interleave_independently() -> None:
    moves = rule(pallet_locations={P2: "R-09-09"})
    assert moves.on_event(pallet(P1, t(0), "fl-1")) == []
    assert moves.on_event(pallet(P2, t(1), "fl-2")) == []  # no abandon: a different scanner
    first = only_move(moves.on_event(location("A-01-01", t(2), "fl-1")))
    second = only_move(moves.on_event(location("B-02-02", t(3), "fl-2")))
    assert (first.sscc, first.device_id, first.to_location) == (P1, "fl-1", "A-01-01")
    assert (second.sscc, second.device_id, second.to_location) == (P2, "fl-2", "B-02-02")
    assert second.from_location == "R-09-09"
    assert first.tx_id != second.tx_id


def test_location_on_an_idle_scanner_does_not_consume_another_scanners_pallet() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0), "fl-1"))
    only_notice(moves.on_event(location("A-01-01", t(1), "fl-2")), "location_without_pallet")
    move = only_move(moves.on_event(location("B-01-01", t(2), "fl-1")))
    assert (move.sscc, move.to_location) == (P1, "B-01-01")


def test_pallet_moved_by_one_scanner_has_that_origin_for_the_other() -> None:
    moves = rule()
    moves.on_event(pallet(P1, t(0), "fl-2"))  # fl-2 starts to wait for P1
    only_move(feed(moves, pallet(P1, t(1), "fl-1"), location("A-01-01", t(2), "fl-1")))
    move = only_move(moves.on_event(location("B-01-01", t(3), "fl-2")))
    assert (move.from_location, move.to_location) == ("A-01-01", "B-01-01")


# --- Stations -------------------------------------------------------------------------------------


def test_station_moves_a_pallet_as_soon_as_it_is_read() -> None:
    moves = rule(pallet_locations={P1: "A-01-02"}, stations={"dock-1": "DOCK-1"})
    move = only_move(moves.on_event(pallet(P1, t(7), "dock-1")))
    assert move == MoveTransaction(
        sscc=P1,
        from_location="A-01-02",
        to_location="DOCK-1",
        device_id="dock-1",
        pallet_scanned_at=t(7),
        confirmed_at=t(7),
        exceptions=(),
    )
    assert moves.location_of(P1) == "DOCK-1"


def test_station_with_unknown_origin_flags_it() -> None:
    moves = rule(stations={"dock-1": "DOCK-1"})
    assert only_move(moves.on_event(pallet(P1, t(0), "dock-1"))).exceptions == ("origin_unknown",)


def test_station_pallets_back_to_back_are_two_moves_not_an_abandon() -> None:
    moves = rule(stations={"dock-1": "DOCK-1"})
    decisions = feed(moves, pallet(P1, t(0), "dock-1"), pallet(P2, t(1), "dock-1"))
    assert codes(decisions) == ["move", "move"]
    assert [d.sscc for d in decisions if isinstance(d, MoveTransaction)] == [P1, P2]
    assert moves.on_tick(t(1000)) == []  # nothing left waiting, so nothing times out


def test_station_rereading_a_pallet_already_there_is_already_at_location() -> None:
    moves = rule(stations={"dock-1": "DOCK-1"})
    only_move(moves.on_event(pallet(P1, t(0), "dock-1")))
    assert moves.on_event(pallet(P1, t(1), "dock-1")) == []  # a double read
    only_notice(moves.on_event(pallet(P1, t(10), "dock-1")), "already_at_location")


def test_station_does_not_wait_for_a_location() -> None:
    moves = rule(stations={"dock-1": "DOCK-1"})
    moves.on_event(pallet(P1, t(0), "dock-1"))
    only_notice(moves.on_event(location("A-01-01", t(5), "dock-1")), "location_without_pallet")
    assert moves.location_of(P1) == "DOCK-1"


def test_station_only_applies_to_its_own_scanner() -> None:
    moves = rule(stations={"dock-1": "DOCK-1"})
    assert moves.on_event(pallet(P1, t(0), "fl-1")) == []
    assert moves.location_of(P1) is None
    assert only_move(moves.on_event(location("A-01-01", t(1), "fl-1"))).to_location == "A-01-01"


# --- Properties -----------------------------------------------------------------------------------

SSCCS = (P1, P2, P3)
LOCATIONS = ("A-01-01", "B-02-02", "DOCK-1")
GTINS = (GTIN, "05901234123457")
DEVICES = ("fl-1", "fl-2", "dock-1")
# Gaps between consecutive events, in microseconds, straddling the repeat window and the timeout.
GAPS_US: tuple[int, ...] = (0, 1_000, 500_000, 1_999_999, 2_000_000, 2_000_001, 10_000_000)
GAPS_US += (30_000_000, 59_999_999, 60_000_000, 60_000_001, 90_000_000)


@st.composite
def scan_sequences(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, str], list[Event]]:
    seed = draw(st.dictionaries(st.sampled_from(SSCCS), st.sampled_from(LOCATIONS)))
    stations = {"dock-1": "DOCK-1"} if draw(st.booleans()) else {}
    devices = DEVICES[: draw(st.integers(1, 3))]
    at = T0
    events: list[Event] = []
    for _ in range(draw(st.integers(0, 40))):
        at += dt.timedelta(microseconds=draw(st.sampled_from(GAPS_US)))
        device = draw(st.sampled_from(devices))
        kind = draw(st.sampled_from(("pallet", "pallet", "location", "location", "item", "bad")))
        if kind == "pallet":
            events.append(pallet(draw(st.sampled_from(SSCCS)), at, device))
        elif kind == "location":
            events.append(location(draw(st.sampled_from(LOCATIONS)), at, device))
        elif kind == "item":
            events.append(item(at, device, draw(st.sampled_from(GTINS))))
        else:
            events.append(rejected(at, device))
    return seed, stations, events


@dataclass
class ReferenceModel:
    """The transition table of the module docstring, restated as plainly as possible."""

    where: dict[str, str]
    stations: dict[str, str]
    waiting: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)
    last: dict[str, tuple[str, dt.datetime]] = field(default_factory=dict)

    def tick(self, now: dt.datetime) -> list[tuple[object, ...]]:
        out = []
        for device, (sscc, since) in list(self.waiting.items()):
            if now - since > TIMEOUT:
                del self.waiting[device]
                out.append(("move_timeout", device, since + TIMEOUT, sscc))
        return sorted(out)

    def step(self, event: Event) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
        timeouts = self.tick(event.at)
        device, at = event.device_id, event.at
        if isinstance(event, RejectedScan):
            return timeouts, [("scan_rejected", device, at, None)]
        code = event.sscc or event.location or event.gtin
        assert code is not None
        previous = self.last.get(device)
        self.last[device] = (code, at)
        if previous is not None and previous[0] == code and at - previous[1] <= WINDOW:
            return timeouts, []
        if event.sscc is not None:
            if device in self.stations:
                return timeouts, [self.arrive(event.sscc, self.stations[device], device, at, at)]
            out: list[tuple[object, ...]] = []
            if device in self.waiting and self.waiting[device][0] != event.sscc:
                out.append(("move_abandoned", device, at, self.waiting[device][0]))
            self.waiting[device] = (event.sscc, at)
            return timeouts, out
        if event.location is not None:
            if device not in self.waiting:
                return timeouts, [("location_without_pallet", device, at, None)]
            sscc, since = self.waiting.pop(device)
            return timeouts, [self.arrive(sscc, event.location, device, since, at)]
        return timeouts, [("unexpected_label", device, at, None)]

    def arrive(
        self, sscc: str, to: str, device: str, since: dt.datetime, at: dt.datetime
    ) -> tuple[object, ...]:
        origin = self.where.get(sscc)
        if origin == to:
            return ("already_at_location", device, at, sscc)
        self.where[sscc] = to
        return ("move", sscc, origin, to, device, since, at)


def summary(decision: Decision) -> tuple[object, ...]:
    if isinstance(decision, MoveTransaction):
        return (
            "move",
            decision.sscc,
            decision.from_location,
            decision.to_location,
            decision.device_id,
            decision.pallet_scanned_at,
            decision.confirmed_at,
        )
    return (decision.code, decision.device_id, decision.at, decision.details.get("sscc"))


def split_timeouts(
    decisions: list[Decision],
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    summaries = [summary(d) for d in decisions]
    n = sum(1 for s in summaries if s[0] == "move_timeout")
    # Timeouts always come first: the clock advances before the scan is handled.
    assert all(s[0] == "move_timeout" for s in summaries[:n]), summaries
    return sorted(summaries[:n]), summaries[n:]


@settings(max_examples=300, deadline=None)
@given(scan_sequences())
def test_random_scan_sequences_follow_the_transition_table(
    case: tuple[dict[str, str], dict[str, str], list[Event]],
) -> None:
    seed, stations, events = case
    moves = rule(pallet_locations=seed, stations=stations)
    model = ReferenceModel(dict(seed), stations)
    for event in events:
        decisions = moves.on_event(event)
        for decision in decisions:
            if isinstance(decision, MoveTransaction):
                assert decision.to_location != decision.from_location
                assert moves.location_of(decision.sscc) == decision.to_location
                assert decision.exceptions == (
                    ("origin_unknown",) if decision.from_location is None else ()
                )
                assert decision.pallet_scanned_at <= decision.confirmed_at
                assert decision.confirmed_at - decision.pallet_scanned_at <= TIMEOUT
        assert split_timeouts(decisions) == model.step(event)
    end = (events[-1].at if events else T0) + TIMEOUT + TICK
    assert split_timeouts(moves.on_tick(end)) == (model.tick(end), [])
    for sscc in SSCCS:
        assert moves.location_of(sscc) == model.where.get(sscc)


# --- A scanner held back (a full outbox) ------------------------------------------------------


def test_a_pallet_typed_during_a_hold_times_out_from_when_it_was_read() -> None:
    # Stamped with the hold's start (t 0), read when the hold ended (t 300): its location,
    # scanned 30 s after it was read, makes one move.
    moves = rule()
    moves.on_event(replace(pallet(P1, t(0)), read_at=t(300)))
    assert moves.on_tick(t(359)) == []
    move = only_move(moves.on_event(location("A-01-02", t(330))))
    assert (move.pallet_scanned_at, move.confirmed_at) == (t(0), t(330))


def test_a_pallet_typed_during_a_hold_still_times_out() -> None:
    moves = rule()
    moves.on_event(replace(pallet(P1, t(0)), read_at=t(300)))
    notice = only_notice(moves.on_tick(t(360) + TICK), "move_timeout")
    assert notice.at == t(360)


def test_a_gap_in_the_scanners_stream_ends_its_pallet_sequence() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)))
    gap = DeviceGap("fl-1", t(1), "serial port opened")
    notice = only_notice(moves.on_gap(gap), "move_interrupted")
    assert (notice.device_id, notice.details["sscc"]) == ("fl-1", P1)
    # The location after the gap belongs to no pallet; another scanner's pallet is untouched.
    assert codes(feed(moves, location("A-01-01", t(2)))) == ["location_without_pallet"]
    assert moves.on_gap(gap) == []  # nothing waits: nothing to say


def test_after_a_gap_the_same_pallet_scanned_again_is_a_new_scan_not_a_double_read() -> None:
    moves = rule()
    feed(moves, pallet(P1, t(0)))
    moves.on_gap(DeviceGap("fl-1", t(0.5), "serial port opened"))
    feed(moves, pallet(P1, t(1)))  # within the repeat window, but after the gap
    assert only_move(feed(moves, location("A-01-01", t(2)))).sscc == P1
