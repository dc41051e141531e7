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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.domain import (
    Decision,
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
    """How patient the move rule is."""

    timeout: dt.timedelta = dt.timedelta(seconds=60)
    repeat_window: dt.timedelta = dt.timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class _Awaiting:
    sscc: str
    since: dt.datetime
    raw: str


@dataclass(frozen=True, slots=True)
class _LastRead:
    code: str
    at: dt.datetime


class ForkliftMoves:
    """Turns pallet and location scans into validated move transactions.

    Args:
        settings: timeout and repeat window.
        pallet_locations: where each pallet was last moved to, as recorded in storage.
        stations: scanners at a fixed location; a pallet scanned there is moved there.
    """

    def __init__(
        self,
        settings: MoveSettings,
        pallet_locations: Mapping[str, str] | None = None,
        stations: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._locations: dict[str, str] = dict(pallet_locations or {})
        self._stations = dict(stations or {})
        self._awaiting: dict[str, _Awaiting] = {}
        self._last: dict[str, _LastRead] = {}
        self.repeats_ignored = 0

    def location_of(self, sscc: str) -> str | None:
        """The pallet's last known location."""
        return self._locations.get(sscc)

    def located(self, sscc: str, location: str | None) -> None:
        """Another rule moved the pallet (a receipt, an AGV); None: it left (shipped)."""
        if location is None:
            self._locations.pop(sscc, None)
        else:
            self._locations[sscc] = location

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
            if now - waiting.since > self._settings.timeout
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
                    at=waiting.since + self._settings.timeout,
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
        self._awaiting[device] = _Awaiting(sscc, scan.at, scan.raw)
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
        self._locations[sscc] = location
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
