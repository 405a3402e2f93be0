"""Guest network interfaces of local hypervisor drivers: taps, macvtaps, network ports, addresses.

The QEMU driver hands the tap fds to QEMU; the UML driver keeps the taps
persistent and gives the kernel their names (drivers/uml/nics.py).  Errors
name the driver that asks (``state.error_domain``).

Starting a guest (qemuProcessStart -> qemuInterfaceBridgeConnect /
qemuInterfaceDirectConnect):

    taps, fds = await plug_all(state, dom, live)
        # for the i-th <interface> of type network: a port on the network
        # (ctx.services.network.create_port, libvirt >= 5.5) says how to plug
        # it: a tap on the network's bridge, or for a macvtap-mode network
        # (forward bridge/vepa/private/passthrough without a bridge) a
        # macvtap on the device of its pool the port got; of type bridge: a
        # tap on that host bridge; of type direct: a macvtap on <source dev>
        # in <source mode>.  fds maps the interface's index to the open tap
        # (or /dev/tapN) fd, which build_command turns into
        # ``-netdev tap,fd=N`` and process.launch passes to QEMU (pass_fds).
        # The live definition gets <target dev='vnetN'/> ('macvtapN') and,
        # for type network, <source network=.. portid=.. bridge=..> (or
        # dev=.. mode=.. with type='direct'), as libvirt's live XML has them.
    close_fds(fds)                      # once QEMU holds its own copies
    await unplug_all(state, taps, live.devices_of("interface"))  # when the guest stops
                                        # (plugged(live) lists them again):
                                        # deletes taps and macvtaps (the
                                        # kernel drops a tap, not a macvtap,
                                        # with its last fd) and gives the
                                        # network ports back

Taps are named ``vnet%d`` (macvtaps ``macvtap%d``) unless the definition
names one that does not start with ``vnet`` or ``macvtap`` (libvirt ignores
those, as auto-generated names of a previous run).  A MAC already used by
another running guest of this driver on the same network or bridge is
refused before anything is made.  Types user and ethernet (a tap made by
someone else) need nothing here.  Without the kernel's macvtap driver a
direct NIC fails as libvirt's does: "error creating macvtap interface
macvtap0@DEV (MAC): Operation not supported".

`interface_addresses` answers DOMAIN_INTERFACE_ADDRESSES with
VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE: the DHCP leases that the
network subsystem's dnsmasq handed to the guest's MACs, per interface of
type network, as libvirt's qemuDomainInterfaceAddresses -> virDomainNetDHCPInterfaces.
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from typing import TYPE_CHECKING, Iterable

import trio
from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import networkport as portxml

if TYPE_CHECKING:
    from pyvirtd.driver.hypervisor import HypervisorDomain as QemuDomain
    from pyvirtd.driver.hypervisor import HypervisorState
    from pyvirtd.driver.hypervisor import HypervisorState as QemuState

log = logging.getLogger(__name__)

TAP_PATTERN = "vnet%d"
MACVTAP_PATTERN = "macvtap%d"
_AUTO_PREFIXES = ("vnet", "macvtap")


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


def _check_mac_unique(state: "QemuState", dom: "QemuDomain", where: tuple[str, str],
                      mac: str) -> None:
    for other in state.domains.values():
        if other is dom or not other.active:
            continue
        for iface in other.definition.devices_of("interface"):
            if _attachment(iface) == where and _mac(iface) == mac:
                kind, name = where
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"MAC address '{mac}' is already in use on {kind} '{name}' "
                               f"by domain '{other.name}'", domain=state.error_domain)


def _tap_name(iface: etree._Element) -> str:
    target = iface.find("target")
    dev = target.get("dev") if target is not None else None
    if dev and not dev.startswith(_AUTO_PREFIXES):
        return dev
    return TAP_PATTERN


async def plug_all(state: "QemuState", dom: "QemuDomain",
                   live: domxml.DomainDef) -> tuple[list[tuple[str, str]], dict[int, int]]:
    """Make the taps of ``live``'s interfaces; on failure nothing is left behind."""
    taps: list[tuple[str, str]] = []
    fds: dict[int, int] = {}
    try:
        for i, iface in enumerate(live.devices_of("interface")):
            made = await plug_one(state, dom, iface, live)
            if made is not None:
                tap, mac, fd = made
                taps.append((tap, mac))
                fds[i] = fd
    except BaseException:
        close_fds(fds)
        with trio.CancelScope(shield=True):
            await unplug_all(state, taps, live.devices_of("interface"))
        raise
    return taps, fds


