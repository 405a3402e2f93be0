"""A running network's data path on the host: bridge, addresses, routes, firewall, dnsmasq.

Per running network of a managed mode (nat, route, open, none = isolated):
a bridge (virbrN allocated as libvirt does) with the network's addresses and
static routes (pyroute2, `netlink`); a dnsmasq with generated configuration
for DHCP and DNS (`dnsmasq`); base chains in pyvirtd's own nftables table
``inet pyvirtd`` (`firewall`).  Mode ``bridge`` uses an existing host bridge
and runs nothing.  Guests' taps and containers' veths are made here too.

These functions touch the host only; which networks exist and their files
are the subsystem's (`subsystem`).  Netlink calls block, so every one runs
on a worker thread (`netlink_call`).
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

from . import dnsmasq, firewall
from .model import MANAGED_MODES, ip_elements

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NETWORK


async def netlink_call(fn: str, *args, **kwargs):
    """``netlink.fn(*args, **kwargs)`` on a worker thread (pyroute2 blocks)."""
    from . import netlink
    return await trio.to_thread.run_sync(lambda: getattr(netlink, fn)(*args, **kwargs))


def files_of(status_dir: Path, name: str) -> dnsmasq.Files:
    """dnsmasq's files of network ``name``, beside its status file."""
    return dnsmasq.Files(status_dir, name)


async def plug_veth(bridge: str | None, mac: str, *, mtu: int | None = None,
                    host_name: str | None = None) -> tuple[str, str]:
    """A veth pair for a container: (host end on ``bridge``, peer to move into the container).

    For container interfaces of type bridge (and, through
    ``NetworkSubsystem.plug_veth``, of type network), and without a bridge
    for type ethernet, whose host end may have a name of the definition's
    (``host_name``); ``unplug_interface`` removes it like a tap.  Raises
    VirError (VIR_ERR_SYSTEM_ERROR).
    """
    try:
        return await netlink_call("create_veth", bridge, mac, mtu, "veth%d", host_name)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Failed to create veth device: {exc.strerror or exc}",
                       domain=_FROM) from None


async def open_tap(tap_name: str, bridge: str, mac: str, mtu: int | None,
                   vnet_hdr: bool) -> tuple[str, int]:
    """A tap on ``bridge`` for a guest NIC: (its name, its fd)."""
    try:
        return await netlink_call("open_tap", tap_name, bridge, mac, mtu, vnet_hdr)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Unable to create tap device {tap_name}: {exc.strerror or exc}",
                       domain=_FROM) from None


async def delete_link(name: str) -> None:
    """Remove a tap or veth; one already gone is fine (logged, never raised)."""
    try:
        await netlink_call("delete_link", name)
    except Exception:
        log.exception("removing tap %s", name)


async def host_link_names() -> set[str]:
    return set(await netlink_call("link_names"))


async def check_start(netdef: netxml.NetworkDef, repair: bool) -> None:
    """Refuse to start what cannot run here (before anything is made or recorded).

    With ``repair`` (a network that was running when the daemon stopped)
    there is nothing to check: its bridge is expected to exist.
    """
    mode = netdef.forward_mode
    if repair:
        return
    if mode in MANAGED_MODES or mode == "none":
        if dnsmasq.needs_dnsmasq(netdef.tree):
            dnsmasq.binary()
        bridge = netdef.bridge
        if await netlink_call("link_exists", bridge):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"bridge name '{bridge}' already in use.", domain=_FROM)
        for _ip, iface in ip_elements(netdef):
            other = await netlink_call("route_collision", iface.network, bridge)
            if other:
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"Network is already in use by interface {other}",
                               domain=_FROM)
    elif mode == "bridge" and netdef.bridge:
        if await netlink_call("link_kind", netdef.bridge) is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Cannot get interface MTU on '{netdef.bridge}': No such device",
                           domain=_FROM)


