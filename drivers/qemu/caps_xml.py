"""`virsh capabilities` and `virsh domcapabilities` XML from probed QEMU caps.

Element layout follows libvirt 9.0's qemu driver (src/conf/capabilities.c,
src/conf/domain_capabilities.c) and validates against its RelaxNG schemas
(capability.rng, domaincaps.rng).
"""

from __future__ import annotations

import fnmatch
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd import cpumap, hostinfo
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_libvirt

from . import caps as C

if TYPE_CHECKING:
    from .caps import BinaryCaps, QemuCaps


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.rstrip("_").replace("__", "-"): str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def _enum(parent: etree._Element, name: str, values: list[str]) -> None:
    e = _sub(parent, "enum", name=name)
    for v in values:
        _sub(e, "value", v)


def _tostring(root: etree._Element) -> str:
    return format_libvirt(root)


def host_arch() -> str:
    m = platform.machine()
    return {"i386": "i686", "i586": "i686", "amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def _host_cpu(host: etree._Element, qcaps: "QemuCaps") -> None:
    """The host CPU in libvirt's model and feature names (pyvirtd.hostcpu)."""
    arch = host_arch()
    cpu = _sub(host, "cpu")
    _sub(cpu, "arch", arch)
    hc = qcaps.host_cpu
    if hc is not None:
        _sub(cpu, "model", hc.model)
        if hc.vendor:
            _sub(cpu, "vendor", hc.vendor)
    info = C._cpuinfo()
    if info.get("microcode", "").startswith("0x") and int(info["microcode"], 16) > 0:
        _sub(cpu, "microcode", version=int(info["microcode"], 16))
    if hc is not None:
        _sub(cpu, "signature", family=hc.family, model=hc.model_number, stepping=hc.stepping)
        if hc.tsc_hz:
            _sub(cpu, "counter", name="tsc", frequency=hc.tsc_hz,
                 scaling="yes" if hc.tsc_scaling else "no")
    ncpu = os.cpu_count() or 1
    threads = len(C._cpulist(C._cpu_topo(0)["siblings"])) or 1
    sockets = len({C._cpu_topo(i)["socket_id"] for i in range(ncpu)}) or 1
    _sub(cpu, "topology", sockets=sockets, dies=1, cores=max(1, ncpu // sockets // threads),
         threads=threads)
    if hc is not None:
        if hc.phys_bits:
            _sub(cpu, "maxphysaddr", mode="emulate", bits=hc.phys_bits)
        for feat in hc.features:
            _sub(cpu, "feature", name=feat)
    for size in [4] + C._hugepage_sizes():
        _sub(cpu, "pages", unit="KiB", size=size)


def capabilities_xml(qcaps: "QemuCaps", host_uuid: str | None = None) -> str:
    root = etree.Element("capabilities")
    host = _sub(root, "host")
    _sub(host, "uuid", host_uuid or hostinfo.host_uuid())
    _host_cpu(host, qcaps)
    pm = _sub(host, "power_management")
    for state in C._power_management():
        _sub(pm, state)
    _sub(host, "iommu", support="yes" if C._iommu() else "no")
    mig = _sub(host, "migration_features")
    _sub(mig, "live")
    transports = _sub(mig, "uri_transports")
    _sub(transports, "uri_transport", "tcp")
    _sub(transports, "uri_transport", "rdma")
    cells = C._cells()
    topo = _sub(host, "topology")
    cells_el = _sub(topo, "cells", num=len(cells))
    for cell in cells:
        c = _sub(cells_el, "cell", id=cell["id"])
        _sub(c, "memory", cell["memory"], unit="KiB")
        for size, count in cell["pages"].items():
            _sub(c, "pages", count, unit="KiB", size=size)
        if cell["distances"]:
            dist = _sub(c, "distances")
            for nid, value in enumerate(cell["distances"]):
                _sub(dist, "sibling", id=nid, value=value)
        cpus = _sub(c, "cpus", num=len(cell["cpus"]))
        for cpu in cell["cpus"]:
            _sub(cpus, "cpu", id=cpu, **C._cpu_topo(cpu))
    banks = hostinfo.cache_banks()
    if banks:
        cache = _sub(host, "cache")
        for bank in banks:
            _sub(cache, "bank", **bank)
    sec = _sub(host, "secmodel")
    _sub(sec, "model", "none")
    _sub(sec, "doi", "0")
    dac = _sub(host, "secmodel")
    _sub(dac, "model", "dac")
    _sub(dac, "doi", "0")
    ids = f"+{os.getuid()}:+{os.getgid()}"
    _sub(dac, "baselabel", ids, type="kvm")
    _sub(dac, "baselabel", ids, type="qemu")

    kvm = C.kvm_usable()
    for arch, b in qcaps.guest_arches():
        guest = _sub(root, "guest")
        _sub(guest, "os_type", "hvm")
        a = _sub(guest, "arch", name=arch)
        _sub(a, "wordsize", C._WORDSIZE.get(arch, 64))
        _sub(a, "emulator", b.path)
        # the default machine first, as libvirt lists it (virt-install takes the first)
        for m in sorted(b.machines, key=lambda m: not m.default):
            if m.deprecated:
                _sub(a, "machine", m.name, maxCpus=m.max_cpus, deprecated="yes")
                continue
            _sub(a, "machine", m.name, maxCpus=m.max_cpus)
            if m.alias:
                _sub(a, "machine", m.alias, canonical=m.name, maxCpus=m.max_cpus)
        _sub(a, "domain", type="qemu")
        if kvm and b.kvm and arch in (host_arch(), "i686" if host_arch() == "x86_64" else host_arch()):
            _sub(a, "domain", type="kvm")
        feats = _sub(guest, "features")
        if arch == "i686":
            _sub(feats, "pae")
            _sub(feats, "nonpae")
        if arch in ("i686", "x86_64"):
            _sub(feats, "acpi", default="on", toggle="yes")
            _sub(feats, "apic", default="on", toggle="no")
        _sub(feats, "cpuselection")
        _sub(feats, "deviceboot")
        _sub(feats, "disksnapshot", default="on", toggle="no")
    # libvirt sets the host and each guest apart with an empty line
    text = _tostring(root).replace("<capabilities>\n", "<capabilities>\n\n", 1)
    return text.replace("  </host>\n", "  </host>\n\n").replace("  </guest>\n", "  </guest>\n\n")


def _select(qcaps: "QemuCaps", emulator: str | None, arch: str | None,
            virttype: str | None) -> tuple["BinaryCaps", str, str]:
    """libvirt's virQEMUCapsCacheLookupDefault: pick the binary, arch and virttype."""
    if virttype not in (None, "", "qemu", "kvm"):
        raise VirError(P.VIR_ERR_INVALID_ARG, f"unknown virttype: {virttype}", domain=P.VIR_FROM_QEMU)
    binary = None
    if emulator:
        binary = qcaps.binaries.get(emulator) or qcaps.binaries.get(os.path.realpath(emulator))
        if binary is None:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"Cannot find QEMU binary {emulator}: No such file or directory",
                           domain=P.VIR_FROM_QEMU)
        if arch and arch != binary.arch and not (arch == "i686" and binary.arch == "x86_64"):
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"architecture from emulator '{binary.arch}' doesn't match given "
                           f"architecture '{arch}'", domain=P.VIR_FROM_QEMU)
        arch = arch or binary.arch
    else:
        arch = arch or host_arch()
        binary = qcaps.binary_for(arch)
        if binary is None:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"unable to find any emulator to serve '{arch}' architecture",
                           domain=P.VIR_FROM_QEMU)
    kvm_ok = C.kvm_usable() and binary.kvm
    if not virttype:
        virttype = "kvm" if kvm_ok else "qemu"
    if virttype == "kvm" and not kvm_ok:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"KVM is not supported by '{binary.path}' on this host",
                       domain=P.VIR_FROM_QEMU)
    return binary, arch, virttype


