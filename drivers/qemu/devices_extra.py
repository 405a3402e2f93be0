"""QEMU command-line pieces for the smaller device kinds: <panic>, <vsock>, <iommu>, <hub>,
<shmem>, <smartcard> with its CCID controller, and the vhost-vsock fd a guest's
vsock device needs (qemuBuild*CommandLine).

Each ``*_args`` returns the arguments for one device; ``b`` is command.py's
builder (a devprops.Placement with ``add``).  Options are QEMU 7.2's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml.devices import Chardev, Controller, Hub, Iommu, Panic, Shmem, Smartcard, Vsock

from .devprops import ArgvBuilder, opts, unsupported

VHOST_VSOCK = "/dev/vhost-vsock"
# _IOW(VHOST_VIRTIO=0xAF, 0x60, __u64): VHOST_VSOCK_SET_GUEST_CID
_VHOST_VSOCK_SET_GUEST_CID = (1 << 30) | (8 << 16) | (0xAF << 8) | 0x60
_FIRST_GUEST_CID = 3          # 0-2 are the hypervisor's and the host's
_MAX_AUTO_CID = 1 << 16


def iommu_args(b: ArgvBuilder, dev: Iommu) -> list[str]:
    """-device intel-iommu with its <driver> switches (interrupt remapping's split
    irqchip, <ioapic driver='qemu'/>, is checked at define: Iommu.validate)."""
    drv = dev.driver
    return ["-device", opts("intel-iommu", ("id", b.alias(dev)),
                             ("intremap", drv.get("intremap")),
                             ("caching-mode", drv.get("caching_mode")),
                             ("eim", drv.get("eim")), ("device-iotlb", drv.get("iotlb")),
                             ("aw-bits", drv.get("aw_bits")))]


def panic_args(b: ArgvBuilder, dev: Panic) -> list[str]:
    if dev.model == "pvpanic":
        return ["-device", opts("pvpanic-pci", *b.pci(dev))]
    return ["-device", opts("pvpanic", ("ioport", dev.iobase))]


def hub_args(b: ArgvBuilder, dev: Hub) -> list[str]:
    return ["-device", opts("usb-hub", ("id", b.alias(dev)), *b.usb(dev))]


def smartcard_args(b: ArgvBuilder, devs: list, chardev_backend) -> None:
    """The CCID controllers (usb-ccid, after the USB controllers) and the cards in
    their slots; ``chardev_backend(dev, id)`` is command.py's -chardev builder."""
    for c in devs:
        if isinstance(c, Controller) and c.type == "ccid":
            b.add("-device", opts("usb-ccid", ("id", b.alias(c)), *b.usb(c)))
    for card in devs:
        if not isinstance(card, Smartcard):
            continue
        alias = b.alias(card)
        a = card.address
        ctl = a.int("controller") if a is not None else 0
        if card.chardev_type == "spicevmc":          # the SPICE channel for smartcards
            backend = opts("spicevmc", ("id", f"char{alias}"), ("name", "smartcard"))
        else:
            chr_dev = Chardev(kind="smartcard", type=card.chardev_type, sources=card.sources,
                              protocol=card.protocol)
            backend = chardev_backend(chr_dev, f"char{alias}")
        b.add("-chardev", backend)
        b.add("-device", opts("ccid-card-passthru", ("chardev", f"char{alias}"), ("id", alias),
                              ("bus", f"ccid{ctl}.0")))


def shmem_path(dev: Shmem) -> str:
    """The shared file ivshmem-plain maps: the same name for every guest sharing it."""
    return f"/dev/shm/{dev.name}"


def shmem_args(b: ArgvBuilder, dev: Shmem) -> list[str]:
    size = dev.size
    if size == 0 or size & (size - 1):
        raise unsupported("shmem size must be a power of two")
    alias = b.alias(dev)
    role = dev.attrs.get("role")
    return ["-object", opts("memory-backend-file", ("id", f"shmmem-{alias}"),
                             ("mem-path", shmem_path(dev)), ("size", dev.size), ("share", True)),
            "-device", opts("ivshmem-plain", ("id", alias), ("memdev", f"shmmem-{alias}"),
                             ("master", {"master": True, "peer": False}.get(role or "")),
                             *b.pci(dev))]


def vsock_args(b: ArgvBuilder, dev: Vsock, vhostfd: int | None) -> list[str]:
    if vhostfd is None or dev.cid is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, "vsock device has no vhost fd",
                       domain=P.VIR_FROM_QEMU)
    driver = {"virtio-transitional": "vhost-vsock-pci-transitional",
              "virtio-non-transitional": "vhost-vsock-pci-non-transitional"}.get(
        dev.attrs.get("model", ""), "vhost-vsock-pci")
    return ["-device", opts(driver, ("id", b.alias(dev)), ("guest-cid", dev.cid),
                             ("vhostfd", vhostfd), *b.pci(dev))]


def _set_cid(fd: int, cid: int) -> bool:
    try:
        fcntl.ioctl(fd, _VHOST_VSOCK_SET_GUEST_CID, struct.pack("Q", cid))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return False
        raise
    return True


def open_vsock(live) -> int | None:
    """For a guest with a <vsock>: an fd of /dev/vhost-vsock bound to its context id
    (the next free one from 3 with auto='yes'), written into the live
    definition as libvirt does; None without one.  Blocking: call in a thread."""
    devs = devmod.parse_devices(live)
    vsock = next((d for d in devs if isinstance(d, Vsock)), None)
    if vsock is None:
        return None
    devmod.validate_devices(live)      # what cannot run is refused before the host is asked
    try:
        fd = os.open(VHOST_VSOCK, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"unable to open vhost-vsock device: {exc.strerror}",
                       domain=P.VIR_FROM_QEMU) from None
    try:
        if vsock.auto_cid:
            cid = next((c for c in range(vsock.cid or _FIRST_GUEST_CID, _MAX_AUTO_CID)
                        if _set_cid(fd, c)), None)
            if cid is None:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR, "unable to find a free vsock guest cid",
                               domain=P.VIR_FROM_QEMU)
        else:
            cid = vsock.cid
            if not _set_cid(fd, cid):
                raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                               f"failed to set guest cid: {os.strerror(errno.EADDRINUSE)}",
                               domain=P.VIR_FROM_QEMU)
    except BaseException:
        os.close(fd)
        raise
    vsock.set_cid(cid)
    live.devices = [vsock.to_element() if getattr(e, "tag", None) == "vsock" else e
                    for e in live.devices]
    return fd
