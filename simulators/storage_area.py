"""A storage area of tagged pallets and cases, as the gateway recorded it and as it really is.

For cycle count tests and the demo: pallets (SSCC-96 tags) of tagged cases (SGTIN-96) in rack
locations. The gateway's record says each pallet is at its location with its cases; the floor
differs, from a seeded random generator: some pallets are gone (`missing`), some stand at
another location of the area (`misplaced`), a few pallets the gateway never received stand in
it (`strangers`), and a few cases were taken off their pallet and left at another location
(`loose_cases`). `tags_at(location)` is what an RFID sweep of a location reads; the ground
truth says what a count of the area must find.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gateway.domain import decode_epc, epc_key
from gateway.domain.epc import encode_sgtin96, encode_sscc96

__all__ = ["StorageArea"]

COMPANY_PREFIX = "0614141"


@dataclass
class StorageArea:
    """See the module docstring. Keys are the gateway's (`sscc:N`, `sgtin:GTIN.SERIAL`)."""

    locations: list[str]
    recorded: dict[str, str] = field(default_factory=dict)  # pallet key -> recorded location
    cases_of: dict[str, list[str]] = field(default_factory=dict)  # pallet key -> case keys
    floor: dict[str, list[str]] = field(default_factory=dict)  # location -> EPC hex there
    missing: set[str] = field(default_factory=set)  # pallet keys
    misplaced: dict[str, str] = field(default_factory=dict)  # pallet key -> where it stands
    strangers: dict[str, str] = field(default_factory=dict)  # pallet key -> where it stands
    loose_cases: dict[str, str] = field(default_factory=dict)  # case key -> where it lies

    @classmethod
    def generate(
        cls,
        *,
        locations: list[str],
        pallets: int,
        cases_per_pallet: int,
        missing: float,
        misplaced: float,
        strangers: int = 0,
        loose_cases: int = 0,
        seed: int = 0,
    ) -> StorageArea:
        """An area of `pallets` spread evenly over `locations`, with the given shares of pallets
        missing and misplaced (rounded), `strangers` unknown pallets and `loose_cases`."""
        rng = random.Random(seed)
        area = cls(list(locations))
        epcs: dict[str, str] = {}  # key -> EPC hex
        for n in range(pallets):
            pallet = _pallet(n)
            key = _key(pallet)
            epcs[key] = pallet
            area.recorded[key] = locations[n * len(locations) // pallets]
            cases = [_case(n * cases_per_pallet + c) for c in range(cases_per_pallet)]
            area.cases_of[key] = [_key(case) for case in cases]
            epcs.update((_key(case), case) for case in cases)
        keys = rng.sample(sorted(area.recorded), len(area.recorded))
        gone = round(pallets * missing)
        moved = round(pallets * misplaced)
        area.missing = set(keys[:gone])
        for key in keys[gone : gone + moved]:
            area.misplaced[key] = rng.choice([x for x in locations if x != area.recorded[key]])
        for n in range(strangers):
            pallet = _pallet(pallets + n)
            epcs[_key(pallet)] = pallet
            area.strangers[_key(pallet)] = rng.choice(locations)
        standing = keys[gone:]
        for key in rng.sample(standing, loose_cases):
            case = area.cases_of[key][0]
            away = {area.recorded[key], area.misplaced.get(key, area.recorded[key])}
            area.loose_cases[case] = rng.choice([x for x in locations if x not in away])
        area.floor = {location: [] for location in locations}
        for key, recorded in area.recorded.items():
            if key in area.missing:
                continue
            where = area.misplaced.get(key, recorded)
            area.floor[where].append(epcs[key])
            for case in area.cases_of[key]:
                area.floor[area.loose_cases.get(case, where)].append(epcs[case])
        for key, where in area.strangers.items():
            area.floor[where].append(epcs[key])
        for tags in area.floor.values():
            rng.shuffle(tags)
        return area

    def tags_at(self, location: str) -> list[str]:
        """What an RFID sweep of `location` reads (EPC hex)."""
        return list(self.floor[location])

    def recorded_cases(self) -> dict[str, str]:
        """Case key -> the pallet key it was received on."""
        return {case: pallet for pallet, cases in self.cases_of.items() for case in cases}

    def truth(self) -> dict[str, set[str]]:
        """What a count of the whole area must find, by set: pallets and items found, missing,
        unexpected (strangers; loose cases are where their pallet is not) and moved."""
        loose = self.loose_cases
        pallets_missing = set(self.missing)
        cases_missing = {c for p in pallets_missing for c in self.cases_of[p]}
        standing = set(self.recorded) - pallets_missing
        cases_moved = {
            c for p in standing for c in self.cases_of[p] if p in self.misplaced and c not in loose
        } | set(loose)
        cases_found = {c for p in standing for c in self.cases_of[p]} - cases_moved
        return {
            "pallets_found": standing - set(self.misplaced),
            "pallets_missing": pallets_missing,
            "pallets_unexpected": set(self.strangers),
            "pallets_moved": set(self.misplaced),
            "items_found": cases_found,
            "items_missing": cases_missing,
            "items_unexpected": set(),
            "items_moved": cases_moved,
        }


def _pallet(n: int) -> str:
    return encode_sscc96(COMPANY_PREFIX, f"3{n:09d}").hex().upper()


def _case(n: int) -> str:
    return encode_sgtin96(COMPANY_PREFIX, "012345", 100_000 + n).hex().upper()


def _key(epc: str) -> str:
    return epc_key(decode_epc(epc), epc)
