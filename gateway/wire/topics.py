"""MQTT topic names: the gateway's own tree `gw/{site}/{gateway}/...` and the site's WMS tree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one gateway: `gw/{site}/{gateway}/...`."""

    site: str
    gateway: str

    @property
    def base(self) -> str:
        """The prefix every topic of this gateway starts with."""
        return f"gw/{self.site}/{self.gateway}"

    @property
    def status(self) -> str:
        """Retained online/offline status; also the last will."""
        return f"{self.base}/status"

    def device_status(self, device_id: str) -> str:
        """Retained status of one device."""
        return f"{self.base}/device/{device_id}/status"

    def tx(self, kind: str) -> str:
        """Transactions of one kind: receive, ship or move."""
        return f"{self.base}/tx/{kind}"

    def summary(self, kind: str) -> str:
        """Closed receipts (`receipt`) and shipments (`shipment`)."""
        return f"{self.base}/{kind}"

    @property
    def epcis(self) -> str:
        """GS1 EPCIS 2.0 documents of the same transactions (optional output)."""
        return f"{self.base}/epcis"

    @property
    def event(self) -> str:
        """Notices: rejected scans, timed-out moves and other things worth seeing."""
        return f"{self.base}/event"

    def debug_pass(self, door: str) -> str:
        """Portal passes of one door, for commissioning (debug option, rate-limited, QoS 0)."""
        return f"{self.base}/debug/pass/{door}"

    @property
    def alarm(self) -> str:
        """Exceptions that need a person."""
        return f"{self.base}/alarm"

    @property
    def agv_task(self) -> str:
        """Every change of an AGV task."""
        return f"{self.base}/agv/task"

    def agv_request(self, op: str) -> str:
        """Where fleet controllers send `next`, `progress` and `cancel` requests."""
        return f"{self.base}/agv/{op}"

    @property
    def wms(self) -> str:
        """The prefix of the site's WMS topics: `wms/{site}`."""
        return f"wms/{self.site}"
