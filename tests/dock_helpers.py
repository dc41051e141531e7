"""Test helpers for dock doors: EPCs and the GS1 identities behind them."""

from __future__ import annotations

from gateway.domain.epc import decode_epc, encode_sgtin96

CP = "0614141"  # the GS1 company prefix of the tests' tags


def cases(item: str, first: int, n: int) -> list[bytes]:
    """SGTIN-96 tags of `n` cases of one product, serials from `first`."""
    return [encode_sgtin96(CP, item, serial) for serial in range(first, first + n)]


def gtin(item: str) -> str:
    """The GTIN-14 of an item reference under the tests' company prefix."""
    value = decode_epc(encode_sgtin96(CP, item, 1)).gtin
    assert value is not None
    return value


def sscc(epc: bytes) -> str:
    """The SSCC an SSCC-96 tag carries."""
    value = decode_epc(epc).sscc
    assert value is not None
    return value
