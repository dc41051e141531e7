"""Transactions and what they are made of: portal passes, items, moves, receipts, weighings.

Frozen values with deterministic ids (`tx_id`), so that a replay after a crash carries the same
id. The rules make them; the recorder stores them; the wire layer renders them.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Final

from gateway.domain.ids import deterministic_id, utc_iso


class DockKind(enum.StrEnum):
    """What a dock transaction records."""

    RECEIVE = "receive"
    SHIP = "ship"


class ClosingKind(enum.StrEnum):
    """What a closing summary closes."""

    RECEIPT = "receipt"
    SHIPMENT = "shipment"


class DoorRole(enum.StrEnum):
    """What a dock door (or a scanner at it) is for."""

    RECEIVING = "receiving"
    SHIPPING = "shipping"
    BOTH = "both"  # the direction of a pass decides


class EvidenceSource(enum.StrEnum):
    """What saw the items of a dock transaction."""

    PORTAL = "portal"
    SCANNER = "scanner"


WEIGHT_MISMATCH: Final = "weight_mismatch"  # the exception code of a weight out of tolerance


class DockResult(enum.StrEnum):
    """What the receiving or shipping rule made of one item."""

    ACCEPTED = "accepted"
    UNEXPECTED = "unexpected"
    OVER_RECEIPT = "over_receipt"
    ALREADY_RECEIVED = "already_received"
    EXPIRED = "expired"
    SHORT_DATED = "short_dated"
    LOT_MISMATCH = "lot_mismatch"
    NOT_ON_ORDER = "not_on_order"
    ALREADY_SHIPPED = "already_shipped"
    DAMAGED = "damaged"  # reported damaged by a clerk (received, with a reason code)
    REPORTED_SHORT = "reported_short"  # reported missing by a clerk (with a reason code)


class WeighingMethod(enum.StrEnum):
    """How a weighing was taken."""

    SCALE_STABLE = "scale_stable"  # the scale said stable
    SETTLED = "settled"  # consecutive readings agreed (a scale that reports no stability)


class Direction(enum.StrEnum):
    """Which way a pallet crossed a dock door."""

    INBOUND = "inbound"  # outside (dock, truck) to inside (warehouse)
    OUTBOUND = "outbound"
    UNKNOWN = "unknown"  # the antennas could not tell


@dataclass(frozen=True, slots=True)
class TagEvidence:
    """What the reader saw of one tag during a pass."""

    epc: str  # upper-case hex, as read
    reads: int
    antennas: tuple[int, ...]
    peak_rssi: int | None
    first_seen: float  # seconds since the epoch
    last_seen: float


@dataclass(frozen=True, slots=True)
class PortalPass:
    """Tags that crossed a dock door together, with the direction and the evidence."""

    door: str
    reader_id: str
    direction: Direction
    tags: tuple[TagEvidence, ...]
    started_at: float
    ended_at: float
    # Seconds between the power-weighted times the tags were seen outside and inside;
    # positive is inbound. Near zero means the direction is a guess.
    separation_s: float

    @property
    def epcs(self) -> tuple[str, ...]:
        """The EPCs of the pass, sorted."""
        return tuple(sorted(t.epc for t in self.tags))

    @property
    def pass_id(self) -> str:
        """Deterministic id: door, direction, EPC set and start."""
        return deterministic_id(
            "pass", self.door, self.direction.value, self.epcs, round(self.started_at, 3)
        )


@dataclass(frozen=True, slots=True)
class MoveTransaction:
    """A validated pallet move: `sscc` left `from_location` (None when unknown) for `to_location`."""

    sscc: str
    from_location: str | None
    to_location: str
    device_id: str
    pallet_scanned_at: dt.datetime
    confirmed_at: dt.datetime
    exceptions: tuple[str, ...] = ()
    task_id: str | None = None  # the AGV task whose drop this is; None for a forklift move

    @property
    def tx_id(self) -> str:
        """Deterministic id: the same scans always give the same id."""
        return deterministic_id(
            "move",
            self.sscc,
            self.from_location,
            self.to_location,
            self.device_id,
            utc_iso(self.confirmed_at),
        )


@dataclass(frozen=True, slots=True)
class Weighing:
    """The weight of one load, net of the platform's zero."""

    scale_id: str
    kg: float
    at: float  # time of the reading that completed it
    samples: int  # readings averaged into `kg`: 1 for scale_stable, settle_samples for settled
    method: WeighingMethod


@dataclass(frozen=True, slots=True)
class WeightCheck:
    """A weighing compared with what its contents should weigh."""

    expected_kg: float
    measured_kg: float
    difference_kg: float  # measured - expected: negative is lighter (short), positive heavier
    within: bool
    tolerance_kg: float


