"""The site configuration: one TOML file, validated into typed models at start.

Unknown keys are errors. `load_config` raises `ConfigError`, whose `errors` name the file,
the key and what was expected, one line each.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.domain import SiteLayout
from gateway.wire.refdata import MAX_PAYLOAD_BYTES as REFDATA_MAX_PAYLOAD_BYTES
from gateway.wire.topics import PLACEHOLDERS, reply_topic_refusal

# Identifiers end up in MQTT topics: no wildcards, separators or spaces.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

SUFFIX_NAMES = {"CR": "\r", "LF": "\n", "CRLF": "\r\n", "TAB": "\t", "ETX": "\x03"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Model):
    """Who this gateway is and how it stops."""

    site: Identifier
    id: Identifier
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=300)
    # The dock doors this gateway owns, on a site of several gateways: ASNs and ship orders
    # for other doors are not its own (not held; one it held that moves to another door is
    # dropped). None: every door of the site is its own (a site of one gateway).
    doors: list[Identifier] | None = None


class TlsConfig(_Model):
    """TLS towards the broker. Paths are relative to the config file."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class ReplyTopicsConfig(_Model):
    """Where answers to requests may go, per requester kind: MQTT topic filters in which
    `{site}`, `{gateway}` and `{fleet}` (the fleet a request names) are filled in. A request
    naming any other reply topic is not carried out: it is rejected with an event."""

    fleet: list[str] = Field(default_factory=lambda: ["fleet/{fleet}/#"], max_length=50)
    wms: list[str] = Field(default_factory=lambda: ["wms/{site}/replies/#"], max_length=50)
    handheld: list[str] = Field(default_factory=lambda: ["handheld/{terminal}/#"], max_length=50)

    @field_validator("fleet", "wms", "handheld")
    @classmethod
    def _topic_filters(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            filled = pattern
            for placeholder in PLACEHOLDERS:
                filled = filled.replace(placeholder, "x")
            levels = filled.split("/")
            if (
                not pattern
                or "{" in filled
                or "}" in filled
                or any("+" in level and level != "+" for level in levels)
                or any("#" in level and level != "#" for level in levels)
                or "#" in levels[:-1]
            ):
                raise ValueError(
                    f"{pattern!r} is not an MQTT topic filter (placeholders: "
                    f"{', '.join(PLACEHOLDERS)})"
                )
            if reply_topic_refusal(filled.replace("+", "x").replace("#", "x")) is not None:
                raise ValueError(f"{pattern!r}: the gateway never answers there")
        return patterns


class BrokerConfig(_Model):
    """The MQTT broker the gateway publishes to."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    max_inflight: int = Field(default=100, ge=1, le=1000)
    # MQTT 5: the largest packet the gateway accepts (told to the broker in CONNECT), so a
    # huge message is refused by the broker instead of buffered here. Reference data and robot
    # states are at most 1 MiB of payload.
    max_packet_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    # MQTT 5 Receive Maximum: inbound QoS 1 messages the broker may send before the gateway
    # acknowledges them (it does once they are handed to the rules).
    receive_maximum: int = Field(default=64, ge=1, le=65_535)
    # Messages the broker acknowledged in this many seconds before a connection ends are
    # published again at the next connection: a broker that crashed loses what it took since
    # its last save (Mosquitto: `autosave_interval`; keep this above it). 0: never.
    redeliver_window_s: float = Field(default=60.0, ge=0, le=86_400)
    # Every transaction carries its number on its topic (`sequence`); what was published is
    # kept this long (at most 200,000), so a consumer that finds one missing gets it again
    # (`cmd/resend`), whatever the broker lost.
    resend_history_s: float = Field(default=86_400.0, ge=60, le=30 * 86_400)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # A node that takes the connection but gives no CONNACK within this is left for the next
    # (a cluster node that lost its peers may hold clients while it waits for a quorum).
    connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # Other nodes of the same broker cluster, "host" or "host:port" (no port: `port`), e.g.
    # ["10.20.0.12", "10.20.0.13:8883"]: a connection lost or refused is tried again on the
    # next node of [host, *failover], round and round, after the jittered backoff.
    failover: list[str] = Field(default_factory=list, max_length=32)
    reply_topics: ReplyTopicsConfig = ReplyTopicsConfig()

    @field_validator("failover")
    @classmethod
    def _endpoints(cls, nodes: list[str]) -> list[str]:
        for node in nodes:
            _split_endpoint(node, 1883)  # raises with what is wrong
        return nodes

    def endpoints(self) -> list[tuple[str, int]]:
        """Every node to connect to, in order: `host`, then `failover`."""
        return [(self.host, self.port), *(_split_endpoint(n, self.port) for n in self.failover)]

    @model_validator(mode="after")
    def _one_password_source(self) -> BrokerConfig:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    def password(self) -> str | None:
        """The broker password, read from the environment or the password file."""
        if self.password_env is not None:
            return os.environ.get(self.password_env)
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return None


def _split_endpoint(node: str, default_port: int) -> tuple[str, int]:
    """("host", port) of "host", "host:port", "[v6]" or "[v6]:port"; ValueError if neither."""
    host, port = node.strip(), default_port
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            raise ValueError(f"{node!r}: an IPv6 address in brackets, then :port if any")
        host = host[1:end]
        if rest:
            port = _port(node, rest[1:])
    elif host.count(":") == 1:
        host, _, text = host.partition(":")
        port = _port(node, text)
    elif ":" in host:
        raise ValueError(f"{node!r}: put an IPv6 address in brackets: [{host}]:1883")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{node!r}: no host")
    return host, port


def _port(node: str, text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{node!r}: the port must be 1 to 65535")
    return int(text)


class StorageConfig(_Model):
    """The SQLite file that holds the outbox and the gateway's state."""

    path: Path
    outbox_max_rows: int = Field(default=100_000, ge=10)
    # Payload bytes the outbox may hold: rows alone would let large messages (EPCIS documents,
    # events) fill the disk. 256 MiB is 100,000 transactions with their EPCIS documents.
    outbox_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    outbox_alarm_ratio: float = Field(default=0.8, gt=0, lt=1)
    commit_batch: int = Field(default=100, ge=1, le=10_000)
    # Hourly counts of what was published (transactions, exceptions, events) for trends and
    # `gateway report`: kept this many days, older hours pruned at start.
    trend_days: int = Field(default=90, ge=1, le=3660)


class LoggingConfig(_Model):
    """Structured logs: JSON lines for a service, readable lines on a console."""

    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class LabelsConfig(_Model):
    """How the site's own labels look."""

    location_pattern: str = r"^[A-Z]{1,3}\d{0,3}(-[A-Z0-9]{1,4}){1,4}$"

    @field_validator("location_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from err
        return value


class _SerialLine(_Model):
    """A serial port, by path (prefer the stable /dev/serial/by-id/ names), and its framing."""

    port: str = Field(min_length=1)
    baudrate: int = Field(default=9600, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("stop bits must be 1, 1.5 or 2")
        return value


class SerialTransport(_SerialLine):
    """A serial port, by path (prefer the stable /dev/serial/by-id/ names)."""

    type: Literal["serial"]


class ScannerFraming(_Model):
    """Where one barcode ends and the next begins."""

    suffix: str = Field(default="CR", min_length=1)
    prefix: str = ""
    aim_symbology: bool = False
    max_length: int = Field(default=512, ge=16, le=65536)

    @property
    def suffix_bytes(self) -> bytes:
        """The terminator as bytes: a name (CR, LF, CRLF, TAB, ETX) or the literal string."""
        return SUFFIX_NAMES.get(self.suffix.upper(), self.suffix).encode("latin-1")


class BackoffConfig(_Model):
    """Capped, jittered restart delays for a failing device."""

    min_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=30.0, gt=0)


class BarcodeScannerDevice(_Model):
    """A serial barcode scanner on a forklift or at a station."""

    id: Identifier
    kind: Literal["barcode_scanner"]
    transport: SerialTransport
    # forklift: pallet label, then location label. station: a scanner fixed at `location`;
    # a pallet scanned there is moved there. receiving / shipping: a scanner at the dock door
    # `location`; what it scans is received against the door's ASN or checked against its
    # ship order.
    role: Literal["forklift", "station", "receiving", "shipping"] = "forklift"
    location: str | None = None
    framing: ScannerFraming = ScannerFraming()
    backoff: BackoffConfig = BackoffConfig()

    @model_validator(mode="after")
    def _station_has_location(self) -> BarcodeScannerDevice:
        if self.role != "forklift" and not self.location:
            raise ValueError(f"a scanner with role {self.role!r} needs its `location`")
        return self


class TcpTransport(_Model):
    """A TCP endpoint (LLRP readers listen on 5084)."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=5084, ge=1, le=65535)


class PortalAntennas(_Model):
    """Which antennas of the reader face the dock (outside) and the warehouse (inside)."""

    outside: list[int] = Field(min_length=1)
    inside: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _disjoint(self) -> PortalAntennas:
        both = set(self.outside) & set(self.inside)
        if both:
            raise ValueError(f"antennas {sorted(both)} cannot face both outside and inside")
        for antenna in (*self.outside, *self.inside):
            if not 1 <= antenna <= 64:
                raise ValueError(f"antenna {antenna} is out of range 1..64")
        return self


class PortalTuning(_Model):
    """How the door turns reads into passes; the defaults suit a 3-4 m dock door."""

    min_reads: int = Field(default=2, ge=1)
    window_s: float = Field(default=1.0, gt=0)
    depart_after_s: float = Field(default=1.5, gt=0)
    join_gap_s: float = Field(default=1.0, gt=0)
    static_after_s: float = Field(default=10.0, gt=0)
    min_separation_s: float = Field(default=0.05, ge=0)
    min_peak_rssi: int | None = Field(default=-66, ge=-128, le=0)


class ZoneTuning(_Model):
    """How sure the zone tracking must be (gateway.rules.zones.ZoneSettings)."""

    min_reads: int = Field(default=2, ge=1)
    window_s: float = Field(default=2.0, gt=0)
    hysteresis_db: float = Field(default=4.0, ge=0)
    dwell_s: float = Field(default=3.0, ge=0)
    depart_after_s: float = Field(default=30.0, gt=0)
    silence_s: float = Field(default=5.0, gt=0)
    min_rssi: float | None = -65.0  # dBm a zone must hear a tag at to place it there
    max_tags: int = Field(default=100_000, ge=1)


class ReaderGpi(_Model):
    """A presence sensor (light barrier, radar) wired to one of the reader's GPI ports.

    The reader reads only while the port is in its `active` state (True: high), and `hold_s`
    after it leaves it, so that a pallet that has just crossed is still heard from inside.
    """

    port: int = Field(ge=1, le=65535)  # LLRP numbers GPI ports from 1; the reader says how many
    active: bool = True
    hold_s: float = Field(default=2.0, ge=0, le=3600)


class ReaderGpo(_Model):
    """A stack light or horn wired to one of the reader's GPO ports: on while an alarm is
    active at the reader's door, off `hold_s` after the latest one (as a `signal_light`)."""

    port: int = Field(ge=1, le=65535)
    hold_s: float = Field(default=10.0, gt=0, le=86_400)


class LlrpReaderDevice(_Model):
    """An LLRP RFID reader at a dock door (a portal), and/or covering storage zones."""

    id: Identifier
    kind: Literal["llrp_reader"]
    transport: TcpTransport
    door: Identifier | None = None  # a portal: with `antennas`
    # receiving: inbound passes are received against the door's ASN; shipping: outbound passes
    # are checked against its ship order; both: each direction does its own.
    role: Literal["receiving", "shipping", "both"] = "receiving"
    antennas: PortalAntennas | None = None
    # Storage zones: a location name -> its antennas (gateway.rules.zones).
    zones: dict[Identifier, list[int]] = Field(default_factory=dict)
    zone_tuning: ZoneTuning = ZoneTuning()
    tx_power_dbm: float | None = Field(default=None, description="None: the reader's maximum")
    mode_identifier: int | None = None
    # Gen2 session 1: a tag answers again within seconds, so the portal sees it move; under
    # session 2 (single target) a tag read once stays quiet while it is powered.
    session: Literal[0, 1, 2, 3] = 1
    tag_population: int = Field(default=32, ge=1, le=65535)
    report_every_n_tags: int = Field(default=200, ge=1, le=65535)
    report_timeout_ms: int = Field(default=100, ge=10, le=60_000)
    keepalive_s: float = Field(default=5.0, gt=0, le=3600)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    portal: PortalTuning = PortalTuning()
    # None: read always. Else a presence sensor on a GPI port starts and stops the reading.
    gpi: ReaderGpi | None = None
    # None: none. Else a GPO port driven by alarms at the door (a light wired to the reader).
    gpo: ReaderGpo | None = None
    backoff: BackoffConfig = BackoffConfig()

    @model_validator(mode="after")
    def _portal_or_zones(self) -> LlrpReaderDevice:
        if (self.door is None) != (self.antennas is None):
            raise ValueError("a portal needs both door and antennas")
        if self.door is None and not self.zones:
            raise ValueError("a reader needs a door (with antennas) or zones")
        portal = set()
        if self.antennas is not None:
            portal = {*self.antennas.outside, *self.antennas.inside}
        seen: dict[int, str] = {}
        for zone, antennas in self.zones.items():
            if not antennas:
                raise ValueError(f"zone {zone} has no antenna")
            for antenna in antennas:
                if not 1 <= antenna <= 64:
                    raise ValueError(f"antenna {antenna} of zone {zone}: 1 to 64")
                if antenna in portal or antenna in seen:
                    raise ValueError(f"antenna {antenna} of zone {zone} is used twice")
                seen[antenna] = zone
        if self.gpi is not None and self.door is None:
            raise ValueError("gpi gates the reading at a door: the reader needs a door")
        if self.gpi is not None and self.zones:
            raise ValueError(
                "gpi stops all of the reader's reading, its zones' too: a reader with zones "
                "cannot have gpi"
            )
        if self.gpo is not None and self.door is None:
            raise ValueError("gpo is switched by alarms at the reader's door: it needs a door")
        return self

    @property
    def all_antennas(self) -> list[int]:
        """Every antenna the reader reads: the portal's and the zones'."""
        portal = [] if self.antennas is None else [*self.antennas.outside, *self.antennas.inside]
        return sorted({*portal, *(a for antennas in self.zones.values() for a in antennas)})


class WeighingTuning(_Model):
    """When a load on the scale counts as weighed."""

    min_load_kg: float = Field(default=5.0, gt=0)
    settle_samples: int = Field(default=5, ge=1)
    settle_tolerance_kg: float = Field(default=0.5, ge=0)
    zero_band_kg: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _band_below_load(self) -> WeighingTuning:
        if self.min_load_kg < self.zero_band_kg:
            raise ValueError("min_load_kg must not be below zero_band_kg")
        return self


class SicsTcpTransport(_Model):
    """An MT-SICS indicator's TCP server (the same CR LF lines as on its serial port)."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    # No default: indicators ship with different ports (set in their Ethernet or connections
    # menu), and a wrong guess would look like a dead scale.
    port: int = Field(ge=1, le=65535)


class SicsScaleDevice(_Model):
    """A scale speaking Mettler Toledo MT-SICS on a serial port or over TCP, at a door's station."""

    id: Identifier
    kind: Literal["sics_scale"]
    transport: Annotated[SerialTransport | SicsTcpTransport, Field(discriminator="type")]
    door: Identifier  # its weighings go with this door's next receive or ship transaction
    # SI: poll every poll_s (stable or moving weights); S: poll, stable weights only; SIR: the
    # indicator streams SI answers (no polling; a gap of timeout_s is a failure).
    command: Literal["SI", "S", "SIR"] = "SI"
    poll_s: float = Field(default=0.2, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    weighing: WeighingTuning = WeighingTuning()
    backoff: BackoffConfig = BackoffConfig()


class ModbusTcpTransport(_Model):
    """Modbus TCP: the indicator's (or gateway's) address; port 502 by default."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuTransport(_SerialLine):
    """Modbus RTU on a serial line (RS-485 or RS-232): the serial settings of the indicator."""

    type: Literal["rtu"]


WordOrder = Literal["big", "little"]


class WeightRegister(_Model):
    """Where the weight is and how it is encoded.

    `word_order` "big" puts the high 16-bit word first (the Modbus norm, "ABCD"); "little" the
    low word first ("CDAB"). `byte_order` "little" swaps the two bytes inside every register
    ("BADC" with big word order, "DCBA" with little). The value read is multiplied by `scale`
    (0.01 for a register holding hundredths) and is in `unit`.
    """

    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "int32"
    word_order: WordOrder = "big"
    byte_order: WordOrder = "big"
    scale: float = Field(default=1.0, allow_inf_nan=False)
    unit: Literal["kg", "g", "t", "lb"] = "kg"

    @model_validator(mode="after")
    def _fits(self) -> WeightRegister:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + (1 if self.type.endswith("16") else 2) > 65536:
            raise ValueError(f"a {self.type} at {self.address} runs past register 65535")
        return self


class StatusRegister(_Model):
    """A 16-bit status word and which bit (0 = least significant) means what.

    A bit left out is not reported by this indicator. With neither `stable` nor `motion`, a
    weighing is taken when readings settle (see `weighing`).
    """

    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    stable: int | None = Field(default=None, ge=0, le=15)
    motion: int | None = Field(default=None, ge=0, le=15)
    overload: int | None = Field(default=None, ge=0, le=15)
    underload: int | None = Field(default=None, ge=0, le=15)
    zero: int | None = Field(default=None, ge=0, le=15)

    @model_validator(mode="after")
    def _distinct(self) -> StatusRegister:
        bits = [b for b in self.bits().values() if b is not None]
        if len(bits) != len(set(bits)):
            raise ValueError(f"two status flags share a bit: {self.bits()}")
        return self

    def bits(self) -> dict[str, int | None]:
        """Flag name -> bit, for every flag."""
        return {
            "stable": self.stable,
            "motion": self.motion,
            "overload": self.overload,
            "underload": self.underload,
            "zero": self.zero,
        }


class ModbusScaleDevice(_Model):
    """A scale indicator read over Modbus TCP or RTU, at a door's station."""

    id: Identifier
    kind: Literal["modbus_scale"]
    transport: Annotated[ModbusTcpTransport | ModbusRtuTransport, Field(discriminator="type")]
    unit_id: int = Field(default=1, ge=0, le=247)
    door: Identifier  # its weighings go with this door's next receive or ship transaction
    weight: WeightRegister
    status: StatusRegister | None = None
    poll_s: float = Field(default=0.2, gt=0)
    timeout_s: float = Field(default=1.0, gt=0)
    # Polls in a row without an answer (timeouts) before the connection counts as lost.
    max_missed: int = Field(default=3, ge=1)
    weighing: WeighingTuning = WeighingTuning()
    backoff: BackoffConfig = BackoffConfig()

    @model_validator(mode="after")
    def _answerable_unit(self) -> ModbusScaleDevice:
        # Unit 0 is the RTU broadcast address: every indicator on the line obeys, none answers.
        if self.unit_id == 0 and isinstance(self.transport, ModbusRtuTransport):
            raise ValueError(
                "unit_id 0 is the Modbus RTU broadcast address, which no device answers:"
                " give the indicator's own address (1 to 247)"
            )
        return self


class SignalLightDevice(_Model):
    """A stack light or horn on a Modbus TCP coil, switched on by alarms at its doors."""

    id: Identifier
    kind: Literal["signal_light"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit: int = Field(default=1, ge=0, le=255)
    coil: int = Field(default=0, ge=0, le=65535)
    doors: list[Identifier] = Field(min_length=1)
    hold_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    refresh_s: float | None = Field(default=5.0, gt=0)
    backoff: BackoffConfig = BackoffConfig()


class ZplPrinterDevice(_Model):
    """A label printer at a pack station, taking ZPL on a raw TCP port (9100)."""

    id: Identifier
    kind: Literal["zpl_printer"]
    station: Identifier  # the pack station whose carton labels it prints
    host: str = Field(min_length=1)
    port: int = Field(default=9100, ge=1, le=65535)
    timeout_s: float = Field(default=5.0, gt=0)
    backoff: BackoffConfig = BackoffConfig()


DeviceConfig = Annotated[
    BarcodeScannerDevice
    | LlrpReaderDevice
    | SignalLightDevice
    | SicsScaleDevice
    | ModbusScaleDevice
    | ZplPrinterDevice,
    Field(discriminator="kind"),
]


class MoveRuleConfig(_Model):
    """The forklift move: pallet label, then location label, within a timeout."""

    timeout_s: float = Field(default=60.0, gt=0)
    repeat_window_s: float = Field(default=2.0, ge=0)
    # Pallet locations kept in memory (the most recently moved); others are looked up in
    # SQLite when scanned. About 300 bytes each: 50,000 (15 MB) covers a large building's
    # pallet positions.
    cached_pallets: int = Field(default=50_000, ge=1, le=10_000_000)


class DebugConfig(_Model):
    """Raw output for commissioning a site: rate-limited, QoS 0, not part of the contract."""

    passes: bool = False
    max_per_s: float = Field(default=10.0, gt=0)


class DockRuleConfig(_Model):
    """Receiving and shipping."""

    idle_close_s: float = Field(default=1800.0, gt=0)
    # An item is never received (or shipped) twice within this many days of its receipt's
    # close; older history is pruned at start so that the ledger stays bounded.
    ledger_retention_days: float = Field(default=90.0, gt=0)
    # A pallet's weighing is compared with product unit weights x items + this tare, within
    # the larger of the absolute and the relative tolerance.
    pallet_tare_kg: float = Field(default=25.0, ge=0)
    weight_abs_tolerance_kg: float = Field(default=2.0, ge=0)
    weight_rel_tolerance: float = Field(default=0.02, ge=0, lt=1)
    weigh_window_s: float = Field(default=120.0, gt=0)


class EpcisConfig(_Model):
    """GS1 EPCIS 2.0 events for receive, ship and move, on `gw/{site}/{gateway}/epcis`."""

    enabled: bool = False
    read_point_base: str = "urn:epc:id:sgln:0000000.00000"
    biz_location_base: str = "urn:epc:id:sgln:0000000.00000"
    company_prefix_length: int = Field(default=7, ge=6, le=12)
    # The site's IANA time zone: each event's eventTimeZoneOffset (times stay in UTC).
    time_zone: str = "UTC"
    # Company prefix lengths by leading digits, as a last resort: an SSCC or GTIN read from a
    # tag takes the tag's, then GS1's table decides, then these, then company_prefix_length.
    prefix_lengths: dict[Annotated[str, Field(pattern=r"^\d{1,12}$")], int] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _valid_identifiers(self) -> EpcisConfig:
        from gateway.wire.epcis import EpcisSettings

        if self.enabled:
            EpcisSettings(
                read_point_base=self.read_point_base,
                biz_location_base=self.biz_location_base,
                company_prefix_length=self.company_prefix_length,
                time_zone=self.time_zone,
                prefix_lengths=tuple(self.prefix_lengths.items()),
            )
        return self


class Vda5050Config(_Model):
    """Robots' VDA 5050 state, observed to confirm picks and drops (2.x and 3.x).

    The gateway subscribes to `{interface}/+/+/+/state` and `.../connection`. A robot's
    `serialNumber` is its robot id in the task API; `nodes` maps node ids to location ids
    (a node not listed is taken to be the location of the same id).
    """

    interface: str = Field(default="uagv", min_length=1, pattern=r"^[^/+#]+$")
    nodes: dict[str, str] = Field(default_factory=dict)


class AgvConfig(_Model):
    """AGV transport tasks: the queue fleet controllers lease from, and putaway from receipts."""

    enabled: bool = False
    # The site's task board: this gateway takes the WMS tasks that name no `gateway` and no
    # zone of `zone_boards` (one gateway of a site has it). Tasks naming a gateway go to that
    # one only.
    task_board: bool = True
    # Task boards per zone, the same on every gateway of the site: a WMS task naming a `zone`
    # listed here goes to that zone's gateway (zone -> gateway id).
    zone_boards: dict[Identifier, Identifier] = Field(default_factory=dict, max_length=1000)
    # The task board also puts away what the site's other gateways receive (their
    # `tx/receive`, at doors in its layout): they need no AGV config of their own.
    site_putaway: bool = False
    lease_s: float = Field(default=120.0, gt=0, le=86_400)
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Moves this recent count for the ABC velocity class of a product.
    velocity_window_days: float = Field(default=30.0, gt=0)
    # Finished tasks are kept (for late repeats and for the record) this long.
    finished_retention_days: float = Field(default=30.0, gt=0)
    # The stock projection's hard cap, above the building's capacity (see gateway.rules.stock):
    # past it the pallet moved least recently is forgotten. At start the most recent are loaded.
    stock_max_pallets: int = Field(default=200_000, ge=1, le=10_000_000)
    # The site plan putaway works from; no layout: no putaway tasks from receipts (tasks from
    # the WMS still run).
    layout: SiteLayout | None = None
    vda5050: Vda5050Config | None = None


class RulesConfig(_Model):
    """Parameters of the rules engine."""

    move: MoveRuleConfig = MoveRuleConfig()
    dock: DockRuleConfig = DockRuleConfig()
    queue_size: int = Field(default=1024, ge=1, le=1_000_000)


# Reference data limits per kind: (max_count, max_bytes). `max_count` bounds the records the
# gateway holds, in memory and in SQLite (every one is loaded at start); `max_bytes` bounds
# one message's payload, below the hard ceiling of 1 MiB (`wire.refdata.MAX_PAYLOAD_BYTES`).
# - asn: 20,000 of up to 1 MiB. A busy DC receives a few hundred trucks a day and the WMS
#   keeps an ASN retained from its announcement to the receipt's close: weeks of receipts.
#   A truck of 33 pallets with an EPC per case is about 100 kB; 1 MiB is the ceiling.
# - shipment: 5,000 of up to 1 MiB. Ship orders live for days, not weeks; the largest list
#   tens of thousands of SSCCs (47,000 fit in 1 MiB).
# - product: 200,000 of up to 64 KiB. The item master of a large DC is 10,000 to 100,000
#   SKUs; a product's schema caps every field (under 8 kB even pretty-printed).
# - location: 100,000 of up to 16 KiB. The pallet places, doors and lanes of a large
#   building; a location is about 100 bytes.
# The worst case is count x bytes (ASNs: 20 GB): set `max_bytes` to what the WMS really sends.
REFDATA_DEFAULTS: dict[str, tuple[int, int]] = {
    "asn": (20_000, 1024 * 1024),
    "shipment": (5_000, 1024 * 1024),
    "product": (200_000, 64 * 1024),
    "location": (100_000, 16 * 1024),
}


class RefDataLimit(_Model):
    """How many records of one kind the gateway holds, and how large one message may be.

    A new record beyond `max_count` is not taken (an alarm); a larger payload than
    `max_bytes` is rejected unread.
    """

    max_count: int = Field(ge=1, le=10_000_000)
    max_bytes: int = Field(ge=1024)

    @field_validator("max_bytes")
    @classmethod
    def _under_the_ceiling(cls, value: int) -> int:
        if value > REFDATA_MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"{value:,} bytes is above the gateway's hard ceiling of "
                f"{REFDATA_MAX_PAYLOAD_BYTES:,} bytes per reference data message"
            )
        return value


def _refdata_default(kind: str) -> RefDataLimit:
    count, size = REFDATA_DEFAULTS[kind]
    return RefDataLimit(max_count=count, max_bytes=size)


class RefDataConfig(_Model):
    """Limits of the WMS's reference data, per kind (see `REFDATA_DEFAULTS`); a kind's table
    may give one of its keys, the other keeps that kind's default."""

    asn: RefDataLimit = _refdata_default("asn")
    shipment: RefDataLimit = _refdata_default("shipment")
    product: RefDataLimit = _refdata_default("product")
    location: RefDataLimit = _refdata_default("location")

    @model_validator(mode="before")
    @classmethod
    def _defaults_per_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for kind, (count, size) in REFDATA_DEFAULTS.items():
            given = out.get(kind)
            if isinstance(given, dict):
                out[kind] = {"max_count": count, "max_bytes": size, **given}
        return out

    def by_kind(self) -> dict[str, RefDataLimit]:
        """Each kind (as in its topic, `wms/{site}/{kind}/...`) and its limits."""
        return {kind: getattr(self, kind) for kind in REFDATA_DEFAULTS}


class StateConfig(_Model):
    """The live state on retained topics `gw/{site}/{gateway}/state/...` (gateway.ops.state)."""

    enabled: bool = True
    # The most pallets whose location is loaded at start (the most recently moved).
    max_pallets: int = Field(default=200_000, ge=1)
    # A site of several gateways: read the others' `state/location/+` too; a pallet one of
    # them put somewhere later than this gateway last did is there (docs/site.md).
    follow_site: bool = False


class HttpTlsConfig(_Model):
    """HTTPS for the HTTP endpoint. Paths are relative to the config file."""

    cert_file: Path  # the server's certificate chain (PEM)
    key_file: Path  # its private key (PEM)
    # Clients must present a certificate issued by this CA (PEM): mutual TLS. Unset: any
    # client may connect (then a password is still needed beyond localhost).
    client_ca_file: Path | None = None


class HttpConfig(_Model):
    """The HTTP endpoint: /metrics (Prometheus), /healthz and /readyz (gateway.ops.http)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: any free port
    # HTTP basic auth (user `gateway`), or client certificates (`tls.client_ca_file`): one of
    # them is required to listen on anything but localhost.
    password: str | None = Field(default=None, min_length=12)
    alive_s: float = Field(default=30.0, gt=0, le=3600)  # rules loop silent longer: not alive
    tls: HttpTlsConfig | None = None  # HTTPS

    @model_validator(mode="after")
    def _password_off_localhost(self) -> HttpConfig:
        certificates = self.tls is not None and self.tls.client_ca_file is not None
        if self.enabled and not _loopback(self.host) and self.password is None and not certificates:
            raise ValueError(
                f"listening on {self.host!r} (not localhost) needs a password (http.password, "
                "at least 12 characters) or client certificates (http.tls.client_ca_file): "
                "the status it serves is the site's"
            )
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PackingConfig(_Model):
    """Scan-verified packing at pack stations (gateway.rules.packing), with handhelds: the
    SSCC range cartons are given (extension digit, GS1 company prefix, serials)."""

    enabled: bool = False
    company_prefix: str = Field(default="0614141", pattern=r"^\d{6,12}$")
    extension: int = Field(default=0, ge=0, le=9)
    first_serial: int = Field(default=1, ge=0)
    last_serial: int = Field(default=999_999, ge=0)

    @model_validator(mode="after")
    def _range(self) -> PackingConfig:
        room = 16 - len(self.company_prefix)
        if not self.first_serial <= self.last_serial < 10**room:
            raise ValueError(
                f"first_serial <= last_serial < 10^{room} (the serial reference's digits "
                f"beside a {len(self.company_prefix)}-digit prefix)"
            )
        return self


class CountsConfig(_Model):
    """Cycle counts (gateway.rules.counts): opened by the WMS (`cmd/count`) or by a handheld's
    RFID sweep."""

    enabled: bool = True
    timeout_s: float = Field(default=3600.0, gt=0, le=604_800)  # closed then, if not before
    max_open: int = Field(default=100, ge=1, le=10_000)
    max_seen: int = Field(default=100_000, ge=1, le=10_000_000)  # things noted per count
    keep_closed: int = Field(default=10_000, ge=1, le=1_000_000)  # ids never counted twice


class HandheldHttpConfig(_Model):
    """Handheld batches over HTTP: `POST /handheld/scans` with a terminal's bearer token."""

    enabled: bool = False
    host: str = "0.0.0.0"  # handhelds come over the site's Wi-Fi  # noqa: S104
    port: int = Field(default=9109, ge=0, le=65535)
    tls: HttpTlsConfig | None = None  # HTTPS (client certificates: `client_ca_file`)


class HandheldConfig(_Model):
    """Handheld terminals (gateway.rules.handheld): MQTT `handheld/scans`, and HTTP."""

    enabled: bool = False
    reorder_wait_s: float = Field(default=10.0, ge=0, le=3600)  # a scan waits for those before it
    replay_window_days: float = Field(default=7.0, gt=0, le=365)  # results remembered this long
    # The reason codes a clerk may give when reporting damaged or missing items.
    damage_reasons: list[str] = Field(
        default_factory=lambda: ["crushed", "wet", "torn", "pallet_broken", "leaking"],
        min_length=1,
    )
    short_reasons: list[str] = Field(
        default_factory=lambda: ["not_shipped", "missing_on_pallet", "count_error"], min_length=1
    )
    # terminal id -> its HTTP bearer token (at least 16 characters); a batch must name the
    # terminal its token belongs to.
    tokens: dict[str, str] = Field(default_factory=dict)
    http: HandheldHttpConfig = HandheldHttpConfig()

    @field_validator("tokens")
    @classmethod
    def _long_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        short = sorted(t for t, token in tokens.items() if len(token) < 16)
        if short:
            raise ValueError(f"tokens of at least 16 characters, not for {', '.join(short)}")
        if len(set(tokens.values())) != len(tokens):
            raise ValueError("two terminals have the same token")
        return tokens

    @model_validator(mode="after")
    def _http_needs_tokens(self) -> HandheldConfig:
        if self.enabled and self.http.enabled and not self.tokens:
            raise ValueError("handheld.http needs handheld.tokens: one per terminal")
        return self


class GatewayConfig(_Model):
    """The whole site configuration."""

    gateway: GatewaySection
    broker: BrokerConfig
    storage: StorageConfig
    logging: LoggingConfig = LoggingConfig()
    labels: LabelsConfig = LabelsConfig()
    rules: RulesConfig = RulesConfig()
    debug: DebugConfig = DebugConfig()
    epcis: EpcisConfig = EpcisConfig()
    agv: AgvConfig = AgvConfig()
    refdata: RefDataConfig = RefDataConfig()
    http: HttpConfig = HttpConfig()
    state: StateConfig = StateConfig()
    handheld: HandheldConfig = HandheldConfig()
    packing: PackingConfig = PackingConfig()
    counts: CountsConfig = CountsConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_printer_per_station(self) -> GatewayConfig:
        stations = [d.station for d in self.devices if isinstance(d, ZplPrinterDevice)]
        twice = sorted({s for s in stations if stations.count(s) > 1})
        if twice:
            raise ValueError(f"stations with two printers (each label would print twice): {twice}")
        return self

    @model_validator(mode="after")
    def _devices_at_own_doors(self) -> GatewayConfig:
        owned = self.gateway.doors
        if owned is None:
            return self
        for device in self.devices:
            door = getattr(device, "door", None) or (
                getattr(device, "location", None)
                if getattr(device, "role", None) in ("receiving", "shipping")
                else None
            )
            if door is not None and door not in owned:
                raise ValueError(
                    f"device {device.id} is at door {door}, which is not one of gateway.doors"
                )
        return self

    @model_validator(mode="after")
    def _unique_device_ids(self) -> GatewayConfig:
        seen: set[str] = set()
        for device in self.devices:
            if device.id in seen:
                raise ValueError(f"device id {device.id!r} is used twice")
            seen.add(device.id)
        doors = [d.door for d in self.devices if isinstance(d, LlrpReaderDevice) and d.door]
        for door in doors:
            if doors.count(door) > 1:
                raise ValueError(f"door {door!r} has more than one reader")
        return self


class ConfigError(Exception):
    """The configuration could not be loaded; `errors` has one line per problem."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.path = path
        self.errors = errors


def load_config(path: str | Path) -> GatewayConfig:
    """Read, validate and resolve the TOML file at `path`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(path, [f"{path}: cannot read: {err.strerror or err}"]) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, [f"{path}: not valid TOML: {err}"]) from err
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> GatewayConfig:
    """Validate an already parsed document; relative paths are taken from `path`'s folder."""
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(path, [_describe(path, e) for e in err.errors()]) from err
    config = _resolve_paths(config, path.parent)
    problems = _check_environment(config, path)
    if problems:
        raise ConfigError(path, problems)
    return config


def _describe(path: Path, error: Any) -> str:
    key = _key(error["loc"])
    if error["type"] == "missing":
        what = "required key is missing"
    elif error["type"] == "extra_forbidden":
        what = "unknown key (not allowed here; check the spelling)"
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found") and key.endswith(
        "transport"
    ):
        key += ".type"
        ctx = error.get("ctx", {})
        if "tag" in ctx:
            what = f"unknown transport type {ctx['tag']!r}; expected one of: {ctx['expected_tags']}"
        else:
            what = "required key is missing"
    elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        key += ".kind"
        tag = error.get("ctx", {}).get("tag")
        expected = ", ".join(sorted(_DEVICE_KINDS))
        what = f"unknown device kind {tag!r}; expected one of: {expected}"
    elif isinstance(error.get("input"), dict | list):
        what = error["msg"]
    else:
        what = f"{error['msg']} (got {error.get('input')!r})"
    return f"{path}: {key or '(top level)'}: {what}"


def _key(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and part in _DEVICE_KINDS:
            continue  # the discriminator tag pydantic inserts after a list index
        elif i > 0 and loc[i - 1] == "transport" and part in _TRANSPORT_TYPES:
            continue  # the same, after a transport that can be of several types
        else:
            out += f".{part}" if out else str(part)
    return out


_DEVICE_KINDS = {"barcode_scanner", "llrp_reader", "signal_light", "sics_scale", "modbus_scale"}
_TRANSPORT_TYPES = {"serial", "tcp", "rtu"}


def _resolve_paths(config: GatewayConfig, base: Path) -> GatewayConfig:
    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    storage = config.storage.model_copy(update={"path": resolve(config.storage.path)})
    broker_update: dict[str, Any] = {"password_file": resolve(config.broker.password_file)}
    if config.broker.tls is not None:
        tls = config.broker.tls
        broker_update["tls"] = tls.model_copy(
            update={
                "ca_file": resolve(tls.ca_file),
                "cert_file": resolve(tls.cert_file),
                "key_file": resolve(tls.key_file),
            }
        )
    broker = config.broker.model_copy(update=broker_update)
    http = config.http
    if http.tls is not None:
        http_tls = http.tls.model_copy(
            update={
                "cert_file": resolve(http.tls.cert_file),
                "key_file": resolve(http.tls.key_file),
                "client_ca_file": resolve(http.tls.client_ca_file),
            }
        )
        http = http.model_copy(update={"tls": http_tls})
    return config.model_copy(update={"storage": storage, "broker": broker, "http": http})


def _check_environment(config: GatewayConfig, path: Path) -> list[str]:
    problems = []
    broker = config.broker
    if broker.password_env is not None and broker.password_env not in os.environ:
        problems.append(
            f"{path}: broker.password_env: environment variable {broker.password_env!r} is not set"
        )
    files = {"broker.password_file": broker.password_file}
    if broker.tls is not None:
        files |= {
            "broker.tls.ca_file": broker.tls.ca_file,
            "broker.tls.cert_file": broker.tls.cert_file,
            "broker.tls.key_file": broker.tls.key_file,
        }
    if config.http.enabled and config.http.tls is not None:
        tls = config.http.tls
        files |= {
            "http.tls.cert_file": tls.cert_file,
            "http.tls.key_file": tls.key_file,
            "http.tls.client_ca_file": tls.client_ca_file,
        }
    for key, file in files.items():
        if file is None or file.is_file():
            continue
        if key == "broker.password_file":
            # Not echoed: a password typed here by mistake must not end up in a log.
            problems.append(f"{path}: {key}: the file does not exist (its name is not shown)")
        else:
            problems.append(f"{path}: {key}: file {str(file)!r} does not exist")
    return problems


_LAYOUT = TypeAdapter(SiteLayout)


def parse_layout(raw: Any) -> SiteLayout:
    """A site layout from its config table (a dict); raises pydantic's `ValidationError`."""
    return _LAYOUT.validate_python(raw)
