"""RFID zones: which zone each tag is in, from reads of antennas named as locations.

A reader (or some of its antennas) covers storage zones: each zone is a group of antennas. A
tag near a zone boundary is heard by antennas of both zones ("bleed"); the first antenna that
read it says nothing. Per tag and zone the tracker keeps an exponentially smoothed RSSI, fed by
the zone's reads and decayed while the zone does not hear it, and:

- `arrived`: the tag has been heard for `window_s`, `min_reads` times by one zone: it is placed
  in the zone that hears it best (not in the one that happened to read it first);
- `moved`: another zone's smoothed RSSI stayed above the current zone's by `hysteresis_db` for
  `dwell_s`; a tag sitting between two zones, heard a little stronger by one then the other,
  does not move (the margin), and a passing fluctuation does not either (the dwell);
- `departed`: no antenna of any zone read it for `depart_after_s`.

Pure: reads with their timestamps in, zone events out; `on_tick` advances time. Bounded: at
most `max_tags` tags are tracked per tracker; past it the least recently read is forgotten
(counted in `evicted`, and reported departed).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from gateway.domain import TagRead, ZoneChange, ZoneEvent

__all__ = ["ZoneChange", "ZoneEvent", "ZoneSettings", "ZoneTracker"]


@dataclasses.dataclass(frozen=True, slots=True)
class ZoneSettings:
    """One reader's zones and how sure the tracker must be."""

    reader_id: str
    zones: Mapping[str, frozenset[int]]  # zone (a location) -> its antennas
    min_reads: int = 2
    window_s: float = 2.0
    hysteresis_db: float = 4.0
    dwell_s: float = 3.0
    depart_after_s: float = 30.0
    smoothing: float = 0.3  # weight of a new read in the smoothed RSSI
    silence_s: float = 5.0  # a zone that has not heard the tag this long no longer counts
    # A tag is placed only in a zone that heard it at least this strongly (dBm): a tag heard
    # only by another zone's antennas, faintly (bleed), is in none. None: no threshold.
    min_rssi: float | None = -65.0
    max_tags: int = 100_000

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for zone, antennas in self.zones.items():
            for antenna in antennas:
                if antenna in seen:
                    raise ValueError(f"antenna {antenna} is in zones {seen[antenna]} and {zone}")
                seen[antenna] = zone
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")


_SILENT = float("-inf")  # a zone that does not hear the tag (any more)


@dataclasses.dataclass(slots=True)
class _Tag:
    rssi: dict[str, float]  # zone -> smoothed RSSI
    heard: dict[str, float]  # zone -> last read time
    first: dict[str, list[float]] | None  # zone -> read times, until the tag has a zone
    zone: str | None = None
    rival: str | None = None  # a zone ahead by the margin ...
    rival_since: float = 0.0  # ... since then
    last: float = 0.0


