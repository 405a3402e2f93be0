"""IP learning (pyvirtd/nwfilter/learn.py): which frames teach a guest's address, under
which CTRL_IP_LEARNING method; frames built byte by byte as they appear on a tap."""

from __future__ import annotations

import ipaddress
import struct

from pyvirtd.nwfilter.learn import learned, learning_rules, method
from pyvirtd.nwfilter.model import BindingDef

GUEST = "52:54:00:86:00:01"
OTHER = "52:54:00:86:00:02"


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def binding(*params: tuple[str, str]) -> BindingDef:
    return BindingDef("g", b"\0" * 16, "vnet0", GUEST, "clean-traffic", list(params))


def ipv4(src_mac: str, src: str, dst: str, payload: bytes = b"", proto: int = 1) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       ip(src), ip(dst))
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\x08\x00" + head + payload


def arp(src_mac: str, sender: str, target: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(src_mac), ip(sender),
                       b"\0" * 6, ip(target))
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\x08\x06" + body


def dhcp(server: str, yiaddr: str, chaddr: str, kind: int) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, 7, 0, 0, b"\0" * 4,
                        ip(yiaddr), ip(server), b"\0" * 4, mac(chaddr), b"", b"")
    options = b"\x63\x82\x53\x63" + bytes([53, 1, kind, 54, 4]) + ip(server) + b"\xff"
    udp = struct.pack("!HHHH", 67, 68, 8 + len(bootp) + len(options), 0) + bootp + options
    return ipv4("52:54:00:00:00:fe", server, "255.255.255.255", udp, proto=17)


def test_first_packets_teach_the_address_with_any():
    b = binding()
    assert method(b) == "any"
    assert learned(ipv4(GUEST, "10.0.0.5", "10.0.0.1"), False, b) == "10.0.0.5"
    assert learned(arp(GUEST, "10.0.0.6", "10.0.0.1"), False, b) == "10.0.0.6"
    # not from the guest's MAC, not an address, not from the guest
    assert learned(ipv4(OTHER, "10.0.0.5", "10.0.0.1"), False, b) is None
    assert learned(ipv4(GUEST, "0.0.0.0", "255.255.255.255"), False, b) is None
    assert learned(arp(GUEST, "0.0.0.0", "10.0.0.1"), False, b) is None
    assert learned(ipv4(GUEST, "10.0.0.5", "10.0.0.1"), True, b) is None


def test_dhcp_acks_for_the_guest_teach_the_address():
    ack = dhcp("10.0.0.1", "10.0.0.50", GUEST, 5)
    assert learned(ack, True, binding()) == "10.0.0.50"
    dhcp_only = binding(("CTRL_IP_LEARNING", "DHCP"))
    assert method(dhcp_only) == "dhcp"
    assert learned(ack, True, dhcp_only) == "10.0.0.50"
    # an offer is no lease; an ack for another MAC is not ours; packets teach nothing
    assert learned(dhcp("10.0.0.1", "10.0.0.50", GUEST, 2), True, dhcp_only) is None
    assert learned(dhcp("10.0.0.1", "10.0.0.50", OTHER, 5), True, dhcp_only) is None
    assert learned(ipv4(GUEST, "10.0.0.5", "10.0.0.1"), False, dhcp_only) is None
    # DHCPSERVER: only those servers are trusted
    trusted = binding(("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", "10.0.0.2"))
    assert learned(ack, True, trusted) is None
    assert learned(dhcp("10.0.0.2", "10.0.0.51", GUEST, 5), True, trusted) == "10.0.0.51"


def test_rules_while_learning():
    from_guest, to_guest = learning_rules(binding())
    assert from_guest == [f"ether saddr != {GUEST} drop", "ether type 0x0806 accept",
                          "ether type 0x0800 accept", "drop"]
    assert to_guest == []
    from_guest, to_guest = learning_rules(
        binding(("CTRL_IP_LEARNING", "dhcp"), ("DHCPSERVER", "10.0.0.2")))
    assert from_guest[1:] == ["ether type 0x0800 udp sport 68 udp dport 67 accept", "drop"]
    assert to_guest == ["ether type 0x0800 ip saddr { 10.0.0.2 } udp sport 67 udp dport 68 "
                        "accept", "drop"]
