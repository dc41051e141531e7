"""The gateway application: one TaskGroup owns every driver, the rules runner and the bridge.

Shutdown (`stop` set, by SIGINT/SIGTERM in the CLI): intake stops first (drivers are cancelled),
the rules finish what is queued, the bridge gets `shutdown_grace_s` to publish what the outbox
holds, then it publishes the offline status and everything closes. Nothing committed is lost:
what was not published stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from gateway import __version__
from gateway.agv_api import task_from_json, task_json
from gateway.bridge.mqtt import MqttBridge
from gateway.config import (
    BarcodeScannerDevice,
    DeviceConfig,
    GatewayConfig,
    LlrpReaderDevice,
    ModbusScaleDevice,
    SicsScaleDevice,
    SicsTcpTransport,
    SignalLightDevice,
)
from gateway.domain import (
    CommandResponse,
    Event,
    MoveTransaction,
    Notice,
    PortalPass,
    Severity,
    WmsMessage,
)
from gateway.drivers.barcode import LabelRules
from gateway.drivers.llrp import KIND as READER_KIND
from gateway.drivers.llrp import LlrpReader
from gateway.drivers.modbus_scale import KIND as MODBUS_SCALE_KIND
from gateway.drivers.modbus_scale import ModbusScale
from gateway.drivers.scanner import KIND as SCANNER_KIND
from gateway.drivers.scanner import BarcodeScanner
from gateway.drivers.sics_scale import KIND as SCALE_KIND
from gateway.drivers.sics_scale import SicsScale
from gateway.drivers.signal_light import KIND as LIGHT_KIND
from gateway.drivers.signal_light import SignalLight
from gateway.epcis import EpcisSettings, object_event
from gateway.epcis import document as epcis_document
from gateway.health import StatusBoard
from gateway.inbox import Inbox
from gateway.refdata import to_json
from gateway.rules.agv import PalletLot, TaskBoard, TaskChanged, received_lots
from gateway.rules.engine import DockStation, RefDataChange, RulesEngine
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.portal import PortalSettings, PortalTracker
from gateway.rules.receiving import (
    DockRules,
    DockSummary,
    DockTransaction,
    LedgerEntry,
    WeightCheckSettings,
    ledger_entries,
)
from gateway.rules.stock import StockProjection
from gateway.rules.tasks import TaskPolicy
from gateway.rules.vda5050 import RobotObserver
from gateway.rules.weighing import Weighing, WeighingSettings, WeightCapture
from gateway.storage import (
    LedgerRow,
    OutboxMessage,
    PalletMove,
    RefDataRow,
    StorageError,
    Store,
)
from gateway.supervisor import Backoff, supervise
from gateway.wire import (
    Topics,
    dock_payload,
    encode,
    move_message,
    move_payload,
    notice_message,
    pass_payload,
    summary_payload,
    task_event_payload,
)

log = structlog.get_logger("gateway.app")

Clock = Callable[[], dt.datetime]
TICK_S = 0.2


def portal_settings(device: LlrpReaderDevice) -> PortalSettings:
    """The portal logic's parameters for one reader's door."""
    return PortalSettings(
        door=device.door,
        reader_id=device.id,
        outside=frozenset(device.antennas.outside),
        inside=frozenset(device.antennas.inside),
        **device.portal.model_dump(),  # the tuning's fields are the settings' own names
    )


def epcis_settings(config: GatewayConfig) -> EpcisSettings | None:
    """The EPCIS settings, checked; None when EPCIS output is off."""
    if not config.epcis.enabled:
        return None
    return EpcisSettings(
        read_point_base=config.epcis.read_point_base,
        biz_location_base=config.epcis.biz_location_base,
        company_prefix_length=config.epcis.company_prefix_length,
    )


def utc_now() -> dt.datetime:
    """The wall clock, timezone-aware."""
    return dt.datetime.now(dt.UTC)


class Gateway:
    """Runs the whole gateway for one site config until `stop` is set."""

    def __init__(self, config: GatewayConfig, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.topics = Topics(config.gateway.site, config.gateway.id)
        self.board = StatusBoard(clock)
        self.queue = Inbox(maxsize=config.rules.queue_size)
        self.notices_dropped = 0
        self.passes_seen = 0
        self._late_notices: list[Notice] = []
        self._epcis_settings = epcis_settings(config)
        # Stack lights and horns, built before anything runs so that no early alarm is lost.
        self.lights: dict[str, SignalLight] = {}
        self.door_lights: dict[str, list[SignalLight]] = {}
        for device in config.devices:
            if isinstance(device, SignalLightDevice):
                light = SignalLight(
                    host=device.host,
                    port=device.port,
                    unit=device.unit,
                    coil=device.coil,
                    hold_s=device.hold_s,
                    timeout_s=device.timeout_s,
                    refresh_s=device.refresh_s,
                    health=self.board.add(device.id, LIGHT_KIND),
                )
                self.lights[device.id] = light
                for door in device.doors:
                    self.door_lights.setdefault(door, []).append(light)
        self._storage_failing = False
        self.rules_errors = 0  # events the rules raised on (bugs), skipped
        self._alarm_raised = False
        self._intake_held = False
        self.bridge: MqttBridge | None = None
        self.store: Store | None = None
        self.task_board: TaskBoard | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order."""
        config = self.config
        store = await Store.open(config.storage.path, max_rows=config.storage.outbox_max_rows)
        self.store = store
        try:
            retention = config.rules.dock.ledger_retention_days * 86400
            pruned = await store.prune_dock_history(
                closed_before=self.clock().timestamp() - retention
            )
            if pruned:
                log.info("pruned old receipts and shipments from the ledger", items=pruned)
            pallets = await store.pallet_locations()
            engine = RulesEngine(
                ForkliftMoves(
                    MoveSettings(
                        timeout=dt.timedelta(seconds=config.rules.move.timeout_s),
                        repeat_window=dt.timedelta(seconds=config.rules.move.repeat_window_s),
                    ),
                    pallet_locations=pallets,
                    stations={
                        d.id: d.location
                        for d in config.devices
                        if isinstance(d, BarcodeScannerDevice)
                        and d.role == "station"
                        and d.location
                    },
                ),
                portals={
                    d.id: PortalTracker(portal_settings(d))
                    for d in config.devices
                    if isinstance(d, LlrpReaderDevice)
                },
                scales={
                    d.id: (d.door, WeightCapture(WeighingSettings(**d.weighing.model_dump())))
                    for d in config.devices
                    if isinstance(d, SicsScaleDevice | ModbusScaleDevice)
                },
                dock=DockRules(
                    weighing=WeightCheckSettings(
                        window_s=config.rules.dock.weigh_window_s,
                        pallet_tare_kg=config.rules.dock.pallet_tare_kg,
                        abs_tolerance_kg=config.rules.dock.weight_abs_tolerance_kg,
                        rel_tolerance=config.rules.dock.weight_rel_tolerance,
                    ),
                    idle_close=dt.timedelta(seconds=config.rules.dock.idle_close_s),
                    ledger=[
                        LedgerEntry(r.kind, r.key, r.reference, r.line, r.result)
                        for r in await store.dock_ledger()
                    ],
                    closed=await store.closed_references(),
                    resumed_at=self.clock(),
                ),
                site=config.gateway.site,
                door_roles={
                    d.door: d.role for d in config.devices if isinstance(d, LlrpReaderDevice)
                },
                dock_stations={
                    d.id: DockStation(d.location, d.role)
                    for d in config.devices
                    if isinstance(d, BarcodeScannerDevice)
                    and d.role in ("receiving", "shipping")
                    and d.location
                },
                agv=await self._task_board(store, pallets),
            )
            # What the WMS sent before the restart (the broker's retained copies follow).
            for row in await store.reference_data():
                engine.on_event(
                    WmsMessage(
                        f"wms/{config.gateway.site}/{row.kind}/{row.key}",
                        (row.body or "").encode(),
                        self.clock(),
                    )
                )
            bridge = MqttBridge(
                config.broker,
                topics=self.topics,
                store=store,
                board=self.board,
                version=__version__,
                clock=self.clock,
                outbox_alarm_at=int(
                    config.storage.outbox_max_rows * config.storage.outbox_alarm_ratio
                ),
                on_refused=self._publish_refused,
                inbox=self.queue.put,
                agv=config.agv.enabled,
                vda5050_interface=(
                    config.agv.vda5050.interface
                    if config.agv.enabled and config.agv.vda5050
                    else None
                ),
            )
            if config.broker.protocol == "3.1.1":
                log.warning(
                    "MQTT 3.1.1: a PUBACK carries no reason code, so a publish the broker "
                    "refuses by ACL cannot be told from a delivered one; prefer MQTT 5"
                )
            bridge.debug_max_per_s = config.debug.max_per_s
            self.bridge = bridge
            log.info(
                "gateway starting",
                site=config.gateway.site,
                gateway=config.gateway.id,
                devices=len(config.devices),
                outbox_depth=store.depth,
            )
            async with asyncio.TaskGroup() as tg:
                bridge_task = tg.create_task(bridge.run(), name="bridge")
                rules_task = tg.create_task(self._run_rules(engine, store), name="rules")
                drivers = [
                    tg.create_task(self._supervised(device), name=f"device.{device.id}")
                    for device in config.devices
                ]
                await stop.wait()
                log.info("gateway stopping", grace_s=config.gateway.shutdown_grace_s)
                for task in drivers:
                    task.cancel()
                await asyncio.wait(drivers) if drivers else None
                await self._drain(store, bridge)
                bridge.stop()
                try:
                    await asyncio.wait_for(asyncio.shield(bridge_task), timeout=5.0)
                except TimeoutError:
                    bridge_task.cancel()
                rules_task.cancel()
        finally:
            await store.close()
        log.info("gateway stopped", outbox_depth=store.depth)

    async def _task_board(self, store: Store, pallets: dict[str, str]) -> TaskBoard | None:
        """The AGV task board, with the tasks stored at the last stop (None: AGV tasks off)."""
        agv = self.config.agv
        if not agv.enabled:
            return None
        pruned = await store.prune_agv_tasks(older_than_s=agv.finished_retention_days * 86400)
        if pruned:
            log.info("pruned old finished AGV tasks", tasks=pruned)
        tasks = [task_from_json(json.loads(body)) for body in await store.agv_tasks()]
        now = self.clock()
        window = dt.timedelta(days=agv.velocity_window_days)
        moves = await store.recent_moves(since=(now - window).timestamp())
        board = TaskBoard(
            policy=TaskPolicy(
                lease=dt.timedelta(seconds=agv.lease_s), max_attempts=agv.max_attempts
            ),
            layout=agv.layout,
            stock=StockProjection(pallets),
            observer=RobotObserver(agv.vda5050.nodes if agv.vda5050 else None),
            tasks=tasks,
            velocity_window=window,
            resumed_at=now,
            lots={
                sscc: PalletLot(
                    gtin, lot, None if expiry is None else dt.date.fromisoformat(expiry)
                )
                for sscc, gtin, lot, expiry in await store.pallet_lots()
            },
            moves=[(gtin, dt.datetime.fromtimestamp(at, dt.UTC)) for gtin, at in moves],
        )
        self.task_board = board
        return board

    async def _supervised(self, device: DeviceConfig) -> None:
        driver: BarcodeScanner | LlrpReader | SignalLight | SicsScale | ModbusScale
        if isinstance(device, SignalLightDevice):
            driver = self.lights[device.id]
            health = self.board.devices[device.id]
        elif isinstance(device, BarcodeScannerDevice):
            health = self.board.add(device.id, SCANNER_KIND)
            driver = BarcodeScanner(
                device,
                labels=LabelRules(
                    re.compile(self.config.labels.location_pattern),
                    aim_symbology=device.framing.aim_symbology,
                ),
                emit=self.queue.put,
                health=health,
                clock=self.clock,
            )
        elif isinstance(device, SicsScaleDevice):
            health = self.board.add(device.id, SCALE_KIND)
            transport = device.transport
            if isinstance(transport, SicsTcpTransport):
                link: dict[str, Any] = {"host": transport.host, "tcp_port": transport.port}
            else:
                link = {"port": transport.port, "baudrate": transport.baudrate}
            driver = SicsScale(
                device_id=device.id,
                **link,
                command=device.command,
                poll_s=device.poll_s,
                timeout_s=device.timeout_s,
                emit=self.queue.put,
                health=health,
                clock=lambda: self.clock().timestamp(),
            )
        elif isinstance(device, ModbusScaleDevice):
            health = self.board.add(device.id, MODBUS_SCALE_KIND)
            driver = ModbusScale(
                device,
                emit=self.queue.put,
                health=health,
                clock=lambda: self.clock().timestamp(),
            )
        else:
            health = self.board.add(device.id, READER_KIND)
            driver = LlrpReader(device, queue=self.queue, health=health, clock=self.clock)
        await supervise(driver.run, health, Backoff(device.backoff.min_s, device.backoff.max_s))

    async def _drain(self, store: Store, bridge: MqttBridge) -> None:
        """Finish queued events, then give the bridge the grace period to empty the outbox."""
        grace = self.config.gateway.shutdown_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            await asyncio.wait_for(self.queue.join(), timeout=grace)
        except TimeoutError:
            log.warning("rules did not finish queued events in time", queued=self.queue.qsize())
        while (store.depth > 0 or bridge.statuses_pending) and bridge.connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await store.wait_changed(store.version, timeout=min(remaining, 0.2))
        if store.depth:
            log.warning("outbox not empty at stop: kept for the next start", depth=store.depth)

    async def _run_rules(self, engine: RulesEngine, store: Store) -> None:
        # An event makes at most a few messages (a transaction, its EPCIS document, an alarm):
        # a batch's decisions always fit in an empty outbox, so waiting for room always ends.
        batch_max = max(1, min(self.config.storage.commit_batch, store.max_rows // 8))
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + TICK_S
        while True:
            events: list[Event] = []
            with contextlib.suppress(TimeoutError):
                events.append(
                    await asyncio.wait_for(
                        self.queue.get(), timeout=max(0.0, next_tick - loop.time())
                    )
                )
            while events and len(events) < batch_max and not self.queue.empty():
                events.append(self.queue.get_nowait())
            decisions: list[Any] = []
            for event in events:
                try:
                    decisions.extend(engine.on_event(event))
                except Exception as err:  # noqa: BLE001 - a bug must not stop every door
                    decisions.append(self._rules_failed(event, err))
            # Time moves on even while events pour in: departures and timeouts are due. It is
            # event time: when the rules are behind, what is still queued (or waiting to be)
            # was received before the wall clock's now, and a lease or a portal pass must not
            # run out before it is read. (A clock stepped back is passed on: the portal logic
            # handles it.)
            if loop.time() >= next_tick:
                now = self.clock() - dt.timedelta(seconds=self.queue.waited_s())
                decisions.extend(engine.on_tick(now))
                next_tick = loop.time() + TICK_S
            decisions.extend(self._late_notices)
            self._late_notices.clear()
            await self._decide(decisions, store)
            for _ in events:
                self.queue.task_done()

    def _rules_failed(self, event: Event, err: Exception) -> Notice:
        """An event the rules could not handle (a bug): logged with its traceback, an alarm."""
        self.rules_errors += 1
        log.exception("rules failed on an event", event_type=type(event).__name__)
        return Notice(
            code="rules_error",
            message=f"the rules could not handle a {type(event).__name__}: {err!r}; it was skipped",
            at=self.clock(),
            severity=Severity.ERROR,
            details={"event": type(event).__name__, "error": repr(err)[:500]},
        )

    def _publish_refused(self, topic: str, reason: str) -> None:
        """The broker refused a topic (an ACL): an alarm, committed with the next decisions."""
        self._late_notices.append(
            Notice(
                code="publish_refused",
                message=f"the broker refused messages on {topic}: {reason}; they are kept and retried",
                at=self.clock(),
                severity=Severity.ERROR,
                details={"topic": topic, "reason": reason},
            )
        )

    async def _decide(self, decisions: Sequence[Any], store: Store) -> None:
        """Act on decisions: passes go to the next rules (and the debug topic), the rest is committed."""
        passes = [d for d in decisions if isinstance(d, PortalPass)]
        for portal_pass in passes:
            log.info(
                "portal pass",
                door=portal_pass.door,
                direction=portal_pass.direction.value,
                tags=len(portal_pass.tags),
                separation_s=portal_pass.separation_s,
            )
            if self.config.debug.passes and self.bridge is not None:
                try:
                    payload = encode(pass_payload(portal_pass, self.topics))
                except (ValueError, OverflowError) as err:  # debug output must never stop the rules
                    log.warning("cannot render a pass for the debug topic", error=str(err))
                    continue
                self.bridge.publish_debug(self.topics.debug_pass(portal_pass.door), payload)
        self.passes_seen += len(passes)
        for weighing in (d for d in decisions if isinstance(d, Weighing)):
            log.info(
                "weighing",
                scale=weighing.scale_id,
                kg=round(weighing.kg, 2),
                method=weighing.method,
            )
        for decision in decisions:
            # Alarms at a door light its stack light or sound its horn at once, before the disk.
            if isinstance(decision, Notice) and decision.severity is Severity.ERROR:
                for light in self.door_lights.get(decision.location or "", ()):
                    light.alarm()
        rest = [d for d in decisions if not isinstance(d, PortalPass)]
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self._commit(rest, store)
            except StorageError as err:
                # Intake is held (the queue fills, drivers wait) until the disk recovers.
                if not self._storage_failing:
                    log.error("cannot commit to the outbox; retrying", error=str(err))  # noqa: TRY400
                    self._storage_failing = True
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._storage_failing:
                log.info("outbox commits again")
                self._storage_failing = False
            return

    async def _commit(self, decisions: Sequence[Any], store: Store) -> None:
        """Commit decisions to the outbox; transactions wait for room, notices are dropped."""
        messages: list[OutboxMessage] = []
        moves: list[PalletMove] = []
        ledger: list[LedgerRow] = []
        closed: list[tuple[str, str]] = []
        refdata: list[RefDataRow] = []
        notices: list[Notice] = []
        tasks: dict[str, tuple[str, str, str]] = {}
        shipped: list[str] = []
        lots: list[tuple[str, str, str | None, str | None]] = []
        moved: list[tuple[str, float]] = []
        responses: list[CommandResponse] = []
        for d in decisions:
            if isinstance(d, MoveTransaction):
                messages.append(move_message(d, self.topics))
                moves.append(PalletMove(d.sscc, d.to_location, d.tx_id))
                lot = self.task_board.lot_of(d.sscc) if self.task_board else None
                if lot is not None:  # counts for the product's velocity class
                    moved.append((lot.gtin, d.confirmed_at.timestamp()))
                messages.extend(self._epcis(move_payload(d, self.topics)))
            elif isinstance(d, DockTransaction):
                payload = dock_payload(d, self.topics)
                messages.append(OutboxMessage(d.tx_id, self.topics.tx(d.kind), encode(payload)))
                messages.extend(self._epcis(payload))
                ledger.extend(
                    LedgerRow(e.kind, e.key, e.reference, e.line, e.result, d.tx_id)
                    for e in ledger_entries(d)
                )
                if self.config.agv.enabled:
                    # The stock after a restart: a received pallet is at the door until it is
                    # put away; a shipped one is gone.
                    if d.kind == "receive":
                        moves.extend(
                            PalletMove(sscc, d.door, d.tx_id) for sscc in d.accepted_pallets
                        )
                        lots.extend(
                            (
                                sscc,
                                lot.gtin,
                                lot.lot,
                                lot.expiry.isoformat() if lot.expiry else None,
                            )
                            for sscc, lot in received_lots(d)
                        )
                    else:
                        shipped.extend(d.accepted_pallets)
            elif isinstance(d, DockSummary):
                messages.append(
                    OutboxMessage(
                        d.tx_id,
                        self.topics.summary(d.kind),
                        encode(summary_payload(d, self.topics)),
                    )
                )
                closed.append((d.reference, d.tx_id))
            elif isinstance(d, RefDataChange):
                body = None if d.item is None else json.dumps(to_json(d.item), sort_keys=True)
                refdata.append(RefDataRow(d.kind, d.key, body))
            elif isinstance(d, TaskChanged):
                shown = task_json(d.task)
                tasks[d.task.task_id] = (d.task.task_id, d.task.state.value, json.dumps(shown))
                if d.published:
                    messages.append(
                        OutboxMessage(
                            d.event_id,
                            self.topics.agv_task,
                            encode(task_event_payload(d, shown, self.topics)),
                        )
                    )
            elif isinstance(d, CommandResponse):
                responses.append(d)
            elif isinstance(d, Notice):
                notices.append(d)
        for notice in notices:
            log.info("notice", code=notice.code, device=notice.device_id, message=notice.message)
        while len(messages) > store.room():
            if not self._intake_held:
                log.error("outbox full: intake held back", depth=store.depth, limit=store.max_rows)
                self._intake_held = True
            await store.wait_changed(store.version, timeout=1.0)
        if self._intake_held:
            log.info("outbox has room again: intake resumed", depth=store.depth)
            self._intake_held = False
        room = store.room() - len(messages)
        kept = [notice_message(n, self.topics) for n in notices[:room]]
        if len(notices) > room:
            self.notices_dropped += len(notices) - room
        messages.extend(kept)
        alarm = self._outbox_alarm(store, extra=len(messages))
        if alarm is not None and len(messages) < store.room():
            messages.append(notice_message(alarm, self.topics))
        if messages or refdata or tasks or shipped or lots or moved:
            await store.commit(
                messages,
                moves,
                ledger=ledger,
                closed=closed,
                refdata=refdata,
                tasks=list(tasks.values()),
                shipped=shipped,
                lots=lots,
                moved=moved,
            )
        # Answers only once what they report is committed: a lease the gateway would forget in
        # a crash is never given out.
        if self.bridge is not None:
            for response in responses:
                self.bridge.respond(response.topic, response.correlation, encode(response.payload))
        for d in decisions:
            if isinstance(d, MoveTransaction | DockTransaction | DockSummary):
                log.info("transaction committed", tx_id=d.tx_id, kind=type(d).__name__)

    def _epcis(self, payload: dict[str, Any]) -> list[OutboxMessage]:
        """The same transaction as a GS1 EPCIS 2.0 document, when the site asked for it.

        A transaction that cannot be expressed in EPCIS (a location name too long for an SGLN
        extension, a tag that is no GS1 identifier) is still committed; the EPCIS document is
        left out, with an event saying why."""
        if self._epcis_settings is None:
            return []
        try:
            event = object_event(payload, self._epcis_settings)
        except ValueError as err:
            self._late_notices.append(
                Notice(
                    code="epcis_failed",
                    message=f"no EPCIS event for transaction {payload['tx_id']}: {err}",
                    at=self.clock(),
                    details={"tx_id": payload["tx_id"], "reason": str(err)},
                )
            )
            return []
        doc = epcis_document([event], created=payload["occurred_at"])
        return [OutboxMessage(f"epcis:{payload['tx_id']}", self.topics.epcis, encode(doc))]

    def _outbox_alarm(self, store: Store, *, extra: int) -> Notice | None:
        """An alarm the first time the outbox passes its alarm level; re-armed below 90% of it."""
        level = int(store.max_rows * self.config.storage.outbox_alarm_ratio)
        depth = store.depth + extra
        if depth < level * 0.9:
            self._alarm_raised = False
            return None
        if depth < level or self._alarm_raised:
            return None
        self._alarm_raised = True
        log.error("outbox nearly full", depth=depth, limit=store.max_rows)
        return Notice(
            code="outbox_high",
            message=(
                f"outbox holds {depth} of {store.max_rows} messages: the broker is not taking "
                "them; at the limit new scans are held back"
            ),
            at=self.clock(),
            severity=Severity.ERROR,
            details={"depth": depth, "limit": store.max_rows},
        )
