"""EPC codec for the 96-bit GS1 schemes of the EPC Tag Data Standard (TDS) 2.x.

Pure: bytes or hex in, a frozen `Epc` out; no I/O, no clock, no cache. Covers SGTIN-96,
SSCC-96, SGLN-96, GRAI-96 and GIAI-96. Any other header is passed through as hex with scheme
"unknown", so a portal can still count and report tags it cannot interpret.

Every 96-bit scheme starts with an 8-bit header, a 3-bit filter value and a 3-bit partition.
The partition says how the remaining bits are split between the GS1 Company Prefix and the
next field (item reference, serial reference, location reference, asset type or individual
asset reference); the split differs per scheme, so each has its own table below. The digit
counts in those tables restore leading zeros that a binary integer cannot carry.

Decoding follows TDS section 14.4: a bit string shorter than the scheme's 96 bits cannot be
decoded, and bits beyond the 96 (a 128-bit EPC memory holding a 96-bit EPC) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "Epc",
    "decode_epc",
    "encode_giai96",
    "encode_grai96",
    "encode_sgln96",
    "encode_sgtin96",
    "encode_sscc96",
    "gs1_check_digit",
]


@dataclass(frozen=True, slots=True)
class Epc:
    """A decoded EPC.

    Identity fields are set only when `uri` is; on a recognised header that cannot be decoded
    `scheme` names the scheme, `filter` is kept when the header was long enough, and `error`
    says why. Unknown headers give scheme "unknown" with no error; input that is not an EPC at
    all (empty, not hex) gives scheme "unknown", `hex` "" and an error.
    """

    hex: str
    """Upper-case hex of the whole EPC as read (all of it, also beyond 96 bits)."""
    scheme: str
    """"sgtin-96", "sscc-96", "grai-96", "giai-96", "sgln-96" or "unknown"."""
    uri: str | None
    """Pure identity URI, e.g. "urn:epc:id:sgtin:0614141.812345.6789"."""
    filter: int | None = None
    """Filter value (0-7): the tag's packaging level, used by readers to select tags."""
    company_prefix: str | None = None
    """GS1 Company Prefix, 6-12 digits with its leading zeros."""
    gtin: str | None = None
    """SGTIN: GTIN-14 (indicator, company prefix, item reference, check digit)."""
    sscc: str | None = None
    """SSCC: 18 digits (extension digit, company prefix, serial reference, check digit)."""
    serial: str | None = None
    """SGTIN or GRAI serial number, or GIAI individual asset reference (decimal, no leading 0s)."""
    grai: str | None = None
    """GRAI as the value of GS1 AI (8003): "0", company prefix, asset type, check digit, serial."""
    gln: str | None = None
    """SGLN: GLN-13 (company prefix, location reference, check digit)."""
    extension: str | None = None
    """SGLN: GLN extension as in the URI; "0" means the GLN itself, no extension."""
    error: str | None = None
    """Why the input, or a recognised header, could not be decoded."""


class _Partition(NamedTuple):
    """One row of a TDS partition table, with the limits derived from it."""

    prefix_bits: int
    prefix_digits: int
    ref_bits: int
    ref_digits: int  # for GIAI-96 the most digits; the reference has no leading zeros
    prefix_limit: int  # smallest company prefix value with too many digits
    ref_limit: int  # smallest reference value with too many digits
    ref_mask: int


def _table(*rows: tuple[int, int, int, int]) -> tuple[_Partition, ...]:
    return tuple(
        _Partition(
            cp_bits,
            cp_digits,
            ref_bits,
            ref_digits,
            10**cp_digits,
            10**ref_digits,
            (1 << ref_bits) - 1,
        )
        for cp_bits, cp_digits, ref_bits, ref_digits in rows
    )


