"""Cycle counts: a set of locations counted against the stock the gateway knows.

Things counted are keyed as the dock ledger keys items: `sscc:N` for a pallet, `sgtin:GTIN.SERIAL`
for a tagged case, `epc:HEX` for a tag that is no GS1 identifier. A count is opened (by the WMS,
or by a handheld's RFID sweep of one location), collects what is seen in its locations, and
closes (on command, at its deadline, or at once for a sweep) into one `CountTransaction`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping

from gateway.domain.ids import deterministic_id
from gateway.domain.replies import ReplyHandle


class CountReason(enum.StrEnum):
    """Why a count closed."""

    COMMAND = "command"  # the WMS closed it
    TIMEOUT = "timeout"  # its deadline came
    SWEEP = "sweep"  # a handheld's RFID sweep of one location: opened and closed at once


def thing_kind(key: str) -> str:
    """`pallet` for an `sscc:` key, else `item`."""
    return "pallet" if key.startswith("sscc:") else "item"


@dataclasses.dataclass(frozen=True, slots=True)
class CountCommand:
    """Open or close a count (the WMS's `cmd/count`, or a count's deadline).

    An open names its places: `locations`, or all locations of a `zone` or an `aisle` in the
    location master (the rules expand them). `timeout_s`: closed then at the latest (None:
    the site's default)."""

    count_id: str
    open: bool
    at: dt.datetime
    locations: tuple[str, ...] = ()
    zone: str | None = None
    aisle: str | None = None
    timeout_s: float | None = None
    reason: CountReason = CountReason.COMMAND
    source: str = "wms"
    reply: ReplyHandle | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CountOpened:
    """A count opened: stored, so that it survives a restart."""

    count_id: str
    locations: tuple[str, ...]  # sorted
    opened_at: dt.datetime
    deadline: dt.datetime
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class CountSeen:
    """Something seen at a location by an open count, for the first time (or elsewhere than
    before): stored with the count."""

    count_id: str
    key: str
    location: str


@dataclasses.dataclass(frozen=True, slots=True)
class CountTransaction:
    """A closed count: what was found against what was recorded, and the adjustments.

    `recorded`/`seen` maps are keyed by thing key (see the module docstring). `moved` are things
    recorded at one of the count's locations and seen at another of them; `misplaced` are the
    unexpected ones the gateway has recorded outside the count (with where)."""

    count_id: str
    locations: tuple[str, ...]
    opened_at: dt.datetime
    closed_at: dt.datetime
    reason: CountReason
    source: str
    found: Mapping[str, str]  # key -> where it was recorded and seen
    missing: Mapping[str, str]  # key -> where it was recorded
    unexpected: Mapping[str, str]  # key -> where it was seen
    misplaced: Mapping[str, str]  # of the unexpected: key -> where it was recorded
    moved: Mapping[str, tuple[str, str]]  # key -> (recorded, seen)

    @property
    def tx_id(self) -> str:
        """One transaction per count id: a replay after a crash carries the same id."""
        return deterministic_id("count", self.count_id)

    @property
    def adjustments(self) -> dict[str, tuple[str | None, str | None]]:
        """Key -> (recorded location, location after the count; None: gone)."""
        out: dict[str, tuple[str | None, str | None]] = {
            key: (where, None) for key, where in self.missing.items()
        }
        for key, seen in self.unexpected.items():
            out[key] = (self.misplaced.get(key), seen)
        for key, (recorded, seen) in self.moved.items():
            out[key] = (recorded, seen)
        return out

    @property
    def exception_codes(self) -> list[str]:
        """One code per thing not found where recorded: `missing`, `unexpected`, `moved`."""
        return [
            *["missing"] * len(self.missing),
            *["unexpected"] * len(self.unexpected),
            *["moved"] * len(self.moved),
        ]

    @property
    def expected(self) -> int:
        """Things recorded in the count's locations."""
        return len(self.found) + len(self.missing) + len(self.moved)


@dataclasses.dataclass(frozen=True, slots=True)
class CountAnswer:
    """The answer to `cmd/count`: the count's state, its transaction once closed, or why not."""

    count_id: str
    status: str | None = None  # open, closed
    locations: tuple[str, ...] = ()
    tx_id: str | None = None
    totals: Mapping[str, int] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The command was carried out (or had been: a repeat gets the same answer)."""
        return self.error is None
