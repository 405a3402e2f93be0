"""QEMU driver connection: guest statistics (info, vcpus, memory, block, interface, domstats).

Where the numbers come from, as in libvirt's QEMU driver (qemu_driver.c):

  cpu time (info, cpu-total)   /proc/PID/stat utime+stime (every thread of QEMU)
  vcpus (vcpuinfo, vcpu.N.*)   thread ids from QMP query-cpus-fast (kept per QEMU run),
                               each thread's time and last CPU from /proc/PID/task/TID/stat,
                               affinity from sched_getaffinity, wait/delay from sched(stat)
  balloon / dommemstat         QMP query-balloon (actual), /proc/PID/stat (rss)
  block (domblkstat, block.N)  QMP query-blockstats, matched to the disk by its device
                               alias (qdev path) or block node name
  interface (domifstat, net.N) /sys/class/net/TAP/statistics, swapped for network and
                               bridge interfaces (the tap's rx is the guest's tx), not for
                               ethernet/direct (virNetDevTapInterfaceStats(..., swapped))

CONNECT_GET_ALL_DOMAIN_STATS answers both virConnectGetAllDomainStats and
virDomainListGetStats with the groups state, cpu-total, balloon, vcpu,
interface and block, in libvirt's order and with libvirt's field names and
types (virsh domstats prints them as they come).  Other groups are left out
silently unless VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS is given.
A guest whose monitor does not answer still gets the groups that do not
need it.  Every guest's monitor is asked at once, each within one monitor
deadline (qemu_monitor_timeout), so one stuck guest delays the reply by at most
that; with VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT a guest whose monitor is
busy or whose QEMU is stopped is not asked at all (libvirt's NOWAIT).
"""

from __future__ import annotations

import logging
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pyvirtd import hostinfo
from pyvirtd.driver import domains as ds
from pyvirtd.driver import interfaces
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod

from . import process
from .driver import QemuDriverState
from .guest import QemuDomain

log = logging.getLogger(__name__)

_ST = P.DomainStatsTypes
STATS_STATE, STATS_CPU_TOTAL, STATS_BALLOON = (_ST.VIR_DOMAIN_STATS_STATE,
                                               _ST.VIR_DOMAIN_STATS_CPU_TOTAL,
                                               _ST.VIR_DOMAIN_STATS_BALLOON)
STATS_VCPU, STATS_INTERFACE, STATS_BLOCK = (_ST.VIR_DOMAIN_STATS_VCPU,
                                            _ST.VIR_DOMAIN_STATS_INTERFACE,
                                            _ST.VIR_DOMAIN_STATS_BLOCK)
# a plain int: its complement must keep the bits no enum member names
SUPPORTED_STATS = int(STATS_STATE | STATS_CPU_TOTAL | STATS_BALLOON | STATS_VCPU | STATS_INTERFACE
                      | STATS_BLOCK)
_LF = P.ConnectGetAllDomainStatsFlags
# the listing filters it shares with virConnectListAllDomains, ACTIVE .. NO_SNAPSHOT
# (libvirt's VIR_CONNECT_LIST_DOMAINS_FILTERS_*; no checkpoint filters there)
LIST_FLAGS = int(P.ConnectListAllDomainsFlags.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT) * 2 - 1
STATS_NOWAIT, STATS_BACKING, STATS_ENFORCE = (_LF.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                                              _LF.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING,
                                              _LF.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS)
MEM_ACTUAL_BALLOON = P.DomainMemoryStatTags.VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON
MEM_RSS = P.DomainMemoryStatTags.VIR_DOMAIN_MEMORY_STAT_RSS
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
VCPU_MAXIMUM = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_MAXIMUM
VCPU_GUEST = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_GUEST
VCPU_HOTPLUGGABLE = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_HOTPLUGGABLE
VCPU_RUNNING = P.VcpuState.VIR_VCPU_RUNNING
TYPED_PARAM_STRING_OKAY = P.TypedParameterFlags.VIR_TYPED_PARAM_STRING_OKAY

INT, UINT, LLONG, ULLONG, STRING = (P.VIR_TYPED_PARAM_INT, P.VIR_TYPED_PARAM_UINT,
                                    P.VIR_TYPED_PARAM_LLONG, P.VIR_TYPED_PARAM_ULLONG,
                                    P.VIR_TYPED_PARAM_STRING)

