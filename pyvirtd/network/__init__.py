"""The virtual-network subsystem: libvirt's network driver for hypervisor connections.

`NetworkSubsystem(ctx)` is created once per daemon (``pyvirtd.driver.
shared_subsystems``) and answers the network procedures of every hypervisor
connection: its methods are named after them and follow the driver calling
convention (XDR arguments in order, reply fields back; coroutines where the
host is touched).  Lifecycle events go to ``ctx.events`` (kind "network").

Data path, per running network of a managed mode (nat, route, open, none =
isolated): a bridge (virbrN allocated as libvirt does) with the network's
addresses and static routes (pyroute2, `netlink`); a dnsmasq with generated
configuration for DHCP and DNS (`dnsmasq`); base chains in pyvirtd's own
nftables table ``inet pyvirtd`` (`firewall`).  Mode ``bridge`` uses an
existing host bridge and runs nothing.  Modes vepa/private/passthrough (and
bridge without a bridge) are a pool of host devices: guests get macvtaps on
them through their network ports (`ports`).  IPv6 addresses get router
advertisements from dnsmasq (SLAAC for an <ip> without <dhcp>, DHCPv6 for
one with a range).

Files: persistent definitions ``state_dir/network/NAME.xml`` (autostart:
``state_dir/network/autostart/NAME.xml`` links to them); live status of a
running network ``run_dir/network/NAME.xml`` plus dnsmasq's files beside it.
A status file is written before a network's bridge is made and removed only
after everything it made is gone, so `start()` (daemon start) repairs every
network with a status file and tears down nothing that runs; `stop()` (daemon
stop) leaves running networks alone.  A ``--system`` daemon on a fresh host
(no ``state_dir/network`` yet) defines and autostarts ``default``.

API for hypervisor drivers (guest interfaces of type network)::

    tap, fd = await ctx.shared["network"].plug_interface(
        "default", "52:54:00:12:34:56", tap_name="vnet%d", mtu=None)
    # attach with QEMU: -netdev tap,fd=N,vhost=on (the fd carries IFF_VNET_HDR)
    ...
    await ctx.shared["network"].unplug_interface(tap)   # when the guest stops

``plug_interface`` creates a non-persistent tap on the network's bridge (the
kernel removes it when the last fd closes, i.e. when QEMU exits), gives it
the guest MAC with first byte 0xFE, the bridge's MTU, and brings it up; it
raises VirError (VIR_ERR_NO_NETWORK, VIR_ERR_OPERATION_INVALID "network 'X'
is not active", VIR_ERR_CONFIG_UNSUPPORTED for modes without a bridge).
Containers get veth pairs instead: ``plug_veth(net_name, mac)`` (or the
module-level ``plug_veth(bridge, mac)`` for interfaces of type bridge)
returns the host end, already on the bridge, and the peer the LXC driver
moves into the container.
``unplug_interface`` deletes the tap (or veth) if it still exists; it never raises
for a tap that is already gone.  ``bridge_of(net_name)`` gives the bridge.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import network as netxml

from . import dnsmasq, firewall
from .ports import PortsMixin

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NETWORK

# virConnectListAllNetworksFlags
LIST_INACTIVE = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_INACTIVE
LIST_ACTIVE = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_ACTIVE
LIST_PERSISTENT = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_PERSISTENT
LIST_TRANSIENT = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_TRANSIENT
LIST_AUTOSTART = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_AUTOSTART
LIST_NO_AUTOSTART = P.ConnectListAllNetworksFlags.VIR_CONNECT_LIST_NETWORKS_NO_AUTOSTART
LIST_ALL = (LIST_INACTIVE | LIST_ACTIVE | LIST_PERSISTENT | LIST_TRANSIENT | LIST_AUTOSTART
            | LIST_NO_AUTOSTART)
# virNetworkUpdateFlags, virNetworkXMLFlags, define/create VALIDATE flags
UPDATE_AFFECT_LIVE = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_LIVE
UPDATE_AFFECT_CONFIG = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_CONFIG
XML_INACTIVE = P.NetworkXMLFlags.VIR_NETWORK_XML_INACTIVE
DEFINE_VALIDATE = P.NetworkDefineFlags.VIR_NETWORK_DEFINE_VALIDATE
CREATE_VALIDATE = P.NetworkCreateFlags.VIR_NETWORK_CREATE_VALIDATE
IP_ADDR_TYPE_IPV4 = P.IPAddrType.VIR_IP_ADDR_TYPE_IPV4
IP_ADDR_TYPE_IPV6 = P.IPAddrType.VIR_IP_ADDR_TYPE_IPV6

MANAGED_MODES = (None, "nat", "route", "open")
DEFAULT_NETWORK = """<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.{n}.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.{n}.2' end='192.168.{n}.254'/>
    </dhcp>
  </ip>
