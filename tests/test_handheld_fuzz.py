"""#15: fuzzed handheld messages through the edge's decoder and the rules: nothing raises,
every batch refused is answered with its reason, every scan taken gets a result. The suite
runs 40,000 (four seeds of 10,000; jsonschema takes most of the time); #15's acceptance run
of 100,000: `HANDHELD_FUZZ_MESSAGES=100000 pytest tests/test_handheld_fuzz.py`."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import random
import re
from typing import Any

import pytest

from gateway.domain import (
    Asn,
    AsnLine,
    HandheldAnswer,
    Rejected,
    Reply,
    ReplyHandle,
)
from gateway.drivers.barcode import LabelRules
from gateway.rules.engine import RulesEngine
from gateway.rules.handheld import HandheldIntake
from gateway.rules.moves import ForkliftMoves, MoveSettings
from gateway.rules.receiving import DockRules
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.topics import Requester, Topics
from simulators.gs1 import corrupt_check_digit, sscc, sscc_label

pytestmark = [pytest.mark.slow(15), pytest.mark.timeout(180)]

MESSAGES = int(os.environ.get("HANDHELD_FUZZ_MESSAGES", "40000"))
PARTS = 4  # in four tests of a quarter each (own seeds), which the suite's workers share
PER_PART = MESSAGES // PARTS
TOPICS = Topics("DC1", "dock-1")
AT = dt.datetime(2026, 12, 7, 9, tzinfo=dt.UTC)
PALLETS = [sscc("0614141", 900 + n) for n in range(20)]


def valid_scan(rng: random.Random, seq: int) -> dict[str, Any]:
    purpose = rng.choice(["receive", "ship_check", "move"])
    scan: dict[str, Any] = {
        "seq": seq,
        "purpose": purpose,
        "scanned_at": (AT - dt.timedelta(seconds=seq)).isoformat(),
        "barcode": sscc_label(rng.choice(PALLETS)),
    }
    if purpose == "move":
        scan["location"] = f"A-{rng.randrange(1, 9):02d}-01"
    else:
        scan["door"] = "D03"
    return scan


GARBAGE: list[Any] = [
    None,
    True,
    -1,
    0,
    2**70,
    1.5,
    "",
    "x" * 600,
    "\x00",
    "é\u202e\ufffe",
    "]C1" + "9" * 40,
    "a/b/#",
    [],
    {},
    [1, 2],
    {"a": {"b": {"c": []}}},
    "2026-13-45T99:00:00",
    "2026-12-07T09:00:00",  # no offset
]


def junk(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(GARBAGE))


def mutate(doc: Any, rng: random.Random) -> Any:
    """One structural change somewhere in `doc`."""
    if isinstance(doc, dict) and doc and rng.random() < 0.8:
        key = rng.choice(list(doc))
        roll = rng.random()
        if roll < 0.2:
            doc.pop(key)
        elif roll < 0.6:
            doc[key] = junk(rng)
        elif roll < 0.7:
            doc["extra"] = junk(rng)
        else:
            doc[key] = mutate(doc[key], rng)
        return doc
    if isinstance(doc, list) and doc and rng.random() < 0.8:
        i = rng.randrange(len(doc))
        roll = rng.random()
        if roll < 0.3:
            doc[i] = mutate(doc[i], rng)
        elif roll < 0.5:
            doc.append(copy.deepcopy(doc[i]))  # a repeated seq
        elif roll < 0.6:
            doc.extend(copy.deepcopy([doc[i]] * 600))  # too many
        else:
            doc[i] = junk(rng)
        return doc
    return junk(rng)


def message(rng: random.Random, seq: int) -> bytes:
    scans = [valid_scan(rng, seq + i) for i in range(rng.randint(1, 5))]
    doc: dict[str, Any] = {"terminal": f"pda-{rng.randrange(5)}", "scans": scans}
    roll = rng.random()
    if roll < 0.15:  # valid, with a label that does not read
        scans[0]["barcode"] = rng.choice(
            ["]C1" + corrupt_check_digit(sscc_label(PALLETS[0]))[3:], "hello", "\x1d\x1d", "]Q3"]
        )
        return json.dumps(doc).encode()
    if roll < 0.25:
        return json.dumps(doc).encode()
    if roll < 0.75:
        for _ in range(rng.randint(1, 3)):
            doc = mutate(doc, rng)
        return json.dumps(doc).encode()
    raw = bytearray(json.dumps(doc).encode())
    if roll < 0.85 and raw:  # bytes flipped
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if roll < 0.95:  # cut short
        return bytes(raw[: rng.randrange(len(raw) + 1)])
    return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


@pytest.mark.parametrize("part", range(PARTS))
def test_fuzzed_batches_never_raise_and_each_refusal_says_why(part: int) -> None:
    rng = random.Random(1515 + part)
    routes = InboundRoutes(
        TOPICS, agv=False, vda5050_interface=None, handheld=LabelRules(re.compile(r"^A-\d\d-\d\d$"))
    )
    handles: list[ReplyHandle] = []

    def reply_to(
        _who: Requester, _topic: str, _corr: bytes | None, _echo: str | None
    ) -> ReplyHandle:
        handle = ReplyHandle(object())
        handles.append(handle)
        return handle

    dock = DockRules()
    dock.set_asn(
        Asn("ASN-F", "D03", tuple(AsnLine(n, 1, sscc=p) for n, p in enumerate(PALLETS, 1)))
    )
    engine = RulesEngine(ForkliftMoves(MoveSettings()), {}, dock=dock, handheld=HandheldIntake())
    refused = taken = results = 0
    for n in range(PER_PART):
        payload = message(rng, 1 + (n * 5) % 100_000)
        received = Received(TOPICS.handheld_scans, payload, False, AT, "handheld/x/a", b"c")
        event = routes.decode(received, reply_to)
        assert event is not None
        while (needed := engine.pallet_needed(event)) is not None:  # the runner's lookups
            engine.pallet_found(needed, None)  # nothing stored here
        decisions = engine.on_event(event)
        (reply,) = [d for d in decisions if isinstance(d, Reply)]
        assert isinstance(reply.answer, HandheldAnswer)
        if isinstance(event, Rejected):
            refused += 1
            assert reply.answer.error and reply.answer.results == ()
        else:
            taken += 1
            assert reply.answer.error is None
            assert [r.seq for r in reply.answer.results] == list(
                dict.fromkeys(s.seq for s in event.scans)
            )
            results += len(reply.answer.results)
        engine.on_tick(AT + dt.timedelta(seconds=n))
    assert refused > PER_PART // 3 and taken > PER_PART // 5, (refused, taken)
    assert results >= taken
