"""Barcode framing and label decoding: sans-IO, so bytes in and frames / scans out."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import RejectedScan, Scan, ScanKind
from gateway.drivers.barcode import BarcodeFramer, Frame, LabelRules, Overrun, decode_label
from simulators.gs1 import GROUP_SEPARATOR, corrupt_check_digit, gtin_label, sscc, sscc_label

AT = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC)
SITE = re.compile(r"^[A-Z]{1,3}\d{0,3}(-[A-Z0-9]{1,4}){1,4}$")
RULES = LabelRules(SITE)
AIM_RULES = LabelRules(SITE, aim_symbology=True)
GS = GROUP_SEPARATOR.encode()

SSCC = "376123450000000016"
BAD_SSCC = "376123450000000013"
GTIN = "09506000134352"
BAD_GTIN = "09506000134353"

SUFFIXES = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "ETX": b"\x03", "multi": b"<END>"}


def decode(data: bytes, rules: LabelRules = RULES) -> Scan | RejectedScan:
    return decode_label(data, device_id="fl-7", at=AT, rules=rules)


def scan(data: bytes, rules: LabelRules = RULES) -> Scan:
    result = decode(data, rules)
    assert isinstance(result, Scan), result
    assert result.device_id == "fl-7"
    assert result.at == AT
    return result


def rejection(data: bytes, rules: LabelRules = RULES) -> RejectedScan:
    result = decode(data, rules)
    assert isinstance(result, RejectedScan), result
    assert result.device_id == "fl-7"
    assert result.at == AT
    assert result.reason
    return result


def frames(items: list[Frame | Overrun]) -> list[bytes]:
    return [item.data for item in items if isinstance(item, Frame)]


def feed_all(framer: BarcodeFramer, chunks: list[bytes]) -> list[Frame | Overrun]:
    out: list[Frame | Overrun] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def gs1_check_digit(payload: str) -> int:
    """GS1 mod-10: weights 3, 1, 3, ... from the rightmost digit of the payload."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(payload)))
    return (10 - total % 10) % 10


def has_valid_check_digit(code: str) -> bool:
    return code.isdigit() and gs1_check_digit(code[:-1]) == int(code[-1])


def test_reference_check_digit_agrees_with_the_given_values() -> None:
    assert has_valid_check_digit(SSCC)
    assert not has_valid_check_digit(BAD_SSCC)
    assert has_valid_check_digit(GTIN)
    assert not has_valid_check_digit(BAD_GTIN)


# --- Framer: suffixes ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES.values(), ids=SUFFIXES.keys())
def test_frames_split_on_the_suffix(suffix: bytes) -> None:
    framer = BarcodeFramer(suffix=suffix)
    out = framer.feed(b"A-01-02" + suffix + b"00" + SSCC.encode() + suffix + b"partial")
    assert out == [Frame(b"A-01-02"), Frame(b"00" + SSCC.encode())]
    # The partial frame is kept until its suffix comes.
    assert framer.feed(b"-label" + suffix) == [Frame(b"partial-label")]


@pytest.mark.parametrize("suffix", SUFFIXES.values(), ids=SUFFIXES.keys())
def test_no_frame_until_the_suffix_is_complete(suffix: bytes) -> None:
    framer = BarcodeFramer(suffix=suffix)
    assert framer.feed(b"A-01-02") == []
    for byte in suffix[:-1]:
        assert framer.feed(bytes([byte])) == []
    assert framer.feed(suffix[-1:]) == [Frame(b"A-01-02")]


def test_multi_byte_suffix_split_over_many_feeds() -> None:
    framer = BarcodeFramer(suffix=b"<END>")
    assert feed_all(framer, [b"A-0", b"1-02<E", b"N", b"D", b">B-01<EN", b"D>"]) == [
        Frame(b"A-01-02"),
        Frame(b"B-01"),
    ]


