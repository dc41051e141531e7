"""The JSON every payload is written in: compact UTF-8, RFC 3339 times in UTC with milliseconds."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

WIRE_VERSION = 1
"""The `version` field of every payload the gateway publishes."""


def iso(at: dt.datetime) -> str:
    """RFC 3339 timestamp in UTC with milliseconds."""
    return at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
