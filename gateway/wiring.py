"""Builds the rules for one site config from what the gateway stored at its last stop.

Each configured device gives the rules their part: a reader its door's portal logic, a scanner
at a dock door its receiving or shipping station, a scale its weight capture. The receiving
ledger, closed receipts, pallet locations, lots, AGV tasks and the WMS's reference data come
back from SQLite, so a restart carries on where the last run stopped.

Pallet locations are not loaded whole: the forklift rule starts with the pallets moved most
recently, `rules.move.cached_pallets` of them (the runner looks up the others when they are
scanned), and the AGV stock projection with at most `agv.stock_max_pallets`, also the most
recent. Memory follows the configuration, not the number of pallets the site ever moved.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from gateway.config import (
    BarcodeScannerDevice,
    GatewayConfig,
    LlrpReaderDevice,
    ModbusScaleDevice,
    SicsScaleDevice,
    ZplPrinterDevice,
)
from gateway.domain import (
    DockKind,
    DockResult,
    DoorRole,
    Event,
    LedgerEntry,
    PalletLot,
    RefDataKind,
)
from gateway.drivers.barcode import LabelRules
from gateway.drivers.base import Clock
from gateway.rules.agv import TaskBoard
from gateway.rules.counts import CycleCounts
from gateway.rules.engine import DockStation, RulesEngine
from gateway.rules.handheld import HandheldIntake, HandheldSettings
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.packing import Packing, SsccRange
from gateway.rules.portal import PortalSettings, PortalTracker
from gateway.rules.receiving import DockRules, WeightCheckSettings
from gateway.rules.stock import StockProjection
from gateway.rules.tasks import TaskPolicy
from gateway.rules.vda5050 import RobotObserver
from gateway.rules.weighing import WeighingSettings, WeightCapture
from gateway.rules.zones import ZoneSettings, ZoneTracker
from gateway.storage import Sequencing, Store
from gateway.wire.agv import task_from_json
from gateway.wire.counts import opened_from_json
from gateway.wire.epcis import EpcisSettings
from gateway.wire.handheld import result_from_json
from gateway.wire.packing import carton_from_json
from gateway.wire.refdata import from_stored
from gateway.wire.topics import Topics

log = structlog.get_logger("gateway.wiring")


def portal_settings(device: LlrpReaderDevice) -> PortalSettings:
    """The portal logic's parameters for one reader's door (the reader must have one)."""
    if device.door is None or device.antennas is None:
        raise ValueError(f"reader {device.id} is no portal")
    return PortalSettings(
        door=device.door,
        reader_id=device.id,
        outside=frozenset(device.antennas.outside),
        inside=frozenset(device.antennas.inside),
        **device.portal.model_dump(),  # the tuning's fields are the settings' own names
    )


def zone_settings(device: LlrpReaderDevice) -> ZoneSettings:
    """The zone tracking's parameters for one reader's zones."""
    return ZoneSettings(
        device.id,
        {zone: frozenset(antennas) for zone, antennas in device.zones.items()},
        **device.zone_tuning.model_dump(),
    )


def epcis_settings(config: GatewayConfig) -> EpcisSettings | None:
    """The EPCIS settings, checked; None when EPCIS output is off."""
    if not config.epcis.enabled:
        return None
    return EpcisSettings(
        read_point_base=config.epcis.read_point_base,
        biz_location_base=config.epcis.biz_location_base,
        company_prefix_length=config.epcis.company_prefix_length,
        time_zone=config.epcis.time_zone,
        prefix_lengths=tuple(config.epcis.prefix_lengths.items()),
    )


async def build_engine(config: GatewayConfig, store: Store, clock: Clock) -> RulesEngine:
    """The rules engine for `config`, with the state stored at the last stop (and the
    transactions it makes numbered, `start_numbering`)."""
    await start_numbering(config, store)
    dock_config = config.rules.dock
    pruned = await store.prune_dock_history(
        closed_before=clock().timestamp() - dock_config.ledger_retention_days * 86400
    )
    if pruned:
        log.info("pruned old receipts and shipments from the ledger", items=pruned)
    hours = await store.prune_trends(before=clock().timestamp() - config.storage.trend_days * 86400)
    if hours:
        log.info("pruned old hourly counts", rows=hours)
    move_config = config.rules.move
    stock_cap = config.agv.stock_max_pallets if config.agv.enabled else 0
    # One read serves both: the forklift rule's cache and the AGV stock, each the most recent.
    pallets = await store.pallet_locations(limit=max(move_config.cached_pallets, stock_cap))
    devices = config.devices
    scanners = [d for d in devices if isinstance(d, BarcodeScannerDevice)]
    readers = [d for d in devices if isinstance(d, LlrpReaderDevice)]
    engine = RulesEngine(
        ForkliftMoves(
            MoveSettings(
                timeout=dt.timedelta(seconds=move_config.timeout_s),
                repeat_window=dt.timedelta(seconds=move_config.repeat_window_s),
                cached_pallets=move_config.cached_pallets,
            ),
            pallet_locations=_most_recent(pallets, move_config.cached_pallets),
            stations={d.id: d.location for d in scanners if d.role == "station" and d.location},
        ),
        portals={d.id: PortalTracker(portal_settings(d)) for d in readers if d.door},
        zones={d.id: ZoneTracker(zone_settings(d)) for d in readers if d.zones},
        scales={
            d.id: (d.door, WeightCapture(WeighingSettings(**d.weighing.model_dump())))
            for d in devices
            if isinstance(d, SicsScaleDevice | ModbusScaleDevice)
        },
        dock=DockRules(
            weighing=WeightCheckSettings(
                window_s=dock_config.weigh_window_s,
                pallet_tare_kg=dock_config.pallet_tare_kg,
                abs_tolerance_kg=dock_config.weight_abs_tolerance_kg,
                rel_tolerance=dock_config.weight_rel_tolerance,
            ),
            idle_close=dt.timedelta(seconds=dock_config.idle_close_s),
            ledger=[
                LedgerEntry(DockKind(r.kind), r.key, r.reference, r.line, DockResult(r.result))
                for r in await store.dock_ledger()
            ],
            closed=await store.closed_references(),
            resumed_at=clock(),
        ),
        door_roles={d.door: DoorRole(d.role) for d in readers if d.door},
        dock_stations={
            d.id: DockStation(d.location, DoorRole(d.role))
            for d in scanners
            if d.role in ("receiving", "shipping") and d.location
        },
        agv=await _task_board(config, store, _most_recent(pallets, stock_cap), clock),
        refdata_limits={
            RefDataKind(kind): limit.max_count for kind, limit in config.refdata.by_kind().items()
        },
        handheld=await _handheld(config, store, clock),
        packing=await _packing(config, store),
        counts=await _counts(config, store),
        count_timeout_s=config.counts.timeout_s,
        gateway_id=config.gateway.id,
        site_memory=move_config.cached_pallets,
    )
    # What the WMS sent before the restart (the broker's retained copies follow, and are
    # recognised by their digest: `InboundRoutes.remember`). All of it, also beyond a count
    # limit lowered since: new records of that kind are refused until the WMS deletes some.
    for n, row in enumerate(await store.reference_data()):
        if n % 500 == 499:
            await asyncio.sleep(0)  # thousands of records: let the loop breathe
        try:
            item = from_stored(row.kind, row.body or "")
        except ValueError as err:
            log.error(  # noqa: TRY400 - the reason says it all
                "stored reference data skipped", kind=row.kind, key=row.key, error=str(err)
            )
            continue
        engine.restore(item, clock())
    for kind, limit in engine.refdata_limits.max_count.items():
        held = engine.held_count(kind)
        if held >= limit:
            log.warning(
                "reference data at its count limit: new records of this kind are refused",
                kind=kind.value,
                held=held,
                limit=limit,
            )
    return engine


async def _handheld(config: GatewayConfig, store: Store, clock: Clock) -> HandheldIntake | None:
    """Handheld terminals' intake, with the scans applied within the replay window (None: off)."""
    handheld = config.handheld
    if not handheld.enabled:
        return None
    since = time.time() - handheld.replay_window_days * 86400  # applied_at: the wall clock
    applied, high_water = await store.handheld_scans(since=since)
    return HandheldIntake(
        HandheldSettings(
            reorder_wait=dt.timedelta(seconds=handheld.reorder_wait_s),
            damage_reasons=frozenset(handheld.damage_reasons),
            short_reasons=frozenset(handheld.short_reasons),
        ),
        applied=[(terminal, result_from_json(json.loads(body))) for terminal, body in applied],
        high_water=high_water,
    )


