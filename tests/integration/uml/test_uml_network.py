"""UML guests on pyvirtd's networks: taps, network ports, a DHCP lease, a ping, restarts.

pyvirtd runs inside a network namespace of this module's own (``ip netns
exec NS pyvirtd --root ...``), so its NAT network's bridge, dnsmasq and
nftables table, and the guests' taps, touch nothing outside it; deleting the
namespace at the end takes whatever a failed test left.  The guest is a UML
kernel on a busybox-static hostfs root with three NICs: one on the NAT
network (eth0), one on that network's bridge (type bridge, eth1) and one of
type ethernet (eth2, a tap the daemon makes on no bridge).  In the guest,
busybox udhcpc gets eth0 a lease from the network's dnsmasq and busybox
ping reaches the bridge's address.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for as wait_until
from uml_helpers import KERNEL, Lab, console_expect, guest_xml, make_root

pytestmark = [
    pytest.mark.skipif(not os.path.exists(KERNEL), reason="user-mode-linux not installed"),
    pytest.mark.skipif(not shutil.which("virsh"), reason="virsh not installed"),
    pytest.mark.skipif(not shutil.which("dnsmasq"), reason="dnsmasq not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and taps need root"),
]

_n = itertools.count()
NET, BRIDGE, GATEWAY = "umlnat", "umlbr0", "10.91.0.1"
NAT = f"""<network>
  <name>{NET}</name>
  <forward mode='nat'/>
  <bridge name='{BRIDGE}'/>
  <ip address='{GATEWAY}' netmask='255.255.255.0'>
    <dhcp><range start='10.91.0.100' end='10.91.0.150'/></dhcp>
  </ip>
</network>"""
# udhcpc only reports a lease to its script; this one puts the address on the NIC
DHCP_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew) ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
               echo "LEASED $ip" ;;
esac
"""
MAC_RE = re.compile(r"<mac address='(52:54:00(?::[0-9a-f]{2}){3})'/>")


NICS = f"""<interface type='network'><source network='{NET}'/></interface>
    <interface type='bridge'><source bridge='{BRIDGE}'/></interface>
    <interface type='ethernet'/>"""


class NetLab(Lab):
    """pyvirtd in a namespace of its own, with the NAT network defined and running."""

    def __init__(self, tmp: Path) -> None:
        self.ns = f"pum{os.getpid() % 10000}{next(_n)}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.sh("ip", "link", "set", "lo", "up")
        super().__init__(tmp, netns=self.ns)
        path = tmp / "net.xml"
        path.write_text(NAT)
        self.virsh("net-define", str(path))
        self.virsh("net-start", NET)

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True, check=check, timeout=60)

    def link(self, name: str) -> dict | None:
        """``ip -j -d link show NAME`` in the namespace, or None if there is none."""
        p = self.sh("ip", "-j", "-d", "link", "show", name, check=False)
        return json.loads(p.stdout)[0] if p.returncode == 0 else None

    def close(self) -> None:
        """The guests and the daemon go; the network's dnsmasq outlives the daemon
        (networks keep running), and the namespace takes bridge, taps and rules."""
        self.virsh("net-destroy", NET, check=False)
        super().close()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path):
    lab = NetLab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _targets(xml: str) -> list[str]:
    return re.findall(r"<target dev='([^']+)'/>", xml)


def _attached(lab: NetLab, name: str) -> list[str]:
    """The taps the guest's kernel has open (``iff:`` in its fds' fdinfo)."""
    pid = int((lab.root_dir / "run" / "uml" / name / "pid").read_text())
    out = []
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:
            continue
        out += re.findall(r"^iff:\s*(\S+)", text, re.M)
    return out


def _ports(lab: Lab) -> list[str]:
    out = lab.virsh("net-port-list", NET, "--uuid").stdout.split()
    return [u for u in out if u]


