"""Carton labels in ZPL II (Zebra's printer language), sent raw to a label printer's port 9100.

The label carries the SSCC as a GS1-128 barcode (`^BC` in UCC/EAN mode `D`, which starts the
symbol with FNC1 and reads the AI in parentheses) and as text, with the ship order and the
item count. Printable ASCII only: anything else in a field is replaced.
"""

from __future__ import annotations

import re

from gateway.domain import PrintJob

__all__ = ["label"]

_UNSAFE = re.compile(r"[^ -~]|[\^~]")  # ZPL's command prefixes and non-ASCII


def label(job: PrintJob) -> str:
    """The ZPL of one carton label (4 x 6 inch at 203 dpi)."""
    sscc = job.sscc
    human = f"(00) {sscc}"
    return (
        "^XA^CI28^PW812^LL1218"
        f"^FX job {_safe(job.job_id)}^FS"
        f"^FO50,50^A0N,50,50^FDSSCC {_safe(human)}^FS"
        f"^FO50,130^A0N,40,40^FDOrder {_safe(job.order_id)}^FS"
        f"^FO50,190^A0N,40,40^FD{job.items} items, station {_safe(job.station)}^FS"
        f"^FO50,300^BY3^BCN,250,Y,N,N,D^FD(00){sscc}^FS"
        "^XZ\n"
    )


def _safe(text: str) -> str:
    return _UNSAFE.sub("?", text)[:60]
