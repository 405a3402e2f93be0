"""Network port XML (<networkport>): parse and format, as libvirt's virnetworkportdef.c.

A port is a guest NIC's claim on a virtual network: who owns it (the
domain's name and UUID), its MAC, the portgroup it asked for, its QoS
(``<bandwidth>``) and how it is plugged (``<plug type='network|bridge|
direct|hostdev-pci'>``, filled in by the network when the port is
allocated).  The elements pyvirtd does not act on (virtualport, vlan,
port isolated) are kept verbatim so they round-trip.

Errors follow libvirt's parser: a missing uuid/owner/mac is
VIR_ERR_INTERNAL_ERROR from VIR_FROM_NETWORK, a bad plug is
VIR_ERR_XML_ERROR, bandwidth errors come from netdev_bandwidth_conf.c
(VIR_FROM_NONE).
"""

from __future__ import annotations

import copy
import re
import uuid as uuidlib
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_libvirt, format_uuid, invalid_attr, parse_definition

_FROM = P.VIR_FROM_NETWORK

PLUG_TYPES = ("network", "bridge", "direct", "hostdev-pci")
# virNetDevMacVLanMode (src/util/virnetdevmacvlan.c)
DIRECT_MODES = ("vepa", "private", "bridge", "passthrough")
MAC_TABLE_MANAGERS = ("kernel", "libvirt")
# elements kept as given, in the place libvirt's formatter writes them
_VERBATIM_BEFORE_BANDWIDTH = ("virtualport",)
_VERBATIM_AFTER_BANDWIDTH = ("vlan", "port")
_MAC_RE = re.compile(r"^([0-9a-fA-F]{1,2}[:-]){5}[0-9a-fA-F]{1,2}$")

# virNetworkPortGetParameters / SetParameters field names (libvirt-network.h)
PARAM_IN_AVERAGE, PARAM_IN_PEAK = "inbound.average", "inbound.peak"
PARAM_IN_BURST, PARAM_IN_FLOOR = "inbound.burst", "inbound.floor"
PARAM_OUT_AVERAGE, PARAM_OUT_PEAK, PARAM_OUT_BURST = (
    "outbound.average", "outbound.peak", "outbound.burst")


def _err(message: str, code: int = P.VIR_ERR_INTERNAL_ERROR, domain: int = _FROM) -> VirError:
    return VirError(code, message, domain=domain)


@dataclass
class Rate:
    """One direction of <bandwidth> (virNetDevBandwidthRate), in KiB/s and KiB."""
    average: int = 0
    peak: int = 0
    floor: int = 0
    burst: int = 0


@dataclass
class Bandwidth:
    inbound: Rate | None = None
    outbound: Rate | None = None


@dataclass
class PortDef:
    uuid: bytes
    owner_name: str
    owner_uuid: bytes
    mac: str
    group: str | None = None
    bandwidth: Bandwidth | None = None
    trust_guest_rx: str | None = None   # rxfilters trustGuest: 'yes' / 'no'
    plug: etree._Element | None = None  # canonical <plug>, None for plug type none
    verbatim: list[etree._Element] = field(default_factory=list)

    @property
    def plug_type(self) -> str:
        return "none" if self.plug is None else self.plug.get("type")

    @property
    def uuid_str(self) -> str:
        return format_uuid(self.uuid)

    def copy(self) -> "PortDef":
        return copy.deepcopy(self)


def _uuid(text: str | None) -> bytes:
    try:
        return uuidlib.UUID(text.strip()).bytes
    except (ValueError, AttributeError):
        raise _err(f"Unable to parse UUID '{text}'") from None


def _number(value: str, what: str) -> int:
    if not value.isdigit():
        raise _err(f"could not convert bandwidth {what} value '{value}'",
                   P.VIR_ERR_CONFIG_UNSUPPORTED, P.VIR_FROM_NONE)
    return int(value)


def _parse_rate(elem: etree._Element) -> Rate:
    average, floor = elem.get("average"), elem.get("floor")
    if average is None and floor is None:
        raise _err("Missing mandatory average or floor attributes", P.VIR_ERR_XML_DETAIL,
                   P.VIR_FROM_NONE)
    if (elem.get("peak") is not None or elem.get("burst") is not None) and average is None:
        raise _err("'peak' and 'burst' require 'average' attribute",
                   P.VIR_ERR_CONFIG_UNSUPPORTED, P.VIR_FROM_NONE)
    rate = Rate()
    for attr in ("average", "peak", "burst", "floor"):
        if elem.get(attr) is not None:
            setattr(rate, attr, _number(elem.get(attr), attr))
    return rate


