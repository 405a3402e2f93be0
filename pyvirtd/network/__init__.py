"""The virtual-network subsystem: libvirt's network driver for hypervisor connections.

Modules, as pyvirtd/storage is organised: `model` (the Network object, its
flags, XML checks), `subsystem` (NetworkSubsystem: the procedures, files,
lifecycle), `datapath` (bridges, addresses, firewall and dnsmasq on the
host), `update` (net-update), `ports` (network ports); `dnsmasq`,
`firewall` and `netlink` are the host tools they drive.

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

API for hypervisor drivers (guest interfaces of type network), the
`api.NetworkService` reached as ``ctx.services.network``::

    port = await ctx.services.network.create_port("default", port_def)
    # port.plug says where to plug the guest: a bridge, or a device for a macvtap
    ...
    await ctx.services.network.delete_port("default", port_def.uuid)  # guest gone
    leases = ctx.services.network.dhcp_leases("default", mac)   # api.DhcpLease list

    tap, fd = await ctx.services.network.plug_interface(
        "default", "52:54:00:12:34:56", tap_name="vnet%d", mtu=None)
    # attach with QEMU: -netdev tap,fd=N,vhost=on (the fd carries IFF_VNET_HDR)
    ...
    await ctx.services.network.unplug_interface(tap)   # when the guest stops

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

from . import dnsmasq
from .datapath import netlink_call, plug_veth
from .model import MANAGED_MODES, Network, ip_elements, validate
from .subsystem import NetworkSubsystem

# the drivers' older name for netlink_call (drivers/qemu, drivers/lxc)
_netlink = netlink_call

__all__ = ["NetworkSubsystem", "Network", "MANAGED_MODES", "dnsmasq", "ip_elements",
           "netlink_call", "plug_veth", "validate"]
