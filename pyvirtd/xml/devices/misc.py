"""Small device kinds: <panic>, <vsock>, <iommu>, <hub>, <shmem> (virDomainPanicDef, ...).

These kinds have few settings, so each model reads what the QEMU driver needs
and keeps the element's body verbatim (``body``): formatting writes the
element back as it was, plus the <alias> and <address> the driver assigns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, not_runnable, unsupported,
                                       xml_error)

def xml_detail(detail: str) -> VirError:
    """libvirt's VIR_ERR_XML_DETAIL: the message alone, no prefix."""
    return VirError(P.VIR_ERR_XML_DETAIL, detail, domain=P.VIR_FROM_DOMAIN)


# units of <shmem><size unit=...> (libvirt's scaled integers)
_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024 ** 2,
          "mib": 1024 ** 2, "mb": 1000 ** 2, "g": 1024 ** 3, "gib": 1024 ** 3,
          "gb": 1000 ** 3, "t": 1024 ** 4, "tib": 1024 ** 4, "tb": 1000 ** 4}


@dataclass(eq=False)
class _Kept(DeviceBase):
    """A device written back as it was read: its attributes and children verbatim."""
    attrs: dict = field(default_factory=dict)
    body: list = field(default_factory=list)

    TAG = ""

    def _keep(self, elem: etree._Element) -> None:
        self.attrs = dict(elem.attrib)
        self._parse_common(elem, [c.tag for c in elem if isinstance(c.tag, str)])
        self.body = [copy.deepcopy(c) for c in elem
                     if not isinstance(c.tag, str) or c.tag not in ("alias", "address")]
        self.parsed = None          # the body is already the whole element

    def to_element(self) -> etree._Element:
        e = etree.Element(self.TAG, self.attrs)
        for child in self.body:
            e.append(copy.deepcopy(child))
        return self._format_common(e)

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.attrs == self.attrs
                and other.alias == self.alias and other.address == self.address
                and [etree.tostring(c) for c in other.body]
                == [etree.tostring(c) for c in self.body])

    def child(self, tag: str) -> etree._Element | None:
        return next((c for c in self.body if c.tag == tag), None)


@dataclass(eq=False)
class Panic(_Kept):
    """A guest panic notifier; model isa is QEMU's pvpanic ISA device at port 0x505."""
    TAG = "panic"
    MODELS = ("isa", "pseries", "hyperv", "s390", "pvpanic")

    @property
    def model(self) -> str | None:
        return self.attrs.get("model")

    @classmethod
    def parse(cls, elem: etree._Element) -> "Panic":
        enum_attr(elem, "model", cls.MODELS, what="panic model")
        p = cls()
        p._keep(elem)
        return p

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.model is None:           # the x86 default (qemuDomainDefaultPanicModel)
            self.attrs = {"model": "isa", **self.attrs}

    def validate(self) -> None:
        if self.model in ("pseries", "s390"):
            raise unsupported(f"panic model '{self.model}' is not supported on this "
                              "architecture")
        if self.model == "isa" and self.address is not None and self.address.type != "isa":
            raise unsupported("panic is supported only with ISA address type")
        if self.model not in ("isa", "pvpanic"):
            raise not_runnable(f"panic model '{self.model}' is not supported")

    @property
    def iobase(self) -> int | None:
        a = self.address
        return a.int("iobase") if a is not None and "iobase" in a.attrs else None


@dataclass(eq=False)
class Vsock(_Kept):
    """A virtio socket device with the guest's context id (auto: the driver picks)."""
    TAG = "vsock"

    @classmethod
    def parse(cls, elem: etree._Element) -> "Vsock":
        enum_attr(elem, "model", ("virtio", "virtio-transitional", "virtio-non-transitional"),
                  what="vsock model")
        cid = elem.find("cid")
        if cid is not None:
            enum_attr(cid, "auto", ("yes", "no"), what="cid auto")
            if cid.get("address") is not None:
                if int_attr(cid, "address") < 3:
                    raise xml_error("guest CID must be >= 3")
        v = cls()
        v._keep(elem)
        return v

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if "model" not in self.attrs:        # qemuDomainVsockDefPostParse
            self.attrs = {"model": "virtio", **self.attrs}
        if self.child("cid") is None:        # no cid: the driver picks one
            self.body.insert(0, etree.Element("cid", auto="yes"))

    @property
    def auto_cid(self) -> bool:
        cid = self.child("cid")
        return cid is None or cid.get("auto") == "yes" or cid.get("address") is None

    @property
    def cid(self) -> int | None:
        cid = self.child("cid")
        return int(cid.get("address"), 0) if cid is not None and cid.get("address") else None

    def set_cid(self, cid: int) -> None:
        """The live definition's <cid auto=... address=N>."""
        elem = self.child("cid")
        if elem is None:
            elem = etree.Element("cid", auto="yes")
            self.body.insert(0, elem)
        elem.set("address", str(cid))

    def validate(self) -> None:
        pass