# (name in virDomainBlockStatsFlags, key in QEMU's blockstats)
_BLOCK_PARAMS = (("rd_operations", "rd_operations"), ("rd_bytes", "rd_bytes"),
                 ("rd_total_times", "rd_total_time_ns"), ("wr_operations", "wr_operations"),
                 ("wr_bytes", "wr_bytes"), ("wr_total_times", "wr_total_time_ns"),
                 ("flush_operations", "flush_operations"),
                 ("flush_total_times", "flush_total_time_ns"))

# vcpu thread ids of the current QEMU run of each guest: {dom: (run, [(index, tid)])}
_VCPU_TIDS: "weakref.WeakKeyDictionary[QemuDomain, tuple[int, list[tuple[int, int]]]]" = \
    weakref.WeakKeyDictionary()


def _param(name: str, kind: int, value: Any) -> Any:
    return P.remote_typed_param(name, P.remote_typed_param_value(kind, value))


def _err(code: int, detail: str, domain: int = P.VIR_FROM_QEMU) -> VirError:
    return VirError(code, detail, domain=domain)


@dataclass
class _MonitorFacts:
    """What a guest's monitor told an all-domain stats call (None: not known)."""
    balloon_kib: int | None = None
    vcpu_tids: dict[int, int] | None = None
    blockstats: list[dict] = field(default_factory=list)


def cached_vcpu_threads(dom: QemuDomain) -> dict[int, int]:
    """{vcpu index: thread id} as last read from QEMU in this run; {} if never read."""
    cached = _VCPU_TIDS.get(dom)
    return dict(cached[1]) if cached is not None and cached[0] == dom.run else {}


async def vcpu_threads(dom: QemuDomain) -> list[tuple[int, int]]:
    """[(vcpu index, host thread id)] of a running guest (qemuDomainRefreshVcpuInfo)."""
    cached = _VCPU_TIDS.get(dom)
    if cached is not None and cached[0] == dom.run:
        return cached[1]
    run, mon = dom.run, dom.monitor
    tids: list[tuple[int, int]] = []
    if mon is not None:
        try:
            tids = sorted((c.index, c.thread_id) for c in await mon.query_cpus_fast()
                          if c.thread_id)
        except VirError as exc:
            log.debug("%s: query-cpus-fast: %s", dom.name, exc)
            return []
    if dom.run == run and tids:
        _VCPU_TIDS[dom] = (run, tids)
    return tids


def _disks(dom: QemuDomain) -> list:
    """The guest's disks; a volume disk of a running guest carries its pool's path."""
    disks = [d for d in devmod.parse_devices(dom.definition) if isinstance(d, devmod.Disk)]
    for disk in disks:
        if disk.type == "volume" and disk.path is None:
            disk.path = dom.volume_paths.get(disk.target)
    return disks


def _interfaces(dom: QemuDomain) -> list:
    return [d for d in devmod.parse_devices(dom.definition) if isinstance(d, devmod.Interface)]


def _tap_stats(net: Any) -> tuple[int, ...] | None:
    """An interface's counters in the guest's view (pyvirtd.driver.interfaces.guest_view),
    from its host device's sysfs statistics."""
    ifname = net.target_dev
    if not ifname:
        return None
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        v = {k: int((base / k).read_text()) for k in interfaces.COUNTERS}
    except (OSError, ValueError):
        return None
    return interfaces.guest_view(v, net.type)


