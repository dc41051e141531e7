"""Ownership on a site of several gateways (#17): each takes the ASNs and ship orders of its own
doors and the WMS tasks that are its own; one the WMS moves to another gateway's door changes
hands."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.app import Gateway
from gateway.config import ConfigError, GatewayConfig
from gateway.domain import Scan, ScanKind, WmsTask, WmsTaskDeleted
from gateway.wire.inbound import InboundRoutes, Ownership, Received
from gateway.wire.topics import Topics
from simulators.fleet import Did, FleetController, overlapping_leases
from simulators.gs1 import sscc
from tests.gateway_helpers import assert_valid, build, running, site_config
from tests.mqtt_helpers import Collector, Mosquitto

pytestmark = pytest.mark.broker

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)


def gateway_config(tmp_path: Path, port: int, gateway: str, doors: list[str]) -> GatewayConfig:
    folder = tmp_path / gateway
    folder.mkdir()
    raw = site_config(folder, broker_port=port, scanner=None)
    raw["gateway"].update(id=gateway, doors=doors)
    raw["agv"] = {"enabled": True, "task_board": gateway == "dock-1"}
    return build(raw, folder)


def asn(asn_id: str, door: str) -> dict[str, Any]:
    line = {"line": 1, "sscc": sscc("0614141", 7), "quantity": 1}
    return {"asn_id": asn_id, "door": door, "lines": [line]}


def task(task_id: str, **extra: str) -> dict[str, Any]:
    return {"task_id": task_id, "sscc": sscc("0614141", 9), "source": "D01", **extra}


async def until(what: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not what():
            await asyncio.sleep(0.05)


def held(gateway: Gateway) -> tuple[set[str], set[str], set[str]]:
    """The ASNs, ship orders and WMS tasks a gateway holds."""
    if gateway.runner is None:  # not started yet
        return set(), set(), set()
    engine = gateway.runner.engine
    assert engine.agv is not None
    tasks = {t for t in ("T-1", "T-2", "T-3") if t in engine.agv.open}  # not finished
    return set(engine.dock.asns), set(engine.dock.orders), tasks


async def test_each_gateway_takes_its_own_doors_and_tasks(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    first = gateway_config(tmp_path, mosquitto.port, "dock-1", ["D01", "D02", "D03", "D04"])
    second = gateway_config(tmp_path, mosquitto.port, "dock-2", ["D05", "D06", "D07", "D08"])
    records = {
        "asn/ASN-2": asn("ASN-2", "D02"),
        "asn/ASN-6": asn("ASN-6", "D06"),
        "shipment/SO-7": {"order_id": "SO-7", "door": "D07", "pallets": [sscc("0614141", 8)]},
        "task/T-1": task("T-1", destination="A-01-01"),  # no gateway: the task board's
        "task/T-2": task("T-2", destination="A-01-02", gateway="dock-2"),
        "task/T-3": task("T-3", destination="A-01-03", gateway="dock-9"),  # nobody here
    }
    async with running(first) as one, running(second) as two:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
            for path, doc in records.items():
                await wms.publish(f"wms/DC1/{path}", json.dumps(doc), qos=1, retain=True)
            await until(lambda: held(one) == ({"ASN-2"}, set(), {"T-1"}))
            await until(lambda: held(two) == ({"ASN-6"}, {"SO-7"}, {"T-2"}))
            # The WMS moves ASN-2 to D05: dock-1 drops it, dock-2 takes it.
            await wms.publish("wms/DC1/asn/ASN-2", json.dumps(asn("ASN-2", "D05")), retain=True)
            await until(lambda: held(two)[0] == {"ASN-2", "ASN-6"})
            await until(lambda: held(one)[0] == set())
        assert one.store is not None and two.store is not None
        stored_one = {f"{r.kind}/{r.key}" for r in await one.store.reference_data()}
        assert not stored_one & {"asn/ASN-2", "asn/ASN-6", "shipment/SO-7"}


def test_a_device_at_a_door_the_gateway_does_not_own_is_a_config_error(tmp_path: Path) -> None:
    raw = site_config(tmp_path, broker_port=1883, scanner=None, reader_port=5084)  # door D03
    raw["gateway"]["doors"] = ["D05"]
    with pytest.raises(ConfigError, match=r"not one of gateway\.doors"):
        build(raw, tmp_path)


# --- site state: a pallet's true origin, whichever gateway saw it last --------------------------


def following(tmp_path: Path, port: int, gateway: str) -> GatewayConfig:
    folder = tmp_path / gateway
    folder.mkdir()
    raw = site_config(folder, broker_port=port, scanner=None)
    raw["gateway"]["id"] = gateway
    raw["state"] = {"follow_site": True}
    return build(raw, folder)


async def move(gateway: Gateway, pallet: str, to: str, scanner: str) -> None:
    """A forklift's scans: the pallet, then the location (in the gateway's inbox)."""
    at = dt.datetime.now(dt.UTC)
    await gateway.queue.put(Scan(scanner, at, pallet, ScanKind.PALLET, sscc=pallet))
    await gateway.queue.put(Scan(scanner, at, to, ScanKind.LOCATION, location=to))


async def test_a_move_on_one_gateway_starts_where_another_gateway_put_the_pallet(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallet = sscc("0614141", 42)
    async with (
        Collector(mosquitto.port) as collector,
        running(following(tmp_path, mosquitto.port, "dock-1")) as one,
        running(following(tmp_path, mosquitto.port, "dock-2")) as two,
    ):
        for gateway in (one, two):
            await subscribed(gateway)

        def moves() -> list[dict[str, Any]]:
            return [m.json() for m in collector.on("/tx/move")]

        await move(one, pallet, "A-01-01", "fl-1")  # dock-1's forklift puts it away
        await collector.wait_for(lambda c: len(moves()) == 1)
        # dock-2 learns it from dock-1's retained state/location/A-01-01.
        await until(
            lambda: (
                two.runner is not None and two.runner.engine.moves.location_of(pallet) == "A-01-01"
            )
        )
        await move(two, pallet, "B-02-01", "fl-2")  # ... and dock-2's forklift moves it on
        await collector.wait_for(lambda c: len(moves()) == 2)
        assert moves()[1]["from_location"] == "A-01-01"
        assert "origin_unknown" not in moves()[1]["exceptions"]
        # dock-1 drops its older record: the pallet is in one gateway's state only.
        await collector.wait_for(
            lambda c: any(
                m.topic.endswith("dock-1/state/location/A-01-01") and not m.payload
                for m in c.messages
            )
        )
        await until(
            lambda: (
                one.runner is not None and one.runner.engine.moves.location_of(pallet) == "B-02-01"
            )
        )
        await move(one, pallet, "C-03-01", "fl-1")  # back on dock-1
        await collector.wait_for(lambda c: len(moves()) == 3)
        assert moves()[2]["from_location"] == "B-02-01"
        assert one.store is not None and two.store is not None
        assert await one.store.pallet_location(pallet) == "C-03-01"  # published after commit
        await until(
            lambda: (
                two.runner is not None and two.runner.engine.moves.location_of(pallet) == "C-03-01"
            )
        )
        async with asyncio.timeout(10):  # the rules' state first, then its commit
            while await two.store.pallet_location(pallet) is not None:
                await asyncio.sleep(0.05)
        for message in collector.on(""):
            if "/state/location/" in message.topic and message.payload:
                assert_valid("state-location", message.json())


async def subscribed(gateway: Gateway) -> None:
    async with asyncio.timeout(10):
        while gateway.bridge is None or not gateway.bridge.subscribed:
            await asyncio.sleep(0.02)


# --- the site's task board puts away what the other gateways receive ---------------------------


async def test_the_task_board_puts_away_a_pallet_another_gateway_received_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    pallet = sscc("0614141", 77)
    board_raw = site_config(tmp_path / "b", broker_port=mosquitto.port, scanner=None)
    board_raw["gateway"].update(id="dock-1", doors=["D01"])
    board_raw["agv"] = {
        "enabled": True,
        "site_putaway": True,
        "layout": {
            "doors": [{"door": "D05", "x": 0.0, "y": 0.0}],
            "locations": [
                {
                    "location": "RA-01",
                    "zone": "AMBIENT",
                    "velocity": "A",
                    "capacity_pallets": 4,
                    "x": 3.0,
                    "y": 4.0,
                }
            ],
        },
    }
    dock_raw = site_config(tmp_path / "d", broker_port=mosquitto.port, scanner=None)
    dock_raw["gateway"].update(id="dock-2", doors=["D05"])
    dock_raw["devices"] = [
        {
            "id": "rcv-d05",
            "kind": "barcode_scanner",
            "role": "receiving",
            "location": "D05",
            "transport": {"type": "serial", "port": str(tmp_path / "no-such-port")},
        }
    ]
    for folder in ("b", "d"):
        (tmp_path / folder).mkdir()
    asn = {"asn_id": "ASN-5", "door": "D05", "lines": [{"line": 1, "sscc": pallet, "quantity": 1}]}
    async with (
        Collector(mosquitto.port) as collector,
        running(build(board_raw, tmp_path / "b")) as board,
        running(build(dock_raw, tmp_path / "d")) as dock,
    ):
        for gateway in (board, dock):
            await subscribed(gateway)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms:
            await wms.publish("wms/DC1/asn/ASN-5", json.dumps(asn), qos=1, retain=True)
        await until(lambda: dock.runner is not None and "ASN-5" in dock.runner.engine.dock.asns)
        at = dt.datetime.now(dt.UTC)
        await dock.queue.put(Scan("rcv-d05", at, pallet, ScanKind.PALLET, sscc=pallet))
        await collector.wait_for(lambda c: c.on("dock-2/tx/receive"))
        await collector.wait_for(lambda c: c.on("dock-1/agv/task"))
        (created,) = [m.json() for m in collector.on("dock-1/agv/task")]
        assert created["event"] == "created"
        assert created["task"]["sscc"] == pallet and created["task"]["source"] == "D05"
        assert created["task"]["destination"] == "RA-01"
        # The same receipt again (a redelivery): no second task.
        (receipt,) = collector.on("dock-2/tx/receive")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-replay") as again:
            await again.publish("gw/DC1/dock-2/tx/receive", receipt.payload, qos=1)
            forged = {**receipt.json(), "door": "D01"}  # an id that is not the payload's
            await again.publish("gw/DC1/dock-2/tx/receive", json.dumps(forged), qos=1)
        await collector.wait_for(
            lambda c: any(m.json()["code"] == "site_state_rejected" for m in c.on("dock-1/event"))
        )
        assert len(collector.on("dock-1/agv/task")) == 1


def test_every_wms_task_goes_to_exactly_one_task_board_of_the_site() -> None:
    # The site: dock-1 has the site's board; dock-3 is the board of zone Z-A, dock-4 of Z-B
    # (the same zone_boards on every gateway); dock-2 has no board.
    zones = (("Z-A", "dock-3"), ("Z-B", "dock-4"))
    boards = {
        "dock-1": Ownership("dock-1", task_board=True, zone_boards=zones),
        "dock-2": Ownership("dock-2", task_board=False, zone_boards=zones),
        "dock-3": Ownership("dock-3", task_board=False, zone_boards=zones),
        "dock-4": Ownership("dock-4", task_board=False, zone_boards=zones),
    }
    cases = {
        (None, None): "dock-1",  # no zone: the site's board
        (None, "Z-A"): "dock-3",
        (None, "Z-B"): "dock-4",
        (None, "Z-C"): "dock-1",  # a zone no board serves: the site's board
        ("dock-2", "Z-A"): "dock-2",  # a gateway named comes first
    }
    for (gateway, zone), owner in cases.items():
        takers = [name for name, owns in boards.items() if owns.owns_task(gateway, zone)]
        assert takers == [owner], (gateway, zone, takers)


def test_a_zone_board_decodes_only_its_zones_tasks_and_the_config_says_so(tmp_path: Path) -> None:
    raw = site_config(tmp_path, broker_port=1883, scanner=None)
    raw["gateway"]["id"] = "dock-3"
    raw["agv"] = {"enabled": True, "task_board": False, "zone_boards": {"Z-A": "dock-3"}}
    config = build(raw, tmp_path)
    assert config.agv.zone_boards == {"Z-A": "dock-3"}
    routes = InboundRoutes(
        Topics("DC1", "dock-3"),
        agv=True,
        vda5050_interface=None,
        ownership=Ownership("dock-3", None, False, tuple(config.agv.zone_boards.items())),
    )

    def decode(task_id: str, **extra: str) -> object:
        doc = task(task_id, destination="A-01-01", **extra)
        message = Received(f"wms/DC1/task/{task_id}", json.dumps(doc).encode(), True, T0)
        return routes.decode(message, lambda *_: None)

    mine = decode("T-1", zone="Z-A")
    assert isinstance(mine, WmsTask) and mine.zone == "Z-A"
    assert isinstance(decode("T-2", zone="Z-B"), WmsTaskDeleted)  # the site's board's
    assert isinstance(decode("T-3"), WmsTaskDeleted)
    raw["agv"]["zone_boards"] = {"Z-A": "no such/gateway"}
    with pytest.raises(ConfigError, match="zone_boards"):
        build(raw, tmp_path)


def two_boards(tmp_path: Path, port: int) -> list[GatewayConfig]:
    """dock-1 (door D01) the site's task board, dock-2 (door D05) the board of zone Z-A; the
    same zone_boards on both."""
    configs = []
    for name, doors, site_board in (("dock-1", ["D01"], True), ("dock-2", ["D05"], False)):
        folder = tmp_path / name
        folder.mkdir()
        raw = site_config(folder, broker_port=port, scanner=None)
        raw["gateway"].update(id=name, doors=doors)
        raw["agv"] = {"enabled": True, "task_board": site_board, "zone_boards": {"Z-A": "dock-2"}}
        configs.append(build(raw, folder))
    return configs


async def test_two_running_boards_each_queue_only_their_own_tasks(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # dock-1 the site's board, dock-2 the board of zone Z-A; the same zone_boards on both.
    configs = two_boards(tmp_path, mosquitto.port)
    pallets = {n: sscc("0614141", 20 + n) for n in (1, 2, 3)}  # a task per pallet
    records = {
        "T-1": task("T-1", destination="A-01-01", sscc=pallets[1]),  # no zone: the site's board
        "T-2": task("T-2", destination="A-01-02", sscc=pallets[2], zone="Z-A"),
        # A zone no board serves: the site's board.
        "T-3": task("T-3", destination="A-01-03", sscc=pallets[3], zone="Z-B"),
    }
    async with (
        running(configs[0]) as one,
        running(configs[1]) as two,
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms,
    ):
        for task_id, doc in records.items():
            await wms.publish(f"wms/DC1/task/{task_id}", json.dumps(doc), qos=1, retain=True)
        await until(lambda: held(one)[2] == {"T-1", "T-3"} and held(two)[2] == {"T-2"})
        # The WMS moves T-1 into zone Z-A: it changes boards.
        moved = task("T-1", destination="A-01-01", sscc=pallets[1], zone="Z-A")
        await wms.publish("wms/DC1/task/T-1", json.dumps(moved), qos=1, retain=True)
        await until(lambda: held(one)[2] == {"T-3"} and held(two)[2] == {"T-1", "T-2"})
        for task_id in records:
            await wms.publish(f"wms/DC1/task/{task_id}", b"", qos=1, retain=True)


@pytest.mark.slow(8)
async def test_a_fleet_per_board_leases_each_task_once_from_its_own_board(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # dock-1 the site's board, dock-2 zone Z-A's; a fleet controller asks each board.
    configs = two_boards(tmp_path, mosquitto.port)
    zones = {f"T-{n:02d}": ("Z-A" if n % 2 else "Z-B" if n % 5 == 0 else None) for n in range(20)}
    board = {t: "dock-2" if z == "Z-A" else "dock-1" for t, z in zones.items()}
    fleets = {
        name: FleetController(
            port=mosquitto.port,
            base=f"gw/DC1/{name}",
            fleet_id=f"fleet-{name}",
            robots=[f"{name}-r{n}" for n in range(3)],
            capabilities=("pallet",),
            step_s=0.02,
            poll_s=0.2,
            request_timeout_s=3.0,
        )
        for name in ("dock-1", "dock-2")
    }
    async with (
        Collector(mosquitto.port) as collector,
        running(configs[0]),
        running(configs[1]),
        aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="test-wms") as wms,
        fleets["dock-1"],
        fleets["dock-2"],
    ):
        for n, (task_id, zone) in enumerate(zones.items()):
            doc = task(task_id, destination=f"A-02-{n:02d}", sscc=sscc("0614141", 300 + n))
            if zone is not None:
                doc["zone"] = zone
            await wms.publish(f"wms/DC1/task/{task_id}", json.dumps(doc), qos=1, retain=True)
        wanted = Counter(board.values())
        async with asyncio.timeout(60):
            await asyncio.gather(*(fleet.run_until(wanted[name]) for name, fleet in fleets.items()))
        await collector.wait_for(lambda c: len(c.on("/tx/move")) >= len(zones))
        await asyncio.sleep(0.5)  # nothing more comes
        for task_id in zones:
            await wms.publish(f"wms/DC1/task/{task_id}", b"", qos=1, retain=True)
    outcomes = [o for fleet in fleets.values() for o in fleet.log]
    assert overlapping_leases(outcomes) == []
    dropped = Counter(o.task_id for o in outcomes if o.did is Did.DROPPED)
    assert dropped == Counter(list(zones))  # each task done once, site-wide
    # Each fleet did the tasks of the board it asks, and that board confirmed them.
    for o in outcomes:
        assert o.fleet == f"fleet-{board[o.task_id]}", o
    moves = [m.json() for m in collector.on("/tx/move")]
    assert Counter(m["task_id"] for m in moves) == Counter(list(zones))
    for move in moves:
        assert move["gateway"] == board[move["task_id"]], move
        assert_valid("move", move)
