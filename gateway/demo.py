"""`gateway demo`: the gateway, a simulated forklift scanner and an embedded broker, live.

The scanner simulator (a pseudo-terminal) plays forklift shifts with a few planted problems
(a torn label, a bad check digit, a location scanned first); the gateway validates the moves and
publishes them; a subscriber prints every transaction, event and status as it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sys
import tempfile
import tomllib
import webbrowser
from collections.abc import AsyncIterator, Coroutine
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt
import typer
from amqtt.broker import Broker

from gateway.app import Gateway
from gateway.config import GatewayConfig, ModbusScaleDevice, parse_config
from gateway.domain.epc import encode_sscc96
from gateway.health import DeviceState
from gateway.wire.topics import Topics
from simulators.dock_day import Truck, dock_day
from simulators.fleet import FleetController
from simulators.gs1 import corrupt_check_digit, sscc, sscc_label
from simulators.handheld import HandheldTerminal
from simulators.llrp import LlrpReaderSimulator, Scenario, StrayTag
from simulators.modbus_scale import ModbusScaleSimulator
from simulators.scanner import Garbage, ScannerSimulator, Step, Type, shift_script

LOCATIONS = [
    f"{aisle}-{bay:02d}-{level:02d}" for aisle in "ABC" for bay in (1, 2) for level in (1, 2)
]


async def run_demo(
    *,
    broker: str | None,
    pallets: int,
    pace_s: float,
    state_dir: Path | None,
    http_port: int = 9108,
    browser: bool = False,
    pallet_every_s: float = 8.0,
) -> None:
    """Run the demo until Ctrl-C; the status page on `http_port` (taken: any free port)."""
    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        workdir = state_dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # Two dock doors: trucks unloaded at D03 against ASNs, loaded at D05 against orders.
        trucks, products = dock_day(40, pallet_every_s=pallet_every_s)
        receiving = Scenario(
            pallets=[p for t in trucks if t.direction == "inbound" for p in t.pallets], door="D03"
        )
        shipping = Scenario(
            pallets=[p for t in trucks if t.direction == "outbound" for p in t.pallets], door="D05"
        )
        floor = Scenario(strays=_floor_pallets(), door="zones", seed=5)
        example = demo_config(workdir, host="127.0.0.1", port=1883, protocol="5")
        scale_config = next(d for d in example.devices if isinstance(d, ModbusScaleDevice))
        async with (
            _broker(broker) as (host, port, protocol),
            LlrpReaderSimulator(receiving, reads_per_s=1500) as d03,
            LlrpReaderSimulator(shipping, reads_per_s=1500) as d05,
            LlrpReaderSimulator(floor, reads_per_s=200) as zones,
            ModbusScaleSimulator(
                weight=scale_config.weight, status=scale_config.status, seed=3
            ) as scale,
        ):
            config = demo_config(
                workdir,
                host=host,
                port=port,
                protocol=protocol,
                reader_ports=(d03.port, d05.port, zones.port),
                scale_port=scale.port,
                http_port=http_port if _free(http_port) else 0,
            )
            _banner(config, embedded=broker is None)
            inbound = [t for t in trucks if t.direction == "inbound"]
            background = [
                _wms(config, trucks, products, {"D03": d03, "D05": d05}),
                _scale_station(scale, d03, inbound),
                _fleet(config),
                _clerk(config),
                _counts(config),
            ]
            await _run(
                config,
                workdir / "scanner-fl-07",
                pallets=pallets,
                pace_s=pace_s,
                extra=background,
                browser=browser,
            )


def demo_config(
    workdir: Path,
    *,
    host: str,
    port: int,
    protocol: str,
    reader_ports: tuple[int, int, int] = (5084, 5085, 5086),
    scale_port: int = 502,
    http_port: int | None = None,
) -> GatewayConfig:
    """The shipped demo configuration, pointed at this run's broker, devices and folder; with
    `http_port`, the status page and metrics on localhost (0: any free port)."""
    example = resources.files("gateway").joinpath("examples/demo.toml")
    raw: dict[str, Any] = tomllib.loads(example.read_text("utf-8"))
    raw["broker"].update(host=host, port=port, protocol=protocol)
    raw["storage"]["path"] = str(workdir / "gateway.db")
    raw["devices"][0]["transport"]["port"] = str(workdir / "scanner-fl-07")
    raw["devices"][1]["transport"]["port"] = reader_ports[0]
    raw["devices"][2]["transport"]["port"] = reader_ports[1]
    raw["devices"][3]["transport"]["port"] = reader_ports[2]
    raw["devices"][4]["transport"]["port"] = scale_port
    if http_port is not None:
        raw["http"] = {"enabled": True, "host": "127.0.0.1", "port": http_port}
    raw["handheld"] = {"enabled": True}  # a clerk's PDA at D03 (`_clerk`)
    return parse_config(raw, Path(str(example)))


def _free(port: int) -> bool:
    """Whether `port` can be listened on at localhost now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def _broker(address: str | None) -> AsyncIterator[tuple[str, int, str]]:
    if address is not None:
        host, _, given = address.rpartition(":")
        yield host or "127.0.0.1", int(given or 1883), "5"
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    embedded = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await embedded.start()
    try:
        yield "127.0.0.1", port, "3.1.1"
    finally:
        await embedded.shutdown()


