"""`cmd/count`: the WMS opens and closes cycle counts (`count-command` schema)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from gateway.domain import CountCommand, CountOpened
from gateway.schemas import validator
from gateway.wire.jsondoc import InvalidDocument, load_valid, one_line

__all__ = [
    "MAX_COUNT_COMMAND_BYTES",
    "ParsedCount",
    "opened_from_json",
    "opened_json",
    "parse_count_command",
]

MAX_COUNT_COMMAND_BYTES = 512 * 1024
"""Room for 10,000 location names; a larger command is refused unread."""


@dataclass(frozen=True, slots=True)
class ParsedCount:
    """A count command, or why it is refused (with the count id when it could be read), and
    what a 3.1.1 request names for its answer."""

    command: CountCommand | str
    count_id: str = ""
    reply_to: str | None = None
    correlation: str | None = None


def parse_count_command(payload: bytes, at: dt.datetime) -> ParsedCount:
    """Check a count command against its schema."""
    try:
        doc = load_valid(payload, validator("count-command"), max_bytes=MAX_COUNT_COMMAND_BYTES)
    except InvalidDocument as err:
        named = _named(payload)
        return ParsedCount(one_line(str(err)), *named)
    locations = tuple(doc.get("locations", ()))
    command = CountCommand(
        count_id=doc["count_id"],
        open=doc["action"] == "open",
        at=at,
        locations=locations,
        zone=doc.get("zone"),
        aisle=doc.get("aisle"),
        timeout_s=doc.get("timeout_s"),
    )
    return ParsedCount(command, command.count_id, doc.get("reply_to"), doc.get("correlation"))


def _named(payload: bytes) -> tuple[str, str | None, str | None]:
    """The count id and 3.1.1 reply fields of a refused command, when they can be read: its
    answer still goes where it asked."""
    if len(payload) > MAX_COUNT_COMMAND_BYTES:
        return "", None, None
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return "", None, None
    if not isinstance(doc, dict):
        return "", None, None

    def text(name: str, limit: int) -> str | None:
        value = doc.get(name)
        return value[:limit] if isinstance(value, str) else None

    return text("count_id", 128) or "", text("reply_to", 256), text("correlation", 256)


def opened_json(opened: CountOpened) -> str:
    """An open count as stored (`count_open.body`)."""
    return json.dumps(
        {
            "locations": list(opened.locations),
            "opened_at": opened.opened_at.isoformat(),
            "deadline": opened.deadline.isoformat(),
            "source": opened.source,
        },
        sort_keys=True,
    )


def opened_from_json(count_id: str, body: str) -> CountOpened:
    """An open count as `opened_json` stored it."""
    doc = json.loads(body)
    return CountOpened(
        count_id,
        tuple(doc["locations"]),
        dt.datetime.fromisoformat(doc["opened_at"]),
        dt.datetime.fromisoformat(doc["deadline"]),
        doc["source"],
    )
