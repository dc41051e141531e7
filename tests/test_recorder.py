"""The recorder: one batch of decisions becomes one commit, then the answers go out."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from gateway.domain import (
    AnswerResult,
    CloseAnswer,
    DockKind,
    DockResult,
    DockTransaction,
    EvidenceSource,
    Item,
    ItemResult,
    MoveTransaction,
    Reply,
    ReplyHandle,
    TaskAnswer,
)
from gateway.domain.epc import decode_epc, encode_sgtin96, encode_sscc96
from gateway.drivers.base import AlarmOutputs
from gateway.recorder import Recorder
from gateway.storage import OutboxMessage, PendingMessage, Store
from gateway.wire import epcis
from gateway.wire.epcis import EpcisSettings
from gateway.wire.topics import Topics

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
TOPICS = Topics("DC1", "gw1")
SITE = EpcisSettings(
    read_point_base="urn:epc:id:sgln:0614141.00001",
    biz_location_base="urn:epc:id:sgln:0614141.00001",
)


def move(to: str) -> MoveTransaction:
    return MoveTransaction("306141411234567892", "D03", to, "fl-07", T0, T0)


RAW_TAG_RECEIPT = DockTransaction(
    kind=DockKind.RECEIVE,
    door="D03",
    reference=None,
    items=(
        ItemResult(
            # A GTIN whose check digit is wrong: the receipt stands, EPCIS cannot say it.
            Item(key="gtin:80614141123459", gtin="80614141123459"),
            DockResult.ACCEPTED,
        ),
    ),
    source=EvidenceSource.PORTAL,
    device="d03-reader",
    evidence_id="pass-9",
    started_at=T0,
    occurred_at=T0,
)


class Answers:
    """Stands in for the bridge: records what it was asked to send, and the outbox then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sent: list[tuple[ReplyHandle, TaskAnswer | CloseAnswer, int]] = []

    def reply(self, to: ReplyHandle, answer: object) -> None:
        self.sent.append((to, answer, self.store.depth))

    def publish_debug(self, topic: str, payload: bytes) -> None:
        raise AssertionError("no debug output was asked for")


async def test_a_transaction_with_no_epcis_event_says_why_in_the_next_commit(
    tmp_path: Path,
) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        recorder = Recorder(
            topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs(), epcis_settings=SITE
        )
        await recorder.record([RAW_TAG_RECEIPT])
        await recorder.record([])
        rows = await store.pending()
    topics = [row.topic for row in rows]
    assert topics == ["gw/DC1/gw1/tx/receive", "gw/DC1/gw1/event"]
    event = json.loads(rows[1].payload)
    assert event["code"] == "epcis_failed"
    assert event["details"]["tx_id"] == RAW_TAG_RECEIPT.tx_id