def test_multi_byte_suffix_bytes_alone_do_not_split() -> None:
    framer = BarcodeFramer(suffix=b"\r\n")
    assert framer.feed(b"A\rB\nC\r\n") == [Frame(b"A\rB\nC")]


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [(b"\r", [b"A-01-02", b"\nB-01-01"]), (b"\n", [b"A-01-02\r", b"B-01-01\r"])],
    ids=["CR", "LF"],
)
def test_crlf_stream_on_a_single_byte_suffix_still_decodes(
    suffix: bytes, expected: list[bytes]
) -> None:
    # A scanner sending CRLF to a port configured for CR or LF leaves a stray byte in each
    # frame; decoding the label ignores it.
    framer = BarcodeFramer(suffix=suffix)
    out = frames(framer.feed(b"A-01-02\r\nB-01-01\r\n"))
    assert out == expected
    assert [scan(frame).location for frame in out] == ["A-01-02", "B-01-01"]


def test_empty_suffix_is_refused() -> None:
    with pytest.raises(ValueError, match="suffix"):
        BarcodeFramer(suffix=b"")


# --- Framer: prefix, empty frames, reset ------------------------------------------------------


def test_prefix_is_stripped() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", prefix=b"\x02")
    assert framer.feed(b"\x02A-01-02\r\n\x02]C100" + SSCC.encode() + b"\r\n") == [
        Frame(b"A-01-02"),
        Frame(b"]C100" + SSCC.encode()),
    ]


def test_multi_byte_prefix_is_stripped_only_at_the_start() -> None:
    framer = BarcodeFramer(suffix=b"\n", prefix=b"SCN:")
    assert framer.feed(b"SCN:A-SCN:1\n") == [Frame(b"A-SCN:1")]


def test_frame_without_the_prefix_is_passed_through() -> None:
    framer = BarcodeFramer(suffix=b"\n", prefix=b"\x02")
    assert framer.feed(b"A-01-02\n") == [Frame(b"A-01-02")]


def test_empty_frames_are_skipped() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", prefix=b"\x02")
    assert framer.feed(b"\r\n\r\n\x00\r\n\x02\r\n\n\x00\r\r\nA-01-02\r\n\r\n") == [
        Frame(b"A-01-02")
    ]


def test_reset_forgets_a_partial_frame() -> None:
    framer = BarcodeFramer(suffix=b"\r\n")
    assert framer.feed(b"garbage-from-before\r") == []
    framer.reset()
    assert framer.feed(b"A-01-02\r\n") == [Frame(b"A-01-02")]


# --- Framer: overrun ------------------------------------------------------------------------------


def test_frame_of_exactly_max_length_is_accepted() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=8)
    assert framer.feed(b"ABCDEFGH\r\n") == [Frame(b"ABCDEFGH")]


def test_frame_one_byte_over_max_length_is_an_overrun() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=8)
    assert framer.feed(b"ABCDEFGHI\r\nA-01-02\r\n") == [Overrun(9), Frame(b"A-01-02")]


def test_overrun_without_any_suffix_is_reported_and_the_next_label_still_comes() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=16)
    out = framer.feed(b"\xff" * 100)
    assert len(out) == 1
    assert isinstance(out[0], Overrun)
    assert out[0].discarded >= 100 - 16
    assert frames(framer.feed(b"\r\nA-01-02\r\n"))[-1] == b"A-01-02"


# After an overrun the framer should drop everything up to the next suffix (resynchronise).


def test_overrun_without_any_suffix_delivers_nothing_of_the_runaway_bytes() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=16)
    framer.feed(b"\xff" * 100)
    assert framer.feed(b"\r\nA-01-02\r\n") == [Frame(b"A-01-02")]


def test_overrun_with_a_partial_multi_byte_suffix_at_the_tail() -> None:
    framer = BarcodeFramer(suffix=b"<END>", max_length=4)
    out = framer.feed(b"XXXXXXXXXX<EN")
    assert [type(item) for item in out] == [Overrun]
    assert framer.feed(b"D>A-1<END>") == [Frame(b"A-1")]


def test_overrun_in_one_chunk_recovers_for_the_next_good_frame() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=16)
    out = framer.feed(b"9" * 40 + b"\r\n" + b"A-01-02\r\n")
    assert out == [Overrun(40), Frame(b"A-01-02")]


def test_overrun_fed_byte_by_byte_recovers_for_the_next_good_frame() -> None:
    framer = BarcodeFramer(suffix=b"\r\n", max_length=16)
    stream = b"9" * 40 + b"\r\n" + b"A-01-02\r\n"
    out = feed_all(framer, [bytes([b]) for b in stream])
    assert frames(out) == [b"A-01-02"]
    assert any(isinstance(item, Overrun) for item in out)


