"""Putaway and picking strategy: where a received pallet goes, and which pallet to pick first.

Pure: the site layout, the occupancy and recent movements come in; a choice and a one-line
reason come out.

Putaway (`choose_location`), for a pallet received at a dock door:

1. candidates are the rack and floor locations (never dock doors or staging lanes) in the zones
   the product may go to: the first zone rule that matches its GTIN or category decides; with
   none, every storage zone;
2. a candidate is full when the pallets there plus the pallets reserved for it by open tasks
   reach its capacity: it is skipped;
3. locations meant for the pallet's velocity class come first, then the neighbouring classes
   (an A pallet overflows into B before C, a C pallet into B before A, so slow pallets do not
   fill the slots by the doors);
4. within a class the location nearest (straight line) to the door where the pallet was
   received wins; equal distances go to the smallest location id.

Velocity (`classify_velocity`) is a Pareto (ABC) split of recent movements: A are the GTINs that
make the first ~80 % of moves, B the next ~15 %, C the rest, and a GTIN without moves is C.

Picking (`choose_fefo`): first expired, first out. The earliest expiry goes first, pallets
without an expiry date last, and expired pallets (expiry before today) are never picked: they
come back separately so that someone can deal with them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from gateway.domain import (
    STORAGE_KINDS,
    VELOCITY_CLASSES,
    SiteLayout,
    StorageLocation,
    VelocityClass,
)

# --- putaway -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occupancy:
    """Pallets per location: `stored` there now, and `reserved` by open tasks on their way there."""

    stored: Mapping[str, int] = field(default_factory=dict)
    reserved: Mapping[str, int] = field(default_factory=dict)

    def pallets(self, location: str) -> int:
        """Stored plus reserved: what counts against the location's capacity."""
        return self.stored.get(location, 0) + self.reserved.get(location, 0)


@dataclass(frozen=True, slots=True)
class Putaway:
    """The location chosen for a pallet, and why."""

    location: str
    zone: str
    velocity: VelocityClass  # the class the location is meant for
    distance_m: float  # from the door where the pallet was received
    free: int  # free pallet places there before this pallet
    reason: str


@dataclass(frozen=True, slots=True)
class NoLocation:
    """No location can take the pallet: `code` is unknown_door, no_allowed_location or all_full."""

    code: str
    reason: str


def choose_location(
    layout: SiteLayout,
    occupancy: Occupancy,
    *,
    door: str,
    velocity: VelocityClass,
    gtin: str | None = None,
    category: str | None = None,
) -> Putaway | NoLocation:
    """Where a pallet received at `door` goes (see the module docstring for the order)."""
    at = layout.door(door)
    if at is None:
        return NoLocation("unknown_door", f"door {door} is not on the site layout")
    zones = layout.allowed_zones(gtin, category)
    allowed = [loc for loc in layout.locations if loc.kind in STORAGE_KINDS and loc.zone in zones]
    if not allowed:
        return NoLocation(
            "no_allowed_location",
            f"no rack or floor location in the zones allowed ({_names(zones)})",
        )
    free = [loc for loc in allowed if occupancy.pallets(loc.location) < loc.capacity_pallets]
    if not free:
        return NoLocation(
            "all_full",
            f"all {len(allowed)} locations in the zones allowed ({_names(zones)}) are full, "
            "counting reservations",
        )
    own = VELOCITY_CLASSES.index(velocity)

    def rank(loc: StorageLocation) -> tuple[int, float, str]:
        gap = abs(VELOCITY_CLASSES.index(loc.velocity) - own)
        return (gap, math.hypot(loc.x - at.x, loc.y - at.y), loc.location)

    best = min(free, key=rank)
    distance = rank(best)[1]
    places = best.capacity_pallets - occupancy.pallets(best.location)
    where = (
        f"{best.location} in zone {best.zone}, {distance:.1f} m from door {door}, "
        f"{places} of {best.capacity_pallets} places free"
    )
    if best.velocity == velocity:
        reason = f"nearest free {velocity} location: {where}"
    else:
        reason = f"no free {velocity} location; nearest free {best.velocity} location: {where}"
    return Putaway(best.location, best.zone, best.velocity, distance, places, reason)


