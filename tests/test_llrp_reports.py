"""The driver's own RO_ACCESS_REPORT decoder, against the simulator's reader-side encoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.drivers.llrp_reports import MalformedReport, decode_report
from simulators.llrp.codec import ContentSelector, TagReportEncoder, ro_access_report

EPC96 = bytes.fromhex("3074257BF7194E4000001A85")
EPC128 = bytes.fromhex("E28011604F22C6745D25B4CD4890D31D")


@pytest.mark.parametrize(
    "content",
    [
        ContentSelector(),
        ContentSelector(
            rospec_id=True,
            spec_index=True,
            inventory_parameter_spec_id=True,
            channel_index=True,
            access_spec_id=True,
        ),
        ContentSelector(first_seen=False),
    ],
)
def test_decodes_what_a_reader_sends(content: ContentSelector) -> None:
    encoder = TagReportEncoder(content)
    frame = ro_access_report(
        7,
        [
            encoder.encode(EPC96, 3, -47, 5, 1_700_000_000_000_000, 1_700_000_000_500_000, 4),
            encoder.encode(EPC128, 1, -70, 5, 1_700_000_001_000_000, 1_700_000_001_000_000, 1),
        ],
    )
    reads = decode_report(frame[10:])
    last = content.last_seen
    assert reads == [
        (EPC96.hex().upper(), 3, -47, 1_700_000_000_500_000 if last else 1_700_000_000_000_000, 4),
        (EPC128.hex().upper(), 1, -70, 1_700_000_001_000_000, 1),
    ]


def test_an_empty_report_has_no_reads() -> None:
    assert decode_report(ro_access_report(1, [])[10:]) == []


def test_a_report_that_overruns_is_malformed() -> None:
    encoder = TagReportEncoder(ContentSelector())
    body = ro_access_report(1, [encoder.encode(EPC96, 1, -50, 0, 1, 1)])[10:]
    with pytest.raises(MalformedReport):
        decode_report(body[:-3])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_anything_but_malformed(body: bytes) -> None:
    try:
        reads = decode_report(body)
    except MalformedReport:
        return
    for epc, antenna, _rssi, seen, count in reads:
        assert epc
        assert antenna >= 0
        assert seen >= 0
        assert count >= 0
