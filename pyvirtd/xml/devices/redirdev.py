"""<redirdev>: USB redirection from a SPICE client or a TCP peer (virDomainRedirdevDef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, not_runnable, set_attrs, sub,
                                       xml_error)

TYPES = ("spicevmc", "tcp")


@dataclass
class Redirdev(DeviceBase):
    bus: str = "usb"
    type: str = "spicevmc"
    sources: list = field(default_factory=list)   # attribute dicts of each <source> (tcp)

    @classmethod
    def parse(cls, elem: etree._Element) -> "Redirdev":
        bus = elem.get("bus", "usb")
        if bus != "usb":
            raise xml_error(f"unknown redirdev bus '{bus}'")
        r = cls(bus=bus, type=enum_attr(elem, "type", TYPES, what="redirdev type",
                                        default="spicevmc"))
        r.sources = [dict(s.attrib) for s in elem.findall("source")]
        r._parse_common(elem, ("source", "protocol"))
        return r

    def validate(self) -> None:
        if self.type == "tcp" and not (self.sources and self.sources[0].get("service")):
            raise xml_error("Missing source service attribute for char device")
        if self.type not in TYPES:
            raise not_runnable(f"redirdev type '{self.type}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("redirdev"), ("bus", self.bus), ("type", self.type))
        for source in self.sources:
            sub(e, "source", *source.items())
        if self.type == "tcp":
            sub(e, "protocol", ("type", "raw"))
        return self._format_common(e)
