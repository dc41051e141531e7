"""Reply topics a request names are checked before the gateway publishes there (issue #11)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import ReplyTopicsConfig
from gateway.wire.topics import (
    MAX_REPLY_TOPIC_CHARS,
    ReplyPolicy,
    Requester,
    RequesterKind,
    Topics,
    reply_topic_refusal,
)

REFUSED = [
    "",
    "x\u0001",  # a control character: Mosquitto would drop the gateway for it
    "fleet/\u0000/r",
    "fleet/\u009f",
    "fleet/\uffff",  # Unicode non-characters: Mosquitto drops the client for them too
    "fleet/\ufdd0",
    "fleet/\U0010fffe",
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


POLICY = ReplyPolicy(
    {
        RequesterKind.FLEET: ["fleet/{fleet}/#", "sites/{site}/{gateway}/fleet-answers"],
        RequesterKind.WMS: ["wms/{site}/replies/#"],
    },
    Topics("DC1", "dock-north"),
    reserved=frozenset({"uagv"}),
)
F1 = Requester(RequesterKind.FLEET, "f1")
WMS = Requester(RequesterKind.WMS)


@pytest.mark.parametrize(
    ("requester", "topic"),
    [
        (F1, "fleet/f1/responses"),
        (F1, "fleet/f1"),  # `#` also matches the level above it (MQTT)
        (F1, "sites/DC1/dock-north/fleet-answers"),
        (WMS, "wms/DC1/replies/close"),
    ],
)
def test_answers_go_where_the_requesters_kind_may_be_answered(
    requester: Requester, topic: str
) -> None:
    assert POLICY.refusal(requester, topic) is None


@pytest.mark.parametrize(
    ("requester", "topic"),
    [
        (F1, "fleet/f2/responses"),  # another fleet
        (F1, "fleet/f1x/responses"),
        (F1, "wms/DC1/replies/close"),  # the WMS's answers
        (WMS, "fleet/f1/responses"),
        (WMS, "wms/DC2/replies/close"),  # another site
        (Requester(RequesterKind.FLEET), "fleet/f1/responses"),  # names no fleet
        (Requester(RequesterKind.FLEET, "#"), "fleet/x/responses"),  # a fleet id must not widen
        (Requester(RequesterKind.FLEET, "a/b"), "fleet/a/b/responses"),
        (Requester(RequesterKind.FLEET, "+"), "fleet/x/responses"),
        (F1, "fleet/f1/\u0001"),
        (F1, "fleet/f1/" + "x" * MAX_REPLY_TOPIC_CHARS),
    ],
)
def test_any_other_reply_topic_is_refused(requester: Requester, topic: str) -> None:
    assert POLICY.refusal(requester, topic) is not None


def test_a_kind_with_no_patterns_gets_no_answers() -> None:
    policy = ReplyPolicy({RequesterKind.FLEET: ["fleet/{fleet}/#"]}, Topics("DC1", "gw"))
    assert policy.refusal(WMS, "wms/DC1/replies/close") is not None


@pytest.mark.parametrize(
    "pattern", ["fleet/{fleet}/#/x", "fleet/a+/x", "fleet/{robot}/#", "gw/{site}/#", "", "$SYS/#"]
)
def test_the_config_refuses_patterns_that_are_no_filter_or_point_where_answers_never_go(
    pattern: str,
) -> None:
    with pytest.raises(ValidationError):
        ReplyTopicsConfig(fleet=[pattern])
