"""Network ports: the network-port API and the ports hypervisor drivers allocate.

Since libvirt 5.5 every guest NIC of type network holds a *port* on its
network (src/network/bridge_driver.c networkPortCreateXML and friends,
src/conf/virnetworkobj.c for the bookkeeping).  A port records the owner,
the MAC, the QoS and, once allocated, how the NIC is plugged: into the
network's bridge (plug type network, or bridge for ``<forward
mode='bridge'>`` on a host bridge), onto a host device through macvtap
(direct: the least used device of the forward pool, or an unused one for
passthrough) or as a PCI device (hostdev-pci).

Ports live only while their network runs: each is a status file
``run_dir/network/NET/ports/UUID.xml`` (as libvirt's stateDir/NET/ports),
read back at daemon start and removed, all of them, when the network is
destroyed.

``PortsMixin`` is part of ``NetworkSubsystem``: its public methods are the
NETWORK_PORT_* / NETWORK_LIST_ALL_PORTS procedures, plus, for drivers::

    port = await sub.create_port("default", networkport.PortDef(...))
    port.plug_type, port.plug.get("bridge")   # where to attach the NIC
    await sub.delete_port("default", port.uuid)  # when the guest stops
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import networkport as portxml

if TYPE_CHECKING:
    from . import Network

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NETWORK

# virNetworkPortCreateFlags
PORT_CREATE_RECLAIM = P.NetworkPortCreateFlags.VIR_NETWORK_PORT_CREATE_RECLAIM
PORT_CREATE_VALIDATE = P.NetworkPortCreateFlags.VIR_NETWORK_PORT_CREATE_VALIDATE
# forward modes whose ports are plugged into the network's own bridge
_BRIDGED_MODES = (None, "nat", "route", "open", "none")
_DIRECT_MODES = ("bridge", "private", "vepa", "passthrough")


def _not_active(net: "Network") -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, f"network '{net.name}' is not active",
                    domain=_FROM)


def _no_port(uuid: bytes) -> VirError:
    return VirError(P.VIR_ERR_NO_NETWORK_PORT,
                    f"Network port with UUID {format_uuid(uuid)} does not exist", domain=_FROM)


def forward_pool(net: "Network") -> list[str]:
    """The host devices of a direct-mode network (networkCreateInterfacePool, netdev kind).

    ``<forward dev='X'>`` alone is a pool of one; <interface dev=...> list it.
    """
    fwd = net.definition.tree.find("forward")
    if fwd is None:
        return []
    devs = [i.get("dev") for i in fwd.findall("interface") if i.get("dev")]
    if not devs and fwd.get("dev"):
        devs = [fwd.get("dev")]
    return devs


def _pci_pool(net: "Network") -> list:
    fwd = net.definition.tree.find("forward")
    return [] if fwd is None else [a for a in fwd.findall("address") if a.get("type") == "pci"]


def _pci_key(elem) -> tuple[int, ...]:
    return tuple(int(elem.get(a, "0"), 0) for a in ("domain", "bus", "slot", "function"))


class PortsMixin:
    """The port half of NetworkSubsystem (it provides _net, _lock, status_dir)."""

    # ------------------------------------------------------------ storage
    def _ports_dir(self, net_name: str) -> Path:
        return name_path(self.status_dir, net_name) / "ports"

    def _load_ports(self, net: "Network") -> None:
        """virNetworkObjLoadAllPorts: a running network's ports from its status files."""
        pdir = self._ports_dir(net.name)
        for path in sorted(pdir.glob("*.xml")) if pdir.is_dir() else ():
            try:
                port = portxml.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.warning("network %s: port %s ignored: %s", net.name, path, exc)
                continue
            net.ports[port.uuid] = port

    def _save_port(self, net: "Network", port: portxml.PortDef) -> None:
        write_atomic(name_path(self._ports_dir(net.name), port.uuid_str, ".xml"),
                     portxml.format(port))

    def _delete_all_ports(self, net: "Network") -> None:
        """virNetworkObjDeleteAllPorts: the network stopped, its ports go with it."""
        net.ports.clear()
        shutil.rmtree(name_path(self.status_dir, net.name), ignore_errors=True)

    # ----------------------------------------------------------- allocation
    def _connections(self, net: "Network", dev: str | tuple | None = None) -> int:
        """How many ports the network (or one device of its pool) has."""
        count = 0
        for port in net.ports.values():
            if dev is None:
                count += 1
            elif port.plug_type == "direct" and port.plug.get("dev") == dev:
                count += 1
            elif port.plug_type == "hostdev-pci" and isinstance(dev, tuple) and \
                    _pci_key(port.plug.find("address")) == dev:
                count += 1
        return count

    def _allocate(self, net: "Network", port: portxml.PortDef) -> None:
        """networkAllocatePort: fill in QoS/vlan/rx filters from the portgroup and the plug."""
        netdef = net.definition
        tree = netdef.tree
        groups = tree.findall("portgroup")
        group = next((g for g in groups if g.get("name") == port.group), None) if port.group \
            else next((g for g in groups if g.get("default") == "yes"), None)
        if port.bandwidth is None and group is not None and group.find("bandwidth") is not None:
            port.bandwidth = portxml.parse_bandwidth(group.find("bandwidth"))
        if not any(e.tag == "vlan" for e in port.verbatim):
            vlan = group.find("vlan") if group is not None else None
            if vlan is None:
                vlan = tree.find("vlan")
            if vlan is not None:
                port.verbatim.append(copy.deepcopy(vlan))
        if port.trust_guest_rx is None:
            port.trust_guest_rx = (group.get("trustGuestRxFilters") if group is not None else None) \
                or tree.get("trustGuestRxFilters")
        vport = next((e for e in port.verbatim if e.tag == "virtualport"), None)
        mode = netdef.forward_mode
        if mode in _BRIDGED_MODES:
            plug = etree.Element("plug", type="network", bridge=netdef.bridge)
            self._copy_mac_table_manager(tree, plug)
            if vport is not None:
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                               f"<virtualport type='{vport.get('type')}'> not supported for "
                               f"network '{net.name}' which uses IP forwarding", domain=_FROM)
        elif mode == "hostdev":
            pool = _pci_pool(net)
            free = next((a for a in pool if self._connections(net, _pci_key(a)) == 0), None)
            if free is None:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' requires exclusive access to interfaces, "
                               f"but none are available", domain=_FROM)
            plug = etree.Element("plug", type="hostdev-pci")
            fwd = tree.find("forward")
            if fwd.get("managed"):
                plug.set("managed", fwd.get("managed"))
            drv = fwd.find("driver")
            if drv is not None and drv.get("name"):
                etree.SubElement(plug, "driver", name=drv.get("name"))
            etree.SubElement(plug, "address", type="pci", **{
                k: free.get(k) for k in ("domain", "bus", "slot", "function") if free.get(k)})
            plug = portxml.canonical_plug(plug)
        elif mode == "bridge" and netdef.bridge:
            plug = etree.Element("plug", type="bridge", bridge=netdef.bridge)
            self._copy_mac_table_manager(tree, plug)
            if vport is not None and vport.get("type") != "openvswitch":
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                               f"<virtualport type='{vport.get('type')}'> not supported for "
                               f"network '{net.name}' which uses a bridge device", domain=_FROM)
        elif mode in _DIRECT_MODES:
            pool = forward_pool(net)
            if not pool:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' uses a direct mode, but has no forward "
                               f"dev and no interface pool", domain=_FROM)
            if mode == "passthrough":
                dev = next((d for d in pool if self._connections(net, d) == 0), None)
            else:
                dev = min(pool, key=lambda d: self._connections(net, d))
            if dev is None:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' requires exclusive access to interfaces, "
                               f"but none are available", domain=_FROM)
            plug = etree.Element("plug", type="direct", dev=dev, mode=mode)
        else:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"unexpected forward mode '{mode}' of network '{net.name}'",
                           domain=_FROM)
        self._check_floor(net, port)
        port.plug = plug

    @staticmethod
    def _copy_mac_table_manager(tree, plug) -> None:
        br = tree.find("bridge")
        if br is not None and br.get("macTableManager"):
            plug.set("macTableManager", br.get("macTableManager"))

    def _check_floor(self, net: "Network", port: portxml.PortDef) -> None:
        """networkCheckBandwidth's refusals of an inbound 'floor'."""
        bw = port.bandwidth
        if bw is None or bw.inbound is None or not bw.inbound.floor:
            return
        if net.definition.forward_mode not in _BRIDGED_MODES:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"Invalid use of 'floor' on interface with MAC address {port.mac} - "
                           f"'floor' is only supported for interface type 'network' with forward "
                           f"type 'nat', 'route', 'open' or none", domain=_FROM)
        netbw = net.definition.tree.find("bandwidth")
        if netbw is None or netbw.find("inbound") is None:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"Invalid use of 'floor' on interface with MAC address {port.mac} - "
                           f"network '{net.name}' has no inbound QoS set", domain=_FROM)
        # libvirt would now give the port a tc class under the bridge's QoS tree
        raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       "guaranteed bandwidth ('floor') is not implemented by pyvirtd",
                       domain=_FROM)

    def _notify(self, net: "Network", port: portxml.PortDef) -> None:
        """networkNotifyPort: take back a port that is already plugged (RECLAIM)."""
        ptype = port.plug_type
        if ptype in ("network", "bridge"):
            if not net.definition.bridge:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               "Unexpectedly got a network port without a network bridge",
                               domain=_FROM)
        elif ptype == "direct":
            dev = port.plug.get("dev")
            if dev not in forward_pool(net):
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' doesn't have dev='{dev}' in use by network "
                               f"port '{port.uuid_str}'", domain=_FROM)
            if self._connections(net, dev) and net.definition.forward_mode == "passthrough":
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' claims dev='{dev}' is already in use by "
                               f"a different port", domain=_FROM)
        elif ptype == "hostdev-pci":
            key = _pci_key(port.plug.find("address"))
            if key not in [_pci_key(a) for a in _pci_pool(net)]:
                d, b, s, f = key
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"network '{net.name}' doesn't have PCI device "
                               f"{d:04x}:{b:02x}:{s:02x}.{f:x} in use by network port",
                               domain=_FROM)

    def _add_port(self, net: "Network", port: portxml.PortDef) -> None:
        """virNetworkObjAddPort."""
        if port.uuid in net.ports:
            raise VirError(P.VIR_ERR_NETWORK_PORT_EXIST,
                           f"Network port with UUID {port.uuid_str} already exists", domain=_FROM)
        self._save_port(net, port)
        net.ports[port.uuid] = port

    # -------------------------------------------------------- driver API
    async def create_port(self, net_name: str, port: portxml.PortDef,
                          reclaim: bool = False) -> portxml.PortDef:
        """Allocate ``port`` on a running network (or, with ``reclaim``, take it back).

        Returns the port with its plug filled in.  Raises VirError as
        networkPortCreateXML (no network, not active, nothing left in the pool).
        """
        async with self._lock:
            net = self._by_name(net_name)
            if not net.active:
                raise _not_active(net)
            if reclaim:
                if port.uuid in net.ports:
                    return net.ports[port.uuid]
                self._notify(net, port)
            else:
                self._allocate(net, port)
            self._add_port(net, port)
            return port

    async def delete_port(self, net_name: str, uuid: bytes) -> None:
        """Release a driver's port; one already gone (network restarted) is fine."""
        async with self._lock:
            net = self.networks.get(net_name)
            if net is None or uuid not in net.ports:
                return
            self._release(net, net.ports[uuid])

    def _release(self, net: "Network", port: portxml.PortDef) -> None:
        """networkReleasePort + virNetworkObjDeletePort."""
        if port.plug_type == "direct" and port.plug.get("dev") not in forward_pool(net):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"network '{net.name}' doesn't have dev='{port.plug.get('dev')}' in "
                           f"use by domain", domain=_FROM)
        name_path(self._ports_dir(net.name), port.uuid_str, ".xml").unlink(missing_ok=True)
        del net.ports[port.uuid]

    def live_connections(self, net: "Network") -> dict:
        """What the live network XML shows: connections of the network and of each pool device."""
        out = {None: self._connections(net)}
        for dev in forward_pool(net):
            out[dev] = self._connections(net, dev)
        return out

    # ------------------------------------------------------- procedures
    def _port(self, ref) -> tuple["Network", portxml.PortDef]:
        net = self._net(ref.net)
        port = net.ports.get(bytes(ref.uuid))
        if port is None:
            raise _no_port(bytes(ref.uuid))
        if not net.active:
            raise _not_active(net)
        return net, port

    async def network_port_create_xml(self, ref, xml: str, flags: int) -> P.remote_nonnull_network_port:
        check_flags(flags, PORT_CREATE_RECLAIM | PORT_CREATE_VALIDATE, "networkPortCreateXML",
                    _FROM)
        async with self._lock:
            net = self._net(ref)
            port = portxml.parse(xml)
            if not net.active:
                raise _not_active(net)
            if port.plug is None and flags & PORT_CREATE_RECLAIM:
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               "Port reclaim requested but plug type is none", domain=_FROM)
            if port.plug is not None and not flags & PORT_CREATE_RECLAIM:
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               "Port reclaim not requested but plug type is not none",
                               domain=_FROM)
            if flags & PORT_CREATE_RECLAIM:
                self._notify(net, port)
            else:
                self._allocate(net, port)
            self._add_port(net, port)
        return P.remote_nonnull_network_port(net.ref(), port.uuid)

    def network_port_lookup_by_uuid(self, ref, uuid: bytes) -> P.remote_nonnull_network_port:
        net = self._net(ref)
        if bytes(uuid) not in net.ports:
            raise _no_port(bytes(uuid))
        if not net.active:
            raise _not_active(net)
        return P.remote_nonnull_network_port(net.ref(), bytes(uuid))

    def network_port_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "networkPortGetXMLDesc", _FROM)
        _net, port = self._port(ref)
        return portxml.format(port)

    async def network_port_delete(self, ref, flags: int) -> None:
        check_flags(flags, 0, "networkPortDelete", _FROM)
        async with self._lock:
            net, port = self._port(ref)
            self._release(net, port)

    def network_list_all_ports(self, ref, need_results: int, flags: int) -> tuple:
        check_flags(flags, 0, "networkListAllPorts", _FROM)
        net = self._net(ref)
        if not net.active:
            raise _not_active(net)
        ports = [P.remote_nonnull_network_port(net.ref(), uuid) for uuid in net.ports]
        return (ports if need_results else [], len(ports))

    def network_port_get_parameters(self, ref, nparams: int, flags: int) -> tuple:
        check_flags(flags, 0, "networkPortGetParameters", _FROM)
        _net, port = self._port(ref)
        params = [P.remote_typed_param(name, P.remote_typed_param_value(P.VIR_TYPED_PARAM_UINT,
                                                                        value))
                  for name, value in portxml.bandwidth_params(port.bandwidth)]
        return params, len(params)

    async def network_port_set_parameters(self, ref, params: list, flags: int) -> None:
        check_flags(flags, 0, "networkPortSetParameters", _FROM)
        async with self._lock:
            net, port = self._port(ref)
            values = {p.field: int(p.value.value) for p in params
                      if p.value.type in (P.VIR_TYPED_PARAM_UINT, P.VIR_TYPED_PARAM_ULLONG,
                                          P.VIR_TYPED_PARAM_INT, P.VIR_TYPED_PARAM_LLONG)}
            new = portxml.bandwidth_from_params(values)
            old_floor = port.bandwidth.inbound.floor if port.bandwidth and \
                port.bandwidth.inbound else 0
            new_floor = new.inbound.floor if new.inbound else 0
            if new_floor != old_floor:
                trial = port.copy()
                trial.bandwidth = new
                self._check_floor(net, trial)
            updated = port.copy()      # the file first: memory changes only once it is written
            updated.bandwidth = new
            self._save_port(net, updated)
            port.bandwidth = new
