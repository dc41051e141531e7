"""What start-up loads (#13: idle footprint): heavy libraries only when something needs them,
and every `format` the shipped schemas use still checked by the lighter format checker.

benchmarks/footprint.py measures the memory and the start time; these tests keep the imports
that made the difference from coming back unnoticed.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.validators import validator_for

from gateway.drivers.registry import DRIVERS, MODULES
from gateway.schemas import NAMES

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "gateway" / "schemas"

# Loaded with their first use: a WMS record, an AGV request, a label, an EPCIS event, a large
# payload for the decoding worker, a device of their kind.
LAZY = (
    "biip",
    "jsonschema",
    "multiprocessing",
    "concurrent.futures.process",
    "pymodbus",
    "sllurp",
    "serial",
    "serial_asyncio_fast",
    # The HTTP endpoint ([http] enabled): aiohttp and prometheus-client.
    "aiohttp",
    "prometheus_client",
)


def loaded_after(code: str) -> set[str]:
    """Which of `LAZY` a fresh interpreter has loaded after running `code`."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_start_up_loads_no_library_only_some_configurations_or_messages_need() -> None:
    loaded = loaded_after(
        "import gateway.cli, gateway.app\n"
        "from gateway.config import load_config\n"
        "from gateway.wiring import epcis_settings\n"
        "config = load_config('gateway/examples/demo.toml')\n"
        "assert epcis_settings(config) is not None\n"
    )
    assert loaded == set()


def test_a_device_kind_loads_its_own_driver_library_only() -> None:
    loaded = loaded_after(
        "from pathlib import Path\n"
        "from gateway.app import Gateway\n"
        "from tests.gateway_helpers import build, site_config\n"
        "raw = site_config(Path('/nonexistent'), broker_port=1883, scanner=None, reader_port=5084)\n"
        "Gateway(build(raw, Path('/nonexistent')))\n"
    )
    assert loaded == {"sllurp"}


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_the_registry_builds_each_kind_with_its_modules_build(kind: str) -> None:
    module = importlib.import_module(MODULES[kind])
    assert kind == module.KIND
    assert DRIVERS[kind] is module.build


def formats(node: Any) -> Iterator[str]:
    """Every `format` keyword's value in a schema (not a property that happens to be called so)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "format" and isinstance(value, str):
                yield value
            elif key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    yield from formats(sub)
            else:
                yield from formats(value)
    elif isinstance(node, list):
        for item in node:
            yield from formats(item)


def load(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def test_every_format_our_schemas_use_is_checked() -> None:
    # gateway.schemas validates with Draft202012Validator.FORMAT_CHECKER.
    used = {f for name in NAMES for f in formats(load(SCHEMAS / f"{name}.schema.json"))}
    assert used == {"date", "date-time", "uuid"}  # a new one: is its checker installed?
    assert used <= set(Draft202012Validator.FORMAT_CHECKER.checkers)


def test_every_format_the_vendor_schemas_use_is_checked() -> None:
    # EPCIS: Draft7Validator.FORMAT_CHECKER (gateway.wire.epcis); VDA 5050: the checker of the
    # draft its `$schema` names (gateway.wire.vda5050).
    epcis = load(SCHEMAS / "vendor" / "epcis-2.0" / "EPCIS-JSON-Schema.json")
    assert set(formats(epcis)) == {"uri", "date-time"}
    assert set(formats(epcis)) <= set(Draft7Validator.FORMAT_CHECKER.checkers)
    for path in sorted((SCHEMAS / "vendor").glob("vda5050-*/*.schema.json")):
        doc = load(path)
        assert set(formats(doc)) <= set(validator_for(doc).FORMAT_CHECKER.checkers), path


@pytest.mark.parametrize(
    ("fmt", "bad"),
    [
        ("date-time", "2026-12-07 14:00"),  # rfc3339-validator
        ("uri", "no scheme"),  # rfc3986-validator
        ("uuid", "1234"),
        ("date", "2026-13-01"),
    ],
)
def test_the_format_checks_reject_what_they_should(fmt: str, bad: str) -> None:
    schema = {"type": "string", "format": fmt}
    for cls in (Draft202012Validator, Draft7Validator):
        if fmt not in cls.FORMAT_CHECKER.checkers:
            continue
        errors = list(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(bad))
        assert [e.validator for e in errors] == ["format"], (cls.__name__, fmt)
