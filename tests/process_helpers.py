"""Test helpers: the gateway as a real process (its CLI), its TOML config and its SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any


def write_toml(path: Path, raw: dict[str, Any]) -> Path:
    """A minimal TOML writer for the nested test config (tables and inline values)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    def table(prefix: str, data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in data.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    devices = raw.pop("devices", [])
    table("", raw)
    for device in devices:
        lines.append("[[devices]]")
        lines.extend(f"{k} = {value(v)}" for k, v in device.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class GatewayProcess:
    """`python -m gateway run --config <config>` as a child process, its log appended to `log`."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(30)

    async def signal_async(self, sig: int, timeout: float = 30) -> int:
        """`signal`, waiting without blocking the event loop (simulators in it keep going)."""
        process = self.process
        assert process is not None
        process.send_signal(sig)
        await wait_until(lambda: process.poll() is not None, timeout, "the gateway to exit")
        return process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def outbox_rows(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(
                conn.execute("SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/tx/move'").fetchone()[
                    0
                ]
            )
        except sqlite3.OperationalError:
            return 0


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
