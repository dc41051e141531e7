"""Handheld terminals' messages: a batch of scans in, an answer per scan out.

The batch (`handheld-batch` schema) comes over MQTT (`gw/{site}/{gateway}/handheld/scans`,
request/response) or HTTP (`POST /handheld/scans`); its labels are decoded here, at the edge,
as a serial scanner's are (`gateway.drivers.barcode.decode_label`), so the rules see only
domain values. The answer (`handheld-answer` schema) gives each scan's result.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from gateway.domain import (
    HandheldAnswer,
    HandheldBatch,
    HandheldCode,
    HandheldResult,
    HandheldScan,
    Purpose,
    RejectedScan,
    Scan,
    decode_epc,
    epc_key,
)
from gateway.drivers.barcode import LabelRules, decode_label
from gateway.schemas import validator
from gateway.wire.codec import WIRE_VERSION
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line

__all__ = [
    "MAX_BATCH_BYTES",
    "BadBatch",
    "ParsedBatch",
    "answer_payload",
    "parse_batch",
    "result_from_json",
    "result_json",
]

MAX_BATCH_BYTES = 256 * 1024
"""A larger batch is refused unread (500 scans of long GS1 labels fit well below it)."""


@dataclass(frozen=True, slots=True)
class BadBatch:
    """A batch refused as a whole; `reason` says why (nothing of it is applied)."""

    reason: str
    terminal: str | None = None


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """A batch, or why it is refused; and what a 3.1.1 request names for its answer."""

    batch: HandheldBatch | BadBatch
    reply_to: str | None = None
    correlation: str | None = None


def parse_batch(payload: bytes, at: dt.datetime, labels: LabelRules) -> ParsedBatch:
    """Check a batch against its schema and decode its labels."""
    try:
        doc = load_valid(payload, validator("handheld-batch"), max_bytes=MAX_BATCH_BYTES)
    except InvalidDocument as err:
        return ParsedBatch(BadBatch(one_line(str(err)), _terminal_named(payload)))
    terminal = str(doc["terminal"])
    reply_to, correlation = doc.get("reply_to"), doc.get("correlation")
    scans = []
    for raw in doc["scans"]:
        scanned_at = dt.datetime.fromisoformat(raw["scanned_at"])
        why = _bad_time(scanned_at, at)
        if why is not None:
            reason = f"scan {raw['seq']}: scanned_at {why}"
            return ParsedBatch(BadBatch(reason, terminal), reply_to, correlation)
        scans.append(
            HandheldScan(
                seq=int(raw["seq"]),
                purpose=Purpose(raw["purpose"]),
                scanned_at=scanned_at,
                label=_label(raw["barcode"], terminal, scanned_at, labels),
                door=raw.get("door"),
                reference=raw.get("reference"),
                to=None
                if raw.get("location") is None
                else _label(raw["location"], terminal, scanned_at, labels),
                operator=raw.get("operator"),
                reason=raw.get("reason"),
                quantity=int(raw.get("quantity", 1)),
                line=raw.get("line"),
                station=raw.get("station"),
                tags=tuple(epc_key(decode_epc(epc), epc.upper()) for epc in raw.get("epcs", ())),
                count_id=raw.get("count_id"),
            )
        )
    return ParsedBatch(HandheldBatch(terminal, tuple(scans), at), reply_to, correlation)


MAX_AHEAD = dt.timedelta(minutes=5)
"""A scan stamped later than this after it arrived is refused (a terminal's clock gone wrong:
its time drives the rules' timers)."""
MAX_AGE = dt.timedelta(days=60)
"""A scan stamped longer ago than this is refused (no terminal keeps a backlog that long)."""


def _bad_time(scanned_at: dt.datetime, at: dt.datetime) -> str | None:
    """Why a scan's time cannot be used; None when it can."""
    if scanned_at.tzinfo is None:
        return "needs a UTC offset"
    try:
        utc = scanned_at.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        return "is out of range"
    if utc > at + MAX_AHEAD:
        return f"is more than {MAX_AHEAD} after the gateway's time (the terminal's clock?)"
    if utc < at - MAX_AGE:
        return f"is more than {MAX_AGE.days} days old"
    return None


def _label(text: str, terminal: str, at: dt.datetime, labels: LabelRules) -> Scan | RejectedScan:
    data = text.encode("latin-1", errors="replace")  # what a serial scanner's bytes would be
    return decode_label(data, device_id=terminal, at=at, rules=labels)


def _terminal_named(payload: bytes) -> str | None:
    """The terminal a refused batch names, if it can be read (for the answer)."""
    if len(payload) > MAX_BATCH_BYTES:
        return None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    terminal = doc.get("terminal") if isinstance(doc, dict) else None
    return terminal[:64] if isinstance(terminal, str) else None


def result_json(result: HandheldResult) -> dict[str, Any]:
    """One scan's result as answered (and stored)."""
    return {
        "seq": result.seq,
        "result": result.result,
        "final": result.result != HandheldCode.HELD,
        "repeat": result.repeat,
        "detail": result.detail,
        "tx_id": result.tx_id,
    }


def result_from_json(doc: dict[str, Any]) -> HandheldResult:
    """A stored result."""
    return HandheldResult(int(doc["seq"]), str(doc["result"]), doc.get("detail"), doc.get("tx_id"))


def answer_payload(answer: HandheldAnswer, correlation: str | None = None) -> dict[str, Any]:
    """The answer to a batch."""
    payload: dict[str, Any] = {
        "version": WIRE_VERSION,
        "ok": answer.error is None,
        "terminal": answer.terminal,
        "results": [result_json(r) for r in answer.results],
    }
    if answer.error is not None:
        payload["error"] = answer.error
    if correlation is not None:
        payload["correlation"] = correlation
    return payload
