"""LXC driver connection: domain procedures (lookups, listing, definitions, lifecycle, tuning).

Methods are named after RPC procedures (pyvirtd/dispatch.py).  Reads take no
lock; lifecycle operations hold the container's lock.  Codes and wording
follow libvirt's LXC driver (src/lxc/lxc_driver.c).
"""

from __future__ import annotations

import os
from typing import Any

import trio
from lxml import etree

from pyvirtd.consoles import ConsoleSession
from pyvirtd.dispatch import ReplyFds
from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream
from pyvirtd.xml import domain as domxml

from . import cgroup
from .driver import LxcDomain, LxcDriverState

_FROM = P.VIR_FROM_LXC
XML_SECURE = P.DomainXMLFlags.VIR_DOMAIN_XML_SECURE
XML_INACTIVE = P.DomainXMLFlags.VIR_DOMAIN_XML_INACTIVE
XML_FLAGS = (XML_SECURE | XML_INACTIVE | P.DomainXMLFlags.VIR_DOMAIN_XML_UPDATE_CPU
             | P.DomainXMLFlags.VIR_DOMAIN_XML_MIGRATABLE)
START_PAUSED = P.DomainCreateFlags.VIR_DOMAIN_START_PAUSED
START_AUTODESTROY = P.DomainCreateFlags.VIR_DOMAIN_START_AUTODESTROY
START_VALIDATE = P.DomainCreateFlags.VIR_DOMAIN_START_VALIDATE
DEFINE_VALIDATE = P.DomainDefineFlags.VIR_DOMAIN_DEFINE_VALIDATE
UNDEFINE_ALL = ~P.DomainUndefineFlagsValues(0)      # accepted; a container has none of it
SHUTDOWN_INITCTL = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_INITCTL
SHUTDOWN_SIGNAL = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_SIGNAL
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
STRING_OKAY = P.TypedParameterFlags.VIR_TYPED_PARAM_STRING_OKAY
CONSOLE_FORCE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_FORCE
CONSOLE_SAFE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_SAFE
# virProcessGetNamespaces' order: the client enters them in this order
NAMESPACES = ("user", "ipc", "mnt", "net", "pid", "uts")
# VIR_DOMAIN_MEMORY_PARAM_UNLIMITED
UNLIMITED = 9007199254740991
STATS_STATE = P.DomainStatsTypes.VIR_DOMAIN_STATS_STATE
STATS_CPU_TOTAL = P.DomainStatsTypes.VIR_DOMAIN_STATS_CPU_TOTAL
STATS_BALLOON = P.DomainStatsTypes.VIR_DOMAIN_STATS_BALLOON


def _param(name: str, kind: int, value: Any) -> Any:
    return P.remote_typed_param(name, P.remote_typed_param_value(kind, value))


