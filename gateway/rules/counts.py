"""Cycle counts: what was found in a set of locations, against what the gateway believes is there.

A count covers a set of locations (a location, a zone, an aisle: the caller expands it). While
it is open, what is seen in its locations (a pallet scanned or read by a zone's antennas, with
the location it was found at) is noted; seen twice is seen once. When it closes, it is compared
with the stock the gateway knows (pallet -> recorded location):

- found: recorded in the count's locations and seen there;
- missing: recorded in the count's locations and not seen anywhere in them;
- unexpected: seen in the count's locations and recorded nowhere in them (`misplaced`: those
  recorded at another location; the others unknown to the gateway);
- moved within the count: recorded at one of its locations, seen at another of them.

The adjustments follow: each missing pallet leaves its recorded location, each unexpected or
moved one is put where it was seen. Pure: sessions in, results out; storage and publishing are
the caller's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping

__all__ = ["CountResult", "CycleCounts"]


@dataclasses.dataclass(frozen=True, slots=True)
class CountResult:
    """A closed count: what was found against what was recorded, and the adjustments."""

    count_id: str
    locations: frozenset[str]
    opened_at: dt.datetime
    closed_at: dt.datetime
    found: frozenset[str]
    missing: Mapping[str, str]  # pallet -> where it was recorded
    unexpected: Mapping[str, str]  # pallet -> where it was seen
    misplaced: Mapping[str, str]  # of the unexpected: pallet -> where it was recorded
    moved: Mapping[str, tuple[str, str]]  # within the count: pallet -> (recorded, seen)

    @property
    def adjustments(self) -> dict[str, str | None]:
        """Pallet -> its location after the count (None: it left its recorded place)."""
        out: dict[str, str | None] = dict.fromkeys(self.missing)
        out |= dict(self.unexpected)
        out |= {pallet: seen for pallet, (_, seen) in self.moved.items()}
        return out


@dataclasses.dataclass(slots=True)
class _Session:
    locations: frozenset[str]
    opened_at: dt.datetime
    seen: dict[str, str]  # pallet -> where it was seen (the last time)


class CycleCounts:
    """Open counts, by id; at most `max_open` at once, each of at most `max_seen` pallets."""

    def __init__(self, *, max_open: int = 100, max_seen: int = 100_000) -> None:
        self._open: dict[str, _Session] = {}
        self._max_open = max_open
        self._max_seen = max_seen

    def open(self, count_id: str, locations: Iterable[str], at: dt.datetime) -> str | None:
        """Open a count of `locations`; why not (a str), or None."""
        places = frozenset(locations)
        if not places:
            return "a count needs at least one location"
        if count_id in self._open:
            return f"count {count_id} is open already"
        if len(self._open) >= self._max_open:
            return f"{self._max_open} counts are open already"
        for other_id, other in self._open.items():
            if other.locations & places:
                return f"count {other_id} counts {sorted(other.locations & places)[0]} already"
        self._open[count_id] = _Session(places, at, {})
        return None

    def counting(self, location: str) -> str | None:
        """The open count that covers `location` (None: none)."""
        return next((i for i, s in self._open.items() if location in s.locations), None)

    def seen(self, pallet: str, location: str) -> bool:
        """A pallet seen at a location: noted by the count covering it (False: none does)."""
        count_id = self.counting(location)
        if count_id is None:
            return False
        session = self._open[count_id]
        if pallet in session.seen or len(session.seen) < self._max_seen:
            session.seen[pallet] = location
        return True

    def close(
        self, count_id: str, recorded: Mapping[str, str], at: dt.datetime
    ) -> CountResult | None:
        """Close a count against `recorded` (pallet -> location, the gateway's stock);
        None when no such count is open."""
        session = self._open.pop(count_id, None)
        if session is None:
            return None
        places = session.locations
        expected = {p: loc for p, loc in recorded.items() if loc in places}
        seen = session.seen
        found = frozenset(p for p, loc in seen.items() if expected.get(p) == loc)
        moved = {
            p: (expected[p], loc) for p, loc in seen.items() if p in expected and expected[p] != loc
        }
        missing = {p: loc for p, loc in expected.items() if p not in seen}
        unexpected = {p: loc for p, loc in seen.items() if p not in expected}
        misplaced = {p: recorded[p] for p in unexpected if p in recorded}
        return CountResult(
            count_id, places, session.opened_at, at, found, missing, unexpected, misplaced, moved
        )
