"""Scans from handheld terminals (PDAs): what each scan is for, and the result of each as the
terminal shows it (green or red); the batches themselves are events (`HandheldBatch`).

A terminal numbers its scans 1, 2, 3 ... and keeps each until it has its final result, so a
terminal that was offline sends its backlog later, maybe twice, maybe out of order; the gateway
applies each (terminal, seq) exactly once, in seq order, and answers a repeat with the result
it gave the first time.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class Purpose(enum.StrEnum):
    """What a handheld scan is for."""

    RECEIVE = "receive"  # an item or pallet received at a door (against its open ASN)
    SHIP_CHECK = "ship_check"  # an item or pallet checked against the door's ship order
    MOVE = "move"  # a pallet put at a location (the scan and the location label)
    DAMAGE = "damage"  # items of a receipt reported damaged (a reason code, a quantity)
    SHORT = "short"  # items of a receipt reported missing (a reason code, a quantity)
    CARTON = "carton"  # a carton opened at a pack station for a ship order
    PACK = "pack"  # an item scanned into the open carton (checked against its order)
    CLOSE = "close"  # the open carton closed: its SSCC, its label printed
    COUNT = "count"  # a pallet found at a location (the scan and the location label)
    SWEEP = "sweep"  # an RFID sweep of one location (its label scanned, the tags read)


class HandheldCode(enum.StrEnum):
    """Results of a handheld scan besides the dock results (accepted, unexpected ...)."""

    MOVED = "moved"  # a move transaction
    COUNTED = "counted"  # a pallet counted where the gateway has it
    MISPLACED = "misplaced"  # a pallet counted elsewhere than where the gateway has it
    UNKNOWN_PALLET = "unknown_pallet"  # a pallet counted that the gateway has nowhere
    HELD = "held"  # waiting for the scans before it (send it again later for its result)
    LATE_SCAN = "late_scan"  # its receipt or shipment was closed before it came: nothing changed
    REJECTED = "rejected"  # the label or the record could not be used (see `detail`)
    NO_CHANGE = "no_change"  # understood, nothing to record (the pallet is already there ...)
    TOO_OLD = "too_old"  # older than the replay window: whether it was applied is not known


@dataclass(frozen=True, slots=True)
class HandheldResult:
    """What became of one scan: `result` is a dock result (accepted, unexpected,
    over_receipt, expired, not_on_order ...) or a `HandheldCode`; `tx_id` names the
    transaction it made; `repeat` is set when the scan was applied before (this is the
    result it got then)."""

    seq: int
    result: str
    detail: str | None = None
    tx_id: str | None = None
    repeat: bool = False


@dataclass(frozen=True, slots=True)
class HandheldAnswer:
    """The answer to one batch: a result per scan, in the batch's order; or, when the batch
    was refused as a whole, no result and the `error`."""

    terminal: str
    results: tuple[HandheldResult, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class HandheldApplied:
    """A scan applied (committed with what it made): never applied again."""

    terminal: str
    result: HandheldResult
    scanned_at: dt.datetime
    operator: str | None = None
