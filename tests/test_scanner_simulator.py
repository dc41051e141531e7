"""The scanner simulator over real pseudo-terminals, read the way the gateway reads a scanner.

A port is always opened before anything is typed: pyserial flushes the input queue when it
opens a port, so bytes sent earlier are lost, exactly as with a real scanner.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import biip
import pytest
import serial_asyncio_fast
from hypothesis import given
from hypothesis import strategies as st

from simulators.gs1 import GROUP_SEPARATOR, corrupt_check_digit, gtin_label, sscc, sscc_label
from simulators.scanner import (
    Garbage,
    ScannerSimulator,
    ScannerUnplugged,
    Step,
    Type,
    Unplug,
    shift_script,
)

PROJECT = Path(__file__).resolve().parents[1]
GTIN = "95012345678903"  # a valid GTIN-14 (GS1 UK prefix)
FAST = 100_000_000  # a baud rate at which pacing costs nothing, for bulk tests
LOCATIONS = ["A-01-01", "A-01-02", "B-02-01", "B-02-02"]

Port = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def open_port(path: Path, **kwargs: Any) -> AsyncIterator[Port]:
    """Open the scanner's port as the gateway does; the port is flushed when this returns."""
    reader, writer = await serial_asyncio_fast.open_serial_connection(
        url=str(path), baudrate=9600, **kwargs
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_frames(
    reader: asyncio.StreamReader, count: int, suffix: bytes = b"\r"
) -> list[bytes]:
    async with asyncio.timeout(5):
        return [await reader.readuntil(suffix) for _ in range(count)]


@pytest.fixture
async def scanner(tmp_path: Path) -> AsyncIterator[ScannerSimulator]:
    async with ScannerSimulator(tmp_path / "usb-Scanner_0001-if00") as sim:
        yield sim


# --- framing ---------------------------------------------------------------------------------


async def test_plug_makes_a_symlink_to_a_pty(scanner: ScannerSimulator) -> None:
    assert scanner.plugged
    assert scanner.path.is_symlink()
    assert os.readlink(scanner.path) == scanner.device
    assert scanner.device.startswith("/dev/")


async def test_typed_codes_arrive_framed_exactly(scanner: ScannerSimulator) -> None:
    label = sscc_label(sscc("0614141", 123456789))
    async with open_port(scanner.path) as (reader, _):
        await scanner.type(label, aim="]C1")
        await scanner.type("A-01-02")
        await scanner.type(gtin_label(GTIN, lot="L1", count=12), aim="]C1")
        frames = await read_frames(reader, 3)
    assert frames == [
        b"]C1" + label.encode() + b"\r",
        b"A-01-02\r",
        b"]C101" + GTIN.encode() + b"10L1\x1d3712\r",
    ]


async def test_prefix_and_suffix_frame_each_label(tmp_path: Path) -> None:
    async with (
        ScannerSimulator(tmp_path / "scanner", prefix=b"\x02", suffix=b"\x03\r\n") as sim,
        open_port(sim.path) as (reader, _),
    ):
        await sim.type("A-01-02")
        await sim.type("0012", aim="]C0")
        frames = await read_frames(reader, 2, suffix=b"\r\n")
    assert frames == [b"\x02A-01-02\x03\r\n", b"\x02]C00012\x03\r\n"]


async def test_the_line_is_8_bit_clean(scanner: ScannerSimulator) -> None:
    # Raw mode on both ends: no echo, no CR/LF translation, no XON/XOFF, no Ctrl-C signal.
    every_byte = bytes(range(256))
    async with open_port(scanner.path) as (reader, _):
        await scanner.send_raw(every_byte)
        async with asyncio.timeout(5):
            assert await reader.readexactly(256) == every_byte


async def test_garbage_arrives_as_bytes_without_framing(scanner: ScannerSimulator) -> None:
    async with open_port(scanner.path) as (reader, _):
        await scanner.run([Garbage(b"\xff\xfe\x00noise"), Type("A-01-01")])
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r") == b"\xff\xfe\x00noiseA-01-01\r"


async def test_bytes_are_paced_at_the_baud_rate(scanner: ScannerSimulator) -> None:
    code = "X" * 95  # with the CR, 96 bytes: 0.1 s at 9600 baud, 10 bits a byte
    async with open_port(scanner.path) as (reader, _):
        started = time.monotonic()
        await scanner.type(code)
        elapsed = time.monotonic() - started
        assert await read_frames(reader, 1) == [code.encode() + b"\r"]
    assert 0.09 <= elapsed < 2


@pytest.mark.parametrize("aim", ["C1", "]C", "]C1x", "[C1"])
async def test_a_malformed_aim_identifier_is_refused(scanner: ScannerSimulator, aim: str) -> None:
    with pytest.raises(ValueError, match="AIM"):
        await scanner.type("A-01-01", aim=aim)


# --- back-pressure ---------------------------------------------------------------------------


async def test_many_codes_quickly_arrive_intact_through_a_slow_reader(tmp_path: Path) -> None:
    codes = [sscc_label(sscc("0614141", n)) for n in range(4000)]  # about 96 KB
    async with (
        ScannerSimulator(tmp_path / "scanner", baudrate=FAST) as sim,
        # A small stream limit stops the reader after ~2 KB, so the pty fills up behind it.
        open_port(sim.path, limit=1024) as (reader, _),
    ):
        typing = asyncio.create_task(sim.run(Type(code, aim="]C1") for code in codes))
        await asyncio.sleep(0.1)
        assert not typing.done()
        frames = await read_frames(reader, len(codes))
        await typing
    assert frames == [b"]C1" + code.encode() + b"\r" for code in codes]
    assert sim.stalls > 0


async def test_a_long_code_arrives_intact(tmp_path: Path) -> None:
    code = "".join(chr(0x20 + n % 95) for n in range(200_000))
    async with (
        ScannerSimulator(tmp_path / "scanner", baudrate=FAST) as sim,
        open_port(sim.path, limit=1024) as (reader, _),
    ):
        typing = asyncio.create_task(sim.type(code))
        await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            data = await reader.readexactly(len(code) + 1)
        await typing
    assert data == code.encode() + b"\r"
    assert sim.stalls > 0


async def test_concurrent_labels_are_never_interleaved(tmp_path: Path) -> None:
    codes = [str(n) * 300 for n in range(10)]
    async with (
        ScannerSimulator(tmp_path / "scanner", baudrate=1_000_000) as sim,
        open_port(sim.path) as (reader, _),
    ):
        await asyncio.gather(*(sim.type(code) for code in codes))
        frames = await read_frames(reader, len(codes))
    assert sorted(frames) == sorted(code.encode() + b"\r" for code in codes)


# --- unplugging ------------------------------------------------------------------------------


async def test_unplug_ends_the_reader_and_removes_the_path(scanner: ScannerSimulator) -> None:
    async with open_port(scanner.path) as (reader, _):
        await scanner.type("A-01-01")
        assert await read_frames(reader, 1) == [b"A-01-01\r"]
        scanner.unplug()
        assert not scanner.plugged
        assert not scanner.path.is_symlink()
        with contextlib.suppress(OSError):  # a hang-up is EOF or an I/O error, both are fine
            async with asyncio.timeout(5):
                assert await reader.read(100) == b""
    with pytest.raises(OSError):
        await serial_asyncio_fast.open_serial_connection(url=str(scanner.path), baudrate=9600)
    with pytest.raises(ScannerUnplugged, match="unplugged"):
        await scanner.type("A-01-02")
    with pytest.raises(ScannerUnplugged):
        await scanner.send_raw(b"x")


async def test_a_replugged_scanner_is_read_through_a_new_connection(
    scanner: ScannerSimulator,
) -> None:
    async with open_port(scanner.path) as (reader, _):
        await scanner.type("before")
        assert await read_frames(reader, 1) == [b"before\r"]
    scanner.unplug()
    scanner.unplug()  # twice is harmless
    scanner.plug()
    scanner.plug()  # so is plugging in twice
    assert os.readlink(scanner.path) == scanner.device
    async with open_port(scanner.path) as (reader, _):
        await scanner.type("after")
        assert await read_frames(reader, 1) == [b"after\r"]


async def test_the_unplug_step_pulls_the_cable_and_plugs_it_back(
    scanner: ScannerSimulator,
) -> None:
    async with open_port(scanner.path) as (reader, _):
        await scanner.run([Type("first")])
        assert await read_frames(reader, 1) == [b"first\r"]
        await scanner.run([Unplug(for_s=0.05)])
        with contextlib.suppress(OSError):
            async with asyncio.timeout(5):
                assert await reader.read(100) == b""
    assert scanner.plugged
    async with open_port(scanner.path) as (reader, _):
        await scanner.run([Type("second")])
        assert await read_frames(reader, 1) == [b"second\r"]


async def test_unplugging_in_the_middle_of_a_label_stops_it(scanner: ScannerSimulator) -> None:
    async with open_port(scanner.path) as (reader, _):
        typing = asyncio.create_task(scanner.type("X" * 999))  # 1 s on the wire at 9600 baud
        # Unplugged once the label is on its way (not after a fixed time: on a busy machine the
        # typing may not have started by then).
        await asyncio.wait_for(reader.read(1), 5)
        scanner.unplug()
        with pytest.raises(ScannerUnplugged) as caught:
            await typing
    assert 0 < caught.value.sent < caught.value.total == 1000


async def test_unplugging_while_the_line_is_full_releases_the_writer(tmp_path: Path) -> None:
    async with ScannerSimulator(tmp_path / "scanner", baudrate=FAST) as sim:
        async with open_port(sim.path, limit=1024):
            typing = asyncio.create_task(sim.send_raw(b"x" * 500_000))
            await asyncio.sleep(0.1)
            assert sim.stalls > 0
            sim.unplug()
            with pytest.raises(ScannerUnplugged):
                await typing
        sim.plug()
        async with open_port(sim.path) as (reader, _):
            await sim.type("still works")
            assert await read_frames(reader, 1) == [b"still works\r"]


def test_plug_replaces_a_stale_symlink(tmp_path: Path) -> None:
    link = tmp_path / "scanner"
    link.symlink_to("/dev/pts/does-not-exist")
    sim = ScannerSimulator(link)
    sim.plug()
    assert os.readlink(link) == sim.device
    sim.unplug()
    assert not link.is_symlink()
    assert list(tmp_path.iterdir()) == []


def test_plug_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    link = tmp_path / "scanner"
    link.write_text("not a device")
    sim = ScannerSimulator(link)
    with pytest.raises(FileExistsError):
        sim.plug()
    assert not sim.plugged
    assert link.read_text() == "not a device"
    assert list(tmp_path.iterdir()) == [link]


def test_steps_refuse_negative_waits() -> None:
    with pytest.raises(ValueError, match="pause_s"):
        Type("A-01-01", pause_s=-1)
    with pytest.raises(ValueError, match="for_s"):
        Unplug(for_s=-0.1)


# --- GS1 labels ------------------------------------------------------------------------------


def test_sscc_matches_a_known_example() -> None:
    # Extension 3, GS1 Switzerland company prefix 7613032, serial reference 110910342.
    assert sscc("7613032", 110910342) == "376130321109103420"
    assert sscc_label("376130321109103420") == "00376130321109103420"


@given(
    prefix=st.integers(min_value=4, max_value=12).flatmap(
        lambda n: st.text("0123456789", min_size=n, max_size=n)
    ),
    serial=st.integers(min_value=0),
    extension=st.integers(min_value=0, max_value=9),
)
def test_sscc_has_a_check_digit_biip_accepts(prefix: str, serial: int, extension: int) -> None:
    serial %= 10 ** (16 - len(prefix))
    code = sscc(prefix, serial, extension)
    assert len(code) == 18
    assert code.startswith(f"{extension}{prefix}")
    parsed = biip.parse(sscc_label(code))
    assert parsed.sscc is not None, parsed.sscc_error
    assert parsed.sscc.value == code


@pytest.mark.parametrize(
    ("prefix", "serial", "extension"),
    [
        ("061", 1, 3),
        ("06141410000000", 1, 3),
        ("06l4141", 1, 3),
        ("0614141", 10**9, 3),
        ("0614141", 1, 10),
    ],
)
def test_sscc_refuses_what_does_not_fit(prefix: str, serial: int, extension: int) -> None:
    with pytest.raises(ValueError):
        sscc(prefix, serial, extension)


def test_gtin_label_separates_only_variable_length_fields() -> None:
    label = gtin_label(GTIN, lot="ABC123", expiry=dt.date(2030, 1, 31), count=12)
    assert label == f"01{GTIN}17300131" + "10ABC123" + GROUP_SEPARATOR + "3712"
    assert gtin_label(GTIN, lot="ABC123") == f"01{GTIN}10ABC123"  # nothing after the last field
    assert gtin_label(GTIN) == f"01{GTIN}"


@given(
    lot=st.none() | st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789-", min_size=1, max_size=20),
    expiry=st.none() | st.dates(dt.date(2000, 1, 1), dt.date(2049, 12, 31)),
    count=st.none() | st.integers(min_value=0, max_value=99_999_999),
)
def test_gtin_label_parses_back_with_biip(
    lot: str | None, expiry: dt.date | None, count: int | None
) -> None:
    parsed = biip.parse(gtin_label(GTIN, lot=lot, expiry=expiry, count=count))
    assert parsed.gs1_message is not None, parsed.gs1_message_error
    assert parsed.gtin is not None
    assert parsed.gtin.value == GTIN
    fields = {element.ai.ai: element for element in parsed.gs1_message.element_strings}
    assert (fields["10"].value if "10" in fields else None) == lot
    assert (fields["17"].date if "17" in fields else None) == expiry
    assert (int(fields["37"].value) if "37" in fields else None) == count


def test_corrupt_check_digit_makes_biip_report_an_error() -> None:
    code = sscc("0614141", 42)
    bad_pallet = biip.parse(corrupt_check_digit(sscc_label(code)))
    assert bad_pallet.sscc is None
    assert bad_pallet.sscc_error is not None
    assert "check digit" in bad_pallet.sscc_error

    label = gtin_label(GTIN, lot="L1", count=3)
    bad_item = corrupt_check_digit(label)
    assert bad_item[16:] == label[16:]  # only the GTIN's check digit changed
    parsed = biip.parse(bad_item)
    assert parsed.gtin is None
    assert parsed.gtin_error is not None
    assert "check digit" in parsed.gtin_error

    assert corrupt_check_digit("]C1" + sscc_label(code))[:-1] == "]C1" + sscc_label(code)[:-1]
    assert biip.parse(corrupt_check_digit(code)).sscc is None


def test_corrupt_check_digit_needs_a_check_digit() -> None:
    with pytest.raises(ValueError, match="check digit"):
        corrupt_check_digit("A-01-02")


# --- a forklift shift ------------------------------------------------------------------------


def moves_in(steps: list[Step]) -> list[tuple[str, str]]:
    """What a move rule should make of `steps`: the last pallet scanned goes to the location."""
    moves: list[tuple[str, str]] = []
    pallet: str | None = None
    for step in steps:
        assert isinstance(step, Type)
        if step.aim == "]C1":
            parsed = biip.parse(step.aim + step.code)
            assert parsed.sscc is not None
            pallet = parsed.sscc.value
        else:
            assert step.aim is None
            assert step.code in LOCATIONS
            assert pallet is not None
            moves.append((pallet, step.code))
            pallet = None
    return moves


def test_shift_script_is_deterministic_for_a_seed() -> None:
    first = shift_script(pallets=30, locations=LOCATIONS, seed=7)
    assert shift_script(pallets=30, locations=LOCATIONS, seed=7) == first
    assert shift_script(pallets=30, locations=LOCATIONS, seed=8) != first


@pytest.mark.parametrize("seed", range(5))
def test_shift_script_ground_truth_matches_its_steps(seed: int) -> None:
    steps, moves = shift_script(pallets=40, locations=LOCATIONS, seed=seed, pause_s=(0.5, 2.0))
    assert len(moves) == 40
    assert moves_in(steps) == moves
    assert len({pallet for pallet, _ in moves}) == 40  # every pallet has its own SSCC
    assert all(isinstance(s, Type) and 0.5 <= s.pause_s <= 2.0 for s in steps)


def test_shift_script_sometimes_repeats_a_pallet_scan() -> None:
    steps, moves = shift_script(pallets=50, locations=LOCATIONS, seed=1)
    pallet_scans = [s for s in steps if isinstance(s, Type) and s.aim == "]C1"]
    assert len(moves) < len(pallet_scans) < 2 * len(moves)
    repeats = [
        a
        for a, b in itertools.pairwise(steps)
        if isinstance(a, Type) and isinstance(b, Type) and a.aim == "]C1" and a.code == b.code
    ]
    assert len(repeats) == len(pallet_scans) - len(moves)


def test_shift_script_refuses_an_impossible_shift() -> None:
    assert shift_script(pallets=0, locations=LOCATIONS, seed=0) == ([], [])
    with pytest.raises(ValueError, match="location"):
        shift_script(pallets=1, locations=[], seed=0)
    with pytest.raises(ValueError, match="pause_s"):
        shift_script(pallets=1, locations=LOCATIONS, seed=0, pause_s=(2.0, 1.0))


async def test_a_shift_played_over_the_pty_gives_its_ground_truth(tmp_path: Path) -> None:
    steps, moves = shift_script(pallets=25, locations=LOCATIONS, seed=3, pause_s=(0.0, 0.0))
    async with (
        ScannerSimulator(tmp_path / "scanner", baudrate=115_200) as sim,
        open_port(sim.path) as (reader, _),
    ):
        await sim.run(steps)
        frames = await read_frames(reader, len(steps))
    typed = [step for step in steps if isinstance(step, Type)]
    assert len(typed) == len(steps)
    assert frames == [(step.aim or "").encode() + step.code.encode() + b"\r" for step in typed]
    assert moves_in(steps) == moves


# --- command line ----------------------------------------------------------------------------


async def test_command_line_plays_a_shift_until_interrupted(tmp_path: Path) -> None:
    link = tmp_path / "scanner"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulators.scanner",
        "--link",
        str(link),
        "--pallets",
        "2",
        "--seed",
        "5",
        "--pause-s",
        "0.5",
        "0.5",
        cwd=PROJECT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            first_line = await process.stdout.readline()
            assert str(link).encode() in first_line
            frames: list[bytes] = []
            async with open_port(link) as (reader, _):
                # Two pallets, each followed by its location (a pallet may be scanned twice).
                while sum(not frame.startswith(b"]C1") for frame in frames) < 2:
                    frames += await read_frames(reader, 1)
            pallets = {frame for frame in frames if frame.startswith(b"]C100")}
            assert len(pallets) == 2
            assert all(biip.parse(frame[:-1].decode()).sscc for frame in pallets)
            while b"shift over" not in await process.stdout.readline():
                pass
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not link.is_symlink()
