"""The rules engine: routes each event to the rule that owns it and collects the decisions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from gateway.domain import Decision, Event, TagReadBatch
from gateway.rules.moves import ForkliftMoves
from gateway.rules.portal import PortalTracker


class RulesEngine:
    """Pure: events with their timestamps in, decisions out; `on_tick` advances time.

    Args:
        moves: the forklift move rule (all scanners).
        portals: one tracker per RFID reader id.
    """

    def __init__(self, moves: ForkliftMoves, portals: Mapping[str, PortalTracker]) -> None:
        self.moves = moves
        self.portals = dict(portals)

    def on_event(self, event: Event) -> list[Decision]:
        """Decisions caused by one event."""
        if isinstance(event, TagReadBatch):
            portal = self.portals.get(event.reader_id)
            return list(portal.on_reads(event.reads)) if portal is not None else []
        return self.moves.on_event(event)

    def on_tick(self, now: dt.datetime) -> list[Decision]:
        """Decisions that time alone causes: timeouts, tags that departed."""
        decisions: list[Decision] = list(self.moves.on_tick(now))
        seconds = now.timestamp()
        for portal in self.portals.values():
            decisions.extend(portal.on_tick(seconds))
        return decisions
