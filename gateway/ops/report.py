"""`gateway report`: what the gateway published, per day, from its hourly counts in SQLite.

One row per (UTC day, kind, code): kind is receive, ship, move, receipt, shipment, event or
alarm; code '' counts the transactions (or notices) themselves, any other code the exceptions
(or notices) of that code (a receipt's or shipment's: its lines `short` and `over`). Kind
`scan` and `scan_rejected` count scans per device (the code; a handheld terminal's applied
scans too), `operator_scan` and `operator_scan_rejected` per operator (handheld scans name
one); `dock_to_stock` counts pallets
put away after their receipt (code '') and their time at the door summed (code `seconds`).
Then the day's KPIs, kind `kpi` (`kpis`). Read while the gateway runs (SQLite's WAL lets a
reader in).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["kpis", "per_day", "render"]

Row = tuple[str, str, str, int | float]

HEADER = ("day", "kind", "code", "count")


def per_day(hours: Iterable[tuple[int, str, str, int]]) -> list[tuple[str, str, str, int]]:
    """Hourly counts (epoch hour, kind, code, n) summed per UTC day, in order."""
    days: Counter[tuple[str, str, str]] = Counter()
    for hour, kind, code, n in hours:
        day = dt.datetime.fromtimestamp(hour * 3600, dt.UTC).date().isoformat()
        days[day, kind, code] += n
    return [(*key, n) for key, n in sorted(days.items())]


def kpis(rows: Iterable[tuple[str, str, str, int]]) -> list[Row]:
    """Each day's KPIs from its counts: receipts and shipments with their lines short and
    over, pallets put away and their mean dock-to-stock time (minutes, from the receive
    transaction to the first move away from the door), and per device its scans and the
    share of them rejected (handheld terminals count as devices), and the same per operator
    (handheld scans name one)."""
    days: dict[str, Counter[tuple[str, str]]] = {}
    for day, kind, code, n in rows:
        days.setdefault(day, Counter())[kind, code] += n
    out: list[Row] = []
    for day, c in sorted(days.items()):
        figures: list[tuple[str, int | float]] = [
            ("receipts", c["receipt", ""]),
            ("receipt_lines_short", c["receipt", "short"]),
            ("receipt_lines_over", c["receipt", "over"]),
            ("shipments", c["shipment", ""]),
            ("shipment_lines_short", c["shipment", "short"]),
            ("putaways", c["dock_to_stock", ""]),
        ]
        if c["dock_to_stock", ""]:
            mean = c["dock_to_stock", "seconds"] / c["dock_to_stock", ""] / 60
            figures.append(("dock_to_stock_mean_min", round(mean, 1)))
        for label in ("", "operator_"):  # per device (terminals too), then per operator
            accepted, rejected = f"{label}scan", f"{label}scan_rejected"
            for who in sorted({code for kind, code in c if kind in (accepted, rejected)}):
                scans = c[accepted, who] + c[rejected, who]
                figures.append((f"{label}scans:{who}", scans))
                rate = round(c[rejected, who] / scans, 4)
                figures.append((f"{label}rejection_rate:{who}", rate))
        out.extend((day, "kpi", name, value) for name, value in figures)
    return out


def render(rows: Sequence[Row], fmt: str) -> str:
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
