"""An LLRP RFID reader on 127.0.0.1 that plays a dock-door `Scenario` to a real LLRP client.

One TCP connection is one LLRP session (the reader listens, the client connects, LLRP 1.0.1
section 18: port 5084 on a real reader, a free port here). What a client such as sllurp sees:

1. on connect, unprompted: READER_EVENT_NOTIFICATION with a ConnectionAttemptEvent "Success"
   (or a failure, and the connection closed, if another client is already connected);
2. an answer to every request, carrying the request's message id: capabilities, the reader
   configuration, and an LLRPStatus for SET_READER_CONFIG and every ROSpec and AccessSpec
   operation; ERROR_MESSAGE for a message type it does not support;
3. RO_ACCESS_REPORTs every `report_interval_s` while a ROSpec is active, and only after the
   ENABLE_ROSPEC (or START_ROSPEC) response that made it active has been sent;
4. KEEPALIVE every KeepaliveSpec interval once SET_READER_CONFIG asked for it;
5. general purpose I/O: GPI ports whose level a test or the scenario sets (`set_gpi`,
   `Scenario.gpi`), which start and stop ROSpecs with GPI triggers and, if the client asked
   for GPIEvent notifications, are reported as they change; GPO ports a client writes with
   SET_READER_CONFIG GPOWriteData (`gpo` holds what was written).

A ROSpec reads only while it is Active: tags in the field while it is not are never reported,
as with a real reader.

`ReaderSession` is that state machine, sans-IO: every transition is in its handler table.
`LlrpReaderSimulator` owns the sockets and the timers around it.

Run ``python -m simulators.llrp --help`` for the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Final, Literal, NoReturn, Self, TypeAlias

from simulators.llrp.codec import (
    ConnectionAttemptStatus,
    Frame,
    FrameDecoder,
    GpiTrigger,
    MalformedFrame,
    MalformedParameter,
    MessageType,
    ParamType,
    ReaderCapabilities,
    ReportSpec,
    ROSpec,
    StatusCode,
    TagReportEncoder,
    capabilities_response,
    encode_frame,
    error_message,
    gpi_event_notification,
    keepalive,
    parse_add_rospec,
    parse_set_reader_config,
    parse_spec_id,
    reader_config_response,
    reader_event_notification,
    reader_exception_notification,
    response_type,
    ro_access_report,
    status_response,
    tlv,
)
from simulators.llrp.scenario import Crossing, PortalRadio, Scenario, TagRead

__all__ = ["GpioPorts", "LlrpReaderSimulator", "MalformedKind", "ReaderSession", "SimulatorStats"]

logger = logging.getLogger(__name__)

MalformedKind: TypeAlias = Literal["garbage", "bad_length", "unknown_type", "truncated_parameter"]
_MALFORMED_KINDS: Final = ("garbage", "bad_length", "unknown_type", "truncated_parameter")
# A reader that could not send for a while (slow client) does not make up for all of it.
_MAX_TICK_S = 1.0
# Tag reports per RO_ACCESS_REPORT at most. Readers split big batches; sllurp needs it too: it
# decodes a message's parameters by slicing the rest of the body for each one, so its cost grows
# with the square of the message size.
_MAX_TAGS_PER_REPORT = 100
# How long closing a connection may take before it is aborted.
_CLOSE_GRACE_S = 1.0
# Reader-chosen channel hops every 200 ms over the hop table.
_HOP_S = 0.2
# ROSpec states (LLRP 1.0.1 section 10.2.1).
_DISABLED, _INACTIVE, _ACTIVE = 0, 1, 2
_START_IMMEDIATE = 1
_STOP_DURATION, _STOP_GPI = 1, 2  # ROSpecStopTriggerType
_GPI_EVENT = 1  # the event type of GPIEvent in a ReaderEventNotificationSpec
_ALL = 0  # a spec id of 0 in ENABLE/START/STOP/DISABLE/DELETE means "every spec"
# A message type no LLRP 1.0.1 reader knows (types 900..999 are unassigned).
_UNKNOWN_TYPE = 999


# -- the LLRP session, sans-IO ------------------------------------------------------------------


@dataclass(slots=True)
class _Rospec:
    spec: ROSpec
    state: int = _DISABLED
    active_since: float | None = None  # the session's clock, while Active
    stop_at: float | None = None  # a Duration or GPI-timeout stop trigger ends it then


@dataclass(slots=True)
class GpioPorts:
    """A reader's general purpose I/O, shared by its sessions: the level on each GPI port (what
    its sensor says; True: high), whether the port is enabled (GPIPortCurrentState GPIConfig),
    and the level last written to each GPO port."""

    gpi: dict[int, bool]
    gpi_enabled: dict[int, bool]
    gpo: dict[int, bool]
    gpo_writes: int = 0  # GPOWriteData parameters accepted

    @classmethod
    def for_reader(cls, caps: ReaderCapabilities) -> GpioPorts:
        """Every GPI low and enabled, every GPO low."""
        inputs = range(1, caps.gpis + 1)
        return cls(
            gpi=dict.fromkeys(inputs, False),
            gpi_enabled=dict.fromkeys(inputs, True),
            gpo=dict.fromkeys(range(1, caps.gpos + 1), False),
        )


@dataclass(frozen=True, slots=True)
class _Inventory:
    """What the active ROSpec asks for: antennas to use and what to put in each tag report."""

    rospec_id: int
    antennas: frozenset[int]
    report: ReportSpec
    inventory_parameter_spec_id: int


class ReaderSession:
    """The LLRP state of one client connection: `handle` a request, get the frames to send.

    Transitions, all in `_handlers` (requests) and `gpi_changed` and `expire` (the reader's own):
    - GET_READER_CAPABILITIES, GET_READER_CONFIG: answered from the reader's description (GPI
      levels and GPO states included).
    - SET_READER_CONFIG: keepalive interval, default report spec, which events are notified,
      GPI ports enabled or not, GPO writes; all or nothing: a GPI or GPO port the reader does
      not have refuses the whole request with FieldError (as does `reject_config`).
    - ADD_ROSPEC: a new ROSpec, Disabled (or rejected; also for a GPI trigger on a port the
      reader does not have). ENABLE_ROSPEC: Disabled -> Inactive, then Active at once with an
      Immediate start trigger. START_ROSPEC: Inactive -> Active. STOP_ROSPEC: Active ->
      Inactive. DISABLE_ROSPEC: -> Disabled. DELETE_ROSPEC: removed.
    - a GPI port of the ROSpec's start trigger going to its GPIEvent level: Inactive -> Active
      (an edge: a port already at that level when the ROSpec is enabled does not start it); of
      its stop trigger: Active -> Inactive. A disabled port triggers nothing.
    - `expire`: an Active ROSpec whose Duration, or GPI stop trigger timeout, has run out ->
      Inactive (both timed from when it became Active).
    - AccessSpec operations: accepted; the simulator runs no access operations.
    - KEEPALIVE_ACK, ENABLE_EVENTS_AND_REPORTS: no answer.
    - CLOSE_CONNECTION: answered, then the session is over.
    - anything else, and the message types in `unsupported`: ERROR_MESSAGE UnsupportedMessage.
    """

    def __init__(
        self,
        caps: ReaderCapabilities,
        *,
        reject_config: bool,
        unsupported: Collection[int] = frozenset(),
        gpio: GpioPorts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caps = caps
        self._reject_config = reject_config
        self._unsupported = frozenset(unsupported)
        self.gpio = gpio if gpio is not None else GpioPorts.for_reader(caps)
        self._clock = clock
        self.rospecs: dict[int, _Rospec] = {}
        self.keepalive_ms = 0
        self.default_report = ReportSpec()
        self.notified: frozenset[int] = frozenset()  # event types the client asked for
        self.closed = False
        self.keepalive_acks = 0
        self.errors_sent = 0
        self._handlers: dict[int, Callable[[Frame], list[bytes]]] = {
            MessageType.GET_READER_CAPABILITIES: self._get_capabilities,
            MessageType.GET_READER_CONFIG: self._get_config,
            MessageType.SET_READER_CONFIG: self._set_config,
            MessageType.ADD_ROSPEC: self._add_rospec,
            MessageType.ENABLE_ROSPEC: self._rospec_transition,
            MessageType.START_ROSPEC: self._rospec_transition,
            MessageType.STOP_ROSPEC: self._rospec_transition,
            MessageType.DISABLE_ROSPEC: self._rospec_transition,
            MessageType.DELETE_ROSPEC: self._rospec_transition,
            MessageType.ADD_ACCESSSPEC: self._ok,
            MessageType.DELETE_ACCESSSPEC: self._ok,
            MessageType.ENABLE_ACCESSSPEC: self._ok,
            MessageType.DISABLE_ACCESSSPEC: self._ok,
            MessageType.KEEPALIVE_ACK: self._keepalive_ack,
            MessageType.ENABLE_EVENTS_AND_REPORTS: lambda _: [],
            MessageType.CLOSE_CONNECTION: self._close,
        }

    @property
    def inventory(self) -> _Inventory | None:
        """The active ROSpec's inventory settings, None while no ROSpec is active."""
        for rospec in self.rospecs.values():
            if rospec.state == _ACTIVE:
                spec = rospec.spec
                everything = range(1, self._caps.antennas + 1)
                antennas = frozenset(everything if _ALL in spec.antennas else spec.antennas)
                return _Inventory(
                    spec.rospec_id,
                    antennas,
                    spec.report or self.default_report,
                    spec.inventory_parameter_spec_id,
                )
        return None

    @property
    def active_since(self) -> float | None:
        """When (the session's clock) the active ROSpec became Active; None while none is."""
        for rospec in self.rospecs.values():
            if rospec.state == _ACTIVE:
                return rospec.active_since
        return None

    @property
    def enabled(self) -> bool:
        """Whether a ROSpec is enabled (Inactive, waiting for its start trigger, or Active)."""
        return any(r.state != _DISABLED for r in self.rospecs.values())

    def gpi_changed(self, port: int, level: bool) -> bool:
        """GPI `port` went to `level`: start and stop the ROSpecs it triggers. Returns whether
        the client asked to be told (a GPIEvent notification is due)."""
        if not self.gpio.gpi_enabled.get(port, False):
            return False
        for rospec in self.rospecs.values():
            spec = rospec.spec
            if rospec.state == _INACTIVE and _fires(spec.start_gpi, port, level):
                self._activate(rospec)
            elif rospec.state == _ACTIVE and _fires(spec.stop_gpi, port, level):
                self._deactivate(rospec)
        return _GPI_EVENT in self.notified

    def expire(self) -> None:
        """Stop the Active ROSpecs whose stop trigger's time is up."""
        now = self._clock()
        for rospec in self.rospecs.values():
            if rospec.state == _ACTIVE and rospec.stop_at is not None and now >= rospec.stop_at:
                self._deactivate(rospec)

    def _activate(self, rospec: _Rospec) -> None:
        spec = rospec.spec
        now = self._clock()
        rospec.state, rospec.active_since, rospec.stop_at = _ACTIVE, now, None
        if spec.stop_trigger == _STOP_DURATION and spec.stop_duration_ms:
            rospec.stop_at = now + spec.stop_duration_ms / 1000
        elif spec.stop_trigger == _STOP_GPI and spec.stop_gpi and spec.stop_gpi.timeout_ms:
            rospec.stop_at = now + spec.stop_gpi.timeout_ms / 1000

    @staticmethod
    def _deactivate(rospec: _Rospec) -> None:
        rospec.state, rospec.active_since, rospec.stop_at = _INACTIVE, None, None

    def handle(self, frame: Frame) -> list[bytes]:
        """The frames to send in answer to `frame` (its response first, if it has one)."""
        if frame.version not in (1, 2):
            return self._error(frame, StatusCode.UNSUPPORTED_VERSION, f"version {frame.version}")
        handler = self._handlers.get(frame.type)
        if handler is None or frame.type in self._unsupported:
            return self._error(
                frame, StatusCode.UNSUPPORTED_MESSAGE, f"message type {frame.type} not supported"
            )
        try:
            return handler(frame)
        except MalformedParameter as err:
            return self._respond(frame, StatusCode.PARAMETER_ERROR, str(err))

    def _error(self, frame: Frame, code: int, description: str) -> list[bytes]:
        self.errors_sent += 1
        return [error_message(frame.id, code, description)]

    def _respond(
        self, frame: Frame, code: int = StatusCode.SUCCESS, description: str = ""
    ) -> list[bytes]:
        reply = response_type(frame.type)
        if reply is None:
            return []
        if code != StatusCode.SUCCESS:
            self.errors_sent += 1
        return [status_response(reply, frame.id, code, description)]

    def _ok(self, frame: Frame) -> list[bytes]:
        return self._respond(frame)

    def _get_capabilities(self, frame: Frame) -> list[bytes]:
        return [capabilities_response(frame.id, self._caps)]

    def _get_config(self, frame: Frame) -> list[bytes]:
        gpio = self.gpio
        return [
            reader_config_response(
                frame.id,
                self._caps,
                keepalive_ms=self.keepalive_ms,
                report=self.default_report,
                events=self.notified,
                gpi=tuple((p, gpio.gpi_enabled[p], level) for p, level in gpio.gpi.items()),
                gpo=tuple(gpio.gpo.items()),
            )
        ]

    def _set_config(self, frame: Frame) -> list[bytes]:
        change = parse_set_reader_config(frame.body)
        if self._reject_config:
            return self._respond(
                frame,
                StatusCode.PARAMETER_ERROR,
                "reader configuration refused: this reader rejects every configuration "
                "(simulator reject_config)",
            )
        gpio = self.gpio
        for port, _ in change.gpi_config:
            if port not in gpio.gpi:
                return self._respond(frame, StatusCode.FIELD_ERROR, self._no_gpi(port))
        for port, _ in change.gpo_writes:
            if port not in gpio.gpo:
                return self._respond(
                    frame,
                    StatusCode.FIELD_ERROR,
                    f"GPO port {port} does not exist (this reader has {self._caps.gpos})",
                )
        if change.reset_to_factory_defaults:
            self.keepalive_ms, self.default_report, self.notified = 0, ReportSpec(), frozenset()
        if change.keepalive_ms is not None:
            self.keepalive_ms = change.keepalive_ms
        if change.report is not None:
            self.default_report = change.report
        if change.events is not None:
            notified = {event for event, on in change.events.items() if on}
            self.notified = frozenset(self.notified - change.events.keys() | notified)
        for port, enabled in change.gpi_config:
            gpio.gpi_enabled[port] = enabled
        for port, level in change.gpo_writes:
            gpio.gpo[port] = level
            gpio.gpo_writes += 1
        return self._respond(frame)

    def _no_gpi(self, port: int) -> str:
        return f"GPI port {port} does not exist (this reader has {self._caps.gpis})"

    def _add_rospec(self, frame: Frame) -> list[bytes]:
        spec = parse_add_rospec(frame.body)
        if self._reject_config:
            return self._respond(
                frame,
                StatusCode.PARAMETER_ERROR,
                f"ROSpec {spec.rospec_id} refused: this reader rejects every configuration "
                "(simulator reject_config)",
            )
        problem = None
        if spec.rospec_id == _ALL:
            problem = "ROSpecID 0 is reserved"
        elif spec.rospec_id in self.rospecs:
            problem = f"ROSpec {spec.rospec_id} already exists"
        elif spec.current_state != _DISABLED:
            problem = "a ROSpec must be added in the Disabled state"
        elif unknown := sorted(a for a in spec.antennas if a > self._caps.antennas):
            problem = f"antennas {unknown} do not exist (this reader has {self._caps.antennas})"
        elif missing := [
            t.port for t in (spec.start_gpi, spec.stop_gpi) if t and t.port not in self.gpio.gpi
        ]:
            problem = f"GPI trigger: {self._no_gpi(missing[0])}"
        if problem:
            return self._respond(frame, StatusCode.FIELD_ERROR, problem)
        self.rospecs[spec.rospec_id] = _Rospec(spec)
        return self._respond(frame)

    def _rospec_transition(self, frame: Frame) -> list[bytes]:
        spec_id = parse_spec_id(frame.body)
        if spec_id == _ALL:
            targets = list(self.rospecs.values())
        elif spec_id in self.rospecs:
            targets = [self.rospecs[spec_id]]
        else:
            return self._respond(frame, StatusCode.FIELD_ERROR, f"no ROSpec {spec_id}")
        kind = frame.type
        if kind == MessageType.DELETE_ROSPEC:
            for rospec in targets:
                del self.rospecs[rospec.spec.rospec_id]
        elif kind == MessageType.ENABLE_ROSPEC:
            for rospec in targets:
                if rospec.state == _DISABLED:
                    rospec.state = _INACTIVE
                    if rospec.spec.start_trigger == _START_IMMEDIATE:
                        self._activate(rospec)
        elif kind == MessageType.START_ROSPEC:
            if any(r.state == _DISABLED for r in targets):
                return self._respond(frame, StatusCode.FIELD_ERROR, f"ROSpec {spec_id} is disabled")
            for rospec in targets:
                if rospec.state != _ACTIVE:
                    self._activate(rospec)
        elif kind == MessageType.STOP_ROSPEC:
            for rospec in targets:
                if rospec.state == _ACTIVE:
                    self._deactivate(rospec)
        else:  # DISABLE_ROSPEC
            for rospec in targets:
                self._deactivate(rospec)
                rospec.state = _DISABLED
        return self._respond(frame)

    def _keepalive_ack(self, _: Frame) -> list[bytes]:
        self.keepalive_acks += 1
        return []

    def _close(self, frame: Frame) -> list[bytes]:
        self.closed = True
        return self._respond(frame)


