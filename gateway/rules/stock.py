"""Where each pallet is, as the gateway's own transactions say: receive, move, ship.

A projection, not the WMS's stock: it knows the pallets the gateway received, moved or was told
about at start (the app rebuilds it from stored transactions), and checks AGV drops against it.

Bounded: there is one entry per pallet in the building. A pallet enters on receive (or on a
move of a pallet the projection did not know) and leaves on ship, so the size follows the
building's capacity, not the number of transactions. Pallets that leave without a ship
transaction the gateway sees (scrapped, shipped through another system) would stay: `forget`
removes one on the WMS's word, and `max_pallets` is a hard cap above the building's capacity;
past it the pallet moved least recently is forgotten first, and `evicted` counts them. At start
the app gives it at most `max_pallets` stored locations, the most recently moved
(`agv.stock_max_pallets`), never the whole table.
"""

from __future__ import annotations

from collections.abc import Mapping

# Exception codes of a drop.
WRONG_LOCATION = "wrong_location"  # not at the task's destination
LOCATION_FULL = "location_full"  # other pallets already fill the location
UNKNOWN_PALLET = "unknown_pallet"  # the projection never saw this pallet


class StockProjection:
    """Pallet (SSCC) -> location and location -> pallets, kept by receive, move and ship.

    Args:
        pallets: where each pallet is at start (SSCC -> location), oldest move first.
        max_pallets: the hard cap (see the module docstring).
    """

    def __init__(
        self, pallets: Mapping[str, str] | None = None, *, max_pallets: int = 200_000
    ) -> None:
        if max_pallets < 1:
            raise ValueError(f"max_pallets must be at least 1, not {max_pallets}")
        self._max = max_pallets
        # Insertion order is the order of the last move: the first entry moved least recently.
        self._where: dict[str, str] = {}
        self._at: dict[str, set[str]] = {}
        self.evicted = 0
        for sscc, location in (pallets or {}).items():
            self._put(sscc, location)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, sscc: object) -> bool:
        return sscc in self._where

    def location_of(self, sscc: str) -> str | None:
        """Where the pallet is; None when unknown."""
        return self._where.get(sscc)

    def pallets_at(self, location: str) -> frozenset[str]:
        """The pallets at a location."""
        return frozenset(self._at.get(location, ()))

    def occupancy(self) -> dict[str, int]:
        """Pallets per location (locations with none are left out)."""
        return {location: len(pallets) for location, pallets in self._at.items()}

    def apply_receive(self, sscc: str, door: str) -> str | None:
        """A pallet received at a dock door is at the door; returns where it was before, if known."""
        return self._put(sscc, door)

    def apply_move(self, sscc: str, to: str) -> str | None:
        """A pallet moved to `to`; returns where it was before (None: an unknown pallet, now known)."""
        return self._put(sscc, to)

    def apply_ship(self, sscc: str) -> str | None:
        """A pallet shipped leaves the projection; returns where it was (None when unknown)."""
        return self.forget(sscc)

    def forget(self, sscc: str) -> str | None:
        """Remove a pallet (shipped, scrapped, or removed by the WMS); returns where it was."""
        location = self._where.pop(sscc, None)
        if location is not None:
            here = self._at[location]
            here.discard(sscc)
            if not here:
                del self._at[location]
        return location

    def check_drop(
        self, sscc: str, location: str, expected_destination: str | None, capacity: int | None
    ) -> list[str]:
        """Exception codes of a drop of `sscc` at `location`, checked before it is applied.

        `wrong_location` when the location is not the task's destination (None: no task, any
        location is right); `location_full` when other pallets there already reach `capacity`
        (None: no limit); `unknown_pallet` when the projection does not know the pallet. An
        empty list is a clean drop.
        """
        codes: list[str] = []
        if expected_destination is not None and location != expected_destination:
            codes.append(WRONG_LOCATION)
        if capacity is not None and len(self._at.get(location, set()) - {sscc}) >= capacity:
            codes.append(LOCATION_FULL)
        if sscc not in self._where:
            codes.append(UNKNOWN_PALLET)
        return codes

    def _put(self, sscc: str, location: str) -> str | None:
        before = self.forget(sscc)
        while len(self._where) >= self._max:
            self.forget(next(iter(self._where)))
            self.evicted += 1
        self._where[sscc] = location
        self._at.setdefault(location, set()).add(sscc)
        return before
