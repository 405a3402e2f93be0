"""A UML guest's NICs: persistent taps the kernel opens by name (``ethN=tuntap,TAP,MAC``).

The UML kernel's tuntap transport opens /dev/net/tun and attaches to the
tap it is given by name (TUNSETIFF); it cannot take an fd from us.  So, as
libvirt's UML driver did, the daemon makes each tap persistent before the
kernel starts and deletes it when the guest stops:

  <interface type='network'>  a port on the network (as the QEMU driver's
                              NICs take one), a tap on the port's bridge
  <interface type='bridge'>   a tap on that host bridge
  <interface type='ethernet'> the tap named by <target dev> if it exists (the
                              admin's: left alone), else one the daemon makes,
                              up and on no bridge

Ports, taps on bridges, MAC checks, nwfilter bindings, reclaiming ports
after a daemon restart and the lease answer of domifaddr are the shared
NIC plumbing of local drivers (pyvirtd/driver/interfaces.py, which the QEMU
driver uses too); every call into it and into the network subsystem is in
this module.

The live definition shows ``<target dev='TAP'/>``, for type network the
port's ``<source ... portid= bridge=>``, and ``<alias name='netN'/>``.
"""

from __future__ import annotations

import fcntl
import logging
import os

import trio
from lxml import etree

from pyvirtd.driver import interfaces
from pyvirtd.driver.hypervisor import HypervisorDomain, HypervisorState
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_UML
TYPES = ("network", "bridge", "ethernet")
TUNSETPERSIST = 0x400454CB          # linux/if_tun.h: _IOW('T', 203, int)

Tap = tuple[str, str]               # (tap, MAC whose 0xFE twin it carries, or "": any)


def check(d: domxml.DomainDef) -> None:
    """Define-time checks of <interface>s (the XML defaults hook)."""
    for iface in d.devices_of("interface"):
        kind = iface.get("type")
        if kind not in TYPES:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"unsupported interface type '{kind}' for a UML guest: "
                           "network, bridge or ethernet", domain=_FROM)
        if iface.find("script") is not None:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           "interface script execution not supported by this driver",
                           domain=_FROM)


def _persist(fd: int) -> None:
    """Keep the tap when our fd closes: the kernel attaches to it by name later."""
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def _mac(iface: etree._Element) -> str:
    return iface.find("mac").get("address").lower()


async def _ethernet(iface: etree._Element) -> Tap | None:
    """The tap of an ethernet NIC: the admin's if <target dev> names an existing
    one (None: not ours to delete), else one we make."""
    from pyvirtd.network import datapath
    target = iface.find("target")
    name = target.get("dev") if target is not None else None
    if not name or name.startswith("vnet"):     # unset, or a name of an earlier run
        name = "vnet%d"
    if "%" not in name and await datapath.netlink_call("link_exists", name):
        return None
    tap, fd = await datapath.open_tap(name, None, _mac(iface), None, False)
    await trio.to_thread.run_sync(_persist, fd)
    if target is None:
        target = etree.Element("target")
        iface.find("mac").addnext(target)
    target.set("dev", tap)
    return (tap, "")


async def plug_all(state: HypervisorState, dom: HypervisorDomain,
                   live: domxml.DomainDef) -> list[Tap]:
    """Make the taps (and network ports) of ``live``'s NICs before the kernel starts;
    the taps to delete at stop.  On failure nothing is left behind."""
    ifaces = interfaces
    taps: list[Tap] = []
    try:
        for i, iface in enumerate(live.devices_of("interface")):
            if iface.get("type") == "ethernet":
                made = await _ethernet(iface)
                if made is not None:
                    taps.append(made)
            else:
                tap, mac, fd = await ifaces.plug_one(state, dom, iface, live)
                taps.append((tap, mac))
                if iface.get("type") == "direct":   # a network of macvtaps
                    os.close(fd)
                    raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                                   "a UML guest's NIC needs a tap on a bridge; network "
                                   f"'{iface.find('source').get('network')}' has none",
                                   domain=_FROM)
                await trio.to_thread.run_sync(_persist, fd)
            if iface.find("alias") is None:
                etree.SubElement(iface, "alias", name=f"net{i}")
    except BaseException:
        with trio.CancelScope(shield=True):
            await unplug_all(state, taps, live)
        raise
    return taps


def kernel_args(live: domxml.DomainDef) -> list[str]:
    """``ethN=tuntap,TAP,MAC`` per NIC of the live definition (after plug_all)."""
    return [f"eth{i}=tuntap,{iface.find('target').get('dev')},{_mac(iface)}"
            for i, iface in enumerate(live.devices_of("interface"))]


async def unplug_all(state: HypervisorState, taps: list[Tap],
                     live: domxml.DomainDef) -> None:
    """Delete the taps we made and give back the network ports; never raises."""
    await interfaces.unplug_all(state, taps, live.devices_of("interface"))


async def reclaim(state: HypervisorState, live: domxml.DomainDef) -> None:
    """After a daemon restart: the networks know the ports of a guest still running."""
    if live.devices_of("interface"):
        await interfaces.reclaim_ports(state, live)


def lease_addresses(state: HypervisorState, dom: HypervisorDomain) -> list:
    """domifaddr --source lease: the DHCP leases of the guest's MACs."""
    return interfaces.interface_addresses(state, dom)