async def plug_one(state: "QemuState", dom: "QemuDomain", iface: etree._Element,
                   live: domxml.DomainDef) -> tuple[str, str, int] | None:
    """The tap or macvtap of one <interface> (at start or hotplug): (device, mac,
    open fd), or None when its type needs none.  A NIC on a network takes a port
    there first.  ``iface`` gets <target dev> and the port's <source> attributes,
    as libvirt's live XML has them; on failure the caller gives the port back
    (unplug_all with the interface)."""
    kind = iface.get("type")
    where = _attachment(iface)
    mac = _mac(iface)
    mtu_elem = iface.find("mtu")
    mtu = int(mtu_elem.get("size")) if mtu_elem is not None else None
    if kind == "ethernet" and state.confinement.switches_user:
        return await _open_ethernet(iface, mac, mtu, state.error_domain)
    if where is None and kind != "direct":
        return None
    if kind == "direct":
        src = iface.find("source")
        tap, fd = await _open_macvtap(state, iface, src.get("dev"), src.get("mode", "vepa"), mac)
        return _show_target(iface, tap, mac, fd)
    _check_mac_unique(state, dom, where, mac)
    bridge = where[1]
    if where[0] == "network":
        port = await take_port(state, live, iface, where[1])   # a failure below releases it
        if port.plug_type == "hostdev-pci":
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"Unsupported network type hostdev-pci of network '{where[1]}'",
                           domain=state.error_domain)
        if port.plug_type == "direct":
            iface.set("type", "direct")   # the live XML shows the actual type, as libvirt's
            tap, fd = await _open_macvtap(state, iface, port.plug.get("dev"),
                                          port.plug.get("mode"), mac)
            return _show_target(iface, tap, mac, fd)
        if port.plug_type == "bridge":
            iface.set("type", "bridge")
        bridge = port.plug.get("bridge")
    from pyvirtd.network import _netlink
    try:
        tap, fd = await _netlink("open_tap", _tap_name(iface), bridge, mac, mtu, True)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Unable to add bridge {bridge} port {_tap_name(iface)}: "
                       f"{exc.strerror or exc}", domain=state.error_domain) from None
    made = _show_target(iface, tap, mac, fd)
    try:
        await state.ctx.services.nwfilter.bind_interface(live.name, live.uuid, iface, tap)
    except BaseException:
        os.close(fd)
        raise
    return made


async def _open_ethernet(iface: etree._Element, mac: str, mtu: int | None,
                         error_domain: int) -> tuple[str, str, int]:
    """The tap of an <interface type='ethernet'> for a confined QEMU, which may
    neither open /dev/net/tun nor attach a tap: the daemon opens (or makes) it
    and QEMU gets the fd, as libvirt does.  It is never deleted here: one we
    made goes with QEMU's fd, one the admin made stays."""
    from pyvirtd.network import _netlink
    target = iface.find("target")
    name = target.get("dev") if target is not None and target.get("dev") else TAP_PATTERN
    try:
        tap, fd = await _netlink("open_tap", name, None, mac, mtu, True)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Unable to create tap device {name}: {exc.strerror or exc}",
                       domain=error_domain) from None
    if target is None:
        _show_target(iface, tap, mac, fd)
    else:
        target.set("dev", tap)
    return tap, mac, fd


def _show_target(iface: etree._Element, tap: str, mac: str, fd: int) -> tuple[str, str, int]:
    """<target dev=TAP> after <source> (or <mac>), where libvirt prints it."""
    target = iface.find("target")
    if target is None:
        target = etree.Element("target")
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


def saved_macs(state: "QemuState") -> str:
    """Where passthrough parents' own MACs wait to be put back."""
    return str(state.store.run_dir / "netdev")


