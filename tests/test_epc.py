"""EPC codec against GS1 EPC Tag Data Standard 2.x: worked examples, tables, round trips, fuzz.

Expected binary values are packed here as '0'/'1' strings from the TDS field layouts, written
independently of the shifts and masks in gateway/epc.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from biip.checksums import gs1_standard_check_digit
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.epc import (
    Epc,
    decode_epc,
    encode_giai96,
    encode_grai96,
    encode_sgln96,
    encode_sgtin96,
    encode_sscc96,
    gs1_check_digit,
)

HEADERS = {"sgtin-96": 0x30, "sscc-96": 0x31, "sgln-96": 0x32, "grai-96": 0x33, "giai-96": 0x34}

# TDS partition tables, partition 0-6: (company prefix bits, digits, other field bits, digits).
PARTITIONS = {
    "sgtin-96": [(40, 12, 4, 1), (37, 11, 7, 2), (34, 10, 10, 3), (30, 9, 14, 4),
                 (27, 8, 17, 5), (24, 7, 20, 6), (20, 6, 24, 7)],
    "sscc-96": [(40, 12, 18, 5), (37, 11, 21, 6), (34, 10, 24, 7), (30, 9, 28, 8),
                (27, 8, 31, 9), (24, 7, 34, 10), (20, 6, 38, 11)],
    "sgln-96": [(40, 12, 1, 0), (37, 11, 4, 1), (34, 10, 7, 2), (30, 9, 11, 3),
                (27, 8, 14, 4), (24, 7, 17, 5), (20, 6, 21, 6)],
    "grai-96": [(40, 12, 4, 0), (37, 11, 7, 1), (34, 10, 10, 2), (30, 9, 14, 3),
                (27, 8, 17, 4), (24, 7, 20, 5), (20, 6, 24, 6)],
    "giai-96": [(40, 12, 42, 13), (37, 11, 45, 14), (34, 10, 48, 15), (30, 9, 52, 16),
                (27, 8, 55, 17), (24, 7, 58, 18), (20, 6, 62, 19)],
}  # fmt: skip
# Bits after the two partitioned fields: SGTIN/GRAI serial, SSCC reserved, SGLN extension.
TAIL_BITS = {"sgtin-96": 38, "sscc-96": 24, "sgln-96": 41, "grai-96": 38, "giai-96": 0}


def pack(*fields: tuple[int, int]) -> str:
    """Upper-case hex of (value, bit width) fields, most significant first."""
    bits = ""
    for value, width in fields:
        field = format(value, f"0{width}b") if width else ""
        assert len(field) == width, (value, width)
        bits += field
    assert len(bits) % 8 == 0
    return format(int(bits, 2), f"0{len(bits) // 4}X")


def pack96(
    scheme: str, filter_value: int, partition: int, prefix: int, ref: int, tail: int = 0
) -> str:
    """A 96-bit EPC of one of the partitioned schemes, laid out from the TDS tables."""
    prefix_bits, _, ref_bits, _ = PARTITIONS[scheme][min(partition, 6)]
    return pack(
        (HEADERS[scheme], 8),
        (filter_value, 3),
        (partition, 3),
        (prefix, prefix_bits),
        (ref, ref_bits),
        (tail, TAIL_BITS[scheme]),
    )


def mod10(digits: str) -> str:
    """GS1 check digit: weights 3, 1, 3... from the right."""
    total = sum(int(d) * (1 if i % 2 else 3) for i, d in enumerate(reversed(digits)))
    return str(-total % 10)


def test_partition_tables_add_up() -> None:
    for scheme, rows in PARTITIONS.items():
        assert len({cp_bits + ref_bits for cp_bits, _, ref_bits, _ in rows}) == 1, scheme
        assert 8 + 3 + 3 + rows[0][0] + rows[0][2] + TAIL_BITS[scheme] == 96
        for cp_bits, cp_digits, ref_bits, ref_digits in rows:
            assert 2**cp_bits >= 10**cp_digits
            if scheme == "giai-96":  # digits is the most a reference of that many bits has
                assert len(str(2**ref_bits - 1)) == ref_digits
            else:
                assert 2**ref_bits >= 10**ref_digits


@settings(max_examples=300)
@given(st.text(alphabet="0123456789", min_size=1, max_size=17))
def test_the_domains_check_digit_is_biips(digits: str) -> None:
    # The domain computes GS1 check digits with the standard library only; biip is the reference.
    assert gs1_check_digit(digits) == str(gs1_standard_check_digit(digits))


def test_check_digit_helper_matches_gs1_examples() -> None:
    assert mod10("8061414112345") == "8"  # GTIN 80614141123458
    assert mod10("10614141234567890") == "8"  # SSCC 106141412345678908
    assert mod10("629104150021") == "3"  # GLN 6291041500213


# --- TDS worked examples ------------------------------------------------------------------


def test_tds_sgtin_example() -> None:
    """TDS Appendix E: GTIN 80614141123458, serial 6789, filter 3, 7-digit company prefix."""
    hex_ = "3074257BF7194E4000001A85"
    assert pack96("sgtin-96", 3, 5, 614141, 812345, 6789) == hex_
    assert decode_epc(hex_) == Epc(
        hex=hex_,
        scheme="sgtin-96",
        uri="urn:epc:id:sgtin:0614141.812345.6789",
        filter=3,
        company_prefix="0614141",
        gtin="80614141123458",
        serial="6789",
    )
    assert encode_sgtin96("0614141", "812345", 6789, filter_value=3).hex().upper() == hex_


EXAMPLES = [
    (
        "3174257BF4499602D2000000",
        pack96("sscc-96", 3, 5, 614141, 1234567890),
        encode_sscc96("0614141", "1234567890", filter_value=3),
        Epc(
            hex="3174257BF4499602D2000000",
            scheme="sscc-96",
            uri="urn:epc:id:sscc:0614141.1234567890",
            filter=3,
            company_prefix="0614141",
            sscc="106141412345678908",
        ),
    ),
    (
        "3274257BF460720000000190",
        pack96("sgln-96", 3, 5, 614141, 12345, 400),
        encode_sgln96("0614141", "12345", 400, filter_value=3),
        Epc(
            hex="3274257BF460720000000190",
            scheme="sgln-96",
            uri="urn:epc:id:sgln:0614141.12345.400",
            filter=3,
            company_prefix="0614141",
            gln="0614141123452",
            extension="400",
        ),
    ),
    (
        "3374257BF40C0E4000000190",
        pack96("grai-96", 3, 5, 614141, 12345, 400),
        encode_grai96("0614141", "12345", 400, filter_value=3),
        Epc(
            hex="3374257BF40C0E4000000190",
            scheme="grai-96",
            uri="urn:epc:id:grai:0614141.12345.400",
            filter=3,
            company_prefix="0614141",
            serial="400",
            grai="00614141123452400",
        ),
    ),
    (
        "3474257BF40000000000162E",
        pack96("giai-96", 3, 5, 614141, 5678),
        encode_giai96("0614141", 5678, filter_value=3),
        Epc(
            hex="3474257BF40000000000162E",
            scheme="giai-96",
            uri="urn:epc:id:giai:0614141.5678",
            filter=3,
            company_prefix="0614141",
            serial="5678",
        ),
    ),
]


@pytest.mark.parametrize(("hex_", "packed", "encoded", "expected"), EXAMPLES)
def test_tds_examples(hex_: str, packed: str, encoded: bytes, expected: Epc) -> None:
    assert packed == hex_
    assert encoded.hex().upper() == hex_
    assert decode_epc(hex_) == expected
    assert decode_epc(bytes.fromhex(hex_)) == expected


def test_leading_zeros_come_from_digit_counts() -> None:
    epc = decode_epc(encode_sgtin96("0000001", "000002", 0, filter_value=0))
    assert epc.uri == "urn:epc:id:sgtin:0000001.000002.0"
    assert epc.gtin == "0000000100002" + mod10("0000000100002")
    epc = decode_epc(encode_sscc96("000000000001", "00003"))
    assert epc.uri == "urn:epc:id:sscc:000000000001.00003"
    assert epc.sscc == "0" + "000000000001" + "0003" + mod10("00000000000010003")


def test_sgtin_serial_has_no_leading_zeros_and_38_bits() -> None:
    top = 2**38 - 1
    epc = decode_epc(pack96("sgtin-96", 1, 0, 1, 9, top))
    assert epc.uri == f"urn:epc:id:sgtin:000000000001.9.{top}"
    assert epc.serial == "274877906943"
    assert decode_epc(encode_sgtin96("000000000001", "9", 7)).uri == (
        "urn:epc:id:sgtin:000000000001.9.7"
    )


def test_empty_location_reference_and_asset_type_for_12_digit_prefix() -> None:
    gln = decode_epc(encode_sgln96("061414112345", "", 0))
    assert gln.uri == "urn:epc:id:sgln:061414112345..0"
    assert gln.gln == "0614141123452"
    assert gln.extension == "0"
    grai = decode_epc(encode_grai96("061414112345", "", 7))
    assert grai.uri == "urn:epc:id:grai:061414112345..7"
    assert grai.grai == "006141411234527"


# --- round trips ----------------------------------------------------------------------------


def digits(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=n, max_size=n)


@st.composite
def prefixed(draw: st.DrawFn, scheme: str) -> tuple[int, str, str, int]:
    """Partition, company prefix and other field as digit strings, filter value."""
    partition = draw(st.integers(0, 6))
    _, cp_digits, _, ref_digits = PARTITIONS[scheme][partition]
    return partition, draw(digits(cp_digits)), draw(digits(ref_digits)), draw(st.integers(0, 7))


@given(prefixed("sgtin-96"), st.integers(0, 2**38 - 1))
def test_sgtin_round_trip(fields: tuple[int, str, str, int], serial: int) -> None:
    partition, cp, ir, filter_value = fields
    raw = encode_sgtin96(cp, ir, serial, filter_value=filter_value)
    assert raw.hex().upper() == pack96(
        "sgtin-96", filter_value, partition, int(cp), int(ir), serial
    )
    gtin13 = ir[0] + cp + ir[1:]
    assert decode_epc(raw) == Epc(
        hex=raw.hex().upper(),
        scheme="sgtin-96",
        uri=f"urn:epc:id:sgtin:{cp}.{ir}.{serial}",
        filter=filter_value,
        company_prefix=cp,
        gtin=gtin13 + mod10(gtin13),
        serial=str(serial),
    )


@given(prefixed("sscc-96"))
def test_sscc_round_trip(fields: tuple[int, str, str, int]) -> None:
    partition, cp, sr, filter_value = fields
    raw = encode_sscc96(cp, sr, filter_value=filter_value)
    assert raw.hex().upper() == pack96("sscc-96", filter_value, partition, int(cp), int(sr))
    sscc17 = sr[0] + cp + sr[1:]
    assert decode_epc(raw) == Epc(
        hex=raw.hex().upper(),
        scheme="sscc-96",
        uri=f"urn:epc:id:sscc:{cp}.{sr}",
        filter=filter_value,
        company_prefix=cp,
        sscc=sscc17 + mod10(sscc17),
    )


@given(prefixed("sgln-96"), st.integers(0, 2**41 - 1))
def test_sgln_round_trip(fields: tuple[int, str, str, int], extension: int) -> None:
    partition, cp, lr, filter_value = fields
    raw = encode_sgln96(cp, lr, extension, filter_value=filter_value)
    assert raw.hex().upper() == pack96(
        "sgln-96", filter_value, partition, int(cp), int(lr or "0"), extension
    )
    assert decode_epc(raw) == Epc(
        hex=raw.hex().upper(),
        scheme="sgln-96",
        uri=f"urn:epc:id:sgln:{cp}.{lr}.{extension}",
        filter=filter_value,
        company_prefix=cp,
        gln=cp + lr + mod10(cp + lr),
        extension=str(extension),
    )


@given(prefixed("grai-96"), st.integers(0, 2**38 - 1))
def test_grai_round_trip(fields: tuple[int, str, str, int], serial: int) -> None:
    partition, cp, asset_type, filter_value = fields
    raw = encode_grai96(cp, asset_type, serial, filter_value=filter_value)
    assert raw.hex().upper() == pack96(
        "grai-96", filter_value, partition, int(cp), int(asset_type or "0"), serial
    )
    assert decode_epc(raw) == Epc(
        hex=raw.hex().upper(),
        scheme="grai-96",
        uri=f"urn:epc:id:grai:{cp}.{asset_type}.{serial}",
        filter=filter_value,
        company_prefix=cp,
        serial=str(serial),
        grai="0" + cp + asset_type + mod10(cp + asset_type) + str(serial),
    )


@given(st.data())
def test_giai_round_trip(data: st.DataObject) -> None:
    partition, cp, _, filter_value = data.draw(prefixed("giai-96"))
    asset_ref = data.draw(st.integers(0, 2 ** PARTITIONS["giai-96"][partition][2] - 1))
    raw = encode_giai96(cp, asset_ref, filter_value=filter_value)
    assert raw.hex().upper() == pack96("giai-96", filter_value, partition, int(cp), asset_ref)
    assert decode_epc(raw) == Epc(
        hex=raw.hex().upper(),
        scheme="giai-96",
        uri=f"urn:epc:id:giai:{cp}.{asset_ref}",
        filter=filter_value,
        company_prefix=cp,
        serial=str(asset_ref),
    )


def reencode(epc: Epc) -> bytes:
    """Encode a decoded EPC again from its URI and filter value."""
    assert epc.uri is not None
    assert epc.filter is not None
    parts = epc.uri.rsplit(":", 1)[1].split(".")
    f = epc.filter
    if epc.scheme == "sgtin-96":
        return encode_sgtin96(parts[0], parts[1], int(parts[2]), filter_value=f)
    if epc.scheme == "sscc-96":
        return encode_sscc96(parts[0], parts[1], filter_value=f)
    if epc.scheme == "sgln-96":
        return encode_sgln96(parts[0], parts[1], int(parts[2]), filter_value=f)
    if epc.scheme == "grai-96":
        return encode_grai96(parts[0], parts[1], int(parts[2]), filter_value=f)
    assert epc.scheme == "giai-96"
    return encode_giai96(parts[0], int(parts[1]), filter_value=f)


@settings(max_examples=300)
@given(st.sampled_from(sorted(HEADERS.values())), st.binary(min_size=11, max_size=11))
def test_any_96_bits_decode_to_an_identity_that_encodes_back_or_an_error(
    header: int, rest: bytes
) -> None:
    raw = bytes([header]) + rest
    epc = decode_epc(raw)
    assert epc.scheme in HEADERS
    assert epc.hex == raw.hex().upper()
    assert epc.filter == rest[0] >> 5
    if epc.uri is None:
        assert epc.error is not None
        assert epc.error.startswith(epc.scheme + ": ")
    else:
        assert epc.error is None
        assert reencode(epc) == raw


# --- never raises, unknown, odd lengths -----------------------------------------------------


@given(st.binary(max_size=40))
def test_decode_never_raises_on_bytes(raw: bytes) -> None:
    epc = decode_epc(raw)
    assert epc.hex == raw.hex().upper()
    assert (epc.uri is None) == (epc.error is not None or epc.scheme == "unknown")
    assert decode_epc(raw.hex()) == epc


@given(st.text(max_size=40))
def test_decode_never_raises_on_text(text: str) -> None:
    epc = decode_epc(text)
    assert isinstance(epc, Epc)
    if epc.scheme == "unknown":
        assert epc.uri is None


@pytest.mark.parametrize(
    "hex_",
    [
        "E2801160600002054C9F4A21",  # a vendor's factory EPC, not GS1
        "E2801160600002054C9F4A2100000000",  # 128 bits
        "3574257BF400B0C200000001",  # GID-96: a GS1 scheme this gateway does not decode
        "00",
        "FF",
        "E280",
    ],
)
def test_unknown_headers_are_kept_as_hex(hex_: str) -> None:
    epc = decode_epc(hex_.lower())
    assert epc == Epc(hex=hex_, scheme="unknown", uri=None)


def test_128_bit_memory_with_a_96_bit_epc_decodes_the_first_96_bits() -> None:
    hex_ = "3074257BF7194E4000001A85" + "00000000"
    epc = decode_epc(hex_)
    assert epc.hex == hex_
    assert epc.uri == "urn:epc:id:sgtin:0614141.812345.6789"
    assert epc.error is None


@pytest.mark.parametrize("size", [1, 2, 11])
def test_short_epc_with_known_header(size: int) -> None:
    raw = bytes.fromhex("3074257BF7194E4000001A85")[:size]
    epc = decode_epc(raw)
    assert (epc.scheme, epc.uri, epc.hex) == ("sgtin-96", None, raw.hex().upper())
    assert epc.error == f"sgtin-96: {size * 8} bits, needs 96"


@pytest.mark.parametrize(
    ("given_epc", "error_word"),
    [
        (b"", "empty"),
        ("", "empty"),
        ("   ", "empty"),
        ("3074257BF7194E4000001A8", "not hex"),  # odd length
        ("3074257BF7194E4000001AZZ", "not hex"),
        ("0x3074257BF7194E4000001A85", "not hex"),
        ("٣٠", "not hex"),
        (None, "not bytes"),
        (12345, "not bytes"),
    ],
)
def test_input_that_is_not_an_epc(given_epc: object, error_word: str) -> None:
    epc = decode_epc(given_epc)  # type: ignore[arg-type]
    assert (epc.scheme, epc.uri, epc.hex) == ("unknown", None, "")
    assert epc.error is not None
    assert error_word in epc.error


def test_hex_text_forms() -> None:
    expected = decode_epc(bytes.fromhex("3074257BF7194E4000001A85"))
    assert decode_epc("3074257bf7194e4000001a85") == expected
    assert decode_epc(" 30 74 25 7B F7 19 4E 40 00 00 1A 85\n") == expected
    assert decode_epc(bytearray.fromhex("3074257BF7194E4000001A85")) == expected  # type: ignore[arg-type]
    assert decode_epc(memoryview(bytes.fromhex("3074257BF7194E4000001A85"))) == expected  # type: ignore[arg-type]


# --- invalid fields -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(HEADERS))
def test_partition_7_is_an_error(scheme: str) -> None:
    # Partition 7 has no row; lay the body out as partition 6 would.
    epc = decode_epc(pack96(scheme, 2, 7, 1, 1))
    assert epc.scheme == scheme
    assert epc.uri is None
    assert epc.filter == 2
    assert epc.error == f"{scheme}: partition 7 is reserved"
    assert (epc.company_prefix, epc.gtin, epc.sscc, epc.gln, epc.grai, epc.serial) == (None,) * 6


@pytest.mark.parametrize(
    ("hex_", "error"),
    [
        (pack96("sgtin-96", 1, 6, 10**6, 0), "company prefix 1000000 has more than 6 digits"),
        (pack96("sgtin-96", 1, 0, 2**40 - 1, 0), "more than 12 digits"),
        (pack96("sgtin-96", 1, 0, 1, 10), "item reference 10 has more than 1 digits"),
        (pack96("sgtin-96", 1, 6, 1, 10**7), "item reference 10000000 has more"),
        (pack96("sscc-96", 0, 0, 1, 10**5), "serial reference 100000 has more than 5 digits"),
        (pack96("sscc-96", 0, 5, 1, 1, 1), "reserved bits are not zero"),
        (pack96("sgln-96", 0, 0, 1, 1), "location reference 1 has more than 0 digits"),
        (pack96("sgln-96", 0, 3, 1, 1000), "location reference 1000 has more than 3 digits"),
        (pack96("grai-96", 0, 0, 1, 1), "asset type 1 has more than 0 digits"),
        (pack96("grai-96", 0, 6, 10**6 + 5, 1), "company prefix 1000005 has more"),
        (pack96("giai-96", 0, 0, 10**12, 1), "company prefix 1000000000000 has more"),
    ],
)
def test_fields_with_too_many_digits_are_errors(hex_: str, error: str) -> None:
    epc = decode_epc(hex_)
    assert epc.uri is None
    assert epc.error is not None
    assert error in epc.error


# --- encoder validation ---------------------------------------------------------------------

ENCODE_ERRORS: list[tuple[Callable[[], bytes], str]] = [
    (lambda: encode_sgtin96("12345", "12345678", 1), "company prefix"),
    (lambda: encode_sgtin96("1234567890123", "", 1), "company prefix"),
    (lambda: encode_sgtin96("061414a", "812345", 1), "company prefix"),
    (lambda: encode_sgtin96("٠٦١٤١٤١", "812345", 1), "company prefix"),
    (lambda: encode_sgtin96("0614141", "81234", 1), "item reference"),
    (lambda: encode_sgtin96("0614141", "8123456", 1), "item reference"),
    (lambda: encode_sgtin96("0614141", "81234x", 1), "item reference"),
    (lambda: encode_sgtin96("0614141", "812345", 2**38), "serial"),
    (lambda: encode_sgtin96("0614141", "812345", -1), "serial"),
    (lambda: encode_sgtin96("0614141", "812345", 1, filter_value=8), "filter"),
    (lambda: encode_sgtin96("0614141", "812345", 1, filter_value=-1), "filter"),
    (lambda: encode_sscc96("0614141", "123456789"), "serial reference"),
    (lambda: encode_sscc96("0614141", "1234567890", filter_value=9), "filter"),
    (lambda: encode_sgln96("0614141", "1234", 0), "location reference"),
    (lambda: encode_sgln96("0614141", "12345", 2**41), "extension"),
    (lambda: encode_sgln96("061414112345", "0", 0), "location reference"),
    (lambda: encode_grai96("0614141", "123456", 1), "asset type"),
    (lambda: encode_grai96("0614141", "12345", 2**38), "serial"),
    (lambda: encode_giai96("0614141", 2**58), "individual asset reference"),
    (lambda: encode_giai96("061414112345", 2**42), "individual asset reference"),
    (lambda: encode_giai96("0614141", -1), "individual asset reference"),
]


@pytest.mark.parametrize(("call", "word"), ENCODE_ERRORS)
def test_encoders_refuse_out_of_range_input(call: Callable[[], bytes], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        call()


def test_encoders_accept_the_largest_values() -> None:
    assert decode_epc(encode_giai96("0614141", 2**58 - 1)).serial == str(2**58 - 1)
    assert decode_epc(encode_sgln96("0614141", "99999", 2**41 - 1)).extension == str(2**41 - 1)
    assert decode_epc(encode_sscc96("999999", "99999999999", filter_value=7)).error is None


def test_epc_is_frozen() -> None:
    epc = decode_epc("3074257BF7194E4000001A85")
    with pytest.raises(dataclasses.FrozenInstanceError):
        epc.uri = "urn:epc:id:sgtin:0.0.0"  # type: ignore[misc]
