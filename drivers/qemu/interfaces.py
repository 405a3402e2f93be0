"""Guest network interfaces of the QEMU driver: taps for type network and bridge, their addresses.

Starting a guest (qemuProcessStart -> qemuInterfaceBridgeConnect):

    taps, fds = await plug_all(state, dom, live)
        # for the i-th <interface> of type network: a tap from the network
        # subsystem (NetworkSubsystem.plug_interface) on the network's bridge;
        # of type bridge: a tap on that host bridge.  fds maps the interface's
        # index to the open tap fd, which build_command turns into
        # ``-netdev tap,fd=N`` and process.launch passes to QEMU (pass_fds).
        # The live definition gets <target dev='vnetN'/> (and, for type
        # network, the bridge on <source>), as libvirt's live XML has them.
    close_fds(fds)                      # once QEMU holds its own copies
    await unplug_all(state, taps)       # [(tap, mac)]; when the guest stops
                                        # (plugged(live) lists them again);
                                        # the kernel also drops a tap with
                                        # its last fd, i.e. when QEMU exits

Taps are named ``vnet%d`` unless the definition names one that does not
start with ``vnet`` or ``macvtap`` (libvirt ignores those, as auto-generated
names of a previous run).  A MAC already used by another running guest of
this driver on the same network or bridge is refused before anything is made.
Types user and ethernet (a tap made by someone else) need nothing here;
direct (macvtap) is not implemented and is refused with libvirt's wording for
an unsupported type.

`interface_addresses` answers DOMAIN_INTERFACE_ADDRESSES with
VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE: the DHCP leases that the
network subsystem's dnsmasq handed to the guest's MACs, per interface of
type network, as libvirt's qemuDomainInterfaceAddresses -> virDomainNetDHCPInterfaces.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

if TYPE_CHECKING:
    from .driver import QemuDomain, QemuDriverState

log = logging.getLogger(__name__)

TAP_PATTERN = "vnet%d"
_AUTO_PREFIXES = ("vnet", "macvtap")


def _network(state: "QemuDriverState") -> Any:
    sub = state.ctx.shared.get("network")
    if sub is None:
        raise VirError(P.VIR_ERR_NO_SUPPORT, "network subsystem is not available",
                       domain=P.VIR_FROM_QEMU)
    return sub


def _attachment(iface: etree._Element) -> tuple[str, str] | None:
    """('network', name) or ('bridge', name) for an interface that needs a tap from us."""
    src = iface.find("source")
    kind = iface.get("type")
    if kind == "network" and src is not None and src.get("network"):
        return ("network", src.get("network"))
    if kind == "bridge" and src is not None and src.get("bridge"):
        return ("bridge", src.get("bridge"))
    return None


def _mac(iface: etree._Element) -> str:
    mac = iface.find("mac")
    return mac.get("address").lower() if mac is not None and mac.get("address") else ""


def _check_mac_unique(state: "QemuDriverState", dom: "QemuDomain", where: tuple[str, str],
                      mac: str) -> None:
    for other in state.domains.values():
        if other is dom or not other.active:
            continue
        for iface in other.definition.devices_of("interface"):
            if _attachment(iface) == where and _mac(iface) == mac:
                kind, name = where
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"MAC address '{mac}' is already in use on {kind} '{name}' "
                               f"by domain '{other.name}'", domain=P.VIR_FROM_QEMU)


def _tap_name(iface: etree._Element) -> str:
    target = iface.find("target")
    dev = target.get("dev") if target is not None else None
    if dev and not dev.startswith(_AUTO_PREFIXES):
        return dev
    return TAP_PATTERN


async def plug_all(state: "QemuDriverState", dom: "QemuDomain",
                   live: domxml.DomainDef) -> tuple[list[tuple[str, str]], dict[int, int]]:
    """Make the taps of ``live``'s interfaces; on failure nothing is left behind."""
    taps: list[tuple[str, str]] = []
    fds: dict[int, int] = {}
    try:
        for i, iface in enumerate(live.devices_of("interface")):
            made = await plug_one(state, dom, iface)
            if made is not None:
                tap, mac, fd = made
                taps.append((tap, mac))
                fds[i] = fd
    except BaseException:
        close_fds(fds)
        await unplug_all(state, taps)
        raise
    return taps, fds


