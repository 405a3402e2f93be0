"""LXC driver connection: the domain procedures a container answers its own way.

The generic ones (state, XML, autostart, define/undefine, create, destroy,
console) are `pyvirtd.driver.procedures.DomainProcedures`, set up here for
LXC (flags, libvirt's function names); what is LXC's own is the container's
info and stats from its cgroup, shutdown, suspend/resume by the cgroup
freezer, namespaces and tuning.  Methods are named after RPC procedures
(pyvirtd/dispatch.py).  Reads take no lock; lifecycle operations hold the
container's lock.  Codes and wording follow libvirt's LXC driver
(src/lxc/lxc_driver.c).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import trio
from lxml import etree

from pyvirtd.dispatch import ReplyFds
from pyvirtd.driver import domains as ds
from pyvirtd.driver import interfaces
from pyvirtd.driver.api import Dom
from pyvirtd.driver.procedures import SuspendResume
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import cgroup
from .driver import LxcDomain, LxcDriverState, run_in_container
from .mountin import NO_FIFO

_FROM = P.VIR_FROM_LXC
START_AUTODESTROY = P.DomainCreateFlags.VIR_DOMAIN_START_AUTODESTROY
START_VALIDATE = P.DomainCreateFlags.VIR_DOMAIN_START_VALIDATE
SHUTDOWN_INITCTL = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_INITCTL
SHUTDOWN_SIGNAL = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_SIGNAL
REBOOT_INITCTL = P.DomainRebootFlagValues.VIR_DOMAIN_REBOOT_INITCTL
REBOOT_SIGNAL = P.DomainRebootFlagValues.VIR_DOMAIN_REBOOT_SIGNAL
HOSTNAME_LEASE = P.DomainGetHostnameFlags.VIR_DOMAIN_GET_HOSTNAME_LEASE
SIGNAL_RT0 = P.DomainProcessSignal.VIR_DOMAIN_PROCESS_SIGNAL_RT0
SIGNAL_LAST = P.DomainProcessSignal.VIR_DOMAIN_PROCESS_SIGNAL_LAST
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
STRING_OKAY = P.TypedParameterFlags.VIR_TYPED_PARAM_STRING_OKAY
# virProcessGetNamespaces' order: the client enters them in this order
NAMESPACES = ("user", "ipc", "mnt", "net", "pid", "uts")
# VIR_DOMAIN_MEMORY_PARAM_UNLIMITED
UNLIMITED = 9007199254740991
STATS_STATE = P.DomainStatsTypes.VIR_DOMAIN_STATS_STATE
STATS_CPU_TOTAL = P.DomainStatsTypes.VIR_DOMAIN_STATS_CPU_TOTAL
STATS_BALLOON = P.DomainStatsTypes.VIR_DOMAIN_STATS_BALLOON


def native_signal(signum: int) -> int | None:
    """The host's signal for a VIR_DOMAIN_PROCESS_SIGNAL_* (virDomainProcessSignalToNative):
    0-31 are Linux's own numbers, RTn is SIGRTMIN+n while that exists."""
    if signum < SIGNAL_RT0:
        return signum
    native = signal.SIGRTMIN + signum - SIGNAL_RT0
    return native if native <= signal.SIGRTMAX else None


def _host_pid(init_pid: int, paths: dict[str, str], pid: int) -> int | None:
    """The host pid of the container's process ``pid`` (blocking: /proc and cgroupfs).

    Candidates are the container's cgroup members; the one in init's pid
    namespace whose innermost NSpid is ``pid`` is it."""
    try:
        want = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return None
    for ctrl in ("memory", "pids", "unified"):
        if ctrl in paths:
            raw = cgroup.read(paths, ctrl, "cgroup.procs") or ""
            break
    else:
        return None
    for entry in raw.split():
        try:
            if os.stat(f"/proc/{entry}/ns/pid").st_ino != want:
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == pid:
                            return int(entry)
                        break
        except (OSError, ValueError):
            continue
    return None


def param(name: str, kind: int, value: Any) -> Any:
    """One typed parameter of a reply."""
    return P.remote_typed_param(name, P.remote_typed_param_value(kind, value))


def error(code: int, message: str) -> VirError:
    """A VirError of the LXC driver."""
    return VirError(code, message, domain=_FROM)