async def _open_macvtap(state: "QemuState", iface: etree._Element, dev: str, mode: str,
                        mac: str) -> tuple[str, int]:
    """A macvtap on host device ``dev`` for a direct NIC (virNetDevMacVLanCreateWithVPortProfile)."""
    from pyvirtd.network import _netlink

    name = _tap_name(iface)
    if name == TAP_PATTERN:
        name = MACVTAP_PATTERN
    try:
        return await _netlink("open_macvtap", name, dev, mode, mac, saved_macs(state))
    except OSError as exc:
        if exc.errno == 19 and exc.strerror and exc.strerror.startswith("Unable"):
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, exc.strerror, domain=P.VIR_FROM_NET) from None
        # libvirt names the macvtap it tried (macvtapN) in the message
        tried = exc.filename or name.replace("%d", "0")
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"error creating macvtap interface {tried}@{dev} ({mac}): "
                       f"{exc.strerror or exc}", domain=P.VIR_FROM_NET) from None


async def take_port(state: "HypervisorState", live: domxml.DomainDef, iface: etree._Element,
                    net_name: str) -> portxml.PortDef:
    """A port on network ``net_name`` for the NIC ``iface`` of ``live`` (QEMU taps and
    LXC veths alike); the live <source> shows it (portid, and where it is plugged),
    so `release_ports` gives it back whatever happens next."""
    port = await state.ctx.services.network.create_port(net_name, _port_request(live, iface))
    _show_port(iface, port)
    return port


async def release_ports(state: "HypervisorState", ifaces: Iterable[etree._Element]) -> None:
    """Give back the network ports these live <interface>s hold; never raises (a port
    gone with its network is fine)."""
    for net_name, port_uuid in ports(ifaces):
        try:
            await state.ctx.services.network.delete_port(net_name, port_uuid)
        except Exception:
            log.exception("releasing port of network %s", net_name)


def _port_request(live: domxml.DomainDef, iface: etree._Element) -> portxml.PortDef:
    """The port a guest NIC asks its network for (virDomainNetDefToNetworkPort)."""
    src = iface.find("source")
    bw = iface.find("bandwidth")
    verbatim = [copy.deepcopy(e) for e in (iface.find("virtualport"), iface.find("vlan"))
                if e is not None]
    return portxml.PortDef(
        uuid=uuid.uuid4().bytes, owner_name=live.name, owner_uuid=live.uuid, mac=_mac(iface),
        group=src.get("portgroup"),
        bandwidth=portxml.parse_bandwidth(bw) if bw is not None else None,
        trust_guest_rx=iface.get("trustGuestRxFilters"), verbatim=verbatim)


def _show_port(iface: etree._Element, port: portxml.PortDef) -> None:
    """The live <source>: network, portgroup, portid, then where the port is plugged."""
    src = iface.find("source")
    attrs = dict(src.attrib)
    src.attrib.clear()
    for key in ("network", "portgroup"):
        if key in attrs:
            src.set(key, attrs.pop(key))
    src.set("portid", port.uuid_str)
    if port.plug_type in ("network", "bridge"):
        src.set("bridge", port.plug.get("bridge"))
    elif port.plug_type == "direct":
        src.set("dev", port.plug.get("dev"))
        src.set("mode", port.plug.get("mode"))
    for key, value in attrs.items():
        if key not in ("portid", "bridge", "dev", "mode"):
            src.set(key, value)


async def reclaim_ports(state: "QemuState", live: domxml.DomainDef) -> None:
    """After a daemon restart, make sure the network still knows each port the guest
    holds (libvirt's virDomainNetNotifyActualDevice: a port lost with a restarted
    network is created again, as plugged, with VIR_NETWORK_PORT_CREATE_RECLAIM)."""
    for iface in live.devices_of("interface"):
        src = iface.find("source")
        if src is None or not src.get("network") or not src.get("portid"):
            continue
        port = _port_request(live, iface)
        port.uuid = uuid.UUID(src.get("portid")).bytes
        kind = iface.get("type")
        if kind == "direct":
            port.plug = etree.Element("plug", type="direct", dev=src.get("dev", ""),
                                      mode=src.get("mode", "vepa"))
        else:
            port.plug = etree.Element("plug", type="bridge" if kind == "bridge" else "network",
                                      bridge=src.get("bridge", ""))
        try:
            await state.ctx.services.network.create_port(src.get("network"), port, reclaim=True)
        except VirError as exc:
            log.warning("%s: port %s of network %s not reclaimed: %s", live.name,
                        src.get("portid"), src.get("network"), exc.message)