# --- Framer: properties ---------------------------------------------------------------------------

# Frame bytes never contain a byte of any suffix used below, nor CR, LF, NUL or STX.
_FRAME_BYTES = sorted(set(range(0x01, 0x100)) - set(b"\r\n\x00\x02\x03<END>"))


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[BarcodeFramer, list[bytes], list[bytes]]:
    suffix = draw(st.sampled_from(list(SUFFIXES.values())))
    prefix = draw(st.sampled_from([b"", b"\x02"]))
    max_length = draw(st.integers(len(prefix) + 1, 40))
    body = st.lists(
        st.sampled_from(_FRAME_BYTES), min_size=1, max_size=max_length - len(prefix)
    ).map(bytes)
    bodies = draw(st.lists(body, max_size=8))
    stream = b"".join(prefix + body + suffix for body in bodies)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    framer = BarcodeFramer(suffix=suffix, prefix=prefix, max_length=max_length)
    return framer, bodies, chunks


@settings(max_examples=300, deadline=None)
@given(framed_streams())
def test_any_chunking_of_a_stream_gives_the_same_frames(
    case: tuple[BarcodeFramer, list[bytes], list[bytes]],
) -> None:
    framer, bodies, chunks = case
    assert feed_all(framer, chunks) == [Frame(body) for body in bodies]


@settings(max_examples=300, deadline=None)
@given(
    suffix=st.sampled_from(list(SUFFIXES.values())),
    max_length=st.integers(1, 64),
    chunks=st.lists(st.binary(max_size=80), max_size=20),
)
def test_feed_never_raises_and_bounds_its_buffer(
    suffix: bytes, max_length: int, chunks: list[bytes]
) -> None:
    framer = BarcodeFramer(suffix=suffix, max_length=max_length)
    for chunk in chunks:
        for item in framer.feed(chunk):
            if isinstance(item, Frame):
                assert 0 < len(item.data) <= max_length
                assert suffix not in item.data
            else:
                assert isinstance(item, Overrun)
                assert item.discarded > 0
        # The only state is the partial frame; reading it is the one way to check the bound.
        assert len(framer._buffer) <= max_length + len(suffix)


# --- decode: SSCC ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "label",
    [SSCC, "00" + SSCC, "]C100" + SSCC, "]C1" + SSCC, "]d200" + SSCC, "]Q300" + SSCC],
)
def test_sscc_is_a_pallet(label: str) -> None:
    result = scan(label.encode())
    assert result.kind is ScanKind.PALLET
    assert result.sscc == SSCC
    assert result.raw == label
    assert result.code == SSCC
    assert (result.gtin, result.location) == (None, None)


def test_aim_symbology_is_recorded() -> None:
    assert scan(b"]C100" + SSCC.encode()).symbology == "]C1"
    assert scan(b"00" + SSCC.encode()).symbology is None


def test_trailing_line_endings_and_nul_are_not_part_of_the_label() -> None:
    result = scan(b"00" + SSCC.encode() + b"\r\n\x00")
    assert result.sscc == SSCC
    assert result.raw == "00" + SSCC


@pytest.mark.parametrize("label", [BAD_SSCC, "00" + BAD_SSCC, "]C100" + BAD_SSCC])
def test_sscc_with_bad_check_digit_is_rejected(label: str) -> None:
    result = rejection(label.encode())
    assert "check digit" in result.reason
    assert result.raw == label


@settings(max_examples=200, deadline=None)
@given(
    company_prefix=st.text("0123456789", min_size=7, max_size=10),
    serial_ref=st.integers(0, 99_999),
    extension=st.integers(0, 9),
    form=st.sampled_from(["", "00", "]C100", "]C1"]),
)
def test_any_valid_sscc_decodes_and_a_corrupted_one_is_rejected(
    company_prefix: str, serial_ref: int, extension: int, form: str
) -> None:
    code = sscc(company_prefix, serial_ref, extension)
    assert has_valid_check_digit(code)
    label = form + (sscc_label(code)[2:] if form in ("", "]C1") else code)
    assert scan(label.encode()).sscc == code
    assert "check digit" in rejection(corrupt_check_digit(label).encode()).reason


# --- decode: GTIN and attributes -------------------------------------------------------------------