async def test_answers_go_out_only_after_their_batch_is_committed(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db") as store:
        recorder = Recorder(topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs())
        answers = Answers(store)
        recorder.publisher = answers
        handle = ReplyHandle("opaque")
        answer = TaskAnswer(True, AnswerResult.NONE, "", "no task queued")
        await recorder.record([move("B-01"), Reply(handle, answer)])
    assert answers.sent == [(handle, answer, 1)]  # the move was in the outbox already


async def test_a_stop_commits_a_batch_waiting_for_room_beyond_the_limit(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "gw.db", max_rows=10) as store:
        recorder = Recorder(topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs())
        await store.commit([OutboxMessage(f"old-{n}", "gw/DC1/gw1/old", b"{}") for n in range(10)])
        waiting = asyncio.create_task(recorder.record([move("B-01"), move("B-02")]))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # intake held: the outbox is full
        recorder.stop_holding()
        await asyncio.wait_for(waiting, 1)
        assert store.depth == 12 and recorder.beyond_limit == 2
        rows = await store.pending()
    assert [json.loads(r.payload)["to_location"] for r in rows[-2:]] == ["B-01", "B-02"]


async def test_a_prefix_a_tag_showed_gives_the_pallets_uri_in_every_event_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GS1's table has no length for this number (stood in for); the tag's partition says 9.
    monkeypatch.setattr(epcis, "_table_prefix_length", lambda _key: None)
    tag = encode_sscc96("061414123", "34567890").hex().upper()
    sscc = decode_epc(tag).sscc
    assert sscc is not None
    receipt = DockTransaction(
        kind=DockKind.RECEIVE,
        door="D03",
        reference=None,
        items=(ItemResult(Item(key=f"epc:{tag}", epc=tag), DockResult.ACCEPTED),),
        source=EvidenceSource.PORTAL,
        device="d03-reader",
        evidence_id="pass-1",
        started_at=T0,
        occurred_at=T0,
    )
    putaway = MoveTransaction(sscc, "D03", "A-01-01", "agv-1", T0, T0)

    def epc_lists(rows: list[PendingMessage]) -> list[list[str]]:
        docs = [json.loads(r.payload) for r in rows if r.topic.endswith("/epcis")]
        return [e["epcList"] for d in docs for e in d["epcisBody"]["eventList"]]

    async with await Store.open(tmp_path / "gw.db") as store:
        recorder = Recorder(
            topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs(), epcis_settings=SITE
        )
        await recorder.record([receipt])
        await recorder.record([putaway])
        first = epc_lists(await store.pending())
    async with await Store.open(tmp_path / "gw.db") as store:  # a restart: memory is gone
        recorder = Recorder(
            topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs(), epcis_settings=SITE
        )
        await recorder.record([dataclasses.replace(putaway, to_location="B-02-02")])
        after = epc_lists(await store.pending())
    uri = "urn:epc:id:sscc:061414123.34567890"
    assert first == [[uri], [uri]]
    assert after[-1] == [uri]


async def test_cases_received_on_one_pallet_are_where_the_pallet_is_until_it_ships(
    tmp_path: Path,
) -> None:
    def tag_item(tag: str) -> ItemResult:
        epc = decode_epc(tag)
        key = f"sscc:{epc.sscc}" if epc.sscc else f"sgtin:{epc.gtin}.{epc.serial}"
        item = Item(key=key, epc=tag, gtin=epc.gtin, serial=epc.serial, sscc=epc.sscc)
        return ItemResult(item, DockResult.ACCEPTED)

    def receipt(kind: DockKind, tags: list[str], evidence: str) -> DockTransaction:
        return DockTransaction(
            kind=kind,
            door="D03",
            reference=None,
            items=tuple(tag_item(t) for t in tags),
            source=EvidenceSource.PORTAL,
            device="d03-reader",
            evidence_id=evidence,
            started_at=T0,
            occurred_at=T0,
        )

    pallets = [encode_sscc96("0614141", f"3{n:09d}").hex().upper() for n in range(3)]
    cases = [encode_sgtin96("0614141", "012345", n).hex().upper() for n in range(5)]
    one = receipt(DockKind.RECEIVE, [pallets[0], *cases[:3]], "pass-1")
    two = receipt(DockKind.RECEIVE, [pallets[1], pallets[2], *cases[3:]], "pass-2")
    sscc = decode_epc(pallets[0]).sscc
    assert sscc is not None
    case_keys = {r.item.key for r in one.items if not r.item.sscc}
    async with await Store.open(tmp_path / "gw.db") as store:
        recorder = Recorder(topics=TOPICS, store=store, clock=lambda: T0, alarms=AlarmOutputs())
        await recorder.record([one, two])
        await recorder.record([MoveTransaction(sscc, "D03", "A-01-01", "fl-1", T0, T0)])
        stock = await store.count_stock(["A-01-01"], [two.items[3].item.key])
        # The cases of a pass with two pallets are on neither: nothing says which.
        assert stock == {f"sscc:{sscc}": "A-01-01"} | dict.fromkeys(case_keys, "A-01-01")
        await recorder.record([receipt(DockKind.SHIP, [pallets[0]], "pass-3")])
        assert await store.count_stock(["A-01-01", "D03"], case_keys) == {
            f"sscc:{decode_epc(p).sscc}": "D03" for p in pallets[1:]
        }
