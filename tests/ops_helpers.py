"""Test helpers for the gateway's HTTP endpoint: its URL, a GET, the metrics as samples."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def listening(gateway: Gateway) -> str:
    """The base URL of a running gateway's HTTP endpoint."""
    async with asyncio.timeout(10):
        while gateway.ops is None or gateway.ops.port is None:
            await asyncio.sleep(0.02)
    return f"http://127.0.0.1:{gateway.ops.port}"


async def get(url: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        return response.status, await response.text()


def samples(exposition: str) -> Samples:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def total(values: Samples, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in values.items()
        if n == name and all((k, labels[k]) in ls for k in labels)
    )
