"""Domain events and transactions: frozen values that flow from drivers to rules to the outbox.

Drivers emit scans; the rules turn them into transactions and notices. Nothing here does I/O,
so `gateway.rules` may import it.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.rules.vda5050 import RobotConnection, RobotState
from gateway.rules.weighing import WeightSample

# Every tx_id is a UUID v5 in this namespace, over a canonical form of what the transaction
# records, so that a replay of the same input carries the same id.
TX_NAMESPACE = uuid.UUID("6f0c1d2e-5a57-4c4e-9d0e-7761726568f1")


class ScanKind(enum.StrEnum):
    """What a successfully read barcode identifies."""

    PALLET = "pallet"  # an SSCC (AI 00): a logistic unit
    ITEM = "item"  # a GTIN, with lot, expiry, serial or count when the label carries them
    LOCATION = "location"  # a location label: the site's own pattern, or a GLN (AI 414)


@dataclass(frozen=True, slots=True)
class Scan:
    """A barcode read and understood by a scanner driver."""

    device_id: str
    at: dt.datetime
    raw: str
    kind: ScanKind
    symbology: str | None = None
    sscc: str | None = None
    gtin: str | None = None
    lot: str | None = None
    expiry: dt.date | None = None
    serial: str | None = None
    count: int | None = None
    location: str | None = None

    @property
    def code(self) -> str:
        """The identity the scan stands for, used to spot repeated scans."""
        return self.sscc or self.location or self.gtin or self.raw


@dataclass(frozen=True, slots=True)
class RejectedScan:
    """A barcode the driver could not accept, with the reason why."""

    device_id: str
    at: dt.datetime
    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class TagReadBatch:
    """Tag reads from one RFID reader report, in the portal logic's compact form.

    Each read is (EPC hex, antenna id, peak RSSI dBm or None, time in seconds since the epoch
    on the gateway's clock, times seen); see `gateway.rules.portal.TagRead`.
    """

    reader_id: str
    at: dt.datetime
    reads: tuple[tuple[str, int, int | None, float, int], ...]


@dataclass(frozen=True, slots=True)
class WmsMessage:
    """A reference data message from the WMS (ASN, ship order, product, location), as received."""

    topic: str
    payload: bytes
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class CloseCommand:
    """Close a receipt or shipment now (MQTT 5 request; the answer goes to `response_topic`)."""

    reference: str
    at: dt.datetime
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class CommandResponse:
    """The answer to a command, for the request's response topic."""

    topic: str
    correlation: bytes | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AgvRequest:
    """A request on `agv/{op}` as received (parsed by the board)."""

    op: str
    payload: bytes
    at: dt.datetime
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class RobotMessage:
    """A VDA 5050 state or connection message, parsed by the bridge; `reason` if rejected."""

    topic: str
    at: dt.datetime
    message: RobotState | RobotConnection | None = None
    reason: str | None = None


ScanEvent = Scan | RejectedScan
Event = (
    Scan
    | RejectedScan
    | TagReadBatch
    | WmsMessage
    | CloseCommand
    | WeightSample
    | AgvRequest
    | RobotMessage
)


class Severity(enum.StrEnum):
    """How much a notice matters to the people on the floor."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a person or a monitoring system should see: a rejected scan, a timed-out move.

    Published on the `event` topic. `code` is a stable machine-readable reason.
    """

    code: str
    message: str
    at: dt.datetime
    severity: Severity = Severity.WARNING
    device_id: str | None = None
    location: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """Deterministic id over the notice's content."""
        return deterministic_id(
            "notice", self.code, self.device_id, self.location, _iso(self.at), self.details
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
            _iso(self.confirmed_at),
        )


def deterministic_id(*parts: Any) -> str:
    """A UUID v5 over the canonical JSON of `parts`."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return str(uuid.uuid5(TX_NAMESPACE, canonical))


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")


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


Decision = MoveTransaction | Notice | PortalPass