def parse_bandwidth(elem: etree._Element) -> Bandwidth | None:
    """virNetDevBandwidthParse with floor allowed: None when neither direction is given."""
    inbound = elem.findall("inbound")
    outbound = elem.findall("outbound")
    for name, found in (("inbound", inbound), ("outbound", outbound)):
        if len(found) > 1:
            raise _err(f"Only one child <{name}> element allowed", P.VIR_ERR_XML_DETAIL,
                       P.VIR_FROM_NONE)
    bw = Bandwidth(inbound=_parse_rate(inbound[0]) if inbound else None,
                   outbound=_parse_rate(outbound[0]) if outbound else None)
    if bw.outbound is not None and bw.outbound.floor:
        raise _err("'floor' attribute allowed only in <inbound> element",
                   P.VIR_ERR_CONFIG_UNSUPPORTED, P.VIR_FROM_NONE)
    return bw if bw.inbound or bw.outbound else None


def _tristate(elem: etree._Element, attr: str) -> str | None:
    value = elem.get(attr)
    if value is not None and value not in ("yes", "no"):
        raise invalid_attr(attr, elem.tag, value)
    return value


def canonical_plug(plug: etree._Element) -> etree._Element | None:
    """A <plug> checked and in libvirt's shape (attribute order, PCI address form)."""
    ptype = plug.get("type")
    if ptype is None or ptype == "none":
        return None
    if ptype not in PLUG_TYPES:
        raise invalid_attr("type", "plug", ptype)
    out = etree.Element("plug", type=ptype)
    if ptype in ("network", "bridge"):
        if not plug.get("bridge"):
            raise _err("Missing network port bridge name", P.VIR_ERR_XML_ERROR)
        out.set("bridge", plug.get("bridge"))
        mgr = plug.get("macTableManager")
        if mgr is not None:
            if mgr not in MAC_TABLE_MANAGERS:
                raise _err(f"Invalid macTableManager setting '{mgr}' in network port",
                           P.VIR_ERR_XML_ERROR)
            out.set("macTableManager", mgr)
    elif ptype == "direct":
        if not plug.get("dev"):
            raise _err("Missing network port link device name", P.VIR_ERR_XML_ERROR)
        mode = plug.get("mode", "vepa")
        if mode not in DIRECT_MODES:
            raise _err(f"Invalid mode setting '{mode}' in network port", P.VIR_ERR_XML_ERROR)
        out.set("dev", plug.get("dev"))
        out.set("mode", mode)
    else:   # hostdev-pci
        managed = _tristate(plug, "managed")
        if managed is not None:
            out.set("managed", managed)
        driver = plug.find("driver")
        if driver is not None and driver.get("name"):
            if driver.get("name") not in ("kvm", "vfio", "xen"):
                raise _err("Missing network port driver name", P.VIR_ERR_XML_ERROR)
            etree.SubElement(out, "driver", name=driver.get("name"))
        address = plug.find("address")
        if address is None:
            raise _err("Missing network port PCI address", P.VIR_ERR_XML_ERROR)
        addr = etree.SubElement(out, "address", type="pci")
        for attr in ("domain", "bus", "slot", "function"):
            value = address.get(attr, "0")
            try:
                number = int(value, 0)
            except ValueError:
                raise _err(f"Cannot parse <address> '{attr}' attribute",
                           P.VIR_ERR_XML_ERROR) from None
            addr.set(attr, f"0x{number:04x}" if attr == "domain" else
                     f"0x{number:02x}" if attr in ("bus", "slot") else f"0x{number:x}")
    return out


