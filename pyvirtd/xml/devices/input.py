"""<input>: tablet, mouse, keyboard on ps2/usb/virtio (virDomainInputDef)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.xml.devices._base import DeviceBase, enum_attr, set_attrs, unsupported, xml_error

TYPES = ("mouse", "tablet", "keyboard", "passthrough", "evdev")
BUSES = ("ps2", "usb", "xen", "parallels", "virtio", "none")
# (type, bus) -> QEMU device; ps2 mouse and keyboard are built into the PC, no device.
QEMU_DEVICES = {("tablet", "usb"): "usb-tablet", ("mouse", "usb"): "usb-mouse",
                ("keyboard", "usb"): "usb-kbd", ("tablet", "virtio"): "virtio-tablet-pci",
                ("mouse", "virtio"): "virtio-mouse-pci",
                ("keyboard", "virtio"): "virtio-keyboard-pci",
                ("mouse", "ps2"): None, ("keyboard", "ps2"): None}


@dataclass
class Input(DeviceBase):
    type: str = "mouse"
    bus: str | None = None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Input":
        if elem.get("type") is None:
            raise xml_error("missing input device type")
        i = cls(type=enum_attr(elem, "type", TYPES, what="input device type"),
                bus=enum_attr(elem, "bus", BUSES, what="input bus type"))
        i._parse_common(elem, ())
        return i

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """x86 guests: mouse and keyboard on ps2, a tablet on usb (virDomainInputDefPostParse)."""
        if self.bus is None:
            self.bus = "usb" if self.type == "tablet" else "ps2"

    def validate(self) -> None:
        if (self.type, self.bus) not in QEMU_DEVICES:
            if self.type == "tablet" and self.bus == "ps2":
                raise unsupported("ps2 bus does not support tablet input device")
            raise unsupported(f"input device '{self.type}' on bus '{self.bus}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("input"), ("type", self.type), ("bus", self.bus))
        return self._format_common(e)
