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

from pyvirtd.driver.objects import DefinedObject
from pyvirtd.errors import VirError, check_flags
from pyvirtd.network.update import commit, edited_copies
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

from .state import TEST_NETWORK, TestState

LIST_ALL = TEST_NETWORK.list_flags      # virConnectListAllNetworksFlags
# virNetworkUpdateFlags.
UPDATE_AFFECT_LIVE = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_LIVE
UPDATE_AFFECT_CONFIG = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_CONFIG
# VIR_NETWORK_DEFINE_VALIDATE == VIR_NETWORK_CREATE_VALIDATE
NETWORK_VALIDATE = P.NetworkDefineFlags.VIR_NETWORK_DEFINE_VALIDATE


@dataclass(eq=False)
class Network(DefinedObject):
    definition: netxml.NetworkDef
    new_def: netxml.NetworkDef | None = None

    def ref(self) -> P.remote_nonnull_network:
        return P.remote_nonnull_network(self.name, self.uuid)


def load_networks(state: TestState, elements: list[etree._Element]) -> None:
    """Networks of a node file start active and persistent."""
    for elem in elements:
        state.networks.add(Network(netxml.from_element(elem), active=True))


class NetworkMixin:
    state: TestState

    # --- lookup helpers -------------------------------------------------------

    def _net(self, ref) -> Network:
        """The network a client's reference names (by uuid, as libvirt looks it up)."""
        return self.state.networks.by_ref(ref)

    def _emit_network(self, net: Network, event: int) -> None:
        self.state.events.emit("network", P.VIR_NETWORK_EVENT_ID_LIFECYCLE, net.ref(), event, 0)

    # --- listing --------------------------------------------------------------

    def connect_num_of_networks(self) -> int:
        return self.state.networks.count(active=True)

    def connect_list_networks(self, maxnames: int) -> list[str]:
        return self.state.networks.list_names(True, maxnames)

    def connect_num_of_defined_networks(self) -> int:
        return self.state.networks.count(active=False)

    def connect_list_defined_networks(self, maxnames: int) -> list[str]:
        return self.state.networks.list_names(False, maxnames)

    def connect_list_all_networks(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "testConnectListAllNetworks", P.VIR_FROM_TEST)
        nets = [n.ref() for n in self.state.networks.list_all(flags)]
        return (nets if need_results else [], len(nets))

    # --- lookup ---------------------------------------------------------------

    def network_lookup_by_name(self, name: str) -> P.remote_nonnull_network:
        return self.state.networks.by_name(name).ref()

    def network_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_network:
        return self.state.networks.by_uuid(uuid).ref()

    # --- definition -----------------------------------------------------------

    def _add_network(self, netdef: netxml.NetworkDef, live: bool) -> Network:
        """Add or replace a network as virNetworkObjAssignDef does; created ones run."""
        net = self.state.networks.assign(netdef, live=live, make=Network)
        if live:
            net.active = True
        return net

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
        self.state.networks.remove(net)
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
        # The test driver does not check that the network runs (a second destroy
        # succeeds), nor does it swap the next definition in (see the module doc).
        self.state.networks.stopped(net, apply_config=False)
        self._emit_network(net, P.VIR_NETWORK_EVENT_STOPPED)

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
        # the daemon's rules; edited copies, so a failure leaves both definitions untouched
        net = self._net(ref)
        live, config = edited_copies(net, command, section, parent_index, xml, flags)
        commit(net, live, config)
