"""Reply topics a request names are checked before the gateway publishes there (issue #11)."""

from __future__ import annotations

import pytest

from gateway.wire.topics import MAX_REPLY_TOPIC_CHARS, reply_topic_refusal

REFUSED = [
    "",
    "x\u0001",  # a control character: Mosquitto would drop the gateway for it
    "fleet/\u0000/r",
    "fleet/\u009f",
    "fleet/+/resp",
    "fleet/#",
    "$SYS/broker/x",
    "gw/DC1/dock-south/tx/move",  # another gateway's transactions
    "gw/DC1/dock-north",  # near-misses of the gateway's own tree
    "gw/DC1/dock-north ",
    " gw/DC1/dock-north/tx/move",
    "/gw/DC1/dock-north/tx/move",
    "GW/DC1/dock-north/tx/move",
    "wms/DC2/asn/EVIL",  # another site's reference data
    "wms/DC1/task/T1",
    "WMS/DC1/Shipment/S1",
    "uagv/v2/Acme/r1/order",  # robot command topics
    "uagv/v2/Acme/r1/instantActions",
    "f" * (MAX_REPLY_TOPIC_CHARS + 1),
    "f" * 60_000,
]
ALLOWED = [
    "fleet/f1/responses",
    "wms/replies/close",
    "test/fleet-a/responses",
    "replies/a",
    "f" * MAX_REPLY_TOPIC_CHARS,
    "flotte/über/antwort",
]


@pytest.mark.parametrize("topic", REFUSED)
def test_hostile_reply_topics_are_refused(topic: str) -> None:
    assert reply_topic_refusal(topic, reserved=frozenset({"uagv"})) is not None


@pytest.mark.parametrize("topic", ALLOWED)
def test_ordinary_reply_topics_pass(topic: str) -> None:
    assert reply_topic_refusal(topic, reserved=frozenset({"uagv"})) is None
