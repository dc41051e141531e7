"""Dock-door portal logic: raw tag reads in, one `PortalPass` per pallet that crossed.

Pure and clock-free: every read carries its time (seconds), and `on_tick(now)` advances time.

- Smoothing: a tag counts once it is read `min_reads` times within `window_s`; stray single
  reads never make a pass. It departs after `depart_after_s` without reads.
- De-duplication: a tag is one entry of a pass however many antennas read it, how often.
- Static tags: a tag read for longer than `static_after_s` that is still read when the tags it
  started with have gone (a tagged rack by the door) is left out of their pass and ignored until
  it departs; a pallet that stops in the doorway keeps its pass, its tags leave together. A
  group read for longer than `max_pass_s` was parked, not crossing: no pass. A tag whose strongest
  read stayed below `min_peak_rssi` never came through the door (a crate nearby, read now and
  then): it is left out of passes too.
- Grouping: a tag that starts counting within `join_gap_s` of the group's latest such start
  crosses with that group (the tags of one pallet come into range together); a group becomes
  a pass when every member departed or turned out to be static.
- Direction: for each side of the door, the power-weighted mean time at which the group was
  seen there (weight 10^(RSSI/10), so the strongest reads dominate). Antennas bleed (the inside
  antennas read a pallet still outside, weaker), so it is the order of these times, not which
  antenna read first, that gives the direction: outside then inside is inbound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.domain import Direction, PortalPass, TagEvidence, TagRead

# A tag read: (EPC hex, antenna id, peak RSSI in dBm or None, time in seconds, times seen).
# Linear power for each whole dBm from -128 to 0: 10 ** (rssi / 10).
_POWER = [10.0 ** (dbm / 10.0) for dbm in range(-128, 1)]
_NO_RSSI = 10.0 ** (-9.0)
# A clock that went back this far (s) is a clock step, not reads arriving late.
CLOCK_STEP_S = 300.0


@dataclass(frozen=True, slots=True)
class PortalSettings:
    """Parameters of one dock door."""

    door: str
    reader_id: str
    outside: frozenset[int]
    inside: frozenset[int]
    min_reads: int = 2
    window_s: float = 1.0
    depart_after_s: float = 1.5
    join_gap_s: float = 1.0
    static_after_s: float = 10.0
    min_separation_s: float = 0.05
    # A tag that never came this close (peak RSSI, dBm) did not go through the door: a tag
    # sitting nearby, read now and then. None: no such filter (readers without RSSI).
    min_peak_rssi: int | None = -66
    # A group read for longer than this was parked by the door, not crossing: no pass.
    max_pass_s: float = 120.0


class _Group:
    __slots__ = ("closed", "departed", "first", "last", "left_at", "live", "members")

    def __init__(self, t: float) -> None:
        self.first = t
        self.last = t
        self.live = 0  # members not yet departed
        self.members: list[_Tag] = []
        # Members that went quiet while others are still read: a read brings them back.
        self.departed: dict[str, _Tag] = {}
        self.left_at = float("-inf")  # when the last departed member was last read
        self.closed = False


class _Tag:
    __slots__ = (
        "antennas",
        "epc",
        "first",
        "group",
        "last",
        "n_window",
        "peak",
        "reads",
        "static",
        "w_in",
        "w_out",
        "window_start",
        "wt_in",
        "wt_out",
    )

    def __init__(self, epc: str, t: float) -> None:
        self.epc = epc
        self.first = t
        self.last = t
        self.reads = 0
        self.window_start = t
        self.n_window = 0
        self.group: _Group | None = None
        self.static = False
        self.antennas = 0  # bit mask
        self.peak: int | None = None
        # Sums of power and power * (t - first), per side of the door.
        self.w_out = 0.0
        self.wt_out = 0.0
        self.w_in = 0.0
        self.wt_in = 0.0


class PortalTracker:
    """Tracks the tags at one door and reports each pass when it is over."""

    def __init__(self, settings: PortalSettings) -> None:
        self.settings = settings
        self._tags: dict[str, _Tag] = {}
        self._groups: list[_Group] = []
        self.reads = 0
        self.static_tags = 0
        self.weak_tags = 0  # tags left out of passes: never read strongly enough
        self.parked_groups = 0
        self.one_sided_groups = 0

    @property
    def tracked(self) -> int:
        """Tags currently being tracked (bounded by what the antennas can see)."""
        return len(self._tags)

    def on_reads(self, reads: Iterable[TagRead]) -> list[PortalPass]:
        """Take a batch of reads (any order within the batch is fine)."""
        s = self.settings
        tags = self._tags
        outside, inside = s.outside, s.inside
        min_reads, window, depart = s.min_reads, s.window_s, s.depart_after_s
        power = _POWER
        passes: list[PortalPass] = []
        n = 0
        for epc, antenna, rssi, t, seen in reads:
            n += seen
            tag = tags.get(epc)
            if tag is None:
                tag = tags[epc] = self._revive(epc) or _Tag(epc, t)
            elif t - tag.last > depart and (tag.group is None or tag.group.live <= 1):
                # Gone and back before a tick noticed, and nothing else holds its group open:
                # close the old track first.
                passes.extend(self._depart(epc, tag))
                tag = tags[epc] = _Tag(epc, t)
            if t > tag.last:
                tag.last = t
            tag.reads += seen
            tag.antennas |= 1 << antenna
            if rssi is not None:
                w = power[rssi + 128] if -128 <= rssi <= 0 else _NO_RSSI
                if tag.peak is None or rssi > tag.peak:
                    tag.peak = rssi
            else:
                w = _NO_RSSI
            w *= seen
            if antenna in outside:
                tag.w_out += w
                tag.wt_out += w * (t - tag.first)
            elif antenna in inside:
                tag.w_in += w
                tag.wt_in += w * (t - tag.first)
            if tag.group is not None or tag.static:
                continue
            # Smoothing: count reads in a sliding window until the tag qualifies.
            if t - tag.window_start > window:
                tag.window_start = t
                tag.n_window = 0
            tag.n_window += seen
            if tag.n_window >= min_reads:
                self._join(tag, t)
        self.reads += n
        return passes

    def next_due(self) -> float | None:
        """When (gateway time, s) the next pass can complete if its tags are not read again:
        the last departure among the tags of a group still being read, the earliest such
        group first; None when no group is. Tags in no group (strays) need no such tick."""
        last_of: dict[int, float] = {}
        for tag in self._tags.values():
            if tag.group is not None:
                key = id(tag.group)
                last_of[key] = max(last_of.get(key, tag.last), tag.last)
        if not last_of:
            return None
        return min(last_of.values()) + self.settings.depart_after_s

    def on_tick(self, now: float) -> list[PortalPass]:
        """Advance time: departures, static tags, and the passes they complete."""
        s = self.settings
        passes: list[PortalPass] = []
        if self._tags and now < max(t.last for t in self._tags.values()) - CLOCK_STEP_S:
            # The clock stepped back minutes: what is tracked cannot be timed; let it go.
            now = float("inf")
        for epc, tag in list(self._tags.items()):
            if now - tag.last > s.depart_after_s:
                passes.extend(self._depart(epc, tag))
            elif not tag.static and tag.last - tag.first > s.static_after_s:
                tag.static = True
                self.static_tags += 1
        for group in list(self._groups):
            if now - group.first > s.max_pass_s:
                # Read for minutes: parked by the door, not crossing. No pass.
                self._abandon(group)
            else:
                passes.extend(self._close_if_done(group, now))
        return passes

    def _join(self, tag: _Tag, t: float) -> None:
        group = self._groups[-1] if self._groups else None
        if group is None or group.closed or t - group.last > self.settings.join_gap_s:
            group = _Group(t)
            self._groups.append(group)
        group.members.append(tag)
        group.live += 1
        if t > group.last:
            group.last = t  # the latest activation: a tag that activates later starts a new group
        tag.group = group

    def _depart(self, epc: str, tag: _Tag) -> list[PortalPass]:
        del self._tags[epc]
        group = tag.group
        if group is None:
            return []
        group.live -= 1
        group.departed[epc] = tag
        group.left_at = max(group.left_at, tag.last)
        return self._close_if_done(group, tag.last + self.settings.depart_after_s)

    def _revive(self, epc: str) -> _Tag | None:
        """A member of a pass still in progress is read again: same track, same pass."""
        for group in reversed(self._groups):
            tag = group.departed.pop(epc, None)
            if tag is not None:
                group.live += 1
                return tag
        return None

    def _abandon(self, group: _Group) -> None:
        group.closed = True
        self._groups.remove(group)
        for tag in group.members:
            tag.group = None
            tag.static = True
        self.parked_groups += 1

    def _close_if_done(self, group: _Group, now: float) -> list[PortalPass]:
        """A group is over when every member departed, or when those still read are static
        (read for longer than `static_after_s`) and the rest have gone: a tag that outlives
        the pallet it started with was sitting by the door. A pallet that stops in the
        doorway keeps its pass: its tags depart together when it moves on."""
        if group.closed:
            return []
        if group.live > 0:
            # Cheap tests first: this runs for every departure and every tick.
            if not group.departed or now - group.left_at <= self.settings.static_after_s:
                return []  # they may still leave with the others (a pallet stopped in the door)
            departed = group.departed
            lingering = [t for t in group.members if t.epc not in departed]
            if not all(t.static for t in lingering):
                return []
            members = [t for t in group.members if t.epc in departed]
            for tag in lingering:
                tag.group = None
            group.members = members
            group.live = 0
        group.closed = True
        self._groups.remove(group)
        members = group.members
        for tag in members:
            tag.group = None
        # A static tag seen from one side of the door only never went through it.
        members = [t for t in members if not t.static or (t.w_out > 0 and t.w_in > 0)]
        floor = self.settings.min_peak_rssi
        if floor is not None:
            near = [t for t in members if t.peak is None or t.peak >= floor]
            self.weak_tags += len(members) - len(near)
            members = near
        if not any(t.w_out > 0 and t.w_in > 0 for t in members):
            # Nothing in the group was seen from both sides of the door: it did not cross.
            self.one_sided_groups += 1
            return []
        return [self._pass(part) for part in _split_by_direction(members, self.settings)]

    def _pass(self, members: list[_Tag]) -> PortalPass:
        s = self.settings
        w_out = sum(t.w_out for t in members)
        w_in = sum(t.w_in for t in members)
        separation = 0.0
        direction = Direction.UNKNOWN
        if w_out > 0 and w_in > 0:
            t_out = sum(t.wt_out + t.w_out * t.first for t in members) / w_out
            t_in = sum(t.wt_in + t.w_in * t.first for t in members) / w_in
            separation = t_in - t_out
            if separation > s.min_separation_s:
                direction = Direction.INBOUND
            elif separation < -s.min_separation_s:
                direction = Direction.OUTBOUND
        evidence = tuple(
            sorted(
                (
                    TagEvidence(
                        epc=tag.epc,
                        reads=tag.reads,
                        antennas=tuple(a for a in range(65) if tag.antennas >> a & 1),
                        peak_rssi=tag.peak,
                        first_seen=tag.first,
                        last_seen=tag.last,
                    )
                    for tag in members
                ),
                key=lambda e: e.epc,
            )
        )
        return PortalPass(
            door=s.door,
            reader_id=s.reader_id,
            direction=direction,
            tags=evidence,
            started_at=min(t.first for t in members),
            ended_at=max(t.last for t in members),
            separation_s=round(separation, 4),
        )


def _side_time(tag: _Tag) -> float | None:
    """The tag's own outside-to-inside separation (s), when both sides saw it."""
    if tag.w_out <= 0 or tag.w_in <= 0:
        return None
    return tag.wt_in / tag.w_in - tag.wt_out / tag.w_out


def _split_by_direction(members: list[_Tag], settings: PortalSettings) -> list[list[_Tag]]:
    """Two pallets that crossed at the same moment in opposite directions are two passes.

    Each tag's own separation says which way it went; when a clear minority (three tags and
    two fifths or more) clearly went the other way, they are split off. Tags that do not tell go
    with the majority.
    """
    if not members:
        return []
    threshold = max(settings.min_separation_s, 0.5)
    seps = [_side_time(t) for t in members]
    inbound = [
        t for t, sep in zip(members, seps, strict=True) if sep is not None and sep > threshold
    ]
    outbound = [
        t for t, sep in zip(members, seps, strict=True) if sep is not None and sep < -threshold
    ]
    if min(len(inbound), len(outbound)) < max(3, 0.4 * len(members)):
        return [members]
    unknown = [
        t for t, sep in zip(members, seps, strict=True) if sep is None or abs(sep) <= threshold
    ]
    if len(inbound) >= len(outbound):
        inbound += unknown
    else:
        outbound += unknown
    return [inbound, outbound]