def domain_capabilities_xml(qcaps: "QemuCaps", emulator: str | None = None, arch: str | None = None,
                            machine: str | None = None, virttype: str | None = None) -> str:
    binary, arch, virttype = _select(qcaps, emulator, arch, virttype)
    if machine:
        m = binary.canonical_machine(machine)
        if m is None:
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"the machine '{machine}' is not supported by emulator '{binary.path}'",
                           domain=P.VIR_FROM_QEMU)
    else:
        m = binary.canonical_machine(binary.default_machine() or "")
    root = etree.Element("domainCapabilities")
    _sub(root, "path", binary.path)
    _sub(root, "domain", virttype)
    if m is not None:
        _sub(root, "machine", m.name)
    _sub(root, "arch", arch)
    max_cpus = m.max_cpus if m else 1
    if virttype == "kvm" and m is not None:
        max_cpus = min(max_cpus, _kvm_max_vcpus())
    _sub(root, "vcpu", max=max_cpus)
    _sub(root, "iothreads", supported="yes" if binary.has_type("iothread") else "no")

    x86 = arch in ("x86_64", "i686")
    os_el = _sub(root, "os", supported="yes")
    # the UEFI images QEMU's firmware descriptors offer for this machine (firmware.py)
    fits = [d for d in qcaps.firmware
            if x86 and m is not None and "uefi" in d.interfaces and d.executable
            and any(a == arch and any(fnmatch.fnmatchcase(m.name, g) for g in globs)
                    for a, globs in d.targets)]
    _enum(os_el, "firmware", ["efi"] if fits else [])
    loader = _sub(os_el, "loader", supported="yes")
    for path in dict.fromkeys(d.executable for d in fits):
        _sub(loader, "value", path)
    _enum(loader, "type", ["rom", "pflash"])
    _enum(loader, "readonly", ["yes", "no"])
    _enum(loader, "secure", (["yes"] if any("secure-boot" in d.features for d in fits) else [])
          + ["no"])

    _cpu_modes(root, binary, virttype)

    mb = _sub(root, "memoryBacking", supported="yes")
    _enum(mb, "sourceType", ["file", "anonymous", "memfd"])

    devices = _sub(root, "devices")
    disk = _sub(devices, "disk", supported="yes")
    _enum(disk, "diskDevice", ["disk", "cdrom", "floppy", "lun"])
    buses = ["fdc", "scsi", "virtio", "usb", "sata"] if m and "q35" in m.name else \
        ["ide", "fdc", "scsi", "virtio", "usb", "sata"]
    _enum(disk, "bus", [b for b in buses if x86 or b not in ("fdc", "ide")])
    _enum(disk, "model", ["virtio", "virtio-transitional", "virtio-non-transitional"])
    graphics = _sub(devices, "graphics", supported="yes")
    # sdl: libvirt 9.0 lists it for QEMU 7.2 whether or not its module is installed
    gtypes = [t for t, dev in (("sdl", None), ("vnc", None), ("spice", None),
                               ("egl-headless", None), ("dbus", None))
              if t == "sdl" and x86 or _has_display(binary, t)]
    _enum(graphics, "type", gtypes)
    video = _sub(devices, "video", supported="yes")
    vmodels = [name for name, qtype in (("vga", "VGA"), ("cirrus", "cirrus-vga"), ("vmvga", "vmware-svga"),
                                        ("qxl", "qxl-vga"), ("virtio", "virtio-vga"), ("none", None),
                                        ("bochs", "bochs-display"), ("ramfb", "ramfb"))
               if qtype is None or binary.has_type(qtype)]
    _enum(video, "modelType", vmodels)
    hostdev = _sub(devices, "hostdev", supported="yes")
    _enum(hostdev, "mode", ["subsystem"])
    _enum(hostdev, "startupPolicy", ["default", "mandatory", "requisite", "optional"])
    _enum(hostdev, "subsysType", ["usb", "pci", "scsi"])
    _enum(hostdev, "capsType", [])
    _enum(hostdev, "pciBackend", ["default", "vfio"] if os.path.exists("/dev/vfio/vfio") else [])
    rng = _sub(devices, "rng", supported="yes")
    _enum(rng, "model", ["virtio", "virtio-transitional", "virtio-non-transitional"])
    _enum(rng, "backendModel", ["random", "egd", "builtin"])
    fs = _sub(devices, "filesystem", supported="yes")
    _enum(fs, "driverType", ["path", "handle", "virtiofs"])
    tpm = _sub(devices, "tpm", supported="yes" if binary.has_type("tpm-crb") or binary.has_type("tpm-tis") else "no")
    if tpm.get("supported") == "yes":
        _enum(tpm, "model", [n for n, t in (("tpm-tis", "tpm-tis"), ("tpm-crb", "tpm-crb"))
                             if binary.has_type(t)])
        _enum(tpm, "backendModel", ["passthrough", "emulator", "external"])
        _enum(tpm, "backendVersion", ["1.2", "2.0"])
    redir = _sub(devices, "redirdev", supported="yes" if binary.has_type("usb-redir") else "no")
    if redir.get("supported") == "yes":
        _enum(redir, "bus", ["usb"])
    channel = _sub(devices, "channel", supported="yes")
    _enum(channel, "type", ["pty", "unix"] + (["spicevmc"] if binary.has_type("chardev-spicevmc") else []))

    feats = _sub(root, "features")
    _sub(feats, "gic", supported="no")
    _sub(feats, "vmcoreinfo", supported="yes" if binary.has_type("vmcoreinfo") else "no")
    _sub(feats, "genid", supported="yes" if binary.has_type("vmgenid") else "no")
    _sub(feats, "backingStoreInput", supported="yes")
    _sub(feats, "backup", supported="yes" if "blockdev-backup" in binary.commands else "no")
    _sub(feats, "sev", supported="no")
    _sub(feats, "sgx", supported="no")
    if x86:
        hyperv = _sub(feats, "hyperv", supported="yes")
        _enum(hyperv, "features", ["spinlocks", "vendor_id"])
    return _tostring(root)


