"""Network filters on QEMU taps, proven with real traffic between two tiny TCG guests.

A privileged pyvirtd (qemu:///system: nwfilter needs root, as libvirt's)
runs in a network namespace of its own (test_guest_network.Lab) with one
isolated network, ``nwfq``.  Two guests get DHCP leases on it: ``nwfq-a``
whose NIC carries ``clean-traffic`` and ``nwfq-b`` without a filter.  From
the console of ``nwfq-a`` spoofed IPs, ARP and MACs stay on its tap while its
honest traffic passes; the same spoofing from ``nwfq-b`` works.  The binding
is listed while the guest runs and its rules go with the guest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon_helpers import needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml
from test_guest_network import Lab

pytestmark = [
    needs_qemu,
    pytest.mark.skipif(os.geteuid() != 0, reason="nwfilter needs a root daemon"),
    pytest.mark.skipif(not shutil.which("setpriv") or not shutil.which("useradd"),
                       reason="setpriv and useradd (util-linux, passwd) needed"),
]

MAC_A, MAC_B = "52:54:00:86:00:0a", "52:54:00:86:00:0b"
IP_A = "10.86.0.10"
NETWORK = f"""<network>
  <name>nwfq</name>
  <ip address='10.86.0.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.86.0.100' end='10.86.0.150'/>
      <host mac='{MAC_A}' ip='{IP_A}'/>
    </dhcp>
  </ip>
