"""A reader's general purpose I/O at a dock door: a presence sensor gates the reading, a light
on a GPO port follows the door's alarms.

Who starts and stops the reading: the gateway. The reader's ROSpec has a Null start trigger, so
after ENABLE_ROSPEC it waits, Inactive; the reader notifies GPIEvents on the sensor's port
(ReaderEventNotificationSpec), and `DoorGate` below turns them into START_ROSPEC when the sensor
starts seeing something and STOP_ROSPEC `hold_s` after it stops. The reader does not read while
its ROSpec is Inactive: no tag near an empty door is read, let alone reported. Why not the
reader's own GPI triggers (ROSpecStartTrigger GPI, ROSpecStopTrigger "GPI with timeout"), which
sllurp can encode?

- The hold cannot be said in LLRP. A stop trigger's Timeout is the longest the ROSpec may run
  from its start, not a delay after the GPI edge; a reader-side stop would end the reading the
  moment the sensor clears, while the pallet that just went through is still to be heard from
  inside (the direction comes from when each side heard it).
- Starting on the reader and stopping from the gateway races: a sensor that comes back just as
  the STOP_ROSPEC is on its way leaves the reader stopped with a pallet in the door (its start
  trigger fired on an Active ROSpec, so nothing), or has the gateway START a ROSpec the reader
  already started, which a reader may refuse.
- GPI triggers are edges: a reader (re)connected while the sensor already sees a pallet would
  not start until the next edge. The gateway asks for the port's level once the reader is set
  up (GET_READER_CONFIG: GPIPortCurrentState) and starts at once if it is active.
- sllurp 3.0.5 registers GPITriggerValue under type 180 (that of PeriodicTriggerValue; LLRP's
  is 181): its GPI triggers would not reach a reader as such without patching its registry.

The cost is one round trip between the edge and the first read; a presence sensor sees the
pallet well before its tags reach the read zone.

The door gate's transitions, all of them (`TRANSITIONS`; the table the code uses). The reader is
reading in `reading` and `holding`; the driver sends START_ROSPEC or STOP_ROSPEC whenever that
differs from what it last told the reader (a fresh connection: not reading).

| state   | event     | next    | what happens                                     |
|---------|-----------|---------|--------------------------------------------------|
| unknown | present   | reading | the level came: something is in the door         |
| unknown | absent    | idle    |                                                  |
| unknown | hold_over | unknown |                                                  |
| idle    | present   | reading |                                                  |
| idle    | absent    | idle    |                                                  |
| idle    | hold_over | idle    |                                                  |
| reading | present   | reading |                                                  |
| reading | absent    | holding | the hold starts: `hold_s` from now               |
| reading | hold_over | reading |                                                  |
| holding | present   | reading | the hold is called off: the reader never stopped |
| holding | absent    | holding | the hold runs on from when the sensor cleared    |
| holding | hold_over | idle    |                                                  |

GPO: SET_READER_CONFIG with GPOWriteData, for which sllurp 3.0.5 has a decoder but no encoder:
`_encode_gpo_write_data` is added to its parameter registry (`Param_struct`), the way its own
parameters are declared. The GPO follows `signal_light`'s rule (on at the first alarm, off
`hold_s` after the latest; written again on every connection).
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Final

from sllurp import llrp_proto

__all__ = [
    "TRANSITIONS",
    "DoorGate",
    "DoorState",
    "GateEvent",
    "gpi_level",
    "gpi_query",
    "gpo_write",
    "start_rospec",
    "stop_rospec",
]


class DoorState(enum.Enum):
    """Where the door's reading is: see the module's table."""

    UNKNOWN = "unknown"  # connected, the sensor's level not known yet
    IDLE = "idle"
    READING = "reading"
    HOLDING = "holding"


class GateEvent(enum.Enum):
    """What the door gate is told: the sensor's level, or that the hold is over."""

    PRESENT = "present"
    ABSENT = "absent"
    HOLD_OVER = "hold_over"


_U, _I, _R, _H = DoorState.UNKNOWN, DoorState.IDLE, DoorState.READING, DoorState.HOLDING
_P, _A, _O = GateEvent.PRESENT, GateEvent.ABSENT, GateEvent.HOLD_OVER
TRANSITIONS: Final[dict[tuple[DoorState, GateEvent], DoorState]] = {
    (_U, _P): _R,
    (_U, _A): _I,
    (_U, _O): _U,
    (_I, _P): _R,
    (_I, _A): _I,
    (_I, _O): _I,
    (_R, _P): _R,
    (_R, _A): _H,
    (_R, _O): _R,
    (_H, _P): _R,
    (_H, _A): _H,
    (_H, _O): _I,
}