def _fires(trigger: GpiTrigger | None, port: int, level: bool) -> bool:
    return trigger is not None and trigger.port == port and trigger.event == level


# -- malformed frames on command ---------------------------------------------------------------


def _malformed(kind: str, rng: random.Random, msg_id: int) -> bytes:
    """The bytes a broken reader (or a noisy link) sends for each kind of trouble."""
    if kind == "garbage":
        # Random bytes with no framing: the client reads a random length from them.
        return rng.randbytes(64)
    if kind == "bad_length":
        # A KEEPALIVE whose length field (4) is shorter than the 10-byte header itself.
        frame = encode_frame(MessageType.KEEPALIVE, msg_id)
        return frame[:2] + (4).to_bytes(4, "big") + frame[6:]
    if kind == "unknown_type":
        # Well framed, but of a message type no LLRP version defines.
        return encode_frame(_UNKNOWN_TYPE, msg_id, tlv(ParamType.LLRP_STATUS, b"\x00" * 4))
    # truncated_parameter: an RO_ACCESS_REPORT (framed right) whose one TagReportData claims
    # 8 bytes more than the message holds, with an EPCData that says 96 bits but carries 48.
    epc = tlv(ParamType.EPC_DATA, (96).to_bytes(2, "big") + rng.randbytes(6))
    report = tlv(ParamType.TAG_REPORT_DATA, epc)
    data = report[:2] + (len(report) + 8).to_bytes(2, "big") + report[4:]
    return encode_frame(MessageType.RO_ACCESS_REPORT, msg_id, data)


