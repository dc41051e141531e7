"""Rejected input, counted per source and reason instead of one event per message.

A robot that sends invalid state at 10 Hz, or an attacker flooding a WMS topic, must not
turn every message into an outbox row, an event and a log line. The first rejection of a
(kind, source, reason) is reported at once, with its example; the ones that follow within
`window` are counted, and one summary at the end of the window reports how many there were,
with the first and the last example. While a source keeps sending the same bad input, that is
one event per window; once it has been quiet for a whole window, the next one is reported at
once again. At most `max_keys` (kind, source, reason) are tracked; beyond them, rejections of
the same kind are counted together under "other sources or reasons", so that a flood of
distinct topics or reasons is bounded too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.domain import InputKind, Notice, Rejected, Severity

EXAMPLE_CHARS = 120
"""Subjects (topics) and reasons are shortened to this in the events."""

REASON_CHARS = 300

OTHER = "other sources or reasons"


@dataclass(slots=True)
class _Tally:
    """Rejections of one key within the current window."""

    opened: dt.datetime
    first: str
    last: str
    first_at: dt.datetime
    last_at: dt.datetime
    count: int = 0  # after the one reported when the window opened


@dataclass(frozen=True, slots=True)
class _Key:
    kind: InputKind
    source: str
    reason: str


class RejectionDigest:
    """Aggregates `Rejected` inputs into few events (see the module docstring).

    Args:
        codes: the event code for each input kind, and the name of its subject.
        window: how long rejections of one key are counted before their summary.
        max_keys: how many (kind, source, reason) are tracked at once.
    """

    def __init__(
        self,
        codes: dict[InputKind, tuple[str, str]],
        *,
        window: dt.timedelta = dt.timedelta(seconds=60),
        max_keys: int = 32,
    ) -> None:
        self._codes = codes
        self._window = window
        self._max_keys = max_keys
        self._tallies: dict[_Key, _Tally] = {}
        self.rejected = 0  # every rejection, reported or counted

    def on_rejected(self, event: Rejected, at: dt.datetime) -> Notice | None:
        """The event for this rejection, or None when it is counted into a summary."""
        self.rejected += 1
        subject = event.subject[:EXAMPLE_CHARS]
        source = (event.source or event.subject)[:EXAMPLE_CHARS]
        key = _Key(event.kind, source, event.reason[:REASON_CHARS])
        if key not in self._tallies and len(self._tallies) >= self._max_keys:
            key = _Key(event.kind, OTHER, OTHER)
        tally = self._tallies.get(key)
        if tally is not None:
            if tally.count == 0:
                tally.first, tally.first_at = subject, at
            tally.count += 1
            tally.last, tally.last_at = subject, at
            return None
        self._tallies[key] = _Tally(opened=at, first=subject, last=subject, first_at=at, last_at=at)
        code, subject_name = self._codes[event.kind]
        where = f"agv/{subject}" if event.kind == InputKind.AGV_REQUEST else subject
        return Notice(
            code=code,
            message=f"{where}: {key.reason}",
            at=at,
            severity=Severity.WARNING,
            details={subject_name: subject, "reason": key.reason, "source": key.source},
        )

    def on_tick(self, now: dt.datetime) -> list[Notice]:
        """Summaries of the windows that ended: how many more, first and last example."""
        out: list[Notice] = []
        for key, tally in list(self._tallies.items()):
            if now - tally.opened < self._window:
                continue
            if tally.count == 0:  # quiet for a whole window: the next one is reported at once
                del self._tallies[key]
                continue
            out.append(self._summary(key, tally, now))
            tally.opened, tally.count = now, 0
        return out

    def _summary(self, key: _Key, tally: _Tally, now: dt.datetime) -> Notice:
        code, _subject_name = self._codes[key.kind]
        seconds = round((now - tally.opened).total_seconds())
        return Notice(
            code=code,
            message=(
                f"{tally.count} more rejected in {seconds} s from {key.source}: {key.reason} "
                f"(last: {tally.last})"
            ),
            at=now,
            severity=Severity.WARNING,
            details={
                "source": key.source,
                "reason": key.reason,
                "count": tally.count,
                "first": tally.first,
                "last": tally.last,
                "first_at": tally.first_at.isoformat(),
                "last_at": tally.last_at.isoformat(),
            },
        )