async def plug_one(state: "QemuDriverState", dom: "QemuDomain",
                   iface: etree._Element) -> tuple[str, str, int] | None:
    """The tap of one <interface> (start or hotplug): (tap, mac, open fd), or None
    when its type needs none.  ``iface`` gets <target dev> (and the network's
    bridge on <source>), as libvirt's live XML has them."""
    from pyvirtd.network import _netlink

    kind = iface.get("type")
    if kind == "direct":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       "Unsupported network type direct (macvtap is not available)",
                       domain=P.VIR_FROM_QEMU)
    where = _attachment(iface)
    if where is None:
        return None
    mac = _mac(iface)
    _check_mac_unique(state, dom, where, mac)
    mtu_elem = iface.find("mtu")
    mtu = int(mtu_elem.get("size")) if mtu_elem is not None else None
    if where[0] == "network":
        sub = _network(state)
        tap, fd = await sub.plug_interface(where[1], mac, tap_name=_tap_name(iface), mtu=mtu)
        bridge = sub.bridge_of(where[1])
        iface.find("source").set("bridge", bridge)
    else:
        try:
            tap, fd = await _netlink("open_tap", _tap_name(iface), where[1], mac, mtu, True)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"Unable to add bridge {where[1]} port {_tap_name(iface)}: "
                           f"{exc.strerror or exc}", domain=P.VIR_FROM_QEMU) from None
    target = iface.find("target")
    if target is None:
        target = etree.Element("target")
        # after <source> (or <mac>), where libvirt prints it
        anchor = iface.find("source")
        if anchor is None:
            anchor = iface.find("mac")
        if anchor is not None:
            anchor.addnext(target)
        else:
            iface.insert(0, target)
    target.attrib.clear()
    target.set("dev", tap)
    return tap, mac, fd


def close_fds(fds: dict[int, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def plugged(live: domxml.DomainDef) -> list[tuple[str, str]]:
    """(tap, guest MAC) of each tap a running guest's live definition says it has."""
    out = []
    for iface in live.devices_of("interface"):
        if _attachment(iface) is None:
            continue
        target = iface.find("target")
        if target is not None and target.get("dev"):
            out.append((target.get("dev"), _mac(iface)))
    return out


def _delete_own_tap(tap: str, mac: str) -> None:
    """Delete ``tap`` if it is still the one made for ``mac`` (a tap carries the
    guest MAC with first byte 0xFE): a name reused by another guest meanwhile stays."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=tap)
        if not found:
            return
        addr = (ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS") or "").lower()
        if mac and addr != "fe" + mac[2:]:
            return
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code != 19:   # ENODEV: gone meanwhile
                raise


async def unplug_all(state: "QemuDriverState", taps: list[tuple[str, str]]) -> None:
    """Remove a guest's taps (never raises; a tap already gone with QEMU's fds is fine)."""
    import trio

    for tap, mac in taps:
        try:
            await trio.to_thread.run_sync(_delete_own_tap, tap, mac)
        except Exception:
            log.exception("removing tap %s", tap)


# DOMAIN_INTERFACE_ADDRESSES
SRC_LEASE, SRC_AGENT, SRC_ARP = 0, 1, 2
IP_ADDR_TYPE_IPV4 = 0


def arp_addresses(dom: "QemuDomain", arp_table: str) -> list:
    """remote_domain_interface list from the host's ARP table (source arp, virArpTableGet)."""
    by_mac: dict[str, list[str]] = {}
    for line in arp_table.splitlines()[1:]:
        fields = line.split()
        # IP address, HW type, Flags, HW address, Mask, Device; flags 0x0 = incomplete
        if len(fields) >= 4 and fields[2] != "0x0":
            by_mac.setdefault(fields[3].lower(), []).append(fields[0])
    out = []
    for iface in dom.definition.devices_of("interface"):
        mac = _mac(iface)
        if mac not in by_mac:
            continue
        target = iface.find("target")
        name = target.get("dev") if target is not None and target.get("dev") else "-"
        out.append(P.remote_domain_interface(
            name, mac, [P.remote_domain_ip_addr(IP_ADDR_TYPE_IPV4, ip, 0) for ip in by_mac[mac]]))
    return out


def interface_addresses(state: "QemuDriverState", dom: "QemuDomain") -> list:
    """remote_domain_interface list from the networks' DHCP leases (source lease)."""
    sub = state.ctx.shared.get("network")
    out = []
    for iface in dom.definition.devices_of("interface"):
        where = _attachment(iface)
        if where is None or where[0] != "network" or sub is None:
            continue
        mac = _mac(iface)
        try:
            ref = sub.network_lookup_by_name(where[1])
            leases, _n = sub.network_get_dhcp_leases(ref, mac, 1, 0)
        except VirError:
            continue
        if not leases:
            continue   # libvirt lists only the interfaces that have a lease
        addrs = [P.remote_domain_ip_addr(l.type, l.ipaddr, l.prefix) for l in leases]
        target = iface.find("target")
        name = target.get("dev") if target is not None and target.get("dev") else "-"
        out.append(P.remote_domain_interface(name, mac, addrs))
    return out
