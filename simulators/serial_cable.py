"""The serial cable of every simulated serial device: a pseudo-terminal behind a stable symlink.

The device writes into and reads from the master side of a pty; the host (the gateway) opens
the slave side through a symlink, as it would open ``/dev/serial/by-id/usb-...`` for a real
device. The pty is raw: no echo, no CR/LF translation, every byte passes as is. Unplugging
removes the symlink and closes the pty, so a host that has the port open sees the same hang-up
as when a USB cable is pulled; plugging in again makes a new pty and points the symlink at it.

    with SerialCable(Path("/tmp/scale0"), on_receive=handle) as cable:
        cable.write_all(b"S S     12.34 kg\\r\\n")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = ["SerialCable", "point_link_at"]

_READ_SIZE: Final = 4096


class SerialCable:
    """A pty pair whose slave a host opens through the symlink `link`; the device owns the master.

    Args:
        link: where the symlink to the slave goes. Its directory must exist; an older symlink
            there is replaced, a regular file is not. None: no symlink (the host is given
            `device` itself).
        on_receive: called with every chunk the host writes, from the running event loop (which
            `plug` then needs); None: what the host writes is left unread.
    """

    def __init__(
        self, link: Path | None = None, *, on_receive: Callable[[bytes], None] | None = None
    ) -> None:
        self._link = None if link is None else Path(link)
        self._on_receive = on_receive
        self._master: int | None = None
        self._slave: int | None = None
        self._device = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plugs = 0
        self._waiting: asyncio.Future[None] | None = None

    @property
    def link(self) -> Path | None:
        """The symlink the host opens (None: the cable has none)."""
        return self._link

    @property
    def device(self) -> str:
        """The pty slave (``/dev/pts/N``) the symlink points at, empty while unplugged."""
        return self._device

    @property
    def plugged(self) -> bool:
        """Whether the pty exists (and the symlink points at it)."""
        return self._master is not None

    @property
    def plugs(self) -> int:
        """How many times the cable was plugged in: tells one connection from the next."""
        return self._plugs

    def plug(self) -> None:
        """Make the pty, point the symlink at it, start receiving. Does nothing if plugged."""
        if self._master is not None:
            return
        loop = asyncio.get_running_loop() if self._on_receive is not None else None
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            device = os.ttyname(slave)
            if self._link is not None:
                point_link_at(self._link, device)
            if loop is not None:
                loop.add_reader(master, self._on_readable)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._device, self._loop = master, slave, device, loop
        self._plugs += 1

    def unplug(self) -> None:
        """Pull the cable: remove the symlink, close the pty. Does nothing if unplugged.

        A host reading the old device gets end of file or an I/O error and loses what it had
        not read; opening the link fails until `plug`. A `wait_writable` returns.
        """
        master, slave = self._master, self._slave
        if master is None or slave is None:
            return
        self._master = self._slave = None
        if self._loop is not None:
            self._loop.remove_reader(master)
            self._loop = None
        self._wake_writer(master)  # before its descriptor number is freed for reuse
        if self._link is not None:
            with contextlib.suppress(OSError):  # already gone, or now someone else's
                if os.readlink(self._link) == self._device:
                    self._link.unlink()
        self._device = ""
        # Closing the master hangs up the slave for everyone who has it open.
        os.close(master)
        os.close(slave)

    def __enter__(self) -> Self:
        self.plug()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()

    def write(self, data: bytes | memoryview) -> int:
        """Write what the line takes now; return how many bytes that was.

        Raises:
            BlockingIOError: the host's input queue is full (see `wait_writable`).
            OSError: unplugged, or the pty failed.
        """
        if self._master is None:
            raise OSError(f"the cable to {self._link or 'the pty'} is unplugged")
        return os.write(self._master, data)

    def write_all(self, data: bytes) -> int:
        """Write all of `data` if the line takes it; return how many bytes went.

        A wire has no flow control: when the host stops reading and its input queue is full,
        or the cable is unplugged, the rest is lost.
        """
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += self.write(view[sent:])
            except OSError:
                break
        return sent

    async def wait_writable(self) -> None:
        """Wait until the host has drained some of its input queue, or the cable is unplugged."""
        master = self._master
        if master is None:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting = waiter
        loop.add_writer(master, _wake, waiter)
        try:
            await waiter
        finally:
            # If `unplug` came first it has removed the writer, and `master` may be reused.
            if self._waiting is waiter:
                self._waiting = None
                loop.remove_writer(master)

    def _wake_writer(self, master: int) -> None:
        waiter, self._waiting = self._waiting, None
        if waiter is not None:
            waiter.get_loop().remove_writer(master)
            _wake(waiter)

    def _on_readable(self) -> None:
        if self._master is None or self._on_receive is None:
            return
        try:
            data = os.read(self._master, _READ_SIZE)
        except OSError:
            return  # nothing after all, or the host has no end open right now
        if data:
            self._on_receive(data)


def point_link_at(link: Path, device: str) -> None:
    """Point the symlink `link` at `device`, replacing an older link atomically.

    The new link is made beside the old one and renamed over it: a host never sees the path
    missing or half-made while a device is plugged in again. A regular file there is not
    replaced (FileExistsError).
    """
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink; not replacing it")
    staging = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    staging.symlink_to(device)
    try:
        os.replace(staging, link)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
