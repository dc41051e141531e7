"""What the benchmarks read about a process (psutil): CPU time and resident memory."""

from __future__ import annotations

import psutil


def _family(pid: int, children: bool) -> list[psutil.Process]:
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)] if children else [process]


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process (and its descendants) so far; 0 once it is gone."""
    total = 0.0
    try:
        family = _family(pid, children)
    except psutil.NoSuchProcess:
        return 0.0
    for process in family:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants (a worker it started), MiB."""
    total = 0
    for process in _family(pid, children=True):
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20
