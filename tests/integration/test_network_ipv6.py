"""IPv6 on a NAT network, end to end in the test's network namespaces.

pyvirtd runs in HOST (`test_network_netns.Lab`); OUT is reached over up0,
which here also gets fd00:30::/64 (HOST fd00:30::1, OUT fd00:30::2, OUT
routes the network's prefix back through HOST).  The network has an IPv4
subnet with DHCP, an IPv6 prefix without DHCP (router advertisements only:
SLAAC) and a second IPv6 prefix with a DHCPv6 range (RA with the managed
flag).  A veth client in CLIENT, with accept_ra as any fresh namespace has
it, must configure a SLAAC address and reach the gateway and, routed (IPv6
is never masqueraded), the outside.
"""

from __future__ import annotations

import re

import pytest

from test_network_netns import Lab, _qemu_driver, _start_daemon, pytestmark, run  # noqa: F401
from tests.conftest import wait_for

pytestmark = [*pytestmark, pytest.mark.skipif(not _qemu_driver(), reason="no QEMU driver")]

NET = """<network>
  <name>v6nat</name>
  <forward mode='nat'/>
  <ip address='10.88.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.88.0.100' end='10.88.0.150'/></dhcp>
  </ip>
  <ip family='ipv6' address='fd00:88::1' prefix='64'/>
  <ip family='ipv6' address='fd00:89::1' prefix='64'>
    <dhcp><range start='fd00:89::100' end='fd00:89::1ff'/></dhcp>
  </ip>
</network>"""


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        lab.ns(lab.host, "ip", "-6", "addr", "add", "fd00:30::1/64", "dev", "up0", "nodad")
        lab.ns(lab.host, "ip", "-6", "route", "add", "default", "via", "fd00:30::2")
        lab.ns(lab.out, "ip", "-6", "addr", "add", "fd00:30::2/64", "dev", "up0", "nodad")
        lab.ns(lab.out, "ip", "-6", "route", "add", "fd00:88::/63", "via", "fd00:30::1")
        yield lab
    finally:
        lab.close()


def test_nat_network_ipv6_slaac_client_pings_gateway_and_outside(lab):
    _start_daemon(lab)
    uri = f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}"
    f = lab.tmp / "v6nat.xml"
    f.write_text(NET)
    run("virsh", "-c", uri, "net-define", f)
    run("virsh", "-c", uri, "net-start", "v6nat")
    bridge = re.search(r"<bridge name='(\w+)'", run("virsh", "-c", uri, "net-dumpxml",
                                                    "v6nat").stdout).group(1)

    # the bridge has both IPv6 addresses, configured as libvirt configures it
    addrs = lab.ns(lab.host, "ip", "-6", "-o", "addr", "show", "dev", bridge).stdout
    assert "fd00:88::1/64" in addrs and "fd00:89::1/64" in addrs
    for key, value in (("accept_ra", "0"), ("autoconf", "0")):
        assert lab.ns(lab.host, "cat", f"/proc/sys/net/ipv6/conf/{bridge}/{key}").stdout \
            .strip() == value
    conf = (lab.root / "run" / "network" / "v6nat.conf").read_text()
    assert "dhcp-range=fd00:88::,ra-only\n" in conf
    assert "dhcp-range=fd00:89::100,fd00:89::1ff,64\n" in conf
    assert conf.count("enable-ra\n") == 1
    # forwarding rules for both prefixes (routed, in and out), no IPv6 masquerade
    rules = lab.nft()
    for prefix in ("fd00:88::/64", "fd00:89::/64"):
        assert f'ip6 saddr {prefix} iifname "{bridge}" accept' in rules
        assert f'ip6 daddr {prefix} oifname "{bridge}" accept' in rules
    assert "ip6 saddr" not in rules.split("masquerade")[0].split("_nat")[-1]

    lab.attach_client(bridge, mac="52:54:00:aa:06:01")
    assert lab.ns(lab.client, "cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra").stdout \
        .strip() == "1"

    def slaac_address():
        out = lab.ns(lab.client, "ip", "-6", "-o", "addr", "show", "dev", "eth0",
                     "scope", "global").stdout
        m = re.search(r"inet6 (fd00:88::[0-9a-f:]+)/64", out)
        return m.group(1) if m and "tentative" not in out else None

    address = wait_for(slaac_address, timeout=20, interval=0.2)
    # SLAAC from the MAC (EUI-64): 52:54:00:aa:06:01 -> 5054:ff:feaa:601
    assert address == "fd00:88::5054:ff:feaa:601"
    routes = lab.ns(lab.client, "ip", "-6", "route").stdout
    # the DHCPv6 prefix is advertised too (on-link)
    assert re.search(r"fd00:89::/64 dev eth0 proto (ra|kernel)", routes), routes
    assert re.search(r"default via fe80::\S+ dev eth0 proto ra", routes), routes
    lab.ns(lab.client, "busybox", "ping", "-6", "-c", "1", "-W", "3", "fd00:88::1")
    lab.ns(lab.client, "busybox", "ping", "-6", "-c", "1", "-W", "3", "fd00:30::2")

    run("virsh", "-c", uri, "net-destroy", "v6nat")
    assert bridge not in lab.links()
