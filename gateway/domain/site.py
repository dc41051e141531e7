"""A site of several gateways: where the others have each pallet, from their retained state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.domain.transactions import DockTransaction


@dataclass(frozen=True, slots=True)
class SiteLocationState:
    """Another gateway's `state/location/{location}`: the pallets it has there, each with
    since when (epoch s, the event time of its transaction; 0: not said). No pallets: it has
    none there any more."""

    gateway: str
    location: str
    pallets: tuple[tuple[str, float], ...]
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class PalletElsewhere:
    """Another gateway put a pallet at `location` later than this gateway last did anything
    with it: it is there now. `held_here`: this gateway had it recorded (the record goes)."""

    sscc: str
    location: str
    since: float
    gateway: str
    held_here: bool


@dataclass(frozen=True, slots=True)
class SiteReceipt:
    """Another gateway's receive transaction (its `tx/receive`), for the site's task board to
    put its pallets away; `tx.tx_id` is the id it was published with."""

    gateway: str
    tx: DockTransaction
    at: dt.datetime
