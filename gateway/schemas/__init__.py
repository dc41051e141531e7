"""JSON Schemas of every payload the gateway publishes, shipped with the package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # jsonschema is imported with the first validator (see `validator`)
    from jsonschema import Draft202012Validator

NAMES = (
    "move",
    "event",
    "gateway-status",
    "device-status",
    "pass",
    "receive",
    "ship",
    "dock-summary",
    "asn",
    "shipment",
    "product",
    "location",
    "agv-next",
    "agv-progress",
    "agv-cancel",
    "agv-response",
    "agv-task",
    "wms-task",
)


@cache
def schema(name: str) -> dict[str, Any]:
    """The schema called `name` (one of `NAMES`)."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for the schema called `name`, checking formats too.

    jsonschema (3-4 MiB, 30-40 ms to import) comes with the first one: a gateway that takes
    nothing from outside until its first WMS record or AGV request starts without it.
    """
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
