"""Network filters: libvirt's per-NIC firewall (``<filterref filter='clean-traffic'/>``).

    model.py      <filter> and <filterbinding> XML: parse, check, format
    standard/     the filters pyvirtd ships, with libvirt's names and behaviour
    nft.py        filters expanded per guest NIC into pyvirtd's nftables table
    learn.py      IP learning (CTRL_IP_LEARNING any/dhcp) for bindings without $IP
    subsystem.py  the 14 nwfilter procedures, persistence, daemon start

For hypervisor drivers, where a guest NIC's host device comes up and goes
(api.NWFilterService)::

    await ctx.services.nwfilter.bind_interface(dom_name, dom_uuid, iface_elem, "vnet0")
    ...
    await ctx.services.nwfilter.unbind_interface("vnet0")      # never raises

``bind_interface`` does nothing for an <interface> without <filterref>.
"""

from .subsystem import NWFilterSubsystem

__all__ = ["NWFilterSubsystem"]