@dataclass(eq=False)
class Iommu(_Kept):
    """An IOMMU; model intel is QEMU's intel-iommu (q35 only)."""
    TAG = "iommu"

    @property
    def model(self) -> str:
        return self.attrs.get("model", "")

    @property
    def driver(self) -> dict:
        d = self.child("driver")
        return dict(d.attrib) if d is not None else {}

    @classmethod
    def parse(cls, elem: etree._Element) -> "Iommu":
        if elem.get("model") is None:
            raise xml_error("missing model for IOMMU device")
        enum_attr(elem, "model", ("intel", "smmuv3", "virtio"), what="iommu model")
        drv = elem.find("driver")
        if drv is not None:
            for key in ("intremap", "caching_mode", "eim", "iotlb"):
                enum_attr(drv, key, ("on", "off"), what=f"iommu {key}")
            int_attr(drv, "aw_bits")
        i = cls()
        i._keep(elem)
        return i

    def validate(self, ctx: dict | None = None) -> None:
        drv = self.driver
        if self.model == "smmuv3":
            raise unsupported("IOMMU device: 'smmuv3' is only supported with ARM Virt machines")
        if self.model == "intel" and ctx is not None and not ctx.get("q35"):
            raise unsupported("IOMMU device: 'intel' is only supported with Q35 machines")
        if drv.get("intremap") == "on" and ctx is not None and ctx.get("ioapic") != "qemu":
            raise unsupported("IOMMU interrupt remapping requires split I/O APIC "
                              "(ioapic driver='qemu')")
        if drv.get("eim") == "on" and drv.get("intremap") != "on":
            raise unsupported("IOMMU eim requires interrupt remapping to be enabled")
        if self.model != "intel":
            raise not_runnable(f"IOMMU model '{self.model}' is not supported")


@dataclass(eq=False)
class Hub(_Kept):
    """A USB hub: more ports on a USB bus."""
    TAG = "hub"

    @classmethod
    def parse(cls, elem: etree._Element) -> "Hub":
        if elem.get("type") is None:
            raise xml_error("missing hub device type")
        enum_attr(elem, "type", ("usb",), what="hub device type")
        h = cls()
        h._keep(elem)
        return h

    def validate(self) -> None:
        if self.address is not None and self.address.type != "usb":
            raise unsupported("hub must have a USB address")


@dataclass(eq=False)
class Shmem(_Kept):
    """Shared memory between guests (ivshmem); plain is a file under /dev/shm."""
    TAG = "shmem"
    DEFAULT_SIZE = 4 * 1024 ** 2

    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def size(self) -> int:
        s = self.child("size")
        if s is None:
            return self.DEFAULT_SIZE
        return int((s.text or "0").strip()) * _UNITS[(s.get("unit") or "b").lower()]

    @classmethod
    def parse(cls, elem: etree._Element) -> "Shmem":
        name = elem.get("name")
        if not name:
            raise xml_error("shmem element must contain 'name' attribute")
        if name.startswith(".") or "/" in name:
            raise xml_error(f"shmem name '{name}' must not contain '/' and must not start "
                            "with '.'")
        model = elem.find("model")
        if model is not None:
            if model.get("type") is None:
                raise xml_error("shmem model must contain a 'type' attribute")
            enum_attr(model, "type", ("ivshmem", "ivshmem-plain", "ivshmem-doorbell"),
                      what="shmem model")
        size = elem.find("size")
        if size is not None:
            unit = (size.get("unit") or "b").lower()
            if unit not in _UNITS or not (size.text or "").strip().isdigit():
                raise xml_error("malformed shmem size")
        s = cls()
        s._keep(elem)
        return s

    @property
    def model(self) -> str:
        m = self.child("model")
        return m.get("type") if m is not None else "ivshmem"

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if self.child("size") is None:      # libvirt writes its default size
            size = etree.Element("size", unit="M")
            size.text = str(self.DEFAULT_SIZE >> 20)
            at = 1 if self.child("model") is not None else 0
            self.body.insert(at, size)

    def validate(self) -> None:
        if self.model == "ivshmem":         # the legacy device QEMU 7.2 no longer has
            raise unsupported("ivshmem device is not supported with this QEMU binary")
        if self.model == "ivshmem-doorbell":
            raise not_runnable("shmem model 'ivshmem-doorbell' is not supported")


