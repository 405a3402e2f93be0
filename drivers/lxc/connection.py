"""LXC driver entry point and connection: host procedures plus the domain ones (domains.py).

Host facts (nodeinfo, free memory, CPU and memory stats, security model) are
every local driver's (pyvirtd.driver.hypervisor.HostFacts), the generic
domain procedures too (pyvirtd.driver.procedures); what is LXC's own here is
the URI, the version (the kernel's) and what its capabilities say.
"""

from __future__ import annotations

import os
from urllib.parse import SplitResult

import trio

from pyvirtd.driver.hypervisor import HypervisorConnection, HypervisorDriver
from pyvirtd.driver.procedures import DomainProcedures
from pyvirtd import sysinfo
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import cgroup
from .domains import DomainMixin
from .driver import LxcDriverState
from .hotplug import HotplugMixin
from .metadata import MetadataMixin
from .stats import StatsMixin
from .tuning import TuningMixin


class LxcConnection(DomainMixin, TuningMixin, MetadataMixin, StatsMixin, HotplugMixin,
                    DomainProcedures, HypervisorConnection):
    """One client's lxc:/// connection; methods are named after RPC procedures.

    `DomainProcedures` comes after the driver's own mixins: it answers only
    what they do not."""
    driver: LxcDriverState

    def connect_get_type(self) -> str:
        return "LXC"

    def connect_get_version(self) -> int:
        major, minor, *rest = (os.uname().release.split("-")[0].split(".") + ["0"])[:3]
        return int(major) * 1_000_000 + int(minor) * 1_000 + int(rest[0] or 0)

    async def connect_get_sysinfo(self, flags: int) -> str:
        """The host's SMBIOS tables (dmidecode), read once (lxcConnectGetSysinfo)."""
        check_flags(flags, 0, "lxcConnectGetSysinfo", P.VIR_FROM_LXC)
        drv = self.driver
        if not drv.sysinfo_read:
            drv.sysinfo = await trio.to_thread.run_sync(sysinfo.read_host)
            drv.sysinfo_read = True
        if drv.sysinfo is None:
            raise sysinfo.not_available(P.VIR_FROM_LXC)
        return drv.sysinfo

    def connect_get_capabilities(self) -> str:
        return self.guest_capabilities(os_type="exe", emulator="/usr/libexec/libvirt_lxc",
                                       domain_type="lxc")


class LxcDriver(HypervisorDriver):
    """The ``lxc`` entry point (see the package docstring)."""
    name = "lxc"
    schemes = ("lxc",)
    connection_class = LxcConnection

    def unavailable(self) -> str | None:
        if os.geteuid() != 0:
            return "the LXC driver needs root (namespaces, cgroups, mounts)"
        if not os.path.exists("/proc/self/ns/pid") or not os.path.exists("/proc/self/ns/user"):
            return "the kernel lacks pid or user namespaces"
        if not cgroup.is_v2() and not (cgroup.CGROUP_ROOT / "memory").is_dir():
            return "no cgroup memory controller mounted under /sys/fs/cgroup"
        return None

    def make_state(self) -> LxcDriverState:
        return LxcDriverState(self.ctx)

    def connection_uri(self, uri: SplitResult) -> str:
        path = uri.path or "/"
        if path not in ("/", "/system", ""):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Unexpected LXC URI path '{path}', try lxc:///",
                           domain=P.VIR_FROM_LXC)
        return "lxc:///"