def _names(zones: Iterable[str]) -> str:
    return ", ".join(sorted(zones)) or "none"


# --- velocity ------------------------------------------------------------------------------------


def classify_velocity(
    moves: Iterable[tuple[str, dt.datetime]],
    now: dt.datetime,
    window: dt.timedelta,
    *,
    a_share: float = 0.80,
    b_share: float = 0.95,
) -> dict[str, VelocityClass]:
    """ABC classes of the GTINs moved in the `window` up to `now` (later moves are left out).

    GTINs are ranked by their number of moves. A GTIN is A while the moves of the GTINs ranked
    above it are under `a_share` of all moves (so the one that crosses the line is A too), B
    while under `b_share`, C after that. GTINs with the same number of moves share a class (the
    one of the first of them), so the split never depends on how GTINs are spelled. A GTIN
    missing from the result is C (see `velocity_of`).
    """
    since = now - window
    counts = Counter(gtin for gtin, at in moves if since < at <= now)
    total = sum(counts.values())
    classes: dict[str, VelocityClass] = {}
    before = 0
    for count in sorted(set(counts.values()), reverse=True):
        tied = [gtin for gtin, n in counts.items() if n == count]
        if before < a_share * total:
            cls: VelocityClass = "A"
        elif before < b_share * total:
            cls = "B"
        else:
            cls = "C"
        for gtin in sorted(tied):
            classes[gtin] = cls
        before += count * len(tied)
    return classes


def velocity_of(classes: Mapping[str, VelocityClass], gtin: str) -> VelocityClass:
    """The class of a GTIN; C when it has not moved in the window."""
    return classes.get(gtin, "C")


# --- FEFO ----------------------------------------------------------------------------------------


class StockPallet(NamedTuple):
    """A pallet in stock, as FEFO sees it."""

    sscc: str
    gtin: str
    lot: str | None
    expiry: dt.date | None
    location: str


@dataclass(frozen=True, slots=True)
class FefoPick:
    """Pallets of a GTIN in the order to pick them, and the expired ones never to pick."""

    pallets: tuple[StockPallet, ...]
    expired: tuple[StockPallet, ...]
    reason: str

    @property
    def first(self) -> StockPallet | None:
        """The pallet to pick now; None when none may be picked."""
        return self.pallets[0] if self.pallets else None


def choose_fefo(
    pallets: Iterable[tuple[str, str, str | None, dt.date | None, str]],
    gtin: str,
    today: dt.date,
) -> FefoPick:
    """First expired, first out: pallets of `gtin` by expiry, undated last, expired never.

    A pallet expiring today may still be picked (the same rule as receiving). Equal expiry
    dates go by lot, then SSCC. GTINs are compared as 14 digits.
    """
    wanted = gtin.zfill(14)
    mine = [StockPallet(*p) for p in pallets if p[1].zfill(14) == wanted]
    expired = sorted(
        (p for p in mine if p.expiry is not None and p.expiry < today),
        key=lambda p: (p.expiry, p.sscc),
    )
    usable = sorted(
        (p for p in mine if p.expiry is None or p.expiry >= today),
        key=lambda p: (p.expiry is None, p.expiry or dt.date.max, p.lot or "", p.sscc),
    )
    parts: list[str] = []
    if usable:
        first = usable[0]
        when = f"expires {first.expiry.isoformat()}" if first.expiry else "no expiry date"
        parts.append(
            f"{len(usable)} pallet(s) of {wanted}; first {first.sscc} at {first.location} "
            f"(lot {first.lot or '-'}, {when})"
        )
    else:
        parts.append(f"no pallet of {wanted} that may be picked")
    if expired:
        parts.append(
            f"{len(expired)} expired pallet(s) left out "
            f"(earliest expired {expired[0].expiry.isoformat() if expired[0].expiry else '?'})"
        )
    return FefoPick(tuple(usable), tuple(expired), "; ".join(parts))
