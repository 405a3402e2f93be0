"""<controller>: pci, usb, sata, ide, scsi, virtio-serial (virDomainControllerDef)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import DeviceBase, int_attr, not_runnable, set_attrs, sub, xml_error

TYPES = ("ide", "fdc", "scsi", "sata", "virtio-serial", "ccid", "usb", "pci", "xenbus", "isa")
MODELS = {
    "pci": ("pci-root", "pcie-root", "pci-bridge", "dmi-to-pci-bridge", "pcie-root-port",
            "pcie-switch-upstream-port", "pcie-switch-downstream-port", "pci-expander-bus",
            "pcie-expander-bus", "pcie-to-pci-bridge"),
    "usb": ("piix3-uhci", "piix4-uhci", "ehci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2",
            "ich9-uhci3", "vt82c686b-uhci", "pci-ohci", "nec-xhci", "qusb1", "qusb2",
            "qemu-xhci", "none"),
    "scsi": ("auto", "buslogic", "lsilogic", "lsisas1068", "vmpvscsi", "ibmvscsi", "virtio-scsi",
             "lsisas1078", "virtio-transitional", "virtio-non-transitional", "ncr53c90",
             "am53c974", "dc390"),
    "ide": ("piix3", "piix4", "ich6"),
    "virtio-serial": ("virtio", "virtio-transitional", "virtio-non-transitional"),
    "isa": (),
    "sata": (),
    "fdc": (),
    "ccid": (),
    "xenbus": (),
}
# libvirt's noun per type in "unknown model type" errors.
_MODEL_WHAT = {"pci": "PCI controller model", "usb": "USB controller model",
               "scsi": "SCSI controller model", "ide": "IDE controller model",
               "virtio-serial": "virtio-serial controller model"}
# pci controllers that get <model name=...> (the QEMU device) and <target> from libvirt.
PCI_MODEL_NAMES = {"pci-bridge": "pci-bridge", "dmi-to-pci-bridge": "i82801b11-bridge",
                   "pcie-root-port": "pcie-root-port",
                   "pcie-switch-upstream-port": "x3130-upstream",
                   "pcie-switch-downstream-port": "xio3130-downstream",
                   "pci-expander-bus": "pxb", "pcie-expander-bus": "pxb-pcie",
                   "pcie-to-pci-bridge": "pcie-pci-bridge"}


@dataclass
class Controller(DeviceBase):
    type: str = "pci"
    index: int | None = None
    model: str | None = None
    ports: int | None = None              # usb / virtio-serial
    vectors: int | None = None            # virtio-serial
    model_name: str | None = None         # <model name=...> of pci controllers
    target: dict | None = None            # <target chassis=.. port=.. busNr=..> of pci ones
    target_children: list = field(default_factory=list)   # e.g. <node> of expander buses
    driver: dict | None = None            # <driver queues=.. iothread=..>

    @classmethod
    def parse(cls, elem: etree._Element) -> "Controller":
        kind = elem.get("type")
        if kind is None:
            kind = "ide"                   # libvirt's default controller type
        elif kind not in TYPES:
            raise xml_error(f"Unknown controller type '{kind}'")
        c = cls(type=kind, index=int_attr(elem, "index"))
        model = elem.get("model")
        if model is not None:
            if model not in MODELS[kind]:
                raise xml_error(f"Unknown model type '{model}'")
            c.model = model
        c.ports = int_attr(elem, "ports")
        c.vectors = int_attr(elem, "vectors")
        m = elem.find("model")
        if m is not None:
            c.model_name = m.get("name")
        t = elem.find("target")
        if t is not None:
            for key in ("chassisNr", "chassis", "port", "busNr", "index"):
                if t.get(key) is not None:
                    int_attr(t, key)
            c.target = dict(t.attrib)
            c.target_children = [copy.deepcopy(x) for x in t if isinstance(x.tag, str)]
        drv = elem.find("driver")
        if drv is not None:
            c.driver = dict(drv.attrib)
        c._parse_common(elem, ("model", "target", "driver"))
        return c

    @property
    def qemu_id(self) -> str:
        """The id libvirt gives the controller on QEMU's command line (qemuAssignDeviceControllerAlias)."""
        if self.type == "pci":
            return f"pci.{self.index}"
        if self.type == "usb":
            return "usb" if self.index == 0 else f"usb{self.index}"
        if self.type == "virtio-serial":
            return f"virtio-serial{self.index}"
        if self.type == "scsi":
            return f"scsi{self.index}"
        if self.type == "sata":
            return f"sata{self.index}"
        return f"{self.type}{self.index}"

    def fill_defaults(self, ctx: dict | None = None) -> None:
        ctx = ctx or {}
        q35 = ctx.get("q35", False)
        if self.model is None:
            if self.type == "usb" and self.index == 0:
                self.model = "qemu-xhci" if q35 else "piix3-uhci"
            elif self.type == "scsi":
                self.model = "lsilogic"
            elif self.type == "pci" and self.index == 0:
                self.model = "pcie-root" if q35 else "pci-root"
        if self.type == "pci" and self.model in PCI_MODEL_NAMES and self.model_name is None:
            self.model_name = PCI_MODEL_NAMES[self.model]
        if self.type == "pci" and self.model == "pci-bridge" and self.index is not None \
                and "chassisNr" not in (self.target or {}):
            self.target = {"chassisNr": str(self.index), **(self.target or {})}
        if (self.type == "usb" and self.model in ("ich9-uhci1", "ich9-uhci2", "ich9-uhci3")
                and not any(getattr(x, "tag", None) == "master" for x in self.extra)):
            # a companion of the EHCI with its index: its first port on that bus
            first = 2 * (int(self.model[-1]) - 1)
            self.extra.insert(0, etree.Element("master", startport=str(first)))

    def validate(self) -> None:
        if self.index is None:
            raise xml_error(f"controller of type '{self.type}' has no index")
        if self.type == "pci" and self.index == 0 and self.model not in ("pci-root", "pcie-root"):
            raise xml_error("The PCI controller with index='0' must be model='pci-root' for "
                            "this machine type, but model='%s' was found instead" % self.model)
        if self.type == "pci" and self.index > 0 and self.model in ("pci-root", "pcie-root"):
            raise xml_error(f"The PCI controller with index='{self.index}' can't be "
                            f"model='{self.model}'")
        if self.type in ("fdc", "xenbus", "isa"):
            raise not_runnable(f"controller type '{self.type}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("controller"), ("type", self.type), ("index", self.index),
                      ("model", self.model), ("ports", self.ports), ("vectors", self.vectors))
        if self.driver is not None:
            sub(e, "driver", *self.driver.items())
        if self.model_name is not None:
            sub(e, "model", ("name", self.model_name))
        if self.target is not None or self.target_children:
            t = sub(e, "target", *(self.target or {}).items())
            t.extend(copy.deepcopy(x) for x in self.target_children)
        return self._format_common(e)
