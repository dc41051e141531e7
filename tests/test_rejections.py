"""Rejected input is counted per source and reason, not turned into one event per message."""

from __future__ import annotations

import datetime as dt

from gateway.domain import InputKind, Notice, Rejected
from gateway.rules.engine import RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.rejections import OTHER, RejectionDigest

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
CODES = {InputKind.ROBOT: ("vda5050_rejected", "topic")}


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def robot_state(serial: str, reason: str, when: float) -> Rejected:
    topic = f"uagv/v2/acme/{serial}/state"
    return Rejected(InputKind.ROBOT, topic, reason, at(when), source=f"uagv/v2/acme/{serial}")


def test_a_robot_sending_bad_state_at_10_hz_makes_one_event_a_minute() -> None:
    digest = RejectionDigest(CODES, window=dt.timedelta(seconds=60))
    events: list[Notice] = []
    for tenth in range(36_000):  # one hour at 10 Hz
        seconds = tenth / 10
        notice = digest.on_rejected(robot_state("r1", "headerId: required", seconds), at(seconds))
        events.extend([notice] if notice else [])
        if tenth % 10 == 0:
            events.extend(digest.on_tick(at(seconds)))
    assert len(events) == 60  # the first at once, then one summary per minute
    first, summary = events[0], events[1]
    assert first.details["topic"] == "uagv/v2/acme/r1/state"
    assert summary.details["count"] == 600
    assert summary.details["source"] == "uagv/v2/acme/r1"
    assert "600 more rejected in 60 s" in summary.message
    assert digest.rejected == 36_000


def test_a_quiet_window_ends_the_tally_and_the_next_one_is_reported_at_once() -> None:
    digest = RejectionDigest(CODES, window=dt.timedelta(seconds=60))
    assert digest.on_rejected(robot_state("r1", "bad", 0), at(0)) is not None
    assert digest.on_tick(at(61)) == []  # nothing more came: no summary
    assert digest.on_rejected(robot_state("r1", "bad", 62), at(62)) is not None


def test_each_source_and_reason_is_reported_and_a_flood_of_distinct_ones_is_bounded() -> None:
    digest = RejectionDigest(CODES, max_keys=4)
    reported = [
        digest.on_rejected(robot_state(f"r{i}", f"reason {i % 2}", 1), at(1)) for i in range(1_000)
    ]
    events = [n for n in reported if n is not None]
    assert [e.details["source"] for e in events] == [
        "uagv/v2/acme/r0",
        "uagv/v2/acme/r1",
        "uagv/v2/acme/r2",
        "uagv/v2/acme/r3",
        OTHER,
    ]
    (summary,) = digest.on_tick(at(62))
    assert (summary.details["source"], summary.details["count"]) == (OTHER, 995)


def test_long_topics_and_reasons_are_shortened() -> None:
    digest = RejectionDigest(CODES)
    notice = digest.on_rejected(Rejected(InputKind.ROBOT, "t" * 60_000, "r" * 60_000, T0), T0)
    assert notice is not None
    assert len(notice.message) < 500
    assert all(len(str(v)) <= 300 for v in notice.details.values())


def test_the_engine_reports_rejections_through_the_digest_and_ticks_it() -> None:
    engine = RulesEngine(ForkliftMoves(MoveSettings()), portals={})
    bad = Rejected(InputKind.COMMAND, "gw/DC1/gw1/cmd/close", "not JSON", T0)
    assert len(engine.on_event(bad)) == 1
    assert engine.on_event(bad) == []  # counted
    summaries = [d for d in engine.on_tick(at(61)) if isinstance(d, Notice)]
    assert [(n.code, n.details["count"]) for n in summaries] == [("command_rejected", 1)]
