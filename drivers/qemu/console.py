"""QEMU driver connection: DOMAIN_OPEN_CONSOLE, the guest's serial console over an RPC stream.

The console is QEMU's pty backend of the serial port (or of the named
character device); pyvirtd opens the pty itself and relays bytes both ways
(libvirt's virFDStreamOpenPTY + virChrdevOpen).  One console session per
guest: a second open is refused unless VIR_DOMAIN_CONSOLE_FORCE, which ends
the first session.  A session ends when the client finishes or aborts the
stream (virsh's Ctrl+]), when the guest stops, or when it is forced out.
"""

from __future__ import annotations

import errno
import logging
import os
import termios
import tty
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream

from .driver import QemuDomain, QemuDriverState
from .launch import console_device

log = logging.getLogger(__name__)

# virDomainConsoleFlags
CONSOLE_FORCE, CONSOLE_SAFE = 1, 2
READ_CHUNK = 64 * 1024


class ConsoleSession:
    """The open console of one guest: who holds it and how to end it."""

    def __init__(self, dom: QemuDomain, stream: Stream, path: str) -> None:
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


class ConsoleMixin:
    driver: QemuDriverState

    def domain_open_console(self, stream: Stream, ref: Any, dev_name: str | None, flags: int) -> None:
        from .domains import check_flags

        check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, "qemuDomainOpenConsole")
        dom = self._dom(ref)   # type: ignore[attr-defined]
        if not dom.active:
            raise ds.not_running()
        dev = console_device(dom.definition, dev_name)
        if dev.get("type") != "pty":
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"character device {dev_name or 'console0'} is not using a PTY",
                           domain=P.VIR_FROM_QEMU)
        src = dev.find("source")
        path = src.get("path") if src is not None else None
        if not path:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"character device {dev_name or 'console0'} is not using a PTY",
                           domain=P.VIR_FROM_QEMU)
        old = dom.console
        if old is not None and not old.closed:
            if not flags & CONSOLE_FORCE:
                raise VirError(P.VIR_ERR_OPERATION_FAILED,
                               "Active console session exists for this domain",
                               domain=P.VIR_FROM_QEMU)
            old.close(VirError(P.VIR_ERR_OPERATION_FAILED,
                               "Active console session exists for this domain",
                               domain=P.VIR_FROM_QEMU))
        session = ConsoleSession(dom, stream, path)
        dom.console = session
        stream.run(session.relay)