def test_guest_on_a_nat_network_gets_a_lease_and_pings_the_gateway(lab, tmp_path):
    import libvirt

    root = make_root(tmp_path / "root", ("ifconfig", "udhcpc", "ping"))
    (root / "bin/dhcp.sh").write_text(DHCP_SCRIPT)
    (root / "bin/dhcp.sh").chmod(0o755)
    xml = tmp_path / "un1.xml"
    xml.write_text(guest_xml("un1", root, extra=NICS))
    lab.virsh("define", str(xml))
    inactive = lab.virsh("dumpxml", "--inactive", "un1").stdout
    macs = MAC_RE.findall(inactive)
    assert len(macs) == 3, inactive     # generated as libvirt does: 52:54:00 prefix
    lab.virsh("start", "un1")

    live = lab.virsh("dumpxml", "un1").stdout
    taps = _targets(live)
    assert len(taps) == 3 and all(t.startswith("vnet") for t in taps), live
    assert [f"net{i}" for i in range(3)] == re.findall(r"<alias name='(net\d)'/>", live)
    port_ids = re.findall(r"portid='([0-9a-f-]+)'", live)
    assert len(port_ids) == 1 and f"bridge='{BRIDGE}'" in live, live
    assert _ports(lab) == port_ids
    for tap, mac in zip(taps[:2], macs):
        link = lab.link(tap)
        assert link["master"] == BRIDGE and link["address"] == "fe" + mac[2:], link
    assert "master" not in lab.link(taps[2])

    conn = libvirt.open(lab.uri)
    try:
        dom = conn.lookupByName("un1")
        out = console_expect(conn, dom, b"echo shell-$((6*7))\n", b"shell-42")
        assert b"shell-42" in out, out
        out = console_expect(conn, dom, b"ifconfig eth0 up; udhcpc -i eth0 -s /bin/dhcp.sh "
                             b"-q -t 20 -T 1 -n\n", b"LEASED ", timeout=60, repeat=False)
        assert b"LEASED 10.91.0." in out, out
        address = re.search(rb"LEASED (10\.91\.0\.\d+)", out).group(1).decode()
        leases = lab.virsh("net-dhcp-leases", NET).stdout
        assert macs[0] in leases and address in leases, leases
        addrs = lab.virsh("domifaddr", "un1", "--source", "lease").stdout
        assert taps[0] in addrs and macs[0] in addrs and f"{address}/24" in addrs, addrs
        out = console_expect(conn, dom, f"ping -c 1 -W 5 {GATEWAY} && echo PING-OK-$((2+3))\n"
                             .encode(), b"PING-OK-5", timeout=30)
        assert b"PING-OK-5" in out, out

        stats = dict(line.split() for line in lab.virsh("dommemstat", "un1").stdout
                     .splitlines() if line.strip())
        assert stats["actual"] == str(64 * 1024) and int(stats["rss"]) > 0, stats
    finally:
        conn.close()

    # kill -9 of the daemon: the guest, its taps and its port stay
    lab.restart(kill9=True)
    assert lab.virsh("domstate", "un1").stdout.strip() == "running"
    assert _targets(lab.virsh("dumpxml", "un1").stdout) == taps
    assert _ports(lab) == port_ids
    conn = libvirt.open(lab.uri)
    try:
        dom = conn.lookupByName("un1")
        out = console_expect(conn, dom, f"ping -c 1 -W 5 {GATEWAY} && echo AGAIN-$((3+4))\n"
                             .encode(), b"AGAIN-7", timeout=30)
        assert b"AGAIN-7" in out, out
    finally:
        conn.close()

    # stop: the taps go, the port goes back
    lab.virsh("destroy", "un1")
    wait_until(lambda: all(lab.link(t) is None for t in taps), what="taps removed")
    wait_until(lambda: _ports(lab) == [], what="port released")
    lab.virsh("undefine", "un1")


def test_guest_that_ends_while_the_daemon_is_down_gives_its_nics_back(lab, tmp_path):
    """Its taps go and its network port goes back at the next daemon start; a tap the
    admin made for an ethernet NIC stays."""
    lab.sh("ip", "tuntap", "add", "dev", "umladmin0", "mode", "tap")
    import libvirt

    root = make_root(tmp_path / "root2", ("ifconfig",))
    xml = tmp_path / "un2.xml"
    xml.write_text(guest_xml("un2", root, extra=NICS + "<interface type='ethernet'>"
                                                "<target dev='umladmin0'/></interface>"))
    lab.virsh("create", str(xml))
    taps = _targets(lab.virsh("dumpxml", "un2").stdout)
    assert taps[3] == "umladmin0", taps
    # UML opens a NIC's tap when the guest brings the NIC up
    conn = libvirt.open(lab.uri)
    try:
        out = console_expect(conn, conn.lookupByName("un2"), b"for i in 0 1 2 3; do "
                             b"ifconfig eth$i up; done; echo up-$((2*4))\n", b"up-8")
        assert b"up-8" in out, out
    finally:
        conn.close()
    wait_until(lambda: sorted(_attached(lab, "un2")) == sorted(taps), what="taps attached")
    taps = taps[:3]
    assert all(lab.link(t) for t in taps)
    assert len(_ports(lab)) == 1
    pids = lab.kernel_pids()
    lab.d.proc.send_signal(signal.SIGKILL)
    lab.d.proc.wait()
    lab.kill_all(pids)
    assert wait_until(lambda: lab.kernels_gone(pids), what="kernels gone")
    lab.restart(kill9=True)      # the daemon is dead already: its sockets go, a new one starts
    wait_until(lambda: "un2" not in lab.virsh("list", "--all", "--name").stdout.split(),
               what="transient guest gone")
    wait_until(lambda: all(lab.link(t) is None for t in taps), what="taps removed")
    wait_until(lambda: _ports(lab) == [], what="port released")
    assert lab.link("umladmin0") is not None


def test_nic_errors(lab, tmp_path):
    root = make_root(tmp_path / "root3")
    bad = tmp_path / "bad.xml"
    bad.write_text(guest_xml("ub", root, extra="<interface type='user'/>"))
    p = lab.virsh("define", str(bad), check=False)
    assert p.returncode != 0 and "unsupported interface type 'user'" in p.stderr, p.stderr
    # a network that does not exist: nothing is left made
    bad.write_text(guest_xml("ub", root, extra=NICS.replace(f"network='{NET}'",
                                                             "network='nosuchnet'")))
    before = set(lab.sh("ls", "/sys/class/net").stdout.split())
    p = lab.virsh("create", str(bad), check=False)
    assert p.returncode != 0 and "nosuchnet" in p.stderr, p.stderr
    assert set(lab.sh("ls", "/sys/class/net").stdout.split()) == before
    assert lab.kernel_pids() == [] and _ports(lab) == []
