"""The host CPU as libvirt reports it in `virsh capabilities` (x86).

libvirt names the host CPU from the CPUID instruction (and, where it can read
it, the IA32_ARCH_CAPABILITIES MSR) with its own CPU map, not from what QEMU
calls the CPU: clients such as nova feed that definition back into
baselineCPU/compareCPU, which only know libvirt's model and feature names.
CPUID is read through the kernel's /dev/cpu/0/cpuid; the MSR through
/dev/cpu/0/msr or KVM's feature-MSR interface, as libvirt does.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import struct

from pyvirtd import cpumap
from pyvirtd.errors import VirError

CPUID_DEV = "/dev/cpu/0/cpuid"
MSR_DEV = "/dev/cpu/0/msr"
KVM_DEV = "/dev/kvm"
ARCH_CAPABILITIES_MSR = 0x10A

# <linux/kvm.h>: _IO/_IOW/_IOWR(KVMIO = 0xAE, ...)
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CREATE_VCPU = 0xAE41
KVM_GET_TSC_KHZ = 0xAEA3
KVM_GET_MSRS = 0xC008AE88                 # _IOWR(KVMIO, 0x88, struct kvm_msrs)
KVM_CAP_TSC_CONTROL = 60
KVM_CAP_GET_MSR_FEATURES = 153


@dataclasses.dataclass
class HostCpu:
    model: str
    vendor: str | None
    family: int
    model_number: int
    stepping: int
    phys_bits: int | None
    features: list[str]
    tsc_hz: int | None = None
    tsc_scaling: bool | None = None


def _cpuid_reader(fd: int):
    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        return struct.unpack("<4I", os.pread(fd, 16, leaf | (sub << 32)))
    return cpuid


def read_cpuid(xmap: cpumap.X86Map) -> cpumap.Data:
    """The CPUID registers the map's features and vendors are defined by."""
    fd = os.open(CPUID_DEV, os.O_RDONLY | os.O_CLOEXEC)
    try:
        cpuid = _cpuid_reader(fd)
        max_basic = cpuid(0)[0]
        max_ext = cpuid(0x80000000)[0]
        wanted = {(0, 0), (1, 0)} | {
            (k[1], k[2]) for _, fdata in xmap.features for k in fdata if k[0] == "cpuid"}
        data: cpumap.Data = {}
        for leaf, sub in sorted(wanted):
            top = max_ext if leaf >= 0x80000000 else max_basic
            if leaf > top:
                continue              # beyond the range the CPU answers
            if leaf == 7 and sub > cpuid(7)[0]:
                continue              # sub-leaves of 7 stop at leaf 7.0's EAX
            for reg, value in zip(("eax", "ebx", "ecx", "edx"), cpuid(leaf, sub)):
                if value:
                    data[("cpuid", leaf, sub, reg)] = value
        return data
    finally:
        os.close(fd)


def _msr_from_kvm(index: int) -> int | None:
    fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    try:
        if fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_GET_MSR_FEATURES) <= 0:
            return None
        buf = bytearray(struct.pack("<II IIQ", 1, 0, index, 0, 0))
        if fcntl.ioctl(fd, KVM_GET_MSRS, buf, True) != 1:
            return None
        return struct.unpack_from("<Q", buf, 16)[0]
    finally:
        os.close(fd)


def read_msr(index: int) -> int | None:
    """An MSR's value, or None where this process cannot read it (not root)."""
    try:
        fd = os.open(MSR_DEV, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return struct.unpack("<Q", os.pread(fd, 8, index))[0]
        finally:
            os.close(fd)
    except OSError:
        pass
    try:
        return _msr_from_kvm(index)
    except OSError:
        return None


def tsc_info() -> tuple[int, bool] | None:
    """The TSC frequency (Hz) KVM gives guests and whether KVM can scale it."""
    try:
        kvm = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    vm = vcpu = -1
    try:
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        khz = fcntl.ioctl(vcpu, KVM_GET_TSC_KHZ, 0)
        scaling = fcntl.ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0
        return (khz * 1000, scaling) if khz > 0 else None
    except OSError:
        return None
    finally:
        for fd in (vcpu, vm, kvm):
            if fd >= 0:
                os.close(fd)


def probe() -> HostCpu | None:
    """The host CPU, or None where CPUID cannot be read (not x86, no cpuid device)."""
    try:
        xmap = cpumap.x86_map()
        data = read_cpuid(xmap)
    except (OSError, VirError):
        return None
    arch_caps = xmap.feature("arch-capabilities")
    if arch_caps and cpumap.contains(data, arch_caps):
        value = read_msr(ARCH_CAPABILITIES_MSR)
        if value:
            for reg, bits in (("eax", value & 0xFFFFFFFF), ("edx", value >> 32)):
                if bits:
                    data[("msr", ARCH_CAPABILITIES_MSR, reg)] = bits
    try:
        decoded = cpumap.decode_host(data, xmap)
    except VirError:
        return None
    family, model, stepping = cpumap.signature_of(data)
    phys = data.get(("cpuid", 0x80000008, 0, "eax"))
    cpu = HostCpu(decoded.model, decoded.vendor, family, model, stepping,
                  phys & 0xFF if phys else None, decoded.features)
    invtsc = xmap.feature("invtsc")
    if invtsc and cpumap.contains(data, invtsc):
        tsc = tsc_info()
        if tsc:
            cpu.tsc_hz, cpu.tsc_scaling = tsc
    return cpu
