"""Test helpers: a private Mosquitto on a free port, and a subscriber that survives its restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from gateway.bridge.suback import subscribe_or_raise

# Private: hypothesis seeds the `random` module in its tests; parallel workers must not pick
# the same ports.
_ports = random.Random()
# Ports this process handed out: not given again (a cluster's twelve ports must differ), until
# this worker's share of the range is used up.
_given: set[int] = set()


def _worker_share(ports: range) -> range:
    """This pytest-xdist worker's own part of `ports` (gw0, gw1 ...: parallel workers never
    pick the same port); all of it outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count <= 1:
        return ports
    index = int(worker[2:]) % count
    size = len(ports) // count
    return ports[index * size : (index + 1) * size]


def _ephemeral_ports() -> range:
    """The ports the kernel gives client sockets (and `bind` to port 0)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, outside the kernel's ephemeral range.

    A test broker's port is often known before the broker listens on it (a gateway started
    while the broker is down), or is free for a while (a broker killed and started again), and
    clients keep trying to connect meanwhile. A port of the ephemeral range can then be given
    to one of those client sockets as its own port: it connects to itself (TCP self-connect)
    and holds the port, and the broker cannot bind it. A port from the ephemeral range could
    also go to any other client of a parallel test before the broker binds it. Outside the
    range neither happens.
    """
    ephemeral = _ephemeral_ports()
    outside = range(10_000, ephemeral.start) if ephemeral.start > 11_000 else range(0)
    outside = _worker_share(outside)
    if len(_given) > len(outside) // 2:
        _given.clear()
    for _ in range(100 if outside else 0):
        port = _ports.choice(outside)
        if port in _given:
            continue
        _given.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file for `users` (name -> password), hashed by mosquitto_passwd."""
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True)
    path.chmod(0o600)
    return path


class Mosquitto:
    """A private broker for one test; `kill()` and `start()` again reuse the same port."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        extra: str = "",
        save_every_change: bool = True,
    ) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        # A port picked here may be taken by another process before the broker binds it (a
        # client's ephemeral port, in a parallel run): then another is picked, at first start.
        self._may_move = port is None
        self._extra = extra
        # Saving after every change loses nothing in a crash, but rewrites the whole database
        # each time: a flood beside megabytes of retained data needs the shipped 30 s instead.
        self._autosave = (
            "autosave_interval 1\nautosave_on_changes true\n"
            if save_every_change
            else "autosave_interval 30\nautosave_on_changes false\n"
        )
        self.dir = workdir / f"mosquitto-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self._write_config()
        self.process: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        # Mosquitto drops to the `mosquitto` user when started as root unless told otherwise;
        # staying root keeps pytest's private temp folders usable.
        user = "user root\n" if os.geteuid() == 0 else ""
        self.config.write_text(
            f"{user}listener {self.port} 127.0.0.1\n"
            + (self._extra or "allow_anonymous true\n")
            + "persistence true\n"
            f"persistence_location {self.dir}/\n"
            + self._autosave
            # The defaults drop messages in bursts; a test broker must not. Not 0 (unlimited):
            # Mosquitto 2.0.11 then drops a client whose PUBACK follows a PUBLISH it denied
            # by ACL ("Bad socket read/write"; the `max_queued_messages 0` bugs, mosquitto
            # #3088, #3244). The shipped config has a limit too.
            + "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n"
            "max_inflight_bytes 0\n"
            "max_queued_bytes 0\n"
            f"log_dest file {self.log}\n"
            # As the shipped config: small packets (PUBACKs, answers) go out at once.
            "set_tcp_nodelay true\n"
        )

    def start(self) -> None:
        """Start the broker (again, on the same port) and wait until it listens."""
        for _ in range(5):
            if self._start():
                self._may_move = False  # clients know the port from now on
                return
            if not self._may_move:
                raise RuntimeError(f"mosquitto: port {self.port} is taken by another process")
            self.port = free_port()
            self._write_config()
        raise RuntimeError("mosquitto: no free port found")

    def _start(self) -> bool:
        """Start; True once it listens, False if its port is taken."""
        seen = self.log.stat().st_size if self.log.exists() else 0
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Its own log says when it listens: a connection to the port could reach another
            # process that holds it.
            log = self.log.read_bytes()[seen:].decode(errors="replace") if self.log.exists() else ""
            if self.process.poll() is not None:
                self.process = None
                if "Address already in use" in log:
                    return False
                raise RuntimeError(f"mosquitto exited at start: {log[-2000:]}")
            if " running" in log:
                return True
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its password and ACL files again."""
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Collector:
    """Subscribes to `topic` with a persistent session and keeps every message, across restarts."""

    port: int
    topic: str = "gw/#"
    client_id: str = "test-collector"
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    subscribe_timeout_s: float = 10.0  # a NATS cluster just started takes longer
    messages: list[Received] = field(default_factory=list)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), self.subscribe_timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier=self.client_id,
                    username=self.username,
                    password=self.password,
                    tls_params=(
                        aiomqtt.TLSParameters(ca_certs=str(self.tls_ca)) if self.tls_ca else None
                    ),
                    clean_session=False,
                    max_queued_incoming_messages=0,
                ) as client:
                    await subscribe_or_raise(client, self.topic)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload
                        assert isinstance(payload, bytes | bytearray)
                        self.messages.append(
                            Received(str(message.topic), bytes(payload), bool(message.retain))
                        )
                        self._new.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        """Wait until `predicate(self)` is true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; got {len(self.messages)} messages")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(remaining, 0.5))
