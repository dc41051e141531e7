"""The `gateway` command: run, check-config and demo."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer

from gateway import __version__
from gateway.app import Gateway
from gateway.config import ConfigError, load_config
from gateway.logs import configure_logging

app = typer.Typer(
    help="Warehouse edge gateway: scanners, RFID portals and scales in; "
    "validated receive, ship and move transactions out over MQTT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigPath = Annotated[
    Path,
    typer.Argument(help="The site configuration (TOML).", show_default=False),
]


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The site configuration (TOML).")],
) -> None:
    """Run the gateway against real devices and a real broker until SIGINT or SIGTERM."""
    try:
        site = load_config(config)
    except ConfigError as err:
        _print_errors(err.errors)
        raise typer.Exit(2) from None
    configure_logging(site.logging.format, site.logging.level)
    asyncio.run(_run_until_signalled(Gateway(site)))


@app.command("check-config")
def check_config(path: ConfigPath) -> None:
    """Validate a site configuration and explain every error (exit 0 when it is valid)."""
    try:
        site = load_config(path)
    except ConfigError as err:
        _print_errors(err.errors)
        raise typer.Exit(1) from None
    typer.echo(
        f"{path}: valid: site {site.gateway.site}, gateway {site.gateway.id}, "
        f"{len(site.devices)} device(s), broker {site.broker.host}:{site.broker.port}"
    )


@app.command()
def demo(
    broker: Annotated[
        str | None,
        typer.Option(help="Use this broker (host:port) instead of the embedded one."),
    ] = None,
    pallets: Annotated[int, typer.Option(help="Pallets per simulated shift.", min=1)] = 12,
    pace: Annotated[
        float, typer.Option(help="Seconds between scans, roughly (a forklift driver's pace).")
    ] = 1.5,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Where the demo keeps its SQLite file (a temporary folder by default)."),
    ] = None,
) -> None:
    """Run the gateway with a simulated forklift scanner and an embedded broker; Ctrl-C stops."""
    try:
        from gateway.demo import run_demo  # the demo pulls in the embedded broker and simulators
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("amqtt"):
            raise
        typer.echo(
            "the demo needs its embedded broker: pip install 'warehouse-edge-gateway[demo]'",
            err=True,
        )
        raise typer.Exit(2) from None

    configure_logging("console", "warning")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(broker=broker, pallets=pallets, pace_s=pace, state_dir=state_dir))


@app.command()
def version() -> None:
    """Print the gateway's version."""
    typer.echo(__version__)


async def _run_until_signalled(gateway: Gateway) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.run(stop)


def _print_errors(errors: list[str]) -> None:
    for line in errors:
        typer.echo(f"error: {line}", err=True)
    typer.echo(f"{len(errors)} error(s)", err=True)


def main() -> None:
    """Entry point of the `gateway` console script."""
    app()


if __name__ == "__main__":
    main()
