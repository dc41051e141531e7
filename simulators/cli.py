"""What the simulators' command lines share: their common options, and running until stopped.

Each simulator runs as ``python -m simulators.<name>``, prints one line saying where the gateway
can reach it (a TCP address, or the symlink to its pty), and runs until Ctrl-C or SIGTERM; then
it leaves as a device does when switched off (a pty's symlink is removed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from simulators.load_cell import LoadCell

__all__ = [
    "add_broker",
    "add_link",
    "add_listener",
    "add_load",
    "add_seed",
    "add_serial_or_tcp",
    "non_negative",
    "parser",
    "play_load",
    "positive",
    "run",
    "say",
    "serial_or_tcp",
]


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in its help, unless there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, []) or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for ``python -m <module>`` that shows the options' defaults."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}", description=description, formatter_class=_ShowDefaults
    )


def add_listener(parser: argparse.ArgumentParser, *, port: int | None) -> None:
    """``--host`` and ``--port``: where a simulated network device listens."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=int, default=port, help="TCP port; 0 picks a free one")


def add_broker(parser: argparse.ArgumentParser) -> None:
    """``--host`` and ``--port``: the MQTT broker a simulated client connects to."""
    parser.add_argument("--host", default="127.0.0.1", help="the MQTT broker's address")
    parser.add_argument("--port", type=int, default=1883, help="the MQTT broker's port")


def add_link(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--link``: the symlink to the pty, the serial port the gateway opens."""
    parser.add_argument(
        "--link",
        type=Path,
        required=required,
        help="symlink to create to the pty: the serial port to give the gateway",
    )


def add_serial_or_tcp(parser: argparse.ArgumentParser) -> None:
    """``--link`` for a device on a pty, or ``--host`` and ``--port`` for one on TCP.

    `serial_or_tcp` tells which was asked for.
    """
    add_link(parser, required=False)
    add_listener(parser, port=None)


def serial_or_tcp(parser: argparse.ArgumentParser, args: argparse.Namespace) -> bool:
    """Whether `args` asks for a pty (True) or TCP (False); exactly one of them (or exit 2)."""
    if (args.link is None) == (args.port is None):
        parser.error("give either --link (a serial port) or --port (TCP)")
    return args.link is not None


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed``: the same seed plays the same run."""
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices")


def add_load(parser: argparse.ArgumentParser) -> None:
    """``--weight``, ``--every`` and ``--settle-s``: what a scale's platform carries (`play_load`)."""
    parser.add_argument(
        "--weight", type=float, default=0.0, help="load put on the platform at start, kg"
    )
    parser.add_argument(
        "--every",
        type=non_negative,
        default=0.0,
        metavar="S",
        help="take the load off and put it back every S seconds (each time a new weighing);"
        " 0: leave it on",
    )
    parser.add_argument(
        "--settle-s", type=non_negative, default=1.0, help="seconds a reading takes to settle"
    )


async def play_load(load: LoadCell, *, kg: float, every_s: float, settle_s: float) -> None:
    """Put `kg` on the platform; with `every_s`, take it off and back on that often, for ever."""
    if kg:
        load.place(kg, settle_s)
        say(f"placed {kg} kg")
    if not every_s:
        await asyncio.Event().wait()
    while True:
        await asyncio.sleep(every_s / 2)
        load.remove(settle_s)
        say("removed the load")
        await asyncio.sleep(every_s / 2)
        load.place(kg, settle_s)
        say(f"placed {kg} kg")


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a number of 0 or more."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def say(line: str) -> None:
    """Print a line at once (stdout may be a pipe read by a test or a log collector)."""
    print(line, flush=True)


def run(device: Coroutine[Any, Any, object]) -> int:
    """Run `device` until it returns or until SIGINT / SIGTERM cancels it; the exit status.

    Cancelling lets the device's ``async with`` blocks unplug and close it properly. An OSError
    (a port in use, a broker not reachable) is printed as one line, with exit status 1.
    """

    async def main() -> None:
        task = asyncio.ensure_future(device)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
