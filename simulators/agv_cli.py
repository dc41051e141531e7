"""Command lines of the MQTT simulators: a VDA 5050 robot, and an AGV fleet controller.

``python -m simulators.vda5050_robot`` runs `robot_main` and ``python -m simulators.fleet``
runs `fleet_main`: both connect to a broker and run until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import aiomqtt

from simulators import cli
from simulators.fleet import FleetController, Outcome, Vda5050
from simulators.vda5050_robot import VERSIONS, SimulatedRobot

__all__ = ["fleet_main", "robot_main"]

# How often the fleet's command line looks for task attempts that ended.
_WATCH_S = 0.1


def _add_vda5050(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interface", default="uagv", help="first level of the robots' topics")
    parser.add_argument("--manufacturer", default="SimBots", help="the robots' manufacturer")
    parser.add_argument("--step-s", type=cli.non_negative, default=2.0, help="seconds a step takes")
    parser.add_argument(
        "--no-load-ids",
        dest="load_ids",
        action="store_false",
        help="list the loads on board without their loadId (the gateway uses the robot's task)",
    )


async def _robot(robot: SimulatedRobot, transports: Sequence[Sequence[str]]) -> None:
    try:
        async with robot:
            cli.say(f"VDA 5050 {robot.version} robot online, state on {robot.topic('state')}")
            for load, source, destination in transports:
                job = await robot.transport(load, source, destination)
                cli.say(f"{job.order_id}: {load} picked at {source}, dropped at {destination}")
            await asyncio.Event().wait()
    except aiomqtt.MqttError as err:
        raise ConnectionError(f"MQTT broker: {err}") from err


def robot_main(argv: Sequence[str] | None = None) -> int:
    """Command line: a VDA 5050 robot on a broker, running the transports asked for."""
    parser = cli.parser(
        "simulators.vda5050_robot",
        "A VDA 5050 robot (AGV) on an MQTT 5 broker: connection and state messages, and the"
        " transport orders given with --transport.",
    )
    cli.add_broker(parser)
    parser.add_argument("--serial", default="agv-001", help="the robot's serial number")
    parser.add_argument("--version", choices=VERSIONS, default=VERSIONS[0], help="VDA 5050 version")
    _add_vda5050(parser)
    parser.add_argument("--start-node", default="home", help="the node it stands on at start")
    parser.add_argument(
        "--state-interval-s", type=cli.positive, default=1.0, help="a state at least this often"
    )
    parser.add_argument(
        "--transport",
        nargs=3,
        action="append",
        default=[],
        metavar=("LOAD", "FROM", "TO"),
        help="pick LOAD (an SSCC) at node FROM and drop it at node TO; repeatable, in order",
    )
    args = parser.parse_args(argv)
    robot = SimulatedRobot(
        host=args.host,
        port=args.port,
        version=args.version,
        interface=args.interface,
        manufacturer=args.manufacturer,
        serial=args.serial,
        start_node=args.start_node,
        state_interval_s=args.state_interval_s,
        step_s=args.step_s,
        report_load_ids=args.load_ids,
    )
    return cli.run(_robot(robot, args.transport))


def _outcome_line(outcome: Outcome) -> str:
    where = f" at {outcome.location}" if outcome.location else ""
    why = outcome.reason or outcome.refusal
    return (
        f"{outcome.robot}: task {outcome.task_id} ({outcome.sscc}, {outcome.source} ->"
        f" {outcome.destination}) {outcome.did}{where}" + (f": {why}" if why else "")
    )


async def _fleet(fleet: FleetController) -> None:
    async with fleet, asyncio.TaskGroup() as tasks:
        cli.say(f"fleet {fleet.fleet_id} ({', '.join(fleet.robots)}) asking {fleet.base}/agv/next")
        running = tasks.create_task(fleet.run())
        shown = 0
        while True:
            for outcome in fleet.log[shown:]:
                cli.say(_outcome_line(outcome))
            shown = len(fleet.log)
            if running.done():  # no robot left in service
                return
            await asyncio.sleep(_WATCH_S)


def fleet_main(argv: Sequence[str] | None = None) -> int:
    """Command line: a fleet controller leasing tasks from a gateway for its robots."""
    parser = cli.parser(
        "simulators.fleet",
        "An AGV fleet controller: asks the gateway for transport tasks for its robots (MQTT 5"
        " request/response), runs them and reports accepted, picked and dropped.",
    )
    cli.add_broker(parser)
    parser.add_argument("--site", required=True, help="the gateway's site, as in its config")
    parser.add_argument("--gateway", required=True, help="the gateway's id, as in its config")
    parser.add_argument("--fleet", default="fleet-1", help="this fleet controller's id")
    parser.add_argument("--robots", nargs="+", default=["agv-1"], help="the robots' ids")
    parser.add_argument(
        "--capabilities", nargs="+", default=["putaway", "move"], help="what the robots can do"
    )
    parser.add_argument(
        "--vda5050",
        nargs="?",
        const=VERSIONS[0],
        choices=VERSIONS,
        metavar="VERSION",
        help="the robots are VDA 5050 vehicles of this version: their state tells picks and drops",
    )
    _add_vda5050(parser)
    parser.add_argument(
        "--poll-s", type=cli.positive, default=1.0, help="pause before asking again when idle"
    )
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    args = parser.parse_args(argv)
    vda5050 = (
        None
        if args.vda5050 is None
        else Vda5050(
            version=args.vda5050,
            interface=args.interface,
            manufacturer=args.manufacturer,
            report_load_ids=args.load_ids,
        )
    )
    fleet = FleetController(
        args.host,
        args.port,
        base=f"gw/{args.site}/{args.gateway}",
        fleet_id=args.fleet,
        robots=args.robots,
        capabilities=args.capabilities,
        vda5050=vda5050,
        step_s=args.step_s,
        poll_s=args.poll_s,
        protocol=args.protocol,
    )
    return cli.run(_fleet(fleet))