</network>"""


@pytest.fixture(scope="module")
def lab():
    subprocess.run([sys.executable, "-m", "pyvirtd.cli", "qemu-user"], check=True,
                   stdout=subprocess.DEVNULL)
    base = Path(tempfile.mkdtemp(prefix="pyvirtd-nwfq-", dir="/var/tmp"))
    base.chmod(0o755)
    lab = Lab(base)
    (lab.root / "lib" / "network").mkdir(parents=True)   # no 'default' network
    try:
        lab.uri = lab.start_daemon("--privileged")
        path = base / "nwfq.xml"
        path.write_text(NETWORK)
        ok(lab.uri, f"net-define {path}")
        ok(lab.uri, "net-start nwfq")
        yield lab
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)


def nic(mac: str, filterref: str = "") -> str:
    return (f"<interface type='network'><mac address='{mac}'/><source network='nwfq'/>"
            f"<model type='virtio'/>{filterref}</interface>")


def boot(lab, name: str, interface: str) -> tuple[Console, str]:
    """Start ``name`` and wait for its lease; returns its console and address."""
    xml = lab.root.parent / f"{name}.xml"
    xml.write_text(tiny_xml(name, tiny_guest(), interfaces=interface))
    ok(lab.uri, f"define {xml}")
    ok(lab.uri, f"start {name} --paused")
    con = Console(lab.uri, name)
    ok(lab.uri, f"resume {name}")
    ip = con.wait(r"GUEST IP (10\.86\.0\.\d+)", timeout=90).group(1)
    con.wait(re.escape(PROMPT))
    con.run("dmesg -n 1", re.escape(PROMPT))           # no kernel chatter in the output
    return con, ip


def stop(lab, name: str, con: Console | None) -> None:
    if con is not None:
        con.close()
    virsh(lab.uri, f"destroy {name}; undefine {name}")


def tap_of(lab, name: str) -> str:
    return re.search(r"(vnet\d+)\s+network\s+nwfq", ok(lab.uri, f"domiflist {name}")).group(1)


def ruleset(lab) -> str:
    return lab.ns(lab.host, "nft", "list", "ruleset").stdout


@pytest.fixture(scope="module")
def neighbour(lab):
    con, ip = boot(lab, "nwfq-b", nic(MAC_B))
    try:
        yield con, ip
    finally:
        stop(lab, "nwfq-b", con)


def received(con: Console, command: str) -> int:
    """Run a ping/arping-style ``command`` on a guest console: replies received."""
    m = con.run(command + "; echo DO''NE", r"(?:(\d+) packets received|Received (\d+) re)"
                r"[\s\S]*?DONE", timeout=60)
    return int(m.group(1) or m.group(2))


def test_clean_traffic_on_a_qemu_tap_drops_spoofed_frames(lab, neighbour):
    con_b, ip_b = neighbour
    flt = f"<filterref filter='clean-traffic'><parameter name='IP' value='{IP_A}'/></filterref>"
    con, ip = boot(lab, "nwfq-a", nic(MAC_A, flt))
    try:
        assert ip == IP_A
        tap = tap_of(lab, "nwfq-a")
        assert re.search(rf"^ {tap}\s+clean-traffic$", ok(lab.uri, "nwfilter-binding-list"),
                         re.M)
        binding = ok(lab.uri, f"nwfilter-binding-dumpxml {tap}")
        assert "<name>nwfq-a</name>" in binding and f"<mac address='{MAC_A}'/>" in binding
        assert f"<parameter name='IP' value='{IP_A}'/>" in binding
        rules = ruleset(lab)
        assert f'iifname "{tap}" jump I-{tap}' in rules and f"ip saddr {IP_A} return" in rules

        # honest traffic passes both ways (ARP resolution included)
        assert received(con, f"ping -c 2 -W 2 {ip_b}") == 2
        assert received(con_b, f"ping -c 2 -W 2 {IP_A}") == 2
        assert received(con, "arping -c 2 -w 4 -I eth0 10.86.0.1") == 2
        # a second address on the guest: ARP that claims it gets no answer
        # (no-arp-spoofing), IPv4 from it goes nowhere (no-ip-spoofing)
        con.run("ip addr add 10.86.0.77/24 dev eth0", re.escape(PROMPT))
        assert received(con, "arping -c 2 -w 4 -I eth0 -s 10.86.0.77 10.86.0.1") == 0
        assert received(con, f"ping -c 2 -W 2 -I 10.86.0.77 {ip_b}") == 0
        assert received(con, f"ping -c 2 -W 2 -I {IP_A} {ip_b}") == 2
        # ... while the unfiltered neighbour may use one
        con_b.run("ip addr add 10.86.0.78/24 dev eth0", re.escape(PROMPT))
        assert received(con_b, "arping -c 2 -w 4 -I eth0 -s 10.86.0.78 10.86.0.1") == 2
        assert received(con_b, f"ping -c 2 -W 2 -I 10.86.0.78 {IP_A}") == 2
        con_b.run("ip addr del 10.86.0.78/24 dev eth0", re.escape(PROMPT))
        con.run("ip addr del 10.86.0.77/24 dev eth0", re.escape(PROMPT))
        # another MAC on the guest's NIC: cut off (no-mac-spoofing), back with its own
        con.run("ip link set eth0 address 52:54:00:86:00:66; ip neigh flush dev eth0",
                re.escape(PROMPT))
        assert received(con, f"ping -c 2 -W 2 {ip_b}") == 0
        con.run(f"ip link set eth0 address {MAC_A}; ip neigh flush dev eth0",
                re.escape(PROMPT))
        assert received(con, f"ping -c 2 -W 2 {ip_b}") == 2
    finally:
        stop(lab, "nwfq-a", con)
    # the binding and its rules went with the guest (its NIC is torn down as QEMU ends)
    wait_for(lambda: tap not in ok(lab.uri, "nwfilter-binding-list"), timeout=10)
    wait_for(lambda: tap not in ruleset(lab), timeout=10)
    assert "pyvirtd_nwfilter" not in ruleset(lab)


def binding_ips(lab, tap: str) -> list[str]:
    xml = ok(lab.uri, f"nwfilter-binding-dumpxml {tap}")
    return re.findall(r"<parameter name='IP' value='([\d.]+)'/>", xml)


def test_ip_learned_with_the_default_method_then_enforced(lab, neighbour):
    """No IP parameter: the binding learns the guest's address (CTRL_IP_LEARNING
    'any', libvirt's default), shows it as its IP parameter and enforces it."""
    con_b, ip_b = neighbour
    con, ip = boot(lab, "nwfq-c", nic("52:54:00:86:00:0c", "<filterref filter='clean-traffic'/>"))
    try:
        tap = tap_of(lab, "nwfq-c")
        wait_for(lambda: binding_ips(lab, tap) == [ip], timeout=30)
        wait_for(lambda: f"ip saddr {ip} return" in ruleset(lab), timeout=10)
        assert received(con, f"ping -c 2 -W 2 {ip_b}") == 2
        assert received(con_b, f"ping -c 2 -W 2 {ip}") == 2
        # locked to that address: another one is spoofing
        con.run("ip addr add 10.86.0.79/24 dev eth0", re.escape(PROMPT))
        assert received(con, f"ping -c 2 -W 2 -I 10.86.0.79 {ip_b}") == 0
        assert received(con, "arping -c 2 -w 4 -I eth0 -s 10.86.0.79 10.86.0.1") == 0
        assert binding_ips(lab, tap) == [ip]
    finally:
        stop(lab, "nwfq-c", con)
    wait_for(lambda: "pyvirtd_nwfilter" not in ruleset(lab), timeout=10)


