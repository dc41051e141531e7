"""Large payloads are decoded in a worker process; a worker that dies loses nothing."""

from __future__ import annotations

import datetime as dt
import os
from functools import partial

from gateway.bridge.decoding import DecodePool
from gateway.domain import Event, RefDataDeleted, RefDataKind
from gateway.wire.inbound import Received

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
