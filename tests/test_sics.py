"""MT-SICS codec: sans-IO, so reply bytes in and frozen replies out, whatever the chunking."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.drivers.sics import (
    ErrorReply,
    Garbage,
    Reply,
    ScaleStatus,
    SicsDecoder,
    WeightReply,
    ZeroReply,
    encode,
    format_weight,
)

# Reply lines as indicators send them: the value right-aligned in a 10-character field.
STABLE_KG = b"S S     12.345 kg\r\n"
DYNAMIC_KG = b"S D     12.340 kg\r\n"
NEGATIVE_G = b"S S     -0.500 g\r\n"
STABLE_T = b"S S      1.250 t\r\n"
DYNAMIC_LB = b"S D    2204.60 lb\r\n"
STABLE_OZ = b"S S      17.64 oz\r\n"

CAPTURE = (
    STABLE_KG,
    DYNAMIC_KG,
    NEGATIVE_G,
    STABLE_T,
    DYNAMIC_LB,
    STABLE_OZ,
    b"S I\r\n",
    b"S +\r\n",
    b"S -\r\n",
    b"Z A\r\n",
    b"Z I\r\n",
    b"Z +\r\n",
    b"Z -\r\n",
    b"ES\r\n",
    b"ET\r\n",
    b"EL\r\n",
    b'I4 A "B123456789"\r\n',
    b"S X\r\n",
    b"\x00\xff\xfeS S 1 kg\r\n",
    b"x" * 300 + b"\r\n",
    b"\r\n",
)


def decode_all(data: bytes, *, max_line: int = 256) -> list[Reply]:
    return SicsDecoder(max_line=max_line).feed(data)


def one(data: bytes) -> Reply:
    replies = decode_all(data)
    assert len(replies) == 1, replies
    return replies[0]


def weight(data: bytes) -> WeightReply:
    reply = one(data)
    assert isinstance(reply, WeightReply), reply
    return reply


# Commands


@pytest.mark.parametrize(
    ("command", "wire"),
    [("S", b"S\r\n"), ("SI", b"SI\r\n"), ("SIR", b"SIR\r\n"), ("Z", b"Z\r\n"), ("@", b"@\r\n")],
)
def test_encode_commands(command, wire) -> None:
    assert encode(command) == wire


def test_encode_refuses_unknown_command() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        encode("T")  # type: ignore[arg-type]


# Weight replies


def test_stable_weight() -> None:
    assert weight(STABLE_KG) == WeightReply(True, Decimal("12.345"), "kg", "S S     12.345 kg")


def test_dynamic_weight_is_not_stable() -> None:
    reply = weight(DYNAMIC_KG)
    assert not reply.stable
    assert reply.value == Decimal("12.340")
    assert str(reply.value) == "12.340"  # the scale's resolution is kept


@pytest.mark.parametrize(
    ("line", "value", "unit"),
    [
        (NEGATIVE_G, "-0.500", "g"),
        (STABLE_T, "1.250", "t"),
        (DYNAMIC_LB, "2204.60", "lb"),
        (STABLE_OZ, "17.64", "oz"),
        (b"S S        -12 kg\r\n", "-12", "kg"),
        (b"S S    1234567 g\r\n", "1234567", "g"),
        (b"S S   -123.4567 g\r\n", "-123.4567", "g"),
        (b"S S 1.5 kg\r\n", "1.5", "kg"),  # no padding at all
        (b"S  S       1.5   kg  \r\n", "1.5", "kg"),  # extra spaces everywhere
        (b"  S S\t1.5\tkg\r\n", "1.5", "kg"),  # leading spaces, tabs
        (b"S S      +1.5 kg\r\n", "1.5", "kg"),  # an explicit plus sign
        (b"S S  123456789012 g\r\n", "123456789012", "g"),  # wider than the field
    ],
)
def test_weight_values_and_units(line, value, unit) -> None:
    reply = weight(line)
    assert reply.value == Decimal(value)
    assert reply.unit == unit
    assert reply.raw == line.removesuffix(b"\r\n").decode()


@pytest.mark.parametrize(
    "line",
    [b"S S kg", b"S S 12.3", b"S S 1.2.3 kg", b"S S 12,3 kg", b"S S -- kg", b"S D 1 2"],
)
def test_malformed_weight_is_garbage(line) -> None:
    reply = one(line + b"\r\n")
    assert isinstance(reply, Garbage)
    assert reply.raw == line
    assert "S S / S D" in reply.reason


# Status, zero and error replies


@pytest.mark.parametrize(("line", "code"), [(b"S I", "I"), (b"S +", "+"), (b"S -", "-")])
def test_busy_overload_underload(line, code) -> None:
    assert one(line + b"\r\n") == ScaleStatus(code, line.decode())


@pytest.mark.parametrize(
    ("line", "ok", "code"),
    [(b"Z A", True, "A"), (b"Z I", False, "I"), (b"Z +", False, "+"), (b"Z -", False, "-")],
)
def test_zero_replies(line, ok, code) -> None:
    assert one(line + b"\r\n") == ZeroReply(ok, code, line.decode())


@pytest.mark.parametrize("code", ["ES", "ET", "EL"])
def test_error_replies(code) -> None:
    assert one(code.encode() + b"\r\n") == ErrorReply(code, code)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"S X", "neither a weight"),
        (b"Z Q", "Z A / Z I"),
        (b"EX", "ES / ET / EL"),
        (b'I4 A "B123456789"', "serial number"),
        (b"hello", "not an MT-SICS"),
        (b"S S\x00 1 kg", "not printable ASCII"),
        (b"\xff\xfe", "not printable ASCII"),
    ],
)
def test_garbage_has_a_reason(line, reason) -> None:
    reply = one(line + b"\r\n")
    assert isinstance(reply, Garbage)
    assert reply.raw == line
    assert reason in reply.reason


def test_blank_lines_are_skipped() -> None:
    assert decode_all(b"\r\n\n   \r\nS I\r\n") == [ScaleStatus("I", "S I")]


# Framing


def test_bare_lf_is_a_line_end_like_cr_lf() -> None:
    assert decode_all(b"S S 1.5 kg\nZ A\n") == decode_all(b"S S 1.5 kg\r\nZ A\r\n")


def test_partial_line_is_kept_until_its_end() -> None:
    decoder = SicsDecoder()
    assert decoder.feed(b"S S     12.3") == []
    assert decoder.feed(b"45 kg\r") == []
    assert decoder.feed(b"\nS D") == [weight(STABLE_KG)]
    assert decoder.feed(b"     12.340 kg\r\n") == [weight(DYNAMIC_KG)]


def test_sir_stream_gives_one_reply_per_line() -> None:
    stream = DYNAMIC_KG * 3 + STABLE_KG * 2
    replies = decode_all(stream)
    assert [r.stable for r in replies if isinstance(r, WeightReply)] == [False] * 3 + [True] * 2


def test_overlong_line_is_reported_once_and_resynchronised() -> None:
    decoder = SicsDecoder(max_line=16)
    out = decoder.feed(b"y" * 40)  # no line end yet: reported as soon as it is overlong
    assert out == [Garbage(b"y" * 16, "line longer than 16 bytes")]
    assert decoder.feed(b"y" * 1000) == []  # the rest is skipped, memory stays bounded
    assert decoder.feed(b"yy\r\nS +\r\n") == [ScaleStatus("+", "S +")]


def test_overlong_complete_line_is_garbage_and_next_line_decodes() -> None:
    replies = decode_all(b"S S " + b"1" * 20 + b" kg\r\nZ A\r\n", max_line=16)
    assert replies == [
        Garbage(b"S S " + b"1" * 12, "line longer than 16 bytes"),
        ZeroReply(True, "A", "Z A"),
    ]


def test_line_of_exactly_max_line_is_accepted_even_when_cr_arrives_alone() -> None:
    line = b"S S 1234567890 g"  # 16 bytes
    decoder = SicsDecoder(max_line=len(line))
    assert decoder.feed(line + b"\r") == []
    assert decoder.feed(b"\n") == [WeightReply(True, Decimal(1234567890), "g", line.decode())]


def test_max_line_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_line"):
        SicsDecoder(max_line=0)


def test_reset_forgets_a_partial_line() -> None:
    decoder = SicsDecoder()
    decoder.feed(b"S S  12")
    decoder.reset()
    assert decoder.feed(b"Z A\r\n") == [ZeroReply(True, "A", "Z A")]


# Properties


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.sampled_from(CAPTURE), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
    max_line=st.sampled_from([8, 16, 256]),
)
def test_any_chunking_gives_the_same_replies(lines, cuts, max_line) -> None:
    stream = b"".join(lines)
    expected = decode_all(stream, max_line=max_line)
    decoder = SicsDecoder(max_line=max_line)
    got: list[Reply] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in itertools.pairwise(bounds):
        got += decoder.feed(stream[start:end])
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), max_line=st.integers(1, 40))
@example(chunks=[b"S S 1e5 kg\r\n", b"S S NaN kg\n", b"S S 9" * 50 + b" kg\n"], max_line=40)
def test_feed_never_raises_and_stays_bounded(chunks, max_line) -> None:
    decoder = SicsDecoder(max_line=max_line)
    for chunk in chunks:
        for reply in decoder.feed(chunk):
            assert isinstance(reply, WeightReply | ScaleStatus | ZeroReply | ErrorReply | Garbage)
            if isinstance(reply, Garbage):
                assert len(reply.raw) <= max_line
                assert reply.reason
        assert len(decoder._buffer) <= max_line + 1


# Scales resolve 0 to 6 decimal places; capacities run from grams to tens of tonnes in lb.
values = st.integers(0, 6).flatmap(
    lambda places: st.decimals(
        min_value=Decimal("-99999999"), max_value=Decimal("99999999"), places=places
    )
)
units = st.sampled_from(["g", "kg", "t", "lb", "oz", "mg", "ct", "ozt", "dwt"])


@settings(max_examples=300, deadline=None)
@given(value=values, unit=units, stable=st.booleans())
def test_weight_round_trips_through_formatting(value, unit, stable) -> None:
    line = format_weight(value, unit, stable=stable)
    reply = weight(line)
    assert (reply.value, reply.unit, reply.stable) == (value, unit, stable)
    # And once more from the decoded reply: decode(format(reply)) is the same reply.
    assert weight(format_weight(reply.value, reply.unit, stable=reply.stable)) == reply


def test_format_weight_right_aligns_in_ten_characters() -> None:
    assert format_weight(Decimal("12.345"), "kg", stable=True) == STABLE_KG
    assert format_weight(Decimal("-0.500"), "g", stable=True) == NEGATIVE_G
    assert format_weight(Decimal("12.340"), "kg", stable=False) == DYNAMIC_KG


@pytest.mark.parametrize(
    ("value", "unit"), [(Decimal("NaN"), "kg"), (Decimal("Infinity"), "kg"), (Decimal(1), "k g")]
)
def test_format_weight_refuses_what_no_scale_sends(value, unit) -> None:
    with pytest.raises(ValueError):
        format_weight(value, unit, stable=True)
