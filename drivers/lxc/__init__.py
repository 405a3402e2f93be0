"""The ``lxc`` driver: lxc:/// containers through namespaces and cgroups.

A container is a domain of type lxc with os type exe, whose root is a
directory tree (<filesystem> with target '/').  Starting it starts a small
detached controller process (controller.py) that owns the namespaces, the
console pty and init; the daemon talks to it over run_dir/lxc/NAME.sock and
reattaches after a restart (driver.py).  Like libvirt's LXC driver it needs
root: the URI is lxc:/// (lxc:///system too); a daemon under --root serves
it as well when it runs as root, with everything under its own directories.

Importing this package stays light on purpose: the controller runs as
``python -m pyvirtd.drivers.lxc.controller`` and lives as long as its
container, inside the container's memory cgroup, so it must not pull in the
daemon (trio, lxml, the generated protocol): the driver's modules are
imported when the daemon probes the driver.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult

if TYPE_CHECKING:
    from pyvirtd.driver import DriverContext

    from .connection import LxcConnection
    from .driver import LxcDriverState


class LxcDriver:
    name = "lxc"
    schemes = ("lxc",)

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.state: LxcDriverState | None = None

    def probe(self) -> str | None:
        if os.geteuid() != 0:
            return "the LXC driver needs root (namespaces, cgroups, mounts)"
        if not os.path.exists("/proc/self/ns/pid") or not os.path.exists("/proc/self/ns/user"):
            return "the kernel lacks pid or user namespaces"
        from . import cgroup
        if not cgroup.is_v2() and not (cgroup.CGROUP_ROOT / "memory").is_dir():
            return "no cgroup memory controller mounted under /sys/fs/cgroup"
        from pyvirtd.driver import shared_subsystems

        from .driver import LxcDriverState
        self.state = LxcDriverState(self.ctx)
        # created now so that their start hooks run when the daemon starts
        self.subsystems = shared_subsystems(self.ctx)
        return None

    async def start(self) -> None:
        assert self.state is not None
        await self.state.start()

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.stop()

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> LxcConnection:
        from pyvirtd.errors import VirError
        from pyvirtd.rpc import _generated as P

        from .connection import LxcConnection
        path = uri.path or "/"
        if path not in ("/", "/system", ""):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Unexpected LXC URI path '{path}', try lxc:///",
                           domain=P.VIR_FROM_LXC)
        assert self.state is not None
        return LxcConnection(self.state, "lxc:///", self.subsystems)
