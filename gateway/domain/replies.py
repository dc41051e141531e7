"""Reply handles: where the answer to a request goes, opaque to everyone but the bridge.

A request that came over MQTT carries its reply address (an MQTT 5 response topic with
correlation data, or a 3.1.1 `reply_to` in the payload). The bridge wraps it in a
`ReplyHandle`; the rules pass the handle back untouched in a `Reply`, and the bridge alone
decides whether and where the answer may be published.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, eq=False)
class ReplyHandle:
    """An opaque reply address; only the edge that made it knows what `address` holds.

    Handles compare by identity: two requests with the same reply topic are two replies."""

    address: object = field(repr=False)
