"""Stable weight capture and the weight check (pure)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import Weighing, WeighingMethod, WeightSample
from gateway.rules.weighing import NEW_LOAD_FACTOR, WeighingSettings, WeightCapture, check_weight

SETTINGS = WeighingSettings()
POLL_S = 0.1


def pallet(
    kg: float,
    *,
    start: float,
    rng: random.Random,
    reports_stable: bool,
    zero: float = 0.0,
    on_top_of: float = 0.0,
    hold: int = 30,
) -> list[WeightSample]:
    """A pallet put down (overshoot, settling noise), held, then lifted off.

    `zero` is what the empty platform reads; `on_top_of` is what is already on it and stays.
    """
    base = zero + on_top_of
    readings: list[tuple[float, bool]] = []
    for k in range(1, 6):  # forks lowering the pallet
        readings.append((base + kg * k / 5 * 1.15, False))
    for k in range(10):  # settling: decaying oscillation
        readings.append((base + kg + 0.1 * kg * (-0.6) ** k + rng.gauss(0, 3), False))
    for _ in range(hold):  # at rest, a little noise
        readings.append((base + kg + rng.gauss(0, 0.05), True))
    for k in range(4, -1, -1):  # lifted off
        readings.append((base + kg * k / 5, False))
    for _ in range(10):
        readings.append((base + rng.gauss(0, 0.05), True))
    return [
        WeightSample("s1", start + i * POLL_S, w, stable if reports_stable else None)
        for i, (w, stable) in enumerate(readings)
    ]


def run(capture: WeightCapture, samples: list[WeightSample]) -> list[Weighing]:
    out: list[Weighing] = []
    for sample in samples:
        out.extend(capture.on_sample(sample))
    return out


@pytest.mark.parametrize("reports_stable", [True, False])
def test_each_scripted_load_gives_one_weighing(reports_stable: bool) -> None:
    rng = random.Random(5)
    capture = WeightCapture(SETTINGS)
    loads = [512.3, 87.0, 1004.6]
    samples: list[WeightSample] = []
    for kg in loads:
        start = samples[-1].at + POLL_S if samples else 0.0
        samples += pallet(kg, start=start, rng=rng, reports_stable=reports_stable)
    weighings = run(capture, samples)
    assert [w.kg for w in weighings] == pytest.approx(loads, abs=0.3)
    method = WeighingMethod.SCALE_STABLE if reports_stable else WeighingMethod.SETTLED
    assert {w.method for w in weighings} == {method}
    assert {w.samples for w in weighings} == {1 if reports_stable else SETTINGS.settle_samples}
    assert all(w.scale_id == "s1" for w in weighings)


def test_settled_needs_n_readings_within_tolerance() -> None:
    capture = WeightCapture(WeighingSettings(settle_samples=3, settle_tolerance_kg=0.5))
    assert run(capture, [WeightSample("s1", t, 100.0 + t) for t in range(5)]) == []
    weighings = run(capture, [WeightSample("s1", 5 + t, 200.0 + 0.2 * t) for t in range(3)])
    assert len(weighings) == 1
    assert weighings[0].kg == pytest.approx(200.2)
    assert weighings[0].at == 7


def test_light_load_and_motion_are_not_weighed() -> None:
    capture = WeightCapture(SETTINGS)
    assert run(capture, [WeightSample("s1", t, 4.0, stable=True) for t in range(10)]) == []
    assert run(capture, [WeightSample("s1", 10 + t, 300.0, stable=False) for t in range(10)]) == []
    assert len(capture.on_sample(WeightSample("s1", 20, 300.0, stable=True))) == 1


@pytest.mark.parametrize("reports_stable", [True, False])
def test_zero_drift_is_subtracted(reports_stable: bool) -> None:
    rng = random.Random(7)
    capture = WeightCapture(SETTINGS)
    empty = [WeightSample("s1", i * POLL_S, 1.6 + rng.gauss(0, 0.02), True) for i in range(150)]
    assert run(capture, empty) == []
    assert capture.zero_kg == pytest.approx(1.6, abs=0.05)
    samples = pallet(400.0, start=20.0, rng=rng, reports_stable=reports_stable, zero=1.6)
    weighings = run(capture, samples)
    assert [w.kg for w in weighings] == pytest.approx([400.0], abs=0.1)


def test_overload_and_underload_never_weigh() -> None:
    capture = WeightCapture(WeighingSettings(settle_samples=3))
    samples = [WeightSample("s1", t, 3000.0, stable=True, overload=True) for t in range(5)]
    samples += [WeightSample("s1", 5 + t, 3000.0, overload=True) for t in range(5)]
    samples += [WeightSample("s1", 10 + t, -50.0, stable=True, underload=True) for t in range(5)]
    assert run(capture, samples) == []
    # An overload reading breaks a run of settled readings.
    run_ = [WeightSample("s1", 20, 500.0), WeightSample("s1", 21, 500.0)]
    run_ += [WeightSample("s1", 22, 500.0, overload=True), WeightSample("s1", 23, 500.0)]
    assert run(capture, run_) == []
    assert capture.on_sample(WeightSample("s1", 24, 500.0)) == []
    assert len(capture.on_sample(WeightSample("s1", 25, 500.0))) == 1


@pytest.mark.parametrize("reports_stable", [True, False])
def test_second_pallet_on_top_is_a_new_load(reports_stable: bool) -> None:
    """Weighed again with the total on the platform; so is taking it off again."""
    rng = random.Random(11)
    capture = WeightCapture(SETTINGS)
    first = pallet(300.0, start=0.0, rng=rng, reports_stable=reports_stable, hold=30)
    first = first[:-15]  # the first pallet stays on
    second = pallet(250.0, start=10.0, rng=rng, reports_stable=reports_stable, on_top_of=300.0)
    second = second[:-15]  # so does the second, for a while
    stay = 300.0 + 250.0
    rest = [
        WeightSample(
            "s1", 20 + i * POLL_S, stay + rng.gauss(0, 0.05), True if reports_stable else None
        )
        for i in range(20)
    ]
    weighings = run(capture, first + second + rest)
    assert [w.kg for w in weighings] == pytest.approx([300.0, 550.0], abs=0.3)


def test_small_change_on_the_platform_is_the_same_load() -> None:
    capture = WeightCapture(SETTINGS)
    limit = NEW_LOAD_FACTOR * SETTINGS.settle_tolerance_kg
    assert len(capture.on_sample(WeightSample("s1", 0, 300.0, stable=True))) == 1
    assert capture.on_sample(WeightSample("s1", 1, 300.0 + limit * 0.9, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 2, 300.0 - limit * 0.9, stable=True)) == []
    # A reading between the zero band and the minimum load is not empty: still the same load.
    assert capture.on_sample(WeightSample("s1", 3, 3.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 4, 300.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 5, 0.3, stable=True)) == []
    assert len(capture.on_sample(WeightSample("s1", 6, 300.0, stable=True))) == 1


def test_out_of_order_and_non_finite_samples_are_ignored() -> None:
    capture = WeightCapture(SETTINGS)
    assert len(capture.on_sample(WeightSample("s1", 10.0, 300.0, stable=True))) == 1
    # A late empty reading does not end the load ...
    assert capture.on_sample(WeightSample("s1", 9.0, 0.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 11.0, 300.0, stable=True)) == []
    # ... nor does a late reading weigh, and it does not move the zero.
    assert capture.on_sample(WeightSample("s1", 12.0, 0.0, stable=True)) == []
    zero = capture.zero_kg
    assert capture.on_sample(WeightSample("s1", 5.0, 300.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 11.5, 1.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", math.nan, 1.0, stable=True)) == []
    assert capture.on_sample(WeightSample("s1", 13.0, math.inf, stable=True)) == []
    assert capture.zero_kg == zero
    assert len(capture.on_sample(WeightSample("s1", 14.0, 300.0, stable=True))) == 1


_SAMPLES = st.lists(
    st.tuples(
        st.floats(-1.0, 5.0),  # time step; negative: out of order
        st.one_of(
            st.floats(-10.0, 10.0),
            st.sampled_from([0.0, 300.0, 306.0, 600.0]),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        st.sampled_from([True, False, None]),
        st.booleans(),
        st.booleans(),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    _SAMPLES,
    st.floats(0.1, 5.0).flatmap(
        lambda band: st.builds(
            WeighingSettings,
            min_load_kg=st.floats(band, 50.0),
            settle_samples=st.integers(1, 6),
            settle_tolerance_kg=st.floats(0.0, 5.0),
            zero_band_kg=st.just(band),
        )
    ),
)
def test_random_streams_never_raise_nor_weigh_a_load_twice(
    stream: list[tuple[float, float, bool | None, bool, bool]], cfg: WeighingSettings
) -> None:
    capture = WeightCapture(cfg)
    t = 0.0
    latest = -math.inf
    last: Weighing | None = None  # last weighing since the platform was last empty
    for step, kg, stable, overload, underload in stream:
        t += step
        sample = WeightSample("s", t, kg, stable, overload and kg > 100, underload and kg < 0)
        in_order = math.isfinite(kg) and t >= latest
        if in_order:
            latest = t
        empty = (
            in_order
            and not (sample.overload or sample.underload)
            and abs(kg - capture.zero_kg) < cfg.zero_band_kg
        )
        weighings = capture.on_sample(sample)
        assert len(weighings) <= 1
        if empty:
            last = None
        for w in weighings:
            assert w.kg >= cfg.min_load_kg
            if last is not None:  # only a load that changed a lot is weighed again
                assert abs(w.kg - last.kg) > NEW_LOAD_FACTOR * cfg.settle_tolerance_kg
            last = w


def test_check_weight_within_and_outside_tolerances() -> None:
    units = {"A": 10.0, "B": 2.5}
    # Expected 25 + 20 x 10 + 40 x 2.5 = 325; the relative tolerance (6.5 kg) is the larger.
    check = check_weight(330.0, items={"A": 20, "B": 40}, unit_weights_kg=units, tare_kg=25.0)
    assert check is not None
    assert check.expected_kg == pytest.approx(325.0)
    assert check.tolerance_kg == pytest.approx(6.5)
    assert check.difference_kg == pytest.approx(5.0)
    assert check.within
    short = check_weight(315.0, items={"A": 20, "B": 40}, unit_weights_kg=units, tare_kg=25.0)
    assert short is not None
    assert not short.within
    assert short.difference_kg == pytest.approx(-10.0)
    # Light pallet: expected 45, 2 % is 0.9 kg, so the absolute 2 kg applies.
    for measured, within in [(46.9, True), (43.1, True), (47.5, False), (42.5, False)]:
        light = check_weight(measured, items={"A": 2}, unit_weights_kg=units, tare_kg=25.0)
        assert light is not None
        assert light.tolerance_kg == pytest.approx(2.0)
        assert light.within is within


def test_settings_refuse_a_minimum_load_inside_the_zero_band() -> None:
    with pytest.raises(ValueError, match="min_load_kg"):
        WeighingSettings(min_load_kg=1.0, zero_band_kg=2.0)
    with pytest.raises(ValueError, match="settle_samples"):
        WeighingSettings(settle_samples=0)


def test_check_weight_unknown_unit_weight_is_none() -> None:
    units: dict[str, float | None] = {"A": 10.0, "B": None}
    assert check_weight(100.0, items={"A": 1, "B": 2}, unit_weights_kg=units, tare_kg=20) is None
    assert check_weight(100.0, items={"C": 1}, unit_weights_kg=units, tare_kg=20) is None
    # A GTIN counted zero times needs no unit weight.
    check = check_weight(30.0, items={"A": 1, "C": 0}, unit_weights_kg=units, tare_kg=20)
    assert check is not None
    assert check.within
