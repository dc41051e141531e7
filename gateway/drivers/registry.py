"""Every device kind the gateway can drive: its config `kind` -> how its driver is built.

To add a device kind: write its driver module (a class with `run()` and a
`build(device, ctx)` function), add its config model to `gateway.config.DeviceConfig`, and add
one line here. The application builds every configured device through this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from gateway.drivers import llrp, modbus_scale, scanner, sics_scale, signal_light
from gateway.drivers.base import DriverKind

DRIVERS: Final[Mapping[str, DriverKind]] = {
    scanner.KIND: DriverKind(scanner.KIND, scanner.build),
    llrp.KIND: DriverKind(llrp.KIND, llrp.build),
    sics_scale.KIND: DriverKind(sics_scale.KIND, sics_scale.build),
    modbus_scale.KIND: DriverKind(modbus_scale.KIND, modbus_scale.build),
    signal_light.KIND: DriverKind(signal_light.KIND, signal_light.build),
}
