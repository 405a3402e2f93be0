"""QEMU driver connection: DOMAIN_OPEN_CONSOLE, the guest's serial console over an RPC stream.

The console is QEMU's pty backend of the serial port (or of the named
character device); pyvirtd opens the pty itself and relays bytes both ways
(libvirt's virFDStreamOpenPTY + virChrdevOpen).  One console session per
guest: a second open is refused unless VIR_DOMAIN_CONSOLE_FORCE, which ends
the first session.  A session ends when the client finishes or aborts the
stream (virsh's Ctrl+]), when the guest stops, or when it is forced out.
"""

from __future__ import annotations

import logging

from pyvirtd.consoles import ConsoleSession
from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream

from .driver import QemuDriverState
from .launch import console_device

log = logging.getLogger(__name__)

CONSOLE_FORCE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_FORCE
CONSOLE_SAFE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_SAFE


class ConsoleMixin:
    driver: QemuDriverState

    def domain_open_console(self, stream: Stream, ref: Dom, dev_name: str | None, flags: int) -> None:
        check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, "qemuDomainOpenConsole", P.VIR_FROM_QEMU)
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
