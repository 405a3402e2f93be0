"""Host network interfaces for hypervisor connections, read-only like libvirt's udev backend.

libvirtd answers the interface procedures of qemu:// and lxc:// connections
with src/interface/interface_backend_udev.c: it lists the host's net devices
(never bridge ports, nor the tun/tap devices guests use), calls one *active*
when its operstate is "up" and describes each from what the kernel reports
(type ethernet, bridge with its member ports, vlan with its parent, bond
with its slaves).  It cannot define, undefine, start, stop or transact, so
those procedures are not here and answer VIR_ERR_NO_SUPPORT, as with
libvirtd.  pyvirtd reads the same facts through netlink (pyroute2), plus
sysfs where libvirt reads sysfs (link speed, bonding settings), in a worker
thread: the event loop never waits on the kernel.

Names are listed in name order (udev's order is its sysfs path order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import trio
from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import interface as ifxml

_FROM = P.VIR_FROM_INTERFACE

# virConnectListAllInterfacesFlags, virInterfaceXMLFlags
LIST_INACTIVE = P.ConnectListAllInterfacesFlags.VIR_CONNECT_LIST_INTERFACES_INACTIVE
LIST_ACTIVE = P.ConnectListAllInterfacesFlags.VIR_CONNECT_LIST_INTERFACES_ACTIVE
XML_INACTIVE = P.InterfaceXMLFlags.VIR_INTERFACE_XML_INACTIVE
# a guest's tap on a bridge (VIR_NET_GENERATED_VNET_PREFIX + digit) is not a member
_GUEST_TAP = re.compile(r"^vnet\d")
# sysfs bonding/mode "balance-rr 0": libvirt's bond modes, by the kernel's number
_BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
               "balance-tlb", "balance-alb")
_ARP_VALIDATE = {1: "active", 2: "backup", 3: "all"}


@dataclass
class Link:
    """What libvirt's udev backend needs to know of one net device."""
    index: int
    name: str
    mac: str
    operstate: str          # sysfs spelling: up, down, unknown, ...
    mtu: int
    kind: str | None        # IFLA_INFO_KIND: bridge, vlan, bond, veth, tun, ...
    master: int | None
    parent: int | None      # IFLA_LINK (a vlan's real device)
    vlan_id: int | None = None
    stp: int | None = None
    delay: int | None = None


def _read_links() -> dict[str, Link]:
    from pyroute2 import IPRoute

    out = {}
    with IPRoute() as ipr:
        for msg in ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
            link = Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"),
                        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                        operstate=(msg.get_attr("IFLA_OPERSTATE") or "unknown").lower(),
                        mtu=msg.get_attr("IFLA_MTU") or 0, kind=kind,
                        master=msg.get_attr("IFLA_MASTER"), parent=msg.get_attr("IFLA_LINK"))
            if kind == "vlan" and data is not None:
                link.vlan_id = data.get_attr("IFLA_VLAN_ID")
            elif kind == "bridge" and data is not None:
                link.stp = data.get_attr("IFLA_BR_STP_STATE")
                link.delay = data.get_attr("IFLA_BR_FORWARD_DELAY")
            out[link.name] = link
    return out


def _listed(links: dict[str, Link]) -> list[Link]:
    """The devices udev's enumeration shows: no bridge ports, no tun/tap devices."""
    by_index = {l.index: l for l in links.values()}
    out = []
    for link in links.values():
        master = by_index.get(link.master) if link.master else None
        if master is not None and master.kind == "bridge":
            continue
        if link.kind == "tun":
            continue
        out.append(link)
    return sorted(out, key=lambda l: l.name)


def _speed(name: str) -> int:
    """virNetDevGetLinkInfo's speed: only for a device that is up; unknown is 0."""
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            text = f.read().strip()
    except OSError:
        return 0
    try:
        return int(text) & 0xFFFFFFFF   # libvirt reads it as an unsigned int (-1 wraps)
    except ValueError:
        return 0


def _sysfs(name: str, attr: str) -> str | None:
    try:
        with open(f"/sys/class/net/{name}/{attr}") as f:
            return f.read().strip()
    except OSError:
        return None


def _element(links: dict[str, Link], link: Link, top: bool) -> etree._Element:
    """udevGetIfaceDef + virInterfaceDefDevFormat for one device (and its members)."""
    by_index = {l.index: l for l in links.values()}
    kind = link.kind
    itype = {"bridge": "bridge", "vlan": "vlan", "bond": "bond"}.get(kind, "ethernet")
    if itype == "ethernet" and ("." in link.name or _sysfs(link.name, "bonding/mode")):
        itype = "vlan" if "." in link.name else "bond"
    elem = etree.Element("interface", type=itype, name=link.name)
    if top and link.mtu:
        etree.SubElement(elem, "mtu", size=str(link.mtu))
    if itype != "bridge" and link.operstate:
        attrs = {}
        if link.operstate == "up":
            speed = _speed(link.name)
            if speed:
                attrs["speed"] = str(speed)
        attrs["state"] = link.operstate
        etree.SubElement(elem, "link", **attrs)
    if itype == "ethernet":
        if link.mac:
            etree.SubElement(elem, "mac", address=link.mac)
    elif itype == "bridge":
        br = etree.SubElement(elem, "bridge")
        if link.stp in (0, 1):
            br.set("stp", "on" if link.stp else "off")
        if link.delay is not None:
            br.set("delay", str(link.delay))
        for member in sorted((l for l in links.values() if l.master == link.index
                              and not _GUEST_TAP.match(l.name)), key=lambda l: l.name):
            br.append(_element(links, member, top=False))
    elif itype == "vlan":
        vlan = etree.SubElement(elem, "vlan", tag=str(link.vlan_id or 0))
        parent = by_index.get(link.parent) if link.parent else None
        if parent is not None:
            etree.SubElement(vlan, "interface", name=parent.name)
    else:
        elem.append(_bond(links, link))
    return elem


