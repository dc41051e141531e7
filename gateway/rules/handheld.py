"""Handheld terminals' scans: each (terminal, seq) applied exactly once, in seq order.

A terminal numbers its scans from 1 and keeps each until it has a final result; after an
offline spell it sends its backlog, perhaps twice, perhaps batches out of order. Per terminal:

- a scan applied before is answered with the result it got then (`repeat`), nothing changes;
- a scan ahead of the next expected one waits (`held`) for those before it, at most
  `reorder_wait`; then the missing ones are reported (`handheld_gap`) and the waiting ones are
  applied. One of the missing arriving later is still applied, once;
- a scan older than what is remembered (the replay window) is `too_old`: whether it was applied
  cannot be told, so it is not applied again.

What a scan does is the caller's (`apply`: the rules engine sends a receive to the receiving
rule, a move to the forklift rule ...), with the scan's own time as the clock. Pure: the
results committed (`HandheldApplied`) are given back at start.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gateway.domain import (
    Decision,
    HandheldAnswer,
    HandheldApplied,
    HandheldBatch,
    HandheldCode,
    HandheldResult,
    HandheldScan,
    Notice,
    Purpose,
    Reply,
    Severity,
)

Apply = Callable[[str, HandheldScan], tuple[list[Decision], HandheldResult]]
"""Carries out one scan of a terminal: its decisions and its result."""


@dataclass(slots=True)
class _Terminal:
    next_seq: int = 1
    floor: int = 1  # seqs below this are no longer remembered
    applied: OrderedDict[int, HandheldResult] = field(default_factory=OrderedDict)
    held: dict[int, tuple[HandheldScan, dt.datetime]] = field(default_factory=dict)
    # The pallets this terminal's moves put somewhere since the start, by the seq that did it
    # (the last `MOVES_KEPT`): a late move of one of them, scanned before, changes nothing.
    moved: OrderedDict[str, int] = field(default_factory=OrderedDict)


MOVES_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class HandheldSettings:
    """How long a scan waits for those before it, how many results are remembered, and the
    reason codes damage and short reports may give."""

    reorder_wait: dt.timedelta = dt.timedelta(seconds=10)
    remembered_per_terminal: int = 100_000
    max_ahead: int = 10_000  # a scan further ahead of the next expected one is refused
    damage_reasons: frozenset[str] = frozenset()  # the reason codes a damage report may give
    short_reasons: frozenset[str] = frozenset()  # ... and a short report


class HandheldIntake:
    """Exactly once, in order, per terminal (see the module docstring).

    Args:
        settings: the reorder wait and the results remembered per terminal.
        applied: what was applied before the restart (terminal, result), oldest first.
    """

    def __init__(
        self,
        settings: HandheldSettings | None = None,
        *,
        applied: Iterable[tuple[str, HandheldResult]] = (),
        high_water: Mapping[str, int] | None = None,
    ) -> None:
        self.settings = settings or HandheldSettings()
        self._terminals: dict[str, _Terminal] = {}
        for terminal, result in applied:
            self._remember(self._terminal(terminal), result)
        # The highest seq each terminal ever had applied (kept when its results are pruned):
        # seqs up to it whose results are gone are `too_old`, never applied again.
        marks = dict(high_water or {})
        for terminal in marks:
            self._terminal(terminal)
        for terminal, state in self._terminals.items():
            mark = max(marks.get(terminal, 0), max(state.applied, default=0))
            # Those missing below the last applied are applied if they come, once.
            state.floor = min(state.applied, default=mark + 1)
            state.next_seq = mark + 1
        self.errors = 0  # scans the rules raised on (bugs): refused, the batch goes on

    def held(self) -> int:
        """Scans waiting for those before them."""
        return sum(len(t.held) for t in self._terminals.values())

    def on_batch(self, batch: HandheldBatch, apply: Apply) -> list[Decision]:
        """Apply what can be applied of a batch (and what it unblocks); answer each scan."""
        state = self._terminal(batch.terminal)
        out: list[Decision] = []
        results: dict[int, HandheldResult] = {}
        for scan in sorted(batch.scans, key=lambda s: s.seq):
            seq = scan.seq
            if seq in results:
                continue  # twice in one batch: answered once
            known = state.applied.get(seq)
            if known is not None:
                results[seq] = _repeat(known)
            elif seq < state.floor:
                results[seq] = HandheldResult(
                    seq, HandheldCode.TOO_OLD, "older than the scans the gateway remembers"
                )
            elif seq < state.next_seq:  # came after its gap was given up on
                pallet = _moved_pallet(scan)
                later = state.moved.get(pallet, 0) if pallet else 0
                if later > seq:  # a later scan of this terminal moved the pallet already
                    results[seq] = HandheldResult(
                        seq, HandheldCode.LATE_SCAN, f"scan {later} moved this pallet since"
                    )
                    out.append(HandheldApplied(batch.terminal, results[seq], scan.scanned_at))
                    self._remember(state, results[seq])
                else:  # applied now
                    results[seq] = self._apply(batch.terminal, state, scan, apply, out)
            elif seq - state.next_seq >= self.settings.max_ahead or (
                seq not in state.held and len(state.held) >= self.settings.max_ahead
            ):
                results[seq] = HandheldResult(
                    seq,
                    HandheldCode.REJECTED,
                    f"too far ahead of scan {state.next_seq}, the next expected",
                )
            else:
                state.held.setdefault(seq, (scan, batch.at))
        self._drain(batch.terminal, state, apply, out)
        for scan in batch.scans:
            seq = scan.seq
            if seq not in results:
                done = state.applied.get(seq)
                results[seq] = done if done is not None else HandheldResult(seq, HandheldCode.HELD)
        if batch.reply is not None:
            answer = HandheldAnswer(
                batch.terminal, tuple(results[s.seq] for s in _unique(batch.scans))
            )
            out.append(Reply(batch.reply, answer))
        return out

    def on_tick(self, now: dt.datetime, apply: Apply) -> list[Decision]:
        """Give up waiting for missing scans held past `reorder_wait`: report the gap, apply;
        every gap waited for long enough, one after the other."""
        out: list[Decision] = []
        for terminal, state in self._terminals.items():
            while state.held:
                first = min(state.held)
                if now - state.held[first][1] < self.settings.reorder_wait:
                    break
                out.append(
                    Notice(
                        code="handheld_gap",
                        message=(
                            f"terminal {terminal}: scans {state.next_seq} to {first - 1} never "
                            "came; the scans after them are applied"
                        ),
                        at=now,
                        severity=Severity.WARNING,
                        device_id=terminal,
                        details={
                            "terminal": terminal,
                            "missing_from": state.next_seq,
                            "missing_to": first - 1,
                        },
                    )
                )
                state.next_seq = first
                self._drain(terminal, state, apply, out)
        return out

    # --- internals ----------------------------------------------------------------------------

    def _drain(self, terminal: str, state: _Terminal, apply: Apply, out: list[Decision]) -> None:
        while True:
            if state.next_seq in state.applied:  # applied late, out of its turn
                state.next_seq += 1
                continue
            waiting = state.held.pop(state.next_seq, None)
            if waiting is None:
                return
            self._apply(terminal, state, waiting[0], apply, out)
            state.next_seq += 1

    def _apply(
        self,
        terminal: str,
        state: _Terminal,
        scan: HandheldScan,
        apply: Apply,
        out: list[Decision],
    ) -> HandheldResult:
        try:
            decisions, result = apply(terminal, scan)
        except Exception as err:  # noqa: BLE001 - a bug must not lose the batch's other scans
            self.errors += 1
            why = f"the rules could not handle it: {type(err).__name__}"
            decisions = [
                Notice(
                    code="rules_error",
                    message=f"terminal {terminal}, scan {scan.seq}: {why}; refused",
                    at=scan.scanned_at,
                    severity=Severity.ERROR,
                    device_id=terminal,
                    details={"terminal": terminal, "seq": scan.seq, "error": repr(err)[:300]},
                )
            ]
            result = HandheldResult(scan.seq, HandheldCode.REJECTED, why)
        out.extend(decisions)
        out.append(HandheldApplied(terminal, result, scan.scanned_at, scan.operator))
        self._remember(state, result)
        pallet = _moved_pallet(scan)
        if pallet is not None and result.result == HandheldCode.MOVED:
            state.moved[pallet] = max(state.moved.pop(pallet, 0), scan.seq)
            while len(state.moved) > MOVES_KEPT:
                state.moved.popitem(last=False)
        return result

    def _remember(self, state: _Terminal, result: HandheldResult) -> None:
        state.applied[result.seq] = result
        while len(state.applied) > self.settings.remembered_per_terminal:
            oldest, _ = state.applied.popitem(last=False)
            state.floor = max(state.floor, oldest + 1)

    def _terminal(self, terminal: str) -> _Terminal:
        state = self._terminals.get(terminal)
        if state is None:
            state = self._terminals[terminal] = _Terminal()
        return state


def _repeat(result: HandheldResult) -> HandheldResult:
    return HandheldResult(result.seq, result.result, result.detail, result.tx_id, repeat=True)


def _unique(scans: Iterable[HandheldScan]) -> list[HandheldScan]:
    seen: set[int] = set()
    out = []
    for scan in scans:
        if scan.seq not in seen:
            seen.add(scan.seq)
            out.append(scan)
    return out


def _moved_pallet(scan: HandheldScan) -> str | None:
    """The pallet a move scan moves (None: not a move, or no pallet label)."""
    if scan.purpose is not Purpose.MOVE:
        return None
    return getattr(scan.label, "sscc", None)
