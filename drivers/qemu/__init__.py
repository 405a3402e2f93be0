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

import trio

from pyvirtd.driver.hypervisor import HypervisorConnection, HypervisorDriver
from pyvirtd.driver.procedures import DomainProcedures
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from .agent_procs import AgentMixin
from .balloon import BalloonMixin
from .blockjobs import BlockJobsMixin
from .console import ConsoleMixin
from .domains import DomainMixin
from .dump import DumpMixin
from .driver import QemuDriverState
from .host import HostMixin
from .hotplug import HotplugMixin
from .metadata import MetadataMixin
from .migration import MigrationMixin
from .passthrough import PassthroughMixin
from .jobs import JobsMixin
from .save import SaveMixin, scan_managed
from .screenshot import ScreenshotMixin
from .snapshots import SnapshotMixin, load_snapshots
from .stats import StatsMixin
from .vcpus import VcpusMixin

log = logging.getLogger(__name__)


class QemuConnection(HostMixin, StatsMixin, AgentMixin, DomainMixin, ConsoleMixin, HotplugMixin,
                     BalloonMixin, SaveMixin, SnapshotMixin, JobsMixin, BlockJobsMixin,
                     MetadataMixin, PassthroughMixin, ScreenshotMixin, VcpusMixin, DumpMixin,
                     MigrationMixin, DomainProcedures, HypervisorConnection):
    """One client's qemu:// connection; methods are named after RPC procedures.

    `DomainProcedures` stays last before `HypervisorConnection`: it answers only
    what no QEMU mixin answers its own way (a mixin listed after it would lose
    to it; tests/unit/driver/test_api.py checks)."""
    driver: QemuDriverState

    def __init__(self, driver: QemuDriverState, uri: str, subsystems: tuple[Any, ...]) -> None:
        super().__init__(driver, uri, subsystems)
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
        self.drop_monitor_listeners()
        self.drop_migrations()     # migration.py: prepared or performed, never ended
        marked, self.autodestroy = self.autodestroy, []
        for dom, run in marked:
            if dom.run == run and dom.active:
                self.driver.spawn(self.driver.autodestroy_domain, dom, run)


class QemuDriver(HypervisorDriver):
    name = "qemu"
    schemes = ("qemu",)
    connection_class = QemuConnection

    def unavailable(self) -> str | None:
        from .caps import find_binaries

        binaries = find_binaries()
        if not binaries:
            return "no qemu-system-* binary found"
        self.emulator = next((b for b in binaries if b.endswith("qemu-system-x86_64")),
                             binaries[0])
        return None

    async def start(self) -> None:
        await super().start()
        # which guests have a managed save image (save.py)
        await trio.to_thread.run_sync(scan_managed, self.state)
        # and their snapshot metadata (snapshots.py)
        await trio.to_thread.run_sync(load_snapshots, self.state)

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> QemuConnection:
        conn = super().open(uri, name, flags, client)
        conn.client = client    # qemu-monitor-event messages go to it (passthrough.py)
        return conn   # type: ignore[return-value]

    def make_state(self) -> QemuDriverState:
        return QemuDriverState(self.ctx, self.emulator)

    def connection_uri(self, uri: SplitResult) -> str:
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
        return f"qemu://{path}"
