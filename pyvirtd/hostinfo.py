"""The real host's facts as libvirt's node procedures report them, read from /proc and /sys.

Shared by the drivers that run guests on this host (qemu, lxc): libvirt
reads the same files (src/util/virhostcpu.c, virhostmem.c), so the numbers
and their units match what virsh prints against libvirtd:

    node_info()                 NODE_GET_INFO: (model, memory KiB, cpus, mhz, nodes,
                                sockets per node, cores per socket, threads per core)
    cpu_stats(cpu)              NODE_GET_CPU_STATS: [(name, ns)] kernel/user/idle/iowait
    memory_stats(cell)          NODE_GET_MEMORY_STATS: [(name, KiB)] total/free/buffers/cached
    cpu_map()                   NODE_GET_CPU_MAP: (present cpu count, online cpu ids)
    free_memory()               NODE_GET_FREE_MEMORY: bytes
    cells_free_memory(start, n) NODE_GET_CELLS_FREE_MEMORY: bytes per NUMA cell
    host_uuid(configured, src)  the host UUID of capabilities' <host><uuid> (host_uuid,
                                host_uuid_source); resolved once at start

Everything is a few small reads, cheap enough for the trio loop.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from pyvirtd.config import parse_uuid
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

SYS_CPU = Path("/sys/devices/system/cpu")
# host_uuid_source: smbios reads the firmware's system UUID (what dmidecode
# shows, libvirt's source), machine-id the systemd machine id.
DMI_PRODUCT_UUID = Path("/sys/class/dmi/id/product_uuid")
MACHINE_ID = Path("/etc/machine-id")
SYS_NODE = Path("/sys/devices/system/node")
# VIR_NODE_CPU_STATS_ALL_CPUS / VIR_NODE_MEMORY_STATS_ALL_CELLS
ALL = P.NodeGetCPUStatsAllCPUs.VIR_NODE_CPU_STATS_ALL_CPUS


def _read(path: Path | str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def host_uuid(configured: str | None = None, source: str = "smbios", *,
              dmi: Path = DMI_PRODUCT_UUID, machine_id: Path = MACHINE_ID) -> str:
    """The host UUID, as libvirtd's daemonSetupHostUUID chooses it.

    ``configured`` (the host_uuid knob) wins. Else ``source`` says where to
    read it: ``machine-id`` must be readable and valid, or the daemon cannot
    start (as libvirtd); ``smbios`` falls back when the firmware gives none
    or an invalid one (all zeros is common). libvirtd then makes up a random
    UUID on every start; we take the machine id, else one derived from the
    host name, so the UUID stays stable across restarts.

    Raises:
      ValueError: a configured UUID is invalid, or machine-id cannot be used;
        the message names the knob.
    """
    if configured:
        return parse_uuid(configured)
    if source == "machine-id":
        try:
            return parse_uuid(machine_id.read_text())
        except OSError as exc:
            raise ValueError(f"host_uuid_source 'machine-id': cannot read {machine_id}: "
                             f"{exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"host_uuid_source 'machine-id': {machine_id}: {exc}") from None
    for path in (dmi, machine_id):
        try:
            return parse_uuid(path.read_text())
        except (OSError, ValueError) as exc:
            log.info("host UUID: not from %s: %s", path, exc)
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, os.uname().nodename))


def parse_cpulist(text: str) -> list[int]:
    """"0-3,6" -> [0, 1, 2, 3, 6] (the kernel's cpu list format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def online_cpus() -> list[int]:
    text = _read(SYS_CPU / "online")
    return parse_cpulist(text) if text.strip() else list(range(os.cpu_count() or 1))


def present_count() -> int:
    text = _read(SYS_CPU / "present")
    cpus = parse_cpulist(text) if text.strip() else online_cpus()
    return max(cpus) + 1 if cpus else 1


def cpu_map() -> tuple[int, list[int]]:
    """(number of CPUs the map covers, the online ones): virHostCPUGetMap."""
    return present_count(), online_cpus()


def cpumap_bytes(cpus: list[int], size: int) -> bytes:
    out = bytearray((size + 7) // 8)
    for cpu in cpus:
        if cpu < size:
            out[cpu // 8] |= 1 << (cpu % 8)
    return bytes(out)


def meminfo(path: Path | str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo (or a NUMA node's meminfo, "Node N " prefix dropped), values in KiB."""
    out = {}
    for line in _read(path).splitlines():
        if line.startswith("Node "):
            line = line.split(None, 2)[2]
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key.strip()] = int(fields[0])
    return out


def numa_nodes() -> list[int]:
    text = _read(SYS_NODE / "online")
    return parse_cpulist(text) if text.strip() else []


def _topology() -> tuple[int, int, int]:
    """(sockets, cores per socket, threads per core) of the online CPUs."""
    sockets: set[str] = set()
    cores: set[tuple[str, str]] = set()
    cpus = online_cpus()
    for cpu in cpus:
        topo = SYS_CPU / f"cpu{cpu}" / "topology"
        pkg = _read(topo / "physical_package_id", "0").strip()
        core = _read(topo / "core_id", str(cpu)).strip()
        sockets.add(pkg)
        cores.add((pkg, core))
    nsockets = max(len(sockets), 1)
    ncores = max(len(cores) // nsockets, 1)
    threads = max(len(cpus) // max(len(cores), 1), 1)
    return nsockets, ncores, threads


def _cpu_mhz() -> int:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("cpu MHz"):
            try:
                return int(float(line.split(":")[1]))
            except ValueError:
                break
    khz = _read(SYS_CPU / "cpu0" / "cpufreq" / "cpuinfo_max_freq").strip()
    return int(khz) // 1000 if khz.isdigit() else 0


def node_info() -> tuple:
    """virNodeInfo as libvirt fills it (virHostCPUGetInfo + virHostMemGetInfo).

    libvirt reports nodes=1 and the whole topology in one node unless the
    NUMA layout is symmetric; with one node (or none) that is what this does.
    """
    sockets, cores, threads = _topology()
    nodes = len(numa_nodes()) or 1
    if nodes > 1 and sockets % nodes == 0:
        sockets //= nodes
    else:
        nodes = 1
    return (os.uname().machine.encode(), meminfo().get("MemTotal", 0), len(online_cpus()),
            _cpu_mhz(), nodes, sockets, cores, threads)


def cpu_stats(cpu: int) -> list[tuple[str, int]]:
    """NODE_GET_CPU_STATS from /proc/stat (linuxNodeGetCPUStats), in ns."""
    want = "cpu" if cpu == ALL else f"cpu{cpu}"
    for line in _read("/proc/stat").splitlines():
        fields = line.split()
        if fields and fields[0] == want:
            v = [int(x) for x in fields[1:8]] + [0] * 7
            user, nice, system, idle, iowait, irq, softirq = v[:7]
            tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            return [("kernel", (system + irq + softirq) * tick), ("user", (user + nice) * tick),
                    ("idle", idle * tick), ("iowait", iowait * tick)]
    raise VirError(P.VIR_ERR_INVALID_ARG, "Invalid cpuNum in linuxNodeGetCPUStats",
                   domain=P.VIR_FROM_NONE)


def memory_stats(cell: int) -> list[tuple[str, int]]:
    """NODE_GET_MEMORY_STATS (virHostMemGetStats), in KiB."""
    if cell == ALL:
        info = meminfo()
    else:
        nodes = numa_nodes() or [0]
        if cell not in nodes:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"cellNum in virHostMemGetStats only can be in range [0, {max(nodes)}]",
                           domain=P.VIR_FROM_NONE)
        path = SYS_NODE / f"node{cell}" / "meminfo"
        info = meminfo(path) if path.exists() else meminfo()
    return [("total", info.get("MemTotal", 0)), ("free", info.get("MemFree", 0)),
            ("buffers", info.get("Buffers", 0)), ("cached", info.get("Cached", 0))]


def free_memory() -> int:
    """Free memory in bytes, summed over NUMA cells as libvirt does (MemFree, not MemAvailable)."""
    return sum(cells_free_memory(0, 1 << 16))


def cells_free_memory(start: int, maxcells: int) -> list[int]:
    nodes = numa_nodes()
    if not nodes:
        if start != 0:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"start cell {start} out of range (0-0)",
                           domain=P.VIR_FROM_NONE)
        return [meminfo().get("MemFree", 0) * 1024][:maxcells]
    last = max(nodes)
    if start < 0 or start > last:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"start cell {start} out of range (0-{last})",
                       domain=P.VIR_FROM_NONE)
    out = []
    for cell in range(start, min(last + 1, start + maxcells)):
        out.append(meminfo(SYS_NODE / f"node{cell}" / "meminfo").get("MemFree", 0) * 1024)
    return out


# -- per-process and per-thread facts (guest processes) --------------------------

def task_stat(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/PID[/task/TID]/stat after the command name, or None if gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    text = _read(path)
    if not text:
        return None
    return text.rsplit(")", 1)[1].split()


def ticks_to_ns(ticks: int) -> int:
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def process_times(pid: int, tid: int | None = None) -> tuple[int, int, int, int] | None:
    """(user ns, system ns, last cpu, rss KiB) of a process or one of its threads."""
    f = task_stat(pid, tid)
    if f is None:
        return None
    # after the name: state is f[0]; utime f[11], stime f[12], rss f[21], processor f[36]
    rss_kib = int(f[21]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    return ticks_to_ns(int(f[11])), ticks_to_ns(int(f[12])), int(f[36]), rss_kib


def sched_delay(pid: int, tid: int) -> tuple[int, int]:
    """(wait ns, run delay ns) of a thread: sched's wait_sum and schedstat's run delay."""
    wait = 0
    for line in _read(f"/proc/{pid}/task/{tid}/sched").splitlines():
        key, _, value = line.partition(":")
        if key.strip().endswith("wait_sum"):
            try:
                wait = int(float(value) * 1_000_000)   # ms with a fraction
            except ValueError:
                pass
            break
    fields = _read(f"/proc/{pid}/task/{tid}/schedstat").split()
    delay = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return wait, delay


_CACHE_TYPES = {"Unified": "both", "Data": "data", "Instruction": "code"}


def cache_banks(root: str = "/sys/devices/system/cpu") -> list[dict[str, str]]:
    """The host's level-3-and-up caches as libvirt's capabilities list them:
    one bank per (level, id, type), its size in the largest exact unit, the CPUs
    sharing it."""
    banks: dict[tuple[int, int, str], dict[str, str]] = {}
    for cpu in online_cpus():
        base = Path(root) / f"cpu{cpu}" / "cache"
        for index in sorted(base.glob("index*")):
            level = int(_read(index / "level", "0").strip() or 0)
            kind = _CACHE_TYPES.get(_read(index / "type").strip())
            size = _read(index / "size").strip()
            if level < 3 or kind is None or not size.endswith("K"):
                continue
            bank_id = int(_read(index / "id", "0").strip() or 0)
            kib = int(size[:-1])
            value, unit = kib, "KiB"
            for bigger in ("MiB", "GiB"):
                if value % 1024:
                    break
                value, unit = value // 1024, bigger
            banks.setdefault((level, bank_id, kind), {
                "id": str(bank_id), "level": str(level), "type": kind, "size": str(value),
                "unit": unit, "cpus": _read(index / "shared_cpu_list").strip()})
    return [banks[k] for k in sorted(banks)]
