"""`gateway report`: what the gateway published, per day, from its hourly counts in SQLite.

One row per (UTC day, kind, code): kind is receive, ship, move, receipt, shipment, event or
alarm; code '' counts the transactions (or notices) themselves, any other code the exceptions
(or notices) of that code. Read while the gateway runs (SQLite's WAL lets a reader in).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Iterable

__all__ = ["per_day", "render"]

HEADER = ("day", "kind", "code", "count")


def per_day(hours: Iterable[tuple[int, str, str, int]]) -> list[tuple[str, str, str, int]]:
    """Hourly counts (epoch hour, kind, code, n) summed per UTC day, in order."""
    days: Counter[tuple[str, str, str]] = Counter()
    for hour, kind, code, n in hours:
        day = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).date().isoformat()
        days[day, kind, code] += n
    return [(*key, n) for key, n in sorted(days.items())]


def render(rows: list[tuple[str, str, str, int]], fmt: str) -> str:
    """`csv` (with a header line) or an aligned `table`."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
        return out.getvalue()
    shown = [HEADER, *((day, kind, code or "(all)", str(n)) for day, kind, code, n in rows)]
    widths = [max(len(row[i]) for row in shown) for i in range(4)]
    return "".join(
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        + "\n"
        for row in shown
    )