def ports(ifaces: Iterable[etree._Element]) -> list[tuple[str, bytes]]:
    """(network, port uuid) of each network port these live <interface>s hold."""
    out = []
    for iface in ifaces:
        src = iface.find("source")
        if src is not None and src.get("network") and src.get("portid"):
            out.append((src.get("network"), uuid.UUID(src.get("portid")).bytes))
    return out


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
        if _attachment(iface) is None and iface.get("type") != "direct":
            continue
        target = iface.find("target")
        if target is not None and target.get("dev"):
            out.append((target.get("dev"), _mac(iface)))
    return out


def _is_macvtap(name: str) -> bool:
    from pyvirtd.network import netlink
    return netlink.link_kind(name) == "macvtap"


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


async def unplug_all(state: "QemuState", taps: list[tuple[str, str]],
                     ifaces: Iterable[etree._Element] = ()) -> None:
    """Remove a guest's taps and give back the network ports of ``ifaces`` (its live
    <interface>s: all of them when it stops, one on a hot-unplug).

    Never raises: a tap already gone with QEMU's fds, or a port gone with its
    network, is fine.
    """
    from pyvirtd.network import netlink

    for tap, mac in taps:
        await state.ctx.services.nwfilter.unbind_interface(tap)
        try:
            if await trio.to_thread.run_sync(_is_macvtap, tap):
                await trio.to_thread.run_sync(netlink.delete_macvtap, tap, mac, saved_macs(state))
            else:
                await trio.to_thread.run_sync(_delete_own_tap, tap, mac)
        except Exception:
            log.exception("removing tap %s", tap)
    await release_ports(state, ifaces)


# DOMAIN_INTERFACE_ADDRESSES
_SRC = P.DomainInterfaceAddressesSource
SRC_LEASE, SRC_AGENT, SRC_ARP = (_SRC.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
                                 _SRC.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
                                 _SRC.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP)
IP_ADDR_TYPE_IPV4 = 0


async def addresses(state: "QemuState", dom: "QemuDomain", source: int) -> list:
    """DOMAIN_INTERFACE_ADDRESSES from the networks' DHCP leases or the host's ARP
    table; any other source is the driver's own (or libvirt's refusal)."""
    if source == SRC_LEASE:
        return interface_addresses(state, dom)
    if source == SRC_ARP:
        def read() -> str:
            try:
                with open("/proc/net/arp") as f:
                    return f.read()
            except OSError:
                return ""
        return arp_addresses(dom, await trio.to_thread.run_sync(read))
    raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, f"Unknown IP address data source {source}",
                   domain=state.error_domain)


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


def interface_addresses(state: "QemuState", dom: "QemuDomain") -> list:
    """remote_domain_interface list from the networks' DHCP leases (source lease)."""
    out = []
    for iface in dom.definition.devices_of("interface"):
        where = _attachment(iface)
        if where is None or where[0] != "network":
            continue
        mac = _mac(iface)
        try:
            leases = state.ctx.services.network.dhcp_leases(where[1], mac)
        except VirError:
            continue
        if not leases:
            continue   # libvirt lists only the interfaces that have a lease
        addrs = [P.remote_domain_ip_addr(l.type, l.ip, l.prefix) for l in leases]
        target = iface.find("target")
        name = target.get("dev") if target is not None and target.get("dev") else "-"
        out.append(P.remote_domain_interface(name, mac, addrs))
    return out


# DOMAIN_INTERFACE_STATS
COUNTERS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
            "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")


def guest_view(counters: dict[str, int], kind: str | None) -> tuple[int, ...]:
    """(rx_bytes, rx_packets, rx_errs, rx_drop, tx_bytes, ...) of a guest NIC from the
    ``COUNTERS`` of its host device (a tap, macvtap or a container's veth end).

    For NICs of type network and bridge they are swapped to the guest's view
    (what the host end receives, the guest sent); type ethernet and direct
    keep the host's view (virDomainNetTypeSharesHostView), as libvirt
    reports them.
    """
    rx = tuple(counters[k] for k in COUNTERS[:4])
    tx = tuple(counters[k] for k in COUNTERS[4:])
    return rx + tx if kind in ("ethernet", "direct") else tx + rx
