"""Large inbound payloads are decoded in a worker process, not on the event loop's.

Parsing and checking a 1 MiB ship order (47,000 SSCCs against their schema and check digits)
takes about a second of pure Python. On the event loop that stalls every driver and the rules;
on a thread it still holds the interpreter lock, and every other thread (SQLite's, the loop's)
then waits up to the lock's switch interval each time it wants it back: seconds of latency for
a forklift's scan. A separate process has its own interpreter. The result comes back as
pickled domain values (a few milliseconds for the largest).

The worker starts with the first large payload and stays for the next ones (one at a time, in
arrival order). A worker that dies is replaced; the payload it held is decoded on a thread
instead, so nothing is lost. multiprocessing is imported then too, not at start.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
from typing import TYPE_CHECKING

import structlog

from gateway.domain import Event
from gateway.wire.inbound import PureDecoder, Received

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

log = structlog.get_logger("gateway.bridge")

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends


def _worker_init(gateway: int) -> None:
    """The worker leaves Ctrl-C and SIGTERM to the gateway, which shuts it down, and dies with
    the gateway (process `gateway`) however that ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with(gateway)


def _die_with(gateway: int) -> None:
    """Linux: the kernel kills this process when the gateway's process ends. Otherwise a
    gateway killed by SIGKILL (the OOM killer, a crash, a test) leaves its idle worker behind,
    and every restart adds one (seen: 52 of them, 56 MiB each, after a day of tests)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != gateway:  # it ended before the prctl
        os._exit(0)


class DecodePool:
    """One worker process that runs pure decoders (see the module docstring)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.decoded = 0  # payloads decoded by the worker
        self.worker_failures = 0  # workers that died (their payload was decoded on a thread)

    async def decode(self, decoder: PureDecoder, message: Received) -> Event | None:
        """`decoder(message)` in the worker process; raises what the decoder raises."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        loop = asyncio.get_running_loop()
        if self._pool is None:
            # spawn: a fork of a process with threads (SQLite's, asyncio's) may deadlock.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(os.getpid(),),
            )
        try:
            event = await loop.run_in_executor(self._pool, decoder, message)
        except (BrokenProcessPool, OSError, RuntimeError, pickle.PicklingError) as err:
            # The worker died, could not start (no more tasks, no semaphores) or could not
            # hand its result back: a new one next time; this payload on a thread.
            self.worker_failures += 1
            log.warning(
                "the decoding worker failed; decoding on a thread",
                topic=message.topic[:80],
                error=repr(err)[:200],
            )
            self.close()
            return await asyncio.to_thread(decoder, message)
        self.decoded += 1
        return event

    def close(self) -> None:
        """Stop the worker (it finishes nothing: a payload it held is received again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
