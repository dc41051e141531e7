"""Shared by the scale driver tests: collecting samples, running a driver in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from gateway.domain import Weighing, WeightSample
from gateway.rules.weighing import WeighingSettings, WeightCapture
from gateway.supervisor import DeviceError


class Samples:
    """What a driver emitted (and the weighings they made), with a way to wait for one."""

    def __init__(self, settings: WeighingSettings | None = None) -> None:
        self.items: list[WeightSample] = []
        self.weighings: list[Weighing] = []
        self._capture = WeightCapture(settings or WeighingSettings())
        self._new = asyncio.Event()

    async def emit(self, sample: WeightSample) -> None:
        self.items.append(sample)
        self.weighings.extend(self._capture.on_sample(sample))
        self._new.set()

    async def wait_for(
        self, match: Callable[[WeightSample], bool], timeout: float = 3.0
    ) -> WeightSample:
        start = len(self.items)
        async with asyncio.timeout(timeout):
            while True:
                for sample in self.items[start:]:
                    if match(sample):
                        return sample
                start = len(self.items)
                self._new.clear()
                await self._new.wait()


def settled_at(kg: float) -> Callable[[WeightSample], bool]:
    """Matches a stable sample of `kg`."""
    return lambda s: s.stable is True and s.kg == pytest.approx(kg)


@contextlib.asynccontextmanager
async def running(
    driver_run: Callable[[], Coroutine[Any, Any, None]],
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a driver (or its supervisor) for the block; cancel it after."""
    task = asyncio.ensure_future(driver_run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DeviceError):
            await task