@dataclass(frozen=True, slots=True)
class Item:
    """One thing that came through: a tagged case or pallet, or a scanned label."""

    key: str  # identity for the ledger: epc:HEX, sscc:N or sgtin:GTIN.SERIAL; "" if none
    epc: str | None = None
    uri: str | None = None
    gtin: str | None = None
    serial: str | None = None
    sscc: str | None = None
    lot: str | None = None
    expiry: dt.date | None = None


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What the rule made of one item."""

    item: Item
    result: DockResult
    line: int | None = None
    detail: str = ""


_REPORTED = frozenset({DockResult.DAMAGED, DockResult.REPORTED_SHORT})


@dataclass(frozen=True, slots=True)
class DockTransaction:
    """A receive or ship transaction: the items of one pass or scan at a door."""

    kind: DockKind
    door: str
    reference: str | None  # the ASN or ship order; None when nothing was planned at the door
    items: tuple[ItemResult, ...]
    source: EvidenceSource
    device: str
    evidence_id: str
    started_at: dt.datetime
    occurred_at: dt.datetime
    direction: Direction | None = None  # of the pass; None for a scan
    weight: WeightCheck | None = None  # the pallet's weighing, compared with its contents
    party_gln: str | None = None  # the other party's GLN: the ASN's supplier, the order's customer

    @property
    def tx_id(self) -> str:
        """Deterministic: the same pass or scan always gives the same id."""
        return deterministic_id(
            self.kind,
            self.door,
            self.reference,
            sorted(r.item.key or r.item.gtin or "" for r in self.items),
            self.evidence_id,
        )

    @property
    def status(self) -> str:
        """unplanned, accepted, accepted_with_exceptions, rejected, or reported (a clerk's
        report of damaged or missing items)."""
        if self.reference is None:
            return "unplanned"
        if self.items and all(r.result in _REPORTED for r in self.items):
            return "reported"
        accepted = sum(1 for r in self.items if r.result == DockResult.ACCEPTED)
        if accepted == len(self.items) and (self.weight is None or self.weight.within):
            return "accepted"
        return "accepted_with_exceptions" if accepted else "rejected"

    @property
    def exception_codes(self) -> list[str]:
        """The code of each exception the transaction carries: an item's result other than
        accepted, and `weight_mismatch` when the pallet's weight is off (as published)."""
        codes = [r.result.value for r in self.items if r.result is not DockResult.ACCEPTED]
        if self.weight is not None and not self.weight.within:
            codes.append(WEIGHT_MISMATCH)
        return codes

    @property
    def accepted_pallets(self) -> list[str]:
        """The SSCCs of the pallets (pallet labels) the transaction accepted, in order."""
        return [r.item.sscc for r in self.items if r.item.sscc and r.result == DockResult.ACCEPTED]


@dataclass(frozen=True, slots=True)
class LineSummary:
    """A line of a closed receipt or shipment."""

    line: int
    what: str  # the EPCs, SSCC or GTIN the line expected
    expected: int
    done: int
    over: int
    damaged: int = 0  # reported damaged
    reported_short: int = 0  # reported missing, with a reason

    @property
    def short(self) -> int:
        """Expected and not received (or not shipped)."""
        return max(0, self.expected - self.done)


@dataclass(frozen=True, slots=True)
class DockSummary:
    """A receipt or shipment closed: per line what came and what is missing."""

    kind: ClosingKind
    reference: str
    door: str
    lines: tuple[LineSummary, ...]
    closed_at: dt.datetime
    reason: str  # "command", "idle" or "withdrawn" (the WMS deleted the ASN or order)

    @property
    def tx_id(self) -> str:
        """One summary per receipt or shipment."""
        return deterministic_id(self.kind, "close", self.reference)

    @property
    def status(self) -> str:
        """complete, short, over or short_and_over."""
        short = any(line.short for line in self.lines)
        over = any(line.over for line in self.lines)
        if short and over:
            return "short_and_over"
        return "short" if short else "over" if over else "complete"


@dataclass(frozen=True, slots=True)
class DockProgress:
    """A receipt or shipment open at a door, as far as it got (the live state of the door).

    `under_way`: something was received or loaded already; otherwise it is the one the door's
    next pass would open. Ship orders list their pallets as a count (`pallets_expected`,
    `pallets_done`), not one line each.
    """

    kind: DockKind
    reference: str
    door: str
    lines: tuple[LineSummary, ...]
    under_way: bool
    last_activity: dt.datetime | None = None
    pallets_expected: int = 0
    pallets_done: int = 0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """An item recorded by a transaction (stored by the app, reloaded at start)."""

    kind: DockKind
    key: str
    reference: str
    line: int | None
    result: DockResult  # accepted or over_receipt: what counted, as it counted

    @property
    def counted(self) -> bool:
        """Counted towards its line."""
        return self.result == DockResult.ACCEPTED
