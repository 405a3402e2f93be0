"""<interface>: network, bridge, user, direct, ethernet (virDomainNetDef)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.devices._base import (DeviceBase, boot_order, enum_attr, not_runnable, set_attrs,
                                       sub, unsupported, xml_error)

TYPES = ("user", "ethernet", "vhostuser", "server", "client", "mcast", "udp", "network",
         "bridge", "internal", "direct", "hostdev", "vdpa", "null", "vds")
SUPPORTED_TYPES = ("user", "ethernet", "network", "bridge", "direct")
# Models QEMU knows as -device drivers (the name libvirt passes through).
MODELS = {"virtio": "virtio-net-pci", "virtio-transitional": "virtio-net-pci-transitional",
          "virtio-non-transitional": "virtio-net-pci-non-transitional",
          "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139", "ne2k_pci": "ne2k_pci",
          "pcnet": "pcnet", "vmxnet3": "vmxnet3", "igb": "igb", "usb-net": "usb-net"}
DIRECT_MODES = ("vepa", "private", "bridge", "passthrough")
_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
QEMU_MAC_PREFIX = "52:54:00"


def random_mac(prefix: str = QEMU_MAC_PREFIX) -> str:
    return prefix + "".join(f":{random.randrange(256):02x}" for _ in range(3))


@dataclass
class Interface(DeviceBase):
    type: str = "network"
    mac: str | None = None
    source: dict | None = None       # network= / bridge= / dev= mode= ...
    target_dev: str | None = None
    model: str | None = None
    driver: dict | None = None       # <driver name='vhost' queues=..>
    link_state: str | None = None
    mtu: int | None = None
    boot: int | None = None

    @classmethod
    def parse(cls, elem: etree._Element) -> "Interface":
        i = cls(type=enum_attr(elem, "type", TYPES, what="interface type", default="user"))
        if elem.get("type") is None:
            raise xml_error("missing type attribute in interface")
        mac = elem.find("mac")
        if mac is not None and mac.get("address") is not None:
            addr = mac.get("address")
            if not _MAC_RE.match(addr):
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"unable to parse mac address '{addr}'", domain=P.VIR_FROM_DOMAIN)
            if int(addr[:2], 16) & 1:
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"expected unicast mac address, found multicast '{addr}'",
                               domain=P.VIR_FROM_DOMAIN)
            i.mac = addr.lower()
        src = elem.find("source")
        if src is not None:
            i.source = dict(src.attrib)
            if i.type == "direct" and "mode" in i.source:
                enum_attr(src, "mode", DIRECT_MODES, what="mode")
        tgt = elem.find("target")
        if tgt is not None:
            i.target_dev = tgt.get("dev")
        model = elem.find("model")
        if model is not None:
            i.model = model.get("type")
            if i.model is None:
                raise xml_error("missing type attribute in interface model")
            if not re.match(r"^[a-zA-Z0-9_\-]+$", i.model):
                raise xml_error("Model name contains invalid characters")
        drv = elem.find("driver")
        if drv is not None:
            i.driver = dict(drv.attrib)
        link = elem.find("link")
        if link is not None:
            i.link_state = enum_attr(link, "state", ("up", "down"), what="interface link state")
        mtu = elem.find("mtu")
        if mtu is not None and mtu.get("size") is not None:
            if not mtu.get("size").isdigit() or int(mtu.get("size")) == 0:
                raise xml_error(f"Malformed MTU size '{mtu.get('size')}'")
            i.mtu = int(mtu.get("size"))
        i.boot = boot_order(elem)
        if i.type == "network" and not (i.source or {}).get("network"):
            raise xml_error("No <source> 'network' attribute specified with <interface type='network'/>")
        if i.type == "bridge" and not (i.source or {}).get("bridge"):
            raise xml_error("No <source> 'bridge' attribute specified with <interface type='bridge'/>")
        if i.type == "direct" and not (i.source or {}).get("dev"):
            raise xml_error("No <source> 'dev' attribute specified with <interface type='direct'/>")
        i._parse_common(elem, ("mac", "source", "target", "model", "driver", "link", "mtu", "boot"))
        return i

    def fill_defaults(self, ctx: dict | None = None) -> None:
        """A generated 52:54:00 MAC, macvtap mode vepa (the hypervisor's model default
        is its DeviceDefaults')."""
        if self.mac is None:
            self.mac = random_mac()
        if self.type == "direct" and self.source is not None and "mode" not in self.source:
            self.source["mode"] = "vepa"

    def validate(self) -> None:
        if self.type not in SUPPORTED_TYPES:
            raise not_runnable(f"interface type '{self.type}' is not supported")
        if self.model is not None and self.model not in MODELS:
            raise unsupported(f"interface model '{self.model}' is not supported")

    def to_element(self) -> etree._Element:
        e = set_attrs(etree.Element("interface"), ("type", self.type))
        if self.mac is not None:
            sub(e, "mac", ("address", self.mac))
        if self.source is not None:
            sub(e, "source", *self.source.items())
        if self.target_dev is not None:
            sub(e, "target", ("dev", self.target_dev))
        if self.model is not None:
            sub(e, "model", ("type", self.model))
        if self.driver is not None:
            sub(e, "driver", *self.driver.items())
        if self.link_state is not None:
            sub(e, "link", ("state", self.link_state))
        if self.mtu is not None:
            sub(e, "mtu", ("size", self.mtu))
        if self.boot is not None:
            sub(e, "boot", ("order", self.boot))
        return self._format_common(e)
