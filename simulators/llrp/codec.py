"""LLRP 1.0.1 frames for the reader side, sans-IO: bytes in, frames out; values in, bytes out.

Every LLRP message starts with a 10-byte header::

    | 3 bits reserved | 3 bits version | 10 bits message type |   (16 bits)
    | message length in bytes, header included               |   (32 bits)
    | message id                                             |   (32 bits)

and its body is fixed fields followed by parameters. A parameter is either TLV (16 bits:
6 reserved + 10-bit type, 16-bit length including this 4-byte header, value) or, for the small
fixed-size fields of tag reports, TV (one byte: the high bit set + a 7-bit type, then a value
whose size the type implies). Everything is big-endian.

Nothing here does I/O. `decode_frame` never raises: a length that cannot be right comes back as
a `MalformedFrame`; the parsers of client requests raise `MalformedParameter` (a `ValueError`)
only, so a caller can answer with an error status.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "HEADER_LEN",
    "MAX_FRAME_LEN",
    "NEED_DATA",
    "ContentSelector",
    "Frame",
    "FrameDecoder",
    "GpiTrigger",
    "MalformedFrame",
    "MalformedParameter",
    "MessageType",
    "NeedData",
    "Param",
    "ParamType",
    "RFMode",
    "ROSpec",
    "ReaderCapabilities",
    "ReaderConfigChange",
    "ReportSpec",
    "StatusCode",
    "TagReport",
    "TagReportEncoder",
    "capabilities_response",
    "decode_frame",
    "decode_tag_reports",
    "encode_frame",
    "error_message",
    "gpi_event_notification",
    "keepalive",
    "parse_add_rospec",
    "parse_set_reader_config",
    "parse_spec_id",
    "reader_config_response",
    "reader_event_notification",
    "response_type",
    "ro_access_report",
    "split_params",
    "status_response",
    "tlv",
]

_HEADER = struct.Struct("!HII")
HEADER_LEN: Final = _HEADER.size  # 10
# A client request bigger than this is not LLRP from any client we know (an ADD_ROSPEC with
# many antennas and filters is a few hundred bytes): treat it as a broken length.
MAX_FRAME_LEN: Final = 1 << 20
_TLV = struct.Struct("!HH")
_TYPE_MASK = 0x3FF
_VERSION_1_0_1 = 1
_TV_FLAG = 0x80


class MessageType(enum.IntEnum):
    """LLRP message types (LLRP 1.0.1 section 16, table of message types)."""

    GET_READER_CAPABILITIES = 1
    GET_READER_CONFIG = 2
    SET_READER_CONFIG = 3
    CLOSE_CONNECTION_RESPONSE = 4
    GET_READER_CAPABILITIES_RESPONSE = 11
    GET_READER_CONFIG_RESPONSE = 12
    SET_READER_CONFIG_RESPONSE = 13
    CLOSE_CONNECTION = 14
    ADD_ROSPEC = 20
    DELETE_ROSPEC = 21
    START_ROSPEC = 22
    STOP_ROSPEC = 23
    ENABLE_ROSPEC = 24
    DISABLE_ROSPEC = 25
    GET_ROSPECS = 26
    ADD_ROSPEC_RESPONSE = 30
    DELETE_ROSPEC_RESPONSE = 31
    START_ROSPEC_RESPONSE = 32
    STOP_ROSPEC_RESPONSE = 33
    ENABLE_ROSPEC_RESPONSE = 34
    DISABLE_ROSPEC_RESPONSE = 35
    GET_ROSPECS_RESPONSE = 36
    ADD_ACCESSSPEC = 40
    DELETE_ACCESSSPEC = 41
    ENABLE_ACCESSSPEC = 42
    DISABLE_ACCESSSPEC = 43
    GET_ACCESSSPECS = 44
    ADD_ACCESSSPEC_RESPONSE = 50
    DELETE_ACCESSSPEC_RESPONSE = 51
    ENABLE_ACCESSSPEC_RESPONSE = 52
    DISABLE_ACCESSSPEC_RESPONSE = 53
    GET_ACCESSSPECS_RESPONSE = 54
    GET_REPORT = 60
    RO_ACCESS_REPORT = 61
    KEEPALIVE = 62
    READER_EVENT_NOTIFICATION = 63
    ENABLE_EVENTS_AND_REPORTS = 64
    KEEPALIVE_ACK = 72
    ERROR_MESSAGE = 100
    CUSTOM_MESSAGE = 1023


def response_type(request: int) -> int | None:
    """The response a reader sends to a request type, or None if the request has none.

    Requests and their responses are ten apart (GET_READER_CONFIG 2 -> 12, ADD_ROSPEC 20 -> 30),
    except CLOSE_CONNECTION (14 -> 4). KEEPALIVE_ACK, ENABLE_EVENTS_AND_REPORTS and GET_REPORT
    get no response.
    """
    if request == MessageType.CLOSE_CONNECTION:
        return MessageType.CLOSE_CONNECTION_RESPONSE
    if 1 <= request <= 3 or 20 <= request <= 26 or 40 <= request <= 44:
        return request + 10
    return None


class ParamType(enum.IntEnum):
    """TLV parameter types used by the simulator (LLRP 1.0.1 section 16.2)."""

    UTC_TIMESTAMP = 128
    GENERAL_DEVICE_CAPABILITIES = 137
    RECEIVE_SENSITIVITY_TABLE_ENTRY = 139
    PER_ANTENNA_AIR_PROTOCOL = 140
    GPIO_CAPABILITIES = 141
    LLRP_CAPABILITIES = 142
    REGULATORY_CAPABILITIES = 143
    UHF_BAND_CAPABILITIES = 144
    TRANSMIT_POWER_LEVEL_TABLE_ENTRY = 145
    FREQUENCY_INFORMATION = 146
    FREQUENCY_HOP_TABLE = 147
    RO_SPEC = 177
    RO_BOUNDARY_SPEC = 178
    RO_SPEC_START_TRIGGER = 179
    PERIODIC_TRIGGER_VALUE = 180
    GPI_TRIGGER_VALUE = 181
    RO_SPEC_STOP_TRIGGER = 182
    AI_SPEC = 183
    INVENTORY_PARAMETER_SPEC = 186
    LLRP_CONFIGURATION_STATE_VALUE = 217
    IDENTIFICATION = 218
    GPO_WRITE_DATA = 219
    KEEPALIVE_SPEC = 220
    ANTENNA_PROPERTIES = 221
    ANTENNA_CONFIGURATION = 222
    RF_RECEIVER = 223
    RF_TRANSMITTER = 224
    GPI_PORT_CURRENT_STATE = 225
    EVENTS_AND_REPORTS = 226
    RO_REPORT_SPEC = 237
    TAG_REPORT_CONTENT_SELECTOR = 238
    ACCESS_REPORT_SPEC = 239
    TAG_REPORT_DATA = 240
    EPC_DATA = 241
    READER_EVENT_NOTIFICATION_SPEC = 244
    EVENT_NOTIFICATION_STATE = 245
    READER_EVENT_NOTIFICATION_DATA = 246
    GPI_EVENT = 248
    READER_EXCEPTION_EVENT = 252
    CONNECTION_ATTEMPT_EVENT = 256
    CONNECTION_CLOSE_EVENT = 257
    LLRP_STATUS = 287
    C1G2_LLRP_CAPABILITIES = 327
    UHF_C1G2_RF_MODE_TABLE = 328
    UHF_C1G2_RF_MODE_TABLE_ENTRY = 329
    C1G2_EPC_MEMORY_SELECTOR = 348
    CUSTOM = 1023


class _TV(enum.IntEnum):
    """TV parameter types: the fixed-size fields of a TagReportData (LLRP 1.0.1 16.2.7.3)."""

    ANTENNA_ID = 1
    FIRST_SEEN_UTC = 2
    FIRST_SEEN_UPTIME = 3
    LAST_SEEN_UTC = 4
    LAST_SEEN_UPTIME = 5
    PEAK_RSSI = 6
    CHANNEL_INDEX = 7
    TAG_SEEN_COUNT = 8
    RO_SPEC_ID = 9
    INVENTORY_PARAMETER_SPEC_ID = 10
    C1G2_CRC = 11
    C1G2_PC = 12
    EPC_96 = 13
    SPEC_INDEX = 14
    CLIENT_REQUEST_OP_SPEC_RESULT = 15
    ACCESS_SPEC_ID = 16
    OP_SPEC_ID = 17
    C1G2_SINGULATION_DETAILS = 18
    C1G2_XPC_W1 = 19
    C1G2_XPC_W2 = 20


# A TV parameter carries no length: the receiver must know the value size of every TV type.
_TV_VALUE_LEN: Final[dict[int, int]] = {
    _TV.ANTENNA_ID: 2,
    _TV.FIRST_SEEN_UTC: 8,
    _TV.FIRST_SEEN_UPTIME: 8,
    _TV.LAST_SEEN_UTC: 8,
    _TV.LAST_SEEN_UPTIME: 8,
    _TV.PEAK_RSSI: 1,
    _TV.CHANNEL_INDEX: 2,
    _TV.TAG_SEEN_COUNT: 2,
    _TV.RO_SPEC_ID: 4,
    _TV.INVENTORY_PARAMETER_SPEC_ID: 2,
    _TV.C1G2_CRC: 2,
    _TV.C1G2_PC: 2,
    _TV.EPC_96: 12,
    _TV.SPEC_INDEX: 2,
    _TV.CLIENT_REQUEST_OP_SPEC_RESULT: 2,
    _TV.ACCESS_SPEC_ID: 4,
    _TV.OP_SPEC_ID: 2,
    _TV.C1G2_SINGULATION_DETAILS: 4,
    _TV.C1G2_XPC_W1: 2,
    _TV.C1G2_XPC_W2: 2,
}


class StatusCode(enum.IntEnum):
    """LLRPStatus codes (LLRP 1.0.1 section 14.1.1)."""

    SUCCESS = 0
    PARAMETER_ERROR = 100
    FIELD_ERROR = 101
    UNEXPECTED_PARAMETER = 102
    MISSING_PARAMETER = 103
    DUPLICATE_PARAMETER = 104
    OVERFLOW_PARAMETER = 105
    OVERFLOW_FIELD = 106
    UNKNOWN_PARAMETER = 107
    UNKNOWN_FIELD = 108
    UNSUPPORTED_MESSAGE = 109
    UNSUPPORTED_VERSION = 110
    UNSUPPORTED_PARAMETER = 111
    DEVICE_ERROR = 401


class ConnectionAttemptStatus(enum.IntEnum):
    """ConnectionAttemptEvent status (LLRP 1.0.1 section 16.2.7.6.10)."""

    SUCCESS = 0
    READER_INITIATED_CONNECTION_EXISTS = 1
    CLIENT_INITIATED_CONNECTION_EXISTS = 2
    OTHER_FAILURE = 3
    ANOTHER_CONNECTION_ATTEMPTED = 4


# -- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole LLRP message: its type, id and body (everything after the header)."""

    type: int
    id: int
    body: bytes
    version: int = _VERSION_1_0_1


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """Bytes that cannot be an LLRP message; the stream cannot be resynchronised after them."""

    reason: str
    data: bytes


