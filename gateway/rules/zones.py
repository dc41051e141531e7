"""RFID zones: which zone each tag is in, from reads of antennas named as locations.

A reader (or some of its antennas) covers storage zones: each zone is a group of antennas. A
tag near a zone boundary is heard by antennas of both zones ("bleed"); the first antenna that
read it says nothing. Per tag and zone the tracker keeps an exponentially smoothed RSSI, fed by
the zone's reads and decayed while the zone does not hear it, and:

- `arrived`: the tag was read `min_reads` times within `window_s` in a zone (the strongest one);
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
    decay_db_per_s: float = 2.0  # how fast a zone that stopped hearing the tag fades
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


_FLOOR_DBM = -100.0  # a zone that never heard the tag


@dataclasses.dataclass(slots=True)
class _Tag:
    rssi: dict[str, float]  # zone -> smoothed RSSI
    heard: dict[str, float]  # zone -> last read time
    reads: dict[str, list[float]]  # zone -> recent read times (until the tag has a zone)
    zone: str | None = None
    rival: str | None = None  # a zone ahead by the margin ...
    rival_since: float = 0.0  # ... since then
    last: float = 0.0


class ZoneTracker:
    """Tags in the zones of one reader (see the module docstring)."""

    def __init__(self, settings: ZoneSettings) -> None:
        self.settings = settings
        self._zone_of = {a: z for z, antennas in settings.zones.items() for a in antennas}
        self._tags: OrderedDict[str, _Tag] = OrderedDict()
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
        out: list[ZoneEvent] = []
        for epc, antenna, rssi, t, _seen in reads:
            zone = self._zone_of.get(antenna)
            if zone is None:
                continue  # an antenna of no zone (a portal's, say)
            tag = self._tags.get(epc)
            if tag is None:
                tag = self._tags[epc] = _Tag({}, {}, {})
                if len(self._tags) > s.max_tags:
                    out.extend(self._evict_oldest())
            else:
                self._tags.move_to_end(epc)
            value = float(rssi) if rssi is not None else -60.0
            before = self._decayed(tag, zone, t)
            tag.rssi[zone] = before + s.smoothing * (value - before) if zone in tag.rssi else value
            tag.heard[zone] = t
            tag.last = max(tag.last, t)
            if tag.zone is None:
                times = [x for x in tag.reads.get(zone, []) if t - x <= s.window_s]
                times.append(t)
                tag.reads[zone] = times
                if len(times) >= s.min_reads:
                    tag.zone = self._strongest(tag, t)
                    tag.reads.clear()
                    out.append(ZoneEvent(ZoneChange.ARRIVED, epc, tag.zone, None, t, s.reader_id))
            else:
                out.extend(self._maybe_move(epc, tag, t))
        return out

    def on_tick(self, now: float) -> list[ZoneEvent]:
        """Tags not read for `depart_after_s` departed; moves whose dwell ended."""
        s = self.settings
        out: list[ZoneEvent] = []
        for epc, tag in list(self._tags.items()):
            if now - tag.last >= s.depart_after_s:
                del self._tags[epc]
                if tag.zone is not None:
                    out.append(
                        ZoneEvent(ZoneChange.DEPARTED, epc, None, tag.zone, now, s.reader_id)
                    )
            elif tag.zone is not None:
                out.extend(self._maybe_move(epc, tag, now))
        return out

    # --- internals ----------------------------------------------------------------------------

    def _decayed(self, tag: _Tag, zone: str, t: float) -> float:
        """A zone's smoothed RSSI at `t`, faded for the time it has not heard the tag."""
        if zone not in tag.rssi:
            return _FLOOR_DBM
        quiet = max(0.0, t - tag.heard.get(zone, t))
        return max(_FLOOR_DBM, tag.rssi[zone] - self.settings.decay_db_per_s * quiet)

    def _strongest(self, tag: _Tag, t: float) -> str:
        return max(tag.rssi, key=lambda z: (self._decayed(tag, z, t), z))

    def _maybe_move(self, epc: str, tag: _Tag, t: float) -> list[ZoneEvent]:
        s = self.settings
        current = tag.zone
        assert current is not None
        here = self._decayed(tag, current, t)
        best = max(
            (z for z in tag.rssi if z != current),
            key=lambda z: self._decayed(tag, z, t),
            default=None,
        )
        if best is None or self._decayed(tag, best, t) < here + s.hysteresis_db:
            tag.rival = None
            return []
        if tag.rival != best:
            tag.rival, tag.rival_since = best, t
            return []
        if t - tag.rival_since < s.dwell_s:
            return []
        tag.zone, tag.rival = best, None
        return [ZoneEvent(ZoneChange.MOVED, epc, best, current, t, s.reader_id)]

    def _evict_oldest(self) -> list[ZoneEvent]:
        epc, tag = self._tags.popitem(last=False)
        self.evicted += 1
        if tag.zone is None:
            return []
        return [
            ZoneEvent(ZoneChange.DEPARTED, epc, None, tag.zone, tag.last, self.settings.reader_id)
        ]
