"""What an RFID dock-door portal sees: pallets crossing, stray tags, quiet spells; pure, seeded.

A `Scenario` is the script (data only): pallets that cross the door at given times in a given
direction, tags that sit near the door and never cross, periods when the reader reports
nothing, and a presence sensor on one of the reader's GPI ports going on and off. Its
`crossings` are the ground truth a test compares the gateway's passes with.

A `PortalRadio` is the physics the simulator samples reads from. The door plane is x = 0;
outside is x < 0. The outside antennas hang 0.5 m outside the door plane facing the yard, the
inside antennas 0.5 m inside facing the warehouse, spread across the door's width. A pallet
moves at constant speed from 3 m outside to 3 m inside (inbound) or back (outbound) over its
`duration_s`; each case tag sits somewhere on the pallet and some are shadowed by the goods.
Received signal strength falls with distance from the antenna (about -45 dBm when nearest,
-75 dBm at the edge of the read zone) plus gaussian fading noise per read, and an antenna hears
tags behind it too, 12 dB weaker: the bleed that makes direction a question of *when* each side
hears the tags best, not of *which* antenna heard them. The chance that an inventory round
singulates a tag falls steeply with RSSI. The reader shares one read budget over all the
(tag, antenna) pairs it can hear.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Literal, NamedTuple

from gateway.domain.epc import encode_grai96, encode_sgtin96, encode_sscc96

__all__ = [
    "Crossing",
    "Direction",
    "EmptyReports",
    "GpiChange",
    "Pallet",
    "PortalRadio",
    "Scenario",
    "StrayTag",
    "TagRead",
    "day_scenario",
]

Direction = Literal["inbound", "outbound"]

# Geometry of the portal, metres. The read zone runs from -_HALF_ZONE_M to +_HALF_ZONE_M.
_HALF_ZONE_M = 3.0
_ANTENNA_SETBACK_M = 0.5
_DOOR_HALF_WIDTH_M = 1.2
# Radio: RSSI = peak - falloff * (distance / reach)^2 - back lobe loss - shadowing.
_PEAK_DBM = -42.0
_FALLOFF_DB = 30.0
_REACH_M = 2.5
_FRONT_TO_BACK_DB = 12.0
_BACK_LOBE_EDGE_M = 0.15  # how sharply the pattern turns from front to back lobe
_SENSITIVITY_DBM = -84.0  # weaker than this, the reader cannot decode the tag at all
_HALF_READ_DBM = -72.0  # half of the inventory rounds singulate a tag this strong
_READ_SLOPE_DB = 2.5
_NOISE_DB = 2.0  # fading from one read to the next
_MAX_SHADOW_DB = 6.0
# How often a reader can read one tag on one antenna when nothing else competes (reads/s).
_READS_PER_TAG_ANTENNA_S = 60.0
# Sampling step of the motion model, scenario seconds.
_SLICE_S = 0.1


@dataclass(frozen=True, slots=True)
class Pallet:
    """A pallet of tagged cases crossing the door, starting at `start_s` (scenario seconds).

    `epcs` are the tags on it (cases and the pallet label), each different. It is in the read
    zone for `duration_s`, moving at constant speed from one side of the door to the other:
    "inbound" is outside -> inside (receiving), "outbound" inside -> outside (shipping).
    """

    epcs: Sequence[bytes]
    direction: Direction
    start_s: float
    duration_s: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epcs", tuple(self.epcs))
        if not self.epcs:
            raise ValueError("a pallet needs at least one tag")
        if len(set(self.epcs)) != len(self.epcs):
            raise ValueError("a pallet's EPCs must all be different")
        if self.direction not in ("inbound", "outbound"):
            raise ValueError(f"direction must be inbound or outbound, got {self.direction!r}")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("start_s must be >= 0 and duration_s > 0")

    @property
    def end_s(self) -> float:
        """When the pallet leaves the read zone (scenario seconds)."""
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class StrayTag:
    """A tag that sits near the door and never crosses, heard by `antennas` at about `rssi`."""

    epc: bytes
    antennas: Sequence[int]
    rssi: float = -72.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "antennas", tuple(self.antennas))


@dataclass(frozen=True, slots=True)
class EmptyReports:
    """A spell when the reader hears nothing and sends empty RO_ACCESS_REPORTs (interference)."""

    start_s: float
    duration_s: float

    def covers(self, t: float) -> bool:
        """Whether scenario time `t` falls in this spell."""
        return self.start_s <= t < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class GpiChange:
    """At `at_s`, GPI `port` of the reader goes on (high) or off: "gpi 1 on" at 2.5 s is
    `GpiChange(2.5, 1, True)`, a presence sensor at the door starting to see a pallet."""

    at_s: float
    port: int
    on: bool

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.port < 1:
            raise ValueError("a GPI change needs at_s >= 0 and a port from 1")


@dataclass(frozen=True, slots=True)
class Crossing:
    """Ground truth: these tags crossed `door` in `direction` between start_s and end_s."""

    door: str
    direction: Direction
    epcs: frozenset[bytes]
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """A script for one dock door.

    Times are scenario seconds from the moment the reader first starts inventorying.
    `time_scale` plays the script faster than real time: at 10, ten scenario seconds pass per
    wall-clock second (and the reader's clock, which stamps the reads, runs ten times fast).
    `seed` fixes where each tag sits and the reads sampled. `gpi` changes the reader's GPI
    ports at their times (a reader whose ROSpec is started and stopped by a GPI reads only
    in between).
    """

    pallets: Sequence[Pallet] = ()
    strays: Sequence[StrayTag] = ()
    empty_reports: Sequence[EmptyReports] = ()
    gpi: Sequence[GpiChange] = ()
    door: str = "dock-1"
    outside_antennas: Sequence[int] = (1, 2)
    inside_antennas: Sequence[int] = (3, 4)
    time_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "pallets",
            "strays",
            "empty_reports",
            "gpi",
            "outside_antennas",
            "inside_antennas",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale}")
        if set(self.outside_antennas) & set(self.inside_antennas):
            raise ValueError("an antenna cannot face both outside and inside")
        if not self.outside_antennas or not self.inside_antennas:
            raise ValueError("a portal needs antennas on both sides of the door")

    @property
    def crossings(self) -> tuple[Crossing, ...]:
        """Every scripted crossing, in order of start: the ground truth."""
        return tuple(
            Crossing(self.door, p.direction, frozenset(p.epcs), p.start_s, p.end_s)
            for p in sorted(self.pallets, key=lambda p: p.start_s)
        )

    @property
    def end_s(self) -> float:
        """When the last pallet has left the read zone (0 with no pallets)."""
        return max((p.end_s for p in self.pallets), default=0.0)


class TagRead(NamedTuple):
    """One singulation of a tag: `time_s` in scenario seconds, `rssi` in whole dBm."""

    epc: bytes
    antenna: int
    rssi: int
    time_s: float


@dataclass(frozen=True, slots=True)
class _Antenna:
    number: int
    x: float
    y: float
    facing: float  # +1: faces inside (x > 0), -1: faces outside


@dataclass(frozen=True, slots=True)
class _PlacedPallet:
    pallet: Pallet
    # (epc, offset along the direction of travel, lateral position, shadowing dB) per tag
    tags: tuple[tuple[bytes, float, float, float], ...] = field(default=())


def _read_probability(rssi: float) -> float:
    if rssi < _SENSITIVITY_DBM:
        return 0.0
    return 1.0 / (1.0 + math.exp(-(rssi - _HALF_READ_DBM) / _READ_SLOPE_DB))


def _spread(numbers: Sequence[int], x: float, facing: float) -> list[_Antenna]:
    n = len(numbers)
    return [
        _Antenna(
            num,
            x,
            0.0 if n == 1 else -_DOOR_HALF_WIDTH_M + 2 * _DOOR_HALF_WIDTH_M * i / (n - 1),
            facing,
        )
        for i, num in enumerate(numbers)
    ]


class PortalRadio:
    """Samples the reads a portal reader makes of a scenario; seeded, no I/O, no clock.

    Args:
        scenario: the script.
        seed: seeds the read sampling (the tags' positions come from `scenario.seed`).
    """

    def __init__(self, scenario: Scenario, *, seed: int | None = None) -> None:
        self._scenario = scenario
        self._antennas = _spread(scenario.outside_antennas, -_ANTENNA_SETBACK_M, -1.0) + _spread(
            scenario.inside_antennas, _ANTENNA_SETBACK_M, 1.0
        )
        layout = random.Random(scenario.seed)
        placed = []
        for pallet in sorted(scenario.pallets, key=lambda p: p.start_s):
            lateral = layout.uniform(-0.3, 0.3)
            tags = tuple(
                (
                    epc,
                    layout.uniform(-0.5, 0.5),
                    lateral + layout.uniform(-0.5, 0.5),
                    layout.uniform(0.0, _MAX_SHADOW_DB),
                )
                for epc in pallet.epcs
            )
            placed.append(_PlacedPallet(pallet, tags))
        self._pallets = tuple(placed)
        self._longest_s = max((p.duration_s for p in scenario.pallets), default=0.0)
        self._starts = [p.pallet.start_s for p in self._pallets]
        self._rng = random.Random(scenario.seed + 1 if seed is None else seed)

    @property
    def scenario(self) -> Scenario:
        """The script this radio plays."""
        return self._scenario

    def silent(self, t: float) -> bool:
        """Whether scenario time `t` is in an `EmptyReports` spell."""
        return any(spell.covers(t) for spell in self._scenario.empty_reports)

    def heard(self, t: float, antennas: Collection[int]) -> list[tuple[bytes, int, float]]:
        """Every (epc, antenna, mean RSSI dBm) the reader can decode at scenario time `t`."""
        return [(epc, ant, rssi) for epc, ant, rssi, _, _ in self._heard(t, antennas)]

    def _heard(
        self, t: float, antennas: Collection[int]
    ) -> list[tuple[bytes, int, float, float, float]]:
        # As `heard`, plus when the tag is in the read zone at all: (from, until).
        if self.silent(t):
            return []
        out: list[tuple[bytes, int, float, float, float]] = [
            (stray.epc, ant, stray.rssi, -math.inf, math.inf)
            for stray in self._scenario.strays
            for ant in stray.antennas
            if ant in antennas
        ]
        active = [a for a in self._antennas if a.number in antennas]
        for placed in self._active_pallets(t):
            pallet = placed.pallet
            progress = (t - pallet.start_s) / pallet.duration_s
            travel = 1.0 if pallet.direction == "inbound" else -1.0
            centre = travel * (-_HALF_ZONE_M + 2 * _HALF_ZONE_M * progress)
            for epc, along, lateral, shadow in placed.tags:
                x = centre + travel * along
                for ant in active:
                    dx, dy = x - ant.x, lateral - ant.y
                    rssi = _PEAK_DBM - _FALLOFF_DB * (dx * dx + dy * dy) / (_REACH_M * _REACH_M)
                    # Behind the antenna (dx against its facing) the back lobe is weaker.
                    rssi -= _FRONT_TO_BACK_DB / (
                        1.0 + math.exp(dx * ant.facing / _BACK_LOBE_EDGE_M)
                    )
                    rssi -= shadow
                    if rssi >= _SENSITIVITY_DBM:
                        out.append((epc, ant.number, rssi, pallet.start_s, pallet.end_s))
        return out

    def _active_pallets(self, t: float) -> list[_PlacedPallet]:
        # Pallets are sorted by start: only those that started at most the longest duration
        # before t can still be in the read zone.
        first = bisect.bisect_left(self._starts, t - self._longest_s)
        last = bisect.bisect_right(self._starts, t)
        return [p for p in self._pallets[first:last] if t <= p.pallet.end_s]

    def inventory(
        self, t0: float, t1: float, *, antennas: Collection[int], max_reads: int
    ) -> list[TagRead]:
        """The reads made between scenario times t0 and t1, at most `max_reads`, in time order.

        Each (tag, antenna) pair the reader hears asks for reads in proportion to its read
        probability; when all of them together ask for more than `max_reads`, every pair gets
        the same fraction of what it asked (the reader's air time is shared).
        """
        if t1 <= t0 or max_reads <= 0 or not antennas:
            return []
        slices = max(1, math.ceil((t1 - t0) / _SLICE_S))
        step = (t1 - t0) / slices
        # (earliest, latest read time, epc, antenna, mean RSSI, reads expected) per slice.
        wanted: list[tuple[float, float, bytes, int, float, float]] = []
        total = 0.0
        for k in range(slices):
            start = t0 + k * step
            for epc, ant, rssi, since, until in self._heard(start + step / 2, antennas):
                expected = _read_probability(rssi) * _READS_PER_TAG_ANTENNA_S * step
                if expected > 0.0:
                    earliest, latest = max(start, since), min(start + step, until)
                    wanted.append((earliest, latest - earliest, epc, ant, rssi, expected))
                    total += expected
        if not wanted:
            return []
        share = min(1.0, max_reads / total)
        rand, gauss = self._rng.random, self._rng.gauss
        reads: list[TagRead] = []
        for earliest, span, epc, ant, rssi, expected in wanted:
            mean = expected * share
            count = int(mean) + (rand() < mean - int(mean))
            for _ in range(count):
                heard = round(rssi + gauss(0.0, _NOISE_DB))
                reads.append(TagRead(epc, ant, min(heard, -20), earliest + rand() * span))
        if len(reads) > max_reads:
            reads = self._rng.sample(reads, max_reads)
        reads.sort(key=itemgetter(3))
        return reads


def _item_reference(rng: random.Random, digits: int) -> str:
    # The SGTIN item reference starts with the GTIN-14 indicator digit (1-8 for cases).
    return str(rng.randint(1, 8)) + "".join(str(rng.randrange(10)) for _ in range(digits - 1))


def day_scenario(
    pallets: int = 50,
    *,
    seed: int = 0,
    company_prefix: str = "0614141",
    time_scale: float = 1.0,
    door: str = "dock-1",
    strays: int = 4,
    cases: tuple[int, int] = (5, 40),
    duration_s: float = 3.0,
    gap_s: tuple[float, float] = (2.0, 6.0),
) -> Scenario:
    """A day at one dock door: trucks unloaded (runs of inbound pallets) and loaded (outbound).

    Each pallet carries `cases` (min, max) cases with SGTIN-96 tags from a small catalogue of
    products, plus its SSCC-96 pallet label tag; pallets follow each other with `gap_s` (min,
    max) seconds between them. Stray tags: a case left just inside the door, one just outside,
    a returnable crate (GRAI-96) between the two sides, a foreign tag with a 128-bit EPC, then
    more cases. Two of the gaps are quiet spells of empty reports. A day of 50 pallets lasts
    about 350 scenario seconds: `time_scale=12` plays it in about 30 s.
    """
    if pallets < 0 or strays < 0:
        raise ValueError("pallets and strays cannot be negative")
    if not 1 <= cases[0] <= cases[1]:
        raise ValueError(f"cases must be (min, max) with 1 <= min <= max, got {cases}")
    rng = random.Random(seed)
    item_digits = 13 - len(company_prefix)  # GTIN-14 without its check digit, less the prefix
    serial_ref_digits = 17 - len(company_prefix)  # SSCC without its check digit, less the prefix
    catalogue = [_item_reference(rng, item_digits) for _ in range(12)]
    serial = rng.randrange(1, 10**9)
    sscc_serial = rng.randrange(10 ** (serial_ref_digits - 1))

    def case_epc() -> bytes:
        nonlocal serial
        serial += 1
        return encode_sgtin96(company_prefix, rng.choice(catalogue), serial)

    scripted: list[Pallet] = []
    t = 2.0  # the first pallet rolls up shortly after the reader starts
    direction: Direction = rng.choice(("inbound", "outbound"))
    run_left = min(rng.randint(3, 8), max(1, pallets - 1))
    gaps: list[tuple[float, float]] = []
    for _ in range(pallets):
        sscc_serial = (sscc_serial + 1) % 10**serial_ref_digits
        label = encode_sscc96(company_prefix, f"{sscc_serial:0{serial_ref_digits}d}")
        epcs = [case_epc() for _ in range(rng.randint(*cases))] + [label]
        scripted.append(Pallet(epcs, direction, t, duration_s))
        gap = rng.uniform(*gap_s)
        gaps.append((t + duration_s, gap))
        t += duration_s + gap
        run_left -= 1
        if run_left == 0:  # the truck is done: the next one goes the other way
            direction = "outbound" if direction == "inbound" else "inbound"
            run_left = rng.randint(3, 8)

    quiet = [EmptyReports(end + 0.5, gap - 1.0) for end, gap in gaps[:-1] if gap >= 2.0]
    stray_tags: list[StrayTag] = []
    for i in range(strays):
        kind = i if i < 4 else 0
        if kind == 0:  # a case left on the floor just inside
            stray_tags.append(StrayTag(case_epc(), (3, 4), rng.uniform(-74.0, -70.0)))
        elif kind == 1:  # one left outside on the dock leveller
            stray_tags.append(StrayTag(case_epc(), (1,), rng.uniform(-76.0, -72.0)))
        elif kind == 2:  # a returnable crate in the door frame: both sides hear it, weakly
            crate = encode_grai96(
                company_prefix, "1" * (12 - len(company_prefix)), rng.randrange(1, 10**6)
            )
            stray_tags.append(StrayTag(crate, (2, 3), -76.0))
        else:  # a tag from another supply chain, 128-bit EPC with no GS1 header
            foreign = bytes([0xE2, 0x80, 0x11, 0x60]) + rng.randbytes(12)
            stray_tags.append(StrayTag(foreign, (4,), -73.0))
    return Scenario(
        pallets=scripted,
        strays=stray_tags,
        empty_reports=rng.sample(quiet, min(2, len(quiet))),
        door=door,
        time_scale=time_scale,
        seed=seed,
    )