def _bond(links: dict[str, Link], link: Link) -> etree._Element:
    """<bond> from the bonding driver's sysfs files, as udevGetIfaceDefBond reads them."""
    def number(attr: str) -> int:
        text = _sysfs(link.name, f"bonding/{attr}") or "0"
        return int(text.split()[-1]) if attr in ("mode", "arp_validate") else int(text or 0)

    bond = etree.Element("bond")
    mode = number("mode")
    if 0 <= mode < len(_BOND_MODES):
        bond.set("mode", _BOND_MODES[mode])
    interval, freq = number("arp_interval"), number("miimon")
    if interval > 0:
        arp = etree.SubElement(bond, "arpmon", interval=str(interval),
                               target=_sysfs(link.name, "bonding/arp_ip_target") or "")
        if number("arp_validate") in _ARP_VALIDATE:
            arp.set("validate", _ARP_VALIDATE[number("arp_validate")])
    elif freq > 0:
        mii = etree.SubElement(bond, "miimon", freq=str(freq))
        for attr in ("downdelay", "updelay"):
            if number(attr) > 0:
                mii.set(attr, str(number(attr)))
        mii.set("carrier", "netif" if number("use_carrier") else "ioctl")
    for slave in sorted((l for l in links.values() if l.master == link.index),
                        key=lambda l: l.name):
        bond.append(_element(links, slave, top=False))
    return bond


def _no_such(name: str) -> VirError:
    return VirError(P.VIR_ERR_NO_INTERFACE, f"couldn't find interface named '{name}'",
                    domain=_FROM)


class HostInterfaceSubsystem:
    """The interface procedures of hypervisor connections (libvirt's udev backend)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx

    @staticmethod
    async def _links() -> dict[str, Link]:
        return await trio.to_thread.run_sync(_read_links)

    async def _link(self, name: str) -> tuple[dict[str, Link], Link]:
        links = await self._links()
        if name not in links:
            raise _no_such(name)
        return links, links[name]

    # --------------------------------------------------------------- listing
    async def connect_num_of_interfaces(self) -> int:
        return sum(1 for l in _listed(await self._links()) if l.operstate == "up")

    async def connect_list_interfaces(self, maxnames: int) -> list[str]:
        return [l.name for l in _listed(await self._links()) if l.operstate == "up"][:maxnames]

    async def connect_num_of_defined_interfaces(self) -> int:
        return sum(1 for l in _listed(await self._links()) if l.operstate == "down")

    async def connect_list_defined_interfaces(self, maxnames: int) -> list[str]:
        return [l.name for l in _listed(await self._links())
                if l.operstate == "down"][:maxnames]

    async def connect_list_all_interfaces(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ACTIVE | LIST_INACTIVE, "udevConnectListAllInterfaces", _FROM)
        out = []
        for link in _listed(await self._links()):
            up = link.operstate == "up"
            if flags & (LIST_ACTIVE | LIST_INACTIVE) and not (
                    (flags & LIST_ACTIVE and up) or (flags & LIST_INACTIVE and not up)):
                continue
            out.append(P.remote_nonnull_interface(link.name, link.mac))
        return (out if need_results else [], len(out))

    # ---------------------------------------------------------------- lookup
    async def interface_lookup_by_name(self, name: str) -> P.remote_nonnull_interface:
        _links, link = await self._link(name)
        return P.remote_nonnull_interface(link.name, link.mac)

    async def interface_lookup_by_mac_string(self, mac: str) -> P.remote_nonnull_interface:
        # udev matches the sysfs text exactly: lower-case, colon-separated
        found = [l for l in _listed(await self._links()) if l.mac == mac]
        if not found:
            raise VirError(P.VIR_ERR_NO_INTERFACE,
                           f"couldn't find interface with MAC address '{mac}'", domain=_FROM)
        if len(found) > 1:
            raise VirError(P.VIR_ERR_MULTIPLE_INTERFACES,
                           f"the MAC address '{mac}' matches multiple interfaces", domain=_FROM)
        return P.remote_nonnull_interface(found[0].name, mac)

    async def interface_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, XML_INACTIVE, "udevInterfaceGetXMLDesc", _FROM)
        links, link = await self._link(ref.name)
        return ifxml.format(ifxml.InterfaceDef(
            await trio.to_thread.run_sync(_element, links, link, True)))

    async def interface_is_active(self, ref) -> int:
        _links, link = await self._link(ref.name)
        return int(link.operstate == "up")
