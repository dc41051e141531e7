"""The inbound table: WMS payloads redelivered unchanged are recognised before any parsing."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from gateway.domain import InputKind, RefDataDeleted, RefDataUpdate, Rejected, SiteLocationState
from gateway.wire import inbound
from gateway.wire.inbound import InboundRoutes, Received
from gateway.wire.topics import Requester, Topics

T0 = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.UTC)
PRODUCT = {"gtin": "09506000134352", "unit_weight_kg": 10.0}


def routes() -> InboundRoutes:
    return InboundRoutes(Topics("DC1", "gw1"), agv=True, vda5050_interface=None)


def _no_answers(_requester: Requester, _topic: str, _data: bytes | None, _echo: str | None) -> str:
    return "no answers in these tests"


def decode(table: InboundRoutes, topic: str, payload: bytes) -> object:
    return table.decode(Received(topic, payload, True, T0), _no_answers)


def test_a_retained_record_delivered_again_unchanged_is_not_parsed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = routes()
    topic = f"wms/DC1/product/{PRODUCT['gtin']}"
    payload = json.dumps(PRODUCT).encode()
    assert isinstance(decode(table, topic, payload), RefDataUpdate)
    parsed: list[str] = []
    monkeypatch.setattr(inbound.refdata, "decode", lambda *a: parsed.append(a[0]))
    assert decode(table, topic, payload) is None  # the broker's redelivery after a reconnect
    assert parsed == []


def test_a_changed_deleted_or_other_record_is_parsed() -> None:
    table = routes()
    topic = f"wms/DC1/product/{PRODUCT['gtin']}"
    payload = json.dumps(PRODUCT).encode()
    assert isinstance(decode(table, topic, payload), RefDataUpdate)
    changed = json.dumps({**PRODUCT, "unit_weight_kg": 11.0}).encode()
    assert isinstance(decode(table, topic, changed), RefDataUpdate)
    assert isinstance(decode(table, topic, b""), RefDataDeleted)
    assert isinstance(decode(table, topic, payload), RefDataUpdate)  # back again after a delete
    other = "wms/DC1/product/09506000134369"
    assert isinstance(decode(table, other, payload), Rejected)  # gtin is not the topic's


def test_the_digests_are_bounded() -> None:
    table = InboundRoutes(Topics("DC1", "gw1"), agv=True, vda5050_interface=None, remembered=3)
    for n in range(5):
        decode(table, f"wms/DC1/location/L{n}", json.dumps({"location": f"L{n}"}).encode())
    payload = json.dumps({"location": "L0"}).encode()
    # L0 was forgotten (the least recent): it is parsed again; L4 is still remembered.
    assert isinstance(decode(table, "wms/DC1/location/L0", payload), RefDataUpdate)
    assert decode(table, "wms/DC1/location/L4", json.dumps({"location": "L4"}).encode()) is None


def test_other_gateways_location_states_are_checked_and_the_own_ignored() -> None:
    table = InboundRoutes(Topics("DC1", "gw1"), agv=False, vda5050_interface=None, site_state=True)

    def decode(topic: str, payload: bytes) -> object:
        return table.decode(Received(topic, payload, True, T0), _no_answers)

    pallet = "306141410000000013"
    good = {"version": 1, "location": "A-01", "pallets": [pallet]}
    good["since"] = {pallet: "2026-12-07T07:59:00.000Z"}
    state = decode("gw/DC1/gw2/state/location/A-01", json.dumps(good).encode())
    assert isinstance(state, SiteLocationState)
    assert state.gateway == "gw2" and state.pallets == ((pallet, T0.timestamp() - 60),)
    assert decode("gw/DC1/gw1/state/location/A-01", json.dumps(good).encode()) is None  # its own
    emptied = decode("gw/DC1/gw2/state/location/A-01", b"")
    assert isinstance(emptied, SiteLocationState) and emptied.pallets == ()
    for bad in (b"{not json", json.dumps({**good, "location": "B-02"}).encode()):
        rejected = decode("gw/DC1/gw2/state/location/A-01", bad)
        assert isinstance(rejected, Rejected) and rejected.kind is InputKind.SITE_STATE
