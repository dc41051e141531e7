"""Every device kind the gateway can drive: its config `kind` -> how its driver is built.

To add a device kind: write its driver module (a class with `run()`, a `KIND` and a
`build(device, ctx)` function), add its config model to `gateway.config.DeviceConfig`, and add
one line here. The application builds every configured device through this table.

A driver module is imported when a device of its kind is built, not before: a site without an
LLRP reader never loads sllurp, one without a Modbus device never loads pymodbus, one without a
serial device never loads pyserial.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Final

from gateway.drivers.base import DriverBuilder

# The key is the device's config `kind`, also the kind its status shows; the value, the module
# of its driver (whose `KIND` is the key: tests/test_device_status.py checks it).
MODULES: Final[Mapping[str, str]] = {
    "barcode_scanner": "gateway.drivers.scanner",
    "llrp_reader": "gateway.drivers.llrp",
    "sics_scale": "gateway.drivers.sics_scale",
    "modbus_scale": "gateway.drivers.modbus_scale",
    "signal_light": "gateway.drivers.signal_light",
    "zpl_printer": "gateway.drivers.zpl_printer",
}


class _Registry(Mapping[str, DriverBuilder]):
    """`MODULES`, each module's `build` imported on first lookup."""

    def __getitem__(self, kind: str) -> DriverBuilder:
        builder: DriverBuilder = importlib.import_module(MODULES[kind]).build
        return builder

    def __iter__(self) -> Iterator[str]:
        return iter(MODULES)

    def __len__(self) -> int:
        return len(MODULES)


DRIVERS: Final[Mapping[str, DriverBuilder]] = _Registry()
