"""A label printer on a raw TCP port (as Zebra printers listen on 9100), for tests and the demo.

It takes ZPL, splits it into labels (`^XA` ... `^XZ`) and keeps each; `ssccs` lists the SSCCs
the labels carry (`^FD(00)` + 18 digits), in the order printed. `offline()` stops listening
(as a printer switched off), `online()` listens again on the same port. An empty connection (a
gateway checking the printer is there) prints nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from types import TracebackType
from typing import Self

__all__ = ["ZplPrinterSimulator"]

_LABEL = re.compile(rb"\^XA.*?\^XZ", re.DOTALL)
_SSCC = re.compile(rb"\^FD\(00\)(\d{18})\^FS")


class ZplPrinterSimulator:
    """A raw-port ZPL printer on 127.0.0.1; use it as an async context manager."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.labels: list[bytes] = []
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def ssccs(self) -> list[str]:
        """The SSCC of each label printed, in order."""
        return [m.group(1).decode() for label in self.labels for m in [_SSCC.search(label)] if m]

    async def __aenter__(self) -> Self:
        await self.online()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.offline()

    async def online(self) -> None:
        """Listen (again, on the same port)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._take, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def offline(self) -> None:
        """Stop listening and drop open connections: the printer is off."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        data = b""
        try:
            while chunk := await reader.read(65536):
                data += chunk
        finally:
            writer.close()
        self.labels.extend(_LABEL.findall(data))
