"""Stable weight capture and the weight check at a scale station.

Pure and clock-free: every sample carries its time (seconds); nothing here reads a clock.

- Zero: while the platform is empty (|reading - zero| < `zero_band_kg`), the empty-platform
  reading is followed by a slow exponential average (`ZERO_TRACKING_RATE` per sample) and
  subtracted from every reading, so drift of the load cell does not bias weighings.
- A weighing is taken when a scale that reports stability says stable (a reading in motion
  never counts), or, for a scale that does not (`stable is None`), when `settle_samples`
  consecutive readings lie within `settle_tolerance_kg` of each other (their mean is weighed).
  The net weight (every settled reading) must be at least `min_load_kg`. Overload and
  underload readings never weigh and break a run of settled readings.
- One weighing per load: after a weighing none is taken until the platform is empty again.
  A load that changes a lot while on the platform is a new load: a stable weight that differs
  from the last weighing by more than `NEW_LOAD_FACTOR` x `settle_tolerance_kg` (a second
  pallet put on top, or one taken off) is weighed again. Its `kg` is everything on the
  platform then, not the difference; a consumer that wants the top pallet subtracts.
- Readings older than the latest one, and readings that are not finite, are ignored.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain import Weighing, WeighingMethod, WeightCheck, WeightSample

# Weight of a new empty-platform reading in the zero average (per sample).
ZERO_TRACKING_RATE = 0.05
# A stable weight this many settle tolerances away from the last weighing is a new load.
NEW_LOAD_FACTOR = 10.0


@dataclass(frozen=True, slots=True)
class WeighingSettings:
    """Parameters of stable weight capture at one scale."""

    min_load_kg: float = 5.0  # below: nothing worth weighing on the platform
    settle_samples: int = 5
    settle_tolerance_kg: float = 0.5
    zero_band_kg: float = 2.0  # |net weight| below this is the empty platform

    def __post_init__(self) -> None:
        if self.settle_samples < 1:
            raise ValueError(f"settle_samples must be at least 1, got {self.settle_samples}")
        if not self.settle_tolerance_kg >= 0 or not self.zero_band_kg > 0:
            raise ValueError(
                "settle_tolerance_kg must be >= 0 and zero_band_kg > 0, got "
                f"{self.settle_tolerance_kg} and {self.zero_band_kg}"
            )
        # A load inside the zero band would empty the platform and be weighed on every poll.
        if not self.min_load_kg >= self.zero_band_kg:
            raise ValueError(
                f"min_load_kg ({self.min_load_kg}) must be at least zero_band_kg "
                f"({self.zero_band_kg})"
            )


class WeightCapture:
    """Turns the readings of one scale into one `Weighing` per load."""

    __slots__ = ("_last_at", "_settings", "_weighed_kg", "_window", "_zero")

    def __init__(self, settings: WeighingSettings) -> None:
        self._settings = settings
        self._zero = 0.0
        self._last_at = -math.inf
        # Net weight of the last weighing of the load on the platform; None: not weighed yet.
        self._weighed_kg: float | None = None
        self._window: deque[float] = deque(maxlen=settings.settle_samples)

    @property
    def zero_kg(self) -> float:
        """The tracked empty-platform reading, subtracted from every reading."""
        return self._zero

    def on_sample(self, sample: WeightSample) -> list[Weighing]:
        """Take one reading; return the weighing it completes, if any."""
        if not math.isfinite(sample.at) or sample.at < self._last_at:
            return []
        if sample.overload or sample.underload:
            # Out of range (the weight may be NaN): a settling run is broken.
            self._last_at = sample.at
            self._window.clear()
            return []
        if not math.isfinite(sample.kg):
            return []
        self._last_at = sample.at
        s = self._settings
        net = sample.kg - self._zero
        if abs(net) < s.zero_band_kg:
            self._weighed_kg = None  # platform empty: the next load gets weighed
            if sample.stable is not False:  # a reading in motion says nothing about zero
                self._zero += ZERO_TRACKING_RATE * net
        if sample.stable is True:
            self._window.clear()
            return self._weigh(sample, net, 1, WeighingMethod.SCALE_STABLE)
        if sample.stable is False:
            self._window.clear()
            return []
        self._window.append(net)
        if len(self._window) < s.settle_samples:
            return []
        low = min(self._window)
        if max(self._window) - low > s.settle_tolerance_kg or low < s.min_load_kg:
            return []
        mean = math.fsum(self._window) / len(self._window)
        return self._weigh(sample, mean, len(self._window), WeighingMethod.SETTLED)

    def _weigh(
        self, sample: WeightSample, kg: float, samples: int, method: WeighingMethod
    ) -> list[Weighing]:
        s = self._settings
        if kg < s.min_load_kg:
            return []
        last = self._weighed_kg
        if last is not None and abs(kg - last) <= NEW_LOAD_FACTOR * s.settle_tolerance_kg:
            return []  # the same load, already weighed
        self._weighed_kg = kg
        return [Weighing(sample.scale_id, kg, sample.at, samples, method)]


def check_weight(
    measured_kg: float,
    *,
    items: Mapping[str, int],
    unit_weights_kg: Mapping[str, float | None],
    tare_kg: float,
    abs_tolerance_kg: float = 2.0,
    rel_tolerance: float = 0.02,
) -> WeightCheck | None:
    """Compare a weighing with the unit weights of its items (GTIN -> count) plus the tare.

    The tolerance is the larger of `abs_tolerance_kg` and `rel_tolerance` x expected weight.
    None when the unit weight of a counted GTIN is unknown: nothing to compare with.
    """
    total = [tare_kg]
    for gtin, count in items.items():
        if count < 0:
            raise ValueError(f"count of {gtin} is negative: {count}")
        if count == 0:
            continue
        unit = unit_weights_kg.get(gtin)
        if unit is None:
            return None
        total.append(unit * count)
    expected = math.fsum(total)
    tolerance = max(abs_tolerance_kg, rel_tolerance * abs(expected))
    difference = measured_kg - expected
    return WeightCheck(
        expected_kg=expected,
        measured_kg=measured_kg,
        difference_kg=difference,
        within=abs(difference) <= tolerance,
        tolerance_kg=tolerance,
    )
