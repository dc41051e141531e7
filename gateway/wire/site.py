"""Other gateways' messages a gateway of the same site takes: their receive transactions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.domain import (
    Direction,
    DockKind,
    DockResult,
    DockTransaction,
    EvidenceSource,
    Item,
    ItemResult,
)
from gateway.schemas import validator
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line

__all__ = ["MAX_RECEIPT_BYTES", "parse_receipt"]

MAX_RECEIPT_BYTES = 4 * 1024 * 1024
"""A receipt of a pallet of a few thousand tagged items fits; a larger one is refused."""


def parse_receipt(payload: bytes) -> DockTransaction | str:
    """A `tx/receive` payload back as the transaction it renders, or why not (the schema, or an
    id that is not the transaction's own: a payload altered, or of another version)."""
    try:
        doc = load_valid(payload, validator("receive"), max_bytes=MAX_RECEIPT_BYTES)
    except InvalidDocument as err:
        return one_line(str(err))
    evidence = doc["evidence"]
    tx = DockTransaction(
        kind=DockKind.RECEIVE,
        door=doc["door"],
        reference=doc.get("asn_id"),
        items=tuple(_item(i) for i in doc["items"]),
        source=EvidenceSource(evidence["source"]),
        device=evidence["device"],
        evidence_id=evidence["evidence_id"],
        started_at=dt.datetime.fromisoformat(evidence["started_at"]),
        occurred_at=dt.datetime.fromisoformat(doc["occurred_at"]),
        direction=None if evidence.get("direction") is None else Direction(evidence["direction"]),
    )
    if tx.tx_id != doc["tx_id"]:
        return f"tx_id {doc['tx_id']} is not the id of what the payload says"
    return tx


def _item(doc: dict[str, Any]) -> ItemResult:
    expiry = doc.get("expiry")
    item = Item(
        key=doc.get("key") or "",
        epc=doc.get("epc"),
        uri=doc.get("uri"),
        gtin=doc.get("gtin"),
        serial=doc.get("serial"),
        sscc=doc.get("sscc"),
        lot=doc.get("lot"),
        expiry=None if expiry is None else dt.date.fromisoformat(expiry),
    )
    return ItemResult(item, DockResult(doc["result"]), doc.get("line"), doc.get("detail") or "")
