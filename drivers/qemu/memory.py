"""Guest memory on QEMU's command line: its size and hotplug room (-m), the NUMA
nodes of <cpu><numa> with their memory backends, and <memory model='dimm'>
devices (qemuBuildMemCommandLine, qemuBuildNumaCommandLine,
qemuBuildMemoryDeviceCommandLine); libvirt's checks of memory hotplug, and the
hotplug of a DIMM into a running guest (attach_live).

With NUMA cells the guest's initial memory is the cells' sum and <memory> is
that plus the DIMMs (libvirt's virDomainDefPostParseMemory), so a definition
with DIMMs shows the total.  Sizes are rounded up as libvirt does on x86 before
QEMU starts: NUMA cells to 1 MiB, DIMMs to 2 MiB.
"""

from __future__ import annotations

import trio
from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml.devices import Memory

from .devprops import ArgvBuilder, opts, unsupported

CELL_ALIGN_KIB = 1024        # qemuDomainGetMemorySizeAlignment on x86
DIMM_ALIGN_KIB = 2048        # qemuDomainGetMemoryModuleSizeAlignment on x86


def _align(kib: int, step: int) -> int:
    return -(-kib // step) * step


def cells(defn) -> list[etree._Element]:
    cpu = defn.raw.get("cpu")
    numa = cpu.find("numa") if cpu is not None else None
    return numa.findall("cell") if numa is not None else []


def _cell_kib(cell: etree._Element) -> int:
    from pyvirtd.xml.domain import parse_memory
    return parse_memory(cell, "./cpu/numa/cell/@memory", attr="memory")


def max_memory(defn) -> tuple[int, int] | None:
    """(maximum KiB, slots) of <maxMemory>, if any."""
    elem = defn.raw.get("maxMemory")
    if elem is None:
        return None
    from pyvirtd.xml.domain import parse_memory
    return parse_memory(elem, "./maxMemory[1]"), int(elem.get("slots") or 0)


def memory_devices(defn) -> list[Memory]:
    return [d for d in devmod.parse_devices(defn) if isinstance(d, Memory)]


def dimms(defn) -> list[Memory]:
    """The memory devices that take a slot."""
    return [m for m in memory_devices(defn) if m.model == "dimm"]


def fill_defaults(defn) -> None:
    """libvirt's post-parse: DIMMs get slots; with NUMA cells, <memory> is their sum
    plus the memory devices'; refused when memory devices need more than <memory> has."""
    at = [i for i, e in enumerate(defn.devices) if getattr(e, "tag", None) == "memory"]
    mems = [Memory.parse(defn.devices[i]) for i in at]
    limit = max_memory(defn)
    if mems and limit is not None:
        assign_slots([m for m in mems if m.model == "dimm"], limit[1])
        for i, mem in zip(at, mems):
            defn.devices[i] = mem.to_element()
    plugged = sum(m.size for m in mems)
    numa = cells(defn)
    if numa:
        total = sum(_cell_kib(c) for c in numa) + plugged
        if defn.current_memory == defn.memory or defn.current_memory > total:
            defn.current_memory = total
        defn.memory = total
    elif plugged and defn.memory <= plugged:
        raise VirError(P.VIR_ERR_XML_ERROR, "Total size of memory devices exceeds the total "
                       "memory size", domain=P.VIR_FROM_DOMAIN)


def validate_hotplug(defn) -> None:
    """libvirt's define-time checks of memory hotplug (qemuValidateDomainDefMemory)."""
    mems = memory_devices(defn)
    limit = max_memory(defn)
    if limit is None:
        if mems:
            raise unsupported("cannot use/hotplug a memory device when domain 'maxMemory' "
                              "is not defined")
        return
    maximum, slots = limit
    if not cells(defn):
        raise unsupported("At least one numa node has to be configured when enabling memory "
                          "hotplug")
    if slots == 0:
        raise unsupported("memory hotplug requires at least one memory slot")
    if len(mems) > slots:
        raise unsupported(f"memory device count '{len(mems)}' exceeds slots count '{slots}'")
    if defn.memory > maximum:
        raise VirError(P.VIR_ERR_XML_ERROR, "maximum memory size must be equal or greater than "
                       "the actual memory size", domain=P.VIR_FROM_DOMAIN)
    for m in mems:
        if m.node is not None and m.node >= len(cells(defn)):
            raise _node_missing(m.node, len(cells(defn)))


def _node_missing(node: int, count: int) -> VirError:
    return VirError(P.VIR_ERR_XML_DETAIL, f"can't add memory backend for guest node '{node}' "
                    f"as the guest has only '{count}' NUMA nodes configured",
                    domain=P.VIR_FROM_DOMAIN)


def _cpus(spec: str) -> list[str]:
    """cpus='0-1,3' -> the ranges of QEMU's repeated cpus= (no exclusions: libvirt
    expands them; a cell naming one is left to QEMU's defaults)."""
    return [part.strip() for part in spec.split(",") if part.strip() and "^" not in part]


def shared_default(defn) -> bool:
    """<memoryBacking><access mode='shared'/>: memory another process may map."""
    backing = defn.raw.get("memoryBacking")
    access = backing.find("access") if backing is not None else None
    return access is not None and access.get("mode") == "shared"


def machine_backend(defn) -> str | None:
    """The -machine memory-backend: shared memory without NUMA cells is one backend
    object, pc.ram (libvirt's qemuBuildMemCommandLine)."""
    return "pc.ram" if shared_default(defn) and not cells(defn) else None


def size_args(b: ArgvBuilder) -> None:
    """-m: the initial memory, and the room for hotplug; the pc.ram backend when
    the memory is shared (memfd: any process handed it can map it)."""
    defn = b.defn
    numa = cells(defn)
    if numa:
        initial = sum(_align(_cell_kib(c), CELL_ALIGN_KIB) for c in numa)
    else:
        initial = defn.current_memory if defn.memory == 0 else defn.memory
    pairs: list[tuple[str, object]] = []
    limit = max_memory(defn)
    if limit is not None:
        pairs = [("slots", limit[1]), ("maxmem", f"{limit[0]}k")]
    b.add("-m", opts(f"size={initial}k", *pairs))
    if machine_backend(defn):
        b.add("-object", opts("memory-backend-memfd", ("id", "pc.ram"), ("share", True),
                              ("size", initial * 1024)))


def numa_args(b: ArgvBuilder) -> None:
    """The NUMA nodes and their memory backends, then the DIMMs (virtio_mem_args
    comes later: its devices sit on PCI buses)."""
    for n, cell in enumerate(cells(b.defn)):
        node = int(cell.get("id", n))
        shared = (cell.get("memAccess") or ("shared" if shared_default(b.defn) else None)) \
            == "shared"
        size = _align(_cell_kib(cell), CELL_ALIGN_KIB) * 1024
        b.add("-object", opts("memory-backend-memfd" if shared else "memory-backend-ram",
                              ("id", f"ram-node{node}"), ("size", size),
                              ("share", True if shared else None)))
        spec = ",".join(f"cpus={cpus}" for cpus in _cpus(cell.get("cpus", "")))
        b.add("-numa", ",".join(filter(None, ["node", f"nodeid={node}", spec,
                                               f"memdev=ram-node{node}"])))
    for slot, mem in enumerate(dimms(b.defn)):
        alias = b.alias(mem)
        a = mem.address
        b.add("-object", opts("memory-backend-ram", ("id", f"mem{alias}"),
                              ("size", _align(mem.size, DIMM_ALIGN_KIB) * 1024)))
        b.add("-device", opts("pc-dimm", ("node", mem.node), ("memdev", f"mem{alias}"),
                              ("id", alias),
                              ("slot", a.int("slot") if a is not None and "slot" in a.attrs
                               else slot),
                              ("addr", a.int("base") if a is not None and "base" in a.attrs
                               else None)))


def assign_slots(mems: list[Memory], slots: int | None = None) -> None:
    """<address type='dimm' slot=N/> for each DIMM: the next free slot (below
    ``slots`` when given, else libvirt's internal error)."""
    for mem, slot in list(devmod.free_slots(mems)):
        if slots is not None and slot >= slots:
            raise _no_slot()
        mem.address = devmod.Address("dimm", {"slot": str(slot)})


def _no_slot() -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR, "failed to find an empty memory slot",
                    domain=P.VIR_FROM_QEMU)


