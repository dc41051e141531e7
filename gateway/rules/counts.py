"""Cycle counts: what was found in a set of locations, against what the gateway believes is there.

A count covers a set of locations (a location, a zone, an aisle: the engine expands them from
the location master). While it is open, what is seen in its locations (a pallet or case read by
a zone's antennas or a handheld's RFID sweep, a pallet label scanned at a location) is noted
with the location it was found at; seen twice is seen once. When it closes, it is compared with
the stock the gateway knows (thing -> recorded location: pallets where their last transaction
put them, cases where their pallet is):

- found: recorded in the count's locations and seen there;
- missing: recorded in the count's locations and not seen anywhere in them;
- unexpected: seen in the count's locations and recorded nowhere in them (`misplaced`: those
  recorded at another location; the others unknown to the gateway);
- moved within the count: recorded at one of its locations, seen at another of them.

The adjustments follow (`CountTransaction.adjustments`): each missing thing leaves its recorded
location, each unexpected or moved one is put where it was seen.

Pure: commands and sightings in, decisions out; the recorded stock is handed in by the caller
(the runner reads it from storage). Bounded: at most `max_open` counts at once, each noting at
most `max_seen` things (beyond, sightings are dropped and counted in `dropped`), and the ids of
the last `max_closed` closed counts (a repeated close is answered with the same transaction).
Counts may not overlap: a location is counted by one count at a time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from gateway.domain import CountOpened, CountReason, CountSeen, CountTransaction

__all__ = ["CycleCounts"]


@dataclasses.dataclass(slots=True)
class _Session:
    opened: CountOpened
    places: frozenset[str]
    seen: dict[str, str]  # key -> where it was seen (the last time)


class CycleCounts:
    """Open counts, by id (see the module docstring)."""

    def __init__(
        self, *, max_open: int = 100, max_seen: int = 100_000, max_closed: int = 10_000
    ) -> None:
        self._open: dict[str, _Session] = {}
        self._by_location: dict[str, str] = {}  # location -> the open count covering it
        self._closed: OrderedDict[str, str] = OrderedDict()  # count id -> tx id
        self._max_open = max_open
        self._max_seen = max_seen
        self._max_closed = max_closed
        self.dropped = 0  # sightings beyond `max_seen`

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self,
        count_id: str,
        locations: Iterable[str],
        at: dt.datetime,
        deadline: dt.datetime,
        source: str = "wms",
    ) -> CountOpened | str:
        """Open a count of `locations`: the decision to store, or why not (a str)."""
        places = frozenset(locations)
        if not places:
            return "a count needs at least one location"
        if count_id in self._open:
            return f"count {count_id} is open already"
        if count_id in self._closed:
            return f"count {count_id} was closed already"
        if len(self._open) >= self._max_open:
            return f"{self._max_open} counts are open already"
        taken = sorted(loc for loc in places if loc in self._by_location)
        if taken:
            return f"count {self._by_location[taken[0]]} counts {taken[0]} already"
        opened = CountOpened(count_id, tuple(sorted(places)), at, deadline, source)
        self._start(opened, {})
        return opened

    def restore(self, opened: CountOpened, seen: Iterable[tuple[str, str]]) -> None:
        """A count stored before the restart, with what it had seen."""
        self._start(opened, dict(seen))

    def restore_closed(self, count_id: str, tx_id: str) -> None:
        """A count closed before the restart (its id is not taken again)."""
        self._remember(count_id, tx_id)

    def get(self, count_id: str) -> CountOpened | None:
        """An open count."""
        session = self._open.get(count_id)
        return None if session is None else session.opened

    def closed_tx(self, count_id: str) -> str | None:
        """The transaction of a count closed lately (None: not closed, or long ago)."""
        return self._closed.get(count_id)

    def counting(self, location: str) -> str | None:
        """The open count that covers `location` (None: none)."""
        return self._by_location.get(location)

    def seen_keys(self, count_id: str) -> frozenset[str]:
        """What an open count has seen so far."""
        session = self._open.get(count_id)
        return frozenset() if session is None else frozenset(session.seen)

    def seen(self, key: str, location: str, count_id: str | None = None) -> CountSeen | None:
        """`key` seen at `location`: noted by the count covering it (or `count_id` when it
        does); the decision to store when it is new there, else None."""
        found = self._by_location.get(location)
        if found is None or (count_id is not None and count_id != found):
            return None
        session = self._open[found]
        before = session.seen.get(key)
        if before == location:
            return None
        if before is None and len(session.seen) >= self._max_seen:
            self.dropped += 1
            return None
        session.seen[key] = location
        return CountSeen(found, key, location)

    def due(self, now: dt.datetime) -> list[str]:
        """Open counts whose deadline came, oldest first."""
        return [i for i, s in self._open.items() if s.opened.deadline <= now]

    def close(
        self,
        count_id: str,
        recorded: Mapping[str, str],
        at: dt.datetime,
        reason: CountReason = CountReason.COMMAND,
    ) -> CountTransaction | None:
        """Close a count against `recorded` (key -> location: the gateway's stock, at least
        of the count's locations and of what it saw); None when no such count is open."""
        session = self._open.pop(count_id, None)
        if session is None:
            return None
        for location in session.places:
            del self._by_location[location]
        places = session.places
        expected = {k: loc for k, loc in recorded.items() if loc in places}
        seen = session.seen
        found = {k: loc for k, loc in seen.items() if expected.get(k) == loc}
        moved = {
            k: (expected[k], loc) for k, loc in seen.items() if k in expected and expected[k] != loc
        }
        missing = {k: loc for k, loc in expected.items() if k not in seen}
        unexpected = {k: loc for k, loc in seen.items() if k not in expected}
        misplaced = {k: recorded[k] for k in unexpected if k in recorded}
        opened = session.opened
        tx = CountTransaction(
            count_id,
            opened.locations,
            opened.opened_at,
            at,
            reason,
            opened.source,
            found,
            missing,
            unexpected,
            misplaced,
            moved,
        )
        self._remember(count_id, tx.tx_id)
        return tx

    def _start(self, opened: CountOpened, seen: dict[str, str]) -> None:
        places = frozenset(opened.locations)
        self._open[opened.count_id] = _Session(opened, places, seen)
        for location in places:
            self._by_location[location] = opened.count_id

    def _remember(self, count_id: str, tx_id: str) -> None:
        self._closed[count_id] = tx_id
        self._closed.move_to_end(count_id)
        while len(self._closed) > self._max_closed:
            self._closed.popitem(last=False)