def test_dhcp_learning_trusts_only_dhcpserver(lab, neighbour):
    """CTRL_IP_LEARNING=dhcp: the address comes from a DHCPACK of a server listed in
    DHCPSERVER; until then only DHCP passes."""
    con_b, ip_b = neighbour
    flt = ("<filterref filter='clean-traffic'>"
           "<parameter name='CTRL_IP_LEARNING' value='dhcp'/>"
           "<parameter name='DHCPSERVER' value='10.86.0.1'/></filterref>")
    con, ip = boot(lab, "nwfq-d", nic("52:54:00:86:00:0d", flt))
    try:
        tap = tap_of(lab, "nwfq-d")
        wait_for(lambda: binding_ips(lab, tap) == [ip], timeout=30)
        assert received(con, f"ping -c 2 -W 2 {ip_b}") == 2
        con.run("ip addr add 10.86.0.80/24 dev eth0", re.escape(PROMPT))
        assert received(con, f"ping -c 2 -W 2 -I 10.86.0.80 {ip_b}") == 0
    finally:
        stop(lab, "nwfq-d", con)

    # a server nobody runs: the guest's DHCP goes out, the real server's answer is
    # not let in, nothing is learned and the guest has no address
    flt = flt.replace("10.86.0.1'", "10.86.0.254'")
    xml = lab.root.parent / "nwfq-e.xml"
    xml.write_text(tiny_xml("nwfq-e", tiny_guest(), interfaces=nic("52:54:00:86:00:0e", flt)))
    ok(lab.uri, f"define {xml}")
    ok(lab.uri, "start nwfq-e --paused")
    con = Console(lab.uri, "nwfq-e")
    try:
        ok(lab.uri, "resume nwfq-e")
        con.wait("no lease, forking to background", timeout=120)
        tap = tap_of(lab, "nwfq-e")
        assert binding_ips(lab, tap) == []
        assert "udp sport 67 udp dport 68 accept" in ruleset(lab)
    finally:
        stop(lab, "nwfq-e", con)


def test_no_learning_without_ip_is_refused(lab, tmp_path):
    binding = ("<filterbinding><owner><name>x</name>"
               "<uuid>d54df46f-1ab5-4a22-8618-4560ef5fac2d</uuid></owner>"
               "<portdev name='nwfqx0'/><mac address='52:54:00:86:00:0f'/>"
               "<filterref filter='clean-traffic'>"
               "<parameter name='CTRL_IP_LEARNING' value='{}'/></filterref></filterbinding>")
    for value, message in (
            ("none", "internal error: Cannot instantiate filter due to unresolvable "
                     "variables or unavailable list elements: IP"),
            ("sometimes", "learning value 'sometimes' invalid.")):
        path = tmp_path / f"{value}.xml"
        path.write_text(binding.format(value))
        r = virsh(lab.uri, f"nwfilter-binding-create {path}")
        assert r.rc != 0 and message in r.err, r.err
    assert "nwfqx0" not in ok(lab.uri, "nwfilter-binding-list")
