"""Hostile and heavy MQTT traffic, as an attacker or a misbehaving system on the site network
would send it: junk on every topic the gateway reads, and large valid reference data.

The junk: invalid JSON and schema failures on the WMS's reference data and tasks, malformed
AGV requests, oversized and control-character topics, invalid VDA 5050 robot states (QoS 0),
malformed commands, and messages on topics nobody reads. The heavy part: retained ship orders
of about 1 MiB each (some 47,000 valid SSCCs), the largest a WMS may send.

Run ``python -m simulators.flood --port 1883 --site DC1 --gateway dock-1``; the benchmark
`benchmarks/hostile_input.py` and the flood test run it as a separate process, so that its
own work does not count against the gateway's.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from simulators.cli import add_broker, add_seed, parser
from simulators.gs1 import sscc

BIG_ORDER_PALLETS = 47_000
"""SSCCs in one large ship order: about 1 MiB of JSON."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def junk(site: str, gateway: str, count: int, rng: random.Random) -> Iterator[Message]:
    """`count` hostile messages, mixed over every topic the gateway reads (and some it doesn't)."""
    base, wms = f"gw/{site}/{gateway}", f"wms/{site}"
    garbage = [b"{not json", b"\xff\xfe", b"[" * 10_000, b'{"a": NaN}', b"null", b"{}", b"x" * 4096]
    for i in range(count):
        pick = i % 10
        body = rng.choice(garbage)
        if pick == 0:
            yield Message(f"{wms}/asn/J{i}", body)
        elif pick == 1:
            yield Message(f"{wms}/shipment/J{i}", json.dumps({"order_id": "other"}).encode())
        elif pick == 2:
            yield Message(f"{wms}/task/J{i}", body)
        elif pick == 3:
            yield Message(f"{base}/agv/next", body)
        elif pick == 4:
            yield Message(f"{base}/agv/progress", json.dumps({"fleet": "f", "robot": i}).encode())
        elif pick == 5:
            yield Message(f"uagv/v2/acme/r{i % 50}/state", body, qos=0)
        elif pick == 6:
            yield Message(f"{base}/cmd/close", body)
        elif pick == 7:
            yield Message(f"{wms}/asn/{'L' * 60_000}{i}", body)  # a 60 kB topic
        elif pick == 8:
            yield Message(f"{wms}/product/\u0001{i}", body)
        else:
            yield Message(f"elsewhere/{i}", body)  # nobody subscribed


def big_orders(site: str, count: int, door: str = "D05") -> Iterator[Message]:
    """`count` valid retained ship orders of about 1 MiB each."""
    for n in range(count):
        pallets = [sscc("0614141", n * BIG_ORDER_PALLETS + i) for i in range(BIG_ORDER_PALLETS)]
        order = {"order_id": f"BIG-{n}", "door": door, "pallets": pallets}
        yield Message(f"wms/{site}/shipment/BIG-{n}", json.dumps(order).encode(), retain=True)


def asns(site: str, count: int, door: str = "D03") -> Iterator[Message]:
    """`count` small valid retained ASNs (a WMS's open deliveries)."""
    for n in range(count):
        asn = {
            "asn_id": f"ASN-{n}",
            "door": door,
            "lines": [
                {"line": 1, "gtin": "09506000134352", "quantity": 10},
                {"line": 2, "sscc": sscc("0614141", 9_000_000 + n), "quantity": 1},
            ],
        }
        yield Message(f"wms/{site}/asn/ASN-{n}", json.dumps(asn).encode(), retain=True)


def publish(host: str, port: int, messages: Iterator[Message], *, client_id: str) -> int:
    """Publish every message (QoS 1 ones acknowledged); returns how many were sent.

    The broker drops a client that sends a control character in a topic: those are sent
    last, once the others are acknowledged, each on a connection of its own.
    """
    sent = 0
    acked: list[paho.MQTTMessageInfo] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(200)
    client.connect(host, port)
    client.loop_start()
    dropping: list[Message] = []
    try:
        for message in messages:
            if any(ord(c) < 0x20 for c in message.topic):
                dropping.append(message)
                continue
            try:
                info = client.publish(message.topic, message.payload, message.qos, message.retain)
            except ValueError:  # paho refuses to send it: on to the next message
                continue
            sent += 1
            if message.qos:
                acked.append(info)
        # Wait (at most a minute) until the broker has acknowledged the QoS 1 ones.
        deadline = time.monotonic() + 60
        for info in acked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(remaining)
    finally:
        client.disconnect()
        client.loop_stop()
    for n, message in enumerate(dropping):
        one = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-{n}")
        with contextlib.suppress(OSError):
            one.connect(host, port)
            one.publish(message.topic, message.payload, message.qos, message.retain)
            one.loop(timeout=0.05)
            one.disconnect()
            sent += 1
    return sent


def main(argv: list[str] | None = None) -> int:
    """Command line: flood a broker, then print how many messages were sent."""
    cli = parser("simulators.flood", __doc__.splitlines()[0] if __doc__ else "")
    add_broker(cli)
    add_seed(cli)
    cli.add_argument("--site", default="DC1", help="the site of the gateway under attack")
    cli.add_argument("--gateway", default="dock-1", help="the gateway under attack")
    cli.add_argument("--junk", type=int, default=10_000, help="hostile messages")
    cli.add_argument("--big", type=int, default=16, help="retained 1 MiB ship orders")
    cli.add_argument("--asns", type=int, default=0, help="small valid retained ASNs, sent first")
    args = cli.parse_args(argv)
    rng = random.Random(args.seed)
    sent = publish(args.host, args.port, asns(args.site, args.asns), client_id="flood-asns")
    sent += publish(args.host, args.port, big_orders(args.site, args.big), client_id="flood-orders")
    sent += publish(
        args.host,
        args.port,
        junk(args.site, args.gateway, args.junk, rng),
        client_id="flood-junk",
    )
    print(f"sent {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
