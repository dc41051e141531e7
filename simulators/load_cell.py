"""The weighing platform every scale simulator shares: scripted loads that settle with noise.

`place` puts a load on the platform: the reading starts at the old one, overshoots by about a
fifth of the step, and settles with shrinking noise within `settle_s`; `remove` takes it off.
`overload` / `underload` put the scale out of range until the next load. `zero` takes the
present reading as zero, as the indicator's zero key does.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Literal


class LoadCell:
    """A load cell with a scripted load; readings are taken at `clock()` time."""

    def __init__(self, *, seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._rng = random.Random(seed)
        self.clock = clock
        # The reading moves from `_from_kg` to `_to_kg` over `_settle_s` from `_t0`.
        self._from_kg = 0.0
        self._to_kg = 0.0
        self._t0 = -math.inf
        self._settle_s = 0.0
        self.zero_kg = 0.0
        self.limit: Literal["+", "-"] | None = None  # "+" overload, "-" underload

    def place(self, kg: float, settle_s: float = 1.0) -> None:
        """Put a load of `kg` (gross) on the platform; the reading settles within `settle_s`."""
        if settle_s < 0:
            raise ValueError(f"settle_s must not be negative, got {settle_s}")
        now = self.clock()
        self._from_kg = self.gross(now)
        self._to_kg = kg
        self._t0 = now
        self._settle_s = settle_s
        self.limit = None

    def remove(self, settle_s: float = 0.5) -> None:
        """Take everything off the platform."""
        self.place(0.0, settle_s)

    def overload(self) -> None:
        """More than the scale's capacity, until the next load."""
        self.limit = "+"

    def underload(self) -> None:
        """Below the scale's range (platform lifted), until the next load."""
        self.limit = "-"

    def gross(self, now: float) -> float:
        """The load cell's reading: a damped oscillation around the load, with noise."""
        elapsed = now - self._t0
        if elapsed >= self._settle_s:
            return self._to_kg
        u = elapsed / self._settle_s
        delta = self._to_kg - self._from_kg
        # Starts at the old reading, overshoots by about a fifth of the step near u = 1/3.
        swing = -delta * math.exp(-5.0 * u) * math.cos(3.0 * math.pi * u)
        noise = self._rng.gauss(0.0, 0.002 * abs(delta) + 0.02) * (1.0 - u)
        return self._to_kg + swing + noise

    def net(self, now: float) -> float:
        """The reading less the zero."""
        return self.gross(now) - self.zero_kg

    def stable(self, now: float) -> bool:
        """Whether the reading has settled."""
        return now - self._t0 >= self._settle_s

    def zero(self) -> bool:
        """Zero key: take the present reading as zero; refused (False) in motion or out of range."""
        now = self.clock()
        if self.limit is not None or not self.stable(now):
            return False
        self.zero_kg = self.gross(now)
        return True

    def noise_bytes(self) -> bytes:
        """A few random bytes with the high bit set: never a line end, never printable ASCII."""
        return bytes(self._rng.randrange(0x80, 0x100) for _ in range(self._rng.randint(3, 12)))