</network>
"""


async def _netlink(fn, *args, **kwargs):
    from . import netlink
    return await trio.to_thread.run_sync(lambda: getattr(netlink, fn)(*args, **kwargs))


async def plug_veth(bridge: str, mac: str, *, mtu: int | None = None) -> tuple[str, str]:
    """A veth pair for a container: (host end on ``bridge``, peer to move into the container).

    For container interfaces of type bridge (and, through
    ``NetworkSubsystem.plug_veth``, of type network); `unplug_interface`
    removes it like a tap.  Raises VirError (VIR_ERR_SYSTEM_ERROR).
    """
    try:
        return await _netlink("create_veth", bridge, mac, mtu)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Failed to create veth device: {exc.strerror or exc}",
                       domain=_FROM) from None


@dataclass(eq=False)
class Network:
    definition: netxml.NetworkDef     # live while active, else the persistent one
    active: bool = False
    persistent: bool = True
    autostart: bool = False
    new_def: netxml.NetworkDef | None = None   # persistent config of a running network
    ports: dict = field(default_factory=dict)  # uuid bytes -> networkport.PortDef (running only)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

    def ref(self) -> P.remote_nonnull_network:
        return P.remote_nonnull_network(self.name, self.uuid)

    def config(self) -> netxml.NetworkDef:
        return self.new_def if self.new_def is not None else self.definition


def ip_elements(netdef: netxml.NetworkDef):
    """(element, ip_interface) for each <ip> of a definition."""
    return [(ip, dnsmasq.ip_interface(ip)) for ip in netdef.tree.findall("ip")]


def validate(netdef: netxml.NetworkDef) -> None:
    """Checks libvirt makes while parsing: addresses, DHCP ranges inside their subnet."""
    for ip in netdef.tree.findall("ip"):
        try:
            iface = dnsmasq.ip_interface(ip)
        except ValueError:
            raise VirError(P.VIR_ERR_XML_ERROR,
                           f"Invalid address '{ip.get('address')}' in network '{netdef.name}'",
                           domain=_FROM) from None
        dhcp = ip.find("dhcp")
        if dhcp is None:
            continue
        for rng in dhcp.findall("range"):
            try:
                start = ipaddress.ip_address(rng.get("start"))
                end = ipaddress.ip_address(rng.get("end"))
            except ValueError:
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"Invalid dhcp range '{rng.get('start')}' to '{rng.get('end')}' "
                               f"in network '{netdef.name}'", domain=_FROM) from None
            net = iface.network
            if start not in net or end not in net:
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                               f"range {start} - {end} is not entirely within network "
                               f"{net.network_address}/{net.prefixlen}", domain=P.VIR_FROM_NONE)
            if int(end) < int(start):
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                               f"range {start} - {end} is reversed ", domain=P.VIR_FROM_NONE)
        for host in dhcp.findall("host"):
            hip = host.get("ip")
            if hip and ipaddress.ip_address(hip) not in iface.network:
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"Invalid dhcp host ip '{hip}' for network '{netdef.name}'",
                               domain=_FROM)
    if netdef.forward_mode == "bridge" and not netdef.bridge and \
            netdef.tree.find("forward/interface") is None:
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"network '{netdef.name}' has forward mode 'bridge'  but no bridge device "
                       f"was specified", domain=_FROM)


class NetworkSubsystem(PortsMixin):
    """Daemon-wide virtual networks (libvirt's network driver)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.config_dir = Path(ctx.paths.state_dir) / "network"
        self.autostart_dir = self.config_dir / "autostart"
        self.status_dir = Path(ctx.paths.run_dir) / "network"
        self.networks: dict[str, Network] = {}
        self._lock = trio.Lock()
        self._loaded = False

    # ------------------------------------------------------------ persistence
    def _config_path(self, name: str) -> Path:
        return name_path(self.config_dir, name, ".xml")

    def _autostart_path(self, name: str) -> Path:
        return name_path(self.autostart_dir, name, ".xml")

    def _status_path(self, name: str) -> Path:
        return name_path(self.status_dir, name, ".xml")

    def _files(self, name: str) -> dnsmasq.Files:
        return dnsmasq.Files(self.status_dir, name)

    def _save_status(self, net: Network) -> None:
        write_atomic(self._status_path(net.name), netxml.format(net.definition))

    async def _write(self, path: Path, netdef: netxml.NetworkDef) -> None:
        """Write a definition before memory changes (callers commit after it).

        Off the event loop; a full or broken disk is libvirt's system error
        (virFileRewrite's wording), the memory untouched."""
        text = netxml.format(netdef)
        try:
            await trio.to_thread.run_sync(write_atomic, path, text)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=_FROM, message=(
                f"cannot write data to file '{path}': {exc.strerror or exc}")) from None

    def _load(self) -> None:
        """Read persistent definitions and live status (once)."""
        if self._loaded:
            return
        self._loaded = True
        for path in sorted(self.config_dir.glob("*.xml")) if self.config_dir.is_dir() else ():
            try:
                netdef = netxml.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.error("network definition %s ignored: %s", path, exc)
                continue
            auto = (self.autostart_dir / path.name).exists()
            self.networks[netdef.name] = Network(netdef, autostart=auto)
        for path in sorted(self.status_dir.glob("*.xml")) if self.status_dir.is_dir() else ():
            try:
                live = netxml.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.error("network status %s ignored: %s", path, exc)
                continue
            net = self.networks.get(live.name)
            if net is None:
                self.networks[live.name] = Network(live, active=True, persistent=False)
            else:
                if netxml.format(net.definition) != netxml.format(live):
                    net.new_def = net.definition
                net.definition = live
                net.active = True
        for net in self.networks.values():
            if net.active:
                self._load_ports(net)

    # --------------------------------------------------------------- lookups
    def _net(self, ref) -> Network:
        self._load()
        for net in self.networks.values():
            if net.uuid == bytes(ref.uuid):
                return net
        raise VirError(P.VIR_ERR_NO_NETWORK,
                       f"no network with matching uuid '{format_uuid(ref.uuid)}' ({ref.name})",
                       domain=_FROM)

    def _by_name(self, name: str) -> Network:
        self._load()
        net = self.networks.get(name)
        if net is None:
            raise VirError(P.VIR_ERR_NO_NETWORK, f"no network with matching name '{name}'",
                           domain=_FROM)
        return net

    def _emit(self, net: Network, event: int) -> None:
        self.ctx.events.emit("network", P.VIR_NETWORK_EVENT_ID_LIFECYCLE, net.ref(), event, 0)

    # --------------------------------------------------------------- listing
    def connect_num_of_networks(self) -> int:
        self._load()
        return sum(1 for n in self.networks.values() if n.active)

    def connect_list_networks(self, maxnames: int) -> list[str]:
        self._load()
        return sorted(n.name for n in self.networks.values() if n.active)[:maxnames]

    def connect_num_of_defined_networks(self) -> int:
        self._load()
        return sum(1 for n in self.networks.values() if not n.active)

    def connect_list_defined_networks(self, maxnames: int) -> list[str]:
        self._load()
        return sorted(n.name for n in self.networks.values() if not n.active)[:maxnames]

    def connect_list_all_networks(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "networkConnectListAllNetworks", _FROM)
        self._load()
        out = []
        for n in self.networks.values():
            if flags & (LIST_ACTIVE | LIST_INACTIVE) and not (
                    (flags & LIST_ACTIVE and n.active) or (flags & LIST_INACTIVE and not n.active)):
                continue
            if flags & (LIST_PERSISTENT | LIST_TRANSIENT) and not (
                    (flags & LIST_PERSISTENT and n.persistent)
                    or (flags & LIST_TRANSIENT and not n.persistent)):
                continue
            if flags & (LIST_AUTOSTART | LIST_NO_AUTOSTART) and not (
                    (flags & LIST_AUTOSTART and n.autostart)
                    or (flags & LIST_NO_AUTOSTART and not n.autostart)):
                continue
            out.append(n.ref())
        return (out if need_results else [], len(out))

    def network_lookup_by_name(self, name: str) -> P.remote_nonnull_network:
        return self._by_name(name).ref()

    def network_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_network:
        self._load()
        for net in self.networks.values():
            if net.uuid == bytes(uuid):
                return net.ref()
        raise VirError(P.VIR_ERR_NO_NETWORK,
                       f"no network with matching uuid '{format_uuid(uuid)}'", domain=_FROM)

    def network_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, XML_INACTIVE, "networkGetXMLDesc", _FROM)
        net = self._net(ref)
        if flags & XML_INACTIVE or not net.active or not net.ports:
            return netxml.format(net.config() if flags & XML_INACTIVE else net.definition)
        # the live XML counts the ports (libvirt: connections='N' on <network>
        # and on each <forward><interface> in use)
        live = net.definition.copy()
        counts = self.live_connections(net)
        attrs = dict(live.tree.attrib)
        live.tree.attrib.clear()
        live.tree.set("connections", str(counts[None]))
        for key, value in attrs.items():
            live.tree.set(key, value)
        for iface in live.tree.findall("forward/interface"):
            if counts.get(iface.get("dev")):
                iface.set("connections", str(counts[iface.get("dev")]))
        return netxml.format(live)

    def network_is_active(self, ref) -> int:
        return int(self._net(ref).active)

    def network_is_persistent(self, ref) -> int:
        return int(self._net(ref).persistent)

    def network_get_autostart(self, ref) -> int:
        return int(self._net(ref).autostart)

    def network_get_bridge_name(self, ref) -> str:
        net = self._net(ref)
        if not net.definition.bridge:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"network '{net.name}' does not have a bridge name.", domain=_FROM)
        return net.definition.bridge

    def network_set_autostart(self, ref, autostart: int) -> None:
        net = self._net(ref)
        if not net.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "cannot set autostart for transient network", domain=_FROM)
        link = self._autostart_path(net.name)
        try:
            if autostart:
                self.autostart_dir.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(self._config_path(net.name))
            else:
                link.unlink(missing_ok=True)
        except OSError as exc:      # the link is the state: memory follows it only
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=_FROM, message=(
                f"Failed to {'create' if autostart else 'delete'} symlink '{link}': "
                f"{exc.strerror or exc}")) from None
        net.autostart = bool(autostart)

    # ------------------------------------------------------------ definition
    def _bridges_in_use(self, except_name: str | None) -> set[str]:
        used = set()
        for other in self.networks.values():
            if other.name == except_name:
                continue
            for d in (other.definition, other.new_def):
                if d is not None and d.bridge:
                    used.add(d.bridge)
        return used

    async def _fill_in(self, netdef: netxml.NetworkDef) -> None:
        """Bridge name and MAC as libvirt assigns them at define/create time."""
        validate(netdef)
        if netdef.forward_mode not in MANAGED_MODES and netdef.forward_mode != "none":
            return
        tree = netdef.tree
        used = self._bridges_in_use(netdef.name)
        br = tree.find("bridge")
        name = br.get("name")
        existing = self.networks.get(netdef.name)
        if name and "%d" not in name:
            if name in used:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"bridge name '{name}' already in use.", domain=_FROM)
        else:
            if existing is not None and existing.config().bridge and not name:
                chosen = existing.config().bridge
            else:
                template = name or "virbr%d"
                host = await _netlink("link_names")
                n = 0
                while template.replace("%d", str(n)) in used | host:
                    n += 1
                chosen = template.replace("%d", str(n))
            attrs = dict(br.attrib)
            attrs["name"] = chosen
            br.attrib.clear()
            netxml._copy_attrs_from(attrs, br)
        if tree.find("mac") is None:
            old = existing.config().tree.find("mac") if existing is not None else None
            mac = old.get("address") if old is not None else "52:54:00:%02x:%02x:%02x" % tuple(
                random.randrange(256) for _ in range(3))
            elem = etree.Element("mac", address=mac)
            netxml._place(tree, elem)

    def _check_add(self, netdef: netxml.NetworkDef, live: bool) -> None:
        """What `_add` would refuse, checked before anything is written."""
        self._add(netdef, live, dry_run=True)

    def _add(self, netdef: netxml.NetworkDef, live: bool, *, dry_run: bool = False
             ) -> Network | None:
        """virNetworkObjAssignDef: add or replace, as the test driver does
        (with ``dry_run``, only its refusals)."""
        by_name = self.networks.get(netdef.name)
        for other in self.networks.values():
            if other.uuid == netdef.uuid and other.name != netdef.name:
                raise VirError(P.VIR_ERR_OPERATION_FAILED,
                               f"network '{other.name}' is already defined with uuid "
                               f"{format_uuid(netdef.uuid)}", domain=_FROM)
        if by_name is not None and by_name.uuid != netdef.uuid:
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"network '{by_name.name}' already exists with uuid "
                           f"{format_uuid(by_name.uuid)}", domain=_FROM)
        if live and by_name is not None and by_name.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"network is already active as '{by_name.name}'", domain=_FROM)
        if dry_run:
            return None
        if by_name is None:
            net = Network(netdef, active=False, persistent=not live)
            self.networks[netdef.name] = net
            return net
        if live:
            by_name.new_def = by_name.definition
            by_name.definition = netdef
        elif by_name.active:
            by_name.new_def = netdef
            by_name.persistent = True
        else:
            by_name.definition = netdef
            by_name.persistent = True
        return by_name

    async def network_define_xml(self, xml: str) -> P.remote_nonnull_network:
        return await self.network_define_xml_flags(xml, 0)

    async def network_define_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, DEFINE_VALIDATE, "networkDefineXMLFlags", _FROM)
        async with self._lock:
            self._load()
            netdef = netxml.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
            await self._fill_in(netdef)
            self._check_add(netdef, live=False)
            await self._write(self._config_path(netdef.name), netdef)
            net = self._add(netdef, live=False)
        self._emit(net, P.VIR_NETWORK_EVENT_DEFINED)
        return net.ref()

    async def network_create_xml(self, xml: str) -> P.remote_nonnull_network:
        return await self.network_create_xml_flags(xml, 0)

    async def network_create_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, CREATE_VALIDATE, "networkCreateXMLFlags", _FROM)
        async with self._lock:
            self._load()
            netdef = netxml.parse(xml, validate_schema=bool(flags & CREATE_VALIDATE))
            await self._fill_in(netdef)
            existed = netdef.name in self.networks
            net = self._add(netdef, live=True)
            try:
                await self._start(net)
            except BaseException:
                if not existed:
                    self.networks.pop(net.name, None)
                elif net.new_def is not None:
                    net.definition, net.new_def = net.new_def, None
                raise
        self._emit(net, P.VIR_NETWORK_EVENT_STARTED)
        return net.ref()

    async def network_undefine(self, ref) -> None:
        async with self._lock:
            net = self._net(ref)
            if not net.persistent:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "network is not persistent",
                               domain=_FROM)
            try:
                self._autostart_path(net.name).unlink(missing_ok=True)
                net.autostart = False
                self._config_path(net.name).unlink(missing_ok=True)
            except OSError as exc:
                raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=_FROM, message=(
                    f"cannot remove config file of network '{net.name}': "
                    f"{exc.strerror or exc}")) from None
            if net.active:   # a running network becomes transient
                net.persistent = False
                net.new_def = None
            else:
                del self.networks[net.name]
                self._files(net.name).leases.unlink(missing_ok=True)
        self._emit(net, P.VIR_NETWORK_EVENT_UNDEFINED)

    # ------------------------------------------------------------- lifecycle
    async def network_create(self, ref) -> None:
        async with self._lock:
            net = self._net(ref)
            if net.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "network is already active",
                               domain=_FROM)
            await self._start(net)
        self._emit(net, P.VIR_NETWORK_EVENT_STARTED)

    async def network_destroy(self, ref) -> None:
        async with self._lock:
            net = self._net(ref)
            if not net.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"network '{net.name}' is not active", domain=_FROM)
            await self._shutdown(net)
        self._emit(net, P.VIR_NETWORK_EVENT_STOPPED)

    async def _start(self, net: Network, repair: bool = False) -> None:
        """Bring a network's data path up (or, with ``repair``, complete it)."""
        netdef = net.definition
        mode = netdef.forward_mode
        managed = mode in MANAGED_MODES or mode == "none"
        if managed:
            if not repair and dnsmasq.needs_dnsmasq(netdef.tree):
                dnsmasq.binary()
            bridge = netdef.bridge
            if not repair:
                if await _netlink("link_exists", bridge):
                    raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                                   f"bridge name '{bridge}' already in use.", domain=_FROM)
                for _ip, iface in ip_elements(netdef):
                    other = await _netlink("route_collision", iface.network, bridge)
                    if other:
                        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                                       f"Network is already in use by interface {other}",
                                       domain=_FROM)
        elif mode == "bridge" and netdef.bridge and not repair:
            if await _netlink("link_kind", netdef.bridge) is None:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"Cannot get interface MTU on '{netdef.bridge}': No such device",
                               domain=_FROM)
        self._save_status(net)   # before anything is made: a crash leaves a trace
        net.active = True
        if not managed:
            return
        try:
            await self._setup_virtual(net)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._shutdown(net, quiet=True)
            raise

    async def _setup_virtual(self, net: Network) -> None:
        netdef = net.definition
        tree = netdef.tree
        mode = netdef.forward_mode
        br = tree.find("bridge")
        mtu = tree.find("mtu")
        mac = tree.find("mac")
        ips = ip_elements(netdef)
        await _netlink("create_bridge", netdef.bridge,
                       mac=None if mac is None else mac.get("address"),
                       stp=br.get("stp", "on") == "on", delay=int(br.get("delay", "0")),
                       mtu=None if mtu is None else int(mtu.get("size")),
                       addresses=[(str(i.ip), i.network.prefixlen) for _e, i in ips])
        for route in tree.findall("route"):
            dst = dnsmasq.ip_interface(route).network
            await _netlink("add_route", str(dst), route.get("gateway"),
                           int(route.get("metric")) if route.get("metric") else None)
        if mode in ("nat", "route"):
            for version in sorted({i.version for _e, i in ips}):
                await _netlink("set_forwarding", version)
        dhcp = any(e.find("dhcp") is not None for e, _i in ips)
        dns = tree.find("dns") is None or tree.find("dns").get("enable", "yes") != "no"
        await firewall.apply(netdef.bridge, mode, [i.network for _e, i in ips], dhcp, dns)
        if dnsmasq.needs_dnsmasq(tree) and ips:
            files = self._files(net.name)
            dnsmasq.write_config(files, tree, netdef.bridge)
            if dnsmasq.running_pid(files) is None:
                await dnsmasq.start(files)

    async def _shutdown(self, net: Network, quiet: bool = False) -> None:
        """Remove everything the network made; then it is inactive."""
        netdef = net.definition
        mode = netdef.forward_mode
        if mode in MANAGED_MODES or mode == "none":
            files = self._files(net.name)
            steps = [lambda: dnsmasq.stop(files),
                     lambda: firewall.remove(netdef.bridge),
                     lambda: _netlink("delete_link", netdef.bridge)]
            for step in steps:
                try:
                    await step()
                except Exception:
                    if not quiet:
                        raise
                    log.exception("network %s: teardown step failed", net.name)
            dnsmasq.remove_files(files)
        self._delete_all_ports(net)
        self._status_path(net.name).unlink(missing_ok=True)
        net.active = False
        if not net.persistent:
            self.networks.pop(net.name, None)
        elif net.new_def is not None:
            net.definition, net.new_def = net.new_def, None

    async def _restore_config(self, net: Network) -> None:
        """Put the config file back as memory has it (a later step failed)."""
        with trio.CancelScope(shield=True):
            try:
                await self._write(self._config_path(net.name), net.config())
            except VirError as exc:
                log.error("network %s: its config file could not be restored: %s",
                          net.name, exc.message)

    # ---------------------------------------------------------- net-update
    async def network_update(self, ref, command: int, section: int, parent_index: int,
                             xml: str, flags: int) -> None:
        check_flags(flags, UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG, "networkUpdate", _FROM)
        async with self._lock:
            net = self._net(ref)
            if not flags & (UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG):
                flags |= UPDATE_AFFECT_LIVE if net.active else UPDATE_AFFECT_CONFIG
            if flags & UPDATE_AFFECT_LIVE and not net.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "network is not running",
                               domain=_FROM)
            if flags & UPDATE_AFFECT_CONFIG and not net.persistent:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               "cannot change persistent config of a transient network",
                               domain=_FROM)
            live = net.definition.copy() if flags & UPDATE_AFFECT_LIVE else None
            config = None
            if flags & UPDATE_AFFECT_CONFIG:
                config = net.config().copy() if net.active else (live or net.definition.copy())
            for target in {id(d): d for d in (config, live) if d is not None}.values():
                netxml.update(target, command, section, parent_index, xml)
                validate(target)
            # files first, memory after: a failed write changes nothing; a
            # failed status write after the config's puts the old config back
            if config is not None:
                await self._write(self._config_path(net.name), config)
            if live is not None:
                try:
                    await self._write(self._status_path(net.name), live)
                except VirError:
                    if config is not None:
                        await self._restore_config(net)
                    raise
            if config is not None:
                if net.active:
                    net.new_def = config
                else:
                    net.definition = config
            if live is not None:
                net.definition = live
                await self._reload_dnsmasq(net, section)

    async def _reload_dnsmasq(self, net: Network, section: int) -> None:
        tree = net.definition.tree
        if not ip_elements(net.definition) or net.definition.forward_mode not in (*MANAGED_MODES, "none"):
            return
        files = self._files(net.name)
        dnsmasq.write_config(files, tree, net.definition.bridge)
        if section in (netxml.SECTION_IP_DHCP_HOST, netxml.SECTION_DNS_HOST) and \
                dnsmasq.reload(files):
            return
        await dnsmasq.stop(files)
        if dnsmasq.needs_dnsmasq(tree):
            await dnsmasq.start(files)

    # ---------------------------------------------------------- DHCP leases
    def network_get_dhcp_leases(self, ref, mac: str | None, need_results: int,
                                flags: int) -> tuple:
        check_flags(flags, 0, "networkGetDHCPLeases", _FROM)
        net = self._net(ref)
        out = []
        if net.active:
            now = time.time()
            by_ip = [(e, i) for e, i in ip_elements(net.definition)]
            for lease in dnsmasq.read_leases(self._files(net.name)):
                if lease.expiry and lease.expiry < now:
                    continue
                if mac and lease.mac.lower() != mac.lower():
                    continue
                addr = ipaddress.ip_address(lease.ip)
                prefix = next((i.network.prefixlen for _e, i in by_ip if addr in i.network),
                              32 if addr.version == 4 else 128)
                out.append(P.remote_network_dhcp_lease(
                    net.definition.bridge, lease.expiry,
                    IP_ADDR_TYPE_IPV4 if addr.version == 4 else IP_ADDR_TYPE_IPV6,
                    lease.mac, None, lease.ip, prefix, lease.hostname, lease.clientid))
        return (out if need_results else [], len(out))

    # -------------------------------------------------- guest interfaces
    def bridge_of(self, net_name: str) -> str:
        net = self._by_name(net_name)
        if not net.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, f"network '{net_name}' is not active",
                           domain=_FROM)
        mode = net.definition.forward_mode
        if mode not in (*MANAGED_MODES, "none", "bridge") or not net.definition.bridge:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"network '{net_name}' uses forward mode '{mode}', which has no "
                           f"bridge to attach a tap to", domain=_FROM)
        return net.definition.bridge

    async def plug_interface(self, net_name: str, mac: str, *, tap_name: str = "vnet%d",
                             mtu: int | None = None, vnet_hdr: bool = True) -> tuple[str, int]:
        bridge = self.bridge_of(net_name)
        try:
            return await _netlink("open_tap", tap_name, bridge, mac, mtu, vnet_hdr)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"Unable to create tap device {tap_name}: {exc.strerror or exc}",
                           domain=_FROM) from None

    async def plug_veth(self, net_name: str, mac: str, *,
                        mtu: int | None = None) -> tuple[str, str]:
        """A veth pair for a container interface on the network's bridge (see `plug_veth`)."""
        return await plug_veth(self.bridge_of(net_name), mac, mtu=mtu)

    async def unplug_interface(self, tap_name: str) -> None:
        try:
            await _netlink("delete_link", tap_name)
        except Exception:
            log.exception("removing tap %s", tap_name)

    # ------------------------------------------------------- daemon hooks
    async def start(self) -> None:
        """Reconcile at daemon start: repair running networks, clean leftovers, autostart."""
        fresh = not self.config_dir.exists()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._load()
        async with self._lock:
            for net in [n for n in self.networks.values() if n.active]:
                try:
                    await self._start(net, repair=True)
                except Exception:
                    log.exception("network %s could not be repaired; stopping it", net.name)
                    await self._shutdown(net, quiet=True)
            await self._clean_leftovers()
            if fresh and self.ctx.privileged and "default" not in self.networks:
                await self._define_default()
            for net in list(self.networks.values()):
                if net.autostart and not net.active:
                    try:
                        await self._start(net)
                    except Exception:
                        log.exception("autostart of network %s failed", net.name)
                        continue
                    self._emit(net, P.VIR_NETWORK_EVENT_STARTED)

    async def _clean_leftovers(self) -> None:
        keep = set()
        for net in self.networks.values():
            if net.active and net.definition.bridge:
                keep |= firewall.chain_names(net.definition.bridge)
        try:
            existing = await firewall.chains()
            await firewall.remove_chains(existing - keep, existing)
        except VirError as exc:
            log.warning("nftables cleanup skipped: %s", exc.message)
        if self.status_dir.is_dir():
            for pidfile in self.status_dir.glob("*.pid"):
                name = pidfile.name[:-4]
                net = self.networks.get(name)
                if net is None or not net.active:
                    files = self._files(name)
                    await dnsmasq.stop(files)
                    dnsmasq.remove_files(files)

    async def _define_default(self) -> None:
        for n in range(122, 255):
            subnet = ipaddress.ip_network(f"192.168.{n}.0/24")
            if not await _netlink("route_collision", subnet, None):
                break
        else:
            log.warning("no free 192.168.x.0/24 for the default network")
            return
        netdef = netxml.parse(DEFAULT_NETWORK.format(n=n))
        if "virbr0" in await _netlink("link_names"):
            netdef.tree.find("bridge").set("name", "virbr%d")
        await self._fill_in(netdef)
        self._check_add(netdef, live=False)
        await self._write(self._config_path(netdef.name), netdef)
        net = self._add(netdef, live=False)
        self.network_set_autostart(net.ref(), 1)
        log.info("defined the default network on 192.168.%d.0/24", n)

    async def stop(self) -> None:
        """Daemon stop: running networks keep running (nothing to undo)."""
