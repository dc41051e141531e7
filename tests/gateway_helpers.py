"""Test helpers: a site config for tests and a gateway running in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.app import Gateway
from gateway.config import GatewayConfig, parse_config
from gateway.health import DeviceState
from gateway.schemas import validator

LOCATIONS = ["A-01-01", "A-01-02", "B-02-01", "B-02-02", "C-03-01"]


def site_config(
    tmp_path: Path,
    *,
    broker_port: int,
    scanner: Path | None,
    protocol: str = "5",
    reader_port: int | None = None,
    **rules: Any,
) -> dict[str, Any]:
    devices: list[dict[str, Any]] = []
    if scanner is not None:
        devices.append(
            {
                "id": "fl-07",
                "kind": "barcode_scanner",
                "transport": {"type": "serial", "port": str(scanner)},
                "backoff": {"min_s": 0.05, "max_s": 0.3},
            }
        )
    if reader_port is not None:
        devices.append(
            {
                "id": "d03-reader",
                "kind": "llrp_reader",
                "door": "D03",
                "transport": {"type": "tcp", "host": "127.0.0.1", "port": reader_port},
                "antennas": {"outside": [1, 2], "inside": [3, 4]},
                "keepalive_s": 1.0,
                "backoff": {"min_s": 0.05, "max_s": 0.3},
            }
        )
    return {
        "gateway": {"site": "DC1", "id": "dock-1", "shutdown_grace_s": 5},
        "broker": {
            "host": "127.0.0.1",
            "port": broker_port,
            "protocol": protocol,
            "keepalive_s": 5,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
        },
        "storage": {"path": str(tmp_path / "gateway.db")},
        "logging": {"format": "console", "level": "debug"},
        "rules": {"move": {"timeout_s": 30, "repeat_window_s": 1.0, **rules}},
        "devices": devices,
    }


def build(raw: dict[str, Any], tmp_path: Path) -> GatewayConfig:
    return parse_config(raw, tmp_path / "site.toml")


@contextlib.asynccontextmanager
async def running(
    config: GatewayConfig, *, clock: Callable[[], dt.datetime] | None = None
) -> AsyncIterator[Gateway]:
    """Run a gateway until the block ends; then stop it and check it stopped cleanly.

    `clock`: the gateway's clock (an `AcceleratedClock` plays a scenario faster than real
    time); the wall clock by default.
    """
    gateway = Gateway(config) if clock is None else Gateway(config, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def wait_device(
    gateway: Gateway, device: str, state: DeviceState, timeout: float = 10
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        health = gateway.board.devices.get(device)
        if health is not None and health.state is state:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{device} never became {state}: {health and health.state}")
        await asyncio.sleep(0.02)


async def wait_reference_data(gateway: Gateway, *wanted: str, timeout: float = 10) -> None:
    """Wait until the gateway holds the WMS's reference data `wanted` ("asn/ASN-1",
    "shipment/SO-2", "product/<gtin>"): it has taken them in and stored them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        held = set()
        if gateway.store is not None:
            held = {f"{row.kind}/{row.key}" for row in await gateway.store.reference_data()}
        if held >= set(wanted):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the gateway never took in {sorted(set(wanted) - held)}")
        await asyncio.sleep(0.02)


def assert_valid(schema: str, payload: Any) -> None:
    errors = sorted(validator(schema).iter_errors(payload), key=str)
    assert not errors, [e.message for e in errors]


async def ask_to_close(port: int, reference: str, *, timeout: float = 60) -> dict[str, Any]:
    """Ask gateway dock-1 of site DC1 to close `reference`, as the WMS does; its answer."""
    return await wms_request(port, "cmd/close", {"reference": reference}, timeout=timeout)


async def wms_request(
    port: int, command: str, doc: dict[str, Any], *, timeout: float = 60
) -> dict[str, Any]:
    """Send `doc` on gateway dock-1's `command` topic (`cmd/close`, `cmd/count`) as the WMS
    does (MQTT 5 request/response, answered under `wms/DC1/replies/`); its answer."""
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=f"test-wms-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as wms:
        await wms.subscribe("wms/DC1/replies/#", qos=1)
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = "wms/DC1/replies/test"
        properties.CorrelationData = uuid.uuid4().bytes
        await wms.publish(f"gw/DC1/dock-1/{command}", json.dumps(doc), qos=1, properties=properties)
        async with asyncio.timeout(timeout):
            message = await anext(aiter(wms.messages))
    assert isinstance(message.payload, bytes)
    answer: dict[str, Any] = json.loads(message.payload)
    return answer