class ZoneTracker:
    """Tags in the zones of one reader (see the module docstring)."""

    def __init__(self, settings: ZoneSettings) -> None:
        self.settings = settings
        self._zone_of = {a: z for z, antennas in settings.zones.items() for a in antennas}
        self._tags: OrderedDict[str, _Tag] = OrderedDict()  # least recently read first
        self._rivals: set[str] = set()  # tags with a zone ahead of theirs (dwell running)
        self._unplaced: set[str] = set()  # tags heard, not placed yet
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._tags)

    def zone_of(self, epc: str) -> str | None:
        """The zone a tag is in (None: not placed, or unknown)."""
        tag = self._tags.get(epc)
        return None if tag is None else tag.zone

    def snapshot(self) -> dict[str, list[str]]:
        """The tags placed in each zone (every zone, empty ones too), sorted."""
        out: dict[str, list[str]] = {zone: [] for zone in self.settings.zones}
        for epc, tag in self._tags.items():
            if tag.zone is not None:
                out[tag.zone].append(epc)
        return {zone: sorted(epcs) for zone, epcs in out.items()}

    def on_reads(self, reads: Iterable[TagRead]) -> list[ZoneEvent]:
        """Take reads (EPC hex, antenna, peak RSSI, time s, seen count); the events they make."""
        s = self.settings
        zone_of, tags = self._zone_of, self._tags
        keep = 1.0 - s.smoothing
        out: list[ZoneEvent] = []
        for epc, antenna, rssi, t, _seen in reads:
            zone = zone_of.get(antenna)
            if zone is None:
                continue  # an antenna of no zone (a portal's, say)
            value = -60.0 if rssi is None else float(rssi)
            tag = tags.get(epc)
            if tag is None:
                tag = tags[epc] = _Tag({zone: value}, {zone: t}, {})
                if len(tags) > s.max_tags:
                    out.extend(self._evict_oldest())
            else:
                tags.move_to_end(epc)
                old = tag.rssi.get(zone)
                fresh = old is not None and t - tag.heard[zone] <= s.silence_s
                tag.rssi[zone] = keep * old + s.smoothing * value if fresh and old else value
                tag.heard[zone] = t
            if t > tag.last:
                tag.last = t
            current = tag.zone
            if current is None:
                first = tag.first
                assert first is not None
                first.setdefault(zone, []).append(t)
                self._unplaced.add(epc)
                placed = self._place(epc, tag, t)
                if placed is not None:
                    out.append(placed)
            elif zone == current:
                if tag.rival is not None and not self._leads(tag, tag.rival, t):
                    tag.rival = None
                    self._rivals.discard(epc)
            elif self._leads(tag, zone, t):
                if tag.rival != zone:
                    tag.rival, tag.rival_since = zone, t
                    self._rivals.add(epc)
                elif t - tag.rival_since >= s.dwell_s:
                    out.append(self._move(epc, tag, t))
            elif tag.rival == zone:
                tag.rival = None
                self._rivals.discard(epc)
        return out

    def on_tick(self, now: float) -> list[ZoneEvent]:
        """Tags not read for `depart_after_s` departed; moves whose dwell ended."""
        s = self.settings
        out: list[ZoneEvent] = []
        tags = self._tags
        while tags:
            epc, tag = next(iter(tags.items()))
            if now - tag.last < s.depart_after_s:
                break
            del tags[epc]
            self._rivals.discard(epc)
            self._unplaced.discard(epc)
            if tag.zone is not None:
                out.append(ZoneEvent(ZoneChange.DEPARTED, epc, None, tag.zone, now, s.reader_id))
        for epc in list(self._unplaced):
            placed = self._place(epc, tags[epc], now)
            if placed is not None:
                out.append(placed)
        for epc in list(self._rivals):
            tag = tags[epc]
            if tag.rival is None or not self._leads(tag, tag.rival, now):
                tag.rival = None
                self._rivals.discard(epc)
            elif now - tag.rival_since >= s.dwell_s:
                out.append(self._move(epc, tag, now))
        return out

    # --- internals ----------------------------------------------------------------------------

    def _place(self, epc: str, tag: _Tag, t: float) -> ZoneEvent | None:
        """A new tag is placed once it has been heard for `window_s` (so that a zone's bleed,
        heard first, does not win) and `min_reads` times by one zone: in the strongest zone."""
        first = tag.first
        assert first is not None
        start = min(times[0] for times in first.values())
        s = self.settings
        if t - start < s.window_s or max(map(len, first.values())) < s.min_reads:
            return None
        best = max(tag.rssi, key=lambda z: (self._strength(tag, z, t), z))
        if s.min_rssi is not None and self._strength(tag, best, t) < s.min_rssi:
            return None  # heard only faintly so far
        tag.zone = best
        tag.first = None
        self._unplaced.discard(epc)
        return ZoneEvent(ZoneChange.ARRIVED, epc, tag.zone, None, t, self.settings.reader_id)

    def _strength(self, tag: _Tag, zone: str, t: float) -> float:
        """A zone's smoothed RSSI of the tag; silent once it has not heard it for `silence_s`."""
        if zone not in tag.rssi or t - tag.heard[zone] > self.settings.silence_s:
            return _SILENT
        return tag.rssi[zone]

    def _leads(self, tag: _Tag, zone: str, t: float) -> bool:
        """Whether `zone` hears the tag better than its zone by the margin."""
        assert tag.zone is not None
        s = self.settings
        rival = self._strength(tag, zone, t)
        if rival == _SILENT or (s.min_rssi is not None and rival < s.min_rssi):
            return False  # a zone that hears it only faintly is no place for it
        return rival >= self._strength(tag, tag.zone, t) + s.hysteresis_db

    def _move(self, epc: str, tag: _Tag, t: float) -> ZoneEvent:
        previous, tag.zone, tag.rival = tag.zone, tag.rival, None
        self._rivals.discard(epc)
        return ZoneEvent(ZoneChange.MOVED, epc, tag.zone, previous, t, self.settings.reader_id)

    def _evict_oldest(self) -> list[ZoneEvent]:
        epc, tag = self._tags.popitem(last=False)
        self._rivals.discard(epc)
        self._unplaced.discard(epc)
        self.evicted += 1
        if tag.zone is None:
            return []
        return [
            ZoneEvent(ZoneChange.DEPARTED, epc, None, tag.zone, tag.last, self.settings.reader_id)
        ]
