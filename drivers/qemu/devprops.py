"""QEMU device properties that the command line (command.py) and hotplug (hotplug.py) share.

A device started with the guest (``-device driver,prop=...``) and the same
device hotplugged later (QMP ``device_add`` with a dict) must get the same
driver, id and placement, so both build them here: `Placement` knows a
guest's controllers and puts a device on its bus (PCI slot, USB port, drive
address), `device_alias` gives libvirt's alias, `disk_bus` and
`error_policy_props` a disk's properties.  Each returns (name, value) pairs;
a None value means "leave QEMU's default".
"""

from __future__ import annotations

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml.devices import (Chardev, Controller, Disk, Filesystem, Graphics, Hub, Input,
                                 Interface, Iommu, Memballoon, Memory, Redirdev, Rng, Shmem,
                                 Smartcard, Sound, Tpm, Video, Vsock, Watchdog)
from pyvirtd.xml.platform import Platform, platform

# libvirt's SCSI controller models -> QEMU device (qemuBuildControllerSCSIDevStr)
SCSI_MODELS = {"lsilogic": "lsi", "virtio-scsi": "virtio-scsi-pci", "lsisas1068": "mptsas1068",
               "lsisas1078": "megasas-gen2", "vmpvscsi": "pvscsi", "auto": "lsi",
               "am53c974": "am53c974", "dc390": "dc390",
               "virtio-transitional": "virtio-scsi-pci-transitional",
               "virtio-non-transitional": "virtio-scsi-pci-non-transitional"}


def unsupported(detail: str) -> VirError:
    return VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, detail, domain=P.VIR_FROM_QEMU)


def device_alias(dev, counters: dict[str, int], q35: bool) -> str:
    """libvirt's alias for a device (qemuAssignDeviceAliases); counters per kind."""
    if dev.alias:
        return dev.alias
    if isinstance(dev, Disk):
        a = dev.address
        if dev.bus in ("ide", "sata", "scsi") and a is not None and a.type == "drive":
            ctl, bus, unit = a.int("controller"), a.int("bus"), a.int("unit")
            if dev.bus == "scsi":
                return f"scsi{ctl}-{bus}-{a.int('target')}-{unit}"
            return f"{dev.bus}{ctl}-{bus}-{unit}"
        prefix = {"virtio": "virtio-disk", "usb": "usb-disk"}.get(dev.bus, dev.bus)
        return f"{prefix}{dev.index}"
    if isinstance(dev, Memory) and dev.address is not None and dev.address.type == "dimm":
        return f"dimm{dev.address.int('slot')}"      # by slot (qemuAssignDeviceMemoryAlias)
    if isinstance(dev, Memory) and dev.model == "virtio-mem":
        n = counters.get("virtiomem", 0)
        counters["virtiomem"] = n + 1
        return f"virtiomem{n}"
    if isinstance(dev, Controller):
        if dev.type == "sata" and dev.index == 0 and q35:
            return "ide"
        if dev.type == "pci" and dev.index == 0:
            return "pcie.0" if q35 else "pci.0"
        return dev.qemu_id
    kind = {Interface: "net", Input: "input", Video: "video", Memballoon: "balloon",
            Rng: "rng", Watchdog: "watchdog", Graphics: "graphics", Sound: "sound",
            Redirdev: "redir", Hub: "hub", Shmem: "shmem", Vsock: "vsock",
            Iommu: "iommu", Tpm: "tpm", Memory: "dimm", Filesystem: "fs",
            Smartcard: "smartcard"}.get(type(dev))
    if isinstance(dev, Chardev):
        kind = dev.kind
        if kind == "console" and dev.target_type in (None, "serial"):
            return f"serial{dev.target_port or 0}"     # the alias of serial port 0
        if kind in ("serial", "parallel", "console") and dev.target_port is not None:
            return f"{kind}{dev.target_port}"
    n = counters.get(kind, 0)
    counters[kind] = n + 1
    return f"{kind}{n}"


class Placement:
    """Where a guest's devices go: aliases, USB ports, PCI slots, its controllers."""

    def __init__(self, defn, plat: Platform, q35: bool) -> None:
        self.defn, self.plat, self.q35 = defn, plat, q35
        self.counters: dict[str, int] = {}
        self.controllers: dict[tuple[str, int], Controller] = {}

    @classmethod
    def for_live(cls, live: domxml.DomainDef) -> "Placement":
        """Over a running guest's controllers: place one hotplugged device as at start."""
        p = cls(live, platform(live), devmod.is_q35(live.machine))
        for dev in devmod.parse_devices(live):
            if isinstance(dev, Controller):
                p.controllers.setdefault((dev.type, dev.index), dev)
        return p

    def alias(self, dev) -> str:
        return device_alias(dev, self.counters, self.q35)

    def usb(self, dev) -> list[tuple[str, object]]:
        """bus=/port= for a device on a USB bus (its <address type='usb'>, or bus 0)."""
        a = dev.address
        if a is None or a.type != "usb":
            return [("bus", "usb.0")]
        bus = a.int("bus")
        return [("bus", f"usb{bus}.0" if bus else "usb.0"), ("port", a.attrs.get("port"))]

    def pci(self, dev) -> list[tuple[str, object]]:
        """bus=/addr= for a device with a PCI <address>; nothing lets QEMU place it."""
        a = dev.address
        if a is None or a.type != "pci":
            return []
        if a.int("domain") != 0:
            raise unsupported("PCI domains other than 0 are not supported")
        bus = a.int("bus")
        busname = ("pcie.0" if self.q35 else "pci.0") if bus == 0 else f"pci.{bus}"
        addr = f"0x{a.int('slot'):x}"
        if a.int("function"):
            addr += f".0x{a.int('function'):x}"
        pairs: list[tuple[str, object]] = [("bus", busname), ("addr", addr)]
        if a.attrs.get("multifunction") == "on":
            pairs.insert(1, ("multifunction", "on"))
        return pairs


