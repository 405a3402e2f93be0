"""The daemon-wide network driver: which networks exist, their files, lifecycle and events.

Methods are named after the network procedures and follow the driver
calling convention (XDR arguments in order, reply fields back; coroutines
where the host or the disk is touched).  The list rules (lookups, listings,
define conflicts) are `pyvirtd.driver.objects`'; the files
`pyvirtd.driver.store`'s; the host side `datapath`; net-update `update`;
ports `ports`.
"""

from __future__ import annotations

import logging
import random
import time
import ipaddress
from pathlib import Path

import trio
from lxml import etree

from pyvirtd.driver.api import DhcpLease
from pyvirtd.driver.objects import NETWORK, ObjectList
from pyvirtd.driver.store import ObjectStore
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

from . import datapath, dnsmasq
from .model import (CREATE_VALIDATE, DEFAULT_NETWORK, DEFINE_VALIDATE, IP_ADDR_TYPE_IPV4,
                    IP_ADDR_TYPE_IPV6, LIST_ALL, MANAGED_MODES, XML_INACTIVE, Network,
                    ip_elements, validate)
from .ports import PortsMixin
from .update import UpdateMixin

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NETWORK


class NetworkSubsystem(PortsMixin, UpdateMixin):
    """Daemon-wide virtual networks (libvirt's network driver)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.store = ObjectStore(Path(ctx.paths.state_dir) / "network",
                                 Path(ctx.paths.run_dir) / "network",
                                 parse=netxml.parse, format=netxml.format, what="network",
                                 error_domain=_FROM)
        self.config_dir = self.store.config_dir
        self.status_dir = self.store.status_dir
        self.networks: ObjectList[Network] = ObjectList(NETWORK)
        self._lock = trio.Lock()
        self._load()

    # ------------------------------------------------------------ persistence
    def _files(self, name: str) -> dnsmasq.Files:
        return datapath.files_of(self.status_dir, name)

    def _load(self) -> None:
        """Read persistent definitions and live status (small local files: at creation,
        so networks are known before `start` runs)."""
        found = self.store.load_sync()
        for netdef, auto in found.configs:
            self.networks.add(Network(netdef, autostart=auto))
        for live in found.statuses:
            net = self.networks.get(live.name)
            if net is None:
                self.networks.add(Network(live, active=True, persistent=False))
            else:
                if netxml.format(net.definition) != netxml.format(live):
                    net.new_def = net.definition
                net.definition = live
                net.active = True
        for net in self.networks:
            if net.active:
                self._load_ports(net)

    # --------------------------------------------------------------- lookups
    def _net(self, ref) -> Network:
        return self.networks.by_ref(ref)

    def _by_name(self, name: str) -> Network:
        return self.networks.by_name(name)

    def _emit(self, net: Network, event: int) -> None:
        self.ctx.events.emit("network", P.VIR_NETWORK_EVENT_ID_LIFECYCLE, net.ref(), event, 0)

    # --------------------------------------------------------------- listing
    def connect_num_of_networks(self) -> int:
        return self.networks.count(active=True)

    def connect_list_networks(self, maxnames: int) -> list[str]:
        return self.networks.list_names(True, maxnames)

    def connect_num_of_defined_networks(self) -> int:
        return self.networks.count(active=False)

    def connect_list_defined_networks(self, maxnames: int) -> list[str]:
        return self.networks.list_names(False, maxnames)

    def connect_list_all_networks(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "networkConnectListAllNetworks", _FROM)
        out = [n.ref() for n in self.networks.list_all(flags)]
        return (out if need_results else [], len(out))

    def network_lookup_by_name(self, name: str) -> P.remote_nonnull_network:
        return self.networks.by_name(name).ref()

    def network_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_network:
        return self.networks.by_uuid(uuid).ref()

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

    async def network_set_autostart(self, ref, autostart: int) -> None:
        async with self._lock:
            net = self._net(ref)
            self.networks.check_autostart(net)
            # the link is the state: memory follows it only
            await self.store.set_autostart(net.name, bool(autostart))
            net.autostart = bool(autostart)

    # ------------------------------------------------------------ definition
    def _bridges_in_use(self, except_name: str | None) -> set[str]:
        used = set()
        for other in self.networks:
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
                taken = used | await datapath.host_link_names()
                n = 0
                while template.replace("%d", str(n)) in taken:
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

    async def _define(self, netdef: netxml.NetworkDef) -> Network:
        """Checks, the config file, then memory (a failed write changes nothing)."""
        await self._fill_in(netdef)
        self.networks.check_add(netdef, live=False)
        await self.store.write_config(netdef)
        return self.networks.assign(netdef, live=False, make=Network)

    async def network_define_xml(self, xml: str) -> P.remote_nonnull_network:
        return await self.network_define_xml_flags(xml, 0)

    async def network_define_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, DEFINE_VALIDATE, "networkDefineXMLFlags", _FROM)
        async with self._lock:
            netdef = netxml.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
            net = await self._define(netdef)
        self._emit(net, P.VIR_NETWORK_EVENT_DEFINED)
        return net.ref()

    async def network_create_xml(self, xml: str) -> P.remote_nonnull_network:
        return await self.network_create_xml_flags(xml, 0)

    async def network_create_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, CREATE_VALIDATE, "networkCreateXMLFlags", _FROM)
        async with self._lock:
            netdef = netxml.parse(xml, validate_schema=bool(flags & CREATE_VALIDATE))
            await self._fill_in(netdef)
            existed = netdef.name in self.networks
            net = self.networks.assign(netdef, live=True, make=Network)
            try:
                await self._start(net)
            except BaseException:
                if not existed:
                    self.networks.remove(net)
                elif net.new_def is not None:
                    net.definition, net.new_def = net.new_def, None
                raise
        self._emit(net, P.VIR_NETWORK_EVENT_STARTED)
        return net.ref()

    async def network_undefine(self, ref) -> None:
        async with self._lock:
            net = self._net(ref)
            self.networks.check_undefine(net)
            await self.store.delete_config(net.name)
            was_active = net.active
            self.networks.undefine(net)
            if not was_active:
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
        await datapath.check_start(net.definition, repair)
        # the status file before anything is made: a crash leaves a trace
        await self.store.write_status(net.definition)
        net.active = True
        if not net.managed:
            return
        try:
            await datapath.set_up(net.definition, self._files(net.name))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._shutdown(net, quiet=True)
            raise

    async def _shutdown(self, net: Network, quiet: bool = False) -> None:
        """Remove everything the network made; then it is inactive."""
        if net.managed:
            await datapath.tear_down(net.name, net.definition, self._files(net.name), quiet)
        self._delete_all_ports(net)
        await self.store.delete_status(net.name)
        self.networks.stopped(net)

    # ---------------------------------------------------------- DHCP leases
    def network_get_dhcp_leases(self, ref, mac: str | None, need_results: int,
                                flags: int) -> tuple:
        check_flags(flags, 0, "networkGetDHCPLeases", _FROM)
        net = self._net(ref)
        out = [P.remote_network_dhcp_lease(net.definition.bridge, lease.expiry, lease.type,
                                           lease.mac, None, lease.ip, lease.prefix,
                                           lease.hostname, lease.clientid)
               for lease in self._leases(net, mac)]
        return (out if need_results else [], len(out))

    def dhcp_leases(self, net_name: str, mac: str | None = None) -> list[DhcpLease]:
        """api.NetworkService: the leases of a network, for a guest's addresses."""
        return self._leases(self._by_name(net_name), mac)

    def _leases(self, net: Network, mac: str | None) -> list[DhcpLease]:
        if not net.active:
            return []
        out = []
        now = time.time()
        by_ip = ip_elements(net.definition)
        for lease in dnsmasq.read_leases(self._files(net.name)):
            if lease.expiry and lease.expiry < now:
                continue
            if mac and lease.mac.lower() != mac.lower():
                continue
            addr = ipaddress.ip_address(lease.ip)
            prefix = next((i.network.prefixlen for _e, i in by_ip if addr in i.network),
                          32 if addr.version == 4 else 128)
            out.append(DhcpLease(lease.mac, lease.ip, prefix,
                                 IP_ADDR_TYPE_IPV4 if addr.version == 4 else IP_ADDR_TYPE_IPV6,
                                 lease.expiry, lease.hostname, lease.clientid))
        return out

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
        return await datapath.open_tap(tap_name, self.bridge_of(net_name), mac, mtu, vnet_hdr)

    async def plug_veth(self, net_name: str, mac: str, *,
                        mtu: int | None = None) -> tuple[str, str]:
        """A veth pair for a container interface on the network's bridge (see `plug_veth`)."""
        return await datapath.plug_veth(self.bridge_of(net_name), mac, mtu=mtu)

    async def unplug_interface(self, tap_name: str) -> None:
        await datapath.delete_link(tap_name)

    # ------------------------------------------------------- daemon hooks
    async def start(self) -> None:
        """Reconcile at daemon start: repair running networks, clean leftovers, autostart."""
        fresh = not self.config_dir.exists()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        async with self._lock:
            for net in [n for n in self.networks if n.active]:
                try:
                    await self._start(net, repair=True)
                except Exception:
                    log.exception("network %s could not be repaired; stopping it", net.name)
                    await self._shutdown(net, quiet=True)
            await datapath.clean_leftovers(
                self.status_dir, {n.name: n.definition for n in self.networks if n.active})
            if fresh and self.ctx.privileged and "default" not in self.networks:
                await self._define_default()
            for net in self.networks:
                if net.autostart and not net.active:
                    try:
                        await self._start(net)
                    except Exception:
                        log.exception("autostart of network %s failed", net.name)
                        continue
                    self._emit(net, P.VIR_NETWORK_EVENT_STARTED)

    async def _define_default(self) -> None:
        n = await datapath.free_default_subnet()
        if n is None:
            log.warning("no free 192.168.x.0/24 for the default network")
            return
        netdef = netxml.parse(DEFAULT_NETWORK.format(n=n))
        if "virbr0" in await datapath.host_link_names():
            netdef.tree.find("bridge").set("name", "virbr%d")
        net = await self._define(netdef)
        await self.store.set_autostart(net.name, True)
        net.autostart = True
        log.info("defined the default network on 192.168.%d.0/24", n)

    async def stop(self) -> None:
        """Daemon stop: running networks keep running (nothing to undo)."""
