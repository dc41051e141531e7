from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_helpers import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private Mosquitto on a free port, stopped after the test."""
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _slow_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests marked `slow` first, the longest first, each followed by a quick one.

    `make pytest` runs the suite on several workers with `--dist load --maxschedchunk 2`: the
    workers are handed tests two at a time, in this order, as they become free. So the slow
    tests start at once on different workers (longest first: the run ends about when the
    longest one does, or the rest, whichever is later) and the quick ones fill in around them.
    The order is the same on every worker (xdist requires it): it depends on the items alone.
    """
    slow = sorted((i for i in items if _slow_seconds(i) > 0), key=_slow_seconds, reverse=True)
    if not slow:
        return
    quick = [i for i in items if _slow_seconds(i) == 0]
    ordered: list[pytest.Item] = []
    for n, item in enumerate(slow):
        ordered.append(item)
        if n < len(quick):
            ordered.append(quick[n])
    ordered.extend(quick[len(slow) :])
    items[:] = ordered