async def _run(
    config: GatewayConfig,
    link: Path,
    *,
    pallets: int,
    pace_s: float,
    extra: list[Coroutine[Any, Any, None]],
    browser: bool = False,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    async with ScannerSimulator(link) as scanner, asyncio.TaskGroup() as tg:
        view = tg.create_task(_live_view(config), name="demo.view")
        await asyncio.sleep(0.5)  # let the view subscribe before the first publish
        run = tg.create_task(gateway.run(stop), name="demo.gateway")
        shifts = tg.create_task(_shifts(gateway, scanner, pallets, pace_s), name="demo.shifts")
        others = [tg.create_task(c, name="demo.background") for c in extra]
        others.append(tg.create_task(_status_page(gateway, browser), name="demo.page"))
        await run
        for task in (shifts, view, *others):
            task.cancel()
    typer.echo("demo stopped")


async def _status_page(gateway: Gateway, browser: bool) -> None:
    """Print the status page's address once it listens; open it where there is a screen."""
    await gateway.http_listening.wait()
    assert gateway.ops is not None
    url = f"http://127.0.0.1:{gateway.ops.port}/"
    typer.echo(typer.style(f"Status page: {url}", bold=True) + " (doors, devices, alarms, charts)")
    screen = sys.platform in ("darwin", "win32") or any(
        os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY")
    )
    if browser and screen:
        await asyncio.to_thread(webbrowser.open, url)


async def _wms(
    config: GatewayConfig,
    trucks: list[Truck],
    products: list[dict[str, Any]],
    readers: dict[str, LlrpReaderSimulator],
) -> None:
    """The WMS: products, then each truck's ASN or ship order as it docks, closed after it."""
    site = config.gateway.site
    close_topic = f"{Topics(site, config.gateway.id).base}/cmd/close"
    while True:
        try:
            async with aiomqtt.Client(
                config.broker.host,
                config.broker.port,
                protocol=_protocol(config),
                identifier="demo-wms",
            ) as client:
                for product in products:
                    await client.publish(
                        f"wms/{site}/product/{product['gtin']}",
                        json.dumps(product),
                        qos=1,
                        retain=True,
                    )
                pending = sorted(trucks, key=lambda t: t.pallets[0].start_s)
                docked: list[Truck] = []
                while pending or docked:
                    for truck in list(pending):
                        if readers[truck.door].scenario_time >= truck.pallets[0].start_s - 2.0:
                            kind = "asn" if truck.direction == "inbound" else "shipment"
                            await client.publish(
                                f"wms/{site}/{kind}/{truck.reference}",
                                json.dumps(truck.document),
                                qos=1,
                                retain=True,
                            )
                            pending.remove(truck)
                            docked.append(truck)
                    for truck in list(docked):
                        if readers[truck.door].scenario_time >= truck.end_s + 4.0:
                            await client.publish(
                                close_topic, json.dumps({"reference": truck.reference}), qos=1
                            )
                            docked.remove(truck)
                    await asyncio.sleep(0.5)
                return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _scale_station(
    scale: ModbusScaleSimulator, reader: LlrpReaderSimulator, trucks: list[Truck]
) -> None:
    """Each inbound pallet is put on the scale at the door just before it crosses the portal.

    Planted: on the trucks with no problem or an unexpected case, the last pallet weighs 12 kg
    less than its cases should (cases crushed or emptied): its receipt carries a weight
    mismatch and raises an alarm.
    """
    visits: list[tuple[float, float]] = []  # (scenario time, kg): kg 0 takes the pallet off
    for truck in trucks:
        for n, (pallet, kg) in enumerate(zip(truck.pallets, truck.weights_kg, strict=True)):
            light = truck.problem in ("none", "unexpected case") and n == len(truck.pallets) - 1
            visits += [
                (pallet.start_s - 4.5, kg - (12.0 if light else 0.0)),
                (pallet.start_s - 1.5, 0.0),
            ]
    for at, kg in sorted(visits):
        while reader.scenario_time < at:  # noqa: ASYNC110 - the scenario clock is polled
            await asyncio.sleep(0.1)
        if kg:
            scale.load.place(kg, settle_s=1.0)
        else:
            scale.load.remove(settle_s=0.5)


async def _clerk(config: GatewayConfig) -> None:
    """A receiving clerk's PDA at D03: one pallet in eight the portal receives is reported
    damaged (crushed); the PDA loses its Wi-Fi for 20 s every minute and sends what it scanned
    meanwhile when it is back (applied exactly once, whatever the network did)."""
    topics = Topics(config.gateway.site, config.gateway.id)
    async with (
        HandheldTerminal(
            "pda-01",
            config.broker.port,
            host=config.broker.host,
            site=config.gateway.site,
            gateway=config.gateway.id,
            operator="clerk-1",
            protocol="5" if config.broker.protocol == "5" else "3.1.1",
        ) as pda,
        aiomqtt.Client(
            config.broker.host,
            config.broker.port,
            identifier="demo-clerk",
            protocol=_protocol(config),
        ) as client,
    ):
        await client.subscribe(topics.tx("receive"), qos=1)
        seen = 0
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            assert isinstance(message.payload, bytes | bytearray)
            tx = json.loads(message.payload)
            if tx.get("door") != "D03" or tx.get("evidence", {}).get("source") != "portal":
                continue
            pallets = [
                i["key"].removeprefix("sscc:") for i in tx["items"] if i["key"].startswith("sscc:")
            ]
            for pallet in pallets:
                seen += 1
                if seen % 8 == 0:
                    pda.scan("damage", sscc_label(pallet), door="D03", reason="crushed")
            pda.offline = int(loop.time()) % 60 < 20
            with contextlib.suppress(TimeoutError):
                await pda.flush()


def _floor_pallets() -> list[StrayTag]:
    """Pallets standing in the floor zones Z-01 and Z-02, which the gateway never received:
    the first count finds them unexpected and puts them there, the next ones find them."""
    zone_antennas = ((1, 2), (3, 4))
    return [
        StrayTag(encode_sscc96("0614141", f"39{n:08d}"), zone_antennas[n % 2], -55.0)
        for n in range(5)
    ]


async def _counts(config: GatewayConfig, *, first_s: float = 6.0, every_s: float = 120.0) -> None:
    """The WMS counts the floor zones Z-01 and Z-02 (`cmd/count`): open, closed 10 s later."""
    command = f"{Topics(config.gateway.site, config.gateway.id).base}/cmd/count"
    await asyncio.sleep(first_s)
    n = 0
    while True:
        n += 1
        count_id = f"CC-{n:04d}"
        try:
            async with aiomqtt.Client(
                config.broker.host,
                config.broker.port,
                protocol=_protocol(config),
                identifier="demo-wms-counts",
            ) as client:
                places = {"locations": ["Z-01", "Z-02"]}
                opened = {"count_id": count_id, "action": "open", **places}
                await client.publish(command, json.dumps(opened), qos=1)
                await asyncio.sleep(10.0)
                closed = {"count_id": count_id, "action": "close"}
                await client.publish(command, json.dumps(closed), qos=1)
        except aiomqtt.MqttError:
            pass
        await asyncio.sleep(every_s)


async def _fleet(config: GatewayConfig) -> None:
    """A fleet controller with three robots that put away the pallets received at D03."""
    fleet = FleetController(
        config.broker.host,
        config.broker.port,
        base=Topics(config.gateway.site, config.gateway.id).base,
        fleet_id="demo-fleet",
        robots=["agv-1", "agv-2", "agv-3"],
        capabilities=("pallet",),
        step_s=3.0,  # each of accepted -> picked -> dropped takes a few seconds
        poll_s=1.0,
        protocol="5" if config.broker.protocol == "5" else "3.1.1",
    )
    async with fleet:
        await fleet.run()


def _protocol(config: GatewayConfig) -> aiomqtt.ProtocolVersion:
    return (
        aiomqtt.ProtocolVersion.V5
        if config.broker.protocol == "5"
        else aiomqtt.ProtocolVersion.V311
    )


async def _shifts(gateway: Gateway, scanner: ScannerSimulator, pallets: int, pace_s: float) -> None:
    """Play shift after shift once the gateway has the scanner open."""
    # Polls the health record the driver updates (scans typed before the port opens are lost).
    while (h := gateway.board.devices.get("fl-07")) is None or h.state is not DeviceState.CONNECTED:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    shift = 0
    while True:
        steps, _ = shift_script(
            pallets=pallets, locations=LOCATIONS, seed=shift, pause_s=(pace_s * 0.5, pace_s * 1.5)
        )
        await scanner.run(_with_problems(steps, shift, pace_s))
        shift += 1


def _with_problems(steps: list[Step], shift: int, pace_s: float) -> list[Step]:
    """Plant the problems a real shift has: a damaged label, a torn read, a skipped pallet scan."""
    damaged = sscc_label(sscc("0614141", 900_000 + shift))
    planted: list[Step] = [
        Type(corrupt_check_digit(damaged), aim="]C1", pause_s=pace_s),
        Garbage(b"\x1b\x00#%&\r", pause_s=pace_s),
        Type("B-02-01", pause_s=pace_s),
    ]
    middle = len(steps) // 2
    return steps[:middle] + planted + steps[middle:]


async def _live_view(config: GatewayConfig) -> None:
    topics = Topics(config.gateway.site, config.gateway.id)
    protocol = (
        aiomqtt.ProtocolVersion.V5
        if config.broker.protocol == "5"
        else aiomqtt.ProtocolVersion.V311
    )
    while True:
        try:
            async with aiomqtt.Client(
                config.broker.host, config.broker.port, protocol=protocol, identifier="demo-view"
            ) as client:
                await client.subscribe(f"{topics.base}/#", qos=1)
                async for message in client.messages:
                    payload = message.payload
                    if not isinstance(payload, bytes | bytearray) or not payload:
                        continue
                    try:
                        line = describe(str(message.topic), json.loads(payload), topics)
                    except (ValueError, KeyError, TypeError):
                        line = f"(unreadable message on {message.topic})"
                    if line:
                        typer.echo(line)
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


_DEVICE_STATES: dict[str, str] = {}
_GATEWAY_STATE: dict[str, tuple[object, ...]] = {}


def describe(topic: str, payload: dict[str, Any], topics: Topics) -> str | None:
    """One readable line for a published message (device statuses only when the state changes)."""
    now = dt.datetime.now().strftime("%H:%M:%S")  # local time, for people
    rel = topic.removeprefix(topics.base + "/")
    if rel == "tx/move":
        origin = payload["from_location"] or "(unknown)"
        by = f" by robot {payload['evidence']['device']}" if payload.get("task_id") else ""
        # origin_unknown is every demo forklift pallet's (they were never received): not shown.
        flagged = [e for e in payload["exceptions"] if e != "origin_unknown"]
        colour = typer.colors.YELLOW if flagged else typer.colors.GREEN
        tag = typer.style(" MOVE  ", fg=colour, bold=True)
        problems = f"  ({', '.join(flagged)})" if flagged else ""
        return (
            f"{now} {tag} pallet {payload['sscc']}  {origin} -> {payload['to_location']}{by}"
            f"{problems}   tx {payload['tx_id'][:8]}"
        )
    if rel == "agv/task":
        task = payload["task"]
        event = payload["event"]
        tag = typer.style(" TASK  ", fg=typer.colors.BLUE, bold=True)
        if event == "created":
            return (
                f"{now} {tag} {task['kind']} pallet {task['sscc']}  "
                f"{task['source']} -> {task['destination']}"
            )
        if event == "leased":
            return f"{now} {tag} {task['sscc']} given to robot {task['robot']} ({task['fleet']})"
        if event in ("failed", "requeued", "cancelled"):
            why = f": {task['reason']}" if task["reason"] else ""
            return f"{now} {tag} {task['sscc']} {event}{why}"
        return None  # accepted, picked, done: the move line says it
    if rel == "zone/event":
        tag = typer.style(" ZONE  ", fg=typer.colors.MAGENTA)
        epc = payload["uri"] or payload["epc"]
        if payload["change"] == "moved":
            return f"{now} {tag} {epc} moved {payload['previous']} -> {payload['zone']}"
        where = payload["zone"] or payload["previous"]
        return f"{now} {tag} {epc} {payload['change']} {where}"
    if rel == "tx/count":
        totals = payload["totals"]
        colour = typer.colors.YELLOW if payload["adjustments"] else typer.colors.GREEN
        tag = typer.style(" COUNT ", fg=colour, bold=True)
        parts = ", ".join(
            f"{kind}: {t['found']} found, {t['missing']} missing, {t['unexpected']} unexpected,"
            f" {t['moved']} moved"
            for kind, t in totals.items()
        )
        return (
            f"{now} {tag} {payload['count_id']} of {', '.join(payload['locations'])} "
            f"({payload['reason']}): {parts}; {len(payload['adjustments'])} adjustments"
            f"   tx {payload['tx_id'][:8]}"
        )
    if rel.startswith("debug/pass/"):
        tag = typer.style(" PASS  ", fg=typer.colors.MAGENTA, bold=True)
        tags = payload["tags"]
        pallet = next((t["sscc"] for t in tags if t["sscc"]), None)
        gtins = {t["gtin"] for t in tags if t["gtin"]}
        cases = sum(1 for t in tags if t["gtin"])
        return (
            f"{now} {tag} door {payload['door']} {payload['direction']:<8} "
            f"pallet {pallet or '(no SSCC tag)'} + {cases} cases of {len(gtins)} products"
            f"   ({len(tags)} tags)"
        )
    if rel in ("tx/receive", "tx/ship"):
        kind = "RECEIVE" if rel == "tx/receive" else "SHIP   "
        counts: dict[str, int] = {}
        for item in payload["items"]:
            counts[item["result"]] = counts.get(item["result"], 0) + 1
        colour = typer.colors.GREEN if payload["status"] == "accepted" else typer.colors.YELLOW
        tag = typer.style(f" {kind}", fg=colour, bold=True)
        reference = payload.get("asn_id") or payload.get("order_id") or "(nothing planned)"
        detail = ", ".join(
            f"{n} {result.replace('_', ' ')}" for result, n in sorted(counts.items())
        )
        weight = payload.get("weight")
        if weight:
            detail += f"; weighed {weight['measured_kg']:.1f} kg" + (
                "" if weight["within"] else f", expected {weight['expected_kg']:.1f} kg"
            )
        return f"{now} {tag} door {payload['door']} {reference}: {detail}"
    if rel in ("receipt", "shipment"):
        tag = typer.style(f" {rel.upper():<7}", fg=typer.colors.BLUE, bold=True)
        short = [
            f"line {line['line']} short {line['short']}"
            for line in payload["lines"]
            if line["short"]
        ]
        return (
            f"{now} {tag} {payload['reference']} closed ({payload['reason']}): {payload['status']}"
            + (f" - {', '.join(short)}" if short else "")
        )
    if rel in ("event", "alarm"):
        colour = typer.colors.RED if rel == "alarm" else typer.colors.YELLOW
        tag = typer.style(f" {rel.upper():<6}", fg=colour, bold=True)
        return f"{now} {tag} {payload['code']}: {payload['message']}"
    if rel == "status":
        outbox = payload.get("outbox") or {}
        shown = (payload["state"], payload["reason"], outbox.get("alarm"))
        if _GATEWAY_STATE.get("last") == shown:
            return None  # the periodic refresh: same state, new figures
        _GATEWAY_STATE["last"] = shown
        tag = typer.style(" GATEWAY", fg=typer.colors.CYAN, bold=True)
        alarm = f", outbox {outbox['depth']}/{outbox['limit']} ALARM" if outbox.get("alarm") else ""
        return f"{now} {tag} {payload['state']} ({payload['reason']}{alarm})"
    if rel.startswith("device/") and rel.endswith("/status"):
        if _DEVICE_STATES.get(payload["device"]) == payload["state"]:
            return None
        _DEVICE_STATES[payload["device"]] = payload["state"]
        tag = typer.style(" DEVICE", fg=typer.colors.CYAN)
        error = f": {payload['last_error']}" if payload["state"] == "disconnected" else ""
        return f"{now} {tag} {payload['device']} {payload['state']}{error}"
    return None


def _banner(config: GatewayConfig, *, embedded: bool) -> None:
    where = "embedded amqtt broker" if embedded else "broker"
    typer.echo(
        typer.style("Warehouse edge gateway demo", bold=True)
        + f": site {config.gateway.site}, gateway {config.gateway.id}, {where} at "
        f"{config.broker.host}:{config.broker.port}.\n"
        "A simulated forklift scanner scans pallets and locations; trucks are unloaded "
        "through the RFID portal of door D03 against their ASNs (each pallet weighed first on "
        "the door's Modbus scale) and loaded through door D05 against their ship orders, each "
        "with a planted problem (an unexpected case, an expired lot, a short pallet, a pallet "
        "too light for its cases, the wrong pallet). Received pallets are put away by three "
        "simulated AGVs, which lease their tasks from the gateway. A clerk's handheld terminal "
        "reports some received pallets damaged, and loses its Wi-Fi now and then. An RFID "
        "reader watches two floor zones by the doors; the WMS counts them every two minutes. "
        "Every "
        "transaction, alarm, "
        "event and "
        "status is shown below as it is published. Ctrl-C stops.\n"
        f"Watch it with any MQTT client: mosquitto_sub -h {config.broker.host} "
        f"-p {config.broker.port} -t 'gw/#' -v\n"
    )
