"""Contracts of the design checked by code: pure rules, no reads outside the repo, bounded queues."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {
    "asyncio",
    "aiomqtt",
    "aiosqlite",
    "paho",
    "pymodbus",
    "serial",
    "serial_asyncio",
    "serial_asyncio_fast",
    "sllurp",
    "socket",
    "sqlite3",
    "gateway.bridge",
    "gateway.drivers",
    "gateway.storage",
    "gateway.app",
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_rules_import_no_io() -> None:
    offenders = {}
    for path in (ROOT / "gateway" / "rules").rglob("*.py"):
        bad = {
            name
            for name in imports(path)
            if any(name == m or name.startswith(m + ".") for m in IO_MODULES)
        }
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_rules_and_domain_read_no_clock() -> None:
    for path in [*(ROOT / "gateway" / "rules").rglob("*.py"), ROOT / "gateway" / "domain.py"]:
        text = path.read_text()
        for call in ("datetime.now(", "dt.datetime.now(", "time.time(", "time.monotonic("):
            assert call not in text, f"{path.name} reads the clock ({call}); inject it"


def test_nothing_reads_the_shared_folder() -> None:
    shared = "../" + "shared"  # a user's clone has no such folder
    for folder in ("gateway", "simulators", "tests", "benchmarks", "deploy", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".toml", ".json", ""}:
                assert shared not in path.read_text(errors="ignore"), path


def test_every_asyncio_queue_is_bounded() -> None:
    for path in (ROOT / "gateway").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "Queue"
            ):
                assert node.args or any(k.arg == "maxsize" for k in node.keywords), (
                    f"{path.name}:{node.lineno}: unbounded queue"
                )
