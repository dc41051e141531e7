"""An accelerated clock for the scenario tests: the gateway and the simulators play k times
faster than real time.

A gateway run with `AcceleratedClock(k)` sees k seconds pass per wall-clock second; its
configured times (a portal's depart_after_s, move timeouts, leases) are in its own time, so
they shorten in wall time with it. A reader simulator whose `Scenario.time_scale` is the same
k stamps its reads with a clock that runs as fast: the LLRP driver maps them onto the
gateway's clock (arrival times are taken from the injected clock).
"""

from __future__ import annotations

import datetime as dt
import time

SPEED = 8.0
"""How much faster than real time the scenario tests play (gateway clock and reader clock)."""


class AcceleratedClock:
    """A clock that starts at the wall clock's now and runs `scale` times faster.

    A pure function of `time.monotonic()`: safe to call from any thread (sllurp's, say).
    """

    def __init__(self, scale: float = SPEED, *, start: dt.datetime | None = None) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale
        self._start = start or dt.datetime.now(dt.UTC)
        self._t0 = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self._start + dt.timedelta(seconds=(time.monotonic() - self._t0) * self.scale)

    def wall_s(self, seconds: float) -> float:
        """How long `seconds` of this clock's time take in wall-clock time."""
        return seconds / self.scale
