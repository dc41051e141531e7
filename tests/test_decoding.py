"""Large payloads are decoded in a worker process; a worker that dies loses nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
from functools import partial
from pathlib import Path

import aiomqtt
import psutil
import pytest

from gateway.bridge.decoding import DecodePool
from gateway.domain import Event, RefDataDeleted, RefDataKind
from gateway.wire.inbound import Received
from simulators.gs1 import sscc
from tests.gateway_helpers import site_config
from tests.mqtt_helpers import Mosquitto
from tests.process_helpers import GatewayProcess, write_toml

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
MESSAGE = Received("wms/DC1/asn/A1", b"", True, T0)


def _where(parent: int, die: bool, message: Received) -> Event:
    """Stands in for a decoder: says whether it ran in the gateway's process (key "here") or
    in the worker ("worker"); with `die`, a worker dies mid-payload (out of memory, a crash)."""
    if os.getpid() != parent and die:
        os._exit(1)
    return RefDataDeleted(RefDataKind.ASN, "here" if os.getpid() == parent else "worker", T0)


async def test_payloads_are_decoded_in_the_worker() -> None:
    pool = DecodePool()
    try:
        event = await pool.decode(partial(_where, os.getpid(), False), MESSAGE)
    finally:
        pool.close()
    assert event == RefDataDeleted(RefDataKind.ASN, "worker", T0)
    assert (pool.decoded, pool.worker_failures) == (1, 0)


async def test_a_worker_that_dies_is_replaced_and_its_payload_decoded_on_a_thread() -> None:
    pool = DecodePool()
    try:
        rescued = await pool.decode(partial(_where, os.getpid(), True), MESSAGE)
        again = await pool.decode(partial(_where, os.getpid(), False), MESSAGE)
    finally:
        pool.close()
    assert rescued == RefDataDeleted(RefDataKind.ASN, "here", T0)  # not lost
    assert again == RefDataDeleted(RefDataKind.ASN, "worker", T0)  # a new worker
    assert pool.worker_failures == 1


@pytest.mark.broker
async def test_the_worker_dies_with_a_gateway_killed_by_sigkill(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # `gateway run` decodes a large ASN in its worker; then SIGKILL (no shutdown at all).
    raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
    gateway = GatewayProcess(write_toml(tmp_path / "site.toml", raw), tmp_path / "gateway.log")
    lines = [{"line": n, "sscc": sscc("0614141", n), "quantity": 1} for n in range(1, 1500)]
    big = json.dumps({"asn_id": "ASN-BIG", "door": "D03", "lines": lines})
    assert len(big) > 64 * 1024  # decoded in the worker
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="wms") as wms:
        await wms.publish("wms/DC1/asn/ASN-BIG", big, qos=1, retain=True)
    gateway.start()
    assert gateway.process is not None
    try:
        async with asyncio.timeout(30):
            while not (workers := psutil.Process(gateway.process.pid).children()):
                await asyncio.sleep(0.1)
        await gateway.signal_async(signal.SIGKILL)
        async with asyncio.timeout(5):
            while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
                await asyncio.sleep(0.05)
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="wms") as wms:
            await wms.publish("wms/DC1/asn/ASN-BIG", b"", qos=1, retain=True)
