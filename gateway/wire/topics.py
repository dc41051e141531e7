"""MQTT topic names: the gateway's own tree `gw/{site}/{gateway}/...` and the site's WMS tree,
and the check every reply topic a request names must pass before the gateway publishes there."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

MAX_REPLY_TOPIC_CHARS = 256
"""A longer reply topic is refused (MQTT allows 65,535 bytes; no deployment needs that)."""

# C0 and C1 control characters and DEL: valid UTF-8, but a broker may drop the client that
# publishes them (Mosquitto disconnects on U+0000), and no real topic has them.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17))
    + "]"
)
"""Control characters, surrogates and Unicode non-characters (U+FDD0-U+FDEF, U+xFFFE,
U+xFFFF): Mosquitto takes a topic with one for malformed UTF-8 and drops the client."""
# No answer may go to any gateway's tree (transactions, statuses, commands), nor to the WMS's
# reference data and tasks of any site (`wms/{site}/{kind}/...`), whatever the case or spacing.
_GATEWAYS = "gw"
_WMS = "wms"
_WMS_DATA = frozenset({"asn", "shipment", "product", "location", "task"})


def topic_refusal(topic: str) -> str | None:
    """Why no client should publish on `topic` (a broker drops the connection of one that
    does); None when it may: 1 to 65,535 bytes of UTF-8, no wildcard, no control character."""
    if not topic:
        return "empty"
    if _CONTROL.search(topic):
        return "has a control character or a Unicode non-character"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > 65_535:
        return "longer than 65,535 bytes"
    if "+" in topic or "#" in topic:
        return "has a wildcard"
    return None


def reply_topic_refusal(topic: str, *, reserved: frozenset[str] = frozenset()) -> str | None:
    """Why the gateway must not publish an answer on `topic`; None when it may.

    Checked with the MQTT topic rules (non-empty, UTF-8, no wildcards, no U+0000) and stricter
    ones: no control characters, at most `MAX_REPLY_TOPIC_CHARS`, no white space at either end,
    nothing under `$`, not in the gateways' tree (`gw/...`), not on the WMS's reference data
    or tasks of any site (`wms/{site}/{asn|shipment|product|location|task}/...`), and not under
    any of the `reserved` first levels (the robots' VDA 5050 interface).
    """
    if not topic:
        return "empty"
    if len(topic) > MAX_REPLY_TOPIC_CHARS:
        return f"longer than {MAX_REPLY_TOPIC_CHARS} characters"
    if _CONTROL.search(topic):
        return "has a control character or a Unicode non-character"
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if "+" in topic or "#" in topic:
        return "has a wildcard"
    if topic != topic.strip():
        return "starts or ends with white space"
    if topic.startswith("$"):
        return "in the broker's own tree"
    levels = [level.strip().lower() for level in topic.split("/")]
    root = levels[0]
    if root == "":
        return "starts with /"
    if root == _GATEWAYS or root in reserved:
        return f"in the {root}/ tree, where only the gateways and robots' owners publish"
    if root == _WMS and len(levels) > 2 and levels[2] in _WMS_DATA:
        return "on the WMS's reference data or tasks"
    return None


class RequesterKind(enum.StrEnum):
    """Who sends a request the gateway answers; each kind has its own allowed reply topics."""

    FLEET = "fleet"  # fleet controllers: agv/next, agv/progress (and agv/cancel naming a fleet)
    WMS = "wms"  # the WMS: cmd/close, and agv/cancel naming no fleet
    HANDHELD = "handheld"  # handheld terminals: handheld/scans


@dataclass(frozen=True, slots=True)
class Requester:
    """The sender of a request as far as the request says: its kind and, for a fleet, its id."""

    kind: RequesterKind
    fleet: str | None = None
    terminal: str | None = None  # a handheld terminal's id

    def __str__(self) -> str:
        if self.terminal is not None:
            return f"terminal {self.terminal}"
        return f"fleet {self.fleet}" if self.fleet is not None else str(self.kind)


PLACEHOLDERS = ("{site}", "{gateway}", "{fleet}", "{terminal}")
"""What a reply topic pattern may contain besides MQTT topic filter levels."""

# A fleet id put into a pattern must stay one plain level: it must not widen the pattern.
_PLAIN_LEVEL = re.compile(r"^[^/+#]{1,100}$")


class ReplyPolicy:
    """Where the gateway may publish answers: per requester kind, a list of MQTT topic filters
    with `{site}`, `{gateway}` and `{fleet}` (the fleet the request names) filled in.

    A reply topic must first pass `reply_topic_refusal` (MQTT rules, never a gateway's, the
    WMS's reference data or the robots' topics), then match one pattern of its requester's
    kind. A pattern with `{fleet}` never matches a request that names no fleet.

    Args:
        patterns: requester kind -> topic filters; a kind left out gets no answers.
        topics: the gateway's names, for `{site}` and `{gateway}`.
        reserved: first levels no answer may go to besides `gw` (the robots' interface).
    """

    def __init__(
        self,
        patterns: Mapping[RequesterKind, Sequence[str]],
        topics: Topics,
        *,
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        self._patterns = {
            kind: tuple(
                p.replace("{site}", topics.site).replace("{gateway}", topics.gateway)
                for p in filters
            )
            for kind, filters in patterns.items()
        }
        self.reserved = reserved

    def refusal(self, requester: Requester, topic: str) -> str | None:
        """Why an answer to `requester` must not go to `topic`; None when it may."""
        why = reply_topic_refusal(topic, reserved=self.reserved)
        if why is not None:
            return why
        named = {"{fleet}": requester.fleet, "{terminal}": requester.terminal}
        for pattern in self._patterns.get(requester.kind, ()):
            for placeholder, value in named.items():
                if placeholder not in pattern:
                    continue
                if value is None or not _PLAIN_LEVEL.match(value) or _CONTROL.search(value):
                    break
                pattern = pattern.replace(placeholder, value)
            else:
                if topic_matches_sub(pattern, topic):
                    return None
        return f"not an allowed reply topic for {requester.kind} requesters"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one gateway: `gw/{site}/{gateway}/...`."""

    site: str
    gateway: str

    @property
    def base(self) -> str:
        """The prefix every topic of this gateway starts with."""
        return f"gw/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        """Retained online/offline status; also the last will."""
        return f"{self.base}/status"

    def device_status(self, device_id: str) -> str:
        """Retained status of one device."""
        return f"{self.base}/device/{device_id}/status"

    def state(self, kind: str, key: str) -> str:
        """Retained live state of one door, location, robot or device."""
        return f"{self.base}/state/{kind}/{key}"

    def tx(self, kind: str) -> str:
        """Transactions of one kind: receive, ship or move."""
        return f"{self.base}/tx/{kind}"

    def summary(self, kind: str) -> str:
        """Closed receipts (`receipt`) and shipments (`shipment`)."""
        return f"{self.base}/{kind}"

    @property
    def epcis(self) -> str:
        """GS1 EPCIS 2.0 documents of the same transactions (optional output)."""
        return f"{self.base}/epcis"

    @property
    def event(self) -> str:
        """Notices: rejected scans, timed-out moves and other things worth seeing."""
        return f"{self.base}/event"

    def debug_pass(self, door: str) -> str:
        """Portal passes of one door, for commissioning (debug option, rate-limited, QoS 0)."""
        return f"{self.base}/debug/pass/{door}"

    @property
    def alarm(self) -> str:
        """Exceptions that need a person."""
        return f"{self.base}/alarm"

    @property
    def agv_task(self) -> str:
        """Every change of an AGV task."""
        return f"{self.base}/agv/task"

    @property
    def zone_event(self) -> str:
        """Tags arriving in, moving between and departing from RFID zones."""
        return f"{self.base}/zone/event"

    @property
    def handheld_scans(self) -> str:
        """Where handheld terminals send their batches of scans."""
        return f"{self.base}/handheld/scans"

    def agv_request(self, op: str) -> str:
        """Where fleet controllers send `next`, `progress` and `cancel` requests."""
        return f"{self.base}/agv/{op}"

    @property
    def wms(self) -> str:
        """The prefix of the site's WMS topics: `wms/{site}`."""
        return f"wms/{self.site}"
