"""Character devices: <serial>, <parallel>, <console>, <channel> (virDomainChrDef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import (Address, DeviceBase, enum_attr, int_attr, not_runnable,
                                       set_attrs, sub, xml_error)

SOURCE_TYPES = ("null", "vc", "pty", "dev", "file", "pipe", "stdio", "udp", "tcp", "unix",
                "spicevmc", "spiceport", "nmdm", "qemu-vdagent", "dbus")
SUPPORTED_SOURCES = ("null", "vc", "pty", "dev", "file", "pipe", "tcp", "unix", "udp",
                     "spicevmc", "spiceport", "qemu-vdagent")
TARGET_TYPES = {
    "serial": ("isa-serial", "usb-serial", "pci-serial", "spapr-vio-serial", "system-serial",
               "sclp-serial", "isa-debug"),
    "console": ("serial", "xen", "uml", "virtio", "lxc", "openvz", "sclp", "sclplm"),
    "channel": ("guestfwd", "virtio", "xen"),
    "parallel": (),
}
# Serial target type -> the model libvirt fills in (and QEMU's device).
SERIAL_MODELS = {"isa-serial": "isa-serial", "usb-serial": "usb-serial",
                 "pci-serial": "pci-serial"}
GUEST_AGENT = "org.qemu.guest_agent.0"
SPICE_AGENT = "com.redhat.spice.0"


@dataclass
class Chardev(DeviceBase):
    kind: str = "serial"                  # the element: serial / parallel / console / channel
    type: str = "pty"
    sources: list = field(default_factory=list)   # attribute dicts of each <source>
    protocol: str | None = None           # tcp: raw/telnet/...
    tty: str | None = None                # console's tty= (live pty path)
    target_type: str | None = None
    target_port: int | None = None
    target_name: str | None = None        # channel name (org.qemu.guest_agent.0)
    target_state: str | None = None       # channel state (live)
    target_model: str | None = None       # serial <model name=...>

    @classmethod
    def parse(cls, elem: etree._Element) -> "Chardev":
        c = cls(kind=elem.tag, type=enum_attr(elem, "type", SOURCE_TYPES,
                                              what="character device type", default="null"))
        c.tty = elem.get("tty")
        c.sources = [dict(s.attrib) for s in elem.findall("source")]
        for s in elem.findall("source"):
            if s.get("mode") is not None:
                enum_attr(s, "mode", ("bind", "connect"), what="source mode")
        proto = elem.find("protocol")
        if proto is not None:
            c.protocol = enum_attr(proto, "type", ("raw", "telnet", "telnets", "tls"),
                                   what="protocol")
        tgt = elem.find("target")
        if tgt is not None:
            c.target_type = enum_attr(tgt, "type", TARGET_TYPES[c.kind],
                                      what=f"target type for {c.kind} device")
            c.target_port = int_attr(tgt, "port")
            c.target_name = tgt.get("name")
            c.target_state = tgt.get("state")
            model = tgt.find("model")
            if model is not None:
                c.target_model = model.get("name")
                if c.target_model not in (*SERIAL_MODELS.values(), "isa-debugcon",
                                          "spapr-vty", "pl011", "sclpconsole", "sclplmconsole",
                                          "16550a"):
                    raise xml_error(f"Unknown target model '{c.target_model}'")
        if c.kind == "channel" and c.target_type is None:
            raise xml_error("unknown target type '' specified for character device")
        c._parse_common(elem, ("source", "protocol", "target"))
        return c

    @property
    def path(self) -> str | None:
        return self.sources[0].get("path") if self.sources else None

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """Serial ports are isa-serial with a model; consoles default to the serial alias;
        unix channels bind."""
        if self.kind == "serial":
            self.target_type = self.target_type or "isa-serial"
            if self.target_model is None and self.target_type in SERIAL_MODELS:
                self.target_model = SERIAL_MODELS[self.target_type]
        elif self.kind == "console":
            self.target_type = self.target_type or "serial"
            if self.target_port is None:
                self.target_port = 0
        if self.type == "unix" and self.sources and "mode" not in self.sources[0]:
            self.sources[0] = {"mode": "bind", **self.sources[0]}
        if (self.type == "unix" and len(self.sources) == 1 and not self.sources[0].get("path")
                and self.sources[0].get("mode") == "bind"):
            self.sources = []     # nothing to say until the driver picks the path at start
        if self.type == "tcp" and self.protocol is None:
            self.protocol = "raw"
        if (self.kind == "channel" and self.type == "spicevmc" and self.target_type == "virtio"
                and not self.target_name):
            self.target_name = SPICE_AGENT     # the SPICE agent's channel

    def validate(self) -> None:
        if self.type not in SUPPORTED_SOURCES:
            raise not_runnable(f"character device type '{self.type}' is not supported")
        if self.type in ("file", "pipe", "dev") and not self.path:
            raise xml_error("Missing source path attribute for char device")
        if self.type == "tcp" and not (self.sources and self.sources[0].get("service")):
            raise xml_error("Missing source service attribute for char device")
        if self.kind == "channel" and self.target_type == "virtio" and not self.target_name:
            if self.type != "pty":
                raise xml_error("virtio channel needs a target name")
        if self.kind == "channel" and self.target_type != "virtio":
            raise not_runnable(f"channel target type '{self.target_type}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element(self.kind), ("type", self.type), ("tty", self.tty))
        for source in self.sources:
            sub(e, "source", *source.items())
        if self.protocol is not None:
            sub(e, "protocol", ("type", self.protocol))
        if any(v is not None for v in (self.target_type, self.target_port, self.target_name,
                                         self.target_model)):
            tgt = sub(e, "target", ("type", self.target_type), ("name", self.target_name),
                      ("state", self.target_state), ("port", self.target_port))
            if self.target_model is not None:
                sub(tgt, "model", ("name", self.target_model))
        return self._format_common(e)


def virtio_serial_address(port: int, controller: int = 0) -> Address:
    return Address("virtio-serial", {"controller": str(controller), "bus": "0", "port": str(port)})
