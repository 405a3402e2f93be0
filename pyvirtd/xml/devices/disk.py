"""<disk>: file, block and storage-volume sources (virDomainDiskDef)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.devices._base import (Address, DeviceBase, boot_order, enum_attr, int_attr,
                                       not_runnable, set_attrs, sub, unsupported, xml_error)

TYPES = ("file", "block", "dir", "network", "volume", "nvme", "vhostuser")
DEVICES = ("disk", "cdrom", "floppy", "lun")
BUSES = ("ide", "fdc", "scsi", "virtio", "xen", "usb", "uml", "sata", "sd")
CACHE_MODES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
IO_MODES = ("default", "native", "threads", "io_uring")
DISCARD = ("default", "unmap", "ignore")
# <driver error_policy> / rerror_policy (virDomainDiskErrorPolicy); enospace only for writes
ERROR_POLICIES = ("default", "stop", "report", "ignore", "enospace")
RERROR_POLICIES = ("default", "stop", "report", "ignore")
# Image formats QEMU opens with a format node of the same name.
FORMATS = ("raw", "qcow2", "qcow", "qed", "vmdk", "vpc", "vdi", "vhdx", "cloop", "dmg",
           "parallels", "luks", "bochs")

# <driver> attributes in libvirt's output order (virDomainDiskDefFormatDriver)
DRIVER_ATTRS = ("name", "type", "cache", "error_policy", "rerror_policy", "io", "ioeventfd",
                "event_idx", "copy_on_read", "discard", "iothread", "detect_zeroes", "queues",
                "queue_size")

# Target name prefix -> default bus (virDomainDiskDefPostParse via virDiskNameParse).
_PREFIX_BUS = (("xvd", "xen"), ("ubd", "uml"), ("hd", "ide"), ("sd", "scsi"), ("vd", "virtio"),
               ("fd", "fdc"))
_PREFIXES = ("hd", "sd", "vd", "xvd", "fd", "ubd", "mmcblk")


def disk_index(dev: str) -> int | None:
    """'vda' -> 0, 'sdb' -> 1, 'hdaa' -> 26 (virDiskNameToIndex); None if not a disk name."""
    for prefix in sorted(_PREFIXES, key=len, reverse=True):
        if dev.startswith(prefix):
            letters = dev[len(prefix):]
            break
    else:
        return None
    if not letters or not letters.isalpha() or not letters.islower():
        return None
    index = 0
    for ch in letters:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def _policy(drv: etree._Element, name: str, values: tuple[str, ...]) -> str | None:
    """An error policy attribute; libvirt 9 (virXMLPropEnum, nonzero) refuses 'default' too."""
    value = drv.get(name)
    if value is not None and (value not in values or value == "default"):
        raise xml_error(f"Invalid value for attribute '{name}' in element 'driver': '{value}'.")
    return value


@dataclass
class Disk(DeviceBase):
    type: str = "file"
    device: str = "disk"
    target: str = ""
    bus: str | None = None
    tray: str | None = None                 # cdrom tray: open/closed
    driver_name: str | None = None
    format: str | None = None
    cache: str | None = None
    error_policy: str | None = None         # what QEMU does on a write error (werror)
    rerror_policy: str | None = None        # ... on a read error (rerror)
    io: str | None = None
    discard: str | None = None
    iothread: int | None = None
    driver_extra: dict = field(default_factory=dict)   # other <driver> attributes (ioeventfd, ...)
    driver_children: list = field(default_factory=list)  # e.g. <metadata_cache>
    path: str | None = None                 # file= or dev=
    pool: str | None = None                 # type='volume'
    volume: str | None = None
    source_extra: dict | None = None        # other <source> attributes (startupPolicy, ...)
    source_children: list = field(default_factory=list)
    boot: int | None = None
    readonly: bool = False
    shareable: bool = False

    @classmethod
    def parse(cls, elem: etree._Element) -> "Disk":
        d = cls(type=enum_attr(elem, "type", TYPES, what="disk type", default="file"),
                device=enum_attr(elem, "device", DEVICES, what="disk device", default="disk"))
        drv = elem.find("driver")
        if drv is not None:
            d.driver_name = drv.get("name")
            d.format = drv.get("type")
            if d.format is not None and d.format not in FORMATS:
                raise xml_error(f"unknown driver format value '{d.format}'")
            d.cache = enum_attr(drv, "cache", CACHE_MODES, what="disk cache mode")
            d.error_policy = _policy(drv, "error_policy", ERROR_POLICIES)
            d.rerror_policy = _policy(drv, "rerror_policy", RERROR_POLICIES)
            d.io = enum_attr(drv, "io", IO_MODES, what="disk io mode")
            d.discard = enum_attr(drv, "discard", DISCARD, what="disk discard mode")
            d.iothread = int_attr(drv, "iothread", minimum=1)
            modelled = ("name", "type", "cache", "error_policy", "rerror_policy", "io",
                        "discard", "iothread")
            d.driver_extra = {k: v for k, v in drv.attrib.items() if k not in modelled}
            d.driver_children = [copy.deepcopy(c) for c in drv if isinstance(c.tag, str)]
        src = elem.find("source")
        if src is not None:
            attrs = dict(src.attrib)
            if d.type == "file":
                d.path = attrs.pop("file", None)
            elif d.type == "block":
                d.path = attrs.pop("dev", None)
            elif d.type == "volume":
                d.pool, d.volume = attrs.pop("pool", None), attrs.pop("volume", None)
                if not d.pool or not d.volume:
                    raise xml_error("'pool' and 'volume' must be specified together "
                                    "for 'pool' type source")
            d.source_extra = attrs or None
            # e.g. <seclabel>, <reservations>: kept verbatim, not interpreted
            d.source_children = [copy.deepcopy(c) for c in src if isinstance(c.tag, str)]
        tgt = elem.find("target")
        if tgt is None or not tgt.get("dev"):
            raise VirError(P.VIR_ERR_NO_TARGET, d.path, domain=P.VIR_FROM_DOMAIN)
        d.target = tgt.get("dev")
        if disk_index(d.target) is None:
            raise xml_error(f"Unknown disk name '{d.target}' and no address specified")
        d.bus = enum_attr(tgt, "bus", BUSES, what="disk bus type")
        d.tray = enum_attr(tgt, "tray", ("open", "closed"), what="disk tray status")
        d.boot = boot_order(elem)
        d.readonly = elem.find("readonly") is not None
        d.shareable = elem.find("shareable") is not None
        d._parse_common(elem, ("driver", "source", "target", "boot", "readonly", "shareable"))
        return d

    @property
    def index(self) -> int:
        return disk_index(self.target) or 0

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """Bus from the target name, cdroms read-only, drive address (the
        hypervisor's <driver> defaults are its DeviceDefaults')."""
        if self.bus is None:
            self.bus = next((bus for prefix, bus in _PREFIX_BUS if self.target.startswith(prefix)),
                            "ide")
        if self.device == "cdrom":
            self.readonly = True
        if self.address is None and self.bus in ("ide", "sata", "scsi"):
            idx = self.index
            if self.bus == "ide":        # two buses of two units per controller
                ctl, bus, unit = idx // 4, (idx % 4) // 2, idx % 2
            elif self.bus == "sata":     # six ports per AHCI controller
                ctl, bus, unit = idx // 6, 0, idx % 6
            else:                        # seven units per SCSI bus
                ctl, bus, unit = idx // 7, 0, idx % 7
            self.address = Address("drive", {"controller": str(ctl), "bus": str(bus),
                                             "target": "0", "unit": str(unit)})

    def validate(self) -> None:
        if self.type not in ("file", "block", "volume"):
            raise not_runnable(f"disk type '{self.type}' is not supported")
        if self.driver_name not in (None, "qemu"):
            raise unsupported(f"unsupported driver name '{self.driver_name}' for disk "
                              f"'{self.target}'")
        if self.device == "disk" and not (self.path or self.volume):
            raise xml_error(f"disk '{self.target}' has no source")
        if self.device == "floppy" or self.bus in ("fdc", "xen", "uml", "sd"):
            raise not_runnable(f"disk bus '{self.bus}' is not supported")
        if self.device == "cdrom" and self.bus == "virtio":
            raise unsupported("disk type of 'vda' does not support ejectable media"
                              .replace("vda", self.target))
        if self.io == "native" and self.cache not in ("none", "directsync"):
            raise unsupported("native I/O needs either no disk cache or directsync cache mode")
        if self.iothread is not None and self.bus != "virtio":
            raise unsupported("IOThreads only available for virtio pci and virtio ccw disk")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("disk"), ("type", self.type), ("device", self.device))
        attrs = {"name": self.driver_name, "type": self.format, "cache": self.cache,
                 "error_policy": self.error_policy, "rerror_policy": self.rerror_policy,
                 "io": self.io, "discard": self.discard, "iothread": self.iothread,
                 **self.driver_extra}
        if any(v is not None for v in attrs.values()) or self.driver_children:
            order = [k for k in DRIVER_ATTRS if k in attrs] + \
                [k for k in attrs if k not in DRIVER_ATTRS]
            drv = sub(e, "driver", *((k, attrs[k]) for k in order))
            drv.extend(copy.deepcopy(c) for c in self.driver_children)
        if (self.path is not None or self.volume is not None or self.source_extra
                or self.source_children):
            src = etree.SubElement(e, "source")
            if self.type == "file":
                set_attrs(src, ("file", self.path))
            elif self.type == "block":
                set_attrs(src, ("dev", self.path))
            elif self.type == "volume":
                set_attrs(src, ("pool", self.pool), ("volume", self.volume))
            set_attrs(src, *(self.source_extra or {}).items())
            src.extend(copy.deepcopy(c) for c in self.source_children)
        sub(e, "target", ("dev", self.target), ("bus", self.bus), ("tray", self.tray))
        if self.readonly:
            etree.SubElement(e, "readonly")
        if self.shareable:
            etree.SubElement(e, "shareable")
        if self.boot is not None:          # with the device info, after the disk's own
            sub(e, "boot", ("order", self.boot))
        return self._format_common(e)
