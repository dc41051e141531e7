"""What the status page shows (`GET /api/status`, pushed on `GET /events`): one JSON document.

Live doors, robots and devices come from the live state (`gateway.ops.state`), the same
payloads as the retained `state/#` topics; devices add their read rate and counts; the outbox,
the broker and the AGV tasks are read when the document is built; the last alarms are kept
from the commits; the exception trends are read from the hourly counts in SQLite
(`trend_hour`), per hour over the last day and per day over the last month.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gateway.domain import (
    Committed,
    Notice,
    Severity,
)
from gateway.wire.codec import iso

__all__ = ["SERIES", "Alarms", "trend_series"]

SERIES: Final[Mapping[str, frozenset[tuple[str, str]]]] = {
    "short": frozenset({("receipt", "short"), ("shipment", "short")}),
    "over": frozenset({("receive", "over_receipt")}),
    "unexpected": frozenset({("receive", "unexpected")}),
    "expired": frozenset({("receive", "expired"), ("receive", "short_dated")}),
    "wrong pallet": frozenset({("ship", "not_on_order")}),
    "weight mismatch": frozenset({("receive", "weight_mismatch"), ("ship", "weight_mismatch")}),
    "rejected scans": frozenset({("event", "scan_rejected")}),
}
"""Each chart series and the (kind, code) counts of `trend_hour` it sums: lines short at a
receipt's or shipment's close, items over, unexpected, expired or short-dated at receiving,
pallets not on the order at shipping, weight mismatches, rejected scans."""

HOURS: Final = 24
DAYS: Final = 30
ALARMS_KEPT: Final = 20


@dataclass(frozen=True, slots=True)
class Trend:
    """One chart: the start of each bucket (epoch s) and each series' counts."""

    starts: list[int]
    counts: dict[str, list[int]]

    def json(self) -> dict[str, Any]:
        return {"starts": self.starts, "series": self.counts}


def trend_series(
    hours: Iterable[tuple[int, str, str, int]], now: dt.datetime
) -> tuple[Trend, Trend]:
    """Per hour over the last `HOURS` and per UTC day over the last `DAYS`, from hourly counts
    (epoch hour, kind, code, n); buckets without a count are 0."""
    of: dict[tuple[str, str], str] = {key: name for name, keys in SERIES.items() for key in keys}
    this_hour = int(now.timestamp() // 3600)
    today = now.astimezone(dt.UTC).date()
    first_day = today - dt.timedelta(days=DAYS - 1)
    per_hour: Counter[tuple[str, int]] = Counter()
    per_day: Counter[tuple[str, dt.date]] = Counter()
    for hour, kind, code, n in hours:
        name = of.get((kind, code))
        if name is None:
            continue
        if this_hour - HOURS < hour <= this_hour:
            per_hour[name, hour] += n
        day = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).date()
        if first_day <= day <= today:
            per_day[name, day] += n
    hour_keys = list(range(this_hour - HOURS + 1, this_hour + 1))
    day_keys = [first_day + dt.timedelta(days=i) for i in range(DAYS)]
    return (
        Trend(
            [h * 3600 for h in hour_keys], {s: [per_hour[s, h] for h in hour_keys] for s in SERIES}
        ),
        Trend(
            [int(dt.datetime.combine(d, dt.time(), dt.UTC).timestamp()) for d in day_keys],
            {s: [per_day[s, d] for d in day_keys] for s in SERIES},
        ),
    )


class Alarms:
    """The last alarms committed (severity error), newest first, for the page."""

    def __init__(self, kept: int = ALARMS_KEPT) -> None:
        self._last: deque[dict[str, Any]] = deque(maxlen=kept)
        self.version = 0

    def committed(
        self,
        _decisions: Sequence[Committed],
        notices: Sequence[Notice],
    ) -> None:
        """A recorder's `on_committed` hook: keep its alarms."""
        for notice in notices:
            if notice.severity is Severity.ERROR:
                self._last.appendleft(
                    {
                        "at": iso(notice.at),
                        "code": notice.code,
                        "message": notice.message,
                        "location": notice.location,
                        "device": notice.device_id,
                    }
                )
                self.version += 1

    def json(self) -> list[dict[str, Any]]:
        return list(self._last)


def chained(
    *hooks: Callable[[Sequence[Committed], Sequence[Notice]], None],
) -> Callable[[Sequence[Committed], Sequence[Notice]], None]:
    """One `on_committed` hook that calls each of `hooks` in turn."""

    def call(
        decisions: Sequence[Committed],
        notices: Sequence[Notice],
    ) -> None:
        for hook in hooks:
            hook(decisions, notices)

    return call