@dataclass(eq=False)
class Tpm(_Kept):
    """A TPM; backend emulator is a swtpm process per guest, external one the user runs."""
    TAG = "tpm"
    MODELS = ("tpm-tis", "tpm-crb", "tpm-spapr", "spapr-tpm-proxy")
    BACKENDS = ("passthrough", "emulator", "external")

    @property
    def model(self) -> str:
        return self.attrs.get("model", "tpm-tis")

    @property
    def backend(self) -> dict:
        be = self.child("backend")
        return dict(be.attrib) if be is not None else {}

    @property
    def external_path(self) -> str | None:
        be = self.child("backend")
        src = be.find("source") if be is not None else None
        return src.get("path") if src is not None else None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Tpm":
        enum_attr(elem, "model", cls.MODELS, what="TPM model")
        be = elem.find("backend")
        if be is None:
            raise xml_error("missing TPM device backend")
        if be.get("type") is None:
            raise xml_error("missing TPM device backend type")
        enum_attr(be, "type", cls.BACKENDS, what="TPM backend type")
        enum_attr(be, "version", ("1.2", "2.0"), what="TPM version")
        if be.get("type") == "external" and (be.find("source") is None
                                             or not be.find("source").get("path")):
            raise xml_error("missing TPM source path")
        t = cls()
        t._keep(elem)
        return t

    def fill_defaults(self, ctx: dict | None = None) -> None:
        if "model" not in self.attrs:       # x86's default (qemuDomainTPMDefPostParse)
            self.attrs = {"model": "tpm-tis", **self.attrs}
        be = self.child("backend")
        if be is not None and be.get("type") == "emulator" and be.get("version") is None:
            be.set("version", "2.0" if self.model == "tpm-crb" else "1.2")   # libvirt 9.0

    def validate(self) -> None:
        if self.model in ("tpm-spapr", "spapr-tpm-proxy"):
            raise unsupported(f"TPM model '{self.model}' is not supported on this architecture")
        if self.model == "tpm-crb" and self.backend.get("version") == "1.2":
            raise unsupported("Unsupported interface 'tpm-crb' for TPM 1.2")
        if self.backend.get("type") == "passthrough":
            raise not_runnable("TPM backend 'passthrough' is not supported")


@dataclass(eq=False)
class Memory(_Kept):
    """A memory device: a DIMM (or nvdimm, virtio-mem, ...) plugged into a NUMA node."""
    TAG = "memory"
    MODELS = ("dimm", "nvdimm", "virtio-pmem", "virtio-mem", "sgx-epc")

    @property
    def model(self) -> str:
        return self.attrs["model"]

    def _target(self, tag: str) -> etree._Element | None:
        target = self.child("target")
        return target.find(tag) if target is not None else None

    def _kib(self, tag: str) -> int:
        elem = self._target(tag)
        if elem is None:
            return 0
        return int((elem.text or "0").strip()) * _UNITS[(elem.get("unit") or "kib").lower()] \
            // 1024

    @property
    def size(self) -> int:
        """The size in KiB."""
        return self._kib("size")

    @property
    def block(self) -> int:
        """virtio-mem: the block size in KiB."""
        return self._kib("block")

    @property
    def requested(self) -> int:
        """virtio-mem: how much of it the guest is asked to use, in KiB."""
        return self._kib("requested")

    @property
    def node(self) -> int | None:
        node = self._target("node")
        return int((node.text or "").strip()) if node is not None else None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Memory":
        if elem.get("model") is None:
            raise xml_error("missing memory model")
        enum_attr(elem, "model", cls.MODELS, what="memory model")
        target = elem.find("target")
        if target is None:
            raise xml_error("missing memory target")
        for tag in ("size", "block", "requested"):
            value = target.find(tag)
            if value is not None and (not (value.text or "").strip().isdigit()
                                      or (value.get("unit") or "kib").lower() not in _UNITS):
                raise xml_error(f"malformed memory {tag}")
        if elem.get("model") in ("dimm", "nvdimm", "virtio-mem") and target.find("size") is None:
            raise xml_error("missing memory size")
        node = target.find("node")
        if node is not None and not (node.text or "").strip().isdigit():
            raise xml_error("Invalid value of memory device node")
        m = cls()
        m._keep(elem)
        return m

    def fill_defaults(self, ctx: dict | None = None) -> None:
        for tag in ("size", "block", "requested"):    # libvirt keeps sizes in KiB
            elem = self._target(tag)
            if elem is not None:
                kib = self._kib(tag)
                elem.attrib.clear()
                elem.set("unit", "KiB")
                elem.text = str(kib)

    def validate(self) -> None:
        if self.model not in ("dimm", "virtio-mem"):
            raise not_runnable(f"memory device model '{self.model}' is not supported")
        if self.model == "dimm" and self.address is not None and self.address.type != "dimm":
            raise unsupported("only 'dimm' addresses are supported for the pc-dimm device")
        if self.model == "virtio-mem":      # libvirt's words (virDomainMemoryDefValidate)
            block, requested = self.block, self.requested
            if block == 0 or block & (block - 1):
                raise xml_detail("block size must be a power of two")
            if requested % block:
                raise xml_detail("requested size must be an integer multiple of block size")
            if requested > self.size:
                raise xml_detail(f"requested size must be smaller than or equal to @size "
                                 f"({self.size}KiB)")


