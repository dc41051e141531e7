"""Putaway strategy, ABC velocity classes and FEFO picking: pure choices over a small site plan."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.config import parse_layout
from gateway.domain import (
    STORAGE_KINDS,
    DockDoor,
    Location,
    SiteLayout,
    StorageLocation,
    VelocityClass,
    ZoneRule,
)
from gateway.rules.putaway import (
    VELOCITY_CLASSES,
    NoLocation,
    Occupancy,
    Putaway,
    StockPallet,
    choose_fefo,
    choose_location,
    classify_velocity,
    velocity_of,
)

GTIN = "09506000134352"
OTHER_GTIN = "09506000134369"

# Door D1 at the origin, D2 100 m east. Zone "ambient" has A slots near D1, B and C further
# out; zone "cold" has one A slot; a staging lane sits right at D1.
CONFIG: dict[str, Any] = {
    "doors": [{"door": "D1", "x": 0, "y": 0}, {"door": "D2", "x": 100, "y": 0}],
    "locations": [
        {
            "location": "A-02",
            "zone": "ambient",
            "velocity": "A",
            "capacity_pallets": 1,
            "x": 10,
            "y": 5,
        },
        {
            "location": "A-01",
            "zone": "ambient",
            "velocity": "A",
            "capacity_pallets": 2,
            "x": 10,
            "y": 10,
        },
        {
            "location": "A-90",
            "zone": "ambient",
            "velocity": "A",
            "capacity_pallets": 1,
            "x": 90,
            "y": 5,
        },
        {
            "location": "B-01",
            "zone": "ambient",
            "velocity": "B",
            "capacity_pallets": 1,
            "x": 5,
            "y": 5,
        },
        {
            "location": "C-01",
            "zone": "ambient",
            "velocity": "C",
            "capacity_pallets": 4,
            "x": 40,
            "y": 40,
            "kind": "floor",
        },
        {
            "location": "K-01",
            "zone": "cold",
            "velocity": "A",
            "capacity_pallets": 1,
            "x": 50,
            "y": 0,
        },
        {
            "location": "STAGE-1",
            "zone": "ambient",
            "velocity": "A",
            "capacity_pallets": 9,
            "x": 1,
            "y": 0,
            "kind": "staging",
        },
    ],
    "zone_rules": [
        {"gtin_prefix": "0950600013436", "zones": ["cold"]},
        {"category": "frozen", "zones": ["cold"]},
    ],
    "storage_zones": ["ambient"],
}
LAYOUT = parse_layout(CONFIG)
EMPTY = Occupancy()


def choose(
    occupancy: Occupancy = EMPTY,
    door: str = "D1",
    velocity: VelocityClass = "A",
    gtin: str | None = GTIN,
    category: str | None = None,
    layout: SiteLayout = LAYOUT,
) -> Putaway | NoLocation:
    return choose_location(
        layout, occupancy, door=door, velocity=velocity, gtin=gtin, category=category
    )


def chosen(**kwargs: Any) -> Putaway:
    result = choose(**kwargs)
    assert isinstance(result, Putaway), result
    return result


# --- putaway -----------------------------------------------------------------------------------


def test_nearest_location_of_the_velocity_class() -> None:
    result = chosen()
    # B-01 is nearer to D1 (7.1 m), but A-02 (11.2 m) is meant for A pallets.
    assert result.location == "A-02"
    assert (result.zone, result.velocity, result.free) == ("ambient", "A", 1)
    assert result.distance_m == pytest.approx(math.hypot(10, 5))
    assert result.reason == (
        "nearest free A location: A-02 in zone ambient, 11.2 m from door D1, 1 of 1 places free"
    )


def test_the_door_of_receipt_decides_nearest() -> None:
    assert chosen(door="D2").location == "A-90"


def test_full_locations_are_skipped() -> None:
    assert chosen(occupancy=Occupancy(stored={"A-02": 1})).location == "A-01"


def test_reservations_count_against_capacity() -> None:
    occupancy = Occupancy(stored={"A-01": 1}, reserved={"A-02": 1, "A-01": 1})
    assert chosen(occupancy=occupancy, door="D1").location == "A-90"
    half = chosen(occupancy=Occupancy(stored={"A-02": 1}, reserved={"A-01": 1}))
    assert (half.location, half.free) == ("A-01", 1)
    assert "1 of 2 places free" in half.reason


def test_overflow_goes_to_the_neighbouring_class_first() -> None:
    full_a = Occupancy(stored={"A-01": 2, "A-02": 1, "A-90": 1})
    result = chosen(occupancy=full_a)
    assert (result.location, result.velocity) == ("B-01", "B")
    assert result.reason.startswith("no free A location; nearest free B location: B-01")
    # A C pallet takes C, then B, then A, never the other way round.
    assert chosen(velocity="C").location == "C-01"
    assert chosen(velocity="C", occupancy=Occupancy(stored={"C-01": 4})).location == "B-01"
    only_a = Occupancy(stored={"C-01": 4, "B-01": 1})
    assert chosen(velocity="C", occupancy=only_a).location == "A-02"


def test_equal_distances_go_to_the_smallest_id() -> None:
    layout = SiteLayout(
        doors=(DockDoor(door="D1", x=0, y=0),),
        locations=tuple(
            StorageLocation(location=name, zone="z", velocity="B", capacity_pallets=1, x=x, y=y)
            for name, x, y in (("R-3", 3, 4), ("R-2", 4, 3), ("R-9", 0, 5))
        ),
    )
    assert chosen(layout=layout, velocity="B").location == "R-2"


def test_zone_rule_by_gtin_prefix() -> None:
    assert chosen(gtin=OTHER_GTIN).location == "K-01"
    # A GTIN-13 is compared as 14 digits.
    assert chosen(gtin=OTHER_GTIN[1:]).location == "K-01"


def test_zone_rule_by_category() -> None:
    assert chosen(category="frozen").location == "K-01"
    assert chosen(category="dry").location == "A-02"


def test_the_first_matching_rule_decides() -> None:
    layout = dataclasses.replace(
        LAYOUT,
        zone_rules=(
            ZoneRule(category="frozen", zones=frozenset({"ambient"})),
            ZoneRule(category="frozen", zones=frozenset({"cold"})),
        ),
    )
    assert layout.allowed_zones(GTIN, "frozen") == {"ambient"}


def test_a_rule_with_both_matchers_needs_both() -> None:
    rule = ZoneRule(category="frozen", gtin_prefix="0950", zones=frozenset({"cold"}))
    assert rule.matches(GTIN, "frozen")
    assert not rule.matches(GTIN, "dry")
    assert not rule.matches("04000000000000", "frozen")
    assert not rule.matches(None, "frozen")


def test_default_zones_are_the_storage_zones() -> None:
    assert LAYOUT.allowed_zones(GTIN, None) == {"ambient"}
    everything = dataclasses.replace(LAYOUT, storage_zones=None, zone_rules=())
    assert everything.allowed_zones() == {"ambient", "cold"}


def test_staging_and_dock_locations_are_never_chosen() -> None:
    occupancy = Occupancy(stored={"A-01": 2, "A-02": 1, "A-90": 1, "B-01": 1, "C-01": 4})
    result = choose(occupancy=occupancy)
    assert isinstance(result, NoLocation)
    assert result.code == "all_full"
    assert result.reason == (
        "all 5 locations in the zones allowed (ambient) are full, counting reservations"
    )


def test_no_location_for_an_unknown_door() -> None:
    result = choose(door="D9")
    assert result == NoLocation("unknown_door", "door D9 is not on the site layout")


def test_no_location_in_the_allowed_zones() -> None:
    layout = dataclasses.replace(
        LAYOUT, zone_rules=(ZoneRule(category="hazmat", zones=frozenset({"cage"})),)
    )
    result = choose(layout=layout, category="hazmat")
    assert isinstance(result, NoLocation)
    assert result.code == "no_allowed_location"
    assert "(cage)" in result.reason


def test_zero_capacity_is_always_full() -> None:
    layout = SiteLayout(
        doors=(DockDoor(door="D1", x=0, y=0),),
        locations=(
            StorageLocation(location="X", zone="z", velocity="A", capacity_pallets=0, x=1, y=1),
        ),
    )
    result = choose(layout=layout)
    assert isinstance(result, NoLocation) and result.code == "all_full"


# --- the layout from config ----------------------------------------------------------------------


def test_layout_from_config() -> None:
    assert LAYOUT.door("D2") == DockDoor(door="D2", x=100, y=0)
    assert LAYOUT.door("D9") is None
    c01 = next(loc for loc in LAYOUT.locations if loc.location == "C-01")
    assert (c01.kind, c01.capacity_pallets, c01.velocity) == ("floor", 4, "C")
    assert {loc.kind for loc in LAYOUT.locations} - {"staging"} <= STORAGE_KINDS


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["locations"][0].update(velocity="D"), "velocity"),
        (lambda c: c["locations"][0].update(capacity_pallets=-1), "capacity_pallets"),
        (lambda c: c["locations"][0].update(x=float("nan")), "x"),
        (lambda c: c["locations"][0].update(shelf=3), "shelf"),
        (lambda c: c["locations"].append(dict(c["locations"][0])), "location A-02 is listed twice"),
        (lambda c: c["doors"].append({"door": "D1", "x": 1, "y": 1}), "door D1 is listed twice"),
        (
            lambda c: c["zone_rules"].append({"zones": ["cold"]}),
            "needs a category or a gtin_prefix",
        ),
        (
            lambda c: c["zone_rules"].append({"gtin_prefix": "09x", "zones": ["cold"]}),
            "gtin_prefix",
        ),
        (lambda c: c["zone_rules"].append({"category": "x", "zones": []}), "zones"),
    ],
)
def test_layout_config_errors_name_the_key(change: Any, message: str) -> None:
    config = {
        "doors": [dict(d) for d in CONFIG["doors"]],
        "locations": [dict(loc) for loc in CONFIG["locations"]],
        "zone_rules": [dict(r) for r in CONFIG["zone_rules"]],
    }
    change(config)
    with pytest.raises(ValidationError) as caught:
        parse_layout(config)
    assert message in str(caught.value)


def test_the_wms_has_the_last_word_on_zone_kind_and_capacity() -> None:
    records = [
        Location("A-02", zone="cold", kind=None, capacity_pallets=3),
        Location("B-01", zone=None, kind="staging", capacity_pallets=None),
        Location("NOT-ON-PLAN", zone="ambient", kind="rack", capacity_pallets=1),
    ]
    layout = LAYOUT.with_reference(records)
    by_id = {loc.location: loc for loc in layout.locations}
    assert (by_id["A-02"].zone, by_id["A-02"].kind, by_id["A-02"].capacity_pallets) == (
        "cold",
        "rack",
        3,
    )
    assert (by_id["B-01"].zone, by_id["B-01"].kind, by_id["B-01"].capacity_pallets) == (
        "ambient",
        "staging",
        1,
    )
    assert "NOT-ON-PLAN" not in by_id
    assert by_id["A-01"] == next(loc for loc in LAYOUT.locations if loc.location == "A-01")


# --- velocity classes --------------------------------------------------------------------------

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)


def moves(counts: dict[str, int], at: dt.datetime = NOW) -> list[tuple[str, dt.datetime]]:
    return [(gtin, at - dt.timedelta(minutes=i)) for gtin, n in counts.items() for i in range(n)]


def test_pareto_split() -> None:
    counts = {"g1": 50, "g2": 30, "g3": 10, "g4": 5, "g5": 3, "g6": 2}
    classes = classify_velocity(moves(counts), NOW, WEEK)
    # Before g3, 80 of 100 moves: not under 80 %, so B; before g5, 95: C.
    assert classes == {"g1": "A", "g2": "A", "g3": "B", "g4": "B", "g5": "C", "g6": "C"}


def test_the_gtin_crossing_the_line_is_in_the_class() -> None:
    classes = classify_velocity(moves({"g1": 70, "g2": 20, "g3": 6, "g4": 4}), NOW, WEEK)
    assert classes == {"g1": "A", "g2": "A", "g3": "B", "g4": "C"}


def test_one_gtin_is_a() -> None:
    assert classify_velocity(moves({"g1": 1}), NOW, WEEK) == {"g1": "A"}


def test_ties_share_a_class() -> None:
    classes = classify_velocity(moves({f"g{i}": 1 for i in range(10)}), NOW, WEEK)
    assert set(classes.values()) == {"A"}
    classes = classify_velocity(moves({"big": 90, "x": 5, "y": 5}), NOW, WEEK)
    assert classes == {"big": "A", "x": "B", "y": "B"}


def test_only_moves_in_the_window_count() -> None:
    old = moves({"old": 100}, at=NOW - WEEK)  # exactly a week ago: outside (now - window, now]
    future = moves({"future": 100}, at=NOW + dt.timedelta(days=1))
    recent = moves({"g1": 10, "g2": 1})
    classes = classify_velocity([*old, *future, *recent], NOW, WEEK)
    assert classes == {"g1": "A", "g2": "B"}  # before g2: 10 of 11 moves, 91 %
    assert velocity_of(classes, "old") == "C"
    assert velocity_of(classes, "g1") == "A"


def test_shares_are_configurable() -> None:
    classes = classify_velocity(moves({"g1": 10, "g2": 1}), NOW, WEEK, a_share=0.5, b_share=0.99)
    assert classes == {"g1": "A", "g2": "B"}


def test_no_moves_no_classes() -> None:
    assert classify_velocity([], NOW, WEEK) == {}


# --- FEFO ------------------------------------------------------------------------------------------

TODAY = dt.date(2024, 5, 1)


def pallet(
    sscc: str, expiry: dt.date | None, lot: str | None = "L1", gtin: str = GTIN, where: str = "R-1"
) -> tuple[str, str, str | None, dt.date | None, str]:
    return (sscc, gtin, lot, expiry, where)


def test_fefo_order() -> None:
    stock = [
        pallet("s-undated", None),
        pallet("s-june", dt.date(2024, 6, 1)),
        pallet("s-may", dt.date(2024, 5, 20), where="R-7"),
        pallet("s-expired", dt.date(2024, 4, 30)),
        pallet("s-today", TODAY),
        pallet("s-other", dt.date(2024, 5, 2), gtin=OTHER_GTIN),
    ]
    pick = choose_fefo(stock, GTIN, TODAY)
    assert [p.sscc for p in pick.pallets] == ["s-today", "s-may", "s-june", "s-undated"]
    assert [p.sscc for p in pick.expired] == ["s-expired"]
    assert pick.first == StockPallet("s-today", GTIN, "L1", TODAY, "R-1")
    assert pick.reason == (
        f"4 pallet(s) of {GTIN}; first s-today at R-1 (lot L1, expires 2024-05-01); "
        "1 expired pallet(s) left out (earliest expired 2024-04-30)"
    )


def test_fefo_ties_go_by_lot_then_sscc() -> None:
    may = dt.date(2024, 5, 9)
    stock = [pallet("s3", may, "L2"), pallet("s2", may, "L1"), pallet("s1", may, "L2")]
    assert [p.sscc for p in choose_fefo(stock, GTIN, TODAY).pallets] == ["s2", "s1", "s3"]


def test_fefo_only_expired() -> None:
    pick = choose_fefo([pallet("s1", dt.date(2024, 1, 1))], GTIN, TODAY)
    assert pick.first is None and pick.pallets == ()
    assert pick.reason.startswith(f"no pallet of {GTIN} that may be picked; 1 expired")


def test_fefo_nothing_in_stock() -> None:
    pick = choose_fefo([], GTIN, TODAY)
    assert (pick.pallets, pick.expired, pick.first) == ((), (), None)


def test_fefo_compares_gtins_as_14_digits() -> None:
    pick = choose_fefo([pallet("s1", None, gtin=GTIN[1:])], GTIN, TODAY)
    assert [p.sscc for p in pick.pallets] == ["s1"]
    assert "no expiry date" in pick.reason and "lot L1" in pick.reason


# --- properties --------------------------------------------------------------------------------

ZONES = ["z1", "z2", "z3"]
KINDS = ["rack", "floor", "staging", "dock_door"]

locations_strategy = st.lists(
    st.builds(
        StorageLocation,
        location=st.text("ABCD0123", min_size=1, max_size=4),
        zone=st.sampled_from(ZONES),
        kind=st.sampled_from(KINDS),
        velocity=st.sampled_from(VELOCITY_CLASSES),
        capacity_pallets=st.integers(0, 3),
        x=st.integers(-50, 50).map(float),
        y=st.integers(-50, 50).map(float),
    ),
    max_size=25,
    unique_by=lambda loc: loc.location,
)
rules_strategy = st.lists(
    st.builds(
        ZoneRule,
        zones=st.frozensets(st.sampled_from(ZONES), min_size=1),
        category=st.sampled_from(["frozen", "dry"]),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    locations=locations_strategy,
    rules=rules_strategy,
    storage=st.none() | st.frozensets(st.sampled_from(ZONES), min_size=1),
    stored=st.dictionaries(st.text("ABCD0123", min_size=1, max_size=4), st.integers(0, 4)),
    reserved=st.dictionaries(st.text("ABCD0123", min_size=1, max_size=4), st.integers(0, 4)),
    velocity=st.sampled_from(VELOCITY_CLASSES),
    category=st.none() | st.sampled_from(["frozen", "dry", "other"]),
)
def test_putaway_never_chooses_a_full_or_disallowed_location(
    locations: list[StorageLocation],
    rules: list[ZoneRule],
    storage: frozenset[str] | None,
    stored: dict[str, int],
    reserved: dict[str, int],
    velocity: VelocityClass,
    category: str | None,
) -> None:
    layout = SiteLayout(
        doors=(DockDoor(door="D1", x=0, y=0),),
        locations=tuple(locations),
        zone_rules=tuple(rules),
        storage_zones=storage,
    )
    occupancy = Occupancy(stored=stored, reserved=reserved)
    result = choose_location(layout, occupancy, door="D1", velocity=velocity, category=category)
    zones = layout.allowed_zones(None, category)
    fits = [
        loc
        for loc in locations
        if loc.kind in STORAGE_KINDS
        and loc.zone in zones
        and stored.get(loc.location, 0) + reserved.get(loc.location, 0) < loc.capacity_pallets
    ]
    if isinstance(result, NoLocation):
        assert fits == []
        return
    assert result.location in {loc.location for loc in fits}
    # The same input, the same choice.
    assert (
        choose_location(layout, occupancy, door="D1", velocity=velocity, category=category)
        == result
    )
