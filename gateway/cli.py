"""The `gateway` command: run, check-config and demo.

Each command imports what it needs when it runs (`gateway version` loads no gateway module),
and `main` keeps the garbage collector off while they are imported: the modules and the
configuration make almost no garbage, and the collector's passes over them took about a fifth
of the import time. `run` turns it on again before the gateway starts, which collects once and
freezes what start-up made (`gateway.app`). `run` also gives large blocks back to the system
when they are freed (`_large_blocks_back_to_the_system`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway import __version__

if TYPE_CHECKING:
    from gateway.app import Gateway

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
    from gateway.app import Gateway
    from gateway.config import ConfigError, load_config
    from gateway.logs import configure_logging

    try:
        site = load_config(config)
    except ConfigError as err:
        _print_errors(err.errors)
        raise typer.Exit(2) from None
    configure_logging(site.logging.format, site.logging.level)
    gateway = Gateway(site)  # imports the drivers of the configured device kinds
    _large_blocks_back_to_the_system()
    gc.enable()
    asyncio.run(_run_until_signalled(gateway))


@app.command("check-config")
def check_config(path: ConfigPath) -> None:
    """Validate a site configuration and explain every error (exit 0 when it is valid)."""
    from gateway.config import ConfigError, load_config

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
    pallet_every: Annotated[
        float,
        typer.Option(help="Seconds between pallets through the RFID doors.", min=1.0),
    ] = 8.0,
    http_port: Annotated[
        int,
        typer.Option(help="The status page's port on localhost (taken: any free one).", max=65535),
    ] = 9108,
    browser: Annotated[
        bool, typer.Option(help="Open the status page in a web browser, when there is a screen.")
    ] = True,
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
    from gateway.logs import configure_logging

    gc.enable()
    configure_logging("console", "warning")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            run_demo(
                broker=broker,
                pallets=pallets,
                pace_s=pace,
                state_dir=state_dir,
                http_port=http_port,
                browser=browser,
                pallet_every_s=pallet_every,
            )
        )


@app.command()
def report(
    config: Annotated[Path, typer.Option("--config", "-c", help="The site configuration (TOML).")],
    since: Annotated[
        dt.datetime,
        typer.Option(help="First UTC day (or time) to count.", formats=["%Y-%m-%d"]),
    ],
    until: Annotated[
        dt.datetime | None,
        typer.Option(
            help="Count up to this UTC day (excluded); default: now.", formats=["%Y-%m-%d"]
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or table.")] = "csv",
) -> None:
    """Print per day what the gateway published (transactions, exceptions, events, alarms),
    scans per device, and the day's KPIs (receipts, lines short and over, dock-to-stock time,
    rejection rate per device)."""
    from gateway.config import ConfigError, load_config
    from gateway.ops.report import kpis, per_day, render
    from gateway.storage import StorageError, Store

    if fmt not in ("csv", "table"):
        typer.echo(f"error: --format is csv or table, not {fmt!r}", err=True)
        raise typer.Exit(2)
    try:
        site = load_config(config)
    except ConfigError as err:
        _print_errors(err.errors)
        raise typer.Exit(2) from None
    if not site.storage.path.exists():
        typer.echo(f"error: no database at {site.storage.path} (storage.path)", err=True)
        raise typer.Exit(1)
    start = since.replace(tzinfo=dt.UTC).timestamp()
    end = (until.replace(tzinfo=dt.UTC) if until else dt.datetime.now(dt.UTC)).timestamp()

    async def read() -> list[tuple[int, str, str, int]]:
        store = await Store.open(site.storage.path)
        try:
            return await store.trends(since=start, until=end)
        finally:
            await store.close()

    try:
        hours = asyncio.run(read())
    except StorageError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    counts = per_day(hours)
    typer.echo(render([*counts, *kpis(counts)], fmt), nl=False)


@app.command()
def consume(
    dsn: Annotated[str, typer.Option(help="PostgreSQL, e.g. postgresql://wms@db/wms.")],
    site: Annotated[str, typer.Option(help="The site whose gateways' messages to take.")],
    broker: Annotated[
        str, typer.Option(help="An MQTT broker, host:port (one node of a cluster).")
    ] = "",
    nats: Annotated[
        str,
        typer.Option(
            help="A NATS cluster instead (JetStream): its nodes' URLs, comma-separated, "
            "e.g. nats://10.20.0.11:4222,nats://10.20.0.12:4222."
        ),
    ] = "",
    group: Annotated[
        str,
        typer.Option(
            help="The group the consumers share: MQTT 5 shared subscription ('' for a plain "
            "one), or the JetStream durable consumer."
        ),
    ] = "wms",
    client_id: Annotated[
        str, typer.Option(help="This consumer's MQTT client id, or its name on NATS.")
    ] = "wms-consumer-1",
    protocol: Annotated[str, typer.Option(help="MQTT 5 or 3.1.1.")] = "5",
    ack_wait_s: Annotated[
        float,
        typer.Option(
            min=1.0, help="NATS: seconds before what a member took and did not store goes again."
        ),
    ] = 30.0,
    check_s: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds between two looks for transactions missing (asked for again).",
        ),
    ] = 5.0,
) -> None:
    """The reference WMS consumer: every transaction and event once into PostgreSQL."""
    from gateway.consumer import Consumer, JetStreamConsumer  # the "consumer" extra
    from gateway.logs import configure_logging

    if bool(broker) == bool(nats):
        typer.echo("error: give one of --broker host:port and --nats nats://host:4222", err=True)
        raise typer.Exit(2)
    configure_logging("console", "info")
    member: Consumer | JetStreamConsumer
    if nats:
        servers = [u.strip() for u in nats.split(",") if u.strip()]
        if not group or not all(u.startswith(("nats://", "tls://")) for u in servers):
            typer.echo("error: --nats takes nats://host:port URLs and a --group", err=True)
            raise typer.Exit(2)
        member = JetStreamConsumer(
            servers=servers,
            dsn=dsn,
            site=site,
            group=group,
            name=client_id,
            ack_wait_s=ack_wait_s,
            check_s=check_s,
        )
    else:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or protocol not in ("5", "3.1.1"):
            typer.echo("error: --broker host:port, --protocol 5 or 3.1.1", err=True)
            raise typer.Exit(2)
        member = Consumer(
            host=host.strip("[]"),
            port=int(port),
            dsn=dsn,
            site=site,
            group=group or None,
            client_id=client_id,
            protocol=protocol,
            check_s=check_s,
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(member.run())


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


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def _large_blocks_back_to_the_system() -> None:
    """Blocks of 128 KiB and more get their own mapping, returned to the system when freed.

    glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), so the
    next large blocks come from the heap, and what is freed there stays in the process's RSS.
    The GS1 tables biip loads with the first label or EPCIS event are decompressed from 5 MB of
    JSON text: that kept 9-10 MiB resident for the life of the process. A fixed threshold (the
    default, 128 KiB) keeps it at what the tables themselves take. Not glibc: nothing to do.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def _print_errors(errors: list[str]) -> None:
    for line in errors:
        typer.echo(f"error: {line}", err=True)
    typer.echo(f"{len(errors)} error(s)", err=True)


def main() -> None:
    """Entry point of the `gateway` console script."""
    gc.disable()  # while the command imports what it needs (see the module docstring)
    try:
        app()
    finally:
        gc.enable()


if __name__ == "__main__":
    main()
