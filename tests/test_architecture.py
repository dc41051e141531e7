"""Contracts of the design checked by code: the layers, pure rules, no import cycles, no reads
outside the repo, bounded queues.

The layers, bottom up: `gateway.domain` (frozen values; imports nothing else of the project);
`gateway.rules` (pure decisions; the standard library and `gateway.domain` only: no JSON, no
schemas, no pydantic, no biip, no wire module); the edges (`gateway.drivers`, `gateway.wire`,
`gateway.bridge`) translate between bytes and the domain and never import the rules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

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
    for path in [
        *(ROOT / "gateway" / "rules").rglob("*.py"),
        *(ROOT / "gateway" / "domain").rglob("*.py"),
    ]:
        text = path.read_text()
        for call in ("datetime.now(", "dt.datetime.now(", "time.time(", "time.monotonic("):
            assert call not in text, f"{path.name} reads the clock ({call}); inject it"


def test_nothing_reads_the_shared_folder() -> None:
    # A user's clone has no such folder. Joined at run time: a constant would be folded into
    # this module's byte code, and the .pyc would then hold the very path it looks for.
    shared = "/".join(["..", "shared"])
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


GATEWAY = ROOT / "gateway"
# The rules must not parse or validate: that is the edges' work.
TRANSLATION_MODULES = {"json", "jsonschema", "pydantic", "biip", "gateway.wire"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(path: Path) -> set[str]:
    """The project modules `path` imports (`from gateway.x import y` counts gateway.x.y when
    that is a module), at any depth of the file, TYPE_CHECKING blocks included."""
    found = set()
    for name in imports(path):
        if name == "gateway" or name.startswith("gateway."):
            found.add(name)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:
                    found.add(sub)
    return found


MODULES = {module_name(p): p for p in GATEWAY.rglob("*.py")}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_domain_imports_nothing_else_of_the_project() -> None:
    offenders = {
        module: sorted(n for n in project_imports(path) if not within(n, "gateway.domain"))
        for module, path in MODULES.items()
        if within(module, "gateway.domain")
    }
    assert {m: bad for m, bad in offenders.items() if bad} == {}


def test_rules_import_only_the_domain_and_the_standard_library() -> None:
    offenders: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        if not within(module, "gateway.rules"):
            continue
        bad = []
        for name in imports(path):
            top = name.split(".")[0]
            if any(within(name, m) for m in TRANSLATION_MODULES):
                bad.append(name)
            elif top == "gateway":
                if not (within(name, "gateway.domain") or within(name, "gateway.rules")):
                    bad.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                bad.append(name)
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}


@pytest.mark.parametrize("edge", ["gateway.drivers", "gateway.wire", "gateway.bridge"])
def test_edges_do_not_import_the_rules(edge: str) -> None:
    offenders = {
        module: sorted(n for n in project_imports(path) if within(n, "gateway.rules"))
        for module, path in MODULES.items()
        if within(module, edge)
    }
    assert {m: bad for m, bad in offenders.items() if bad} == {}


def import_cycle() -> list[str] | None:
    """One cycle in the import graph of `gateway/` (a module and the modules it imports), if any."""
    graph = {
        module: {n for n in project_imports(path) if n in MODULES and n != module}
        for module, path in MODULES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)) is not None:
            return found
    return None


def test_no_import_cycles_in_the_gateway() -> None:
    assert import_cycle() is None


def test_the_cycle_check_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check itself must be able to fail: a fake module importing itself through another.
    real = project_imports

    def with_cycle(path: Path) -> set[str]:
        found = real(path)
        if path == MODULES["gateway.domain.ids"]:
            found.add("gateway.app")
        return found

    monkeypatch.setattr(sys.modules[__name__], "project_imports", with_cycle)
    cycle = import_cycle()
    assert cycle is not None
    assert cycle[0] == cycle[-1]


def test_app_builds_drivers_from_the_registry_not_by_device_kind() -> None:
    text = (GATEWAY / "app.py").read_text()
    assert "isinstance" not in text
    assert len(text.splitlines()) < 300


LIST_OF_ANY = {"list[Any]", "List[Any]", "typing.List[Any]"}


def test_no_function_returns_a_list_of_any() -> None:
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            returns = getattr(node, "returns", None)
            if returns is not None and ast.unparse(returns).replace(" ", "") in LIST_OF_ANY:
                offenders.append(f"{module}.{getattr(node, 'name', '?')}")
    assert offenders == []
