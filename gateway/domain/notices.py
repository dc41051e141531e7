"""Notices: what a person or a monitoring system should see (events and alarms)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.ids import deterministic_id, utc_iso


class Severity(enum.StrEnum):
    """How much a notice matters to the people on the floor."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"  # an alarm: it needs a person


@dataclass(frozen=True, slots=True)
class Notice:
    """Something a person or a monitoring system should see: a rejected scan, a timed-out move.

    Published on the `event` topic (`alarm` when its severity is ERROR). `code` is a stable
    machine-readable reason.
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
            "notice", self.code, self.device_id, self.location, utc_iso(self.at), self.details
        )