class DomainMixin(SuspendResume, ds.DomainLookups):
    """What LXC answers its own way; the rest is `DomainProcedures` (connection.py)."""
    driver: LxcDriverState
    error_domain = _FROM
    api_prefix = "lxc"
    # createWithFlags and createXML are libvirt's lxcDomainCreate*WithFiles
    api_names = {"DomainCreateWithFlags": "lxcDomainCreateWithFiles",
                 "DomainCreateXML": "lxcDomainCreateXMLWithFiles"}
    # AUTODESTROY is accepted and, as the container outlives the client anyway, ignored
    create_flags = START_AUTODESTROY
    create_xml_flags = START_AUTODESTROY | START_VALIDATE
    console_devices = ("console",)

    # -- information
    def domain_get_info(self, ref: Dom) -> tuple:
        dom = self._dom(ref)
        d = dom.definition
        c = self.driver.counters(dom)
        mem = c.get("memory_usage", 0) // 1024 if dom.active else d.current_memory
        return (dom.state, d.memory, mem, d.vcpus_current, c.get("cpu_time", 0))

    # -- lifecycle
    async def domain_shutdown(self, ref: Dom) -> None:
        await self.domain_shutdown_flags(ref, 0)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        """Runlevel 0 through the container's initctl FIFO, else SIGTERM to init
        (lxcDomainShutdownFlags: flags 0 tries both in that order)."""
        check_flags(flags, SHUTDOWN_INITCTL | SHUTDOWN_SIGNAL, "lxcDomainShutdownFlags", _FROM)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if await self._initctl(dom, flags, "0", SHUTDOWN_INITCTL):
                return
            await self.driver.shutdown_domain(dom)

    async def _initctl(self, dom: LxcDomain, flags: int, level: str, initctl_flag: int) -> bool:
        """Ask for ``level`` through initctl where ``flags`` allow it (0 or the INITCTL
        flag); whether it was sent.  INITCTL alone and no FIFO is libvirt's error."""
        if flags and not flags & initctl_flag:
            return False
        if not dom.init_pid:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Init process ID is not yet known",
                           domain=_FROM)
        rc = await run_in_container(dom, "initctl", level, "-", "-", ok=(0, NO_FIFO))
        if rc == NO_FIFO and flags == initctl_flag:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           "Container does not provide an initctl pipe", domain=_FROM)
        return rc == 0

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        """virsh reboot (lxcDomainReboot): runlevel 6 through the container's initctl
        FIFO, else SIGHUP to init.  An init that reboots (reboot(2) in its pid
        namespace) ends "killed by SIGHUP", and the driver starts the container
        again (driver.py)."""
        check_flags(flags, REBOOT_INITCTL | REBOOT_SIGNAL, "lxcDomainReboot", _FROM)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if await self._initctl(dom, flags, "6", REBOOT_INITCTL):
                return
            if not dom.init_pid:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "Init process ID is not yet known",
                               domain=_FROM)
            try:
                os.kill(dom.init_pid, signal.SIGHUP)
            except ProcessLookupError:
                pass        # init is ending anyway: its watcher reports how
            except OSError as exc:
                raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                               f"Failed to kill pid {dom.init_pid}: {exc.strerror}",
                               domain=_FROM) from None

    async def domain_send_process_signal(self, ref: Dom, pid_value: int, signum: int,
                                         flags: int) -> None:
        """virsh send-process-signal: a signal to the process whose pid *inside the
        container* is ``pid_value``.  libvirt 9.0 takes only pid 1 (init); any pid of
        the container's pid namespace is accepted here, found through NSpid."""
        check_flags(flags, 0, "lxcDomainSendProcessSignal", _FROM)
        if not 0 <= signum < SIGNAL_LAST or native_signal(signum) is None:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"signum value {signum} is out of range",
                           domain=_FROM)
        dom = self._active(ref)
        if not dom.init_pid:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Init pid is not yet available",
                           domain=_FROM)
        if pid_value == 1:
            host_pid: int | None = dom.init_pid
        else:
            host_pid = await trio.to_thread.run_sync(_host_pid, dom.init_pid, dom.cgroup,
                                                     pid_value)
        try:
            if host_pid is None:
                raise ProcessLookupError(3, os.strerror(3))
            os.kill(host_pid, native_signal(signum))
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Unable to send {signum} signal to process "
                           f"{pid_value}: {exc.strerror}", domain=_FROM) from None

    # -- addresses and hostname from the networks' DHCP leases
    def domain_get_hostname(self, ref: Dom, flags: int) -> str:
        """virsh domhostname: the hostname a container's DHCP client gave a virtual
        network's dnsmasq (lxcDomainGetHostname: the first lease that has one)."""
        check_flags(flags, HOSTNAME_LEASE, "lxcDomainGetHostname", _FROM)
        dom = self._active(ref)
        for iface in dom.definition.devices_of("interface"):
            src = iface.find("source")
            if iface.get("type") != "network" or src is None:
                continue
            mac = iface.find("mac").get("address")
            for lease in self.driver.ctx.services.network.dhcp_leases(src.get("network"), mac):
                if lease.hostname:
                    return lease.hostname
        raise VirError(P.VIR_ERR_NO_HOSTNAME, f"no hostname found for domain {dom.name}",
                       domain=_FROM)

    async def domain_interface_addresses(self, ref: Dom, source: int, flags: int) -> list:
        """virsh domifaddr: --source lease (the networks' DHCP leases) or arp; a
        container has no guest agent (lxcDomainInterfaceAddresses)."""
        check_flags(flags, 0, "lxcDomainInterfaceAddresses", _FROM)
        return await interfaces.addresses(self.driver, self._active(ref), source)

    async def _pause(self, dom: LxcDomain, paused: bool) -> None:
        """Freeze or thaw the container's cgroup (lxcDomainSuspend / lxcDomainResume);
        a half-frozen one is thawed again."""
        def change() -> bool:
            try:
                if cgroup.set_frozen(dom.cgroup, paused):
                    return True
                if paused:
                    cgroup.set_frozen(dom.cgroup, False)
            except (OSError, KeyError):
                pass
            return False
        if not await trio.to_thread.run_sync(change):
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"{'Suspend' if paused else 'Resume'} operation failed", domain=_FROM)

    # -- namespaces (virsh lxc-enter-namespace)
    def lxc_domain_open_namespace(self, ref: Dom, flags: int) -> ReplyFds:
        check_flags(flags, 0, "lxcDomainLxcOpenNamespace", _FROM)
        dom = self._active(ref)
        if not dom.init_pid:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Init pid is not yet available",
                           domain=_FROM)
        fds = []
        for name in NAMESPACES:
            try:
                fds.append(os.open(f"/proc/{dom.init_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                continue
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                               f"Unable to open namespace {name}: {exc.strerror}",
                               domain=_FROM) from None
        return ReplyFds(fds)

    # -- memory and CPU tuning from the cgroup
    def domain_get_memory_parameters(self, ref: Dom, nparams: int, flags: int) -> tuple:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | STRING_OKAY, "lxcDomainGetMemoryParameters",
                    _FROM)
        if nparams == 0:
            return ([], 3)
        dom = self._dom(ref)
        values = {}
        if dom.active and not flags & AFFECT_CONFIG and dom.cgroup:
            v2 = "unified" in dom.cgroup
            keys = (("hard_limit", "memory.max" if v2 else "memory.limit_in_bytes"),
                    ("soft_limit", "memory.high" if v2 else "memory.soft_limit_in_bytes"),
                    ("swap_hard_limit", "memory.swap.max" if v2 else "memory.memsw.limit_in_bytes"))
            for name, key in keys:
                raw = cgroup.read(dom.cgroup, "memory", key)
                # the kernel's "no limit" is a page-rounded LONG_MAX: report libvirt's unlimited
                big = not raw or not raw.isdigit() or int(raw) >= 1 << 62
                values[name] = UNLIMITED if big else int(raw) // 1024
        else:
            memtune = dom.persistent_def.raw.get("memtune")
            for name in ("hard_limit", "soft_limit", "swap_hard_limit"):
                elem = memtune.find(name) if memtune is not None else None
                values[name] = domxml.parse_memory(elem, name) if elem is not None else UNLIMITED
        params = [param(n, P.VIR_TYPED_PARAM_ULLONG, values[n])
                  for n in ("hard_limit", "soft_limit", "swap_hard_limit")]
        return (params[:nparams], len(params[:nparams]))

    async def domain_set_memory_parameters(self, ref: Dom, params: list, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "lxcDomainSetMemoryParameters", _FROM)
        dom = self._dom(ref)
        values = {p.field: p.value.value for p in params}
        unknown = set(values) - {"hard_limit", "soft_limit", "swap_hard_limit"}
        if unknown:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"parameter '{unknown.pop()}' not supported",
                           domain=P.VIR_FROM_NONE)
        def edit(d: domxml.DomainDef) -> None:
            memtune = d.raw.setdefault("memtune", etree.Element("memtune"))
            for name in ("hard_limit", "swap_hard_limit", "soft_limit"):
                if name in values:
                    old = memtune.find(name)
                    if old is not None:
                        memtune.remove(old)
                    if values[name] < UNLIMITED:
                        etree.SubElement(memtune, name, unit="KiB").text = str(values[name])
        await self._tune(dom, flags, {k: v for k, v in values.items() if v < UNLIMITED}, edit)

    def domain_get_scheduler_type(self, ref: Dom) -> tuple:
        self._dom(ref)
        return ("posix", 3)

    def domain_get_scheduler_parameters(self, ref: Dom, nparams: int) -> list:
        return self.domain_get_scheduler_parameters_flags(ref, nparams, 0)

    def domain_get_scheduler_parameters_flags(self, ref: Dom, nparams: int, flags: int) -> list:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | STRING_OKAY,
                    "lxcDomainGetSchedulerParametersFlags", _FROM)
        dom = self._dom(ref)
        if dom.active and not flags & AFFECT_CONFIG and dom.cgroup:
            v2 = "unified" in dom.cgroup
            if v2:
                weight = int(cgroup.read(dom.cgroup, "cpu", "cpu.weight") or 100)
                shares = weight * 1024 // 100
                quota_s, period_s = (cgroup.read(dom.cgroup, "cpu", "cpu.max") or "max 100000").split()
                quota = -1 if quota_s == "max" else int(quota_s)
                period = int(period_s)
            else:
                shares = int(cgroup.read(dom.cgroup, "cpu", "cpu.shares") or 1024)
                period = int(cgroup.read(dom.cgroup, "cpu", "cpu.cfs_period_us") or 100000)
                quota = int(cgroup.read(dom.cgroup, "cpu", "cpu.cfs_quota_us") or -1)
        else:
            from .spec import limits
            lim = limits(dom.persistent_def)
            shares, period, quota = lim.get("shares", 0), lim.get("period", 0), lim.get("quota", 0)
        params = [param("cpu_shares", P.VIR_TYPED_PARAM_ULLONG, shares),
                  param("vcpu_period", P.VIR_TYPED_PARAM_ULLONG, period),
                  param("vcpu_quota", P.VIR_TYPED_PARAM_LLONG, quota)]
        return params[:nparams]

    async def domain_set_scheduler_parameters(self, ref: Dom, params: list) -> None:
        await self.domain_set_scheduler_parameters_flags(ref, params, 0)

    async def domain_set_scheduler_parameters_flags(self, ref: Dom, params: list, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "lxcDomainSetSchedulerParametersFlags",
                    _FROM)
        dom = self._dom(ref)
        names = {"cpu_shares": "shares", "vcpu_period": "period", "vcpu_quota": "quota"}
        values = {}
        for p in params:
            if p.field not in names:
                raise VirError(P.VIR_ERR_INVALID_ARG, f"parameter '{p.field}' not supported",
                               domain=P.VIR_FROM_NONE)
            values[names[p.field]] = p.value.value
        def edit(d: domxml.DomainDef) -> None:
            cputune = d.raw.setdefault("cputune", etree.Element("cputune"))
            for tag in ("shares", "period", "quota"):
                if tag in values:
                    old = cputune.find(tag)
                    if old is None:
                        old = etree.SubElement(cputune, tag)
                    old.text = str(values[tag])
        await self._tune(dom, flags, values, edit)

    async def _tune(self, dom: LxcDomain, flags: int, limits: dict[str, int],
                    edit: Callable[[domxml.DomainDef], None]) -> None:
        """Set ``limits`` in a running container's cgroup (AFFECT_LIVE, the default
        while it runs) and ``edit`` the definitions the flags name, then keep them."""
        live = dom.active and (flags & AFFECT_LIVE or not flags & AFFECT_CONFIG)
        config = flags & AFFECT_CONFIG or not dom.active
        if live:
            await trio.to_thread.run_sync(cgroup.apply_limits, dom.cgroup, limits)
            edit(dom.definition)
        if config:
            edit(dom.persistent_def)
            await self.driver.save_config(dom.persistent_def)
        if live:
            await self.driver.save_status(dom)

    def domain_memory_stats(self, ref: Dom, max_stats: int, flags: int) -> list:
        dom = self._active(ref)
        c = self.driver.counters(dom)
        # VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON (6), _RSS (7)
        stats = [P.remote_domain_memory_stat(6, dom.definition.current_memory),
                 P.remote_domain_memory_stat(7, c.get("memory_usage", 0) // 1024)]
        return stats[:max_stats]

    def connect_get_all_domain_stats(self, doms: list, stats: int, flags: int) -> list:
        if doms:
            found = (self.driver.domains.find_uuid(r.uuid) for r in doms)
            selected = [d for d in found if d is not None]
        else:
            selected = [d for d in self.driver.domains.values()
                        if ds.matches_list_flags(d, flags & 0x3FFF)]
        stats = stats or (STATS_STATE | STATS_CPU_TOTAL | STATS_BALLOON)
        out = []
        for dom in selected:
            params = []
            c = self.driver.counters(dom)
            if stats & STATS_STATE:
                params += [param("state.state", P.VIR_TYPED_PARAM_INT, dom.state),
                           param("state.reason", P.VIR_TYPED_PARAM_INT, dom.reason)]
            if stats & STATS_CPU_TOTAL and dom.active:
                params += [param("cpu.time", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_time", 0)),
                           param("cpu.user", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_user", 0)),
                           param("cpu.system", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_system", 0))]
            if stats & STATS_BALLOON:
                cur = c.get("memory_usage", 0) // 1024 if dom.active else dom.definition.current_memory
                params += [param("balloon.current", P.VIR_TYPED_PARAM_ULLONG, cur),
                           param("balloon.maximum", P.VIR_TYPED_PARAM_ULLONG,
                                  dom.definition.memory)]
            out.append(P.remote_domain_stats_record(dom.ref(), params))
        return out
