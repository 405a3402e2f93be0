"""What a virtual network is in memory: the object, its flags, and the checks on its XML.

A `Network` mirrors libvirt's virNetworkObj: ``definition`` is what runs (or
the persistent definition while inactive), ``new_def`` the persistent
configuration of a running network, ``ports`` the ports of a running one.
The list of networks is a `pyvirtd.driver.objects.ObjectList` of the kind
`NETWORK` (lookups, listings, define rules); this module holds only what is
the network's own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pyvirtd.driver.objects import NETWORK, DefinedObject, ObjectList
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

from . import dnsmasq

_FROM = P.VIR_FROM_NETWORK

# virConnectListAllNetworksFlags: every bit the list-all filters know
LIST_ALL = NETWORK.list_flags
# virNetworkUpdateFlags, virNetworkXMLFlags, define/create VALIDATE flags
UPDATE_AFFECT_LIVE = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_LIVE
UPDATE_AFFECT_CONFIG = P.NetworkUpdateFlags.VIR_NETWORK_UPDATE_AFFECT_CONFIG
XML_INACTIVE = P.NetworkXMLFlags.VIR_NETWORK_XML_INACTIVE
DEFINE_VALIDATE = P.NetworkDefineFlags.VIR_NETWORK_DEFINE_VALIDATE
CREATE_VALIDATE = P.NetworkCreateFlags.VIR_NETWORK_CREATE_VALIDATE
IP_ADDR_TYPE_IPV4 = P.IPAddrType.VIR_IP_ADDR_TYPE_IPV4
IP_ADDR_TYPE_IPV6 = P.IPAddrType.VIR_IP_ADDR_TYPE_IPV6

# forward modes whose network has a bridge, addresses and (maybe) a dnsmasq of its own
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


@dataclass(eq=False)
class Network(DefinedObject):
    """One network (definition, new_def, active, persistent, autostart: `DefinedObject`)."""
    definition: netxml.NetworkDef
    new_def: netxml.NetworkDef | None = None
    ports: dict = field(default_factory=dict)  # uuid bytes -> networkport.PortDef (running only)

    def ref(self) -> P.remote_nonnull_network:
        return P.remote_nonnull_network(self.name, self.uuid)

    @property
    def managed(self) -> bool:
        """The network has a bridge of its own (nat, route, open, isolated)."""
        return self.definition.forward_mode in (*MANAGED_MODES, "none")


NetworkList = ObjectList[Network]


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
