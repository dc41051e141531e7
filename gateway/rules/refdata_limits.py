"""How many reference data records of each kind the gateway holds: a count limit per kind.

The WMS decides what it publishes; the gateway decides what it keeps. Past a kind's limit a
new record (a key not held) is not taken: not held by the rules, not stored. Records already
held may change, and deletions always pass, so the WMS can always make room. When the limit
first refuses a record an alarm says so, once: it is armed again only when the count has
dropped below `REARM_PERCENT` of the limit, so a WMS that keeps publishing into a full kind
raises one alarm, not one per message (the rules count each refusal as a rejection too,
aggregated by their `RejectionDigest`).

Records loaded at start count like the others: a limit lowered below what is stored keeps
what is stored and refuses new ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from gateway.domain import Notice, RefDataKind, Severity

REARM_PERCENT = 90
"""The alarm of a kind is armed again once its count is below this share of its limit."""


def rearm_below(limit: int) -> int:
    """The count below which the alarm of a kind with this limit is armed again."""
    return -(-limit * REARM_PERCENT // 100)


class RefDataLimits:
    """The count limit of each kind of reference data, and whether its alarm is armed.

    Args:
        max_count: the most records of each kind the gateway holds; a kind not given has no
            limit.
    """

    def __init__(self, max_count: Mapping[RefDataKind, int] | None = None) -> None:
        self.max_count: dict[RefDataKind, int] = dict(max_count or {})
        self._alarmed: set[RefDataKind] = set()
        self.refused = 0  # new records not taken, since the start

    def has_room(self, kind: RefDataKind, held: int) -> bool:
        """Whether a new record of `kind` may be taken while `held` are."""
        limit = self.max_count.get(kind)
        return limit is None or held < limit

    def refuse(self, kind: RefDataKind, key: str, held: int, at: dt.datetime) -> Notice | None:
        """A new record `key` refused for want of room: the alarm, if this kind's is armed."""
        self.refused += 1
        if kind in self._alarmed:
            return None
        self._alarmed.add(kind)
        limit = self.max_count[kind]
        return Notice(
            code="reference_data_limit",
            message=(
                f"{kind} limit reached: {held:,} held, the limit is {limit:,}; {kind} {key} "
                f"and any other new {kind} is not taken until the WMS deletes some "
                f"(this alarm again once fewer than {rearm_below(limit):,} are held)"
            ),
            at=at,
            severity=Severity.ERROR,
            details={"kind": kind.value, "key": key, "limit": limit, "held": held},
        )

    def counted(self, kind: RefDataKind, held: int) -> None:
        """`held` records of `kind` after a deletion: the alarm is armed again below the ratio."""
        limit = self.max_count.get(kind)
        if limit is not None and held < rearm_below(limit):
            self._alarmed.discard(kind)