class DoorGate:
    """Whether a door's reader should be reading, from its presence sensor; pure, clock-free.

    Args:
        active: the sensor's port level while something is in the door (True: high).
        hold_s: how long the reading goes on after the sensor cleared.
    """

    def __init__(self, *, active: bool, hold_s: float) -> None:
        self._active = active
        self.hold_s = hold_s
        self.state = DoorState.UNKNOWN
        self.hold_until: float | None = None  # while holding

    @property
    def reading(self) -> bool:
        """Whether the reader should be reading now."""
        return self.state in (DoorState.READING, DoorState.HOLDING)

    def level(self, high: bool, now: float) -> None:
        """The sensor's port is at `high` (a GPIEvent, or the level asked for at connect)."""
        self._apply(GateEvent.PRESENT if high == self._active else GateEvent.ABSENT, now)

    def tick(self, now: float) -> None:
        """Time passes: a hold that has run out is over."""
        if self.hold_until is not None and now >= self.hold_until:
            self._apply(GateEvent.HOLD_OVER, now)

    def reset(self) -> None:
        """A new connection: the level is not known until the reader says."""
        self.state, self.hold_until = DoorState.UNKNOWN, None

    def _apply(self, event: GateEvent, now: float) -> None:
        before = self.state
        self.state = TRANSITIONS[before, event]
        if self.state is DoorState.HOLDING and before is DoorState.READING:
            self.hold_until = now + self.hold_s
        elif self.state is not DoorState.HOLDING:
            self.hold_until = None


# -- LLRP messages, as sllurp's `sendMessage` takes them ----------------------------------------

# GPIPortCurrentState's GPIState: 0 low, 1 high, 2 unknown.
_GPI_HIGH: Final = 1


def start_rospec(rospec_id: int) -> dict[str, Any]:
    """START_ROSPEC: the door's inventory starts."""
    return {"START_ROSPEC": {"ROSpecID": rospec_id}}


def stop_rospec(rospec_id: int) -> dict[str, Any]:
    """STOP_ROSPEC: the door's inventory stops (the ROSpec stays, Inactive)."""
    return {"STOP_ROSPEC": {"ROSpecID": rospec_id}}


def gpi_query() -> dict[str, Any]:
    """GET_READER_CONFIG for all of the reader's configuration, every GPI port's level among it.

    Not RequestedData 9 (GPIPortCurrentState) for the one port: sllurp 3.0.5 packs this
    message's fields out of order (RequestedData before AntennaID), which only an all-zero
    request survives.
    """
    return {"GET_READER_CONFIG": {"RequestedData": 0}}


def gpo_write(port: int, on: bool) -> dict[str, Any]:
    """SET_READER_CONFIG switching GPO `port` on (high) or off, nothing else changed."""
    data = [{"GPOPortNumber": port, "GPOData": on}]
    return {"SET_READER_CONFIG": {"ResetToFactoryDefaults": False, "GPOWriteData": data}}


def gpi_level(answer: Any, port: int) -> bool | None:
    """The level of GPI `port` in a decoded GET_READER_CONFIG_RESPONSE body: True high, False
    low, None not there or not known (GPIState 2)."""
    states = answer.get("GPIPortCurrentState", []) if isinstance(answer, dict) else []
    for state in states if isinstance(states, list) else [states]:
        if isinstance(state, dict) and state.get("GPIPortNum") == port:
            level = state.get("GPIState")
            return None if level not in (0, 1) else level == _GPI_HIGH
    return None


# GPOWriteData (LLRP 1.0.1 16.2.6.3): GPOPortNumber (16 bits), GPOData (1 bit) + 7 reserved.
_GPO_WRITE_DATA = struct.Struct("!HB")


def _encode_gpo_write_data(par: dict[str, Any], _: Any) -> bytes:
    return _GPO_WRITE_DATA.pack(int(par["GPOPortNumber"]), 0x80 if par["GPOData"] else 0)


llrp_proto.Param_struct["GPOWriteData"].setdefault("encode", _encode_gpo_write_data)
