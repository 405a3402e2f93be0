"""UML driver entry point and connection: host facts, capabilities, the domain procedures.

Host facts are every local driver's (HostFacts); the generic domain
procedures are `pyvirtd.driver.procedures`; what is UML's own is here:
URIs, version (the UML kernel's), capabilities, and shutdown, reboot,
suspend and resume through the kernel's mconsole.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from urllib.parse import SplitResult

from pyvirtd.driver import domains as ds
from pyvirtd.driver import interfaces
from pyvirtd.driver.api import Dom
from pyvirtd.driver.hypervisor import HypervisorConnection, HypervisorDriver
from pyvirtd.driver.procedures import DomainProcedures, SuspendResume
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import nics, spec
from .driver import UmlDomain, UmlDriverState

_FROM = P.VIR_FROM_UML
SHUTDOWN_ACPI = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
SHUTDOWN_PARAVIRT = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_PARAVIRT
REBOOT_ACPI = P.DomainRebootFlagValues.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN
REBOOT_PARAVIRT = P.DomainRebootFlagValues.VIR_DOMAIN_REBOOT_PARAVIRT


def _kernel_version(kernel: str) -> int:
    """linux.uml --version ("6.1.176") as libvirt's number (6001176); 0 if unknown."""
    try:
        out = subprocess.run([kernel, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    parts = (out.strip().split("-")[0].split(".") + ["0", "0"])[:3]
    try:
        major, minor, micro = (int(p) for p in parts)
    except ValueError:
        return 0
    return major * 1_000_000 + minor * 1_000 + micro


class UmlConnection(SuspendResume, DomainProcedures, HypervisorConnection):
    """One client's uml:/// connection; methods are named after RPC procedures."""
    driver: UmlDriverState
    error_domain = _FROM
    api_prefix = "uml"

    def connect_get_type(self) -> str:
        return "UML"

    def connect_get_version(self) -> int:
        return self.driver.version

    def connect_get_capabilities(self) -> str:
        return self.guest_capabilities(os_type="uml", emulator=spec.DEFAULT_KERNEL,
                                       domain_type="uml")

    # -- information
    def domain_get_info(self, ref: Dom) -> tuple:
        dom = self._dom(ref)
        d = dom.definition
        return (dom.state, d.memory, d.current_memory, d.vcpus_current, self._cpu_time(dom))

    @staticmethod
    def _cpu_time(dom: UmlDomain) -> int:
        """ns of CPU the launcher's session used: the kernel and its reaped processes."""
        if dom.handle is None:
            return 0
        total = 0
        for pid in _session_pids(dom.handle.pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15])
            except (OSError, ValueError, IndexError):
                continue
        return total * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))

    def domain_memory_stats(self, ref: Dom, max_stats: int, flags: int) -> list:
        """actual: the guest's memory (mem=, UML has no balloon); rss: what the
        kernel process holds resident (VmRSS), as libvirt reports QEMU's."""
        check_flags(flags, 0, "umlDomainMemoryStats", _FROM)
        dom = self._active(ref)
        # VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON (6), _RSS (7)
        stats = [P.remote_domain_memory_stat(6, dom.definition.current_memory)]
        rss = _kernel_rss(dom)
        if rss is not None:
            stats.append(P.remote_domain_memory_stat(7, rss))
        return stats[:max_stats]

    def domain_interface_addresses(self, ref: Dom, source: int, flags: int) -> list:
        """virsh domifaddr: the networks' DHCP leases of the guest's MACs; a UML
        guest has no agent, and ARP is not answered here."""
        check_flags(flags, 0, "umlDomainInterfaceAddresses", _FROM)
        dom = self._active(ref)
        if source == interfaces.SRC_LEASE:
            return nics.lease_addresses(self.driver, dom)
        raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                       f"Unknown IP address data source {source}" if source > interfaces.SRC_ARP
                       else "UML guests answer only --source lease", domain=_FROM)

    # -- lifecycle through the mconsole
    async def _mconsole(self, ref: Dom, text: str) -> UmlDomain:
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.command(dom, text)
        return dom

    async def domain_shutdown(self, ref: Dom) -> None:
        await self.domain_shutdown_flags(ref, 0)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        """Ctrl-Alt-Del to the guest's init (mconsole ``cad``); PARAVIRT halts the
        kernel itself (``halt``), for guests whose init does not handle it."""
        check_flags(flags, SHUTDOWN_ACPI | SHUTDOWN_PARAVIRT, "umlDomainShutdownFlags", _FROM)
        await self._mconsole(ref, "halt" if flags == SHUTDOWN_PARAVIRT else "cad")

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        """The kernel reboots (mconsole ``reboot``): it re-executes itself, same pid."""
        check_flags(flags, REBOOT_ACPI | REBOOT_PARAVIRT, "umlDomainReboot", _FROM)
        await self._mconsole(ref, "reboot")

    async def _pause(self, dom: UmlDomain, paused: bool) -> None:
        """mconsole ``stop``: the kernel only serves its mconsole until ``go``."""
        await self.driver.command(dom, "stop" if paused else "go")


def _kernel_rss(dom: UmlDomain) -> int | None:
    """KiB resident in the UML kernel's process (its pid file under uml_dir)."""
    if dom.handle is None:
        return None
    try:
        with open(dom.handle.kernel_pid_file) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (the launcher is its leader)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return out


class UmlDriver(HypervisorDriver):
    """The ``uml`` entry point (see the package docstring)."""
    name = "uml"
    schemes = ("uml",)
    connection_class = UmlConnection

    def unavailable(self) -> str | None:
        if not shutil.which(spec.DEFAULT_KERNEL):
            return f"no UML kernel at {spec.DEFAULT_KERNEL} (Debian: user-mode-linux)"
        if not hasattr(os, "pidfd_open"):
            return "this Python has no os.pidfd_open"
        return None

    def make_state(self) -> UmlDriverState:
        state = UmlDriverState(self.ctx)
        state.version = _kernel_version(spec.DEFAULT_KERNEL)
        return state

    def connection_uri(self, uri: SplitResult) -> str:
        """uml:///system for a root daemon, uml:///session for any (libvirt's paths)."""
        path = uri.path or "/"
        allowed = ("/system", "/session") if os.geteuid() == 0 else ("/session",)
        if path not in allowed:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Unexpected UML URI path '{path}', try uml://{allowed[0]}",
                           domain=_FROM)
        return f"uml://{path}"
