"""The simulators' command lines: ``--help`` of each, and the devices run as a gateway meets them.

Each device runs in a child process, is reached over its pty or TCP port as a driver would
reach it, then gets SIGTERM and must exit with status 0, leaving no symlink behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.llrp.codec import Frame, MessageType, decode_frame
from simulators.serial_cable import SerialCable

PROJECT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30.0  # a fresh clone compiles every module on first import, under a loaded CI

HELP = [
    ("simulators.scanner", ["--link", "--pallets", "--suffix", "--prefix", "--baudrate"]),
    ("simulators.sics_scale", ["--link", "--host", "--port", "--weight", "--unit", "--every"]),
    (
        "simulators.modbus_scale",
        ["--link", "--port", "--unit-id", "--weight-register", "--status-register", "--weight"],
    ),
    ("simulators.modbus_coil", ["--host", "--port", "--unit", "--coils"]),
    ("simulators.llrp", ["--host", "--port", "--pallets", "--every", "--tags", "--strays"]),
    ("simulators.vda5050_robot", ["--host", "--port", "--serial", "--version", "--transport"]),
    ("simulators.fleet", ["--host", "--port", "--site", "--gateway", "--robots", "--vda5050"]),
]


@pytest.mark.parametrize(("module", "options"), HELP)
def test_help_names_the_options(module: str, options: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module}")
    assert [option for option in options if option not in done.stdout] == []


# --- running devices -------------------------------------------------------------------------


@contextlib.contextmanager
def running(module: str, *args: str) -> Iterator[str]:
    """Start ``python -m module args``; yield the line where it says where it is; SIGTERM it."""
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT_S)
        assert ready, f"{module} said nothing within {TIMEOUT_S} s"
        line = process.stdout.readline()
        assert line, process.communicate()[1]
        yield line.strip()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()


def tcp_port(line: str) -> int:
    found = re.search(r"listening on [\w.:]+:(\d+)", line)
    assert found, line
    return int(found[1])


@contextlib.contextmanager
def open_tty(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)


def read_until(fd: int, end: bytes) -> bytes:
    data = b""
    deadline = time.monotonic() + TIMEOUT_S
    while not data.endswith(end):
        left = deadline - time.monotonic()
        assert left > 0, f"no {end!r} after {data!r}"
        if select.select([fd], [], [], left)[0]:
            data += os.read(fd, 256)
    return data


def test_scanner_sends_labels_framed_as_asked(tmp_path: Path) -> None:
    link = tmp_path / "usb-Scanner-if00"
    args = ["--link", str(link), "--pallets", "1", "--pause-s", "0", "0", "--baudrate", "115200"]
    with running("simulators.scanner", *args, "--prefix", "#", "--suffix", "CRLF") as line:
        assert f"plugged in at {link}" in line
        with open_tty(link) as fd:
            received = read_until(fd, b"\r\n")
    # The pallet label comes first; its location label may arrive in the same read.
    label = received.split(b"\r\n")[0] + b"\r\n"
    assert re.fullmatch(rb"#\]C100\d{18}\r\n", label), received
    assert not link.is_symlink()


def test_sics_scale_answers_si_with_the_load_over_its_pty(tmp_path: Path) -> None:
    link = tmp_path / "scale0"
    args = ["--link", str(link), "--weight", "612.5", "--settle-s", "0", "--unit", "kg"]
    with running("simulators.sics_scale", *args) as line, open_tty(link) as fd:
        assert f"plugged in at {link}" in line
        os.write(fd, b"SI\r\n")
        assert read_until(fd, b"\r\n").split() == [b"S", b"S", b"612.50", b"kg"]
    assert not link.is_symlink()


def test_llrp_reader_greets_a_client_with_a_reader_event_notification() -> None:
    with running("simulators.llrp", "--port", "0", "--pallets", "1") as line:
        with socket.create_connection(("127.0.0.1", tcp_port(line)), timeout=TIMEOUT_S) as sock:
            received = b""
            frame, _ = decode_frame(received)
            while not isinstance(frame, Frame):
                chunk = sock.recv(4096)
                assert chunk, "the reader closed the connection"
                received += chunk
                frame, _ = decode_frame(received)
        assert frame.type == MessageType.READER_EVENT_NOTIFICATION


# --- the serial cable ------------------------------------------------------------------------


def test_serial_cable_plugs_carries_bytes_and_unplugs(tmp_path: Path) -> None:
    link = tmp_path / "usb-Device-if00"
    cable = SerialCable(link)
    assert not cable.plugged
    assert cable.device == ""
    cable.plug()
    assert os.readlink(link) == cable.device
    cable.plug()  # plugged already: the same pty
    assert os.readlink(link) == cable.device
    assert cable.plugs == 1
    with open_tty(link) as fd:
        assert cable.write_all(b"hello\r\n") == 7
        assert read_until(fd, b"\r\n") == b"hello\r\n"
    cable.unplug()
    assert not link.is_symlink()
    assert not cable.plugged
    cable.unplug()  # unplugged already: nothing happens
    assert cable.write_all(b"lost") == 0
    with cable:  # plugged in again: a new pty at the same path
        assert os.readlink(link) == cable.device
        assert cable.plugs == 2
        with open_tty(link) as fd:
            cable.write_all(b"again\n")
            assert read_until(fd, b"\n") == b"again\n"
    assert list(tmp_path.iterdir()) == []


def test_serial_cable_hangs_up_the_host_on_unplug(tmp_path: Path) -> None:
    with SerialCable(tmp_path / "dev") as cable, open_tty(tmp_path / "dev") as fd:
        cable.unplug()
        assert select.select([fd], [], [], TIMEOUT_S)[0]
        # End of file, or EIO as Linux has it: the other end of the pty is gone.
        with contextlib.suppress(OSError):
            assert os.read(fd, 1) == b""


def test_serial_cable_drops_what_a_full_line_cannot_take(tmp_path: Path) -> None:
    with SerialCable(tmp_path / "dev") as cable:
        data = b"x" * 1_000_000  # far more than a pty's input queue, and nobody reads it
        assert 0 < cable.write_all(data) < len(data)


async def test_serial_cable_hands_what_the_host_writes_to_on_receive(tmp_path: Path) -> None:
    received: list[bytes] = []
    with (
        SerialCable(tmp_path / "dev", on_receive=received.append),
        open_tty(tmp_path / "dev") as fd,
    ):
        os.write(fd, b"SI\r\n")
        deadline = time.monotonic() + TIMEOUT_S
        while b"".join(received) != b"SI\r\n" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert b"".join(received) == b"SI\r\n"


def test_serial_cable_without_a_link_is_reached_at_its_device() -> None:
    with SerialCable() as cable, open_tty(Path(cable.device)) as fd:
        assert cable.link is None
        cable.write_all(b"\x01\x03")
        assert read_until(fd, b"\x03") == b"\x01\x03"