def _qcow2_virtual_size(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return None
    if len(head) == 32 and head[:4] == b"QFI\xfb":
        return struct.unpack(">Q", head[24:32])[0]
    return None


def _file_limits(path: str, fmt: str | None) -> tuple[int, int, int] | None:
    """(allocation, capacity, physical) of a disk image or block device, from the host."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if Path(path).is_block_device():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
        except OSError:
            return None
        return (size, size, size)
    capacity = (_qcow2_virtual_size(path) if fmt == "qcow2" else None) or st.st_size
    return (st.st_blocks * 512, capacity, st.st_size)


class StatsMixin:
    driver: QemuDriverState

    # _dom() and _active() come from DomainMixin

    # -- info and vcpus --------------------------------------------------------
    def domain_get_info(self, ref: Dom) -> tuple:
        dom = self._dom(ref)
        d = dom.definition
        return (dom.state, d.memory, d.current_memory, d.vcpus_current,
                self.driver.cpu_time(dom) if dom.active else 0)

    async def domain_get_vcpus(self, ref: Dom, maxinfo: int, maplen: int) -> tuple:
        dom = self._active(ref)
        size, online = hostinfo.cpu_map()
        tids = dict(await vcpu_threads(dom))
        infos, maps = [], bytearray()
        for n in range(min(maxinfo, dom.definition.vcpus_current)):
            tid = tids.get(n)
            times = hostinfo.process_times(dom.pid, tid) if tid and dom.pid else None
            cpu_time = times[0] + times[1] if times else 0
            infos.append(P.remote_vcpu_info(n, VCPU_RUNNING, cpu_time, times[2] if times else -1))
            try:
                affinity = sorted(os.sched_getaffinity(tid)) if tid else online
            except OSError:
                affinity = online
            maps += hostinfo.cpumap_bytes(affinity, maplen * 8)[:maplen].ljust(maplen, b"\0")
        return (infos, bytes(maps))

    def domain_get_vcpus_flags(self, ref: Dom, flags: int) -> int:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM | VCPU_GUEST
                    | VCPU_HOTPLUGGABLE, "qemuDomainGetVcpusFlags", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        if flags & AFFECT_LIVE and flags & AFFECT_CONFIG:
            raise _err(P.VIR_ERR_INVALID_ARG,
                       "Flags 'VIR_DOMAIN_AFFECT_LIVE' and 'VIR_DOMAIN_AFFECT_CONFIG' "
                       "are mutually exclusive", P.VIR_FROM_NONE)
        if flags & AFFECT_LIVE and not dom.active:
            raise ds.not_running()
        if flags & VCPU_GUEST:
            if not dom.active:
                raise ds.not_running()
            raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured")
        d = dom.persistent_def if flags & AFFECT_CONFIG or not dom.active else dom.definition
        return d.vcpus if flags & VCPU_MAXIMUM else d.vcpus_current

    # -- memory ---------------------------------------------------------------
    async def _balloon_kib(self, dom: QemuDomain) -> int:
        """The guest's current memory: QEMU's balloon when there is one (KiB)."""
        if dom.monitor is not None and any(
                m.get("model") != "none" for m in dom.definition.devices_of("memballoon")):
            try:
                return await dom.monitor.query_balloon() // 1024
            except VirError as exc:
                log.debug("%s: query-balloon: %s", dom.name, exc)
        return dom.definition.current_memory

    async def domain_memory_stats(self, ref: Dom, max_stats: int, flags: int) -> list:
        check_flags(flags, 0, "qemuDomainMemoryStats", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        stats = [P.remote_domain_memory_stat(MEM_ACTUAL_BALLOON, await self._balloon_kib(dom))]
        times = hostinfo.process_times(dom.pid) if dom.pid else None
        if times is not None:
            stats.append(P.remote_domain_memory_stat(MEM_RSS, times[3]))
        return stats[:max_stats]

    # -- block ----------------------------------------------------------------
    def _disk(self, dom: QemuDomain, path: str) -> Any:
        for disk in _disks(dom):
            if path in (disk.target, disk.path):
                return disk
        raise _err(P.VIR_ERR_INVALID_ARG, f"invalid path: {path}")

    @staticmethod
    def _disk_entry(disk: Any, index: int, entries: list[dict]) -> dict | None:
        node = f"libvirt-{index + 1}-format"
        for e in entries:
            qdev = e.get("qdev") or ""
            if disk.alias and (qdev.endswith(f"/{disk.alias}") or f"/{disk.alias}/" in qdev
                               or e.get("device") == f"drive-{disk.alias}"):
                return e.get("stats") or {}
            if e.get("node-name") == node:
                return e.get("stats") or {}
        return None

    async def _blockstats(self, dom: QemuDomain) -> list[dict]:
        if dom.monitor is None:
            return []
        try:
            return await dom.monitor.query_blockstats()
        except VirError as exc:
            log.debug("%s: query-blockstats: %s", dom.name, exc)
            return []

    async def _block_values(self, dom: QemuDomain, path: str) -> dict[str, int]:
        """QEMU's counters for one disk, or summed over every disk when path is ''."""
        entries = await self._blockstats(dom)
        disks = list(enumerate(_disks(dom)))
        if path:
            target = self._disk(dom, path)
            disks = [(i, d) for i, d in disks if d is target]
        total: dict[str, int] = {}
        for i, disk in disks:
            stats = self._disk_entry(disk, i, entries)
            if stats is None:
                if path:
                    raise _err(P.VIR_ERR_INTERNAL_ERROR,
                               f"cannot find statistics for device '{disk.alias or disk.target}'")
                continue
            for _, key in _BLOCK_PARAMS:
                total[key] = total.get(key, 0) + int(stats.get(key, 0))
        return total

    async def domain_block_stats(self, ref: Dom, path: str) -> tuple:
        dom = self._active(ref)
        v = await self._block_values(dom, path)
        return (v.get("rd_operations", 0), v.get("rd_bytes", 0), v.get("wr_operations", 0),
                v.get("wr_bytes", 0), -1)

    async def domain_block_stats_flags(self, ref: Dom, path: str, nparams: int, flags: int) -> tuple:
        check_flags(flags, TYPED_PARAM_STRING_OKAY, "qemuDomainBlockStatsFlags", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        if nparams == 0:
            return ([], len(_BLOCK_PARAMS))
        v = await self._block_values(dom, path)
        params = [_param(name, LLONG, v.get(key, 0)) for name, key in _BLOCK_PARAMS][:nparams]
        return (params, len(params))

    async def domain_get_block_info(self, ref: Dom, path: str, flags: int) -> tuple:
        check_flags(flags, 0, "qemuDomainGetBlockInfo", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        disk = self._disk(dom, path)
        if not disk.path and disk.type == "volume":
            # an inactive guest's volume disk is resolved only at start; libvirt then
            # finds no storage backend for the untranslated source
            raise _err(P.VIR_ERR_INTERNAL_ERROR, "missing storage backend for "
                       "'volume' storage", P.VIR_FROM_STORAGE)
        if not disk.path:
            raise _err(P.VIR_ERR_INVALID_ARG, f"disk '{disk.target}' does not currently have a "
                       "source assigned")
        limits = _file_limits(disk.path, disk.format)
        if limits is None:
            raise _err(P.VIR_ERR_SYSTEM_ERROR, f"cannot stat file '{disk.path}': "
                       f"{os.strerror(2)}", P.VIR_FROM_NONE)
        return limits

    # -- interfaces -----------------------------------------------------------
    def domain_interface_stats(self, ref: Dom, device: str) -> tuple:
        dom = self._active(ref)
        for net in _interfaces(dom):
            if device and device in (net.target_dev, net.mac):
                stats = _tap_stats(net)
                if stats is None:
                    break
                return stats
        raise _err(P.VIR_ERR_INVALID_ARG, f"invalid path, '{device}' is not a known interface")

    # -- bulk stats -------------------------------------------------------------
    @staticmethod
    def _stats_monitor(dom: QemuDomain, stats: int, nowait: bool) -> Any:
        """The monitor to ask for ``dom``'s monitor-backed groups, or None.

        With NOWAIT a guest whose monitor is busy (a command unanswered, not
        reconnected yet) or whose QEMU is stopped is left alone: it gets the
        groups that need no monitor, as libvirt's NOWAIT does for a guest whose
        job it cannot take at once."""
        mon = dom.monitor
        if (mon is None or not dom.active or dom.pid is None
                or not stats & (STATS_BALLOON | STATS_VCPU | STATS_BLOCK)):
            return None
        if nowait and (mon.busy or process.is_stopped(dom.pid)):
            return None
        return mon

    async def _ask_monitor(self, dom: QemuDomain, mon: Any, stats: int,
                           facts: dict[QemuDomain, _MonitorFacts]) -> None:
        """``dom``'s monitor-backed figures into ``facts``: all within one monitor
        deadline, so a stuck guest costs the call one deadline, not one per query."""
        got = _MonitorFacts()
        facts[dom] = got
        with trio.move_on_after(mon.deadline):
            if stats & STATS_BALLOON:
                got.balloon_kib = await self._balloon_kib(dom)
            if stats & STATS_VCPU:
                got.vcpu_tids = dict(await vcpu_threads(dom))
            if stats & STATS_BLOCK:
                got.blockstats = await self._blockstats(dom)

    def _record(self, dom: QemuDomain, stats: int, facts: _MonitorFacts | None) -> Any:
        """One guest's record; ``facts``: what its monitor said (None: not asked)."""
        params: list = []
        d = dom.definition
        active = dom.active and dom.pid is not None
        facts = facts or _MonitorFacts()
        if stats & STATS_STATE:
            params += [_param("state.state", INT, dom.state), _param("state.reason", INT, dom.reason)]
        if stats & STATS_CPU_TOTAL and active:
            times = hostinfo.process_times(dom.pid)
            if times is not None:
                params += [_param("cpu.time", ULLONG, times[0] + times[1]),
                           _param("cpu.user", ULLONG, times[0]),
                           _param("cpu.system", ULLONG, times[1])]
        if stats & STATS_BALLOON:
            cur = facts.balloon_kib if facts.balloon_kib is not None else d.current_memory
            params += [_param("balloon.current", ULLONG, cur),
                       _param("balloon.maximum", ULLONG, d.memory)]
            if active:
                times = hostinfo.process_times(dom.pid)
                if times is not None:
                    params.append(_param("balloon.rss", ULLONG, times[3]))
        if stats & STATS_VCPU:
            params += [_param("vcpu.current", UINT, d.vcpus_current),
                       _param("vcpu.maximum", UINT, d.vcpus)]
            if active:
                tids = facts.vcpu_tids if facts.vcpu_tids is not None else cached_vcpu_threads(dom)
                for n in range(d.vcpus_current):
                    tid = tids.get(n)
                    times = hostinfo.process_times(dom.pid, tid) if tid else None
                    wait, delay = hostinfo.sched_delay(dom.pid, tid) if tid else (0, 0)
                    params += [_param(f"vcpu.{n}.state", INT, VCPU_RUNNING),
                               _param(f"vcpu.{n}.time", ULLONG,
                                      times[0] + times[1] if times else 0),
                               _param(f"vcpu.{n}.wait", ULLONG, wait),
                               _param(f"vcpu.{n}.delay", ULLONG, delay)]
        if stats & STATS_INTERFACE and active:
            nets = _interfaces(dom)
            params.append(_param("net.count", UINT, len(nets)))
            for n, net in enumerate(nets):
                if net.target_dev:
                    params.append(_param(f"net.{n}.name", STRING, net.target_dev))
                v = _tap_stats(net)
                if v is None:
                    continue
                for (key, value) in zip(("rx.bytes", "rx.pkts", "rx.errs", "rx.drop",
                                         "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"), v):
                    params.append(_param(f"net.{n}.{key}", ULLONG, value))
        if stats & STATS_BLOCK:
            disks = _disks(dom)
            entries = facts.blockstats if active else []
            params.append(_param("block.count", UINT, len(disks)))
            for n, disk in enumerate(disks):
                params.append(_param(f"block.{n}.name", STRING, disk.target))
                if disk.path:
                    params.append(_param(f"block.{n}.path", STRING, disk.path))
                st = self._disk_entry(disk, n, entries) if active else None
                if st:
                    for name, key in (("rd.reqs", "rd_operations"), ("rd.bytes", "rd_bytes"),
                                      ("rd.times", "rd_total_time_ns"),
                                      ("wr.reqs", "wr_operations"), ("wr.bytes", "wr_bytes"),
                                      ("wr.times", "wr_total_time_ns"),
                                      ("fl.reqs", "flush_operations"),
                                      ("fl.times", "flush_total_time_ns")):
                        params.append(_param(f"block.{n}.{name}", ULLONG, int(st.get(key, 0))))
                limits = _file_limits(disk.path, disk.format) if disk.path else None
                if limits is not None:
                    params += [_param(f"block.{n}.allocation", ULLONG, limits[0]),
                               _param(f"block.{n}.capacity", ULLONG, limits[1]),
                               _param(f"block.{n}.physical", ULLONG, limits[2])]
        return P.remote_domain_stats_record(dom.ref(), params)

    async def connect_get_all_domain_stats(self, doms: list, stats: int, flags: int) -> list:
        check_flags(flags, LIST_FLAGS | STATS_NOWAIT | STATS_BACKING | STATS_ENFORCE,
                    "qemuConnectGetAllDomainStats", P.VIR_FROM_QEMU)
        if not stats:
            stats = SUPPORTED_STATS
        elif flags & STATS_ENFORCE and stats & ~SUPPORTED_STATS:
            raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                       f"Stats types bits 0x{stats & ~SUPPORTED_STATS:x} are not supported by "
                       "this daemon")
        if doms:
            found = (self.driver.domains.find_uuid(r.uuid) for r in doms)
            selected = [d for d in found if d is not None]
        else:
            selected = list(self.driver.domains.values())
        list_flags = flags & LIST_FLAGS
        if list_flags:
            selected = [d for d in selected if ds.matches_list_flags(d, list_flags)]
        # every guest's monitor at once: a stuck one delays the reply by at most
        # its deadline, never the others' queries
        facts: dict[QemuDomain, _MonitorFacts] = {}
        nowait = bool(flags & STATS_NOWAIT)
        async with trio.open_nursery() as nursery:
            for d in selected:
                mon = self._stats_monitor(d, stats, nowait)
                if mon is not None:
                    nursery.start_soon(self._ask_monitor, d, mon, stats, facts)
        return [self._record(d, stats, facts.get(d)) for d in selected]
