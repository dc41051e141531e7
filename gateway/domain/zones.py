"""RFID zones: a tag arrived in, moved between or departed from storage zones."""

from __future__ import annotations

import dataclasses
import enum

from gateway.domain.ids import deterministic_id


class ZoneChange(enum.StrEnum):
    """What happened to a tag."""

    ARRIVED = "arrived"
    MOVED = "moved"
    DEPARTED = "departed"


@dataclasses.dataclass(frozen=True, slots=True)
class ZoneEvent:
    """A tag arrived in, moved between or departed from zones, at `at` (epoch s)."""

    change: ZoneChange
    epc: str  # hex
    zone: str | None  # where it is now (None: departed)
    previous: str | None  # where it was (None: it arrived)
    at: float
    reader_id: str

    @property
    def event_id(self) -> str:
        """Deterministic: the same change always has the same id."""
        return deterministic_id("zone", self.reader_id, self.epc, self.change, self.zone, self.at)