# Partition tables of TDS 2.x section 14, indexed by partition value 0-6. Columns: company
# prefix bits, company prefix digits, other field's bits, other field's digits.
_SGTIN_PARTITIONS: Final = _table(
    (40, 12, 4, 1),
    (37, 11, 7, 2),
    (34, 10, 10, 3),
    (30, 9, 14, 4),
    (27, 8, 17, 5),
    (24, 7, 20, 6),
    (20, 6, 24, 7),
)
_SSCC_PARTITIONS: Final = _table(
    (40, 12, 18, 5),
    (37, 11, 21, 6),
    (34, 10, 24, 7),
    (30, 9, 28, 8),
    (27, 8, 31, 9),
    (24, 7, 34, 10),
    (20, 6, 38, 11),
)
_SGLN_PARTITIONS: Final = _table(
    (40, 12, 1, 0),
    (37, 11, 4, 1),
    (34, 10, 7, 2),
    (30, 9, 11, 3),
    (27, 8, 14, 4),
    (24, 7, 17, 5),
    (20, 6, 21, 6),
)
_GRAI_PARTITIONS: Final = _table(
    (40, 12, 4, 0),
    (37, 11, 7, 1),
    (34, 10, 10, 2),
    (30, 9, 14, 3),
    (27, 8, 17, 4),
    (24, 7, 20, 5),
    (20, 6, 24, 6),
)
_GIAI_PARTITIONS: Final = _table(
    (40, 12, 42, 13),
    (37, 11, 45, 14),
    (34, 10, 48, 15),
    (30, 9, 52, 16),
    (27, 8, 55, 17),
    (24, 7, 58, 18),
    (20, 6, 62, 19),
)

_SGTIN96: Final = 0x30
_SSCC96: Final = 0x31
_SGLN96: Final = 0x32
_GRAI96: Final = 0x33
_GIAI96: Final = 0x34
_SCHEMES: Final = {
    _SGTIN96: "sgtin-96",
    _SSCC96: "sscc-96",
    _SGLN96: "sgln-96",
    _GRAI96: "grai-96",
    _GIAI96: "giai-96",
}

_BYTES: Final = 12  # 96 bits
_BODY_BITS: Final = 82  # after header, filter and partition
_BODY_MASK: Final = (1 << _BODY_BITS) - 1
_SERIAL_BITS: Final = 38  # SGTIN-96 and GRAI-96 serial
_SSCC_RESERVED_BITS: Final = 24  # SSCC-96 trailing bits, zero
_EXTENSION_BITS: Final = 41  # SGLN-96 extension
_RESERVED_PARTITION: Final = 7


def decode_epc(epc: bytes | str) -> Epc:
    """Decode an EPC given as bytes or as a hex string; never raises.

    A hex string may be of either case and have whitespace between bytes.
    """
    value: object = epc  # checked at run time: readers hand over whatever they got
    if isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return Epc(hex="", scheme="unknown", uri=None, error=f"not hex: {value[:48]!r}")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    else:
        return Epc(hex="", scheme="unknown", uri=None, error=f"not bytes: {type(value).__name__}")
    if not raw:
        return Epc(hex="", scheme="unknown", uri=None, error="empty EPC")
    hex_ = raw.hex().upper()
    scheme = _SCHEMES.get(raw[0])
    if scheme is None:
        return Epc(hex=hex_, scheme="unknown", uri=None)
    if len(raw) < _BYTES:
        return _failed(hex_, scheme, None, f"{len(raw) * 8} bits, needs 96")
    bits = int.from_bytes(raw[:_BYTES], "big")
    filter_ = (bits >> 85) & 0b111
    partition = (bits >> _BODY_BITS) & 0b111
    if partition == _RESERVED_PARTITION:
        return _failed(hex_, scheme, filter_, "partition 7 is reserved")
    body = bits & _BODY_MASK
    header = raw[0]
    if header == _SGTIN96:
        return _sgtin(hex_, filter_, _SGTIN_PARTITIONS[partition], body)
    if header == _SSCC96:
        return _sscc(hex_, filter_, _SSCC_PARTITIONS[partition], body)
    if header == _SGLN96:
        return _sgln(hex_, filter_, _SGLN_PARTITIONS[partition], body)
    if header == _GRAI96:
        return _grai(hex_, filter_, _GRAI_PARTITIONS[partition], body)
    return _giai(hex_, filter_, _GIAI_PARTITIONS[partition], body)


def epc_key(epc: Epc, raw_hex: str) -> str:
    """The identity a decoded tag is known by in the dock ledger and in counts: `sscc:N` for
    a pallet, `sgtin:GTIN.SERIAL` for a case, else `epc:HEX` (as read)."""
    if epc.sscc:
        return f"sscc:{epc.sscc}"
    if epc.gtin and epc.serial:
        return f"sgtin:{epc.gtin}.{epc.serial}"
    return f"epc:{raw_hex}"


def _failed(hex_: str, scheme: str, filter_: int | None, why: str) -> Epc:
    return Epc(hex=hex_, scheme=scheme, uri=None, filter=filter_, error=f"{scheme}: {why}")


def _split(rest: int, row: _Partition) -> tuple[int, int]:
    """Company prefix and reference from the bits that hold both."""
    return rest >> row.ref_bits, rest & row.ref_mask