def _free_slot(mems: list[Memory], slots: int) -> int:
    used = {m.address.int("slot") for m in mems if m.address is not None}
    free = next((s for s in range(slots) if s not in used), None)
    if free is None:
        raise _no_slot()
    return free


async def attach_live(dom, elem: etree._Element) -> str:
    """Hotplug a DIMM into a running guest (qemuDomainAttachMemory): its backend with
    object-add, then the pc-dimm; the live definition gets it, with a slot and
    alias dimmN, and its size is added to the guest's memory.  Returns the alias."""
    live = dom.definition
    mem = Memory.parse(elem)
    mem.fill_defaults()
    mem.validate()
    if mem.model != "dimm":
        raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       f"live attach of memory model '{mem.model}' is not supported",
                       domain=P.VIR_FROM_QEMU)
    limit = max_memory(live)
    if limit is None:
        raise unsupported("cannot use/hotplug a memory device when domain 'maxMemory' is not "
                          "defined")
    numa = cells(live)
    if mem.node is not None and mem.node >= len(numa):
        raise _node_missing(mem.node, len(numa))
    size = _align(mem.size, DIMM_ALIGN_KIB)
    if live.memory + size > limit[0]:
        raise unsupported(f"Attaching memory device with size '{size}KiB' would exceed "
                          f"domain's maxMemory config size '{limit[0]}KiB'")
    slot = _free_slot(dimms(live), limit[1])
    alias = f"dimm{slot}"
    mon = dom.monitor
    await mon.execute("object-add", {"qom-type": "memory-backend-ram", "id": f"mem{alias}",
                                     "size": size * 1024})
    props: dict = {"driver": "pc-dimm", "memdev": f"mem{alias}", "id": alias, "slot": slot}
    if mem.node is not None:
        props["node"] = mem.node
    try:
        await mon.device_add(props)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await mon.execute("object-del", {"id": f"mem{alias}"})
            except VirError:
                pass
        raise
    mem.alias = alias
    mem.address = devmod.Address("dimm", {"slot": str(slot)})
    same = [i for i, d in enumerate(live.devices) if getattr(d, "tag", None) == "memory"]
    live.devices.insert(same[-1] + 1 if same else len(live.devices), mem.to_element())
    live.memory += size
    live.current_memory += size
    return alias


def attach_config(defn, elem: etree._Element) -> None:
    """--config attach of a memory device: added with a slot, the total grows, and
    libvirt's hotplug checks apply."""
    mem = Memory.parse(elem)
    mem.fill_defaults()
    mem.validate()
    same = [i for i, d in enumerate(defn.devices) if getattr(d, "tag", None) == "memory"]
    defn.devices.insert(same[-1] + 1 if same else len(defn.devices), mem.to_element())
    fill_defaults(defn)
    validate_hotplug(defn)


def virtio_mem_args(b: ArgvBuilder) -> None:
    """virtio-mem devices, with their backends: PCI devices, after the controllers."""
    for mem in memory_devices(b.defn):
        if mem.model == "virtio-mem":
            alias = b.alias(mem)
            b.add("-object", opts("memory-backend-ram", ("id", f"mem{alias}"), ("reserve", False),
                                  ("size", mem.size * 1024)))
            b.add("-device", opts("virtio-mem-pci", ("node", mem.node),
                                  ("block-size", mem.block * 1024),
                                  ("requested-size", mem.requested * 1024),
                                  ("memdev", f"mem{alias}"), ("id", alias), *b.pci(mem)))