async def set_up(netdef: netxml.NetworkDef, files: dnsmasq.Files) -> None:
    """Make (or complete) a managed network's bridge, routes, firewall and dnsmasq."""
    tree = netdef.tree
    mode = netdef.forward_mode
    br = tree.find("bridge")
    mtu = tree.find("mtu")
    mac = tree.find("mac")
    ips = ip_elements(netdef)
    await netlink_call("create_bridge", netdef.bridge,
                       mac=None if mac is None else mac.get("address"),
                       stp=br.get("stp", "on") == "on", delay=int(br.get("delay", "0")),
                       mtu=None if mtu is None else int(mtu.get("size")),
                       addresses=[(str(i.ip), i.network.prefixlen) for _e, i in ips])
    for route in tree.findall("route"):
        dst = dnsmasq.ip_interface(route).network
        await netlink_call("add_route", str(dst), route.get("gateway"),
                           int(route.get("metric")) if route.get("metric") else None)
    if mode in ("nat", "route"):
        for version in sorted({i.version for _e, i in ips}):
            await netlink_call("set_forwarding", version)
    dhcp = any(e.find("dhcp") is not None for e, _i in ips)
    dns = tree.find("dns") is None or tree.find("dns").get("enable", "yes") != "no"
    await firewall.apply(netdef.bridge, mode, [i.network for _e, i in ips], dhcp, dns)
    if dnsmasq.needs_dnsmasq(tree) and ips:
        dnsmasq.write_config(files, tree, netdef.bridge)
        if dnsmasq.running_pid(files) is None:
            await dnsmasq.start(files)


async def tear_down(name: str, netdef: netxml.NetworkDef, files: dnsmasq.Files,
                    quiet: bool = False) -> None:
    """Remove a managed network's dnsmasq, firewall chains and bridge.

    With ``quiet`` every step is tried and failures are only logged (undoing
    a failed start, repairing at daemon start).
    """
    steps = [lambda: dnsmasq.stop(files),
             lambda: firewall.remove(netdef.bridge),
             lambda: netlink_call("delete_link", netdef.bridge)]
    for step in steps:
        try:
            await step()
        except Exception:
            if not quiet:
                raise
            log.exception("network %s: teardown step failed", name)
    dnsmasq.remove_files(files)


async def reload_dnsmasq(netdef: netxml.NetworkDef, files: dnsmasq.Files, section: int) -> None:
    """Give a running network's dnsmasq an updated definition (after net-update).

    Host entries only need a SIGHUP; anything else restarts it.
    """
    if not ip_elements(netdef) or netdef.forward_mode not in (*MANAGED_MODES, "none"):
        return
    tree = netdef.tree
    dnsmasq.write_config(files, tree, netdef.bridge)
    if section in (netxml.SECTION_IP_DHCP_HOST, netxml.SECTION_DNS_HOST) and \
            dnsmasq.reload(files):
        return
    await dnsmasq.stop(files)
    if dnsmasq.needs_dnsmasq(tree):
        await dnsmasq.start(files)


async def clean_leftovers(status_dir: Path, running: dict[str, netxml.NetworkDef]) -> None:
    """Remove firewall chains and dnsmasqs of networks that no longer run.

    ``running`` maps the names of running networks to their live definitions.
    """
    keep = set()
    for netdef in running.values():
        if netdef.bridge:
            keep |= firewall.chain_names(netdef.bridge)
    try:
        existing = await firewall.chains()
        await firewall.remove_chains(existing - keep, existing)
    except VirError as exc:
        log.warning("nftables cleanup skipped: %s", exc.message)
    if status_dir.is_dir():
        for pidfile in status_dir.glob("*.pid"):
            name = pidfile.name[:-4]
            if name not in running:
                files = files_of(status_dir, name)
                await dnsmasq.stop(files)
                dnsmasq.remove_files(files)


async def free_default_subnet() -> int | None:
    """N of the first 192.168.N.0/24 (N from 122) no host route uses, as libvirt's
    packaging picks the default network's subnet; None if all are taken."""
    for n in range(122, 255):
        subnet = ipaddress.ip_network(f"192.168.{n}.0/24")
        if not await netlink_call("route_collision", subnet, None):
            return n
    return None
