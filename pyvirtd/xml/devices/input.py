"""<input>: tablet, mouse, keyboard on ps2/usb/virtio (virDomainInputDef)."""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtd.xml.devices._base import AttributeDevice, unsupported

TYPES = ("mouse", "tablet", "keyboard", "passthrough", "evdev")
BUSES = ("ps2", "usb", "xen", "parallels", "virtio", "none")
# (type, bus) -> QEMU device; ps2 mouse and keyboard are built into the PC, no device.
QEMU_DEVICES = {("tablet", "usb"): "usb-tablet", ("mouse", "usb"): "usb-mouse",
                ("keyboard", "usb"): "usb-kbd", ("tablet", "virtio"): "virtio-tablet-pci",
                ("mouse", "virtio"): "virtio-mouse-pci",
                ("keyboard", "virtio"): "virtio-keyboard-pci",
                ("mouse", "ps2"): None, ("keyboard", "ps2"): None}


@dataclass
class Input(AttributeDevice):
    type: str = "mouse"
    bus: str | None = None

    TAG = "input"
    ATTRS = (("type", TYPES, "input device type", "missing input device type"),
             ("bus", BUSES, "input bus type", None))

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """x86 guests: mouse and keyboard on ps2, a tablet on usb (virDomainInputDefPostParse)."""
        if self.bus is None:
            self.bus = "usb" if self.type == "tablet" else "ps2"

    def validate(self) -> None:
        if (self.type, self.bus) not in QEMU_DEVICES:
            if self.type == "tablet" and self.bus == "ps2":
                raise unsupported("ps2 bus does not support tablet input device")
            raise unsupported(f"input device '{self.type}' on bus '{self.bus}' is not supported")
