"""GS1 labels for the simulators: SSCCs, pallet and trade-item element strings, bad check digits.

Pure functions, no I/O. Check digits and the table of which Application Identifiers (AIs) are
variable-length come from biip, so the labels follow the GS1 General Specifications.
"""

from __future__ import annotations

import datetime as dt

from biip.checksums import gs1_standard_check_digit
from biip.gs1_application_identifiers import GS1ApplicationIdentifier

__all__ = ["GROUP_SEPARATOR", "corrupt_check_digit", "gtin_label", "sscc", "sscc_label"]

# FNC1 in a GS1-128 / DataMatrix symbol is transmitted by the scanner as ASCII GS (0x1D).
GROUP_SEPARATOR = "\x1d"

_SSCC_LENGTH = 18
_GTIN14_LENGTH = 14
# AIM symbology identifiers are three characters: "]", the symbology, a modifier ("]C1").
_AIM_LENGTH = 3
_AIM_START = "]"
# Fixed-length identifiers whose last digit is a GS1 mod-10 check digit, by AI.
_CHECKED_AIS = {"00": _SSCC_LENGTH, "01": _GTIN14_LENGTH, "02": _GTIN14_LENGTH}
_MAX_COUNT_DIGITS = 8  # AI (37) is N..8
_MAX_LOT_LENGTH = 20  # AI (10) is X..20


def sscc(company_prefix: str, serial_ref: int, extension: int = 3) -> str:
    """Build an 18-digit SSCC: extension digit, company prefix, serial reference, check digit.

    The serial reference is zero-padded to fill the 16 digits left after the extension digit
    and the company prefix.

    Raises:
        ValueError: the prefix is not 4 to 12 digits, the extension is not one digit, or the
            serial reference does not fit.
    """
    if not (_is_digits(company_prefix) and 4 <= len(company_prefix) <= 12):
        raise ValueError(f"company prefix must be 4 to 12 digits, got {company_prefix!r}")
    if not 0 <= extension <= 9:
        raise ValueError(f"extension digit must be 0-9, got {extension}")
    width = _SSCC_LENGTH - 2 - len(company_prefix)
    if not 0 <= serial_ref < 10**width:
        raise ValueError(
            f"serial reference {serial_ref} does not fit in {width} digits "
            f"after company prefix {company_prefix}"
        )
    payload = f"{extension}{company_prefix}{serial_ref:0{width}d}"
    return payload + str(gs1_standard_check_digit(payload))


def sscc_label(sscc: str) -> str:
    """The GS1 element string of a pallet label: AI (00) followed by the SSCC."""
    if not (_is_digits(sscc) and len(sscc) == _SSCC_LENGTH):
        raise ValueError(f"an SSCC has 18 digits, got {sscc!r}")
    return "00" + sscc


def gtin_label(
    gtin14: str,
    lot: str | None = None,
    expiry: dt.date | None = None,
    count: int | None = None,
) -> str:
    """The GS1 element string of a trade-item label: (01) GTIN, (17) expiry, (10) lot, (37) count.

    Variable-length fields are terminated by a group separator unless they end the message,
    as GS1 requires; fixed-length fields never are.
    """
    if not (_is_digits(gtin14) and len(gtin14) == _GTIN14_LENGTH):
        raise ValueError(f"a GTIN-14 has 14 digits, got {gtin14!r}")
    fields: list[tuple[str, str]] = [("01", gtin14)]
    if expiry is not None:
        fields.append(("17", expiry.strftime("%y%m%d")))
    if lot is not None:
        if not 1 <= len(lot) <= _MAX_LOT_LENGTH or GROUP_SEPARATOR in lot:
            raise ValueError(f"a lot is 1 to 20 characters without a group separator: {lot!r}")
        fields.append(("10", lot))
    if count is not None:
        if not 0 <= count < 10**_MAX_COUNT_DIGITS:
            raise ValueError(f"count must be 0 to 99999999, got {count}")
        fields.append(("37", str(count)))
    return _element_string(fields)


def corrupt_check_digit(label: str) -> str:
    """Return `label` with the check digit of its SSCC or GTIN changed (a misprint or misread).

    Accepts a bare SSCC, GTIN-8/12/13/14, or an element string starting with AI (00), (01) or
    (02), optionally after an AIM symbology identifier such as "]C1".
    """
    start = _AIM_LENGTH if label.startswith(_AIM_START) else 0
    body = label[start:]
    if _is_digits(body) and len(body) in (8, 12, 13, _GTIN14_LENGTH, _SSCC_LENGTH):
        position = len(label) - 1
    elif body[:2] in _CHECKED_AIS and len(body) >= 2 + _CHECKED_AIS[body[:2]]:
        position = start + 2 + _CHECKED_AIS[body[:2]] - 1
    else:
        raise ValueError(f"no SSCC or GTIN check digit found in {label!r}")
    digit = label[position]
    if not _is_digits(digit):
        raise ValueError(f"no SSCC or GTIN check digit found in {label!r}")
    wrong = str((int(digit) + 1) % 10)
    return label[:position] + wrong + label[position + 1 :]


def _element_string(fields: list[tuple[str, str]]) -> str:
    """Concatenate (AI, value) pairs, with a separator after each variable-length one."""
    parts: list[str] = []
    for ai, value in fields:
        parts.append(ai + value)
        if GS1ApplicationIdentifier.extract(ai).separator_required:
            parts.append(GROUP_SEPARATOR)
    return "".join(parts).removesuffix(GROUP_SEPARATOR)


def _is_digits(value: str) -> bool:
    # str.isdigit() also accepts non-ASCII digits such as "\u0663"; labels are ASCII.
    return value.isascii() and value.isdigit()
