"""The regression guard: each benchmark's last figures, kept as JSON, and the README's table.

Every benchmark ends with `keep(name, figures)`: its figures (each beside its baseline from
the same run, the ratio, the target and whether it was met) go to
`benchmarks/results/<name>.json` with the machine, the date and the load average, and each
ratio is compared with the one kept from the previous run: one that got worse by more than
`--tolerance` (10%) is printed as a REGRESSION. `python benchmarks/guard.py` rewrites the
performance table in README.md (between its `bench:begin` / `bench:end` markers) from the
kept files; `make bench` runs it last. `--check` exits 1 if a kept figure misses its target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEPT = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TOLERANCE = 0.10


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure beside its baseline from the same run.

    `ratio` is the gateway's figure over the baseline's, or the other way round where lower is
    better: it is always "higher is better", so one rule finds regressions.
    """

    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    ratio: float | None
    target: str
    met: bool


def machine() -> str:
    """This machine, for the record: CPUs, model, Python, kernel."""
    model = "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"Linux {platform.release()}"
    )


def keep(name: str, figures: list[Figure], *, tolerance: float = TOLERANCE) -> None:
    """Save a benchmark's figures and print any ratio worse than the last kept run's."""
    KEPT.mkdir(exist_ok=True)
    path = KEPT / f"{name}.json"
    before: dict[str, Any] = {}
    if path.exists():
        before = {f["name"]: f for f in json.loads(path.read_text())["figures"]}
    for figure in figures:
        old = before.get(figure.name, {}).get("ratio")
        if old and figure.ratio is not None and figure.ratio < old * (1 - tolerance):
            print(
                f"REGRESSION {name}: {figure.name} ratio {figure.ratio:.2f}, "
                f"was {old:.2f} in the last kept run"
            )
    record = {
        "benchmark": name,
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "load_average": round(os.getloadavg()[0], 2),
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"kept in {path.relative_to(ROOT)}")


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".strip()


def table(records: list[dict[str, Any]]) -> str:
    """The README's performance table from the kept records."""
    lines = [
        "| benchmark | figure | gateway | baseline (same run) | ratio | target | met | measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in records:
        when = f"{record['measured_at'][:10]}, load {record['load_average']}"
        for f in record["figures"]:
            baseline = (
                f"{f['baseline_name']}: {_number(f['baseline'], f['unit'])}"
                if f["baseline"] is not None
                else f["baseline_name"]
            )
            ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}"
            lines.append(
                f"| `{record['benchmark']}` | {f['name']} | {_number(f['value'], f['unit'])} | "
                f"{baseline} | {ratio} | {f['target']} | {'yes' if f['met'] else '**no**'} | "
                f"{when} |"
            )
    machines = sorted({r["machine"] for r in records})
    lines.append("")
    lines.append("Machine: " + "; ".join(machines) + ".")
    return "\n".join(lines)


def load() -> list[dict[str, Any]]:
    """Every kept record, by benchmark name."""
    return [json.loads(p.read_text()) for p in sorted(KEPT.glob("*.json"))]


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    cli.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    args = cli.parse_args()
    records = load()
    if not records:
        print("no kept benchmark results: run `make bench` first", file=sys.stderr)
        return 1
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{table(records)}\n{END}{tail}")
    print(f"README.md performance table: {sum(len(r['figures']) for r in records)} figures")
    missed = [
        f"{r['benchmark']}: {f['name']}" for r in records for f in r["figures"] if not f["met"]
    ]
    for name in missed:
        print(f"target missed: {name}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