@dataclass(eq=False)
class Filesystem(_Kept):
    """A host directory shared with the guest: 9p (virtio-9p) or virtiofs."""
    TAG = "filesystem"
    TYPES = ("mount", "block", "file", "template", "ram", "bind", "volume")
    ACCESS = ("passthrough", "mapped", "squash")

    @property
    def type(self) -> str:
        return self.attrs.get("type", "mount")

    @property
    def accessmode(self) -> str:
        return self.attrs.get("accessmode", "passthrough")

    @property
    def driver(self) -> dict:
        d = self.child("driver")
        return dict(d.attrib) if d is not None else {}

    @property
    def source_dir(self) -> str | None:
        s = self.child("source")
        return s.get("dir") if s is not None else None

    @property
    def target_dir(self) -> str | None:
        t = self.child("target")
        return t.get("dir") if t is not None else None

    @property
    def readonly(self) -> bool:
        return self.child("readonly") is not None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Filesystem":
        enum_attr(elem, "type", cls.TYPES, what="filesystem type")
        enum_attr(elem, "accessmode", cls.ACCESS, what="accessmode")
        drv = elem.find("driver")
        if drv is not None:
            enum_attr(drv, "type", ("default", "path", "handle", "loop", "nbd", "ploop",
                                    "virtiofs"), what="filesystem driver type")
        target = elem.find("target")
        if target is None or not target.get("dir"):
            raise xml_error("missing target information for filesystem")
        f = cls()
        f._keep(elem)
        return f

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """libvirt writes the type and the access mode (mount, passthrough) first."""
        self.attrs = {"type": self.type, "accessmode": self.accessmode,
                      **{k: v for k, v in self.attrs.items() if k not in ("type", "accessmode")}}

    @property
    def virtiofs(self) -> bool:
        return self.driver.get("type") == "virtiofs"

    def validate(self) -> None:
        if self.type != "mount" or self.driver.get("type") not in (None, "path", "virtiofs"):
            raise not_runnable(f"filesystem type '{self.type}' with driver "
                               f"'{self.driver.get('type', 'default')}' is not supported")
        if not self.source_dir:
            raise xml_error("missing source information for filesystem")
        if self.virtiofs and self.accessmode != "passthrough":
            raise unsupported("virtiofs only supports passthrough accessmode")
        if self.virtiofs and self.readonly:
            raise unsupported("virtiofs does not yet support read-only mode")


@dataclass(eq=False)
class Smartcard(_Kept):
    """A smartcard reader on a CCID controller; passthrough forwards a character device."""
    TAG = "smartcard"

    @property
    def mode(self) -> str:
        return self.attrs.get("mode", "")

    @property
    def chardev_type(self) -> str:
        return self.attrs.get("type", "")

    @property
    def sources(self) -> list[dict]:
        return [dict(c.attrib) for c in self.body if c.tag == "source"]

    @property
    def protocol(self) -> str | None:
        p = self.child("protocol")
        return p.get("type") if p is not None else None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Smartcard":
        if elem.get("mode") is None:
            raise xml_error("missing smartcard device mode")
        enum_attr(elem, "mode", ("host", "host-certificates", "passthrough"),
                  what="smartcard device mode")
        if elem.get("mode") == "passthrough" and elem.get("type") is None:
            raise xml_error("passthrough mode requires a character device type attribute")
        c = cls()
        c._keep(elem)
        return c

    def validate(self) -> None:
        if self.address is not None and self.address.type != "ccid":
            raise unsupported("Controllers must use the 'ccid' address type")
        if self.mode != "passthrough":
            raise not_runnable(f"smartcard mode '{self.mode}' is not supported")
        if self.chardev_type not in ("tcp", "unix", "spicevmc", "pty", "null"):
            raise not_runnable(f"character device type '{self.chardev_type}' is not supported "
                               "for smartcards")