def parse(text: str) -> PortDef:
    """virNetworkPortDefParseString: the port as a client (or the status file) gives it."""
    root = parse_definition(text, None, what="networkport_definition", domain=_FROM)
    if root.tag != "networkport":
        raise _err("unknown root element for network port", P.VIR_ERR_XML_ERROR)
    uuid = root.findtext("uuid")
    if not uuid:
        raise _err("network port has no uuid")
    port_uuid = _uuid(uuid)
    owner_name = root.findtext("owner/name")
    if not owner_name:
        raise _err("network port has no owner name")
    owner_uuid = root.findtext("owner/uuid")
    if not owner_uuid:
        raise _err("network port has no owner UUID")
    owner = _uuid(owner_uuid)
    mac_elem = root.find("mac")
    mac = mac_elem.get("address") if mac_elem is not None else None
    if not mac:
        raise _err("network port has no mac")
    if not _MAC_RE.match(mac):
        raise _err(f"Unable to parse MAC '{mac}'")
    mac = ":".join(f"{int(b, 16):02x}" for b in re.split("[:-]", mac))
    bw_elem = root.find("bandwidth")
    rx = root.find("rxfilters")
    plug = root.find("plug")
    verbatim = [copy.deepcopy(root.find(tag))
                for tag in (*_VERBATIM_BEFORE_BANDWIDTH, *_VERBATIM_AFTER_BANDWIDTH)
                if root.find(tag) is not None]
    return PortDef(uuid=port_uuid, owner_name=owner_name, owner_uuid=owner, mac=mac,
                   group=root.findtext("group") or None,
                   bandwidth=parse_bandwidth(bw_elem) if bw_elem is not None else None,
                   trust_guest_rx=_tristate(rx, "trustGuest") if rx is not None else None,
                   plug=canonical_plug(plug) if plug is not None else None,
                   verbatim=verbatim)


def bandwidth_element(bw: Bandwidth) -> etree._Element:
    """<bandwidth> as virNetDevBandwidthFormat writes it (zero values left out)."""
    elem = etree.Element("bandwidth")
    for tag, rate in (("inbound", bw.inbound), ("outbound", bw.outbound)):
        if rate is None or not (rate.average or rate.floor):
            continue
        child = etree.SubElement(elem, tag)
        for attr in ("average", "peak", "floor", "burst"):
            if getattr(rate, attr):
                child.set(attr, str(getattr(rate, attr)))
    return elem


def to_element(port: PortDef) -> etree._Element:
    root = etree.Element("networkport")
    etree.SubElement(root, "uuid").text = port.uuid_str
    owner = etree.SubElement(root, "owner")
    etree.SubElement(owner, "name").text = port.owner_name
    etree.SubElement(owner, "uuid").text = format_uuid(port.owner_uuid)
    if port.group:
        etree.SubElement(root, "group").text = port.group
    etree.SubElement(root, "mac", address=port.mac)
    kept = {e.tag: e for e in port.verbatim}
    for tag in _VERBATIM_BEFORE_BANDWIDTH:
        if tag in kept:
            root.append(copy.deepcopy(kept[tag]))
    if port.bandwidth is not None:
        root.append(bandwidth_element(port.bandwidth))
    for tag in _VERBATIM_AFTER_BANDWIDTH:
        if tag in kept:
            root.append(copy.deepcopy(kept[tag]))
    if port.trust_guest_rx:
        etree.SubElement(root, "rxfilters", trustGuest=port.trust_guest_rx)
    if port.plug is not None:
        root.append(copy.deepcopy(port.plug))
    return root


def format(port: PortDef) -> str:
    """virNetworkPortDefFormat (an empty <bandwidth> is written open and closed, as there)."""
    return format_libvirt(to_element(port), open_empty=frozenset({"bandwidth"}))


def bandwidth_params(bw: Bandwidth | None) -> list[tuple[str, int]]:
    """(field, value) pairs of networkPortGetParameters, in its order."""
    out: list[tuple[str, int]] = []
    if bw is None:
        return out
    if bw.inbound is not None:
        out += [(PARAM_IN_AVERAGE, bw.inbound.average), (PARAM_IN_PEAK, bw.inbound.peak),
                (PARAM_IN_FLOOR, bw.inbound.floor), (PARAM_IN_BURST, bw.inbound.burst)]
    if bw.outbound is not None:
        out += [(PARAM_OUT_AVERAGE, bw.outbound.average), (PARAM_OUT_PEAK, bw.outbound.peak),
                (PARAM_OUT_BURST, bw.outbound.burst)]
    return out


def bandwidth_from_params(params: dict[str, int]) -> Bandwidth:
    """networkPortSetParameters: a direction exists only with its average (or inbound floor)."""
    inbound = Rate(params.get(PARAM_IN_AVERAGE, 0), params.get(PARAM_IN_PEAK, 0),
                   params.get(PARAM_IN_FLOOR, 0), params.get(PARAM_IN_BURST, 0))
    outbound = Rate(params.get(PARAM_OUT_AVERAGE, 0), params.get(PARAM_OUT_PEAK, 0), 0,
                    params.get(PARAM_OUT_BURST, 0))
    return Bandwidth(inbound if inbound.average or inbound.floor else None,
                     outbound if outbound.average else None)
