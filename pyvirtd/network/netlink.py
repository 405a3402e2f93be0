"""Netlink side of virtual networks, through pyroute2.

Every function here is synchronous and opens its own netlink socket: callers
run them with ``trio.to_thread.run_sync`` so the event loop never blocks.
They act on the network namespace the daemon runs in.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_names() -> set[str]:
    with IPRoute() as ipr:
        return {link.get("ifname") for link in ipr.get_links()}


def link_exists(ifname: str) -> bool:
    with IPRoute() as ipr:
        return _index(ipr, ifname) is not None


def link_kind(ifname: str) -> str | None:
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return None
        return ipr.get_links(idx)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def link_counters(ifname: str) -> dict[str, int] | None:
    """The kernel's packet and byte counters of link ``ifname`` in this process's network
    namespace (IFLA_STATS64; /sys/class/net shows sysfs' mounter's namespace), or None."""
    with IPRoute() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return None
        stats = ipr.get_links(idx)[0].get_attr("IFLA_STATS64")
    if stats is None:
        return None
    return {key: int(stats.get(key, 0))
            for key in ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
                        "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")}


def create_bridge(name: str, *, mac: str | None, stp: bool, delay: int, mtu: int | None,
                  addresses: list[tuple[str, int]]) -> None:
    """Create (or complete) a bridge with its addresses and bring it up.

    Idempotent: an existing bridge of that name is reused, addresses already
    present are kept, so reconciliation can call it on a running network.
    """
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            # forward delay first, while STP is still off: the kernel refuses
            # delays under 2 s on an STP bridge but keeps one set before.
            ipr.link("add", ifname=name, kind="bridge", br_forward_delay=delay * 100)
            idx = _index(ipr, name)
            if stp:
                ipr.link("set", index=idx, kind="bridge", br_stp_state=1)
        settings = {}
        if mac:
            settings["address"] = mac
        if mtu:
            settings["mtu"] = mtu
        if settings:
            ipr.link("set", index=idx, **settings)
        set_ipv6_sysctls(name, any(":" in address for address, _prefix in addresses))
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
        for address, prefix in addresses:
            if (address, prefix) in have:
                continue
            ip = ipaddress.ip_interface(f"{address}/{prefix}")
            kwargs = {}
            if ip.version == 4:
                kwargs["broadcast"] = str(ip.network.broadcast_address)
            ipr.addr("add", index=idx, address=address, prefixlen=prefix, **kwargs)
        ipr.link("set", index=idx, state="up")


def set_ipv6_sysctls(bridge: str, ipv6: bool) -> None:
    """libvirt's networkSetIPv6Sysctls: IPv6 on the bridge only if the network
    has IPv6 addresses, and never autoconfiguration from router
    advertisements (guests must not be able to steer the host)."""
    base = f"/proc/sys/net/ipv6/conf/{bridge}"
    if not os.path.exists(base):   # IPv6 disabled in this kernel or namespace
        return
    for key, value in (("disable_ipv6", "0" if ipv6 else "1"), ("accept_ra", "0"),
                       ("autoconf", "0")):
        with open(f"{base}/{key}", "w") as f:
            f.write(value + "\n")


def delete_link(name: str) -> bool:
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != 19:   # ENODEV: gone meanwhile
                raise
        return True


def add_route(dst: str, gateway: str, metric: int | None = None) -> None:
    with IPRoute() as ipr:
        kwargs = {"priority": metric} if metric else {}
        try:
            ipr.route("add", dst=dst, gateway=gateway, **kwargs)
        except NetlinkError as exc:
            if exc.code != 17:   # EEXIST: already there (reconciliation)
                raise


def route_collision(network: ipaddress._BaseNetwork, own_bridge: str | None) -> str | None:
    """The interface whose route covers ``network`` (libvirt's route collision check)."""
    family = 2 if network.version == 4 else 10
    with IPRoute() as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        for route in ipr.get_routes(family=family, table=254):
            dst = route.get("dst")
            if dst is None or route["dst_len"] == 0:
                continue
            if route.get("gateway") is not None:
                continue
            try:
                other = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
            except ValueError:
                continue
            if network.version == 6 and other.is_link_local:
                continue
            ifname = names.get(route.get("oif"))
            if ifname == own_bridge:
                continue
            if other.overlaps(network):
                return ifname or "?"
    return None


def set_forwarding(version: int) -> None:
    path = ("/proc/sys/net/ipv4/ip_forward" if version == 4
            else "/proc/sys/net/ipv6/conf/all/forwarding")
    with open(path, "w") as f:
        f.write("1\n")


def open_tap(name: str, bridge: str | None, mac: str, mtu: int | None = None,
             vnet_hdr: bool = True) -> tuple[str, int]:
    """A tap device attached to ``bridge``; the caller owns the returned fd.

    The tap is not persistent: it disappears when the last fd to it closes
    (when QEMU exits), as libvirt's taps do.  ``name`` may hold ``%d``.
    With ``bridge`` None (an <interface type='ethernet'>) the tap named
    ``name`` is opened, made if missing, and only brought up: its MAC and
    master stay as the admin set them.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = struct.pack("16sH22x", name.encode(), flags)
        res = fcntl.ioctl(fd, TUNSETIFF, ifr)
        tap = res[:16].rstrip(b"\0").decode()
        # the tap's own MAC must not be the guest's (libvirt: 0xFE first byte)
        tap_mac = "fe" + mac[2:]
        with IPRoute() as ipr:
            idx = _index(ipr, tap)
            if bridge is None:
                settings = {"mtu": mtu} if mtu else {}
                ipr.link("set", index=idx, state="up", **settings)
                return tap, fd
            br = _index(ipr, bridge)
            if br is None:
                raise OSError(19, f"bridge {bridge} does not exist")
            settings = {"address": tap_mac, "master": br}
            if mtu:
                settings["mtu"] = mtu
            else:
                brmtu = ipr.get_links(br)[0].get("mtu")
                if brmtu:
                    settings["mtu"] = brmtu
            ipr.link("set", index=idx, **settings)
            ipr.link("set", index=idx, state="up")
        return tap, fd
    except BaseException:
        os.close(fd)
        raise


def create_veth(bridge: str | None, mac: str, mtu: int | None = None,
                host_pattern: str = "veth%d", host_name: str | None = None) -> tuple[str, str]:
    """A veth pair for a container: the host end on ``bridge`` (if any) and up, the peer
    left for the container.

    Returns (host end, peer).  The host end is named ``host_name`` (a
    container's <interface type='ethernet'> with <target dev>) or gets the
    first free name of ``host_pattern`` (libvirt's vethN), and the guest MAC
    with first byte 0xFE; the peer gets the guest MAC and a temporary name
    (vpeerN) that the container renames once it has been moved into its
    namespace.  Deleting either end, or the container's namespace going
    away, removes both.
    """
    with IPRoute() as ipr:
        br = None
        if bridge is not None:
            br = _index(ipr, bridge)
            if br is None:
                raise OSError(19, f"bridge {bridge} does not exist")
        names = {link.get("ifname") for link in ipr.get_links()}
        if host_name is not None and host_name in names:
            raise OSError(17, f"{host_name}: {os.strerror(17)}")
        n = 0
        while (host_name is None and host_pattern % n in names) or f"vpeer{n}" in names:
            n += 1
        host, peer = host_name or host_pattern % n, f"vpeer{n}"
        ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "address": mac})
        try:
            idx = _index(ipr, host)
            settings: dict = {"address": "fe" + mac[2:]}
            if br is not None:
                settings["master"] = br
            link_mtu = mtu or (ipr.get_links(br)[0].get("mtu") if br is not None else None)
            if link_mtu:
                settings["mtu"] = link_mtu
                ipr.link("set", index=_index(ipr, peer), mtu=link_mtu)
            ipr.link("set", index=idx, **settings)
            ipr.link("set", index=idx, state="up")
        except BaseException:
            ipr.link("del", ifname=host)
            raise
        return host, peer


# linux/if_tun.h: read a tap's flags back (macvtap takes IFF_VNET_HDR through TUNSETIFF)
TUNGETIFF = 0x800454D2
# the kernel's macvlan modes, by libvirt's names for them (virNetDevMacVLanMode)
MACVTAP_MODES = {"private": "private", "vepa": "vepa", "bridge": "bridge",
                 "passthrough": "passthru"}


def _open_macvtap_device(name: str, index: int, vnet_hdr: bool) -> int:
    """Open /dev/tapN of a macvtap (udev or devtmpfs names it after the ifindex).

    The node appears a moment after the link: wait for it as libvirt's
    virNetDevMacVLanTapOpen does, and make it from sysfs if no one does.
    """
    import time

    path = f"/dev/tap{index}"
    for _ in range(50):
        if os.path.exists(path):
            break
        time.sleep(0.02)
    else:
        with open(f"/sys/class/net/{name}/macvtap/tap{index}/dev") as f:
            major, minor = (int(x) for x in f.read().strip().split(":"))
        os.mknod(path, 0o600 | 0o020000, os.makedev(major, minor))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if vnet_hdr:
            res = fcntl.ioctl(fd, TUNGETIFF, struct.pack("16sH22x", b"", 0))
            flags = struct.unpack("16sH22x", res)[1]
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"", flags | IFF_VNET_HDR))
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_macvtap(name: str, parent: str, mode: str, mac: str, saved_macs: str,
                 vnet_hdr: bool = True) -> tuple[str, int]:
    """A macvtap on ``parent`` in ``mode`` with the guest's MAC, up, and its open tap fd.

    ``name`` may hold ``%d`` (the first free macvtapN).  Unlike a tap, the
    link outlives the fd: the caller deletes it (`delete_macvtap`) when the
    guest stops.  In passthrough mode the macvtap takes its parent's MAC, so
    the parent first gets the guest's, as libvirt does; its own MAC is kept
    in ``saved_macs``/PARENT.mac until `delete_macvtap` puts it back.
    Raises OSError: ENODEV for a missing parent, the kernel's errno when it
    cannot make a macvtap (EOPNOTSUPP without the macvtap driver).
    """
    with IPRoute() as ipr:
        pidx = _index(ipr, parent)
        if pidx is None:
            raise OSError(19, f"Unable to get index for interface {parent}: No such device")
        if mode == "passthrough":
            saved = os.path.join(saved_macs, f"{parent}.mac")
            if not os.path.exists(saved):
                os.makedirs(saved_macs, exist_ok=True)
                with open(saved, "w") as f:
                    f.write(ipr.get_links(pidx)[0].get_attr("IFLA_ADDRESS"))
            ipr.link("set", index=pidx, address=mac)
        if "%d" in name:
            names = {link.get("ifname") for link in ipr.get_links()}
            n = 0
            while name % n in names:
                n += 1
            name = name % n
        try:
            ipr.link("add", ifname=name, kind="macvtap", link=pidx,
                     macvtap_mode=MACVTAP_MODES[mode], address=mac)
        except NetlinkError as exc:
            raise OSError(exc.code, os.strerror(exc.code), name) from None
        try:
            idx = _index(ipr, name)
            ipr.link("set", index=idx, state="up")
            return name, _open_macvtap_device(name, idx, vnet_hdr)
        except BaseException:
            ipr.link("del", index=_index(ipr, name))
            raise


def create_macvlan(parent: str, mode: str, mac: str, pattern: str = "macvlan%d") -> str:
    """A macvlan on ``parent`` in ``mode`` with the guest's MAC, down, for a container
    (<interface type='direct'>, virLXCProcessSetupInterfaceDirect): its name, the first
    free of ``pattern``.  It is moved into the container, and ends with its namespace.
    Raises OSError: ENODEV for a missing parent, the kernel's errno otherwise."""
    with IPRoute() as ipr:
        pidx = _index(ipr, parent)
        if pidx is None:
            raise OSError(19, f"Unable to get index for interface {parent}: No such device")
        names = {link.get("ifname") for link in ipr.get_links()}
        n = 0
        while pattern % n in names:
            n += 1
        name = pattern % n
        try:
            ipr.link("add", ifname=name, kind="macvlan", link=pidx,
                     macvlan_mode=MACVTAP_MODES[mode], address=mac)
        except NetlinkError as exc:
            raise OSError(exc.code, os.strerror(exc.code), name) from None
        return name


def delete_macvtap(name: str, mac: str, saved_macs: str) -> None:
    """Delete a guest's macvtap if it still is the one made for ``mac``; give a
    passthrough parent its own MAC back."""
    with IPRoute() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return
        link = ipr.get_links(idx)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "macvtap" or \
                (link.get_attr("IFLA_ADDRESS") or "").lower() != mac:
            return
        parent = link.get_attr("IFLA_LINK")
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != 19:
                raise
        if parent:
            pname = ipr.get_links(parent)[0].get_attr("IFLA_IFNAME")
            saved = os.path.join(saved_macs, f"{pname}.mac")
            if os.path.exists(saved):
                with open(saved) as f:
                    ipr.link("set", index=parent, address=f.read().strip())
                os.unlink(saved)

