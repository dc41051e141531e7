"""The site plan putaway works from: dock doors, storage locations, zone rules.

Plain frozen values, checked when built (`ValueError` names what is wrong). The config's
`[agv.layout]` table validates into `SiteLayout` (pydantic reads these dataclasses' fields and
runs the checks), and the WMS's location records can override zone, kind and capacity.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from gateway.domain.refdata import Location

VelocityClass = Literal["A", "B", "C"]
VELOCITY_CLASSES: tuple[VelocityClass, ...] = ("A", "B", "C")
# Location kinds that hold stored pallets; dock doors and staging lanes are never a putaway.
STORAGE_KINDS = frozenset({"rack", "floor"})

_GTIN_PREFIX = re.compile(r"[0-9]{1,14}")
# Unknown keys in the config are errors, as everywhere in the config file.
_FORBID_EXTRA: dict[str, Any] = {"extra": "forbid"}


def _name(what: str, value: str) -> None:
    if not 1 <= len(value) <= 64:
        raise ValueError(f"{what} must have 1 to 64 characters, got {len(value)}")


def _metres(what: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of metres, got {value}")


@dataclass(frozen=True, slots=True)
class DockDoor:
    """A dock door and where it is on the site plan, in metres."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _FORBID_EXTRA

    door: str
    x: float
    y: float

    def __post_init__(self) -> None:
        _name("door", self.door)
        _metres("x", self.x)
        _metres("y", self.y)


@dataclass(frozen=True, slots=True)
class StorageLocation:
    """A location on the site plan: zone, the velocity class it is meant for, capacity, position."""

    __pydantic_config__: ClassVar[dict[str, Any]] = _FORBID_EXTRA

    location: str
    zone: str
    velocity: VelocityClass
    capacity_pallets: int
    x: float
    y: float
    kind: str = "rack"  # rack, floor, staging or dock_door, as in the WMS's location records

    def __post_init__(self) -> None:
        # The zone is not length-checked: the WMS's location master may override it with any
        # zone its schema allows (up to 200 characters), and a merge must not fail on that.
        _name("location", self.location)
        if not self.zone:
            raise ValueError("zone must not be empty")
        if self.capacity_pallets < 0:
            raise ValueError(f"capacity_pallets must be 0 or more, got {self.capacity_pallets}")
        _metres("x", self.x)
        _metres("y", self.y)


@dataclass(frozen=True, slots=True)
class ZoneRule:
    """Products of a category, or whose GTIN starts with a prefix, go only to `zones`.

    With both `category` and `gtin_prefix`, both must match. The prefix is compared with the
    GTIN written with 14 digits (a GTIN-13 gets a leading 0).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _FORBID_EXTRA

    zones: frozenset[str]
    category: str | None = None
    gtin_prefix: str | None = None

    def __post_init__(self) -> None:
        if not self.zones:
            raise ValueError("a zone rule needs at least one zone")
        for zone in self.zones:
            _name("zone", zone)
        if self.category is None and self.gtin_prefix is None:
            raise ValueError("a zone rule needs a category or a gtin_prefix")
        if self.gtin_prefix is not None and not _GTIN_PREFIX.fullmatch(self.gtin_prefix):
            raise ValueError(f"gtin_prefix must be 1 to 14 digits, got {self.gtin_prefix!r}")

    def matches(self, gtin: str | None, category: str | None) -> bool:
        """The rule applies to a product with this GTIN and category."""
        if self.category is not None and self.category != category:
            return False
        return self.gtin_prefix is None or (
            gtin is not None and gtin.zfill(14).startswith(self.gtin_prefix)
        )


@dataclass(frozen=True, slots=True)
class SiteLayout:
    """The site plan putaway works from; a `[layout]` table of the config file validates into it.

    Args:
        doors: the dock doors, with coordinates.
        locations: every location putaway may consider, with coordinates.
        zone_rules: checked in order; the first that matches a product decides its zones.
        storage_zones: the zones of a product no rule matches; all zones holding rack or floor
            locations when not given.
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = _FORBID_EXTRA

    doors: tuple[DockDoor, ...] = ()
    locations: tuple[StorageLocation, ...] = ()
    zone_rules: tuple[ZoneRule, ...] = ()
    storage_zones: frozenset[str] | None = None

    def __post_init__(self) -> None:
        for name, ids in (
            ("door", [d.door for d in self.doors]),
            ("location", [loc.location for loc in self.locations]),
        ):
            twice = sorted(k for k, n in Counter(ids).items() if n > 1)
            if twice:
                raise ValueError(f"{name} {twice[0]} is listed twice")

    def door(self, door: str) -> DockDoor | None:
        """The door with this id."""
        return next((d for d in self.doors if d.door == door), None)

    def allowed_zones(self, gtin: str | None = None, category: str | None = None) -> frozenset[str]:
        """The zones a product may be put away in."""
        for rule in self.zone_rules:
            if rule.matches(gtin, category):
                return rule.zones
        if self.storage_zones is not None:
            return self.storage_zones
        return frozenset(loc.zone for loc in self.locations if loc.kind in STORAGE_KINDS)

    def with_reference(self, records: Iterable[Location]) -> SiteLayout:
        """The layout with the WMS's word on zone, kind and capacity of the locations it knows.

        Records of locations the layout does not have are left out: without coordinates there
        is no distance to rank them by.
        """
        by_id = {r.location: r for r in records}
        merged = []
        for loc in self.locations:
            ref = by_id.get(loc.location)
            if ref is None:
                merged.append(loc)
                continue
            merged.append(
                dataclasses.replace(
                    loc,
                    zone=ref.zone if ref.zone is not None else loc.zone,
                    kind=ref.kind if ref.kind is not None else loc.kind,
                    capacity_pallets=(
                        ref.capacity_pallets
                        if ref.capacity_pallets is not None
                        else loc.capacity_pallets
                    ),
                )
            )
        return dataclasses.replace(self, locations=tuple(merged))
