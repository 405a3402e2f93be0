"""<graphics>: vnc and spice (virDomainGraphicsDef)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import (DeviceBase, enum_attr, int_attr, not_runnable, set_attrs,
                                       sub, unsupported, xml_error, yesno, yesno_attr)

TYPES = ("sdl", "vnc", "rdp", "desktop", "spice", "egl-headless", "dbus")
LISTEN_TYPES = ("address", "network", "socket", "none")


@dataclass
class Graphics(DeviceBase):
    type: str = "vnc"
    port: int | None = None               # -1: pick one (autoport)
    autoport: bool | None = None
    tls_port: int | None = None           # spice
    listen: str | None = None             # listen= attribute
    passwd: str | None = None
    keymap: str | None = None
    listens: list = field(default_factory=list)  # attribute dicts of each <listen>

    _OWNED = frozenset({("", "port"), ("", "tlsPort"), ("", "autoport"), ("", "listen")})

    @classmethod
    def parse(cls, elem: etree._Element) -> "Graphics":
        g = cls(type=enum_attr(elem, "type", TYPES, what="graphics device type",
                               missing="missing graphics device type"))
        g.port = int_attr(elem, "port", minimum=-1)
        g.tls_port = int_attr(elem, "tlsPort", minimum=-1)
        g.autoport = yesno_attr(elem, "autoport")
        g.listen = elem.get("listen")
        g.passwd = elem.get("passwd")
        g.keymap = elem.get("keymap")
        for lst in elem.findall("listen"):
            enum_attr(lst, "type", LISTEN_TYPES, what="graphics listen type",
                      missing="graphics listen type must be specified")
            g.listens.append(dict(lst.attrib))
        if g.listen is not None and g.listens:
            first = g.listens[0]
            if first.get("type") == "address" and first.get("address") not in (None, g.listen):
                raise xml_error("graphics 'listen' attribute '%s' must match 'address' attribute "
                                "of first listen element (found '%s')"
                                % (g.listen, first.get("address")))
        g._parse_common(elem, ("listen",))
        return g

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """port -1 means autoport; VNC and spice get an address <listen> (libvirt's post-parse)."""
        if self.type in ("vnc", "spice"):
            if self.autoport is None:
                self.autoport = self.port is None or self.port == -1
            if self.type == "spice" and self.autoport:
                # libvirt keeps no placeholder ports for an autoport SPICE display
                self.port = None if self.port == -1 else self.port
                self.tls_port = None if self.tls_port == -1 else self.tls_port
            elif self.autoport and self.port is None:
                self.port = -1
            if not self.listens:
                self.listens.append({"type": "address", **({"address": self.listen}
                                                           if self.listen else {})})
            elif self.listen is None and self.listens[0].get("address"):
                self.listen = self.listens[0]["address"]

    def validate(self) -> None:
        if self.type not in ("vnc", "spice"):
            raise not_runnable(f"unsupported graphics type '{self.type}'")
        for lst in self.listens:
            if lst["type"] not in ("address", "none", "socket"):
                raise not_runnable(f"listen type '{lst['type']}' is not supported")

    @property
    def listen_address(self) -> str | None:
        for lst in self.listens:
            if lst.get("type") == "address":
                return lst.get("address")
        return self.listen

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("graphics"), ("type", self.type), ("port", self.port),
                      ("tlsPort", self.tls_port),
                      ("autoport", None if self.autoport is None else yesno(self.autoport)),
                      ("listen", self.listen), ("keymap", self.keymap), ("passwd", self.passwd))
        for lst in self.listens:
            sub(e, "listen", *lst.items())
        return self._format_common(e)