@pytest.mark.parametrize("label", [GTIN, "01" + GTIN, "]C101" + GTIN, "]d201" + GTIN])
def test_gtin_is_an_item(label: str) -> None:
    result = scan(label.encode())
    assert result.kind is ScanKind.ITEM
    assert result.gtin == GTIN
    assert (result.sscc, result.location, result.lot, result.expiry) == (None, None, None, None)


@pytest.mark.parametrize("label", [BAD_GTIN, "01" + BAD_GTIN, "]C101" + BAD_GTIN])
def test_gtin_with_bad_check_digit_is_rejected(label: str) -> None:
    assert "check digit" in rejection(label.encode()).reason


def test_gtin_with_expiry_lot_serial_and_count() -> None:
    label = b"]C101" + GTIN.encode() + b"17250228" + b"10LOT-7" + GS + b"21SN0042" + GS + b"3712"
    result = scan(label)
    assert result.kind is ScanKind.ITEM
    assert result.symbology == "]C1"
    assert result.gtin == GTIN
    assert result.expiry == dt.date(2025, 2, 28)
    assert result.lot == "LOT-7"
    assert result.serial == "SN0042"
    assert result.count == 12
    assert result.raw == label.decode()


def test_field_order_does_not_matter() -> None:
    label = b"21SN0042" + GS + b"3712" + GS + b"10LOT-7" + GS + b"01" + GTIN.encode()
    result = scan(label)
    assert (result.gtin, result.serial, result.count, result.lot) == (GTIN, "SN0042", 12, "LOT-7")


def test_count_from_ai_30() -> None:
    assert scan(b"01" + GTIN.encode() + b"30" + b"250").count == 250


def test_expiry_day_00_means_end_of_month() -> None:
    assert scan(b"01" + GTIN.encode() + b"17240200").expiry == dt.date(2024, 2, 29)


def test_gtin_label_built_by_the_simulator() -> None:
    label = gtin_label(GTIN, lot="B12", expiry=dt.date(2026, 7, 31), count=48)
    result = scan(("]C1" + label).encode())
    assert (result.gtin, result.lot, result.expiry, result.count) == (
        GTIN,
        "B12",
        dt.date(2026, 7, 31),
        48,
    )


@pytest.mark.parametrize("date", ["250229", "251301", "250432"])
def test_invalid_expiry_date_is_rejected(date: str) -> None:
    result = rejection(b"]C101" + GTIN.encode() + b"17" + date.encode() + b"10LOT1")
    assert "17" in result.reason


def test_gs1_string_with_neither_sscc_gtin_nor_location_is_rejected() -> None:
    assert rejection(b"]C110LOT1").reason.startswith("GS1 label carries neither")


@pytest.mark.parametrize(
    "label", [b"]C10037612345000000", b"]C10109506000", b"]C14145790000", b"0037612345000000"]
)
def test_truncated_element_string_is_rejected(label: bytes) -> None:
    assert "GS1 element string" in rejection(label).reason


@pytest.mark.parametrize("label", [b"]C10012345", b"]C1414579"])
def test_truncated_element_string_under_gs1_128_is_not_read_as_upc_e(label: bytes) -> None:
    rejection(label)


@pytest.mark.parametrize(
    ("label", "gtin"),
    [(b"]E05901234123457", "5901234123457"), (b"5901234123457", "5901234123457")],
)
def test_ean13_is_an_item(label: bytes, gtin: str) -> None:
    result = scan(label)
    assert result.kind is ScanKind.ITEM
    assert result.gtin == gtin
    assert result.symbology == (label[:3].decode() if label.startswith(b"]") else None)


def test_ean13_with_bad_check_digit_is_rejected() -> None:
    assert "check digit" in rejection(b"]E05901234123458").reason


def test_ean13_digits_whose_start_looks_like_an_ai_are_read_as_ean13_under_e0() -> None:
    # 4006381333931 starts with "400" (customer PO number), but ]E0 says it is an EAN-13.
    assert scan(b"]E04006381333931").gtin == "4006381333931"


@pytest.mark.parametrize(
    "gtin",
    ["4006381333931", "96385074", "10012345000017"],
    ids=["EAN-13 as AI 400", "EAN-8 as AI 96", "GTIN-14 as AI 10"],
)
def test_bare_gtin_whose_start_looks_like_an_ai_is_read_as_a_gtin(gtin: str) -> None:
    assert has_valid_check_digit(gtin)
    assert scan(gtin.encode()).gtin == gtin