async def _counts(config: GatewayConfig, store: Store) -> CycleCounts | None:
    """Cycle counts, with those open at the last stop and the ids of those closed (None: off)."""
    settings = config.counts
    if not settings.enabled:
        return None
    await store.prune_closed_counts(keep=settings.keep_closed)
    counts = CycleCounts(
        max_open=settings.max_open, max_seen=settings.max_seen, max_closed=settings.keep_closed
    )
    for count_id, tx_id in await store.closed_counts(limit=settings.keep_closed):
        counts.restore_closed(count_id, tx_id)
    for count_id, body, seen in await store.open_counts():
        counts.restore(opened_from_json(count_id, body), seen)
    if len(counts):
        log.info("cycle counts open at the last stop go on", counts=len(counts))
    return counts


async def _packing(config: GatewayConfig, store: Store) -> Packing | None:
    """Packing, with the cartons open at the last stop and the next SSCC serial (None: off)."""
    packing = config.packing
    if not packing.enabled:
        return None
    pruned = await store.prune_print_jobs(printed_before=time.time() - 7 * 86400)
    if pruned:
        log.info("pruned labels printed more than a week ago", labels=pruned)
    cartons, packed, next_serial = await store.packing()
    span = SsccRange(
        packing.company_prefix, packing.first_serial, packing.last_serial, packing.extension
    )
    return Packing(
        span,
        # A range moved on in the config: its first serial; never back into given serials.
        next_serial=max(next_serial or span.first, span.first),
        cartons={terminal: carton_from_json(body) for terminal, body in cartons.items()},
        packed=packed,
        stations=frozenset(d.station for d in config.devices if isinstance(d, ZplPrinterDevice)),
    )