class NeedData:
    """The buffer holds no whole message yet: feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


def encode_frame(msg_type: int, msg_id: int, body: bytes = b"", version: int = 1) -> bytes:
    """Frame `body` as an LLRP message (the header's length covers header and body)."""
    word = ((version & 0x7) << 10) | (msg_type & _TYPE_MASK)
    return _HEADER.pack(word, HEADER_LEN + len(body), msg_id & 0xFFFFFFFF) + body


def decode_frame(
    buffer: bytes | bytearray | memoryview,
) -> tuple[Frame | MalformedFrame | NeedData, int]:
    """Take the first message off `buffer`: (frame or NEED_DATA or malformed, bytes consumed).

    LLRP has no frame delimiter: only the length field says where the next message starts. A
    length shorter than the header or absurdly long means the stream is lost, so a
    `MalformedFrame` consumes the whole buffer. Never raises.
    """
    if len(buffer) < HEADER_LEN:
        return NEED_DATA, 0
    word, length, msg_id = _HEADER.unpack_from(buffer)
    if length < HEADER_LEN or length > MAX_FRAME_LEN:
        data = bytes(buffer[:64])
        reason = f"message length {length} is outside {HEADER_LEN}..{MAX_FRAME_LEN}"
        return MalformedFrame(reason, data), len(buffer)
    if len(buffer) < length:
        return NEED_DATA, 0
    frame = Frame(word & _TYPE_MASK, msg_id, bytes(buffer[HEADER_LEN:length]), (word >> 10) & 0x7)
    return frame, length


class FrameDecoder:
    """Splits a byte stream into LLRP messages: `feed` bytes, then iterate `frames()`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received that are not a whole message yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add bytes received from the peer."""
        self._buffer += data

    def next_event(self) -> Frame | MalformedFrame | NeedData:
        """The next whole message, a malformed one (the buffer is then dropped), or NEED_DATA."""
        event, consumed = decode_frame(self._buffer)
        del self._buffer[:consumed]
        return event

    def frames(self) -> list[Frame | MalformedFrame]:
        """Every whole message (or malformed stretch) in the buffer, in order."""
        out: list[Frame | MalformedFrame] = []
        while not isinstance(event := self.next_event(), NeedData):
            out.append(event)
        return out


# -- parameters --------------------------------------------------------------------------------


class MalformedParameter(ValueError):
    """A request's body does not parse: a length overruns, a field is missing or out of range."""


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: its type (TV types are 1..127, TLV types 128..1023) and value bytes."""

    type: int
    value: bytes


def tlv(param_type: int, value: bytes = b"") -> bytes:
    """A TLV parameter: type, length (header included), value."""
    return _TLV.pack(param_type & _TYPE_MASK, _TLV.size + len(value)) + value


def split_params(data: bytes) -> list[Param]:
    """Split a run of parameters (TV and TLV) into a list.

    Raises:
        MalformedParameter: a TLV length shorter than its header or past the end of `data`, or
            a TV type whose size is unknown (nothing after it can be found).
    """
    params: list[Param] = []
    pos, end = 0, len(data)
    while pos < end:
        first = data[pos]
        if first & _TV_FLAG:
            tv_type = first & 0x7F
            size = _TV_VALUE_LEN.get(tv_type)
            if size is None:
                raise MalformedParameter(f"unknown TV parameter type {tv_type} at byte {pos}")
            if pos + 1 + size > end:
                raise MalformedParameter(f"TV parameter {tv_type} truncated at byte {pos}")
            params.append(Param(tv_type, data[pos + 1 : pos + 1 + size]))
            pos += 1 + size
            continue
        if pos + _TLV.size > end:
            raise MalformedParameter(f"{end - pos} stray bytes at byte {pos}")
        ptype, length = _TLV.unpack_from(data, pos)
        if ptype & _TYPE_MASK < 128:  # types 1..127 are TV only
            raise MalformedParameter(f"TLV parameter with TV type {ptype & _TYPE_MASK}")
        if length < _TLV.size or pos + length > end:
            raise MalformedParameter(
                f"parameter {ptype & _TYPE_MASK} at byte {pos} claims {length} bytes, "
                f"{end - pos} left"
            )
        params.append(Param(ptype & _TYPE_MASK, data[pos + _TLV.size : pos + length]))
        pos += length
    return params


def _unpack(fmt: struct.Struct, value: bytes, what: str) -> tuple[int, ...]:
    if len(value) < fmt.size:
        raise MalformedParameter(f"{what} needs {fmt.size} bytes, got {len(value)}")
    return fmt.unpack_from(value)


_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U8_U16 = struct.Struct("!BH")
_U8_U32 = struct.Struct("!BI")
_ROSPEC_FIXED = struct.Struct("!IBB")  # ROSpecID, Priority, CurrentState
_GPI_TRIGGER = struct.Struct("!HBI")  # GPIPortNum, GPIEvent (bit 7), Timeout (ms)
_U16_U8 = struct.Struct("!HB")  # a port number and a flags byte (GPOWriteData, GPIEvent)
_GPI_STATE = struct.Struct("!HBB")  # GPIPortNum, GPIConfig (bit 7), GPIState
_IPS_FIXED = struct.Struct("!HB")  # InventoryParameterSpecID, ProtocolID
# ROSpecStartTriggerType 3 and ROSpecStopTriggerType 2 (LLRP 1.0.1 16.2.4.1.1.1, .2).
_TRIGGER_GPI = 3
_TRIGGER_GPI_WITH_TIMEOUT = 2


# -- what a client asks for --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContentSelector:
    """Which fields each TagReportData carries (TagReportContentSelector, LLRP 1.0.1 16.2.7.1).

    On the wire it is a 16-bit field, Enable* flags from the most significant bit down, plus an
    optional C1G2EPCMemorySelector (CRC and PC bits of the tag's EPC memory bank).
    """

    rospec_id: bool = False
    spec_index: bool = False
    inventory_parameter_spec_id: bool = False
    antenna_id: bool = True
    channel_index: bool = False
    peak_rssi: bool = True
    first_seen: bool = True
    last_seen: bool = True
    seen_count: bool = True
    access_spec_id: bool = False
    crc: bool = False
    pc_bits: bool = False

    _FLAG_ORDER = (
        "rospec_id",
        "spec_index",
        "inventory_parameter_spec_id",
        "antenna_id",
        "channel_index",
        "peak_rssi",
        "first_seen",
        "last_seen",
        "seen_count",
        "access_spec_id",
    )

    @classmethod
    def from_flags(cls, flags: int, memory_selector: int | None = None) -> ContentSelector:
        """Decode the 16-bit flags (bit 15 is EnableROSpecID) and the memory selector byte."""
        values = {name: bool(flags & (1 << (15 - i))) for i, name in enumerate(cls._FLAG_ORDER)}
        mem = memory_selector or 0
        return cls(**values, crc=bool(mem & 0x80), pc_bits=bool(mem & 0x40))

    @property
    def flags(self) -> int:
        """The 16-bit Enable* field as sent on the wire."""
        return sum(1 << (15 - i) for i, name in enumerate(self._FLAG_ORDER) if getattr(self, name))

    @property
    def memory_selector(self) -> int:
        """The C1G2EPCMemorySelector byte: EnableCRC (bit 7), EnablePCBits (bit 6)."""
        return (0x80 if self.crc else 0) | (0x40 if self.pc_bits else 0)


@dataclass(frozen=True, slots=True)
class ReportSpec:
    """ROReportSpec: when to report (trigger, N) and what each tag report carries."""

    trigger: int = 1  # Upon_N_Tags_Or_End_Of_AISpec
    n: int = 0  # 0: no limit on tags per report
    content: ContentSelector = field(default_factory=ContentSelector)


@dataclass(frozen=True, slots=True)
class GpiTrigger:
    """GPITriggerValue (LLRP 1.0.1 16.2.4.1.1.1.2): an edge on a GPI port that starts or stops
    a ROSpec. `event` is the level the port goes to (True: high). In a stop trigger, `timeout_ms`
    (0: none) stops the ROSpec that long after it started if the edge has not come by then."""

    port: int
    event: bool
    timeout_ms: int = 0


@dataclass(frozen=True, slots=True)
class ROSpec:
    """The parts of a Reader Operation spec the simulator acts on."""

    rospec_id: int
    priority: int
    current_state: int  # 0 Disabled, 1 Inactive, 2 Active: a client must add it Disabled
    start_trigger: int  # 0 Null (wait for START_ROSPEC), 1 Immediate (runs once enabled), 3 GPI
    antennas: tuple[int, ...]  # every AISpec's antenna ids; 0 means all antennas
    inventory_parameter_spec_id: int
    report: ReportSpec | None
    start_gpi: GpiTrigger | None = None  # with start trigger 3
    stop_trigger: int = 0  # 0 Null (until STOP_ROSPEC), 1 Duration, 2 GPI with a timeout
    stop_duration_ms: int = 0  # with stop trigger 1
    stop_gpi: GpiTrigger | None = None  # with stop trigger 2


@dataclass(frozen=True, slots=True)
class ReaderConfigChange:
    """What a SET_READER_CONFIG changes in the simulator (None: left as it was)."""

    reset_to_factory_defaults: bool
    keepalive_ms: int | None
    report: ReportSpec | None
    # ReaderEventNotificationSpec: event type (1 = GPIEvent) -> notify or not; None: not sent.
    events: dict[int, bool] | None = None
    gpo_writes: tuple[tuple[int, bool], ...] = ()  # GPOWriteData: (port, level), in order
    gpi_config: tuple[tuple[int, bool], ...] = ()  # GPIPortCurrentState: (port, enabled)


def parse_spec_id(body: bytes) -> int:
    """The 32-bit ROSpecID or AccessSpecID that starts ENABLE/START/STOP/DELETE_* bodies."""
    return _unpack(_U32, body, "spec id")[0]


def _parse_report_spec(value: bytes) -> ReportSpec:
    trigger, n = _unpack(_U8_U16, value, "ROReportSpec")
    content = ContentSelector()
    for param in split_params(value[_U8_U16.size :]):
        if param.type == ParamType.TAG_REPORT_CONTENT_SELECTOR:
            (flags,) = _unpack(_U16, param.value, "TagReportContentSelector")
            memory = None
            for sub in split_params(param.value[_U16.size :]):
                if sub.type == ParamType.C1G2_EPC_MEMORY_SELECTOR:
                    memory = _unpack(_U8, sub.value, "C1G2EPCMemorySelector")[0]
            content = ContentSelector.from_flags(flags, memory)
    return ReportSpec(trigger, n, content)


def _parse_ai_spec(value: bytes) -> tuple[list[int], int | None]:
    (count,) = _unpack(_U16, value, "AISpec")
    ids_end = _U16.size + 2 * count
    if len(value) < ids_end:
        raise MalformedParameter(f"AISpec lists {count} antennas but is {len(value)} bytes")
    antennas = [int.from_bytes(value[i : i + 2], "big") for i in range(_U16.size, ids_end, 2)]
    spec_id = None
    for param in split_params(value[ids_end:]):
        if param.type == ParamType.INVENTORY_PARAMETER_SPEC and spec_id is None:
            spec_id = _unpack(_IPS_FIXED, param.value, "InventoryParameterSpec")[0]
    return antennas, spec_id


def parse_add_rospec(body: bytes) -> ROSpec:
    """Parse an ADD_ROSPEC body: one ROSpec parameter.

    Raises:
        MalformedParameter: no ROSpec, or a part of it that does not parse.
    """
    rospecs = [p for p in split_params(body) if p.type == ParamType.RO_SPEC]
    if len(rospecs) != 1:
        raise MalformedParameter(f"ADD_ROSPEC carries {len(rospecs)} ROSpec parameters, not 1")
    value = rospecs[0].value
    rospec_id, priority, state = _unpack(_ROSPEC_FIXED, value, "ROSpec")
    start_trigger: int | None = None
    start_gpi: GpiTrigger | None = None
    stop_trigger, stop_duration_ms, stop_gpi = 0, 0, None
    antennas: list[int] = []
    spec_id: int | None = None
    report: ReportSpec | None = None
    ai_specs = 0
    for param in split_params(value[_ROSPEC_FIXED.size :]):
        if param.type == ParamType.RO_BOUNDARY_SPEC:
            for sub in split_params(param.value):
                if sub.type == ParamType.RO_SPEC_START_TRIGGER:
                    start_trigger = _unpack(_U8, sub.value, "ROSpecStartTrigger")[0]
                    start_gpi = _gpi_trigger(sub.value[_U8.size :])
                elif sub.type == ParamType.RO_SPEC_STOP_TRIGGER:
                    stop_trigger, stop_duration_ms = _unpack(
                        _U8_U32, sub.value, "ROSpecStopTrigger"
                    )
                    stop_gpi = _gpi_trigger(sub.value[_U8_U32.size :])
        elif param.type == ParamType.AI_SPEC:
            ai_specs += 1
            ai_antennas, ai_spec_id = _parse_ai_spec(param.value)
            antennas.extend(ai_antennas)
            spec_id = spec_id if spec_id is not None else ai_spec_id
        elif param.type == ParamType.RO_REPORT_SPEC:
            report = _parse_report_spec(param.value)
    if start_trigger is None:
        raise MalformedParameter("ROSpec has no ROBoundarySpec/ROSpecStartTrigger")
    if start_trigger == _TRIGGER_GPI and start_gpi is None:
        raise MalformedParameter("a GPI ROSpecStartTrigger without its GPITriggerValue")
    if stop_trigger == _TRIGGER_GPI_WITH_TIMEOUT and stop_gpi is None:
        raise MalformedParameter("a GPI ROSpecStopTrigger without its GPITriggerValue")
    if ai_specs == 0:
        raise MalformedParameter("ROSpec has no AISpec: nothing to inventory")
    return ROSpec(
        rospec_id=rospec_id,
        priority=priority,
        current_state=state,
        start_trigger=start_trigger,
        antennas=tuple(antennas),
        inventory_parameter_spec_id=spec_id if spec_id is not None else 1,
        report=report,
        start_gpi=start_gpi if start_trigger == _TRIGGER_GPI else None,
        stop_trigger=stop_trigger,
        stop_duration_ms=stop_duration_ms,
        stop_gpi=stop_gpi if stop_trigger == _TRIGGER_GPI_WITH_TIMEOUT else None,
    )


def _gpi_trigger(params: bytes) -> GpiTrigger | None:
    """The GPITriggerValue among a trigger's parameters, if there is one."""
    for param in split_params(params):
        if param.type == ParamType.GPI_TRIGGER_VALUE:
            port, flags, timeout_ms = _unpack(_GPI_TRIGGER, param.value, "GPITriggerValue")
            return GpiTrigger(port, bool(flags & 0x80), timeout_ms)
    return None


def parse_set_reader_config(body: bytes) -> ReaderConfigChange:
    """Parse a SET_READER_CONFIG body: a flags byte (bit 7: reset to factory defaults), params.

    Raises:
        MalformedParameter: the body does not parse.
    """
    (flags,) = _unpack(_U8, body, "SET_READER_CONFIG")
    keepalive_ms: int | None = None
    report: ReportSpec | None = None
    events: dict[int, bool] | None = None
    gpo_writes: list[tuple[int, bool]] = []
    gpi_config: list[tuple[int, bool]] = []
    for param in split_params(body[_U8.size :]):
        if param.type == ParamType.KEEPALIVE_SPEC:
            # KeepaliveTriggerType 1 = periodic, every TimeInterval ms; 0 = none.
            trigger, interval = _unpack(_U8_U32, param.value, "KeepaliveSpec")
            keepalive_ms = interval if trigger == 1 else 0
        elif param.type == ParamType.RO_REPORT_SPEC:
            report = _parse_report_spec(param.value)
        elif param.type == ParamType.READER_EVENT_NOTIFICATION_SPEC:
            events = {}
            for sub in split_params(param.value):
                if sub.type == ParamType.EVENT_NOTIFICATION_STATE:
                    event, state = _unpack(_U16_U8, sub.value, "EventNotificationState")
                    events[event] = bool(state & 0x80)
        elif param.type == ParamType.GPO_WRITE_DATA:
            port, data = _unpack(_U16_U8, param.value, "GPOWriteData")
            gpo_writes.append((port, bool(data & 0x80)))
        elif param.type == ParamType.GPI_PORT_CURRENT_STATE:
            port, config, _ = _unpack(_GPI_STATE, param.value, "GPIPortCurrentState")
            gpi_config.append((port, bool(config & 0x80)))
    return ReaderConfigChange(
        bool(flags & 0x80), keepalive_ms, report, events, tuple(gpo_writes), tuple(gpi_config)
    )


# -- what a reader sends -----------------------------------------------------------------------


def _status(code: int = StatusCode.SUCCESS, description: str = "") -> bytes:
    # LLRPStatus: StatusCode (16), ErrorDescription as a UTF-8 string with a 16-bit byte count.
    text = description.encode()[:0xFFFF]
    return tlv(ParamType.LLRP_STATUS, _U16.pack(code) + _U16.pack(len(text)) + text)


def status_response(
    msg_type: int, msg_id: int, code: int = StatusCode.SUCCESS, description: str = ""
) -> bytes:
    """A response whose body is only an LLRPStatus (most *_RESPONSE messages).

    A response carries the id of the request it answers.
    """
    return encode_frame(msg_type, msg_id, _status(code, description))


def error_message(msg_id: int, code: int, description: str) -> bytes:
    """ERROR_MESSAGE: the reader's answer to a message it cannot handle at all."""
    return encode_frame(MessageType.ERROR_MESSAGE, msg_id, _status(code, description))


def keepalive(msg_id: int) -> bytes:
    """KEEPALIVE: an empty message the client must acknowledge with KEEPALIVE_ACK."""
    return encode_frame(MessageType.KEEPALIVE, msg_id)


def reader_event_notification(
    msg_id: int,
    utc_us: int,
    status: int = ConnectionAttemptStatus.SUCCESS,
    *,
    closing: bool = False,
) -> bytes:
    """READER_EVENT_NOTIFICATION with a ConnectionAttemptEvent, or a ConnectionCloseEvent.

    A reader sends the ConnectionAttemptEvent unprompted as soon as a client connects; a client
    waits for a successful one before it sends anything.
    """
    event = (
        tlv(ParamType.CONNECTION_CLOSE_EVENT)
        if closing
        else tlv(ParamType.CONNECTION_ATTEMPT_EVENT, _U16.pack(status))
    )
    timestamp = tlv(ParamType.UTC_TIMESTAMP, struct.pack("!Q", utc_us))
    data = tlv(ParamType.READER_EVENT_NOTIFICATION_DATA, timestamp + event)
    return encode_frame(MessageType.READER_EVENT_NOTIFICATION, msg_id, data)


def reader_exception_notification(msg_id: int, utc_us: int, message: str) -> bytes:
    """READER_EVENT_NOTIFICATION with a ReaderExceptionEvent: the reader reports a fault."""
    text = message.encode("utf-8")
    event = tlv(ParamType.READER_EXCEPTION_EVENT, _U16.pack(len(text)) + text)
    timestamp = tlv(ParamType.UTC_TIMESTAMP, struct.pack("!Q", utc_us))
    data = tlv(ParamType.READER_EVENT_NOTIFICATION_DATA, timestamp + event)
    return encode_frame(MessageType.READER_EVENT_NOTIFICATION, msg_id, data)


def gpi_event_notification(msg_id: int, utc_us: int, port: int, level: bool) -> bytes:
    """READER_EVENT_NOTIFICATION with a GPIEvent: GPI `port` went to `level` (True: high)."""
    event = tlv(ParamType.GPI_EVENT, _U16_U8.pack(port, 0x80 if level else 0))
    timestamp = tlv(ParamType.UTC_TIMESTAMP, struct.pack("!Q", utc_us))
    data = tlv(ParamType.READER_EVENT_NOTIFICATION_DATA, timestamp + event)
    return encode_frame(MessageType.READER_EVENT_NOTIFICATION, msg_id, data)


@dataclass(frozen=True, slots=True)
class RFMode:
    """One entry of the UHF C1G2 RF mode table (LLRP 1.0.1 16.3.1.1.3)."""

    mode_id: int
    m: int  # tag-to-reader encoding: 0 FM0, 1 Miller 2, 2 Miller 4, 3 Miller 8
    forward_link: int  # 0 PR-ASK, 1 SSB-ASK, 2 DSB-ASK
    spectral_mask: int  # 1 single reader, 2 multi reader, 3 dense reader
    bdr_bps: int  # backscatter data rate
    pie: int  # reader-to-tag data-1/data-0 ratio, times 1000
    min_tari_ns: int
    max_tari_ns: int
    step_tari_ns: int = 0
    dr_64_3: bool = True  # divide ratio 64/3 (else 8)


# Modes like those of common fixed readers: the ids a client may ask for in a C1G2RFControl.
_DEFAULT_MODES = (
    RFMode(0, 0, 2, 1, 640_000, 1500, 6250, 6250),  # max throughput, FM0
    RFMode(1, 1, 2, 1, 320_000, 1500, 6250, 6250),  # hybrid, Miller 2
    RFMode(2, 2, 0, 3, 274_000, 2000, 20000, 20000),  # dense reader, Miller 4
    RFMode(3, 3, 0, 3, 170_600, 2000, 20000, 20000),  # dense reader, Miller 8
    RFMode(4, 2, 2, 2, 320_000, 1500, 7140, 7140),  # max Miller
)
# ETSI EN 302 208 (the four high-power channels in Europe), kHz.
_ETSI_CHANNELS_KHZ = (865_700, 866_300, 866_900, 867_500)


@dataclass(frozen=True, slots=True)
class ReaderCapabilities:
    """What GET_READER_CAPABILITIES_RESPONSE tells a client about the reader."""

    antennas: int = 4
    manufacturer: int = 0  # IANA private enterprise number; 0: none claimed
    model: int = 1
    firmware: str = "sim-1.0"
    # Transmit power table: index 1.. -> dBm x 100. 10.00 to 31.50 dBm in 0.25 dB steps.
    power_centi_dbm: tuple[int, ...] = tuple(range(1000, 3151, 25))
    modes: tuple[RFMode, ...] = _DEFAULT_MODES
    channels_khz: tuple[int, ...] = _ETSI_CHANNELS_KHZ
    country_code: int = 276  # ISO 3166 numeric: Germany
    communications_standard: int = 2  # 2 = ETSI 302 208
    gpis: int = 4  # general purpose inputs (GPIOCapabilities), numbered from 1
    gpos: int = 4  # general purpose outputs


def _general_device_capabilities(caps: ReaderCapabilities) -> bytes:
    firmware = caps.firmware.encode()
    # Flags: bit 15 CanSetAntennaProperties, bit 14 HasUTCClockCapability.
    fixed = struct.pack(
        "!HHIIH", caps.antennas, 0x4000, caps.manufacturer, caps.model, len(firmware)
    )
    # ReceiveSensitivityTableEntry: index 1 = 0 dB (the antenna's full sensitivity).
    sensitivity = tlv(ParamType.RECEIVE_SENSITIVITY_TABLE_ENTRY, struct.pack("!HH", 1, 0))
    gpio = tlv(ParamType.GPIO_CAPABILITIES, struct.pack("!HH", caps.gpis, caps.gpos))
    # PerAntennaAirProtocol: every antenna speaks one protocol, 1 = EPCglobal Class 1 Gen 2.
    air = b"".join(
        tlv(ParamType.PER_ANTENNA_AIR_PROTOCOL, struct.pack("!HHB", ant, 1, 1))
        for ant in range(1, caps.antennas + 1)
    )
    return tlv(ParamType.GENERAL_DEVICE_CAPABILITIES, fixed + firmware + sensitivity + air + gpio)


def _llrp_capabilities() -> bytes:
    # Flags (CanDoRFSurvey, ...) all clear; priority levels 0..7; 0 ms op spec timeout; then
    # MaxNumROSpec, MaxNumSpecsPerROSpec, MaxNumInventoryParameterSpecsPerAISpec,
    # MaxNumAccessSpec, MaxNumOpSpecsPerAccessSpec.
    return tlv(ParamType.LLRP_CAPABILITIES, struct.pack("!BBHIIIII", 0, 7, 0, 1, 32, 1, 508, 8))


def _regulatory_capabilities(caps: ReaderCapabilities) -> bytes:
    power = b"".join(
        tlv(ParamType.TRANSMIT_POWER_LEVEL_TABLE_ENTRY, struct.pack("!Hh", i, centi))
        for i, centi in enumerate(caps.power_centi_dbm, start=1)
    )
    hop_table = tlv(
        ParamType.FREQUENCY_HOP_TABLE,
        struct.pack(
            f"!BBH{len(caps.channels_khz)}I", 1, 0, len(caps.channels_khz), *caps.channels_khz
        ),
    )
    # FrequencyInformation: bit 7 of the flags byte = Hopping.
    frequency = tlv(ParamType.FREQUENCY_INFORMATION, b"\x80" + hop_table)
    modes = b"".join(
        tlv(
            ParamType.UHF_C1G2_RF_MODE_TABLE_ENTRY,
            struct.pack(
                "!IBBBBIIIII",
                mode.mode_id,
                0x80 if mode.dr_64_3 else 0,  # bit 7: DR; bit 6: EPC HAG T&C conformance
                mode.m,
                mode.forward_link,
                mode.spectral_mask,
                mode.bdr_bps,
                mode.pie,
                mode.min_tari_ns,
                mode.max_tari_ns,
                mode.step_tari_ns,
            ),
        )
        for mode in caps.modes
    )
    band = tlv(
        ParamType.UHF_BAND_CAPABILITIES,
        power + frequency + tlv(ParamType.UHF_C1G2_RF_MODE_TABLE, modes),
    )
    fixed = struct.pack("!HH", caps.country_code, caps.communications_standard)
    return tlv(ParamType.REGULATORY_CAPABILITIES, fixed + band)


def capabilities_response(msg_id: int, caps: ReaderCapabilities) -> bytes:
    """GET_READER_CAPABILITIES_RESPONSE: status, general device, LLRP, regulatory, C1G2."""
    body = (
        _status()
        + _general_device_capabilities(caps)
        + _llrp_capabilities()
        + _regulatory_capabilities(caps)
        # C1G2LLRPCapabilities: no block erase/write/permalock..., 2 select filters per query.
        + tlv(ParamType.C1G2_LLRP_CAPABILITIES, struct.pack("!BH", 0, 2))
    )
    return encode_frame(MessageType.GET_READER_CAPABILITIES_RESPONSE, msg_id, body)


def _report_spec(spec: ReportSpec) -> bytes:
    memory = tlv(ParamType.C1G2_EPC_MEMORY_SELECTOR, _U8.pack(spec.content.memory_selector))
    selector = tlv(ParamType.TAG_REPORT_CONTENT_SELECTOR, _U16.pack(spec.content.flags) + memory)
    return tlv(ParamType.RO_REPORT_SPEC, _U8_U16.pack(spec.trigger, spec.n) + selector)


def reader_config_response(
    msg_id: int,
    caps: ReaderCapabilities,
    *,
    keepalive_ms: int,
    report: ReportSpec,
    reader_id: bytes = b"\x00\x16\x25\x00\x00\x01",
    events: frozenset[int] = frozenset(),
    gpi: tuple[tuple[int, bool, bool], ...] = (),
    gpo: tuple[tuple[int, bool], ...] = (),
) -> bytes:
    """GET_READER_CONFIG_RESPONSE: the reader's identity and its current configuration.

    `events`: the event types notified; `gpi`: (port, enabled, level) per GPI port; `gpo`:
    (port, level) per GPO port.
    """
    identification = tlv(  # IDType 0 = MAC address, then a byte count and the id
        ParamType.IDENTIFICATION, struct.pack("!BH", 0, len(reader_id)) + reader_id
    )
    antennas = range(1, caps.antennas + 1)
    # AntennaProperties: flags (bit 7 = connected), antenna id, gain in dBi x 100.
    properties = b"".join(
        tlv(ParamType.ANTENNA_PROPERTIES, struct.pack("!BHh", 0x80, ant, 600)) for ant in antennas
    )
    top_power = len(caps.power_centi_dbm)
    configurations = b"".join(
        tlv(
            ParamType.ANTENNA_CONFIGURATION,
            _U16.pack(ant)
            + tlv(ParamType.RF_RECEIVER, _U16.pack(1))
            # RFTransmitter: HopTableID, ChannelIndex, TransmitPower (index into the table).
            + tlv(ParamType.RF_TRANSMITTER, struct.pack("!HHH", 1, 1, top_power)),
        )
        for ant in antennas
    )
    # EventNotificationState for event types 0..8: (type, flags) each, bit 7 = notified.
    notified = b"".join(
        tlv(ParamType.EVENT_NOTIFICATION_STATE, _U16_U8.pack(event, 0x80 if event in events else 0))
        for event in range(9)
    )
    # GPIPortCurrentState: GPIConfig (bit 7: enabled), GPIState 0 low, 1 high; GPOWriteData.
    gpi_states = b"".join(
        tlv(ParamType.GPI_PORT_CURRENT_STATE, _GPI_STATE.pack(port, 0x80 if on else 0, level))
        for port, on, level in gpi
    )
    gpo_states = b"".join(
        tlv(ParamType.GPO_WRITE_DATA, _U16_U8.pack(port, 0x80 if level else 0))
        for port, level in gpo
    )
    body = (
        _status()
        + identification
        + properties
        + configurations
        + tlv(ParamType.READER_EVENT_NOTIFICATION_SPEC, notified)
        + _report_spec(report)
        + tlv(ParamType.ACCESS_REPORT_SPEC, _U8.pack(0))  # report with the RO report
        + tlv(ParamType.LLRP_CONFIGURATION_STATE_VALUE, _U32.pack(0))
        + tlv(ParamType.KEEPALIVE_SPEC, _U8_U32.pack(1 if keepalive_ms else 0, keepalive_ms))
        + gpi_states
        + gpo_states
        + tlv(ParamType.EVENTS_AND_REPORTS, _U8.pack(0))
    )
    return encode_frame(MessageType.GET_READER_CONFIG_RESPONSE, msg_id, body)


# -- tag reports -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TagReport:
    """One TagReportData: a tag seen `seen_count` times on one antenna. Absent fields are None."""

    epc: bytes
    antenna: int | None = None
    peak_rssi: int | None = None
    channel: int | None = None
    first_seen_us: int | None = None
    last_seen_us: int | None = None
    seen_count: int | None = None
    rospec_id: int | None = None
    pc_bits: int | None = None
    crc: int | None = None


def _crc16_gen2(data: bytes) -> int:
    """The Gen2 CRC-16 (ISO/IEC 13239: poly 0x1021, preset 0xFFFF, ones' complement)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc ^ 0xFFFF


def _pc_word(epc: bytes) -> int:
    # Protocol control word: the EPC length in 16-bit words in its top five bits.
    return ((len(epc) + 1) // 2) << 11


class TagReportEncoder:
    """Encodes TagReportData parameters with the fields a client's ROSpec asked for.

    The EPC goes first: a 96-bit EPC as the 13-byte TV parameter EPC-96 (type 13), any other
    length as the TLV EPCData (type 241, a bit count then the bits). Then, in the order of the
    LLRP specification and as readers send them, the enabled TV fields: ROSpecID, SpecIndex,
    InventoryParameterSpecID, AntennaID, PeakRSSI, ChannelIndex, FirstSeenTimestampUTC,
    LastSeenTimestampUTC, TagSeenCount, C1G2PC, C1G2CRC, AccessSpecID.
    """

    def __init__(
        self, content: ContentSelector, *, rospec_id: int = 1, inventory_parameter_spec_id: int = 1
    ) -> None:
        self._content = content
        self._rospec_id = rospec_id
        self._ips_id = inventory_parameter_spec_id
        self._epc_cache: dict[bytes, tuple[bytes, bytes]] = {}
        fmt = "!"
        if content.rospec_id:
            fmt += "BI"
        if content.spec_index:
            fmt += "BH"
        if content.inventory_parameter_spec_id:
            fmt += "BH"
        if content.antenna_id:
            fmt += "BH"
        if content.peak_rssi:
            fmt += "Bb"
        if content.channel_index:
            fmt += "BH"
        if content.first_seen:
            fmt += "BQ"
        if content.last_seen:
            fmt += "BQ"
        if content.seen_count:
            fmt += "BH"
        self._fields = struct.Struct(fmt)
        self._access = struct.pack("!BI", _TV_FLAG | _TV.ACCESS_SPEC_ID, 0)

    def _epc_parts(self, epc: bytes) -> tuple[bytes, bytes]:
        parts = self._epc_cache.get(epc)
        if parts is None:
            if len(epc) == 12:
                epc_param = bytes([_TV_FLAG | _TV.EPC_96]) + epc
            else:
                epc_param = tlv(ParamType.EPC_DATA, _U16.pack(len(epc) * 8) + epc)
            air = b""  # AirProtocolTagData: the PC word and CRC stored on the tag
            pc = _pc_word(epc)
            if self._content.pc_bits:
                air += struct.pack("!BH", _TV_FLAG | _TV.C1G2_PC, pc)
            if self._content.crc:
                crc = _crc16_gen2(_U16.pack(pc) + epc)
                air += struct.pack("!BH", _TV_FLAG | _TV.C1G2_CRC, crc)
            if self._content.access_spec_id:
                air += self._access
            parts = (epc_param, air)
            if len(self._epc_cache) < 100_000:
                self._epc_cache[epc] = parts
        return parts

    def encode(
        self,
        epc: bytes,
        antenna: int,
        peak_rssi: int,
        channel: int,
        first_seen_us: int,
        last_seen_us: int,
        seen_count: int = 1,
    ) -> bytes:
        """One TagReportData parameter."""
        content = self._content
        values: list[int] = []
        if content.rospec_id:
            values += (_TV_FLAG | _TV.RO_SPEC_ID, self._rospec_id)
        if content.spec_index:
            values += (_TV_FLAG | _TV.SPEC_INDEX, 1)
        if content.inventory_parameter_spec_id:
            values += (_TV_FLAG | _TV.INVENTORY_PARAMETER_SPEC_ID, self._ips_id)
        if content.antenna_id:
            values += (_TV_FLAG | _TV.ANTENNA_ID, antenna)
        if content.peak_rssi:
            values += (_TV_FLAG | _TV.PEAK_RSSI, max(-128, min(127, peak_rssi)))
        if content.channel_index:
            values += (_TV_FLAG | _TV.CHANNEL_INDEX, channel)
        if content.first_seen:
            values += (_TV_FLAG | _TV.FIRST_SEEN_UTC, first_seen_us)
        if content.last_seen:
            values += (_TV_FLAG | _TV.LAST_SEEN_UTC, last_seen_us)
        if content.seen_count:
            values += (_TV_FLAG | _TV.TAG_SEEN_COUNT, min(seen_count, 0xFFFF))
        epc_param, air = self._epc_parts(epc)
        fields = self._fields.pack(*values)
        length = _TLV.size + len(epc_param) + len(fields) + len(air)
        return _TLV.pack(ParamType.TAG_REPORT_DATA, length) + epc_param + fields + air


def ro_access_report(msg_id: int, tag_report_data: Iterable[bytes]) -> bytes:
    """RO_ACCESS_REPORT: any number of TagReportData parameters, none for an empty report."""
    return encode_frame(MessageType.RO_ACCESS_REPORT, msg_id, b"".join(tag_report_data))


def decode_tag_reports(body: bytes) -> list[TagReport]:
    """Decode the TagReportData of an RO_ACCESS_REPORT body (the inverse of the encoder).

    Raises:
        MalformedParameter: a parameter does not parse, or a TagReportData has no EPC.
    """
    reports: list[TagReport] = []
    for param in split_params(body):
        if param.type != ParamType.TAG_REPORT_DATA:
            continue
        fields: dict[str, int] = {}
        epc: bytes | None = None
        for sub in split_params(param.value):
            if sub.type == _TV.EPC_96:
                epc = sub.value
            elif sub.type == ParamType.EPC_DATA:
                (bits,) = _unpack(_U16, sub.value, "EPCData")
                epc = sub.value[_U16.size : _U16.size + (bits + 7) // 8]
            elif sub.type in _REPORT_FIELDS:
                name, fmt = _REPORT_FIELDS[sub.type]
                fields[name] = fmt.unpack(sub.value)[0]
        if epc is None:
            raise MalformedParameter("TagReportData without an EPC")
        reports.append(TagReport(epc, **fields))
    return reports


_REPORT_FIELDS: Final[dict[int, tuple[str, struct.Struct]]] = {
    _TV.ANTENNA_ID: ("antenna", _U16),
    _TV.PEAK_RSSI: ("peak_rssi", struct.Struct("!b")),
    _TV.CHANNEL_INDEX: ("channel", _U16),
    _TV.FIRST_SEEN_UTC: ("first_seen_us", struct.Struct("!Q")),
    _TV.LAST_SEEN_UTC: ("last_seen_us", struct.Struct("!Q")),
    _TV.TAG_SEEN_COUNT: ("seen_count", _U16),
    _TV.RO_SPEC_ID: ("rospec_id", _U32),
    _TV.C1G2_PC: ("pc_bits", _U16),
    _TV.C1G2_CRC: ("crc", _U16),
}
