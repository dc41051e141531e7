"""Events: what the drivers and the bridge hand to the rules, already translated.

Drivers turn bytes from devices into scans, tag reads and weight samples; the bridge turns MQTT
messages into reference data, tasks, requests and robot reports, or into `Rejected` with the
reason. Every event carries the time it happened (or was received) on the gateway's clock.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from gateway.domain.counts import CountCommand
from gateway.domain.handheld import Purpose
from gateway.domain.refdata import RefData, RefDataKind
from gateway.domain.replies import ReplyHandle
from gateway.domain.robots import RobotConnection, RobotState
from gateway.domain.site import SiteLocationState, SiteReceipt
from gateway.domain.tasks import TaskRequest, WmsTaskMessage


class ScanKind(enum.StrEnum):
    """What a successfully read barcode identifies."""

    PALLET = "pallet"  # an SSCC (AI 00): a logistic unit
    ITEM = "item"  # a GTIN, with lot, expiry, serial or count when the label carries them
    LOCATION = "location"  # a location label: the site's own pattern, or a GLN (AI 414)


@dataclass(frozen=True, slots=True)
class Scan:
    """A barcode read and understood by a scanner driver.

    `at` is when it was scanned, as far as the gateway knows. A label that waited at the device
    while intake was held is stamped with when the hold began (the earliest it can have been
    scanned), and `read_at` says when it was read (the latest); None: read at `at`.
    """

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
    read_at: dt.datetime | None = None

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


TagRead = tuple[str, int, int | None, float, int]
"""One tag read: (EPC hex, antenna id, peak RSSI dBm or None, gateway time s, times seen)."""


@dataclass(frozen=True, slots=True)
class TagReadBatch:
    """Tag reads from one RFID reader report, in the portal logic's compact form.

    Each read is (EPC hex, antenna id, peak RSSI dBm or None, time in seconds since the epoch
    on the gateway's clock, times seen); see `TagRead`.
    """

    reader_id: str
    at: dt.datetime
    reads: tuple[TagRead, ...]


KG_PER_UNIT: Final[Mapping[str, Decimal]] = {
    "g": Decimal("0.001"),
    "kg": Decimal(1),
    "t": Decimal(1000),
    "lb": Decimal("0.45359237"),
}
"""Kilograms per unit a scale may report in."""


@dataclass(frozen=True, slots=True)
class WeightSample:
    """One reading of a scale; `stable` is None when the scale does not report stability."""

    scale_id: str
    at: float  # seconds
    kg: float
    stable: bool | None = None
    overload: bool = False
    underload: bool = False


@dataclass(frozen=True, slots=True)
class RefDataUpdate:
    """A reference data record from the WMS, checked (it may be the same as the one held).

    `digest` fingerprints the message it came in (opaque to the rules, stored with the record):
    after a restart, the broker's retained copy with the same digest is recognised unread.
    """

    item: RefData
    at: dt.datetime
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class RefDataDeleted:
    """The WMS withdrew the record `key` of this `kind` (an empty retained payload)."""

    kind: RefDataKind
    key: str
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class CloseCommand:
    """Close a receipt or shipment now; the answer goes to `reply` (if the request gave one)."""

    reference: str
    at: dt.datetime
    reply: ReplyHandle | None = None


@dataclass(frozen=True, slots=True)
class ResendRequest:
    """Publish again the numbered transactions `first` to `last` of `topic` ("tx/receive")
    in `stream`: a consumer found them missing (`cmd/resend`). Storage's, not the rules'."""

    topic: str
    stream: str
    first: int
    last: int
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class RobotReport:
    """A robot's VDA 5050 state or connection message, received at `at`."""

    message: RobotState | RobotConnection
    at: dt.datetime


class InputKind(enum.StrEnum):
    """Which kind of message from outside was rejected."""

    REFERENCE_DATA = "reference_data"
    AGV_REQUEST = "agv_request"
    ROBOT = "vda5050"
    COMMAND = "command"
    HANDHELD = "handheld"
    SITE_STATE = "site_state"  # another gateway's retained state


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message from outside that could not be accepted, with the reason (one line).

    `subject` says what it was: its topic, or the AGV operation. A rejected request keeps its
    `reply`, so that the sender is told why. `source` says who sent it, as coarsely as the
    rejections of one sender are counted together (a robot, a WMS topic tree, a fleet); None:
    the subject.
    """

    kind: InputKind
    subject: str
    reason: str
    at: dt.datetime
    reply: ReplyHandle | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceGap:
    """A device's stream was interrupted and has resumed (its port opened again after a fault,
    its connection came back): what it said before must not be paired with what it says after.
    """

    device_id: str
    at: dt.datetime
    reason: str


ScanEvent = Scan | RejectedScan


@dataclass(frozen=True, slots=True)
class HandheldScan:
    """One scan of a terminal: `label` decoded at the edge (a rejected label keeps why), and
    for a move the location label `to`. `scanned_at` is the terminal's clock."""

    seq: int
    purpose: Purpose
    scanned_at: dt.datetime
    label: Scan | RejectedScan
    door: str | None = None  # receive, ship_check
    reference: str | None = None  # the ASN or ship order the operator works on, if the app knows
    to: Scan | RejectedScan | None = None  # move: the location label
    operator: str | None = None
    reason: str | None = None  # damage, short: the reason code
    quantity: int = 1  # damage, short: how many
    line: int | None = None  # damage, short: the ASN line (None: the label's line)
    station: str | None = None  # carton: the pack station
    tags: tuple[str, ...] = ()  # sweep: what the RFID sweep read, as keys (sscc:, sgtin:, epc:)
    count_id: str | None = None  # sweep, count: the open count it belongs to (None: any)


@dataclass(frozen=True, slots=True)
class HandheldBatch:
    """Scans of one terminal in one message (MQTT or HTTP), received at `at`."""

    terminal: str
    scans: tuple[HandheldScan, ...]
    at: dt.datetime
    reply: ReplyHandle | None = None


Event = (
    Scan
    | RejectedScan
    | DeviceGap
    | TagReadBatch
    | WeightSample
    | RefDataUpdate
    | RefDataDeleted
    | CloseCommand
    | ResendRequest
    | TaskRequest
    | WmsTaskMessage
    | RobotReport
    | Rejected
    | HandheldBatch
    | CountCommand
    | SiteLocationState
    | SiteReceipt
)
