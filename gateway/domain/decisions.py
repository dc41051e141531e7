"""Decisions: what the rules return. The recorder turns one batch of them into one commit."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.counts import CountAnswer, CountOpened, CountSeen, CountTransaction
from gateway.domain.handheld import HandheldAnswer, HandheldApplied
from gateway.domain.notices import Notice
from gateway.domain.packing import CartonChanged, PackTransaction, PrintJob
from gateway.domain.refdata import RefData, RefDataKind
from gateway.domain.replies import ReplyHandle
from gateway.domain.site import PalletElsewhere
from gateway.domain.tasks import TaskAnswer, TaskChanged
from gateway.domain.transactions import (
    DockSummary,
    DockTransaction,
    MoveTransaction,
    PortalPass,
    Weighing,
)
from gateway.domain.zones import ZoneEvent


@dataclass(frozen=True, slots=True)
class RefDataChange:
    """Reference data accepted (or deleted): stored, so that a restart has it."""

    kind: RefDataKind
    key: str
    item: RefData | None  # None: deleted
    digest: bytes | None = None  # of the message it came in (`RefDataUpdate.digest`)


@dataclass(frozen=True, slots=True)
class CloseAnswer:
    """The answer to a close command: the summary's status and id, or why nothing closed."""

    reference: str
    status: str | None = None  # the summary's status; None when nothing was closed
    tx_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """A receipt or shipment was closed."""
        return self.error is None


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer for the sender of a request, sent only once the batch is committed."""

    to: ReplyHandle
    answer: TaskAnswer | CloseAnswer | HandheldAnswer | CountAnswer


Decision = (
    MoveTransaction
    | DockTransaction
    | DockSummary
    | Notice
    | PortalPass
    | Weighing
    | TaskChanged
    | RefDataChange
    | Reply
    | HandheldApplied
    | PackTransaction
    | PrintJob
    | CartonChanged
    | ZoneEvent
    | CountOpened
    | CountSeen
    | CountTransaction
    | PalletElsewhere
)
"""Everything a rule may decide."""

Committed = MoveTransaction | DockTransaction | DockSummary | PackTransaction | CountTransaction
"""Transactions a commit publishes (metrics, trends and the live state count them)."""
