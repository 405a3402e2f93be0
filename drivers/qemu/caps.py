"""Probing QEMU binaries (QMP) for capabilities, cached on disk.

Contract:

    caps = await probe_all(cache_dir)       # every qemu-system-ARCH found in PATH and /usr/bin;
                                            # cached as JSON per binary, keyed by binary
                                            # path+size+mtime and host kernel release, so a
                                            # restarted daemon does not re-probe
    caps.binaries                           # {path: BinaryCaps}
    caps.binary_for(arch)                   # BinaryCaps | None (x86_64 also serves i686)
    # the XML documents are caps_xml.py's (a layer above this module):
    capabilities_xml(caps, host_uuid=None)  # virsh capabilities (str)
    domain_capabilities_xml(caps, emulator=None, arch=None, machine=None, virttype=None)
        # virsh domcapabilities (str); None picks as libvirt does (host arch, default
        # machine, kvm when usable); a mismatch raises VirError(VIR_ERR_INVALID_ARG)
        # or VIR_ERR_CONFIG_UNSUPPORTED worded as libvirt.
    await probe_binary(path)                # BinaryCaps, uncached (what probe_all calls)
    kvm_usable()                            # /dev/kvm opens read-write

A probe starts the binary as our child (-S -nodefaults -machine none, QMP on a
unix socket in a temp dir) once with KVM (when /dev/kvm is usable) and once
with TCG: CPU model usability differs per accelerator, and ``-machine none``
creates no vCPU, so even ``host`` expansion is safe on hosts where running a
host-model vCPU aborts QEMU (see test-environment.md).  ~0.1 s per accelerator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd import hostcpu
from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.capabilities import X86_MODELS

from .firmware import descriptors

if TYPE_CHECKING:
    # imported where it is used: QMP (asyncio, trio-asyncio, qemu.qmp) takes
    # memory a daemon with no QEMU guest to talk to does not need
    from .monitor import Monitor

log = logging.getLogger(__name__)

# Bumped whenever what a probe records changes, so old cache files are ignored.
CACHE_FORMAT = 3

PROBE_TIMEOUT = 20.0

SEARCH_DIRS = ("/usr/bin", "/usr/local/bin")

# qemu-system-SUFFIX -> libvirt arch (src/util/virarch.c names; QEMU's i386 is i686)
_ARCH_OF_SUFFIX = {"i386": "i686", "x86_64": "x86_64", "aarch64": "aarch64", "arm": "armv7l",
                   "ppc64": "ppc64", "ppc": "ppc", "riscv64": "riscv64", "riscv32": "riscv32",
                   "s390x": "s390x", "mips": "mips", "mipsel": "mipsel", "mips64": "mips64",
                   "mips64el": "mips64el", "sparc": "sparc", "sparc64": "sparc64",
                   "alpha": "alpha", "m68k": "m68k", "sh4": "sh4", "sh4eb": "sh4eb",
                   "hppa": "parisc", "microblaze": "microblaze", "microblazeel": "microblazeel",
                   "xtensa": "xtensa", "xtensaeb": "xtensaeb", "cris": "cris", "or1k": "or32"}
_WORDSIZE = {"i686": 32, "armv7l": 32, "ppc": 32, "riscv32": 32, "mips": 32, "mipsel": 32,
             "sparc": 32, "m68k": 32, "sh4": 32, "sh4eb": 32, "microblaze": 32,
             "microblazeel": 32, "xtensa": 32, "xtensaeb": 32, "cris": 32, "or32": 32,
             "parisc": 32}

# Vendors of libvirt's x86 CPU map models (src/cpu_map/x86_*.xml); others have none.
_AMD = ("athlon", "phenom", "Opteron", "EPYC")


def _vendor_of(model: str) -> str:
    if model.startswith(_AMD):
        return "AMD"
    if model.startswith("Dhyana"):
        return "Hygon"
    if model[:1].isupper() or model in ("core2duo", "coreduo", "n270"):
        return "Intel"
    return "unknown"


@dataclass
class Machine:
    name: str
    alias: str | None = None
    max_cpus: int = 1
    default: bool = False
    deprecated: bool = False


@dataclass
class CpuDef:
    name: str
    usable: bool
    deprecated: bool = False
    blockers: list[str] = field(default_factory=list)   # QEMU's unavailable-features


@dataclass
class BinaryCaps:
    """What one qemu-system-* binary can do, as probed."""
    path: str
    arch: str
    version: tuple[int, int, int]
    package: str
    kvm: bool                               # QEMU ran with KVM enabled in the probe
    machines: list[Machine]
    cpu_defs: dict[str, list[CpuDef]]       # accel ("kvm"/"tcg") -> models
    # accel ("kvm"/"tcg") -> props of QEMU's static expansion of its host model
    host_models: dict[str, dict[str, Any]]
    commands: list[str]
    types: list[str]

    def default_machine(self) -> str | None:
        for m in self.machines:
            if m.default:
                return m.name
        return self.machines[0].name if self.machines else None

    def canonical_machine(self, name: str) -> Machine | None:
        for m in self.machines:
            if name in (m.name, m.alias):
                return m
        return None

    def has_type(self, name: str) -> bool:
        return name in self.types

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "BinaryCaps":
        d = dict(d)
        d["version"] = tuple(d["version"])
        d["machines"] = [Machine(**m) for m in d["machines"]]
        d["cpu_defs"] = {k: [CpuDef(**c) for c in v] for k, v in d["cpu_defs"].items()}
        return cls(**d)


# -- finding and probing ------------------------------------------------------

def find_binaries() -> list[str]:
    """qemu-system-ARCH binaries in PATH and /usr/bin, one per arch suffix (PATH first)."""
    found: dict[str, str] = {}
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d] + list(SEARCH_DIRS)
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            suffix = name.removeprefix("qemu-system-")
            if name.startswith("qemu-system-") and suffix in _ARCH_OF_SUFFIX and suffix not in found:
                path = os.path.join(d, name)
                if os.access(path, os.X_OK):
                    found[suffix] = os.path.realpath(path) if os.path.islink(path) else path
    return list(found.values())


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _arch_of(path: str) -> str:
    return _ARCH_OF_SUFFIX[os.path.basename(path).removeprefix("qemu-system-")]


async def _probe_accel(path: str, accel: str, tmp: str) -> dict:
    sock = os.path.join(tmp, f"{accel}.qmp")
    errlog = os.path.join(tmp, f"{accel}.err")
    argv = [path, "-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none",
            "-accel", accel, "-qmp", f"unix:{sock},server=on,wait=off"]
    with open(errlog, "wb") as err:
        proc = await trio.lowlevel.open_process(argv, stdin=-3, stdout=-3, stderr=err)   # DEVNULL
    try:
        mon = None
        try:
            async with trio.open_nursery() as nursery:
                async def exited() -> None:     # fail at once, not after the timeout
                    await proc.wait()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(exited)
                from .monitor import Monitor
                mon = await Monitor.connect(sock, timeout=PROBE_TIMEOUT)
                nursery.cancel_scope.cancel()
        except VirError:
            pass
        if mon is None:
            text = Path(errlog).read_text(errors="replace").strip()
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Failed to probe capabilities for {path}: {text or 'no QMP monitor'}",
                           domain=P.VIR_FROM_QEMU) from None
        async with mon:
            out: dict[str, Any] = {
                "version": await mon.execute("query-version"),
                "kvm": await mon.execute("query-kvm"),
                "machines": await mon.execute("query-machines"),
                "commands": [c["name"] for c in await mon.execute("query-commands")],
                "types": [t["name"] for t in await mon.execute("qom-list-types")],
            }
            out["cpu_defs"] = await _optional(mon, "query-cpu-definitions") or []
            # the host model with the features that block migration (invtsc), as
            # libvirt reports it in domcapabilities
            out["host"] = await _optional(mon, "query-cpu-model-expansion", {
                "type": "static", "model": {"name": "host" if accel == "kvm" else "max",
                                            "props": {"migratable": False}}})
            await mon.quit()
        return out
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _optional(mon: Monitor, cmd: str, args: dict | None = None) -> Any:
    try:
        return await mon.execute(cmd, args)
    except VirError as exc:   # e.g. no CPU models on this target
        log.debug("probe: %s: %s", cmd, exc)
        return None


def _host_model(raw: dict) -> dict | None:
    """The props of QEMU's static expansion of its host model (``host`` under KVM,
    ``max`` under TCG): features, vendor, family/model; caps_xml names them."""
    props = ((raw.get("host") or {}).get("model") or {}).get("props") or {}
    return dict(props) if props else None


async def probe_binary(path: str) -> BinaryCaps:
    """Probe one binary (uncached).  Raises VirError when it cannot be probed."""
    arch = _arch_of(path)
    accels = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    with tempfile.TemporaryDirectory(prefix="pyvirtd-qemu-probe-") as tmp:
        raws: dict[str, dict] = {}
        errors: list[VirError] = []

        async def one(accel: str) -> None:
            try:
                raws[accel] = await _probe_accel(path, accel, tmp)
            except VirError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for accel in accels:
                nursery.start_soon(one, accel)
        if errors:
            raise errors[0]
    main = raws.get("kvm") or raws["tcg"]
    q = main["version"]["qemu"]
    kvm = bool("kvm" in raws and raws["kvm"]["kvm"]["enabled"])
    machines = [Machine(name=m["name"], alias=m.get("alias"), max_cpus=int(m.get("cpu-max", 1)),
                        default=bool(m.get("is-default")), deprecated=bool(m.get("deprecated")))
                for m in main["machines"] if m["name"] != "none"]
    machines.sort(key=lambda m: m.name)
    cpu_defs = {accel: [CpuDef(d["name"], not d.get("unavailable-features"), bool(d.get("deprecated")),
                               list(d.get("unavailable-features") or []))
                        for d in raw["cpu_defs"]]
                for accel, raw in raws.items() if raw["cpu_defs"] and (accel == "tcg" or kvm)}
    return BinaryCaps(path=path, arch=arch, version=(int(q["major"]), int(q["minor"]), int(q["micro"])),
                      package=str(main["version"].get("package", "")).strip(), kvm=kvm,
                      machines=machines, cpu_defs=cpu_defs,
                      host_models={accel: props for accel, raw in raws.items()
                                   if (props := _host_model(raw))},
                      commands=sorted(main["commands"]), types=sorted(main["types"]))


def _cache_key(path: str) -> str:
    st = os.stat(path)
    return json.dumps([CACHE_FORMAT, path, st.st_size, st.st_mtime_ns, os.uname().release, kvm_usable()])


def _cache_file(cache_dir: str, path: str) -> Path:
    return Path(cache_dir) / (hashlib.sha256(path.encode()).hexdigest()[:16] + ".json")


def _read_cache(cache_dir: str, path: str, key: str) -> BinaryCaps | None:
    try:
        data = json.loads(_cache_file(cache_dir, path).read_text())
        if data.get("key") != key:
            return None
        return BinaryCaps.from_json(data["caps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(cache_dir: str, path: str, key: str, caps: BinaryCaps) -> None:
    write_atomic(_cache_file(cache_dir, path),
                 json.dumps({"key": key, "caps": caps.to_json()}), 0o644)


async def probe_all(cache_dir: str, binaries: list[str] | None = None) -> "QemuCaps":
    """Capabilities of every binary (``binaries`` or all found), from cache when fresh.

    A binary that fails to probe is logged and left out.
    """
    paths = binaries if binaries is not None else await trio.to_thread.run_sync(find_binaries)
    result: dict[str, BinaryCaps] = {}

    async def one(path: str) -> None:
        try:
            key = await trio.to_thread.run_sync(_cache_key, path)
        except OSError as exc:
            log.warning("QEMU binary %s: %s", path, exc)
            return
        cached = await trio.to_thread.run_sync(_read_cache, cache_dir, path, key)
        if cached is not None:
            result[path] = cached
            return
        try:
            caps = await probe_binary(path)
        except VirError as exc:
            log.warning("%s", exc.message)
            return
        await trio.to_thread.run_sync(_write_cache, cache_dir, path, key, caps)
        result[path] = caps

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(one, path)
    host = await trio.to_thread.run_sync(hostcpu.probe)
    firmware = await trio.to_thread.run_sync(descriptors)
    return QemuCaps({p: result[p] for p in paths if p in result}, host, firmware)


# -- host facts ---------------------------------------------------------------

def _read(path: str, default: str = "") -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        if not line.strip():
            break
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def _cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus += range(int(a), int(b) + 1)
        elif part.strip():
            cpus.append(int(part))
    return cpus


def _hugepage_sizes() -> list[int]:
    sizes = []
    try:
        for name in os.listdir("/sys/kernel/mm/hugepages"):
            sizes.append(int(name.removeprefix("hugepages-").removesuffix("kB")))
    except (OSError, ValueError):
        pass
    return sorted(sizes)


def _meminfo_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if key in line:
            return int(line.split(key, 1)[1].replace(":", " ").split()[0])
    return 0


def _cells() -> list[dict]:
    """NUMA cells from /sys/devices/system/node (one cell of everything when absent)."""
    base = "/sys/devices/system/node"
    ids = []
    try:
        ids = sorted(int(n[4:]) for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit())
    except OSError:
        pass
    cells = []
    for nid in ids or [0]:
        d = f"{base}/node{nid}"
        if ids:
            mem = _meminfo_kib(_read(f"{d}/meminfo"), "MemTotal")
            cpus = _cpulist(_read(f"{d}/cpulist"))
            dist = [int(x) for x in _read(f"{d}/distance").split()]
        else:
            mem = _meminfo_kib(_read("/proc/meminfo"), "MemTotal")
            cpus = list(range(os.cpu_count() or 1))
            dist = []
        pages = {4: mem // 4}
        for size in _hugepage_sizes():
            pages[size] = int(_read(f"{d}/hugepages/hugepages-{size}kB/nr_hugepages", "0") or 0)
        cells.append({"id": nid, "memory": mem, "pages": pages, "distances": dist, "cpus": cpus})
    return cells


def _cpu_topo(cpu: int) -> dict[str, str]:
    t = f"/sys/devices/system/cpu/cpu{cpu}/topology"
    return {"socket_id": _read(f"{t}/physical_package_id", "0"), "die_id": _read(f"{t}/die_id", "0"),
            "core_id": _read(f"{t}/core_id", "0"),
            "siblings": _read(f"{t}/thread_siblings_list", str(cpu))}


def _power_management() -> list[str]:
    states = _read("/sys/power/state").split()
    out = []
    if "mem" in states:
        out.append("suspend_mem")
    if "disk" in states:
        out.append("suspend_disk")
    if "mem" in states and "disk" in states:
        out.append("suspend_hybrid")
    return out


def _iommu() -> bool:
    try:
        return bool(os.listdir("/sys/kernel/iommu_groups"))
    except OSError:
        return False


# -- the collection and its XML ----------------------------------------------

@dataclass
class QemuCaps:
    binaries: dict[str, BinaryCaps] = field(default_factory=dict)
    host_cpu: hostcpu.HostCpu | None = None     # libvirt's naming of the host CPU
    firmware: list = field(default_factory=list)  # QEMU's firmware descriptors (firmware.py)

    def binary_for(self, arch: str) -> BinaryCaps | None:
        for caps in self.binaries.values():
            if caps.arch == arch:
                return caps
        if arch == "i686":     # libvirt: qemu-system-x86_64 also runs i686 guests
            return self.binary_for("x86_64")
        return None

    def guest_arches(self) -> list[tuple[str, BinaryCaps]]:
        arches = {c.arch: c for c in self.binaries.values()}
        if "x86_64" in arches and "i686" not in arches:
            arches["i686"] = arches["x86_64"]
        order = sorted(arches, key=lambda a: (a != "i686", a != "x86_64", a))
        return [(a, arches[a]) for a in order]