def handheld_http(
    config: GatewayConfig,
    put: Callable[[Event], Awaitable[object]],
    clock: Clock,
    started: Callable[[int], None],
) -> Coroutine[Any, Any, None] | None:
    """Handheld batches over HTTP, when configured: the server to run (None: not)."""
    handheld = config.handheld
    labels = handheld_labels(config)
    if labels is None or not handheld.http.enabled:
        return None
    from gateway.bridge import handheld_http as http  # aiohttp only where it is used

    return http.serve(handheld.http, handheld.tokens, labels, put, clock, started=started)


def handheld_labels(config: GatewayConfig) -> LabelRules | None:
    """How handheld labels are read (the site's location pattern); None: handhelds off."""
    if not config.handheld.enabled:
        return None
    return LabelRules(re.compile(config.labels.location_pattern))


def _most_recent(pallets: dict[str, str], count: int) -> dict[str, str]:
    """The last `count` entries of `pallets` (oldest move first), in the same order."""
    if len(pallets) <= count:
        return pallets
    return dict(itertools.islice(pallets.items(), len(pallets) - count, None))


async def _task_board(
    config: GatewayConfig, store: Store, pallets: dict[str, str], clock: Clock
) -> TaskBoard | None:
    """The AGV task board, with the tasks stored at the last stop (None: AGV tasks off)."""
    agv = config.agv
    if not agv.enabled:
        return None
    pruned = await store.prune_agv_tasks(older_than_s=agv.finished_retention_days * 86400)
    if pruned:
        log.info("pruned old finished AGV tasks", tasks=pruned)
    tasks = [task_from_json(json.loads(body)) for body in await store.agv_tasks()]
    now = clock()
    window = dt.timedelta(days=agv.velocity_window_days)
    moves = await store.recent_moves(since=(now - window).timestamp())
    return TaskBoard(
        policy=TaskPolicy(lease=dt.timedelta(seconds=agv.lease_s), max_attempts=agv.max_attempts),
        layout=agv.layout,
        stock=StockProjection(pallets, max_pallets=agv.stock_max_pallets),
        observer=RobotObserver(agv.vda5050.nodes if agv.vda5050 else None),
        tasks=tasks,
        velocity_window=window,
        resumed_at=now,
        lots={
            sscc: PalletLot(gtin, lot, None if expiry is None else dt.date.fromisoformat(expiry))
            for sscc, gtin, lot, expiry in await store.pallet_lots()
        },
        moves=[(gtin, dt.datetime.fromtimestamp(at, dt.UTC)) for gtin, at in moves],
    )


async def start_numbering(config: GatewayConfig, store: Store) -> str:
    """Number the gateway's transactions from now on (`Sequencing`), forgetting what is kept
    beyond `[broker] resend_history_s`; returns the stream's id."""
    numbering = Sequencing(
        Topics(config.gateway.site, config.gateway.id).base,
        config.gateway.site,
        config.gateway.id,
        history_s=config.broker.resend_history_s,
    )
    stream = await store.number(numbering)
    pruned = await store.prune_sequence_history(
        before=time.time() - numbering.history_s,
        keep_rows=numbering.history_rows,
        keep_bytes=numbering.history_bytes,
    )
    if pruned:
        log.info("pruned old transactions kept for resends", rows=pruned)
    return stream