def _has_display(binary: "BinaryCaps", kind: str) -> bool:
    # QEMU lists its display backends only via query-display-options; the modules
    # Debian ships are what decides, so look for the module files.
    if kind == "vnc":
        return True
    if kind == "dbus":
        return "dbus-vmstate" in binary.types or os.path.exists("/usr/lib/x86_64-linux-gnu/qemu/ui-dbus.so")
    mod = {"sdl": "ui-sdl.so", "spice": "ui-spice-core.so", "egl-headless": "ui-egl-headless.so"}[kind]
    return any(os.path.exists(os.path.join(d, mod)) for d in ("/usr/lib/x86_64-linux-gnu/qemu",
                                                              "/usr/lib/qemu", "/usr/lib64/qemu"))


def _kvm_max_vcpus() -> int:
    # KVM_CAP_MAX_VCPUS needs an ioctl; x86 KVM has allowed 1024 (4096 since 6.x)
    # and QEMU's machine cpu-max is the tighter bound in practice.
    return 1024


def _host_model(props: dict, defs: list) -> cpumap.Decoded | None:
    """QEMU's host model named as libvirt names it: its features decoded with
    libvirt's CPU map among the models QEMU offers (each with the features that
    block it here disabled)."""
    try:
        xmap = cpumap.x86_map()
        data, vendor, signature = cpumap.qemu_model_data(props, xmap)
        allowed = {d.name: [xmap.qemu_names.get(b, b) for b in d.blockers] for d in defs}
        return cpumap.decode_guest(data, vendor, None, xmap, allowed=allowed,
                                   signature=signature, penalise=False)
    except VirError:
        return None


