"""Deterministic identities: a replay of the same input always carries the same id."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

# Every tx_id is a UUID v5 in this namespace, over a canonical form of what the transaction
# records, so that a replay of the same input carries the same id.
TX_NAMESPACE = uuid.UUID("6f0c1d2e-5a57-4c4e-9d0e-7761726568f1")


def deterministic_id(*parts: Any) -> str:
    """A UUID v5 over the canonical JSON of `parts`."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return str(uuid.uuid5(TX_NAMESPACE, canonical))


def utc_iso(at: dt.datetime) -> str:
    """`at` in UTC with microseconds: the form ids are computed over."""
    return at.astimezone(dt.UTC).isoformat(timespec="microseconds")
