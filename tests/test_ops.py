"""The operations surface: /metrics, /healthz, /readyz over real HTTP, and sd_notify."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from gateway.config import ConfigError
from gateway.domain import (
    DockKind,
    DockResult,
    DockTransaction,
    EvidenceSource,
    Item,
    ItemResult,
    WeightCheck,
)
from gateway.health import DeviceState
from gateway.ops.metrics import GatewayMetrics
from gateway.wire.outbound import dock_payload
from gateway.wire.topics import Topics
from simulators.gs1 import corrupt_check_digit, sscc, sscc_label
from simulators.scanner import Garbage, ScannerSimulator, Type, shift_script
from tests.gateway_helpers import LOCATIONS, build, running, site_config, wait_device
from tests.mqtt_helpers import Collector, Mosquitto
from tests.ops_helpers import get, listening, samples, total

pytestmark = pytest.mark.broker
PASSWORD = "a long enough secret"


def ops_site(tmp_path: Path, broker_port: int, **http: Any) -> dict[str, Any]:
    raw = site_config(tmp_path, broker_port=broker_port, scanner=tmp_path / "scan0")
    raw["http"] = {"enabled": True, "port": 0, **http}
    return raw


async def test_after_a_shift_every_counter_equals_what_a_subscriber_received(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    steps, truth = shift_script(pallets=6, locations=LOCATIONS, seed=3, pause_s=(0.0, 0.02))
    bad = [
        Garbage(b"\x00\xffjunk\r"),
        Type(corrupt_check_digit(sscc_label(sscc("0376123", 9))), aim="]C1"),
    ]
    config = build(ops_site(tmp_path, mosquitto.port), tmp_path)
    async with (
        Collector(mosquitto.port) as collector,
        ScannerSimulator(tmp_path / "scan0") as sim,
        running(config) as gateway,
    ):
        base = await listening(gateway)
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        await sim.run([*bad, *steps])
        await collector.wait_for(lambda c: len(c.on("/tx/move")) >= len(truth))
        async with asyncio.timeout(10):  # everything published
            while gateway.store is None or gateway.store.depth:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # and received
        status, text = await get(f"{base}/metrics")
        assert status == 200
        values = samples(text)
        health = await get(f"{base}/healthz")
        ready = await get(f"{base}/readyz")
    assert health[0] == 200
    assert ready[0] == 200, ready[1]
    moves = {m.json()["tx_id"] for m in collector.on("/tx/move")}
    assert total(values, "gateway_transactions_total", type="move") == len(moves) == len(truth)
    events = [m.json() for m in collector.on("dock-1/event")]
    alarms = [m.json() for m in collector.on("dock-1/alarm")]
    assert total(values, "gateway_events_total") == len(events) + len(alarms) >= 2
    for code in {e["code"] for e in events}:
        assert total(values, "gateway_events_total", code=code) == sum(
            1 for e in events if e["code"] == code
        )
    origin = sum(1 for m in collector.on("/tx/move") if "origin_unknown" in m.json()["exceptions"])
    assert total(values, "gateway_transaction_exceptions_total", code="origin_unknown") == origin
    assert total(values, "gateway_device_events_total", device="fl-07", event="rejected") == 2
    assert total(values, "gateway_device_up", device="fl-07") == 1
    assert total(values, "gateway_broker_connected") == 1
    assert total(values, "gateway_outbox_messages") == 0
    assert total(values, "gateway_broker_published_total") >= len(truth)
    # Round trips to the broker were timed, each within the PUBACK timeout.
    timed = total(values, "gateway_broker_round_trip_seconds_count")
    assert 1 <= timed <= total(values, "gateway_broker_published_total")
    assert 0 < total(values, "gateway_broker_round_trip_seconds_sum") < 10 * timed
    promtool = shutil.which("promtool")
    if promtool is not None:  # Debian's prometheus package (.ci/run installs it)
        check = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
        )
        said, _ = await check.communicate(text.encode())
        assert check.returncode == 0, said.decode()


async def test_readyz_says_why_while_the_broker_is_down_and_healthz_stays_up(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = build(ops_site(tmp_path, mosquitto.port), tmp_path)
    async with running(config) as gateway:
        base = await listening(gateway)
        async with asyncio.timeout(10):
            while (await get(f"{base}/readyz"))[0] != 200:
                await asyncio.sleep(0.05)
        mosquitto.stop()
        gone = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):
            while (ready := await get(f"{base}/readyz"))[0] != 503:
                await asyncio.sleep(0.05)
        assert asyncio.get_running_loop().time() - gone < 1.0  # unready within a second
        assert "not connected to the broker" in ready[1]
        assert (await get(f"{base}/healthz"))[0] == 200
        _, text = await get(f"{base}/metrics")
        assert total(samples(text), "gateway_broker_connected") == 0
        mosquitto.start()
        async with asyncio.timeout(15):
            while (await get(f"{base}/readyz"))[0] != 200:
                await asyncio.sleep(0.1)


async def test_healthz_fails_when_the_rules_loop_stops_going_round(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build(ops_site(tmp_path, mosquitto.port, alive_s=0.5), tmp_path)
    async with running(config) as gateway:
        base = await listening(gateway)
        assert (await get(f"{base}/healthz"))[0] == 200
        assert gateway.runner is not None
        hung = asyncio.Event()

        async def stuck(*_: object) -> None:
            hung.set()
            await asyncio.Event().wait()  # a commit that never returns

        monkeypatch.setattr(gateway.runner.recorder, "record", stuck)
        await hung.wait()
        async with asyncio.timeout(5):
            while (health := await get(f"{base}/healthz"))[0] != 503:
                await asyncio.sleep(0.1)
        assert "rules loop has not gone round" in health[1]


def test_listening_beyond_localhost_needs_a_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a password"):
        build(ops_site(tmp_path, 1883, host="0.0.0.0"), tmp_path)
    build(ops_site(tmp_path, 1883, host="0.0.0.0", password=PASSWORD), tmp_path)
    build(ops_site(tmp_path, 1883, host="::1"), tmp_path)


async def test_client_certificates_stand_in_for_a_password_off_localhost(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(tmp_path / "server.pem")
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(tmp_path / "server.pem", append=True)
    server.private_key_pem.write_to_path(tmp_path / "server.key")
    ca.cert_pem.write_to_path(tmp_path / "clients-ca.pem")
    tls = {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "clients-ca.pem"}
    # Beyond localhost: client certificates are enough, a server certificate alone is not.
    build(ops_site(tmp_path, 1883, host="0.0.0.0", tls=tls), tmp_path)
    with pytest.raises(ConfigError, match="client certificates"):
        build(
            ops_site(tmp_path, 1883, host="0.0.0.0", tls={**tls, "client_ca_file": None}), tmp_path
        )
    config = build(ops_site(tmp_path, mosquitto.port, tls=tls), tmp_path)

    def client(issuer: trustme.CA | None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        if issuer is not None:
            issuer.issue_cert("supervisor@site").configure_cert(context)
        return context

    async with running(config) as gateway:
        base = (await listening(gateway)).replace("http://", "https://")
        status, text = await get(f"{base}/metrics", ssl=client(ca))
        assert status == 200 and "gateway_outbox_messages" in text
        for issuer in (None, stranger):  # no certificate, or one of another CA
            with pytest.raises(aiohttp.ClientError):
                await get(f"{base}/metrics", ssl=client(issuer))
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            await get(f"{base.replace('https://', 'http://')}/healthz")


async def test_a_password_is_asked_for_and_checked(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = build(ops_site(tmp_path, mosquitto.port, password=PASSWORD), tmp_path)
    async with running(config) as gateway:
        base = await listening(gateway)
        status, _ = await get(f"{base}/metrics")
        assert status == 401
        wrong = {"Authorization": aiohttp.encode_basic_auth("gateway", "not the secret")}
        assert (await get(f"{base}/metrics", headers=wrong))[0] == 401
        right = {"Authorization": aiohttp.encode_basic_auth("gateway", PASSWORD)}
        status, text = await get(f"{base}/metrics", headers=right)
        assert status == 200
        assert "gateway_outbox_messages" in text


@contextlib.contextmanager
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def datagrams(sock: socket.socket) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    while True:
        yield (await loop.sock_recv(sock, 4096)).decode()


async def test_systemd_hears_ready_watchdog_status_and_stopping(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        raw = site_config(tmp_path, broker_port=mosquitto.port, scanner=None)
        heard: list[str] = []

        async def listen() -> None:
            async for message in datagrams(sock):
                heard.append(message)

        listener = asyncio.create_task(listen())
        async with running(build(raw, tmp_path)):
            async with asyncio.timeout(5):
                while sum("WATCHDOG=1" in m for m in heard) < 3:
                    await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        listener.cancel()
    assert heard[0].startswith("READY=1\nSTATUS=")
    assert "STOPPING=1" in heard[-1]
    assert any("broker connected" in m for m in heard)


async def test_a_hung_rules_loop_stops_feeding_the_watchdog(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    with notify_socket(tmp_path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # WATCHDOG=1 every 0.1 s while alive
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        heard: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()

        async def listen() -> None:
            async for message in datagrams(sock):
                heard.append((loop.time(), message))

        def fed_since(t: float) -> int:
            return sum(1 for at, m in heard if at >= t and "WATCHDOG=1" in m)

        listener = asyncio.create_task(listen())
        config = build(ops_site(tmp_path, mosquitto.port, alive_s=0.5), tmp_path)
        async with running(config) as gateway:
            async with asyncio.timeout(5):
                while fed_since(0) < 3:
                    await asyncio.sleep(0.05)
            assert gateway.runner is not None
            hung = asyncio.Event()

            async def stuck(*_: object) -> None:
                hung.set()
                await asyncio.Event().wait()  # a commit that never returns

            monkeypatch.setattr(gateway.runner.recorder, "record", stuck)
            await hung.wait()
            since = loop.time()
            await asyncio.sleep(2.0)
            # Fed for at most alive_s (0.5 s) and one period after the hang, then never.
            assert fed_since(since + 0.8) == 0
            assert fed_since(since) <= 8
        listener.cancel()


def test_the_exception_codes_counted_are_the_ones_published() -> None:
    """The metrics count `DockTransaction.exception_codes`; the payload shows the same codes."""
    at = dt.datetime(2026, 12, 7, 8, tzinfo=dt.UTC)
    items = tuple(
        ItemResult(Item(key=f"sscc:{sscc('0614141', n)}", sscc=sscc("0614141", n)), result)
        for n, result in enumerate(
            (DockResult.ACCEPTED, DockResult.UNEXPECTED, DockResult.EXPIRED, DockResult.UNEXPECTED)
        )
    )
    tx = DockTransaction(
        kind=DockKind.RECEIVE,
        door="D03",
        reference="ASN-1",
        items=items,
        source=EvidenceSource.PORTAL,
        device="d03-reader",
        evidence_id="pass-1",
        started_at=at,
        occurred_at=at,
        weight=WeightCheck(
            expected_kg=500, measured_kg=430, difference_kg=-70, within=False, tolerance_kg=10
        ),
    )
    published = [e["code"] for e in dock_payload(tx, Topics("DC1", "dock-1"))["exceptions"]]
    assert (
        tx.exception_codes
        == published
        == [
            "unexpected",
            "expired",
            "unexpected",
            "weight_mismatch",
        ]
    )
    metrics = GatewayMetrics()
    metrics.committed([tx], [])
    values = samples(metrics.exposition().decode())
    assert total(values, "gateway_transaction_exceptions_total", code="unexpected") == 2
    assert total(values, "gateway_transaction_exceptions_total", code="weight_mismatch") == 1
    assert total(values, "gateway_transactions_total", type="receive") == 1


async def test_a_taken_port_leaves_the_gateway_working_until_it_is_free(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    pallet = sscc("0376123", 5)
    config = build(ops_site(tmp_path, mosquitto.port, port=port), tmp_path)
    async with (
        Collector(mosquitto.port) as collector,
        ScannerSimulator(tmp_path / "scan0") as sim,
        running(config) as gateway,
    ):
        await wait_device(gateway, "fl-07", DeviceState.CONNECTED)
        await sim.run([Type(sscc_label(pallet), aim="]C1"), Type("A-01-01")])
        await collector.wait_for(lambda c: len(c.on("/tx/move")) == 1)
        assert gateway.ops is not None
        assert gateway.ops.port is None  # not listening, and still at work
        squatter.close()
        assert await listening(gateway) == f"http://127.0.0.1:{port}"
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
