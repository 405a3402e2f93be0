"""IP address learning for bindings whose filter needs ``$IP`` and got none.

libvirt's rules, as its nwfilter documentation states them: learning starts
when a filter references ``IP`` and the binding gives no value; the binding's
``CTRL_IP_LEARNING`` parameter picks the method:

    any   (the default)  the first IPv4 address the guest uses (source of an
                         IPv4 packet or sender of an ARP packet from its MAC,
                         0.0.0.0 aside) or a DHCP server acknowledges for its
                         MAC; one address, learning then stops
    dhcp                 only addresses that a DHCP server acknowledges for
                         its MAC (``DHCPACK``), from a server listed in
                         ``DHCPSERVER`` when that is given; each new lease
                         adds its address, snooping goes on with the port
    none                 no learning: the filter fails for the missing IP

Until an address is known the port gets the restricted rules of
`learning_chains` (as libvirt's "basic" and "DHCP only" rules); then the
whole filter is instantiated with ``IP`` set to what was learned.

Frames are read from a packet socket bound to the port (the daemon's own
namespace, where the tap or veth lives): packet sockets see a frame before
the bridge's hooks do, so a frame the learning rules drop is seen too.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

import trio

from .model import BindingDef

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
METHODS = ("any", "dhcp", "none")
_DHCP_MAGIC = b"\x63\x82\x53\x63"


def param(binding: BindingDef, name: str) -> list[str]:
    return [v for n, v in binding.params if n == name]


def method(binding: BindingDef) -> str:
    """The binding's learning method: CTRL_IP_LEARNING, lower case, 'any' by default."""
    values = param(binding, "CTRL_IP_LEARNING")
    return values[0].lower() if values else "any"


def _ipv4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def dhcp_ack(frame: bytes, mac: bytes) -> tuple[str, str] | None:
    """(server address, leased address) of a DHCPACK for ``mac`` in an Ethernet frame."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:
        return None
    udp = 14 + ihl
    sport, dport = struct.unpack_from("!HH", frame, udp)
    if (sport, dport) != (67, 68):
        return None
    bootp = udp + 8
    if len(frame) < bootp + 240 or frame[bootp] != 2 or frame[bootp + 28:bootp + 34] != mac \
            or frame[bootp + 236:bootp + 240] != _DHCP_MAGIC:
        return None
    pos = bootp + 240
    kind = None
    while pos < len(frame) and frame[pos] != 255:
        code = frame[pos]
        if code == 0:
            pos += 1
            continue
        if pos + 1 >= len(frame):
            break
        length = frame[pos + 1]
        if code == 53 and length == 1 and pos + 2 < len(frame):
            kind = frame[pos + 2]
        pos += 2 + length
    if kind != 5:
        return None
    return _ipv4(frame[14 + 12:14 + 16]), _ipv4(frame[bootp + 16:bootp + 20])


def used_address(frame: bytes, mac: bytes) -> str | None:
    """The IPv4 address a frame from the guest (source ``mac``) uses, if any."""
    if frame[6:12] != mac:
        return None
    kind = frame[12:14]
    if kind == b"\x08\x00" and len(frame) >= 34:
        addr = frame[26:30]
    elif kind == b"\x08\x06" and len(frame) >= 42 and frame[16:18] == b"\x08\x00":
        addr = frame[28:32]             # ARP sender protocol address
    else:
        return None
    return None if addr == b"\0\0\0\0" else _ipv4(addr)


def learned(frame: bytes, outgoing: bool, binding: BindingDef) -> str | None:
    """The address ``frame`` teaches about ``binding``'s guest under its method.

    ``outgoing``: the frame goes to the guest (a packet socket's
    PACKET_OUTGOING on the port); else it comes from the guest."""
    mac = bytes.fromhex(binding.mac.replace(":", ""))
    how = method(binding)
    if outgoing:
        ack = dhcp_ack(frame, mac)
        if ack is None:
            return None
        servers = param(binding, "DHCPSERVER")
        if how == "dhcp" and servers and ack[0] not in servers:
            log.info("DHCPACK for %s from untrusted server %s ignored", binding.portdev, ack[0])
            return None
        return ack[1]
    return used_address(frame, mac) if how == "any" else None


async def watch(binding: BindingDef, found: Callable[[str], Awaitable[bool]]) -> None:
    """Read the port's frames and report each address learned to ``found``, until it
    answers False (no more wanted) or the task is cancelled."""
    sock = trio.socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        await sock.bind((binding.portdev, 0))
        while True:
            frame, addr = await sock.recvfrom(65535)
            ip = learned(frame, addr[2] == PACKET_OUTGOING, binding)
            if ip is not None and ip not in param(binding, "IP"):
                log.info("nwfilter learned IP %s on %s", ip, binding.portdev)
                if not await found(ip):
                    return


def learning_rules(binding: BindingDef) -> tuple[list[str], list[str]]:
    """nft rules (from the guest, to the guest) while the port's address is unknown.

    any: the guest may send ARP and IPv4 from its own MAC (its first packets
    teach the address), nothing else; dhcp: only DHCP to a server and DHCP
    replies (from DHCPSERVER when given) back."""
    mac = binding.mac
    from_guest = [f"ether saddr != {mac} drop"]
    to_guest: list[str] = []
    if method(binding) == "dhcp":
        from_guest += ["ether type 0x0800 udp sport 68 udp dport 67 accept", "drop"]
        servers = [str(ipaddress.IPv4Address(s)) for s in param(binding, "DHCPSERVER")]
        match = f"ip saddr {{ {', '.join(servers)} }} " if servers else ""
        to_guest += [f"ether type 0x0800 {match}udp sport 67 udp dport 68 accept", "drop"]
    else:
        from_guest += ["ether type 0x0806 accept", "ether type 0x0800 accept", "drop"]
    return from_guest, to_guest
