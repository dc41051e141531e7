"""`gateway demo` (what `make demo` runs) starts, shows moves, dock transactions, weighings and
AGV putaways, and stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.gateway_helpers import assert_valid


class DeviceStatuses:
    """Collects the demo's retained device statuses from its embedded broker (paho's thread)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._client: mqtt.Client | None = None

    def start_once(self, output: bytes) -> None:
        found = re.search(rb"broker at 127\.0\.0\.1:(\d+)", output)
        if self._client is not None or found is None:
            return
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-demo-statuses")
        client.on_connect = lambda c, *_: c.subscribe("gw/+/+/device/+/status", qos=1)
        client.on_message = lambda _c, _u, m: self.received.append(json.loads(m.payload))
        client.connect("127.0.0.1", int(found.group(1)))
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()


@pytest.mark.slow(16)
def test_demo_shows_transactions_and_stops_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--pace", "0.3", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    output = b""
    deadline = time.monotonic() + 60
    statuses = DeviceStatuses()
    try:
        while time.monotonic() < deadline:
            output += process.stdout.read() or b""
            statuses.start_once(output)
            wanted = (b"MOVE", b"RECEIVE", b"SHIP", b"weighed", b"by robot", b"COUNT", b"ZONE")
            if all(w in output for w in wanted):
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(30)
        output += process.stdout.read() or b""
    finally:
        if process.poll() is None:
            process.kill()
    text = output.decode(errors="replace")
    assert "MOVE" in text, text[-2000:]
    assert "RECEIVE" in text, text[-2000:]
    assert "SHIP" in text, text[-2000:]
    assert "weighed" in text, text[-2000:]  # the Modbus scale at D03
    assert "TASK   putaway" in text, text[-2000:]  # a received pallet's putaway task
    assert "by robot agv-" in text, text[-2000:]  # ... done by a simulated AGV
    assert "arrived Z-0" in text, text[-2000:]  # the floor zones' reader
    assert re.search(r"COUNT  CC-0001 of Z-01, Z-02 \(command\): pallets: 0 found", text), text[
        -3000:
    ]
    assert "GATEWAY offline (stopped)" in text, text[-2000:]
    assert "Traceback" not in text, text[-4000:]
    assert process.returncode == 0
    # Every device status the demo published is valid against the published schema.
    statuses.stop()
    kinds = {s["kind"] for s in statuses.received}
    assert {"barcode_scanner", "llrp_reader", "modbus_scale"} <= kinds, kinds
    for status in statuses.received:
        assert_valid("device-status", status)
    assert (tmp_path / "gateway.db").exists()


def test_without_the_demo_extra_the_demo_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A production install has no embedded broker (amqtt is the `demo` extra).
    import sys

    from typer.testing import CliRunner

    from gateway.cli import app

    for name in [
        m for m in sys.modules if m == "amqtt" or m.startswith(("amqtt.", "gateway.demo"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "amqtt", None)  # `import amqtt` now fails
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 2
    assert "pip install 'warehouse-edge-gateway[demo]'" in result.output
