"""Every device kind the gateway can drive: its config `kind` -> how its driver is built.

To add a device kind: write its driver module (a class with `run()` and a
`build(device, ctx)` function), add its config model to `gateway.config.DeviceConfig`, and add
one line here. The application builds every configured device through this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.drivers import llrp, modbus_scale, scanner, sics_scale, signal_light
from gateway.drivers.base import DriverBuilder

# The key is the device's config `kind`, also the kind its status shows.
DRIVERS: Final[Mapping[str, DriverBuilder]] = {
    scanner.KIND: scanner.build,
    llrp.KIND: llrp.build,
    sics_scale.KIND: sics_scale.build,
    modbus_scale.KIND: modbus_scale.build,
    signal_light.KIND: signal_light.build,
}
