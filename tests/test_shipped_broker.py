"""The shipped `deploy/mosquitto.conf` and `deploy/mosquitto.acl`, run by the real Mosquitto.

The configuration is the shipped file with only what a test must change substituted line by
line (listener port, TLS files from a private CA, password file, persistence folder, a log
file), and the ACL is the shipped file itself: a change to either is what these tests test.

- Every documented flow (who publishes which topic, who reads it) goes through, each its own
  case, with MQTT 5 clients so that a refusal shows as PUBACK reason code 135; a test checks
  that every topic of docs/mqtt.md has a flow, and every user of the ACL is exercised.
- A set of forbidden publishes is refused, and messages that a client may not read do not
  reach it although it subscribes to `#`.
- Durability: QoS 1 messages the broker acknowledged survive a SIGKILL 0.2 s later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trustme
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.app import Gateway
from gateway.config import GatewayConfig, parse_config
from gateway.storage import OutboxMessage, Store
from tests.mqtt_helpers import Mosquitto, password_file

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "deploy" / "mosquitto.conf"
SHIPPED_ACL = ROOT / "deploy" / "mosquitto.acl"
MQTT_DOC = ROOT / "docs" / "mqtt.md"

# The names the shipped ACL is written for.
GATEWAY = "gw-dock-north"
WMS = "wms"
FLEET = "fleet-f1"
HANDHELD = "pda-01"
ROBOT = "agv-001"  # a robot's username is its VDA 5050 serial number
OTHER_ROBOT = "agv-002"
USERS = (GATEWAY, WMS, FLEET, HANDHELD, ROBOT, OTHER_ROBOT)
PASSWORD = "secret"

BASE = "gw/DC1/dock-north"
OTHER_GATEWAY = "gw/DC1/dock-south"
WMS_REPLIES = "wms/DC1/replies"
FLEET_REPLIES = "fleet/f1/responses"

NOT_AUTHORIZED = 135
WAIT_S = 5.0


# --- the broker, with the shipped files ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """What a test broker needs besides the shipped files: TLS files and a password file."""

    ca: Path
    cert: Path
    key: Path
    passwd: Path


def make_files(folder: Path) -> BrokerFiles:
    """A private CA with a certificate for 127.0.0.1, and a password for every test user."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    files = BrokerFiles(
        folder / "ca.pem", folder / "server.crt", folder / "server.key", folder / "passwd"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    server.private_key_pem.write_to_path(str(files.key))
    password_file(files.passwd, dict.fromkeys(USERS, PASSWORD))
    return files


def shipped_config(
    text: str, *, port: int, files: BrokerFiles, persistence: Path, log: Path
) -> str:
    """`text` (the shipped configuration) with the lines a test must change substituted.

    Every other line is kept as it is. A substituted directive missing from the shipped file
    fails: the test would no longer test it.
    """
    substitutes = {
        "listener": f"listener {port} 127.0.0.1",
        "certfile": f"certfile {files.cert}",
        "keyfile": f"keyfile {files.key}",
        "cafile": f"cafile {files.ca}",
        "password_file": f"password_file {files.passwd}",
        "acl_file": f"acl_file {SHIPPED_ACL}",
        "persistence_location": f"persistence_location {persistence}/",
    }
    lines: list[str] = []
    seen: list[str] = []
    for line in text.splitlines():
        words = line.split()
        directive = words[0] if words and not words[0].startswith("#") else None
        if directive in substitutes:
            seen.append(directive)
            lines.append(substitutes[directive])
        else:
            lines.append(line)
    assert sorted(seen) == sorted(substitutes), f"shipped directives changed: {seen}"
    # Mosquitto drops to the `mosquitto` user when started as root: keep the temp folders usable.
    user = ["user root"] if os.geteuid() == 0 else []
    return "\n".join([*user, *lines, f"log_dest file {log}", ""])