# -- the asyncio server ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """What the simulator has done since it was created."""

    connections: int = 0  # client sessions accepted
    refused_connections: int = 0  # turned away because a client was already connected
    active_connections: int = 0
    reads_sent: int = 0  # tag reads reported (the sum of TagSeenCount)
    tag_reports_sent: int = 0  # TagReportData parameters
    reports_sent: int = 0  # RO_ACCESS_REPORT messages, empty ones included
    empty_reports_sent: int = 0
    keepalives_sent: int = 0
    keepalive_acks: int = 0
    malformed_sent: int = 0  # malformed frames sent on command, per connection
    malformed_received: int = 0  # client byte streams that could not be framed
    errors_sent: int = 0  # ERROR_MESSAGEs and responses with an error status
    gpi_events_sent: int = 0  # GPIEvent notifications
    gpo_writes: int = 0  # GPO port writes accepted (GPOWriteData)


@dataclass(slots=True)
class _Counters:
    connections: int = 0
    refused_connections: int = 0
    reads_sent: int = 0
    tag_reports_sent: int = 0
    reports_sent: int = 0
    empty_reports_sent: int = 0
    keepalives_sent: int = 0
    keepalive_acks: int = 0
    malformed_sent: int = 0
    malformed_received: int = 0
    errors_sent: int = 0
    gpi_events_sent: int = 0


