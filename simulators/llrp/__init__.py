"""An LLRP RFID reader at a dock door: enough LLRP 1.0.1 for sllurp, with scripted tags.

- `codec`: LLRP frames, sans-IO (reader-side encoders, request parsers, a frame splitter).
- `scenario`: pallets crossing the door, stray tags, quiet spells, the ground truth, and the
  radio model that turns them into reads (RSSI curves, antenna bleed, a shared read budget).
- `server`: `LlrpReaderSimulator`, the asyncio TCP server that plays a scenario.
"""

from simulators.llrp.scenario import (
    Crossing,
    Direction,
    EmptyReports,
    GpiChange,
    Pallet,
    PortalRadio,
    Scenario,
    StrayTag,
    TagRead,
    day_scenario,
)
from simulators.llrp.server import GpioPorts, LlrpReaderSimulator, MalformedKind, SimulatorStats

__all__ = [
    "Crossing",
    "Direction",
    "EmptyReports",
    "GpiChange",
    "GpioPorts",
    "LlrpReaderSimulator",
    "MalformedKind",
    "Pallet",
    "PortalRadio",
    "Scenario",
    "SimulatorStats",
    "StrayTag",
    "TagRead",
    "day_scenario",
]