@dataclass
class HypervisorCpu:
    """What QEMU offers guests of one virttype, in libvirt's names: its host
    model (None if it has none), its CPU models with the features that block
    each, and every feature QEMU knows (a baseline stays within them)."""
    host_model: cpumap.Decoded | None
    models: dict[str, list[str]]
    features: cpumap.Data


def hypervisor_cpu(qcaps: "QemuCaps", emulator: str | None, arch: str | None,
                   virttype: str | None) -> HypervisorCpu:
    """For Compare/BaselineHypervisorCPU: the binary and virttype chosen as
    domcapabilities chooses them (libvirt's errors for a wrong one)."""
    binary, arch, virttype = _select(qcaps, emulator, arch, virttype)
    accel = "kvm" if virttype == "kvm" else "tcg"
    defs = binary.cpu_defs.get(accel) or binary.cpu_defs.get("tcg") or []
    props = binary.host_models.get(accel)
    xmap = cpumap.x86_map()
    return HypervisorCpu(
        host_model=_host_model(props, defs) if props else None,
        models={d.name: [xmap.qemu_names.get(b, b) for b in d.blockers] for d in defs},
        features=cpumap.qemu_model_data({k: True for k, v in props.items()
                                         if isinstance(v, bool)}, xmap)[0] if props else {})


def _cpu_modes(root: etree._Element, binary: "BinaryCaps", virttype: str) -> None:
    accel = "kvm" if virttype == "kvm" else "tcg"
    cpu = _sub(root, "cpu")
    hp = _sub(cpu, "mode", name="host-passthrough", supported="yes" if virttype == "kvm" else "no")
    if virttype == "kvm":
        _enum(hp, "hostPassthroughMigratable", ["on", "off"])
    mx = _sub(cpu, "mode", name="maximum", supported="yes")
    _enum(mx, "maximumMigratable", ["on", "off"])
    defs = binary.cpu_defs.get(accel) or binary.cpu_defs.get("tcg") or []
    hm_props = binary.host_models.get(accel)
    host_model = _host_model(hm_props, defs) if hm_props else None
    hm = _sub(cpu, "mode", name="host-model", supported="yes" if host_model else "no")
    if host_model:
        _sub(hm, "model", host_model.model, fallback="forbid")
        if host_model.vendor:
            _sub(hm, "vendor", host_model.vendor)
        for feat in host_model.features:
            _sub(hm, "feature", policy="require", name=feat)
        for feat in host_model.disabled:
            _sub(hm, "feature", policy="disable", name=feat)
    custom = _sub(cpu, "mode", name="custom", supported="yes" if defs else "no")
    # libvirt lists the models of its CPU map that QEMU knows, in QEMU's order
    x86 = binary.arch in ("x86_64", "i686")
    for d in defs:
        if x86 and d.name not in C.X86_MODELS:
            continue
        attrs = {"usable": "yes" if d.usable else "no"}
        if d.deprecated:
            attrs["deprecated"] = "yes"
        attrs["vendor"] = C._vendor_of(d.name)
        _sub(custom, "model", d.name, **attrs)
