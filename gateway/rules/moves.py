"""The forklift move: scan a pallet label (SSCC), then a location label, within a timeout.

Per scanner, the flow is a small state machine. Every transition lives in `ForkliftMoves.on_scan`
and is listed here:

| state              | input                       | decision                         | next state    |
|--------------------|-----------------------------|----------------------------------|---------------|
| any                | same code again within the repeat window | none (scanner double read) | unchanged |
| Idle               | pallet                      | none                             | Awaiting      |
| Idle               | location                    | notice `location_without_pallet` | Idle          |
| Awaiting(p)        | pallet p again              | none, timer restarts             | Awaiting(p)   |
| Awaiting(p)        | pallet q                    | notice `move_abandoned` for p    | Awaiting(q)   |
| Awaiting(p)        | location where p already is | notice `already_at_location`     | Idle          |
| Awaiting(p)        | location l                  | MoveTransaction p -> l           | Idle          |
| Awaiting(p)        | timeout passes              | notice `move_timeout`            | Idle          |
| any                | item label                  | notice `unexpected_label`        | unchanged     |
| any                | rejected scan               | notice `scan_rejected`           | unchanged     |

A scanner with a fixed location (a station) moves a pallet there as soon as its label is read.

Time a scanner was held does not count: a label that waited at the scanner while intake was
held carries when the hold began (`Scan.at`) and when it was read (`Scan.read_at`). A location
is compared with its pallet at `at`, and a pallet times out from `read_at`, so a pallet and
its location scanned within the timeout make one move whether the hold began or ended
between them.

Memory is bounded by configuration, not by history: the rule keeps the locations of the
`cached_pallets` pallets moved (or looked up) most recently, least recently used first out.
Storage holds every pallet's location; a scan whose pallet the cache lacks (`needs`) is looked
up there by the rules runner before the scan reaches the rule (`warm`), so the origin of a move
and the `already_at_location` check stay right for a pallet moved long ago.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain import (
    Decision,
    DeviceGap,
    MoveTransaction,
    Notice,
    RejectedScan,
    Scan,
    ScanEvent,
    ScanKind,
    Severity,
)


@dataclass(frozen=True, slots=True)
class MoveSettings:
    """How patient the move rule is, and how many pallet locations it keeps in memory."""

    timeout: dt.timedelta = dt.timedelta(seconds=60)
    repeat_window: dt.timedelta = dt.timedelta(seconds=2)
    cached_pallets: int = 50_000


@dataclass(frozen=True, slots=True)
class _Awaiting:
    sscc: str
    since: dt.datetime
    raw: str
    read_at: dt.datetime  # the timeout counts from here (later than `since` after a hold)


@dataclass(frozen=True, slots=True)
class _LastRead:
    code: str
    at: dt.datetime


class ForkliftMoves:
    """Turns pallet and location scans into validated move transactions.

    Args:
        settings: timeout, repeat window and cache size.
        pallet_locations: where pallets were last moved to, as recorded in storage, oldest move
            first; only the last `settings.cached_pallets` are kept.
        stations: scanners at a fixed location; a pallet scanned there is moved there.
    """

    def __init__(
        self,
        settings: MoveSettings,
        pallet_locations: Mapping[str, str] | None = None,
        stations: Mapping[str, str] | None = None,
    ) -> None:
        if settings.cached_pallets < 1:
            raise ValueError(f"cached_pallets must be at least 1, not {settings.cached_pallets}")
        self._settings = settings
        # SSCC -> location (None: known to be nowhere), least recently used first.
        self._locations: OrderedDict[str, str | None] = OrderedDict()
        self._stations = dict(stations or {})
        self._awaiting: dict[str, _Awaiting] = {}
        self._last: dict[str, _LastRead] = {}
        self.repeats_ignored = 0
        self.evicted = 0  # pallets dropped from the cache (still in storage)
        for sscc, location in (pallet_locations or {}).items():
            self._remember(sscc, location)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._locations)

    def location_of(self, sscc: str) -> str | None:
        """The pallet's last known location (None: unknown, or not in the cache)."""
        return self._locations.get(sscc)

    def knows(self, sscc: str) -> bool:
        """Whether the cache holds the pallet (its location, or that it has none)."""
        return sscc in self._locations

    def located(self, sscc: str, location: str | None) -> None:
        """Another rule moved the pallet (a receipt, an AGV); None: it left (shipped)."""
        self._remember(sscc, location)

    def needs(self, event: ScanEvent) -> str | None:
        """The pallet (SSCC) whose location `event` needs and the cache lacks, if any.

        A pallet label needs its own pallet (a station moves it at once; a forklift's location
        scan will); a location label needs the pallet its scanner is waiting with.
        """
        if isinstance(event, RejectedScan):
            return None
        sscc: str | None = None
        if event.kind is ScanKind.PALLET:
            sscc = event.sscc
        elif event.kind is ScanKind.LOCATION and (waiting := self._awaiting.get(event.device_id)):
            sscc = waiting.sscc
        return None if sscc is None or sscc in self._locations else sscc

    def warm(self, sscc: str, location: str | None) -> None:
        """Storage's answer for a pallet the cache lacked (None: storage has no location)."""
        if sscc not in self._locations:
            self._remember(sscc, location)

    def _remember(self, sscc: str, location: str | None) -> None:
        self._locations[sscc] = location
        self._locations.move_to_end(sscc)
        while len(self._locations) > self._settings.cached_pallets:
            self._locations.popitem(last=False)
            self.evicted += 1

    def on_gap(self, gap: DeviceGap) -> list[Decision]:
        """The scanner's stream was interrupted: a pallet it was waiting with is not paired with
        a location read after the gap (it may be another pallet's, scanned while the port was
        reopening); the forklift driver is told to scan the pallet again."""
        self._last.pop(gap.device_id, None)  # the same label again is a new scan, not a double
        waiting = self._awaiting.pop(gap.device_id, None)
        if waiting is None:
            return []
        return [
            Notice(
                code="move_interrupted",
                message=(
                    f"pallet {waiting.sscc} was scanned before the scanner's connection was "
                    f"interrupted ({gap.reason}): no move; scan the pallet again"
                ),
                at=gap.at,
                device_id=gap.device_id,
                details={"sscc": waiting.sscc, "raw": waiting.raw, "reason": gap.reason},
            )
        ]

    def on_event(self, event: ScanEvent) -> list[Decision]:
        """Handle one scan (its own timestamp is the clock)."""
        decisions = self.on_tick(event.at)
        if isinstance(event, RejectedScan):
            decisions.append(
                Notice(
                    code="scan_rejected",
                    message=event.reason,
                    at=event.at,
                    device_id=event.device_id,
                    details={"raw": event.raw, "reason": event.reason},
                )
            )
            return decisions
        decisions.extend(self._on_scan(event))
        return decisions

    def on_tick(self, now: dt.datetime) -> list[Decision]:
        """Advance the clock: pallets waiting longer than the timeout are dropped with a notice."""
        expired = [
            (device, waiting)
            for device, waiting in self._awaiting.items()
            if now - waiting.read_at > self._settings.timeout
        ]
        out: list[Decision] = []
        for device, waiting in expired:
            del self._awaiting[device]
            out.append(
                Notice(
                    code="move_timeout",
                    message=(
                        f"pallet {waiting.sscc} was scanned but no location followed within "
                        f"{self._settings.timeout.total_seconds():g} s"
                    ),
                    at=waiting.read_at + self._settings.timeout,
                    device_id=device,
                    details={"sscc": waiting.sscc},
                )
            )
        return out

    def _on_scan(self, scan: Scan) -> list[Decision]:
        device = scan.device_id
        last = self._last.get(device)
        self._last[device] = _LastRead(scan.code, scan.at)
        if (
            last is not None
            and last.code == scan.code
            and scan.at - last.at <= self._settings.repeat_window
        ):
            self.repeats_ignored += 1
            return []
        if scan.kind is ScanKind.PALLET and scan.sscc is not None:
            return self._on_pallet(scan, scan.sscc)
        if scan.kind is ScanKind.LOCATION and scan.location is not None:
            return self._on_location(scan, scan.location)
        return [
            Notice(
                code="unexpected_label",
                message="an item label was scanned; a move needs a pallet (SSCC) and a location",
                at=scan.at,
                device_id=device,
                details={"raw": scan.raw},
            )
        ]

    def _on_pallet(self, scan: Scan, sscc: str) -> list[Decision]:
        device = scan.device_id
        station = self._stations.get(device)
        if station is not None:
            return self._move(scan, sscc, station, scan.at)
        out: list[Decision] = []
        waiting = self._awaiting.get(device)
        if waiting is not None and waiting.sscc != sscc:
            out.append(
                Notice(
                    code="move_abandoned",
                    message=f"pallet {waiting.sscc} was not moved: pallet {sscc} scanned instead",
                    at=scan.at,
                    device_id=device,
                    details={"sscc": waiting.sscc, "next_sscc": sscc},
                )
            )
        self._awaiting[device] = _Awaiting(sscc, scan.at, scan.raw, scan.read_at or scan.at)
        return out

    def _on_location(self, scan: Scan, location: str) -> list[Decision]:
        waiting = self._awaiting.pop(scan.device_id, None)
        if waiting is None:
            return [
                Notice(
                    code="location_without_pallet",
                    message=f"location {location} scanned with no pallet: scan the pallet first",
                    at=scan.at,
                    device_id=scan.device_id,
                    location=location,
                    details={"raw": scan.raw},
                )
            ]
        return self._move(scan, waiting.sscc, location, waiting.since)

    def _move(
        self, scan: Scan, sscc: str, location: str, pallet_scanned_at: dt.datetime
    ) -> list[Decision]:
        origin = self._locations.get(sscc)
        if origin == location:
            self._locations.move_to_end(sscc)  # in the cache: it equals `location`
            return [
                Notice(
                    code="already_at_location",
                    message=f"pallet {sscc} is already at {location}: no move recorded",
                    at=scan.at,
                    severity=Severity.INFO,
                    device_id=scan.device_id,
                    location=location,
                    details={"sscc": sscc},
                )
            ]
        self._remember(sscc, location)
        return [
            MoveTransaction(
                sscc=sscc,
                from_location=origin,
                to_location=location,
                device_id=scan.device_id,
                pallet_scanned_at=pallet_scanned_at,
                confirmed_at=scan.at,
                exceptions=() if origin is not None else ("origin_unknown",),
            )
        ]
