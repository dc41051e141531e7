"""SUBACKs: aiomqtt returns their codes without raising, so a refused subscription goes unseen
unless its code is read. A refusal may be an ACL, or a broker that cannot make the
subscription now: a NATS cluster without a JetStream leader answers 0x80 for a QoS 1
subscription it could not store."""

from __future__ import annotations

from typing import Any

import aiomqtt
from paho.mqtt.reasoncodes import ReasonCode

__all__ = ["refused", "subscribe_or_raise"]


def refused(code: Any) -> bool:
    """Whether one SUBACK code refuses its subscription (MQTT 5 reason code, or 3.1.1's 0x80)."""
    return bool(code.is_failure) if isinstance(code, ReasonCode) else int(str(code)) >= 0x80


async def subscribe_or_raise(client: aiomqtt.Client, topic: str, qos: int = 1) -> None:
    """Subscribe to `topic`; `aiomqtt.MqttError` when the broker refuses it (a client that
    stayed connected would never hear what comes on it)."""
    for code in await client.subscribe(topic, qos=qos):
        if refused(code):
            raise aiomqtt.MqttError(f"the broker refused the subscription to {topic}: {code}")
