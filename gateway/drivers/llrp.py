"""LLRP RFID reader driver on sllurp's `LLRPReaderClient`.

sllurp runs its own thread (a `select` loop); its callbacks run there. Each tag report is
turned into compact reads on that thread and handed to the event loop with
`call_soon_threadsafe`. sllurp's own reconnect (a fixed 60 s wait) is off: when the connection
drops, the reader stops answering keepalives, or it refuses the configuration, `run()` raises
`DeviceError` and the gateway's supervisor reconnects with its own backoff.

What the device status shows: a request the reader refuses (an ERROR_MESSAGE, or a response
whose LLRPStatus is not Success) is named with the reader's own status code and description,
as the `DeviceError` when it ends the setup (sllurp then drops the connection) or, while
inventorying, as `last_error` (the reason too when the connection closes right after). A
frame that cannot be decoded is counted as `malformed` and shown as `last_error` once per
connection; during the setup it ends the attempt at once (sllurp's setup would otherwise wait
for an answer that went with the frame), instead of after `connect_timeout_s`.

Overflow policy: the rules' queue is bounded; when it is full, a report is dropped and counted
(`dropped` in the device status). A tag in the field is read many times a second, so a short
overload thins the evidence of a pass rather than losing it, and memory stays flat.

General purpose I/O (`gpi`, `gpo` in the device config; how and why in `llrp_gpio`): with a
presence sensor on a GPI port, the reader's ROSpec waits once enabled and the driver starts it
while the sensor sees something, and stops it `hold_s` after it clears; a reader whose
capabilities lack that GPI port fails its setup with a clear error. A GPO port follows the
alarms at the door (`alarm()`, like `signal_light`); a write the reader refuses is counted
(`gpo_refused`) and shown as `last_error`, and the reading goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
from sllurp.llrp import LLRPReaderConfig, LLRPReaderState
from sllurp.llrp_errors import ReaderConfigurationError

from gateway.config import LlrpReaderDevice
from gateway.domain import TagReadBatch
from gateway.drivers.base import DriverContext, EventSink
from gateway.drivers.llrp_gpio import (
    DoorGate,
    gpi_level,
    gpi_query,
    gpo_write,
    start_rospec,
    stop_rospec,
)
from gateway.drivers.llrp_reports import FastReportClient, RawRead, UnansweredRequests
from gateway.health import DeviceHealth
from gateway.supervisor import DeviceError

log = structlog.get_logger("gateway.drivers.llrp")

KIND = "llrp_reader"
# sllurp warns on every TCP split at high read rates ("Too few bytes"): ordinary, not news.
logging.getLogger("sllurp").setLevel(logging.ERROR)

# What each TagReportData must carry for the portal logic.
_TAG_CONTENT = {
    "EnableROSpecID": False,
    "EnableSpecIndex": False,
    "EnableInventoryParameterSpecID": False,
    "EnableAntennaID": True,
    "EnableChannelIndex": False,
    "EnablePeakRSSI": True,
    "EnableFirstSeenTimestamp": True,
    "EnableLastSeenTimestamp": True,
    "EnableTagSeenCount": True,
    "EnableAccessSpecID": False,
}
# Reader events the driver asks for (sllurp's names): none, or the GPI port's edges.
_EVENTS = {
    "HoppingEvent": False,
    "GPIEvent": False,
    "ROSpecEvent": False,
    "ReportBufferFillWarning": False,
    "ReaderExceptionEvent": False,
    "RFSurveyEvent": False,
    "AISpecEvent": False,
    "AISpecEventWithSingulation": False,
    "AntennaEvent": False,
}


class ReaderClock:
    """Maps the reader's timestamps onto the gateway's clock.

    The offset is the smallest (arrival - reader time) seen over the last `window_s`: network
    latency is never negative, and the window lets the offset follow a reader clock that drifts
    or is set, either way. A mapped time is kept within `max_latency_s` before its arrival, so a
    corrupt timestamp cannot throw a read into another day.
    """

    def __init__(
        self, window_s: float = 60.0, max_latency_s: float = 5.0, *, trust_reader: bool = False
    ) -> None:
        self._window_s = window_s
        self.max_latency_s = max_latency_s
        self._trust_reader = trust_reader
        # (report number, arrival, offset), offsets increasing; bounded by time and count.
        self._samples: deque[tuple[int, float, float]] = deque()
        self._count = 0

    def observe(self, arrival: float, reader_time: float) -> float:
        """Update with one report; return the offset to add to reader times.

        With `trust_reader` the reader's own time is used as it is (a simulator playing a
        scenario faster than real time, whose clock the portal logic must follow).
        """
        if self._trust_reader:
            return 0.0
        # A sliding-window minimum: the deque holds offsets in increasing order, so its head
        # is the minimum, and each report costs O(1) on average (this runs per report).
        self._count += 1
        offset = arrival - reader_time
        samples = self._samples
        while samples and samples[-1][2] >= offset:
            samples.pop()
        samples.append((self._count, arrival, offset))
        while samples[0][1] < arrival - self._window_s or samples[0][0] <= self._count - 10_000:
            samples.popleft()
        return samples[0][2]

    def place(self, reader_time: float, offset: float, arrival: float) -> float:
        """A read's time on the gateway's clock, within the plausible range."""
        if self._trust_reader:
            return reader_time
        return min(arrival, max(arrival - self.max_latency_s, reader_time + offset))


def place_reads(
    raw: Sequence[RawRead], arrival: float, clock: ReaderClock
) -> tuple[tuple[str, int, int | None, float, int], ...]:
    """Decoded reads (reader µs) to compact reads on the gateway's clock (sllurp's thread)."""
    if not raw:
        return ()
    stamps = sorted(us for _, _, _, us, _ in raw if 0 < us < _MAX_US)
    # The report's time is its median stamp: one corrupt timestamp cannot move the offset.
    offset = clock.observe(arrival, stamps[len(stamps) // 2] * 1e-6) if stamps else 0.0
    place = clock.place
    return tuple(
        (epc, antenna, rssi, place(us * 1e-6, offset, arrival) if 0 < us < _MAX_US else arrival, n)
        for epc, antenna, rssi, us, n in raw
    )


# Timestamps after the year 2200 are corrupt.
_MAX_US = 7_258_118_400 * 1_000_000


class LlrpReader:
    """One LLRP reader. `run()` connects, inventories and returns only by raising."""

    def __init__(
        self,
        config: LlrpReaderDevice,
        *,
        sink: EventSink,
        health: DeviceHealth,
        clock: Callable[[], dt.datetime],
        reader_clock: ReaderClock | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self._health = health
        self._clock = clock
        self._reader_clock = reader_clock or ReaderClock()
        self.last_message = 0.0  # monotonic time of the last report or keepalive
        self._overloaded = False
        self._malformed_logged = False
        # While inventorying: (monotonic time, what) of the last request the reader refused.
        self._last_refusal: tuple[float, str] | None = None
        # Something for the connection's loop to do: a GPI edge, an alarm, the reader lost.
        self._wake = asyncio.Event()
        self._gate = (
            None
            if config.gpi is None
            else DoorGate(active=config.gpi.active, hold_s=config.gpi.hold_s)
        )
        self._gpo_until: float | None = None  # monotonic time the GPO goes off
        self._gpo_written: bool | None = None  # what this connection last wrote to the GPO

    @property
    def gpo_on(self) -> bool:
        """What the GPO port should be now: on until `gpo.hold_s` after the latest alarm."""
        return self._gpo_until is not None and time.monotonic() < self._gpo_until

    def alarm(self) -> None:
        """An alarm at the reader's door: its GPO port goes on now and stays on `gpo.hold_s`
        after this (the latest) alarm. Never blocks: the rules runner calls it. Without `gpo`,
        nothing happens."""
        if self.config.gpo is None:
            return
        self._gpo_until = time.monotonic() + self.config.gpo.hold_s
        self._wake.set()

    def sllurp_config(self) -> LLRPReaderConfig:
        """The ROSpec and reader settings sllurp sends, from the device config."""
        c = self.config
        antennas = c.all_antennas
        settings: dict[str, Any] = {
            "antennas": antennas,
            "session": c.session,
            "tag_population": c.tag_population,
            "report_every_n_tags": c.report_every_n_tags,
            "report_timeout_ms": c.report_timeout_ms,
            "mode_identifier": c.mode_identifier,
            "tag_content_selector": dict(_TAG_CONTENT),
            "keepalive_interval": int(c.keepalive_s * 1000),
            "reconnect": False,  # the supervisor reconnects, with its own backoff
            "start_inventory": True,
            "reset_on_connect": True,
            "tx_power": 0,  # index 0: the reader's maximum
        }
        if c.tx_power_dbm is not None:
            settings["tx_power_dbm"] = float(c.tx_power_dbm)
        if c.gpi is not None:
            # The sensor's port enabled, its edges notified (the ROSpec waits: `FastReportClient`
            # with a Null start trigger).
            settings["event_selector"] = {**_EVENTS, "GPIEvent": True}
            settings["gpi_ports_config"] = {c.gpi.port: True}
        return LLRPReaderConfig(settings)

    def gpio_problem(self, capabilities: Mapping[str, Any]) -> str | None:
        """Why the reader cannot serve the configured `gpi` (from its decoded capabilities), or
        None. A reader that does not say (no GPIOCapabilities) is given the benefit of the doubt:
        it refuses the port itself if it lacks it."""
        gpi = self.config.gpi
        general = capabilities.get("GeneralDeviceCapabilities")
        gpio = general.get("GPIOCapabilities") if isinstance(general, Mapping) else None
        if gpi is None or not isinstance(gpio, Mapping):
            return None
        count = gpio.get("NumGPIs")
        if not isinstance(count, int) or gpi.port <= count:
            return None
        return (
            f"gpi.port {gpi.port}: the reader has no GPI port {gpi.port} (its capabilities list "
            f"{count} GPI ports), so no presence sensor can start and stop its reading"
        )

    async def run(self) -> None:
        """Connect, configure, inventory; raise `DeviceError` when the reader is lost."""
        c = self.config
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[str] = loop.create_future()
        inventorying = asyncio.Event()
        refusals: list[str] = []  # requests refused during the setup
        setup_broken: asyncio.Future[str] = loop.create_future()
        unfit: asyncio.Future[str] = loop.create_future()  # the reader cannot do what is asked
        self._malformed_logged = False  # once per connection
        self._last_refusal = None
        self._gpo_written = None  # every connection writes the GPO
        if self._gate is not None:
            self._gate.reset()

        def on_reads(raw: list[RawRead]) -> None:
            # Arrival on the gateway's clock (the injected one: a test's accelerated clock
            # lines up with a reader simulator whose clock runs as fast). The clock is called
            # on sllurp's thread: it must be thread-safe (a pure function of the time is).
            reads = place_reads(raw, self._clock().timestamp(), self._reader_clock)
            loop.call_soon_threadsafe(self._deliver, reads)

        def on_malformed(reason: str) -> None:
            loop.call_soon_threadsafe(self._malformed, reason, inventorying, setup_broken)

        def on_answer(purpose: str, message: Any) -> None:
            # The answer to a request of the driver's own (`_send`), on sllurp's thread.
            name = message.getName()
            ok = name != "ERROR_MESSAGE" and message.isSuccess()
            text = "" if ok else llrp_status(name, message.msgdict)
            body = message.msgdict.get(name, {})
            loop.call_soon_threadsafe(self._answered, purpose, ok, text, body, lost)

        client = FastReportClient(
            c.transport.host,
            c.transport.port,
            self.sllurp_config(),
            on_reads=on_reads,
            on_malformed=on_malformed,
            on_answer=on_answer,
            rospec_start="Immediate" if c.gpi is None else "Null",
        )

        def on_lost(reason: str) -> None:
            if not lost.done():
                lost.set_result(reason)
            self._wake.set()

        def on_response(_: Any, message: Any) -> None:
            # A refused request: sllurp only logs it and, during the setup, drops the
            # connection. Runs on sllurp's thread before sllurp handles the message, so the
            # refusal is on the loop before the disconnection it causes.
            if message.getName() == "ERROR_MESSAGE" or not message.isSuccess():
                text = llrp_status(message.getName(), message.msgdict)
                loop.call_soon_threadsafe(self._refused, text, inventorying, refusals)
            elif message.getName() == "GET_READER_CAPABILITIES_RESPONSE":
                problem = self.gpio_problem(message.msgdict[message.getName()])
                if problem is not None:
                    loop.call_soon_threadsafe(_settle, unfit, problem)

        def on_keepalive(_: Any, __: Any) -> None:
            self.last_message = time.monotonic()

        def on_event(_: Any, event: Mapping[str, Any]) -> None:
            # The reader reports a fault of its own (an antenna disconnected, a radio error).
            exception = event.get("ReaderExceptionEvent")
            if exception:
                text = exception.get("Message", b"") if isinstance(exception, dict) else exception
                if isinstance(text, bytes):
                    text = text.decode("utf-8", "replace")
                loop.call_soon_threadsafe(self._reader_error, str(text))
            # An edge on the presence sensor's GPI port.
            gpi = event.get("GPIEvent")
            if (
                c.gpi is not None
                and isinstance(gpi, dict)
                and gpi.get("GPIPortNumber") == c.gpi.port
            ):
                loop.call_soon_threadsafe(self._gpi_edge, bool(gpi.get("GPIEvent")))

        client.add_event_callback(on_event)
        client.add_message_callback("KEEPALIVE", on_keepalive)
        for response in (
            "ERROR_MESSAGE",  # a request the reader cannot handle at all
            "GET_READER_CAPABILITIES_RESPONSE",
            "GET_READER_CONFIG_RESPONSE",
            "SET_READER_CONFIG_RESPONSE",
            "DELETE_ACCESSSPEC_RESPONSE",
            "DELETE_ROSPEC_RESPONSE",
            "ADD_ROSPEC_RESPONSE",
            "ENABLE_ROSPEC_RESPONSE",
            "START_ROSPEC_RESPONSE",
        ):
            client.add_message_callback(response, on_response)
        client.add_state_callback(
            LLRPReaderState.STATE_INVENTORYING,
            lambda *_: loop.call_soon_threadsafe(inventorying.set),
        )
        client.add_disconnected_callback(
            lambda *_: loop.call_soon_threadsafe(on_lost, "connection closed by the reader")
        )
        connecting = asyncio.ensure_future(asyncio.to_thread(client.connect))
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # Stopped while connecting: let the connect finish, then close what it opened.
            with contextlib.suppress(Exception):
                await connecting
            await asyncio.to_thread(_close, client, polite=False)
            raise
        except OSError as err:
            raise DeviceError(
                f"cannot connect to {c.transport.host}:{c.transport.port}: {err}"
            ) from err
        try:
            await self._until_inventorying(inventorying, lost, refusals, setup_broken, unfit)
            self._health.connected()
            self.last_message = time.monotonic()
            await self._inventory(client, lost)
        finally:
            gpo_off = c.gpo.port if c.gpo is not None and self._gpo_written else None
            await asyncio.to_thread(_close, client, polite=inventorying.is_set(), gpo_off=gpo_off)

    async def _inventory(self, client: FastReportClient, lost: asyncio.Future[str]) -> None:
        """While the reader inventories: watch it, start and stop the door's reading with its
        presence sensor, keep the GPO as the door's alarms say. Returns only by raising."""
        c = self.config
        gate = self._gate
        reading = False  # what the reader was told: a ROSpec with a Null start trigger waits
        if c.gpi is not None:
            await self._send(client, gpi_query(), "gpi")
        while True:
            self._wake.clear()
            if lost.done():
                refusal = self._recent_refusal()
                if refusal is not None:
                    raise DeviceError(f"{lost.result()} after refusing a request: {refusal}")
                raise DeviceError(lost.result())
            if not client.is_alive():
                # sllurp's thread can die on a frame it cannot parse, without telling.
                raise DeviceError("the LLRP client stopped (a frame it could not parse?)")
            now = time.monotonic()
            silent = now - self.last_message
            if silent > 3 * c.keepalive_s:
                raise DeviceError(f"reader silent for {silent:.1f} s (no keepalive, no report)")
            wait_s = min(1.0, c.keepalive_s)
            if gate is not None:
                gate.tick(now)
                if gate.reading != reading:
                    reading = gate.reading
                    rospec_id = int(client.llrp.rospec["ROSpecID"])
                    if reading:
                        await self._send(client, start_rospec(rospec_id), "start")
                    else:
                        await self._send(client, stop_rospec(rospec_id), "stop")
                if gate.hold_until is not None:
                    wait_s = min(wait_s, gate.hold_until - now)
            if c.gpo is not None:
                on = self.gpo_on
                if on != self._gpo_written:
                    self._gpo_written = on
                    await self._send(
                        client, gpo_write(c.gpo.port, on), "gpo_on" if on else "gpo_off"
                    )
                if on and self._gpo_until is not None:
                    wait_s = min(wait_s, self._gpo_until - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait_s)):
                    await self._wake.wait()

    async def _send(self, client: FastReportClient, message: dict[str, Any], purpose: str) -> None:
        """Send a request of the driver's own; its answer comes to `_answered`."""
        try:
            await asyncio.to_thread(client.send_request, message, purpose)
        except UnansweredRequests as err:
            raise DeviceError(str(err)) from err
        except (OSError, ReaderConfigurationError) as err:
            raise DeviceError(f"cannot send {next(iter(message))} to the reader: {err}") from err

    def _answered(
        self, purpose: str, ok: bool, text: str, body: Any, lost: asyncio.Future[str]
    ) -> None:
        """The reader answered a request of the driver's own (`purpose` as sent)."""
        c = self.config
        match purpose, ok:
            case (("gpo_on" | "gpo_off"), True):
                self._health.count("gpo_writes")
            case (("gpo_on" | "gpo_off"), False):
                # A refused write costs the light, not the door: counted, shown, reading goes on.
                self._health.count("gpo_refused")
                port = c.gpo.port if c.gpo is not None else "?"
                state = "on" if purpose == "gpo_on" else "off"
                self._health.note_error(f"reader refused to switch GPO port {port} {state}: {text}")
                log.warning("reader refused a GPO write", device=c.id, port=port, status=text)
            case "gpi", True if self._gate is not None and c.gpi is not None:
                level = gpi_level(body, c.gpi.port)
                if level is None:
                    self._health.note_error(
                        f"reader did not say GPI port {c.gpi.port}'s level: the door's reading "
                        "waits for the port's next edge"
                    )
                    level = not c.gpi.active
                self._gate.level(level, time.monotonic())
                self._wake.set()
            case "start", True:
                self._health.count("reading_starts")
            case "stop", True:
                self._health.count("reading_stops")
            case _:
                # A reader that will not start or stop the door's reading, or say the sensor's
                # level, cannot be trusted with the door: the connection starts over.
                what = {
                    "start": "start the door's reading",
                    "stop": "stop the door's reading",
                    "gpi": f"report GPI port {c.gpi.port if c.gpi else '?'}'s level",
                }.get(purpose, purpose)
                _settle(lost, f"reader refused to {what}: {text}")
                self._wake.set()

    def _gpi_edge(self, high: bool) -> None:
        """The presence sensor's port changed (a GPIEvent)."""
        self._health.count("gpi_events")
        if self._gate is not None:
            self._gate.level(high, time.monotonic())
            self._wake.set()

    async def _until_inventorying(
        self,
        inventorying: asyncio.Event,
        lost: asyncio.Future[str],
        refusals: list[str],
        setup_broken: asyncio.Future[str],
        unfit: asyncio.Future[str],
    ) -> None:
        waiter: asyncio.Future[Any] = asyncio.ensure_future(inventorying.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, lost, setup_broken, unfit},
                timeout=self.config.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()
        if waiter in done:
            return
        if unfit.done():
            raise DeviceError(unfit.result())
        if refusals and (lost in done or setup_broken in done):
            raise DeviceError(f"reader refused the configuration: {refusals[-1]}")
        if lost in done:
            raise DeviceError(lost.result())
        if setup_broken in done:
            raise DeviceError(
                "reader sent a frame that could not be decoded while being set up: "
                f"{setup_broken.result()}"
            )
        after = f" (it refused {refusals[-1]})" if refusals else ""
        raise DeviceError(
            f"reader did not start inventory within {self.config.connect_timeout_s:g} s{after}"
        )

    def _refused(self, text: str, inventorying: asyncio.Event, refusals: list[str]) -> None:
        """The reader refused a request: the reason of a failed setup, or a current error."""
        if not inventorying.is_set():
            refusals.append(text)
            return
        self._last_refusal = (time.monotonic(), text)
        self._health.note_error(f"reader refused a request: {text}")
        log.warning("reader refused a request", device=self.config.id, status=text)

    def _recent_refusal(self) -> str | None:
        """The request the reader refused just now, which may be why it closed the connection."""
        if self._last_refusal is None:
            return None
        at, text = self._last_refusal
        return text if time.monotonic() - at < _REFUSAL_CAUSE_S else None

    def _malformed(
        self, reason: str, inventorying: asyncio.Event, setup_broken: asyncio.Future[str]
    ) -> None:
        """A frame from the reader could not be decoded: counted, shown and logged once per
        connection; during the setup, the setup has failed."""
        self._health.count("malformed")
        if not self._malformed_logged:
            log.warning(
                "reader sent a frame that could not be decoded",
                device=self.config.id,
                reason=reason,
            )
            self._health.note_error(f"reader sent a frame that could not be decoded: {reason}")
            self._malformed_logged = True
        if not inventorying.is_set() and not setup_broken.done():
            setup_broken.set_result(reason)

    def _reader_error(self, text: str) -> None:
        self._health.note_error(f"reader exception: {text}")
        log.warning("reader reports an exception", device=self.config.id, message=text)

    def _deliver(self, reads: tuple[tuple[str, int, int | None, float, int], ...]) -> None:
        self.last_message = time.monotonic()
        self._health.data_received()
        if not reads:
            return
        if not self._sink.offer(TagReadBatch(self.config.id, self._clock(), reads)):
            # Overflow policy: a full inbox drops the newest report (counted); the reader
            # reports the same tags again while they are in the field.
            self._health.count("dropped", len(reads))
            if not self._overloaded:
                log.warning("rules are behind: dropping tag reports", device=self.config.id)
                self._overloaded = True
            return
        self._overloaded = False
        self._health.count("reads", sum(r[4] for r in reads))


