"""A guest console relayed over an RPC stream: the pty on one side, the client on the other.

Shared by the drivers whose guests expose their console as a pty (QEMU's
serial pty backend, the LXC controller's host-side pty): pyvirtd opens the
pty itself and relays bytes both ways (libvirt's virFDStreamOpenPTY +
virChrdevOpen).  ``dom`` is any object with a ``console`` attribute, which
holds the session while it lasts, so a driver can refuse or force out a
second one and end it when the guest stops.
"""

from __future__ import annotations

import errno
import logging
import os
import termios
import tty
from typing import Any

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


class ConsoleSession:
    """The open console of one guest: who holds it and how to end it."""

    def __init__(self, dom: Any, stream: Stream, path: str) -> None:
        self.dom = dom
        self.stream = stream
        self.path = path
        self.scope = trio.CancelScope()
        self.closed = False

    def close(self, error: VirError | None = None) -> None:
        """End the session (guest stopped, or forced out by another console)."""
        if self.closed:
            return
        self.closed = True
        if error is not None:
            self.stream.abort(error)
        else:
            self.stream.finish()     # end of data: the client then finishes
        self.scope.cancel()
        if self.dom.console is self:
            self.dom.console = None

    async def relay(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.close()
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Unable to open '{self.path}': {exc.strerror}",
                           domain=P.VIR_FROM_NONE) from None
        try:
            try:
                tty.setraw(fd, termios.TCSANOW)   # bytes as they are, as libvirt's pty stream
            except termios.error:
                pass
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._to_client, fd, nursery.cancel_scope)
                    await self._to_guest(fd)
                    nursery.cancel_scope.cancel()
        finally:
            trio.lowlevel.notify_closing(fd)
            os.close(fd)
            if self.dom.console is self:
                self.dom.console = None
            self.closed = True

    async def _to_client(self, fd: int, scope: trio.CancelScope) -> None:
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:   # EIO: QEMU closed the pty's other side
                    log.warning("console %s: %s", self.path, exc)
                data = b""
            if not data:
                self.stream.finish()
                scope.cancel()
                return
            self.stream.send(data)
            await self.stream.drain()

    async def _to_guest(self, fd: int) -> None:
        while True:
            item = await self.stream.receive()
            if item is None:        # the client finished
                return
            if not isinstance(item, (bytes, bytearray)):
                continue            # a hole means nothing on a console
            view = memoryview(item)
            while view:
                await trio.lowlevel.wait_writable(fd)
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    continue
