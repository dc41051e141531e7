"""Trucks at two dock doors for the demo: ASNs and ship orders, pallets, planted problems.

Inbound trucks unload at the receiving door against an ASN; outbound trucks load at the
shipping door against a ship order. Each truck plants one problem a receiving or shipping
clerk must see: an unexpected case, an expired lot, a short pallet, the wrong pallet.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

from gateway.domain.epc import decode_epc, encode_sgtin96, encode_sscc96
from simulators.llrp import Pallet

INBOUND_PROBLEMS = ("unexpected case", "expired lot", "short pallet", "none")
OUTBOUND_PROBLEMS = ("wrong pallet", "none")


@dataclass
class Truck:
    """One truck: its WMS document (ASN or ship order) and the pallets that cross the door."""

    reference: str
    door: str
    direction: str  # inbound or outbound
    document: dict[str, Any]
    pallets: list[Pallet] = field(default_factory=list)
    problem: str = "none"
    # What each pallet weighs on the receiving station's scale (gross kg, pallet included).
    weights_kg: list[float] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        """When its last pallet has crossed (scenario seconds)."""
        return max(p.end_s for p in self.pallets)


def _gtin(company_prefix: str, item: str) -> str:
    value = decode_epc(encode_sgtin96(company_prefix, item, 1)).gtin
    assert value is not None
    return value


def _sscc(epc: bytes) -> str:
    value = decode_epc(epc).sscc
    assert value is not None
    return value


# An empty pallet (the gateway's default `rules.dock.pallet_tare_kg`).
PALLET_TARE_KG = 25.0


def dock_day(
    trucks: int,
    *,
    receiving_door: str = "D03",
    shipping_door: str = "D05",
    company_prefix: str = "0614141",
    pallets_per_truck: int = 4,
    pallet_every_s: float = 6.0,
    truck_gap_s: float = 10.0,
    seed: int = 0,
    today: dt.date | None = None,
) -> tuple[list[Truck], list[dict[str, Any]]]:
    """`trucks` inbound and `trucks` outbound trucks, and the product master they need."""
    rng = random.Random(seed)
    today = today or dt.datetime.now(dt.UTC).date()
    cp = company_prefix
    items = ["012345", "023456", "034567"]
    unit_kg = {item: 2.0 + i for i, item in enumerate(items)}
    products = [
        {
            "gtin": _gtin(cp, item),
            "description": f"Case of product {item}",
            "min_remaining_shelf_life_days": 30,
            "unit_weight_kg": unit_kg[item],
        }
        for item in items
    ]
    out: list[Truck] = []
    serial = rng.randrange(10**6)
    for direction, door, problems in (
        ("inbound", receiving_door, INBOUND_PROBLEMS),
        ("outbound", shipping_door, OUTBOUND_PROBLEMS),
    ):
        t = 2.0
        for n in range(trucks):
            problem = problems[n % len(problems)]
            reference = f"{'ASN' if direction == 'inbound' else 'SO'}-{1000 + n}"
            truck = Truck(reference, door, direction, {}, problem=problem)
            lines: list[dict[str, Any]] = []
            order_pallets: list[str] = []
            for p in range(pallets_per_truck):
                item = rng.choice(items)
                pallet = encode_sscc96(cp, f"{7 if direction == 'inbound' else 8}{serial:09d}")
                cases = [
                    encode_sgtin96(cp, item, serial * 100 + i) for i in range(rng.randint(3, 6))
                ]
                serial += 1
                epcs = [pallet, *cases]
                listed = [c.hex().upper() for c in cases]
                wrong = direction == "outbound" and problem == "wrong pallet" and p == 1
                if direction == "inbound":
                    line: dict[str, Any] = {
                        "line": 2 * p + 2,
                        "epcs": listed,
                        "quantity": len(listed),
                    }
                    if problem == "unexpected case" and p == 0:
                        epcs.append(encode_sgtin96(cp, "099999", serial))
                    if problem == "expired lot" and p == 1:
                        line |= {"lot": "OLD", "expiry": (today - dt.timedelta(days=3)).isoformat()}
                    if problem == "short pallet" and p == 2:
                        extra = [
                            encode_sgtin96(cp, item, 9_000_000 + serial * 10 + i).hex().upper()
                            for i in range(2)
                        ]
                        line |= {"epcs": listed + extra, "quantity": len(listed) + 2}
                    lines += [{"line": 2 * p + 1, "sscc": _sscc(pallet), "quantity": 1}, line]
                elif not wrong:
                    order_pallets.append(_sscc(pallet))
                truck.pallets.append(Pallet(epcs, direction, t, 1.5))  # type: ignore[arg-type]
                # An unexpected case weighs what a case of a product it is not listed as does.
                truck.weights_kg.append(
                    PALLET_TARE_KG + len(cases) * unit_kg[item] + (len(epcs) - 1 - len(cases)) * 3.0
                )
                t += pallet_every_s
            if direction == "inbound":
                truck.document = {
                    "asn_id": reference,
                    "door": door,
                    "supplier": {"name": "ACME Foods"},
                    "lines": lines,
                }
            else:
                truck.document = {"order_id": reference, "door": door, "pallets": order_pallets}
            out.append(truck)
            t += truck_gap_s
    return out, products