class ShippedBroker(Mosquitto):
    """The private broker of `tests.mqtt_helpers`, configured by the shipped files."""

    def __init__(self, workdir: Path, files: BrokerFiles) -> None:
        self.files = files
        super().__init__(workdir)

    def _write_config(self) -> None:
        self.config.write_text(
            shipped_config(
                SHIPPED_CONF.read_text(),
                port=self.port,
                files=self.files,
                persistence=self.dir,
                log=self.log,
            )
        )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> BrokerFiles:
    """TLS files and passwords, shared by the tests of this file."""
    return make_files(tmp_path_factory.mktemp("files"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, files: BrokerFiles) -> Iterator[ShippedBroker]:
    """One shipped broker for every flow case (each case uses payloads of its own)."""
    running = ShippedBroker(tmp_path_factory.mktemp("broker"), files)
    running.start()
    try:
        yield running
    finally:
        running.stop()


# --- an MQTT 5 client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One message a client received."""

    topic: str
    payload: bytes
    retain: bool


class Peer:
    """An MQTT 5 client logged in as `user` over TLS (paho, its network loop on a thread)."""

    def __init__(
        self,
        broker: ShippedBroker,
        user: str,
        *,
        client_id: str | None = None,
        session: bool = False,
        will: tuple[str, bytes, bool] | None = None,
    ) -> None:
        self.user = user
        self._broker = broker
        self._session = session
        self._cond = threading.Condition()
        self.messages: list[Message] = []
        self.acks: dict[int, int] = {}  # mid -> PUBACK reason code
        self.last_ack_at = 0.0
        self._subacks: dict[int, list[int]] = {}
        self._connack: int | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{user}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, PASSWORD)
        # TLS 1.2: with 1.3 the broker sends session tickets after the handshake, and Nagle on
        # its socket holds the CONNACK for the client's delayed ACK, 40 ms a connection.
        context = ssl.create_default_context(cafile=str(broker.files.ca))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        self.client.tls_set_context(context)
        self.client.max_inflight_messages_set(100)
        if will is not None:
            topic, payload, retain = will
            self.client.will_set(topic, payload, qos=1, retain=retain)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self._cond:
            self._connack = rc.value
            self._cond.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Message(message.topic, bytes(message.payload), message.retain))
            self._cond.notify_all()

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        with self._cond:
            self.acks[mid] = rc.value
            self.last_ack_at = time.monotonic()
            self._cond.notify_all()

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._cond:
            self._subacks[mid] = [rc.value for rc in rcs]
            self._cond.notify_all()

    def wait(self, ready: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Wait until `ready()` (called under the client's lock) is true."""
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(f"{self.user}: {what} did not come within {timeout} s")

    def connect(self) -> Peer:
        """Connect (with a persistent session if asked) and wait for the CONNACK."""
        properties = None
        if self._session:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
        self.client.connect(
            "127.0.0.1", self._broker.port, clean_start=not self._session, properties=properties
        )
        self.client.loop_start()
        self.wait(lambda: self._connack is not None, "CONNACK")
        assert self._connack == 0, f"{self.user}: CONNACK {self._connack}"
        return self

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1; Mosquitto 2.0 grants any filter and checks reads at delivery."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        assert mid is not None
        self.wait(lambda: mid in self._subacks, "SUBACK")
        assert self._subacks[mid] == [1], f"{self.user}: SUBACK {self._subacks[mid]}"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        self.wait(lambda: mid in self.acks, f"PUBACK on {topic}")
        return self.acks[mid]

    def payloads(self) -> set[bytes]:
        """The payloads received so far, each once."""
        with self._cond:
            return {m.payload for m in self.messages}

    def received(self, payload: bytes) -> list[Message]:
        """The messages received with this payload."""
        with self._cond:
            return [m for m in self.messages if m.payload == payload]

    def wait_for(self, payload: bytes, what: str) -> Message:
        """Wait for the message with this payload."""
        self.wait(lambda: any(m.payload == payload for m in self.messages), what)
        return self.received(payload)[0]

    def disconnect(self, *, with_will: bool = False) -> None:
        """Disconnect; `with_will`: MQTT 5 reason code 4, the broker publishes the last will."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=4 if with_will else 0)
        self.client.disconnect(reasoncode=reason)
        self.client.loop_stop()


Connect = Callable[..., Peer]
"""`peers(user, will=None)`: a connected client of `user`, with a last will if given."""


@pytest.fixture
def peers(broker: ShippedBroker) -> Iterator[Connect]:
    """Makes connected clients of the shared broker; disconnects them after the test."""
    made: list[Peer] = []

    def make(user: str, will: tuple[str, bytes, bool] | None = None) -> Peer:
        peer = Peer(broker, user, will=will)
        made.append(peer)
        return peer.connect()

    yield make
    for peer in made:
        peer.disconnect()


def token(label: str) -> bytes:
    """A payload no other case sends."""
    return f"{label} {uuid.uuid4()}".encode()


# --- the documented flows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flow:
    """A documented message: `publisher` sends it on `topic` (as its last will if `will`), and
    every one of `readers` receives it."""

    publisher: str
    topic: str
    readers: tuple[str, ...]
    retain: bool = False
    will: bool = False

    @property
    def id(self) -> str:
        how = " (will)" if self.will else " (retained)" if self.retain else ""
        return f"{self.publisher} {self.topic}{how} -> {','.join(self.readers)}"


FLOWS = (
    # The gateway's own tree, read by the WMS.
    Flow(GATEWAY, f"{BASE}/status", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/status", (WMS,), retain=True, will=True),
    Flow(GATEWAY, f"{BASE}/device/fl-07/status", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/state/door/D03", (WMS,), retain=True),
    # Read by the site's gateways too (`[state] follow_site`); here by the publisher itself.
    Flow(GATEWAY, f"{BASE}/state/location/A-01-01", (WMS, GATEWAY), retain=True),
    Flow(GATEWAY, f"{BASE}/state/robot/agv-001", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/state/device/fl-07", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/state/zone/A-01", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/zone/event", (WMS,)),
    Flow(GATEWAY, f"{BASE}/tx/move", (WMS,)),
    Flow(GATEWAY, f"{BASE}/tx/receive", (WMS, GATEWAY)),  # the task board reads receipts
    Flow(GATEWAY, f"{BASE}/tx/ship", (WMS,)),
    Flow(GATEWAY, f"{BASE}/tx/pack", (WMS,)),
    Flow(GATEWAY, f"{BASE}/tx/count", (WMS,)),
    Flow(GATEWAY, f"{BASE}/sequence", (WMS,), retain=True),
    Flow(GATEWAY, f"{BASE}/event", (WMS,)),
    Flow(GATEWAY, f"{BASE}/alarm", (WMS,)),
    Flow(GATEWAY, f"{BASE}/receipt", (WMS,)),
    Flow(GATEWAY, f"{BASE}/shipment", (WMS,)),
    Flow(GATEWAY, f"{BASE}/epcis", (WMS,)),
    Flow(GATEWAY, f"{BASE}/agv/task", (WMS,)),
    Flow(GATEWAY, f"{BASE}/debug/pass/D03", (WMS,)),
    # The gateway's answers, on the requester's reply topic.
    Flow(GATEWAY, f"{WMS_REPLIES}/close", (WMS,)),
    Flow(GATEWAY, f"{WMS_REPLIES}/agv", (WMS,)),
    Flow(GATEWAY, FLEET_REPLIES, (FLEET,)),
    Flow(GATEWAY, "handheld/pda-01/answers", (HANDHELD,)),
    # The WMS: reference data and tasks (retained), commands and cancellations.
    Flow(WMS, "wms/DC1/asn/ASN-7", (GATEWAY,), retain=True),
    Flow(WMS, "wms/DC1/shipment/SO-7", (GATEWAY,), retain=True),
    Flow(WMS, "wms/DC1/product/09506000134352", (GATEWAY,), retain=True),
    Flow(WMS, "wms/DC1/location/C-01", (GATEWAY,), retain=True),
    Flow(WMS, "wms/DC1/task/T-7", (GATEWAY,), retain=True),
    Flow(WMS, f"{BASE}/cmd/close", (GATEWAY,)),
    Flow(WMS, f"{BASE}/cmd/count", (GATEWAY,)),
    Flow(WMS, f"{BASE}/cmd/resend", (GATEWAY,)),
    Flow(WMS, f"{BASE}/agv/cancel", (GATEWAY,)),
    # A fleet controller's requests.
    Flow(FLEET, f"{BASE}/agv/next", (GATEWAY,)),
    Flow(FLEET, f"{BASE}/agv/progress", (GATEWAY,)),
    Flow(FLEET, f"{BASE}/agv/cancel", (GATEWAY,)),
    # A handheld terminal sends its scans.
    Flow(HANDHELD, f"{BASE}/handheld/scans", (GATEWAY,)),
    # A robot's VDA 5050 state and connection (retained, and its last will), 2.x and 3.x.
    Flow(ROBOT, f"uagv/v2/acme/{ROBOT}/state", (GATEWAY,)),
    Flow(ROBOT, f"uagv/v2/acme/{ROBOT}/connection", (GATEWAY,), retain=True),
    Flow(ROBOT, f"uagv/v2/acme/{ROBOT}/connection", (GATEWAY,), retain=True, will=True),
    Flow(ROBOT, f"uagv/v3/acme/{ROBOT}/state", (GATEWAY,)),
)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.id)
def test_documented_flow_is_delivered(flow: Flow, peers: Connect) -> None:
    """Every reader, subscribed to `#`, gets the message; a publish is acknowledged with 0."""
    payload = token(flow.id)
    readers = [peers(user) for user in flow.readers]
    for reader in readers:
        reader.subscribe("#")
    if flow.will:
        publisher = peers(flow.publisher, will=(flow.topic, payload, flow.retain))
        publisher.disconnect(with_will=True)
    else:
        publisher = peers(flow.publisher)
        assert publisher.publish(flow.topic, payload, retain=flow.retain) == 0
    for reader in readers:
        message = reader.wait_for(payload, f"{flow.topic} from {flow.publisher}")
        assert message.topic == flow.topic


# --- what nobody may do -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refused:
    """A publish the broker must refuse."""

    user: str
    topic: str
    why: str


REFUSED = (
    Refused(WMS, f"{BASE}/tx/move", "the WMS forging a gateway transaction"),
    Refused(WMS, f"{BASE}/status", "the WMS forging a gateway's status"),
    Refused(WMS, f"{BASE}/agv/next", "the WMS leasing tasks like a fleet controller"),
    Refused(WMS, f"{BASE}/cmd/reboot", "the WMS sending an undocumented command"),
    Refused(WMS, FLEET_REPLIES, "the WMS forging the gateway's answer to a fleet"),
    Refused(WMS, "wms/DC2/asn/ASN-7", "the WMS writing another site's reference data"),
    Refused(WMS, "uagv/v2/acme/wms/state", "the WMS posing as a robot named like it"),
    Refused(FLEET, f"{BASE}/tx/move", "a fleet controller forging a gateway transaction"),
    Refused(FLEET, f"{BASE}/cmd/close", "a fleet controller closing a receipt"),
    Refused(FLEET, "wms/DC1/task/T-7", "a fleet controller writing the WMS's tasks"),
    Refused(FLEET, "fleet/f2/responses", "a fleet controller writing another fleet's tree"),
    Refused(FLEET, "gw/DC2/dock-north/agv/next", "a fleet controller asking another site"),
    Refused(FLEET, f"uagv/v2/acme/{ROBOT}/order", "a fleet controller ordering a robot"),
    Refused(FLEET, f"uagv/v2/acme/{ROBOT}/instantActions", "instant actions to a robot"),
    Refused(FLEET, "uagv/v2/acme/fleet-f1/state", "a fleet controller posing as a robot"),
    Refused(GATEWAY, f"{OTHER_GATEWAY}/tx/move", "a gateway writing another gateway's tree"),
    Refused(GATEWAY, f"{OTHER_GATEWAY}/status", "a gateway forging another's status"),
    Refused(GATEWAY, f"{BASE}/cmd/close", "a gateway sending itself commands"),
    Refused(FLEET, f"{BASE}/cmd/count", "a fleet controller opening a count"),
    Refused(FLEET, f"{BASE}/cmd/resend", "a fleet controller asking for resends"),
    Refused(WMS, f"{BASE}/sequence", "the WMS forging a gateway's sequence announcement"),
    Refused(GATEWAY, f"{BASE}/agv/next", "a gateway forging a fleet's request"),
    Refused(GATEWAY, f"{BASE}/anything", "a gateway publishing an undocumented topic"),
    Refused(GATEWAY, "wms/DC1/asn/ASN-7", "a gateway writing the WMS's reference data"),
    Refused(GATEWAY, "wms/DC1/task/T-7", "a gateway writing the WMS's tasks"),
    Refused(GATEWAY, f"uagv/v2/acme/{ROBOT}/order", "a gateway ordering a robot"),
    Refused(GATEWAY, f"uagv/v2/acme/{GATEWAY}/state", "a gateway posing as a robot"),
    Refused(ROBOT, f"uagv/v2/acme/{OTHER_ROBOT}/state", "a robot posing as another"),
    Refused(ROBOT, f"uagv/v2/acme/{OTHER_ROBOT}/connection", "a robot forging another's will"),
    Refused(ROBOT, f"uagv/v2/acme/{ROBOT}/order", "a robot writing its own orders"),
    Refused(ROBOT, f"{BASE}/agv/progress", "a robot reporting like a fleet controller"),
    Refused(ROBOT, "wms/DC1/task/T-7", "a robot writing the WMS's tasks"),
)


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: f"{c.user} {c.topic}")
def test_forbidden_publish_is_refused(case: Refused, peers: Connect) -> None:
    """MQTT 5 PUBACK reason code 135 (Not authorized); a subscriber to `#` (the gateway, or
    the WMS for the gateway's own publishes) does not get it either."""
    payload = token(case.why)
    witness = peers(GATEWAY if case.user != GATEWAY else WMS)
    witness.subscribe("#")
    assert peers(case.user).publish(case.topic, payload) == NOT_AUTHORIZED, case.why
    marker = next(f for f in FLOWS if witness.user in f.readers and not f.will)
    mark = token("marker")
    assert peers(marker.publisher).publish(marker.topic, mark, retain=marker.retain) == 0
    witness.wait_for(mark, "the marker")
    assert witness.received(payload) == []


@dataclass(frozen=True, slots=True)
class Unread:
    """A message `publisher` may send that `reader` must not receive."""

    reader: str
    publisher: str
    topic: str
    why: str


UNREAD = (
    Unread(FLEET, GATEWAY, "fleet/f2/responses", "another fleet's answers"),
    Unread(FLEET, GATEWAY, f"{BASE}/tx/move", "the gateway's transactions"),
    Unread(FLEET, WMS, f"{BASE}/cmd/close", "the WMS's commands"),
    Unread(FLEET, WMS, "wms/DC1/asn/ASN-8", "the WMS's reference data"),
    Unread(FLEET, ROBOT, f"uagv/v2/acme/{ROBOT}/state", "the robots' state"),
    Unread(WMS, GATEWAY, FLEET_REPLIES, "the gateway's answers to a fleet"),
    Unread(WMS, FLEET, f"{BASE}/agv/next", "a fleet's requests"),
    Unread(WMS, ROBOT, f"uagv/v2/acme/{ROBOT}/state", "the robots' state"),
    Unread(GATEWAY, WMS, f"{OTHER_GATEWAY}/cmd/close", "another gateway's commands"),
    Unread(GATEWAY, FLEET, f"{OTHER_GATEWAY}/agv/next", "another gateway's requests"),
    Unread(GATEWAY, GATEWAY, f"{WMS_REPLIES}/close", "its answers as reference data"),
    Unread(GATEWAY, GATEWAY, FLEET_REPLIES, "its answers to a fleet"),
    Unread(ROBOT, GATEWAY, f"{BASE}/tx/move", "anything: robots read nothing"),
    Unread(ROBOT, OTHER_ROBOT, f"uagv/v2/acme/{OTHER_ROBOT}/state", "another robot's state"),
)


@pytest.mark.parametrize("case", UNREAD, ids=lambda c: f"{c.reader} {c.topic}")
def test_forbidden_read_is_not_delivered(case: Unread, peers: Connect) -> None:
    """`reader`, subscribed to `#`, does not get it although the broker took it (PUBACK 0).

    Mosquitto routes a QoS 1 message before it acknowledges it, and delivers a client's
    messages in order: once a later message the reader may read (the marker) has arrived, the
    forbidden one would have arrived before it. A robot may read nothing: it waits 0.3 s.
    """
    payload = token(case.why)
    reader = peers(case.reader)
    reader.subscribe("#")
    assert peers(case.publisher).publish(case.topic, payload) == 0, case.why
    marker = next((f for f in FLOWS if case.reader in f.readers and not f.will), None)
    if marker is None:
        time.sleep(0.3)
    else:
        mark = token("marker")
        assert peers(marker.publisher).publish(marker.topic, mark, retain=marker.retain) == 0
        reader.wait_for(mark, "the marker")
    assert reader.received(payload) == [], case.why


def test_a_will_on_a_topic_the_client_may_not_write_is_dropped(peers: Connect) -> None:
    """A robot's last will on another robot's connection is never published."""
    gateway = peers(GATEWAY)
    gateway.subscribe("#")
    forged = token("forged will")
    robot = peers(ROBOT, will=(f"uagv/v2/acme/{OTHER_ROBOT}/connection", forged, True))
    robot.disconnect(with_will=True)
    mark = token("marker")
    assert peers(ROBOT).publish(f"uagv/v2/acme/{ROBOT}/state", mark) == 0
    gateway.wait_for(mark, "the marker")
    assert gateway.received(forged) == []


# --- the flows cover the documentation and the ACL ----------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentedTopic:
    """A topic of docs/mqtt.md, as an MQTT filter, and whether the gateway reads it (`in`)."""

    filter: str
    inbound: bool
    where: str


def documented_topics(text: str) -> list[DocumentedTopic]:
    """The topics of the topic table and of the `##` headings of docs/mqtt.md.

    `{placeholder}` levels become `+`; `.../x/y` continues the cell's first topic (replacing its
    last levels); a heading's topics are under the gateway's tree.
    """
    found: list[DocumentedTopic] = []

    def as_filter(name: str) -> str:
        return re.sub(r"\{[^}/]+\}", "+", name)

    table = False
    for line in text.splitlines():
        table = line.startswith("| topic |") or (table and line.startswith("|"))
        if table and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            names = re.findall(r"`([^`]+)`", cells[0])
            inbound = cells[1].startswith("in")
            first = names[0].split("/")
            for name in names:
                if name.startswith(".../"):
                    rest = name.removeprefix(".../").split("/")
                    name = "/".join(first[: -len(rest)] + rest)
                found.append(DocumentedTopic(as_filter(name), inbound, line[:60]))
        elif line.startswith("## "):
            for name in re.findall(r"`([^`]+)`", line):
                found.append(DocumentedTopic(as_filter(f"gw/+/+/{name}"), False, line))
    return found


def test_every_documented_topic_has_a_flow() -> None:
    """Adding a topic to docs/mqtt.md without a flow here (and a line in the ACL) fails."""
    topics = documented_topics(MQTT_DOC.read_text())
    assert len(topics) >= 20, "the contract table was not found in docs/mqtt.md"
    missing = [
        t
        for t in topics
        if not any(
            topic_matches_sub(t.filter, f.topic)
            and (GATEWAY in f.readers if t.inbound else f.publisher == GATEWAY)
            for f in FLOWS
        )
    ]
    assert missing == []


def test_every_user_of_the_acl_has_flows() -> None:
    """Each user block of the shipped ACL publishes and reads in some flow; robots too."""
    users = re.findall(r"^user (\S+)$", SHIPPED_ACL.read_text(), flags=re.MULTILINE)
    assert sorted(users) == sorted([GATEWAY, WMS, FLEET, HANDHELD])
    for user in [*users, ROBOT]:
        assert any(f.publisher == user for f in FLOWS), user
    for user in users:
        assert any(user in f.readers for f in FLOWS), user


# --- durability -------------------------------------------------------------------------------


def more_than(peer: Peer, count: int) -> bool:
    """Whether `peer` received more than `count` different payloads."""
    return len(peer.payloads()) > count


def gateway_config(broker: ShippedBroker, folder: Path, *, window_s: float) -> GatewayConfig:
    """Gateway `dock-north` of site DC1, logged in to the shipped broker as the ACL names it."""
    secret = folder / "broker-password"
    secret.write_text(PASSWORD)
    raw = {
        "gateway": {"site": "DC1", "id": "dock-north", "shutdown_grace_s": 5},
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": GATEWAY,
            "password_file": str(secret),
            "tls": {"ca_file": str(broker.files.ca)},
            "keepalive_s": 5,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.3,
            "redeliver_window_s": window_s,
        },
        "storage": {"path": str(folder / "gateway.db")},
    }
    return parse_config(raw, folder / "site.toml")


async def publish_then_kill(broker: ShippedBroker, config: GatewayConfig, count: int) -> None:
    """The gateway publishes `count` moves from its outbox; 0.2 s after the outbox emptied the
    broker is killed (SIGKILL) and started again; the gateway reconnects."""
    async with await Store.open(config.storage.path) as store:
        await store.commit(
            [OutboxMessage(f"m{n}", f"{BASE}/tx/move", str(n).encode()) for n in range(count)]
        )
    gateway = Gateway(config)
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        async with asyncio.timeout(60):
            while gateway.store is None or gateway.store.depth or gateway.bridge is None:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            broker.kill()
            broker.start()
            bridge = gateway.bridge
            while not (bridge.connection_losses and bridge.connected and not gateway.store.depth):
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def lost_after_sigkill(workdir: Path, files: BrokerFiles, count: int, *, window_s: float) -> int:
    """How many of `count` moves the gateway published, and the broker acknowledged, a SIGKILL
    of the broker 0.2 s after the gateway's outbox emptied loses for a consumer with a
    persistent session (the WMS reading `tx/move`, offline meanwhile)."""
    broker = ShippedBroker(workdir, files)
    broker.start()
    peers: list[Peer] = []
    try:
        consumer = Peer(broker, WMS, client_id="wms-durable", session=True).connect()
        consumer.subscribe(f"{BASE}/tx/move")
        consumer.disconnect()
        # The consumer's session is old: the broker has saved it (a stop saves everything).
        broker.stop()
        broker.start()
        config = gateway_config(broker, workdir, window_s=window_s)
        asyncio.run(publish_then_kill(broker, config, count))
        consumer = Peer(broker, WMS, client_id="wms-durable", session=True).connect()
        peers.append(consumer)
        # Until all came, or nothing more for 0.5 s.
        got = -1
        while got < len(consumer.payloads()) < count:
            got = len(consumer.payloads())
            with contextlib.suppress(AssertionError):
                consumer.wait(partial(more_than, consumer, got), "more", timeout=0.5)
        return count - len(consumer.payloads() & {str(n).encode() for n in range(count)})
    finally:
        for peer in peers:
            peer.disconnect()
        broker.stop()


@pytest.mark.slow(6)
def test_acknowledged_messages_survive_a_broker_sigkill(tmp_path: Path, files: BrokerFiles) -> None:
    """The shipped broker settings and the gateway's redelivery window, with the broker killed
    0.2 s after the gateway's outbox emptied.

    A consumer with a persistent session subscribes at QoS 1 and goes offline; the gateway
    publishes 2,000 moves, each acknowledged by the broker; 0.2 s after its outbox emptied the
    broker is killed (SIGKILL) and started again on the same persistence folder, which it last
    saved before the gateway published (it saves every 30 s); the gateway reconnects and publishes again
    what the broker acknowledged in its redelivery window; the consumer comes back with its
    session and gets all 2,000. Without the window, the broker's crash loses them.
    """
    assert lost_after_sigkill(tmp_path / "window", files, 2000, window_s=60) == 0
    assert lost_after_sigkill(tmp_path / "none", files, 2000, window_s=0) > 0
