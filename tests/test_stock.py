"""The stock projection: receive, move and ship keep both views in step; drops are checked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.stock import LOCATION_FULL, UNKNOWN_PALLET, WRONG_LOCATION, StockProjection

P1 = "376123450000000016"
P2 = "376123450000000023"
P3 = "376123450000000030"


def test_receive_move_ship() -> None:
    stock = StockProjection()
    assert stock.apply_receive(P1, "DOCK-1") is None
    assert stock.location_of(P1) == "DOCK-1" and P1 in stock and len(stock) == 1
    assert stock.apply_move(P1, "R-01") == "DOCK-1"
    assert stock.pallets_at("R-01") == {P1}
    assert stock.pallets_at("DOCK-1") == frozenset()
    assert stock.occupancy() == {"R-01": 1}
    assert stock.apply_ship(P1) == "R-01"
    assert P1 not in stock and len(stock) == 0
    assert stock.occupancy() == {}
    assert stock.location_of(P1) is None


def test_moving_an_unknown_pallet_makes_it_known() -> None:
    stock = StockProjection()
    assert stock.apply_move(P1, "R-01") is None
    assert stock.location_of(P1) == "R-01"


def test_shipping_an_unknown_pallet_is_a_no_op() -> None:
    stock = StockProjection({P1: "R-01"})
    assert stock.apply_ship(P2) is None
    assert len(stock) == 1


def test_a_received_pallet_that_was_in_stock_is_at_the_door() -> None:
    stock = StockProjection({P1: "R-01"})
    assert stock.apply_receive(P1, "DOCK-2") == "R-01"
    assert stock.pallets_at("R-01") == frozenset()
    assert stock.pallets_at("DOCK-2") == {P1}


def test_start_from_stored_locations() -> None:
    stock = StockProjection({P1: "R-01", P2: "R-01", P3: "R-02"})
    assert stock.occupancy() == {"R-01": 2, "R-02": 1}
    assert stock.forget(P2) == "R-01"
    assert stock.forget(P2) is None
    assert stock.pallets_at("R-01") == {P1}


def test_pallets_at_is_a_copy() -> None:
    stock = StockProjection({P1: "R-01"})
    seen = stock.pallets_at("R-01")
    stock.apply_move(P2, "R-01")
    assert seen == {P1}


# --- drops ---------------------------------------------------------------------------------------


def test_a_clean_drop() -> None:
    stock = StockProjection({P1: "DOCK-1"})
    assert stock.check_drop(P1, "R-01", "R-01", 1) == []


def test_wrong_location() -> None:
    stock = StockProjection({P1: "DOCK-1"})
    assert stock.check_drop(P1, "R-02", "R-01", 1) == [WRONG_LOCATION]
    assert stock.check_drop(P1, "R-02", None, 1) == []  # no task: any location is right


def test_location_full_counts_other_pallets_only() -> None:
    stock = StockProjection({P1: "DOCK-1", P2: "R-01", P3: "R-02"})
    assert stock.check_drop(P1, "R-01", "R-01", 1) == [LOCATION_FULL]
    assert stock.check_drop(P1, "R-01", "R-01", 2) == []
    assert stock.check_drop(P1, "R-01", "R-01", None) == []
    # A drop reported again after it was applied does not count the pallet against itself.
    assert stock.check_drop(P3, "R-02", "R-02", 1) == []
    assert stock.check_drop(P1, "R-09", "R-09", 0) == [LOCATION_FULL]


def test_unknown_pallet() -> None:
    stock = StockProjection()
    assert stock.check_drop(P1, "R-01", "R-01", 1) == [UNKNOWN_PALLET]


def test_every_exception_at_once_in_a_fixed_order() -> None:
    stock = StockProjection({P2: "R-02"})
    assert stock.check_drop(P1, "R-02", "R-01", 1) == [
        WRONG_LOCATION,
        LOCATION_FULL,
        UNKNOWN_PALLET,
    ]


# --- bounds --------------------------------------------------------------------------------------


def test_past_the_cap_the_pallet_moved_least_recently_is_forgotten() -> None:
    stock = StockProjection(max_pallets=2)
    stock.apply_receive(P1, "DOCK-1")
    stock.apply_receive(P2, "DOCK-1")
    stock.apply_move(P1, "R-01")  # P1 moved last: P2 is now the oldest
    stock.apply_receive(P3, "DOCK-1")
    assert (len(stock), stock.evicted) == (2, 1)
    assert P2 not in stock and P1 in stock and P3 in stock
    assert stock.occupancy() == {"R-01": 1, "DOCK-1": 1}


def test_a_move_within_the_cap_evicts_nothing() -> None:
    stock = StockProjection({P1: "A", P2: "B"}, max_pallets=2)
    stock.apply_move(P1, "C")
    assert (len(stock), stock.evicted) == (2, 0)


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pallets"):
        StockProjection(max_pallets=0)


SSCCS = st.sampled_from([P1, P2, P3, "376123450000000047", "376123450000000054"])
PLACES = st.sampled_from(["DOCK-1", "R-01", "R-02", "R-03"])
OPS = st.one_of(
    st.tuples(st.just("receive"), SSCCS, PLACES),
    st.tuples(st.just("move"), SSCCS, PLACES),
    st.tuples(st.just("ship"), SSCCS, st.just("")),
    st.tuples(st.just("check"), SSCCS, PLACES),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=60), st.integers(min_value=1, max_value=6))
def test_both_views_agree_and_stay_bounded(ops: list[tuple[str, str, str]], cap: int) -> None:
    stock = StockProjection(max_pallets=cap)
    model: dict[str, str] = {}
    for op, sscc, place in ops:
        if op == "receive":
            stock.apply_receive(sscc, place)
            model.pop(sscc, None)
            model[sscc] = place
        elif op == "move":
            stock.apply_move(sscc, place)
            model.pop(sscc, None)
            model[sscc] = place
        elif op == "ship":
            stock.apply_ship(sscc)
            model.pop(sscc, None)
        else:
            codes = stock.check_drop(sscc, place, place, 1)
            assert (UNKNOWN_PALLET in codes) == (sscc not in model)
            assert WRONG_LOCATION not in codes
        while len(model) > cap:
            del model[next(iter(model))]
        assert len(stock) <= cap
        assert {s: stock.location_of(s) for s in model} == model
        assert len(stock) == len(model)
        by_place: dict[str, set[str]] = {}
        for s, where in model.items():
            by_place.setdefault(where, set()).add(s)
        assert stock.occupancy() == {k: len(v) for k, v in by_place.items()}
        for where, pallets in by_place.items():
            assert stock.pallets_at(where) == pallets
