"""The gateway application: the composition root. One TaskGroup owns every driver, the rules
runner and the bridge.

Back-pressure: a full outbox holds the rules, the rules hold the bounded inbox, and a full inbox
holds intake at the device: the serial scanner stops reading its line (the kernel's tty buffer,
then the scanner, hold the rest; see `gateway.drivers.scanner`), the LLRP reader's reports are
dropped and counted. Memory stays bounded.

Shutdown (`stop` set, by SIGINT/SIGTERM in the CLI): intake stops first (drivers are cancelled
and hand over what they have read, beyond the inbox's bound), the rules finish what is queued
and the recorder commits it even when the outbox is at its limit (the overshoot is bounded by
what was in memory and in a serial port's kernel buffer, and logged), the bridge gets
`shutdown_grace_s` to publish what the outbox holds, then it publishes the offline status and
everything closes. Nothing read is lost silently: what was read is committed, what was
committed and not published stays in the outbox for the next start, and what the devices still
hold is read after it.
"""

from __future__ import annotations

import asyncio
import gc

import structlog

from gateway import __version__
from gateway.bridge.mqtt import MqttBridge
from gateway.config import GatewayConfig
from gateway.domain import Event, Notice, Severity
from gateway.drivers.base import AlarmOutputs, Clock, Driver, DriverContext, PrintSpool, utc_now
from gateway.drivers.registry import DRIVERS
from gateway.health import StatusBoard
from gateway.inbox import Inbox
from gateway.ops import Operations
from gateway.ops.state import LiveState
from gateway.recorder import Recorder
from gateway.runner import RulesRunner
from gateway.storage import Store
from gateway.supervisor import Backoff, supervise
from gateway.wire.inbound import InboundRoutes, Ownership
from gateway.wire.topics import Topics
from gateway.wiring import build_engine, epcis_settings, handheld_http, handheld_labels

log = structlog.get_logger("gateway.app")

COMMIT_AT_STOP_S = 10.0
"""How long a stop waits for the rules to commit what was read (systemd allows 30 s)."""