class _ConnectionOver(Exception):
    """The client closed the session, or the reader is done with it."""


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter, session: ReaderSession) -> None:
        self.writer = writer
        self.session = session
        self.keepalive_changed = asyncio.Event()
        self.encoder: tuple[_Inventory, TagReportEncoder] | None = None
        self.task: asyncio.Task[None] | None = None

    def send(self, data: bytes) -> None:
        # Every frame goes out in one write, so frames from the report timer and answers to
        # requests never interleave mid-frame.
        if not self.writer.is_closing():
            self.writer.write(data)

    def encoder_for(self, inventory: _Inventory) -> TagReportEncoder:
        if self.encoder is None or self.encoder[0] != inventory:
            encoder = TagReportEncoder(
                inventory.report.content,
                rospec_id=inventory.rospec_id,
                inventory_parameter_spec_id=inventory.inventory_parameter_spec_id,
            )
            self.encoder = (inventory, encoder)
        return self.encoder[1]


class LlrpReaderSimulator:
    """An LLRP reader at a dock door, on a TCP port of 127.0.0.1, playing `scenario`.

    Use as ``async with LlrpReaderSimulator(scenario) as reader:`` and connect a client to
    ``reader.port``. The scenario's clock starts when a client first enables a ROSpec (or,
    `held`, at `release()`) and keeps running through disconnects and restarts; reads happen
    only while a client is connected with an active ROSpec. The scenario's GPI changes
    (`Scenario.gpi`) happen on that clock, while a client is connected (one made while none
    is happens when the next one connects).

    Args:
        scenario: what happens at the door; an empty door (no tags) by default.
        host: address to listen on.
        port: TCP port; 0 picks a free one (see `port`).
        antennas: antenna ports the reader has (it reports them in its capabilities).
        reads_per_s: most tag reads per wall-clock second, shared by every tag it hears.
        report_interval_s: how often an RO_ACCESS_REPORT carries the reads made meanwhile.
        reject_config: refuse SET_READER_CONFIG and ADD_ROSPEC with an error status (a reader
            set up for another region, say). Also settable between connections.
        unsupported: request names ("ENABLE_EVENTS_AND_REPORTS") the reader answers with an
            ERROR_MESSAGE UnsupportedMessage, as an older or stripped-down reader does. Also
            settable between connections.
        malformed_in_setup: send a malformed frame of this kind just before the answer to
            SET_READER_CONFIG (in the same write), as a reader with a broken keepalive does
            while the client sets it up. Also settable between connections.
        accumulate: one TagReportData per (tag, antenna) per report, with TagSeenCount and the
            first/last seen times, as readers do when told to; by default one per read.
        held: the scenario's clock waits for `release()` (a test that has something to do
            before the first pallet rolls up, whatever the time that takes); until then a
            client that inventories hears nothing but keepalives.
        gpis: general purpose input ports (numbered from 1; 0: none), reported in the
            capabilities; all low until `set_gpi` or the scenario changes them.
        gpos: general purpose output ports; a write to another port is refused (FieldError).
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        antennas: int = 4,
        reads_per_s: float = 1000.0,
        report_interval_s: float = 0.05,
        reject_config: bool = False,
        unsupported: Collection[str] = (),
        malformed_in_setup: MalformedKind | None = None,
        accumulate: bool = False,
        held: bool = False,
        gpis: int = 4,
        gpos: int = 4,
    ) -> None:
        if reads_per_s <= 0 or report_interval_s <= 0:
            raise ValueError("reads_per_s and report_interval_s must be positive")
        if not 1 <= antennas <= 64:
            raise ValueError(f"antennas must be 1..64, got {antennas}")
        if not (0 <= gpis <= 64 and 0 <= gpos <= 64):
            raise ValueError(f"gpis and gpos must be 0..64, got {gpis} and {gpos}")
        self._scenario = scenario if scenario is not None else Scenario()
        if bad := sorted({c.port for c in self._scenario.gpi if c.port > gpis}):
            raise ValueError(f"the scenario changes GPI ports {bad}; this reader has {gpis}")
        self.reject_config = reject_config
        unknown = sorted(n for n in unsupported if n not in MessageType.__members__)
        if unknown:
            raise ValueError(f"unsupported: no such LLRP messages {unknown}")
        self.unsupported = frozenset(unsupported)
        self.malformed_in_setup = malformed_in_setup
        self._host = host
        self._port = port
        self._caps = ReaderCapabilities(antennas=antennas, gpis=gpis, gpos=gpos)
        self._gpio = GpioPorts.for_reader(self._caps)
        self._gpi_script = sorted(self._scenario.gpi, key=lambda change: change.at_s)
        self._gpi_played = 0  # changes of the script made so far
        self._reads_per_s = reads_per_s
        self._interval = report_interval_s
        self._accumulate = accumulate
        self._radio = PortalRadio(self._scenario)
        self._rng = random.Random(self._scenario.seed + 2)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._counters = _Counters()
        self._msg_ids = itertools.count(1)
        # Monotonic and UTC clocks at scenario time 0: set when the first inventory starts.
        self._origin: tuple[float, int] | None = None
        self._held = held

    async def __aenter__(self) -> Self:
        await self._listen()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def scenario(self) -> Scenario:
        """The script the reader plays."""
        return self._scenario

    @property
    def port(self) -> int:
        """The TCP port the reader listens on (the one picked when created with port 0)."""
        return self._port

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the counters."""
        counters = {f.name: getattr(self._counters, f.name) for f in fields(_Counters)}
        return SimulatorStats(
            **counters,
            active_connections=len(self._connections),
            gpo_writes=self._gpio.gpo_writes,
        )

    @property
    def gpi(self) -> dict[int, bool]:
        """The level on each GPI port (True: high)."""
        return dict(self._gpio.gpi)

    @property
    def gpo(self) -> dict[int, bool]:
        """The level last written to each GPO port (all low until a client writes one)."""
        return dict(self._gpio.gpo)

    @property
    def reading(self) -> bool:
        """Whether a connected client's ROSpec is Active (the reader is inventorying)."""
        return any(conn.session.inventory is not None for conn in self._connections)

    def set_gpi(self, port: int, level: bool) -> None:
        """Put `level` on GPI `port` (True: high; a presence sensor that sees something).

        A change is an edge: the ROSpecs it triggers start or stop, and every client that asked
        for GPIEvent notifications is told. The same level again changes nothing.

        Raises:
            ValueError: the reader has no such port.
        """
        gpio = self._gpio
        if port not in gpio.gpi:
            raise ValueError(f"GPI port {port} does not exist (this reader has {self._caps.gpis})")
        if gpio.gpi[port] == level:
            return
        gpio.gpi[port] = level
        for conn in self._connections:
            if conn.session.gpi_changed(port, level):
                conn.send(gpi_event_notification(next(self._msg_ids), _utc_now_us(), port, level))
                self._counters.gpi_events_sent += 1

    @property
    def started(self) -> bool:
        """Whether the scenario's clock is running (a client has started an inventory)."""
        return self._origin is not None

    def release(self) -> None:
        """Let a `held` scenario's clock start: now if a client has enabled a ROSpec, else when
        one does."""
        self._held = False
        if any(conn.session.enabled for conn in self._connections):
            self._start_clock()

    @property
    def scenario_time(self) -> float:
        """Scenario seconds since the first inventory started (0 before)."""
        if self._origin is None:
            return 0.0
        return (time.monotonic() - self._origin[0]) * self.scenario.time_scale

    def utc_us(self, scenario_s: float) -> int:
        """The reader's UTC timestamp (µs) for a scenario time, as it stamps reads.

        Raises:
            RuntimeError: the scenario has not started yet.
        """
        if self._origin is None:
            raise RuntimeError("the scenario has not started: no client has inventoried yet")
        return self._origin[1] + round(scenario_s * 1_000_000)

    @property
    def ground_truth(self) -> list[Crossing]:
        """The crossings that have happened so far: direction, exact EPC set, start and end."""
        if self._origin is None:
            return []
        now = self.scenario_time
        return [c for c in self.scenario.crossings if c.end_s <= now]

    async def close(self) -> None:
        """Stop listening and close every connection, saying goodbye (ConnectionCloseEvent)."""
        await self._stop_listening()
        for conn in list(self._connections):
            conn.send(reader_event_notification(next(self._msg_ids), _utc_now_us(), closing=True))
            conn.writer.close()
        await self._finish_connections()

    async def drop_connections(self) -> None:
        """Close every connection abruptly, as a reader that reboots: no goodbye, data lost."""
        for conn in list(self._connections):
            conn.writer.transport.abort()
        await self._finish_connections()

    async def restart(self, down_for_s: float = 0.0) -> None:
        """Reboot: drop every connection, stop listening, wait, listen again on the same port.
        The GPO ports come back off (a reader's outputs fall back to low when it boots)."""
        await self._stop_listening()
        await self.drop_connections()
        self._gpio.gpo.update(dict.fromkeys(self._gpio.gpo, False))
        await asyncio.sleep(down_for_s)
        await self._listen()

    def send_malformed(self, kind: MalformedKind = "garbage") -> None:
        """Send every connected client a malformed frame, between two whole frames.

        Kinds: "garbage" (64 random bytes, no framing), "bad_length" (a header whose length
        field is shorter than the header), "unknown_type" (a well-framed message of an
        undefined type), "truncated_parameter" (an RO_ACCESS_REPORT whose TagReportData
        overruns the message and whose EPC is cut short).

        Raises:
            ValueError: an unknown kind.
        """
        if kind not in _MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {_MALFORMED_KINDS}, got {kind!r}")
        for conn in self._connections:
            conn.send(_malformed(kind, self._rng, next(self._msg_ids)))
            self._counters.malformed_sent += 1

    def send_reader_exception(self, message: str) -> None:
        """Report a reader fault (ReaderExceptionEvent) to every connected client."""
        for conn in self._connections:
            conn.send(reader_exception_notification(next(self._msg_ids), _utc_now_us(), message))

    # -- internals --

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        logger.info("LLRP reader simulator listening on %s:%d", self._host, self._port)

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def _finish_connections(self) -> None:
        # Each connection's task ends by itself once its transport is closed (the read sees end
        # of file). It is not cancelled: Python 3.11's stream server logs a cancelled
        # connection task as an error. A connection whose close is stuck behind a client that
        # does not read is aborted after a grace period.
        tasks = {c.task for c in self._connections if c.task is not None}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_CLOSE_GRACE_S)
        if pending:
            for conn in list(self._connections):
                conn.writer.transport.abort()
            _, pending = await asyncio.wait(pending, timeout=_CLOSE_GRACE_S)
        for task in pending:  # pragma: no cover - a transport that ignores abort()
            task.cancel()

    def _start_clock(self) -> None:
        if self._origin is None and not self._held:
            self._origin = (time.monotonic(), _utc_now_us())

    def _scenario_at(self, monotonic: float) -> float:
        assert self._origin is not None
        return (monotonic - self._origin[0]) * self.scenario.time_scale

    def _play_gpi_script(self) -> None:
        """Make the scenario's GPI changes that are due."""
        if self._origin is None:
            return
        now = self.scenario_time
        script = self._gpi_script
        while self._gpi_played < len(script) and script[self._gpi_played].at_s <= now:
            change = script[self._gpi_played]
            self._gpi_played += 1
            self.set_gpi(change.port, change.on)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = ReaderSession(
            self._caps,
            reject_config=self.reject_config,
            unsupported={MessageType[name] for name in self.unsupported},
            gpio=self._gpio,
        )
        conn = _Connection(writer, session)
        if self._connections:
            # LLRP allows one client at a time: say why, then hang up.
            self._counters.refused_connections += 1
            status = ConnectionAttemptStatus.CLIENT_INITIATED_CONNECTION_EXISTS
            conn.send(reader_event_notification(next(self._msg_ids), _utc_now_us(), status))
            await _close_writer(writer)
            return
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        self._counters.connections += 1
        try:
            conn.send(reader_event_notification(next(self._msg_ids), _utc_now_us()))
            async with asyncio.TaskGroup() as group:
                group.create_task(self._report_loop(conn), name=f"llrp-sim[{self._port}].reports")
                group.create_task(
                    self._keepalive_loop(conn), name=f"llrp-sim[{self._port}].keepalive"
                )
                await self._receive_loop(reader, conn)
        except* _ConnectionOver:
            pass
        except* OSError as errors:
            logger.info("LLRP client connection lost: %s", errors.exceptions[0])
        finally:
            self._connections.discard(conn)
            await _close_writer(writer)

    async def _receive_loop(self, reader: asyncio.StreamReader, conn: _Connection) -> NoReturn:
        """Answer requests until the session ends; raises _ConnectionOver to end the group."""
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            decoder.feed(data)
            for event in decoder.frames():
                if isinstance(event, MalformedFrame):
                    # No way to find the next frame: answer once, then hang up.
                    self._counters.malformed_received += 1
                    logger.warning("malformed LLRP frame from client: %s", event.reason)
                    conn.send(error_message(0, StatusCode.FIELD_ERROR, event.reason))
                    self._counters.errors_sent += 1
                    await conn.writer.drain()
                    raise _ConnectionOver
                keepalive_before = conn.session.keepalive_ms
                if event.type == MessageType.SET_READER_CONFIG and self.malformed_in_setup:
                    conn.send(_malformed(self.malformed_in_setup, self._rng, next(self._msg_ids)))
                    self._counters.malformed_sent += 1
                for frame in conn.session.handle(event):
                    conn.send(frame)
                # The session counts what it answered; move the counts into the totals.
                self._counters.errors_sent += conn.session.errors_sent
                self._counters.keepalive_acks += conn.session.keepalive_acks
                conn.session.errors_sent = conn.session.keepalive_acks = 0
                if conn.session.enabled:
                    self._start_clock()
                if conn.session.keepalive_ms != keepalive_before:
                    conn.keepalive_changed.set()
                if conn.session.closed:
                    await conn.writer.drain()
                    raise _ConnectionOver
            await conn.writer.drain()
        raise _ConnectionOver  # the client hung up

    async def _keepalive_loop(self, conn: _Connection) -> None:
        while True:
            interval_s = conn.session.keepalive_ms / 1000
            changed = conn.keepalive_changed
            if interval_s <= 0:
                await changed.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), interval_s)
                if not changed.is_set():
                    conn.send(keepalive(next(self._msg_ids)))
                    self._counters.keepalives_sent += 1
            changed.clear()

    async def _report_loop(self, conn: _Connection) -> None:
        last = time.monotonic()
        due = last + self._interval
        carry = 0.0
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            due = max(due + self._interval, now)
            self._play_gpi_script()
            conn.session.expire()
            inventory = conn.session.inventory
            if inventory is None or self._origin is None:
                last, carry = now, 0.0
                continue
            # Nothing is read before scenario time 0 (the clock may start mid-interval), nor
            # before the ROSpec became Active (a GPI edge or START_ROSPEC between two ticks).
            # Reads since the last tick of a ROSpec that has just stopped are not reported.
            start = max(last, now - _MAX_TICK_S, self._origin[0], conn.session.active_since or 0.0)
            budget = self._reads_per_s * (now - start) + carry
            max_reads = int(budget)
            carry = budget - max_reads
            t0, t1 = self._scenario_at(start), self._scenario_at(now)
            last = now
            reads = self._radio.inventory(t0, t1, antennas=inventory.antennas, max_reads=max_reads)
            if reads:
                self._send_reads(conn, inventory, reads)
            elif self._radio.silent(t1):
                conn.send(ro_access_report(next(self._msg_ids), ()))
                self._counters.reports_sent += 1
                self._counters.empty_reports_sent += 1
            await conn.writer.drain()

    def _send_reads(self, conn: _Connection, inventory: _Inventory, reads: list[TagRead]) -> None:
        encoder = conn.encoder_for(inventory)
        origin_us = self._origin[1] if self._origin else 0
        channels = len(self._caps.channels_khz)
        data: list[bytes] = []
        if self._accumulate:
            for epc, antenna, rssi, first_s, last_s, count in _accumulated(reads):
                channel = int(last_s / _HOP_S) % channels + 1
                first_us = origin_us + round(first_s * 1_000_000)
                last_us = origin_us + round(last_s * 1_000_000)
                data.append(encoder.encode(epc, antenna, rssi, channel, first_us, last_us, count))
        else:
            for epc, antenna, rssi, seen_s in reads:
                channel = int(seen_s / _HOP_S) % channels + 1
                seen_us = origin_us + round(seen_s * 1_000_000)
                data.append(encoder.encode(epc, antenna, rssi, channel, seen_us, seen_us))
        per_report = min(inventory.report.n or _MAX_TAGS_PER_REPORT, _MAX_TAGS_PER_REPORT)
        for i in range(0, len(data), per_report):
            conn.send(ro_access_report(next(self._msg_ids), data[i : i + per_report]))
            self._counters.reports_sent += 1
        self._counters.reads_sent += len(reads)
        self._counters.tag_reports_sent += len(data)


def _accumulated(reads: list[TagRead]) -> Iterator[tuple[bytes, int, int, float, float, int]]:
    """Reads folded per (EPC, antenna): peak RSSI, first and last seen, count; by first seen."""
    seen: dict[tuple[bytes, int], tuple[int, float, float, int]] = {}
    for epc, antenna, rssi, t in reads:
        entry = seen.get((epc, antenna))
        if entry is None:
            seen[(epc, antenna)] = (rssi, t, t, 1)
        else:
            peak, first, _, count = entry
            seen[(epc, antenna)] = (max(peak, rssi), first, t, count + 1)
    for (epc, antenna), (peak, first, last, count) in seen.items():
        yield epc, antenna, peak, first, last, count


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _utc_now_us() -> int:
    return time.time_ns() // 1000
