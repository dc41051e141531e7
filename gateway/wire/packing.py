"""An open carton as stored (so that a restart finds it as the packer left it)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from gateway.domain import Item, OpenCarton, PackedItem

__all__ = ["carton_from_json", "carton_json"]


def carton_json(carton: OpenCarton) -> str:
    """The stored form of an open carton."""
    doc = {
        "carton": carton.carton,
        "order_id": carton.order_id,
        "station": carton.station,
        "opened_at": carton.opened_at.isoformat(),
        "items": [_item(p) for p in carton.items],
    }
    return json.dumps(doc, separators=(",", ":"))


def carton_from_json(text: str) -> OpenCarton:
    """An open carton from its stored form."""
    doc = json.loads(text)
    return OpenCarton(
        doc["carton"],
        doc["order_id"],
        doc["station"],
        dt.datetime.fromisoformat(doc["opened_at"]),
        tuple(
            PackedItem(
                Item(
                    key=i["key"],
                    gtin=i["gtin"],
                    serial=i["serial"],
                    lot=i["lot"],
                    expiry=None if i["expiry"] is None else dt.date.fromisoformat(i["expiry"]),
                ),
                int(i["line"]),
                dt.datetime.fromisoformat(i["at"]),
            )
            for i in doc["items"]
        ),
    )


def _item(packed: PackedItem) -> dict[str, Any]:
    item = packed.item
    return {
        "key": item.key,
        "gtin": item.gtin,
        "serial": item.serial,
        "lot": item.lot,
        "expiry": None if item.expiry is None else item.expiry.isoformat(),
        "line": packed.line,
        "at": packed.at.isoformat(),
    }