class DomainMixin(ds.DomainLookups):
    driver: LxcDriverState
    error_domain = _FROM

    # -- information
    def domain_get_info(self, ref: Dom) -> tuple:
        dom = self._dom(ref)
        d = dom.definition
        c = self.driver.counters(dom)
        mem = c.get("memory_usage", 0) // 1024 if dom.active else d.current_memory
        return (dom.state, d.memory, mem, d.vcpus_current, c.get("cpu_time", 0))

    def domain_get_state(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "lxcDomainGetState", _FROM)
        dom = self._dom(ref)
        return (dom.state, dom.reason)

    def domain_get_os_type(self, ref: Dom) -> str:
        return self._dom(ref).definition.os_type

    def domain_get_max_memory(self, ref: Dom) -> int:
        return self._dom(ref).definition.memory

    def domain_get_xml_desc(self, ref: Dom, flags: int) -> str:
        check_flags(flags, XML_FLAGS, "lxcDomainGetXMLDesc", _FROM)
        dom = self._dom(ref)
        if flags & XML_INACTIVE or not dom.active:
            return domxml.format(dom.persistent_def if flags & XML_INACTIVE else dom.definition)
        return domxml.format(dom.definition, dom_id=dom.id)

    def domain_is_active(self, ref: Dom) -> int:
        return int(self._dom(ref).active)

    def domain_is_persistent(self, ref: Dom) -> int:
        return int(self._dom(ref).persistent)

    def domain_is_updated(self, ref: Dom) -> int:
        return 0

    def domain_get_autostart(self, ref: Dom) -> int:
        return int(self._dom(ref).autostart)

    async def domain_set_autostart(self, ref: Dom, autostart: int) -> None:
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Cannot set autostart for transient domain",
                           domain=_FROM)
        await trio.to_thread.run_sync(self.driver.store.set_autostart, dom.name, bool(autostart))
        dom.autostart = bool(autostart)

    def domain_has_managed_save_image(self, ref: Dom, flags: int) -> int:
        self._dom(ref)
        return 0

    def domain_snapshot_num(self, ref: Dom, flags: int) -> int:
        self._dom(ref)
        return 0

    def domain_list_all_snapshots(self, ref: Dom, need_results: int, flags: int) -> tuple:
        self._dom(ref)
        return ([], 0)

    def domain_get_security_label(self, ref: Dom) -> tuple:
        self._dom(ref)
        return (b"", 0)

    def domain_get_security_label_list(self, ref: Dom) -> tuple:
        return ([P.remote_domain_get_security_label_ret(*self.domain_get_security_label(ref))], 1)

    def domain_get_vcpus_flags(self, ref: Dom, flags: int) -> int:
        return self._dom(ref).definition.vcpus_current

    # -- definition
    async def domain_define_xml(self, xml: str) -> Any:
        return await self.domain_define_xml_flags(xml, 0)

    async def domain_define_xml_flags(self, xml: str, flags: int) -> Dom:
        check_flags(flags, DEFINE_VALIDATE, "lxcDomainDefineXMLFlags", _FROM)
        drv = self.driver
        new = drv.new_definition(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        return (await drv.define(new)).ref()

    async def domain_undefine(self, ref: Dom) -> None:
        await self.domain_undefine_flags(ref, 0)

    async def domain_undefine_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, UNDEFINE_ALL, "lxcDomainUndefineFlags", _FROM)
        drv = self.driver
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Cannot undefine transient domain",
                           domain=_FROM)
        await ds.undefine(drv, dom)

    # -- lifecycle
    async def domain_create(self, ref: Dom) -> Any:
        return await self.domain_create_with_flags(ref, 0)

    async def domain_create_with_flags(self, ref: Dom, flags: int) -> Any:
        check_flags(flags, START_AUTODESTROY, "lxcDomainCreateWithFiles", _FROM)
        dom = self._dom(ref)
        async with dom.lock:
            await self.driver.start_domain(dom)
        return dom.ref()

    async def domain_create_xml(self, xml_desc: str, flags: int) -> Any:
        check_flags(flags, START_AUTODESTROY | START_VALIDATE, "lxcDomainCreateXMLWithFiles", _FROM)
        drv = self.driver
        new = drv.new_definition(xml_desc, validate_schema=bool(flags & START_VALIDATE))
        existing = drv.domains.check_add(new, live=True)
        dom = existing or LxcDomain(new, persistent=False)
        if existing is None:
            drv.domains.add(dom)
        async with dom.lock:
            try:
                await drv.start_domain(dom, live_def=new)
            except BaseException:
                if existing is None and not dom.active:
                    drv.domains.remove(dom)
                raise
        return dom.ref()

    async def domain_destroy(self, ref: Dom) -> None:
        await self.domain_destroy_flags(ref, 0)

    async def domain_destroy_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "lxcDomainDestroyFlags", _FROM)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.destroy_domain(dom)

    async def domain_shutdown(self, ref: Dom) -> None:
        await self.domain_shutdown_flags(ref, 0)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, SHUTDOWN_INITCTL | SHUTDOWN_SIGNAL, "lxcDomainShutdownFlags", _FROM)
        dom = self._active(ref)
        if flags == SHUTDOWN_INITCTL:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           "Container does not provide an initctl pipe", domain=_FROM)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.shutdown_domain(dom)

    async def domain_suspend(self, ref: Dom) -> None:
        """Freeze the container's cgroup (lxcDomainSuspend); already paused is fine."""
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if dom.state == ds.PAUSED:
                return
            if not await self._freeze(dom, True):
                raise VirError(P.VIR_ERR_OPERATION_FAILED, "Suspend operation failed",
                               domain=_FROM)
            dom.set_state(ds.PAUSED, ds.PAUSED_USER)
            self.driver.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
            await self.driver.save_status(dom)

    async def domain_resume(self, ref: Dom) -> None:
        """Thaw the container's cgroup (lxcDomainResume)."""
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if dom.state == ds.RUNNING:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is already running",
                               domain=_FROM)
            if not await self._freeze(dom, False):
                raise VirError(P.VIR_ERR_OPERATION_FAILED, "Resume operation failed",
                               domain=_FROM)
            dom.set_state(ds.RUNNING, ds.RUNNING_UNPAUSED)
            self.driver.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
            await self.driver.save_status(dom)

    @staticmethod
    async def _freeze(dom: LxcDomain, frozen: bool) -> bool:
        """Whether the freezer got the whole container there; a half-frozen one is thawed."""
        def change() -> bool:
            try:
                if cgroup.set_frozen(dom.cgroup, frozen):
                    return True
                if frozen:
                    cgroup.set_frozen(dom.cgroup, False)
            except (OSError, KeyError):
                pass
            return False
        return await trio.to_thread.run_sync(change)

    # -- console
    def domain_open_console(self, stream: Stream, ref: Dom, dev_name: str | None, flags: int) -> None:
        check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, "lxcDomainOpenConsole", _FROM)
        dom = self._active(ref)
        consoles = dom.definition.devices_of("console")
        chosen = None
        for i, c in enumerate(consoles):
            alias = c.find("alias")
            if dev_name is None or (alias is not None and alias.get("name") == dev_name):
                chosen = c
                break
        if chosen is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"cannot find console device '{dev_name}'",
                           domain=_FROM)
        src = chosen.find("source")
        if chosen.get("type") != "pty" or src is None or not src.get("path"):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"character device {dev_name or 'console0'} is not using a PTY",
                           domain=_FROM)
        old = dom.console
        if old is not None and not old.closed:
            busy = VirError(P.VIR_ERR_OPERATION_FAILED,
                            "Active console session exists for this domain", domain=_FROM)
            if not flags & CONSOLE_FORCE:
                raise busy
            old.close(busy)
        session = ConsoleSession(dom, stream, src.get("path"))
        dom.console = session
        stream.run(session.relay)

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
        params = [_param(n, P.VIR_TYPED_PARAM_ULLONG, values[n])
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
        live = dom.active and (flags & AFFECT_LIVE or not flags & AFFECT_CONFIG)
        if live:
            limits = {k: v for k, v in values.items() if v < UNLIMITED}
            await trio.to_thread.run_sync(cgroup.apply_limits, dom.cgroup, limits)
        targets = []
        if live:
            targets.append(dom.definition)
        if flags & AFFECT_CONFIG or not dom.active:
            targets.append(dom.persistent_def)
        for d in targets:
            memtune = d.raw.setdefault("memtune", etree.Element("memtune"))
            for name in ("hard_limit", "swap_hard_limit", "soft_limit"):
                if name in values:
                    old = memtune.find(name)
                    if old is not None:
                        memtune.remove(old)
                    if values[name] < UNLIMITED:
                        etree.SubElement(memtune, name, unit="KiB").text = str(values[name])
        if flags & AFFECT_CONFIG or not dom.active:
            await self.driver.save_config(dom.persistent_def)
        if live:
            await self.driver.save_status(dom)

    def domain_get_scheduler_type(self, ref: Dom) -> tuple:
        self._dom(ref)
        return ("posix", 3)

    def domain_get_scheduler_parameters(self, ref: Dom, nparams: int) -> list:
        return self.domain_get_scheduler_parameters_flags(ref, nparams, 0)

    def domain_get_scheduler_parameters_flags(self, ref: Dom, nparams: int, flags: int) -> list:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "lxcDomainGetSchedulerParametersFlags",
                    _FROM)
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
        params = [_param("cpu_shares", P.VIR_TYPED_PARAM_ULLONG, shares),
                  _param("vcpu_period", P.VIR_TYPED_PARAM_ULLONG, period),
                  _param("vcpu_quota", P.VIR_TYPED_PARAM_LLONG, quota)]
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
        live = dom.active and (flags & AFFECT_LIVE or not flags & AFFECT_CONFIG)
        if live:
            await trio.to_thread.run_sync(cgroup.apply_limits, dom.cgroup, values)
        targets = [dom.definition] if live else []
        if flags & AFFECT_CONFIG or not dom.active:
            targets.append(dom.persistent_def)
        for d in targets:
            cputune = d.raw.setdefault("cputune", etree.Element("cputune"))
            for tag in ("shares", "period", "quota"):
                if tag in values:
                    old = cputune.find(tag)
                    if old is None:
                        old = etree.SubElement(cputune, tag)
                    old.text = str(values[tag])
        if flags & AFFECT_CONFIG or not dom.active:
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
                params += [_param("state.state", P.VIR_TYPED_PARAM_INT, dom.state),
                           _param("state.reason", P.VIR_TYPED_PARAM_INT, dom.reason)]
            if stats & STATS_CPU_TOTAL and dom.active:
                params += [_param("cpu.time", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_time", 0)),
                           _param("cpu.user", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_user", 0)),
                           _param("cpu.system", P.VIR_TYPED_PARAM_ULLONG, c.get("cpu_system", 0))]
            if stats & STATS_BALLOON:
                cur = c.get("memory_usage", 0) // 1024 if dom.active else dom.definition.current_memory
                params += [_param("balloon.current", P.VIR_TYPED_PARAM_ULLONG, cur),
                           _param("balloon.maximum", P.VIR_TYPED_PARAM_ULLONG,
                                  dom.definition.memory)]
            out.append(P.remote_domain_stats_record(dom.ref(), params))
        return out