def error_policy_props(disk: Disk) -> list[tuple[str, object]]:
    """werror/rerror of a disk's device from <driver error_policy/rerror_policy>.

    As qemuBuildDiskDeviceProps: libvirt's "enospace" is QEMU's "enospc",
    which QEMU knows for writes only; otherwise rerror follows error_policy.
    None given leaves QEMU's defaults (werror=enospc, rerror=report).
    """
    if disk.device == "cdrom" or disk.bus == "usb":
        return []                  # read-only media / usb-storage have no such properties
    werror = {"enospace": "enospc"}.get(disk.error_policy or "", disk.error_policy)
    rerror = disk.rerror_policy
    if rerror is None and werror not in (None, "enospc"):
        rerror = werror
    return [("werror", werror), ("rerror", rerror)]


def disk_bus(b: Placement, disk: Disk) -> list[tuple[str, object]]:
    """("driver", name) first, then the bus placement of the disk's device."""
    cd = disk.device == "cdrom"
    a = disk.address
    if disk.bus == "virtio":
        pairs = [("driver", "virtio-blk-pci"), *b.pci(disk)]
        if disk.iothread is not None:
            if disk.iothread > b.plat.iothreads:
                raise unsupported(f"Disk iothread '{disk.iothread}' not defined in iothreadid")
            pairs.append(("iothread", f"iothread{disk.iothread}"))
        extra = disk.driver_extra
        pairs += [("ioeventfd", extra.get("ioeventfd")), ("event_idx", extra.get("event_idx")),
                  ("num-queues", extra.get("queues")), ("queue-size", extra.get("queue_size"))]
        return pairs
    if disk.bus == "usb":          # no drive address: the device goes on the USB bus
        if cd:
            raise unsupported("CD-ROMs on USB are not supported")
        return [("driver", "usb-storage"), ("bus", "usb.0"), ("removable", None)]
    ctl, bus, unit = a.int("controller"), a.int("bus"), a.int("unit")
    if disk.bus == "ide":
        if b.q35:
            raise unsupported("IDE controllers are unsupported for this QEMU binary or machine "
                               "type")
        if ctl != 0 or bus > 1 or unit > 1:
            raise unsupported(f"disk '{disk.target}': IDE address out of range")
        return [("driver", "ide-cd" if cd else "ide-hd"), ("bus", f"ide.{bus}"), ("unit", unit)]
    if disk.bus == "sata":
        if unit > 5:
            raise unsupported(f"disk '{disk.target}': SATA port {unit} out of range")
        ahci = "ide" if (ctl == 0 and b.q35) else f"sata{ctl}"
        if ("sata", ctl) not in b.controllers:
            raise unsupported(f"disk '{disk.target}' needs a SATA controller")
        return [("driver", "ide-cd" if cd else "ide-hd"), ("bus", f"{ahci}.{unit}")]
    if disk.bus == "scsi":
        cont = b.controllers.get(("scsi", ctl))
        if cont is None:
            raise unsupported(f"disk '{disk.target}' needs SCSI controller {ctl}")
        pairs = [("driver", "scsi-cd" if cd else "scsi-hd"), ("bus", f"scsi{ctl}.0")]
        if cont.model in ("virtio-scsi", "virtio-transitional", "virtio-non-transitional"):
            pairs += [("channel", bus), ("scsi-id", a.int("target")), ("lun", unit)]
        else:
            pairs += [("scsi-id", unit)]
        return pairs
    raise unsupported(f"disk bus '{disk.bus}' is not supported")


def quote(value: object) -> str:
    """A value inside QEMU's comma-separated option syntax: commas are doubled."""
    return str(value).replace(",", ",,")


def opts(driver: str | None, *pairs: tuple[str, object]) -> str:
    """``driver,key=value,...`` with values quoted; None values are skipped."""
    parts = [quote(driver)] if driver else []
    for key, value in pairs:
        if value is None:
            continue
        if value is True:
            value = "on"
        elif value is False:
            value = "off"
        parts.append(f"{key}={quote(value)}")
    return ",".join(parts)


class ArgvBuilder(Placement):
    """The command line being built (command.py and the device modules it calls),
    and where its devices go."""

    def __init__(self, defn, plat: Platform, q35: bool) -> None:
        super().__init__(defn, plat, q35)
        self.argv: list[str] = []
        self.audiodev: str | None = None     # the -audiodev id displays and sound cards use

    def add(self, *args: str) -> None:
        self.argv.extend(args)