def _too_long(prefix: int, ref: int, row: _Partition, ref_name: str) -> str | None:
    """TDS "Partition" decoding: each value must fit its digit count."""
    if prefix >= row.prefix_limit:
        return f"company prefix {prefix} has more than {row.prefix_digits} digits"
    if ref >= row.ref_limit:
        return f"{ref_name} {ref} has more than {row.ref_digits} digits"
    return None


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of `digits` (weights 3, 1, 3... from the right).

    Written here, not taken from biip, so that the domain imports nothing but the standard
    library (and EPCIS settings are checked without loading biip's tables); tests/test_epc.py
    checks it against biip's for every length.
    """
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str(-total % 10)


def _sgtin(hex_: str, filter_: int, row: _Partition, body: int) -> Epc:
    serial = body & ((1 << _SERIAL_BITS) - 1)
    prefix, item = _split(body >> _SERIAL_BITS, row)
    why = _too_long(prefix, item, row, "item reference")
    if why is not None:
        return _failed(hex_, "sgtin-96", filter_, why)
    cp = str(prefix).zfill(row.prefix_digits)
    ir = str(item).zfill(row.ref_digits)
    # The item reference's first digit is the GTIN-14 indicator digit.
    gtin13 = ir[0] + cp + ir[1:]
    return Epc(
        hex=hex_,
        scheme="sgtin-96",
        uri=f"urn:epc:id:sgtin:{cp}.{ir}.{serial}",
        filter=filter_,
        company_prefix=cp,
        gtin=gtin13 + gs1_check_digit(gtin13),
        serial=str(serial),
    )


def _sscc(hex_: str, filter_: int, row: _Partition, body: int) -> Epc:
    if body & ((1 << _SSCC_RESERVED_BITS) - 1):
        return _failed(hex_, "sscc-96", filter_, "reserved bits are not zero")
    prefix, ref = _split(body >> _SSCC_RESERVED_BITS, row)
    why = _too_long(prefix, ref, row, "serial reference")
    if why is not None:
        return _failed(hex_, "sscc-96", filter_, why)
    cp = str(prefix).zfill(row.prefix_digits)
    sr = str(ref).zfill(row.ref_digits)
    # The serial reference's first digit is the SSCC's extension digit.
    sscc17 = sr[0] + cp + sr[1:]
    return Epc(
        hex=hex_,
        scheme="sscc-96",
        uri=f"urn:epc:id:sscc:{cp}.{sr}",
        filter=filter_,
        company_prefix=cp,
        sscc=sscc17 + gs1_check_digit(sscc17),
    )


def _sgln(hex_: str, filter_: int, row: _Partition, body: int) -> Epc:
    extension = body & ((1 << _EXTENSION_BITS) - 1)
    prefix, ref = _split(body >> _EXTENSION_BITS, row)
    why = _too_long(prefix, ref, row, "location reference")
    if why is not None:
        return _failed(hex_, "sgln-96", filter_, why)
    cp = str(prefix).zfill(row.prefix_digits)
    lr = str(ref).zfill(row.ref_digits) if row.ref_digits else ""
    gln12 = cp + lr
    return Epc(
        hex=hex_,
        scheme="sgln-96",
        uri=f"urn:epc:id:sgln:{cp}.{lr}.{extension}",
        filter=filter_,
        company_prefix=cp,
        gln=gln12 + gs1_check_digit(gln12),
        extension=str(extension),
    )


def _grai(hex_: str, filter_: int, row: _Partition, body: int) -> Epc:
    serial = body & ((1 << _SERIAL_BITS) - 1)
    prefix, ref = _split(body >> _SERIAL_BITS, row)
    why = _too_long(prefix, ref, row, "asset type")
    if why is not None:
        return _failed(hex_, "grai-96", filter_, why)
    cp = str(prefix).zfill(row.prefix_digits)
    asset_type = str(ref).zfill(row.ref_digits) if row.ref_digits else ""
    grai13 = "0" + cp + asset_type  # AI (8003) pads the 12 digits with a leading zero
    return Epc(
        hex=hex_,
        scheme="grai-96",
        uri=f"urn:epc:id:grai:{cp}.{asset_type}.{serial}",
        filter=filter_,
        company_prefix=cp,
        serial=str(serial),
        grai=grai13 + gs1_check_digit(grai13) + str(serial),
    )


def _giai(hex_: str, filter_: int, row: _Partition, body: int) -> Epc:
    prefix, ref = _split(body, row)
    why = _too_long(prefix, ref, row, "individual asset reference")
    if why is not None:
        return _failed(hex_, "giai-96", filter_, why)
    cp = str(prefix).zfill(row.prefix_digits)
    return Epc(
        hex=hex_,
        scheme="giai-96",
        uri=f"urn:epc:id:giai:{cp}.{ref}",
        filter=filter_,
        company_prefix=cp,
        serial=str(ref),
    )


def _digits(value: str, name: str, length: int) -> None:
    if len(value) != length or (length and not (value.isascii() and value.isdigit())):
        raise ValueError(f"{name} must be {length} digits, got {value!r}")


def _row(
    table: tuple[_Partition, ...], company_prefix: str, filter_value: int
) -> tuple[int, _Partition]:
    """Partition and table row for a company prefix; checks prefix and filter value."""
    if not 6 <= len(company_prefix) <= 12:
        raise ValueError(f"company prefix must be 6 to 12 digits, got {company_prefix!r}")
    partition = 12 - len(company_prefix)
    row = table[partition]
    _digits(company_prefix, "company prefix", row.prefix_digits)
    if not 0 <= filter_value <= 0b111:
        raise ValueError(f"filter value must be 0 to 7, got {filter_value}")
    return partition, row


def _int_field(value: int, name: str, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be 0 to {(1 << bits) - 1} ({bits} bits), got {value}")


def _pack(header: int, filter_value: int, partition: int, body: int) -> bytes:
    bits = header << 88 | filter_value << 85 | partition << _BODY_BITS | body
    return bits.to_bytes(_BYTES, "big")


def encode_sgtin96(
    company_prefix: str, item_reference: str, serial: int, *, filter_value: int = 1
) -> bytes:
    """SGTIN-96; `item_reference` starts with the GTIN's indicator digit (13 digits with prefix)."""
    partition, row = _row(_SGTIN_PARTITIONS, company_prefix, filter_value)
    _digits(item_reference, "item reference (indicator digit first)", row.ref_digits)
    _int_field(serial, "serial", _SERIAL_BITS)
    rest = int(company_prefix) << row.ref_bits | int(item_reference)
    return _pack(_SGTIN96, filter_value, partition, rest << _SERIAL_BITS | serial)


def encode_sscc96(company_prefix: str, serial_reference: str, *, filter_value: int = 0) -> bytes:
    """SSCC-96; `serial_reference` starts with the extension digit (17 digits with prefix)."""
    partition, row = _row(_SSCC_PARTITIONS, company_prefix, filter_value)
    _digits(serial_reference, "serial reference (extension digit first)", row.ref_digits)
    rest = int(company_prefix) << row.ref_bits | int(serial_reference)
    return _pack(_SSCC96, filter_value, partition, rest << _SSCC_RESERVED_BITS)


def encode_grai96(
    company_prefix: str, asset_type: str, serial: int, *, filter_value: int = 0
) -> bytes:
    """GRAI-96; `asset_type` has 12 digits less the prefix's (none for a 12-digit prefix)."""
    partition, row = _row(_GRAI_PARTITIONS, company_prefix, filter_value)
    _digits(asset_type, "asset type", row.ref_digits)
    _int_field(serial, "serial", _SERIAL_BITS)
    rest = int(company_prefix) << row.ref_bits | int(asset_type or "0")
    return _pack(_GRAI96, filter_value, partition, rest << _SERIAL_BITS | serial)


def encode_giai96(company_prefix: str, asset_reference: int, *, filter_value: int = 0) -> bytes:
    """GIAI-96; the asset reference's bit width depends on the prefix length (42-62 bits)."""
    partition, row = _row(_GIAI_PARTITIONS, company_prefix, filter_value)
    _int_field(asset_reference, "individual asset reference", row.ref_bits)
    return _pack(
        _GIAI96, filter_value, partition, int(company_prefix) << row.ref_bits | asset_reference
    )


def encode_sgln96(
    company_prefix: str, location_reference: str, extension: int, *, filter_value: int = 0
) -> bytes:
    """SGLN-96; `location_reference` has 12 digits less the prefix's; extension 0 means none."""
    partition, row = _row(_SGLN_PARTITIONS, company_prefix, filter_value)
    _digits(location_reference, "location reference", row.ref_digits)
    _int_field(extension, "extension", _EXTENSION_BITS)
    rest = int(company_prefix) << row.ref_bits | int(location_reference or "0")
    return _pack(_SGLN96, filter_value, partition, rest << _EXTENSION_BITS | extension)
