"""Test driver: virtual networks (definition, lifecycle, listing, net-update).

A `Network` mirrors libvirt's virNetworkObj: ``definition`` is what runs (or
the persistent definition while inactive) and ``new_def`` the persistent
configuration of a running network, which CONFIG-only updates and
re-definitions change.  As in libvirt's test driver, ``new_def`` never
replaces the live definition (the test driver does not swap it in on
destroy), so such changes stay invisible to net-dumpxml.  DHCP leases and
network ports are not implemented by the reference either: those methods are
absent and answer VIR_ERR_NO_SUPPORT.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import network as netxml

from .state import TestState

# virConnectListAllNetworksFlags (include/libvirt/libvirt-network.h).
LIST_INACTIVE, LIST_ACTIVE, LIST_PERSISTENT, LIST_TRANSIENT = 1, 2, 4, 8
LIST_AUTOSTART, LIST_NO_AUTOSTART = 16, 32
LIST_ALL = 63
# virNetworkUpdateFlags.
UPDATE_AFFECT_LIVE, UPDATE_AFFECT_CONFIG = 1, 2
NETWORK_VALIDATE = 1     # VIR_NETWORK_DEFINE_VALIDATE == VIR_NETWORK_CREATE_VALIDATE


def filter_by_flags(flags: int, active: bool, persistent: bool, autostart: bool | None) -> bool:
    """The ACTIVE/INACTIVE, PERSISTENT/TRANSIENT, AUTOSTART/NO_AUTOSTART filter pairs
    shared by networks and storage pools (same bit values)."""
    if flags & (LIST_ACTIVE | LIST_INACTIVE) and not (
            (flags & LIST_ACTIVE and active) or (flags & LIST_INACTIVE and not active)):
        return False
    if flags & (LIST_PERSISTENT | LIST_TRANSIENT) and not (
            (flags & LIST_PERSISTENT and persistent) or (flags & LIST_TRANSIENT and not persistent)):
        return False
    if autostart is not None and flags & (LIST_AUTOSTART | LIST_NO_AUTOSTART) and not (
            (flags & LIST_AUTOSTART and autostart) or (flags & LIST_NO_AUTOSTART and not autostart)):
        return False
    return True


@dataclass(eq=False)
class Network:
    definition: netxml.NetworkDef
    active: bool = False
    persistent: bool = True
    autostart: bool = False
    new_def: netxml.NetworkDef | None = None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

    def ref(self) -> P.remote_nonnull_network:
        return P.remote_nonnull_network(self.name, self.uuid)

    def config(self) -> netxml.NetworkDef:
        """The persistent definition (what CONFIG-flagged changes edit)."""
        return self.new_def if self.new_def is not None else self.definition


def load_networks(state: TestState, elements: list[etree._Element]) -> None:
    """Networks of a node file start active and persistent."""
    for elem in elements:
        netdef = netxml.from_element(elem)
        state.networks[netdef.name] = Network(netdef, active=True)


class NetworkMixin:
    state: TestState

    # --- lookup helpers -------------------------------------------------------

    def _net(self, ref) -> Network:
        """The network a client's reference names (by uuid, as libvirt looks it up)."""
        for net in self.state.networks.values():
            if net.uuid == bytes(ref.uuid):
                return net
        raise VirError(P.VIR_ERR_NO_NETWORK,
                       f"no network with matching uuid '{format_uuid(ref.uuid)}' ({ref.name})",
                       domain=P.VIR_FROM_TEST)

    def _emit_network(self, net: Network, event: int) -> None:
        self.state.events.emit("network", P.VIR_NETWORK_EVENT_ID_LIFECYCLE, net.ref(), event, 0)

    # --- listing --------------------------------------------------------------

    def connect_num_of_networks(self) -> int:
        return sum(1 for n in self.state.networks.values() if n.active)

    def connect_list_networks(self, maxnames: int) -> list[str]:
        return [n.name for n in self.state.networks.values() if n.active][:maxnames]

    def connect_num_of_defined_networks(self) -> int:
        return sum(1 for n in self.state.networks.values() if not n.active)

    def connect_list_defined_networks(self, maxnames: int) -> list[str]:
        return [n.name for n in self.state.networks.values() if not n.active][:maxnames]

    def connect_list_all_networks(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "testConnectListAllNetworks", P.VIR_FROM_TEST)
        nets = [n.ref() for n in self.state.networks.values()
                if filter_by_flags(flags, n.active, n.persistent, n.autostart)]
        return (nets if need_results else [], len(nets))

    # --- lookup ---------------------------------------------------------------

    def network_lookup_by_name(self, name: str) -> P.remote_nonnull_network:
        net = self.state.networks.get(name)
        if net is None:
            raise VirError(P.VIR_ERR_NO_NETWORK, f"no network with matching name '{name}'",
                           domain=P.VIR_FROM_TEST)
        return net.ref()

    def network_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_network:
        for net in self.state.networks.values():
            if net.uuid == bytes(uuid):
                return net.ref()
        raise VirError(P.VIR_ERR_NO_NETWORK,
                       f"no network with matching uuid '{format_uuid(uuid)}'",
                       domain=P.VIR_FROM_TEST)

    # --- definition -----------------------------------------------------------

    def _add_network(self, netdef: netxml.NetworkDef, live: bool) -> Network:
        """Add or replace a network as virNetworkObjAssignDef does."""
        by_name = self.state.networks.get(netdef.name)
        for other in self.state.networks.values():
            if other.uuid == netdef.uuid and other.name != netdef.name:
                raise VirError(P.VIR_ERR_OPERATION_FAILED,
                               f"network '{other.name}' is already defined with uuid "
                               f"{format_uuid(netdef.uuid)}", domain=P.VIR_FROM_NETWORK)
        if by_name is not None and by_name.uuid != netdef.uuid:
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"network '{by_name.name}' already exists with uuid "
                           f"{format_uuid(by_name.uuid)}", domain=P.VIR_FROM_NETWORK)
        if by_name is None:
            net = Network(netdef, active=live, persistent=not live)
            self.state.networks[netdef.name] = net
            return net
        if live:
            if by_name.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"network is already active as '{by_name.name}'",
                               domain=P.VIR_FROM_NETWORK)
            by_name.new_def = by_name.definition
            by_name.definition = netdef
            by_name.active = True
        elif by_name.active:
            by_name.new_def = netdef
            by_name.persistent = True
        else:
            by_name.definition = netdef
            by_name.persistent = True
        return by_name

    def network_define_xml(self, xml: str) -> P.remote_nonnull_network:
        return self.network_define_xml_flags(xml, 0)

    def network_define_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, NETWORK_VALIDATE, "testNetworkDefineXMLFlags", P.VIR_FROM_TEST)
        net = self._add_network(netxml.parse(xml, validate_schema=bool(flags & NETWORK_VALIDATE)), live=False)
        self._emit_network(net, P.VIR_NETWORK_EVENT_DEFINED)
        return net.ref()

    def network_create_xml(self, xml: str) -> P.remote_nonnull_network:
        return self.network_create_xml_flags(xml, 0)

    def network_create_xml_flags(self, xml: str, flags: int) -> P.remote_nonnull_network:
        check_flags(flags, NETWORK_VALIDATE, "testNetworkCreateXMLFlags", P.VIR_FROM_TEST)
        net = self._add_network(netxml.parse(xml, validate_schema=bool(flags & NETWORK_VALIDATE)), live=True)
        self._emit_network(net, P.VIR_NETWORK_EVENT_STARTED)
        return net.ref()

    def network_undefine(self, ref) -> None:
        net = self._net(ref)
        if net.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, f"Network '{net.name}' is still running",
                           domain=P.VIR_FROM_TEST)
        del self.state.networks[net.name]
        self._emit_network(net, P.VIR_NETWORK_EVENT_UNDEFINED)

    def network_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "testNetworkGetXMLDesc", P.VIR_FROM_TEST)
        return netxml.format(self._net(ref).definition)

    # --- lifecycle ------------------------------------------------------------

    def network_create(self, ref) -> None:
        net = self._net(ref)
        if net.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, f"Network '{net.name}' is already running",
                           domain=P.VIR_FROM_TEST)
        net.active = True
        self._emit_network(net, P.VIR_NETWORK_EVENT_STARTED)

    def network_destroy(self, ref) -> None:
        net = self._net(ref)
        # The test driver does not check that the network runs (a second destroy succeeds).
        net.active = False
        self._emit_network(net, P.VIR_NETWORK_EVENT_STOPPED)
        if not net.persistent:
            del self.state.networks[net.name]

    def network_is_active(self, ref) -> int:
        return int(self._net(ref).active)

    def network_is_persistent(self, ref) -> int:
        return int(self._net(ref).persistent)

    def network_get_autostart(self, ref) -> int:
        return int(self._net(ref).autostart)

    def network_set_autostart(self, ref, autostart: int) -> None:
        # The test driver accepts this for transient networks too.
        self._net(ref).autostart = bool(autostart)

    def network_get_bridge_name(self, ref) -> str:
        net = self._net(ref)
        bridge = net.definition.bridge
        if not bridge:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"network '{net.name}' does not have a bridge name.",
                           domain=P.VIR_FROM_TEST)
        return bridge

    # --- net-update -----------------------------------------------------------

    def connect_supports_feature(self, feature: int) -> int:
        """The test driver takes net-update's arguments in the documented order.

        Without this answer clients swap ``command`` and ``section`` (the
        remote driver's workaround for libvirt < 1.0.0 daemons).  Other
        features are left to the mixins after this one.
        """
        if feature == P.VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER:
            return 1
        parent = getattr(super(), "connect_supports_feature", None)
        return parent(feature) if parent is not None else 0


    def network_update(self, ref, command: int, section: int, parent_index: int, xml: str,
                       flags: int) -> None:
        check_flags(flags, UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG, "testNetworkUpdate",
                    P.VIR_FROM_TEST)
        net = self._net(ref)
        if not flags & (UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG):
            flags |= UPDATE_AFFECT_LIVE if net.active else UPDATE_AFFECT_CONFIG
        if flags & UPDATE_AFFECT_LIVE and not net.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "network is not running",
                           domain=P.VIR_FROM_NETWORK)
        if flags & UPDATE_AFFECT_CONFIG and not net.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "cannot change persistent config of a transient network",
                           domain=P.VIR_FROM_NETWORK)
        # Edit copies so that a failure leaves both definitions untouched.
        live = net.definition.copy() if flags & UPDATE_AFFECT_LIVE else None
        config = None
        if flags & UPDATE_AFFECT_CONFIG:
            config = net.config().copy() if net.active else (live or net.definition.copy())
        for target in {id(d): d for d in (config, live) if d is not None}.values():
            netxml.update(target, command, section, parent_index, xml)
        if live is not None:
            net.definition = live
        if config is not None:
            if net.active:
                net.new_def = config
            else:
                net.definition = config
