"""The ``qemu`` driver: qemu:///system and qemu:///session, real guests under QEMU/KVM.

Which URIs a daemon serves follows libvirtd: a privileged daemon
(``pyvirtd --system``, or root without options) serves ``qemu:///system``
and ``qemu:///session``; an unprivileged one (``--session``, and ``--root
DIR``, the sandbox for development and tests) serves ``qemu:///session``
only, as ``libvirtd --session`` does: guests run as the user running the
daemon and everything lives under the daemon's own directories.  Each
daemon has one set of guests, whatever URI the client used.

Guests outlive the daemon: QEMU daemonizes (process.py), the runtime status
is kept in run_dir/qemu (status.py); `start()` reattaches to every guest
that still runs and reports those that died meanwhile as shut off
(crashed); `stop()` detaches without touching them.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import SplitResult

from pyvirtd.driver import DriverContext, shared_subsystems
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from .balloon import BalloonMixin
from .console import ConsoleMixin
from .domains import DomainMixin
from .driver import QemuDriverState
from .host import HostMixin
from .hotplug import HotplugMixin
from .save import SaveMixin
from .stats import StatsMixin

log = logging.getLogger(__name__)


class QemuConnection(HostMixin, StatsMixin, DomainMixin, ConsoleMixin, HotplugMixin,
                     BalloonMixin, SaveMixin):
    """One client's qemu:// connection; methods are named after RPC procedures."""

    def __init__(self, driver: QemuDriverState, uri: str, subsystems: tuple[Any, ...]) -> None:
        self.driver = driver
        self.uri = uri
        self.events = driver.events
        self.subsystems = subsystems
        # guests this connection started with VIR_DOMAIN_START_AUTODESTROY: (domain, run)
        self.autodestroy: list[tuple[Any, int]] = []

    def close(self) -> None:
        """The client went away (CONNECT_CLOSE or not): destroy its autodestroy guests.

        As libvirt's qemuProcessAutoDestroy: only the QEMU run that this connection
        started, reported shut off (destroyed) with a stopped/destroyed event; a
        transient guest goes away with it.  The destroy runs in the driver's own
        task group, since close() is called while the client is being torn down.
        An autodestroy mark does not survive a daemon restart (libvirt's does not
        either: the connection it belonged to is gone by then, and a reattached
        guest keeps running).
        """
        marked, self.autodestroy = self.autodestroy, []
        for dom, run in marked:
            if dom.run == run and dom.active:
                self.driver.spawn(self.driver.autodestroy_domain, dom, run)


class QemuDriver:
    name = "qemu"
    schemes = ("qemu",)

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.state: QemuDriverState | None = None

    def probe(self) -> str | None:
        from .caps import find_binaries

        binaries = find_binaries()
        if not binaries:
            return "no qemu-system-* binary found"
        emulator = next((b for b in binaries if b.endswith("qemu-system-x86_64")), binaries[0])
        self.state = QemuDriverState(self.ctx, emulator)
        # created now, not at the first open, so that their start() (repair,
        # autostart, the default network) runs when the daemon starts
        self.subsystems = shared_subsystems(self.ctx)
        return None

    async def start(self) -> None:
        assert self.state is not None
        await self.state.start()

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.stop()

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> QemuConnection:
        path = uri.path or "/"
        if self.ctx.privileged:
            if path not in ("/system", "/session"):
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"unexpected QEMU URI path '{path}', try qemu:///system",
                               domain=P.VIR_FROM_QEMU)
        elif path != "/session":
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"unexpected QEMU URI path '{path}', try qemu:///session",
                           domain=P.VIR_FROM_QEMU)
        assert self.state is not None
        return QemuConnection(self.state, f"qemu://{path}", self.subsystems)