class Gateway:
    """Runs the whole gateway for one site config until `stop` is set."""

    def __init__(self, config: GatewayConfig, *, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.topics = Topics(config.gateway.site, config.gateway.id)
        self.board = StatusBoard(clock)
        self.queue = Inbox(maxsize=config.rules.queue_size)
        self.alarms = AlarmOutputs()
        self.spool = PrintSpool()  # carton labels for the printers (from SQLite at start)
        # Every driver is built before anything runs, so that no early alarm finds its stack
        # light missing.
        self.drivers: dict[str, Driver] = {}
        for device in config.devices:
            context = DriverContext(
                sink=self.queue,
                health=self.board.add(device.id, device.kind),
                clock=clock,
                location_pattern=config.labels.location_pattern,
                alarms=self.alarms,
                spool=self.spool,
            )
            self.drivers[device.id] = DRIVERS[device.kind](device, context)
        self.bridge: MqttBridge | None = None
        self.store: Store | None = None
        self.recorder: Recorder | None = None
        self.runner: RulesRunner | None = None
        self.ops: Operations | None = None
        self.live: LiveState | None = None
        self.handheld_port: int | None = None  # the handheld HTTP endpoint's, once listening
        self.http_listening = asyncio.Event()  # the HTTP endpoint listens (on `ops.port`)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order."""
        config = self.config
        store = await Store.open(
            config.storage.path,
            max_rows=config.storage.outbox_max_rows,
            max_bytes=config.storage.outbox_max_bytes,
        )
        self.store = store
        try:
            engine = await build_engine(config, store, self.clock)
            board = engine.agv
            recorder = Recorder(
                topics=self.topics,
                store=store,
                clock=self.clock,
                alarms=self.alarms,
                epcis_settings=epcis_settings(config),
                agv=config.agv.enabled,
                lot_of=board.lot_of if board is not None else lambda _sscc: None,
                place_gln=lambda name: getattr(engine.locations.get(name), "gln", None),
                alarm_ratio=config.storage.outbox_alarm_ratio,
                debug_passes=config.debug.passes,
            )
            vda = config.agv.vda5050 if config.agv.enabled else None
            routes = InboundRoutes(
                self.topics,
                agv=config.agv.enabled,
                vda5050_interface=vda.interface if vda else None,
                refdata_max_bytes={k: v.max_bytes for k, v in config.refdata.by_kind().items()},
                # Every record the limits allow, and the WMS's tasks besides.
                remembered=sum(v.max_count for v in config.refdata.by_kind().values()) + 100_000,
                handheld=handheld_labels(config),
                ownership=Ownership(
                    config.gateway.id,
                    None if config.gateway.doors is None else frozenset(config.gateway.doors),
                    config.agv.task_board,
                    tuple(sorted(config.agv.zone_boards.items())),
                ),
                site_state=config.state.follow_site,
                site_receipts=config.agv.enabled and config.agv.site_putaway,
            )
            # The broker sends every retained record again: those taken in before are skipped.
            for kind, key, digest in await store.reference_digests():
                routes.remember(f"{self.topics.wms}/{kind}/{key}", digest)
            bridge = MqttBridge(
                config.broker,
                topics=self.topics,
                store=store,
                board=self.board,
                version=__version__,
                clock=self.clock,
                outbox_alarm_ratio=config.storage.outbox_alarm_ratio,
                on_refused=self._publish_refused,
                inbox=self._from_network,
                committed=self.queue.committed,
                routes=routes,
                notices_dropped=lambda: recorder.notices_dropped,
            )
            if config.broker.protocol == "3.1.1":
                log.warning(
                    "MQTT 3.1.1: a PUBACK carries no reason code, so a publish the broker "
                    "refuses by ACL cannot be told from a delivered one; prefer MQTT 5"
                )
            bridge.debug_max_per_s = config.debug.max_per_s
            recorder.publisher = bridge
            self.spool.on_printed = store.printed
            self.spool.add(await store.print_jobs())
            recorder.on_print = self.spool.add
            # An event makes a few messages at most (a transaction, its EPCIS document, an
            # alarm): a batch's decisions fit in an empty outbox, so waiting for room ends.
            batch_max = min(config.storage.commit_batch, store.max_rows // 8)
            runner = RulesRunner(
                engine,
                self.queue,
                recorder,
                clock=self.clock,
                batch_max=batch_max,
                lookup=store.pallet_location,
                stock=store.count_stock,
                places=store.pallet_times,
                not_taken=routes.forget_reference,  # taken when it comes again, with room
                resend=store.resend,
            )
            self.bridge, self.recorder, self.runner = bridge, recorder, runner
            live: LiveState | None = None
            if config.state.enabled:
                live = LiveState(
                    self.topics,
                    engine,
                    self.board,
                    self.clock,
                    max_pallets=config.state.max_pallets,
                )
                await live.load(store)
                recorder.on_state = live.committed
                bridge.state = live
            self.live = live
            ops = Operations(
                config,
                store=store,
                bridge=bridge,
                board=self.board,
                inbox=self.queue,
                runner=runner,
                recorder=recorder,
                tasks=board,
                live=live,
                clock=self.clock,
                version=__version__,
                listening=self.http_listening,
            )
            self.ops = ops
            # What start-up made (modules, schemas, the state loaded from SQLite) lives as long
            # as the process: out of the garbage collector's full passes, which would otherwise
            # walk it all again and again (stalls of 100-200 ms under a flood of messages).
            gc.collect()
            gc.freeze()
            log.info(
                "gateway starting",
                site=config.gateway.site,
                gateway=config.gateway.id,
                devices=len(config.devices),
                outbox_depth=store.depth,
            )
            async with asyncio.TaskGroup() as tg:
                bridge_task = tg.create_task(bridge.run(), name="bridge")
                rules_task = tg.create_task(runner.run(), name="rules")
                ops_task = tg.create_task(ops.run(), name="ops")
                live_task = tg.create_task(live.run(), name="state") if live else None
                handheld = handheld_http(config, self._from_network, self.clock, self._handheld_on)
                handheld_task = tg.create_task(handheld, name="handheld.http") if handheld else None
                drivers = [
                    tg.create_task(self._supervised(device_id), name=f"device.{device_id}")
                    for device_id in self.drivers
                ]
                await stop.wait()
                log.info("gateway stopping", grace_s=config.gateway.shutdown_grace_s)
                ops.stopping()
                recorder.stop_holding()  # what was read is committed, room in the outbox or not
                if handheld_task is not None:  # intake stops first (terminals send again)
                    handheld_task.cancel()
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
                ops_task.cancel()
                if live_task is not None:
                    live_task.cancel()
        finally:
            await store.close()
        log.info("gateway stopped", outbox_depth=store.depth)

    def _handheld_on(self, port: int) -> None:
        self.handheld_port = port

    async def _from_network(self, event: Event) -> int:
        """Events from MQTT fill at most half the inbox: a flood from the network never holds
        back the devices' scans and reads. The event's number in the inbox (`committed`)."""
        return await self.queue.put_leaving(event, self.queue.maxsize // 2)

    async def _supervised(self, device_id: str) -> None:
        device = next(d for d in self.config.devices if d.id == device_id)
        backoff = Backoff(device.backoff.min_s, device.backoff.max_s)
        await supervise(self.drivers[device_id].run, self.board.devices[device_id], backoff)

    async def _drain(self, store: Store, bridge: MqttBridge) -> None:
        """Commit queued events, then give the bridge the grace period to empty the outbox."""
        grace = self.config.gateway.shutdown_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            # Not bounded by the grace period (which may be 0): a failing disk is.
            await asyncio.wait_for(self.queue.join(), timeout=max(grace, COMMIT_AT_STOP_S))
        except TimeoutError:
            log.error(  # noqa: TRY400 - a timeout, no traceback to show
                "rules did not commit what was read in time: lost",
                queued=self.queue.qsize(),
                unfinished=self.queue.unfinished(),
            )
        while (store.depth > 0 or bridge.statuses_pending) and bridge.connected:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await store.wait_changed(store.version, timeout=min(remaining, 0.2))
        if store.depth:
            log.warning(
                "outbox not empty at stop: kept for the next start",
                depth=store.depth,
                limit=store.max_rows,
                beyond_limit=self.recorder.beyond_limit if self.recorder else 0,
            )

    def _publish_refused(self, topic: str, reason: str, subscription: bool = False) -> None:
        """The broker refused a topic or a subscription: an alarm, committed with the next."""
        if self.recorder is None:
            return
        what, then = (
            ("a subscription to", "asked for again")
            if subscription
            else ("messages on", "they are kept and retried")
        )
        self.recorder.late_notice(
            Notice(
                code="subscription_refused" if subscription else "publish_refused",
                message=f"the broker refused {what} {topic}: {reason}; {then}",
                at=self.clock(),
                severity=Severity.ERROR,
                details={"topic": topic, "reason": reason},
            )
        )
