"""The status page (#14) in headless Chromium against the running demo (`gateway demo`): it
loads with no console error, each pass appears on its door within 2 s of its transaction
reaching an MQTT subscriber, and the exception charts count the demo's planted exceptions as
the transactions and events on MQTT do."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.ops.status import SERIES

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
SCREENSHOT = os.environ.get("STATUS_PAGE_SCREENSHOT")  # where to keep one (the docs' copy)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt install chromium)"),
    pytest.mark.timeout(120),
    pytest.mark.slow(35),
]


@contextlib.asynccontextmanager
async def demo(tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    """`gateway demo` on any free port; (its broker's port, the status page's address)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--pace",
        "0.3",
        "--pallet-every",
        "3",
        "--state-dir",
        str(tmp_path),
        "--http-port",
        "0",
        "--no-browser",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    output = ""
    try:
        async with asyncio.timeout(30):
            while not (
                re.search(r"broker at 127\.0\.0\.1:(\d+)", output) and "Status page" in output
            ):
                output += (await process.stdout.readline()).decode()
        broker = re.search(r"broker at 127\.0\.0\.1:(\d+)", output)
        page = re.search(r"Status page: (http://\S+)", output)
        assert broker and page, output
        drain = asyncio.create_task(process.stdout.read())
        yield int(broker.group(1)), page.group(1)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await process.wait()
        assert "Traceback" not in (await drain).decode(errors="replace")
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class Published:
    """What a subscriber of the demo's broker received, and when."""

    def __init__(self) -> None:
        self.tx: list[tuple[float, str, dict[str, Any]]] = []  # (monotonic s, kind, payload)
        self.events: list[dict[str, Any]] = []

    async def follow(self, port: int) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="test-page", protocol=aiomqtt.ProtocolVersion.V311
        ) as client:
            await client.subscribe("gw/+/+/tx/+", qos=1)
            for topic in ("event", "receipt", "shipment"):
                await client.subscribe(f"gw/+/+/{topic}", qos=1)
            async for message in client.messages:
                assert isinstance(message.payload, bytes | bytearray)
                body = json.loads(message.payload)
                levels = str(message.topic).split("/")
                kind = levels[-1]
                if (
                    levels[0] != "gw"
                    or levels[3:] not in (["tx", kind], [kind])
                    or kind == "status"
                ):
                    continue  # amqtt also delivers topics its filters do not match
                if kind == "event":
                    self.events.append(body)
                else:
                    self.tx.append((time.monotonic(), kind, body))

    def exceptions(self) -> Counter[str]:
        """The chart series as the messages count them."""
        of = {key: name for name, keys in SERIES.items() for key in keys}
        counts: Counter[str] = Counter()
        for _, kind, tx in self.tx:
            if kind in ("receipt", "shipment"):  # closed: its lines short and over
                for line in tx["lines"]:
                    for code in ("short", "over"):
                        counts[of.get((kind, code), "")] += 1 if line[code] else 0
                continue
            for exception in tx.get("exceptions", ()):  # a move's are codes, the others' objects;
                # a count has none (its totals say what it found)
                code = exception["code"] if isinstance(exception, dict) else exception
                counts[of.get((kind, code), "")] += 1
        del counts[""]
        for event in self.events:
            name = of.get(("event", event["code"]))
            if name:
                counts[name] += 1
        return counts


async def test_the_status_page_follows_the_demo_live(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    published = Published()
    async with demo(tmp_path) as (port, url), async_playwright() as playwright:
        follower = asyncio.create_task(published.follow(port))
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1400})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.wait_for_selector('[data-door="D03"]')
            await page.wait_for_selector('[data-door="D05"]')
            # Each pass at either door shows on the page within 2 s of its transaction on MQTT.
            checked: list[float] = []
            deadline = time.monotonic() + 60
            wanted = {"unexpected", "expired", "wrong pallet"}
            while len(checked) < 6 or not wanted <= set(published.exceptions()):
                assert time.monotonic() < deadline, (checked, published.exceptions())
                passes = [(t, tx) for t, kind, tx in published.tx if kind in ("receive", "ship")]
                for at, tx in passes[len(checked) :]:
                    if tx["evidence"]["source"] != "portal":
                        checked.append(0.0)
                        continue
                    door = tx["door"]
                    await page.wait_for_selector(
                        f'[data-door="{door}"] [data-tx-id="{tx["tx_id"]}"]',
                        timeout=max(1.0, 2.0 - (time.monotonic() - at)) * 1000,
                    )
                    checked.append(time.monotonic() - at)
                await asyncio.sleep(0.1)
            assert max(checked) <= 2.0, checked
            print(f"passes on the page after their MQTT message: {sorted(checked)[-3:]} s (worst)")
            # The charts count what MQTT carried, series by series.
            async with asyncio.timeout(10):
                while True:
                    shown = await page.evaluate(
                        """() => {
                            const c = window.gatewayCharts["chart-hours"];
                            return Object.fromEntries(c.series.slice(1).map((s, i) =>
                                [s.label, c.raw[i].reduce((a, b) => a + b, 0)]));
                        }"""
                    )
                    counted = published.exceptions()
                    if all(shown[name] == counted[name] for name in SERIES):
                        break
                    await asyncio.sleep(0.2)
            assert wanted <= {name for name, n in shown.items() if n}
            # Stacked: the first series' bars are the sum of all of them.
            top = await page.evaluate(
                """() => { const c = window.gatewayCharts["chart-hours"];
                           return c.data[1].reduce((a, b) => a + b, 0); }"""
            )
            assert top == sum(shown.values())
            totals = await page.eval_on_selector_all(
                "#totals tbody tr",
                "rows => rows.map(r => [r.dataset.series, Number(r.cells[1].textContent)])",
            )
            assert dict(totals) == shown
            picture = await page.screenshot(full_page=True)
            assert picture.startswith(b"\x89PNG")
            if SCREENSHOT:
                Path(SCREENSHOT).write_bytes(picture)
            assert errors == []
        finally:
            await browser.close()
            follower.cancel()