# A refusal this recent explains a connection that closes (sllurp drops it after some).
_REFUSAL_CAUSE_S = 5.0


def llrp_status(name: str, msgdict: Mapping[str, Any]) -> str:
    """What a refusal says: the message, the reader's status code and its description."""
    body = msgdict.get(name, {})
    status = body.get("LLRPStatus", {}) if isinstance(body, Mapping) else {}
    description = status.get("ErrorDescription", "")
    if isinstance(description, bytes):
        description = description.decode("utf-8", "replace")
    return f"{name}: {status.get('StatusCode', 'unknown status')} {description}".strip()


def _settle(future: asyncio.Future[str], result: str) -> None:
    if not future.done():
        future.set_result(result)


def _close(client: FastReportClient, *, polite: bool, gpo_off: int | None = None) -> None:
    """Stop sllurp's thread and close the socket; stop the inventory first if it was running,
    and switch off `gpo_off` (a GPO port that may be on: no light left on by a stopped gateway)."""
    if polite and client.is_alive():
        if gpo_off is not None:
            try:
                client.send_request(gpo_write(gpo_off, on=False), "gpo_off")
            except Exception:  # noqa: BLE001 - best effort: the connection may be gone already
                log.debug("could not switch the GPO off")
        try:
            client.disconnect(timeout=2.0)
        except Exception:  # noqa: BLE001 - the connection may already be gone; close it hard below
            log.debug("polite disconnect failed")
    client.hard_disconnect()
    client.join(2.0)


def build(device: LlrpReaderDevice, ctx: DriverContext) -> LlrpReader:
    """The driver of a configured LLRP reader at a dock door; with `gpo`, alarms at its door
    switch the GPO port on (registered as a `signal_light` registers its coil)."""
    reader = LlrpReader(device, sink=ctx.sink, health=ctx.health, clock=ctx.clock)
    if device.gpo is not None and device.door is not None:
        ctx.alarms.register([device.door], reader.alarm)
    return reader