# --- decode: locations ----------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["A-01-02", "AB12-3-C4D5", "ZZZ999-1-2-3-4", "R-1"])
def test_site_location_pattern(label: str) -> None:
    result = scan(label.encode())
    assert result.kind is ScanKind.LOCATION
    assert result.location == label
    assert result.code == label


@pytest.mark.parametrize("label", ["a-01-02", "A-01-02-03-04-05", "A01", "ABCD-1", "A-01-02 "])
def test_near_misses_of_the_site_pattern_are_rejected(label: str) -> None:
    result = rejection(label.encode())
    assert "location" in result.reason


def test_site_location_after_aim_prefix() -> None:
    result = scan(b"]C1A-01-02")
    assert (result.location, result.symbology) == ("A-01-02", "]C1")


@pytest.mark.parametrize("label", ["4145790000000012", "]C14145790000000012"])
def test_gln_location(label: str) -> None:
    result = scan(label.encode())
    assert result.kind is ScanKind.LOCATION
    assert result.location == "5790000000012"


def test_gln_location_with_extension() -> None:
    assert scan(b"4145790000000012" + b"254" + b"1A").location == "5790000000012.1A"


def test_gln_with_bad_check_digit_is_rejected() -> None:
    assert "check digit" in rejection(b"4145790000000013").reason


# --- decode: AIM requirement and garbage ------------------------------------------------------


def test_aim_symbology_required_rejects_labels_without_it() -> None:
    for label in (b"A-01-02", SSCC.encode(), b"00" + SSCC.encode()):
        assert "symbology" in rejection(label, AIM_RULES).reason


def test_aim_symbology_required_accepts_labels_with_it() -> None:
    assert scan(b"]C100" + SSCC.encode(), AIM_RULES).sscc == SSCC
    assert scan(b"]C1A-01-02", AIM_RULES).location == "A-01-02"
    assert scan(b"]E05901234123457", AIM_RULES).gtin == "5901234123457"


def test_aim_prefix_alone_is_an_empty_label() -> None:
    assert "empty" in rejection(b"]C1").reason


@pytest.mark.parametrize(
    "data",
    [b"\x01\x02\x03", b"A-01\x07-02", b"A-01\n-02", b"\xff\xfe\xfd", b"\xc3\xa9t\xc3\xa9", b"\x7f"],
    ids=["control", "bell", "inner-newline", "non-utf8", "utf8-accents", "del"],
)
def test_garbage_is_rejected_with_a_clear_reason(data: bytes) -> None:
    assert "non-printable" in rejection(data).reason


def test_empty_data_is_rejected() -> None:
    rejection(b"")
    rejection(b"\r\n\x00")


def test_text_that_is_neither_gs1_nor_a_location_is_rejected() -> None:
    assert rejection(b"hello world").reason == (
        "not a GS1 label, and not a location label of this site"
    )


# --- decode: properties ---------------------------------------------------------------------------

_LABELISH = st.text(alphabet="0123456789]CdEQe1023A-Z\x1d", max_size=40).map(str.encode)
_PREFIXED = st.tuples(
    st.sampled_from([b"", b"]C1", b"]E0", b"]d2", b"]Q3", b"00", b"01", b"414", b"17"]),
    st.binary(max_size=40) | _LABELISH,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=60) | _LABELISH | _PREFIXED, aim=st.booleans())
def test_decode_never_raises_and_accepted_codes_are_sound(data: bytes, aim: bool) -> None:
    result = decode(data, AIM_RULES if aim else RULES)
    assert isinstance(result, Scan | RejectedScan)
    assert result.device_id == "fl-7"
    assert result.at == AT
    assert result.raw == data.decode("latin-1").strip("\r\n\x00")
    if isinstance(result, RejectedScan):
        assert result.reason
        return
    assert result.raw.isascii()
    if aim:
        assert result.symbology is not None
    if result.kind is ScanKind.PALLET:
        assert result.sscc is not None
        assert len(result.sscc) == 18
        assert has_valid_check_digit(result.sscc)
    elif result.kind is ScanKind.ITEM:
        assert result.gtin is not None
        assert len(result.gtin) in (8, 12, 13, 14)
        assert has_valid_check_digit(result.gtin)
    else:
        assert result.location
