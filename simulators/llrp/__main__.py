"""Command line: an LLRP RFID reader at a dock door, with pallets passing through, until Ctrl-C.

    python -m simulators.llrp --port 5084 --pallets 100 --every 10 --tags 20

A pallet of `--tags` tagged cases (SGTIN-96) and its SSCC-96 label passes the door every
`--every` seconds, in runs of inbound and outbound pallets (a truck unloaded, then one loaded)
or one way only (`--direction`); `--strays` tags sit near the door and never cross. The
scenario's clock starts when the gateway first starts an inventory (enables its ROSpec); each
pallet is printed as it starts crossing, the ground truth to compare the gateway's passes with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Final

from simulators import cli
from simulators.llrp.scenario import Direction, Scenario, day_scenario
from simulators.llrp.server import LlrpReaderSimulator

__all__ = ["main", "scenario"]

# How long a pallet takes through the read zone (3 m either side of the door), at most.
_CROSSING_S: Final = 3.0
# How often the command line looks whether the scenario's clock has started.
_WATCH_S: Final = 0.2


def scenario(
    *,
    pallets: int,
    every_s: float,
    tags: int,
    strays: int,
    direction: Direction | None,
    door: str,
    seed: int,
    time_scale: float,
) -> Scenario:
    """A pallet of `tags` cases every `every_s` seconds; `direction` None: runs of both ways."""
    crossing_s = min(_CROSSING_S, every_s)
    day = day_scenario(
        pallets,
        seed=seed,
        time_scale=time_scale,
        door=door,
        strays=strays,
        cases=(tags, tags),
        duration_s=crossing_s,
        gap_s=(every_s - crossing_s, every_s - crossing_s),
    )
    if direction is None:
        return day
    one_way = [dataclasses.replace(p, direction=direction) for p in day.pallets]
    return dataclasses.replace(day, pallets=one_way)


async def _at(reader: LlrpReaderSimulator, scenario_s: float) -> None:
    """Return once the reader's scenario clock has reached `scenario_s`."""
    # The clock is the reader's, with no event to wait on; it stands still until an inventory.
    while (ahead := scenario_s - reader.scenario_time) > 0:  # noqa: ASYNC110
        await asyncio.sleep(ahead / reader.scenario.time_scale if reader.started else _WATCH_S)


async def _serve(reader: LlrpReaderSimulator, host: str) -> None:
    async with reader:
        door = reader.scenario
        cli.say(
            f"LLRP reader at door {door.door} listening on {host}:{reader.port}:"
            f" {len(door.pallets)} pallets, {len(door.strays)} stray tags;"
            " the clock starts with the first inventory"
        )
        for number, crossing in enumerate(door.crossings, 1):
            await _at(reader, crossing.start_s)
            cli.say(
                f"{crossing.start_s:8.1f} s  pallet {number} crossing {crossing.direction},"
                f" {len(crossing.epcs)} tags"
            )
        cli.say("every pallet has crossed; Ctrl-C to stop the reader")
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: an LLRP reader with pallets passing its door, until Ctrl-C."""
    parser = cli.parser(
        "simulators.llrp",
        "An LLRP RFID reader (LLRP 1.0.1, 4 antennas: 1 and 2 outside, 3 and 4 inside) at a"
        " dock door, with pallets of tagged cases passing through.",
    )
    cli.add_listener(parser, port=5084)
    parser.add_argument("--pallets", type=int, default=100, help="pallets that pass the door")
    parser.add_argument(
        "--every", type=cli.positive, default=10.0, metavar="S", help="a pallet every S seconds"
    )
    parser.add_argument("--tags", type=int, default=20, help="tagged cases on each pallet")
    parser.add_argument(
        "--direction",
        choices=("both", "inbound", "outbound"),
        default="both",
        help="which way pallets pass; both: runs of inbound and outbound (truck by truck)",
    )
    parser.add_argument("--strays", type=int, default=4, help="tags near the door, not crossing")
    parser.add_argument("--door", default="dock-1", help="the door's name, for the printout")
    parser.add_argument(
        "--time-scale", type=cli.positive, default=1.0, help="scenario seconds per second"
    )
    parser.add_argument(
        "--reads-per-s", type=cli.positive, default=1000.0, help="the reader's read rate"
    )
    cli.add_seed(parser)
    args = parser.parse_args(argv)
    if args.tags < 1 or args.pallets < 0 or args.strays < 0:
        parser.error("--tags must be at least 1, --pallets and --strays not negative")
    door = scenario(
        pallets=args.pallets,
        every_s=args.every,
        tags=args.tags,
        strays=args.strays,
        direction=None if args.direction == "both" else args.direction,
        door=args.door,
        seed=args.seed,
        time_scale=args.time_scale,
    )
    reader = LlrpReaderSimulator(door, host=args.host, port=args.port, reads_per_s=args.reads_per_s)
    return cli.run(_serve(reader, args.host))


if __name__ == "__main__":
    raise SystemExit(main())
