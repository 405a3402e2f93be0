"""Guest networking with a guest that really boots: NAT, isolated and bridge interfaces.

Everything runs inside network namespaces this module creates, so nothing
touches the host's interfaces or firewall:

    HOST ns  pyvirtd itself (``ip netns exec HOST pyvirtd --root ...``): the
             networks' bridges, dnsmasq and nftables table, and the guests'
             QEMUs and taps, which the daemon creates in its own namespace;
    OUT ns   "outside": a veth to HOST (172.30.0.0/24) with 172.30.0.2.

The guests are the tiny one of tests/guest/build.py (TCG); their init runs
udhcpc on eth0 and prints ``GUEST IP <address>`` on the serial console,
which the tests read and type into over a python-libvirt console stream.
Namespaces, QEMUs and dnsmasqs are removed at the end whatever happened
(deleting the namespace takes the bridges, taps and rules with it).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_helpers import guest_pids, kill_guests, needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml
from tests.conftest import REPO, RunningDaemon, stop_daemon

pytestmark = [needs_qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

_n = itertools.count()
NAT = """<network>
  <name>nat1</name>
  <forward mode='nat'/>
  <domain name='nat1.test' localOnly='yes'/>
  <dns>
    <host ip='10.77.0.50'><hostname>web</hostname><hostname>www.example.test</hostname></host>
  </dns>
  <ip address='10.77.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.77.0.100' end='10.77.0.150'/></dhcp>
  </ip>
</network>"""
ISOLATED = """<network>
  <name>iso1</name>
  <ip address='10.78.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.78.0.100' end='10.78.0.150'/></dhcp>
  </ip>
</network>"""
MAC1, MAC3, MAC3B = "52:54:00:77:00:01", "52:54:00:78:00:01", "52:54:00:79:00:01"


def sh(*argv, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise AssertionError(f"{argv}: {r.returncode} {r.stdout}{r.stderr}")
    return r


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = f"{os.getpid() % 10000}{next(_n)}"
        self.host, self.out = f"pgh{tag}", f"pgo{tag}"
        self.namespaces: list[str] = []
        self.root = tmp / "pyvirtd"
        self.daemon: RunningDaemon | None = None
        for ns in (self.host, self.out):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", "up0", "netns", self.host, "type", "veth",
           "peer", "name", "up0", "netns", self.out)
        self.ns(self.host, "ip", "addr", "add", "172.30.0.1/24", "dev", "up0")
        self.ns(self.host, "ip", "link", "set", "up0", "up")
        self.ns(self.out, "ip", "addr", "add", "172.30.0.2/24", "dev", "up0")
        self.ns(self.out, "ip", "link", "set", "up0", "up")

    def ns(self, ns: str, *argv, check=True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, check=check)

    def start_daemon(self, *extra: str) -> str:
        """pyvirtd --root in the HOST namespace; returns its qemu:///session URI
        (qemu:///system with ``--privileged`` in ``extra``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "daemon.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.host, sys.executable, "-m",
                                 "pyvirtd.cli", "--root", str(self.root), *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.daemon = RunningDaemon(self.root, proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"pyvirtd exited: {self.daemon.log()}")
            if self.daemon.sock.exists() and b"ready" in (self.root / "daemon.log").read_bytes():
                kind = "system" if "--privileged" in extra else "session"
                return f"qemu+unix:///{kind}?socket={self.daemon.sock}"
            time.sleep(0.05)
        raise RuntimeError("pyvirtd did not start")

    def links(self) -> dict[str, str]:
        """name -> master (or '') of every link in the HOST namespace."""
        out = {}
        for line in self.ns(self.host, "ip", "-o", "link").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            m = re.search(r" master (\S+)", line)
            out[name] = m.group(1) if m else ""
        return out

    def close(self) -> None:
        kill_guests(self.root)
        if self.daemon is not None:
            stop_daemon(self.daemon)
        kill_guests(self.root)
        marker = str(self.root).encode()
        for entry in os.listdir("/proc"):       # this module's dnsmasqs
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"dnsmasq" in cmd.split(b"\0")[0] and marker in cmd:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("guest-net"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def uri(lab):
    uri = lab.start_daemon()
    for name, xml in (("nat1", NAT), ("iso1", ISOLATED)):
        path = lab.root.parent / f"{name}.xml"
        path.write_text(xml)
        ok(uri, f"net-define {path}")
        ok(uri, f"net-start {name}")
    return uri


@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


def nic(kind: str, source: str, mac: str) -> str:
    attr = "network" if kind == "network" else "bridge"
    return (f"<interface type='{kind}'><mac address='{mac}'/><source {attr}='{source}'/>"
            f"<model type='virtio'/></interface>")


def boot(uri: str, lab: Lab, name: str, guest_files, interfaces: str) -> Console:
    path = lab.root.parent / f"{name}.xml"
    path.write_text(tiny_xml(name, guest_files, interfaces=interfaces))
    ok(uri, f"define {path}")
    ok(uri, f"start {name} --paused")
    con = Console(uri, name)
    ok(uri, f"resume {name}")
    con.wait("GUEST READY", timeout=90)
    con.wait(re.escape(PROMPT))
    return con


@pytest.fixture(scope="module")
def nat_guest(uri, lab, guest_files):
    con = boot(uri, lab, "g1", guest_files, nic("network", "nat1", MAC1))
    try:
        yield con
    finally:
        con.close()
        virsh(uri, "destroy g1; undefine g1")


def test_nat_guest_gets_a_lease_and_is_listed(uri, lab, nat_guest):
    ip = nat_guest.wait(r"GUEST IP (10\.77\.0\.\d+)", timeout=30).group(1)
    assert 100 <= int(ip.rsplit(".", 1)[1]) <= 150
    # domiflist: the tap libvirt-style (vnetN), on the network, with the MAC
    out = ok(uri, "domiflist g1")
    m = re.search(r"(vnet\d+)\s+network\s+nat1\s+virtio\s+" + MAC1, out)
    assert m, out
    tap = m.group(1)
    assert lab.links()[tap] == "virbr0"
    xml = ok(uri, "dumpxml g1")
    assert f"<target dev='{tap}'/>" in xml
    # the NIC holds a port on its network (libvirt >= 5.5), shown on <source>
    m = re.search(r"<source network='nat1' portid='([0-9a-f-]{36})' bridge='virbr0'/>", xml)
    assert m, xml
    portid = m.group(1)
    assert ok(uri, "net-port-list nat1 --uuid").split() == [portid]
    port = ok(uri, f"net-port-dumpxml nat1 {portid}")
    assert "<name>g1</name>" in port and f"<mac address='{MAC1}'/>" in port
    assert "<plug type='network' bridge='virbr0'/>" in port
    inactive = ok(uri, "dumpxml g1 --inactive")
    assert f"<target dev='{tap}'" not in inactive and "portid" not in inactive
    # the lease, from the network and from the guest's side
    leases = ok(uri, "net-dhcp-leases nat1")
    assert re.search(MAC1 + r"\s+ipv4\s+" + re.escape(ip) + r"/24\s+tinyguest", leases), leases
    out = ok(uri, "domifaddr g1 --source lease")
    assert re.search(rf"{tap}\s+{MAC1}\s+ipv4\s+{re.escape(ip)}/24", out), out


def test_nat_guest_reaches_gateway_and_outside(uri, lab, nat_guest):
    nat_guest.wait(r"GUEST IP", timeout=30)
    nat_guest.run("ping -c 2 -W 3 10.77.0.1", r"2 packets received", timeout=30)
    # masquerading: the outside peer answers the guest's pings
    nat_guest.run("ping -c 2 -W 3 172.30.0.2", r"2 packets received", timeout=30)
    tap = re.search(r"(vnet\d+)", ok(uri, "domiflist g1")).group(1)
    stats = ok(uri, f"domifstat g1 {tap}")
    rx = int(re.search(rf"{tap} rx_bytes (\d+)", stats).group(1))
    tx = int(re.search(rf"{tap} tx_bytes (\d+)", stats).group(1))
    assert rx > 0 and tx > 0, stats


def test_nat_guest_resolves_dns_hosts_of_its_network(uri, lab, nat_guest):
    """The network's dnsmasq answers the guest's queries with its <dns><host> entries."""
    nat_guest.wait(r"GUEST IP", timeout=30)
    # a short name gets the network's domain (expand-hosts); another name of the host
    for name in ("web.nat1.test", "www.example.test"):
        m = nat_guest.run(f"nslookup {name} 10.77.0.1",
                          rf"Name:\s+{re.escape(name)}\s+Address:?\s+([\d.]+)", timeout=30)
        assert m.group(1) == "10.77.0.50"
    # the network's own domain is answered locally (localOnly): unknown names do not exist
    nat_guest.run("nslookup nosuch.nat1.test 10.77.0.1", r"can't find nosuch\.nat1\.test",
                  timeout=30)
    # a host added live is answered at once (net-update reloads dnsmasq)
    ok(uri, "net-update nat1 add dns-host \"<host ip='10.77.0.51'><hostname>db</hostname>"
            "</host>\" --live")
    m = nat_guest.run("nslookup db.nat1.test 10.77.0.1",
                      r"Name:\s+db\.nat1\.test\s+Address:?\s+([\d.]+)", timeout=30)
    assert m.group(1) == "10.77.0.51"


def test_net_update_static_host_is_the_guests_next_lease(uri, lab, nat_guest):
    """net-update adds a DHCP host for the guest's MAC; its next DHCP exchange gets that address."""
    nat_guest.wait(r"GUEST IP", timeout=30)
    host = f"<host mac='{MAC1}' name='fixed' ip='10.77.0.60'/>"
    ok(uri, f'net-update nat1 add ip-dhcp-host "{host}" --live --config')
    try:
        assert "10.77.0.60" in ok(uri, "net-dumpxml nat1")
        # the background udhcpc goes; a new one asks afresh (dnsmasq refuses the old address)
        m = nat_guest.run("killall udhcpc; udhcpc -i eth0 -s /etc/udhcpc.sh -n -q -t 5 -T 2 "
                          "-x hostname:tinyguest -F tinyguest", r"GUEST IP (10\.77\.0\.\d+)",
                          timeout=60)
        assert m.group(1) == "10.77.0.60"
        nat_guest.run("ip -4 -o addr show eth0", r"inet 10\.77\.0\.60/24")
        nat_guest.run("ping -c 2 -W 3 10.77.0.1", r"2 packets received", timeout=30)
        wait_for(lambda: re.search(MAC1 + r"\s+ipv4\s+10\.77\.0\.60/24",
                                   ok(uri, "net-dhcp-leases nat1")), timeout=10)
    finally:
        ok(uri, f'net-update nat1 delete ip-dhcp-host "{host}" --live --config')


def test_mac_in_use_on_the_network_is_refused(uri, lab, nat_guest, guest_files):
    path = lab.root.parent / "dup.xml"
    path.write_text(tiny_xml("dup", guest_files, interfaces=nic("network", "nat1", MAC1)))
    ok(uri, f"define {path}")
    try:
        before = set(lab.links())
        r = virsh(uri, "start dup")
        assert r.rc != 0
        assert f"MAC address '{MAC1}' is already in use on network 'nat1' by domain 'g1'" in r.err
        assert set(lab.links()) == before            # no tap left behind
        assert len(ok(uri, "net-port-list nat1 --uuid").split()) == 1   # g1's port only
        assert "shut off" in ok(uri, "domstate dup")
    finally:
        virsh(uri, "undefine dup")


def test_isolated_network_and_bridge(uri, lab, guest_files):
    # a host bridge of our own for the second NIC (type bridge)
    lab.ns(lab.host, "ip", "link", "add", "brtest", "type", "bridge")
    lab.ns(lab.host, "ip", "addr", "add", "10.79.0.1/24", "dev", "brtest")
    lab.ns(lab.host, "ip", "link", "set", "brtest", "up")
    # forwarding on in the host: the isolated network's own rules must still block
    lab.ns(lab.host, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    con = boot(uri, lab, "g3", guest_files,
               nic("network", "iso1", MAC3) + nic("bridge", "brtest", MAC3B))
    try:
        ip = con.wait(r"GUEST IP (10\.78\.0\.\d+)", timeout=30).group(1)
        taps = re.findall(r"(vnet\d+)\s+(network|bridge)\s+(\S+)", ok(uri, "domiflist g3"))
        assert [(k, s) for _t, k, s in taps] == [("network", "iso1"), ("bridge", "brtest")]
        links = lab.links()
        assert links[taps[0][0]] == "virbr1" and links[taps[1][0]] == "brtest"
        con.run("ping -c 2 -W 3 10.78.0.1", r"2 packets received", timeout=30)
        con.run("ip route replace default via 10.78.0.1", re.escape(PROMPT))
        con.run("ping -c 2 -W 2 172.30.0.2", r"0 packets received", timeout=30)
        # the bridged NIC reaches the host's side of its bridge
        con.run("ip addr add 10.79.0.2/24 dev eth1 && ip link set eth1 up", re.escape(PROMPT))
        con.run("ping -c 2 -W 3 10.79.0.1", r"2 packets received", timeout=30)
        assert ip in ok(uri, "net-dhcp-leases iso1")

        assert len(ok(uri, "net-port-list iso1 --uuid").split()) == 1

        # destroying the guest removes its taps and gives its port back
        ok(uri, "destroy g3")
        wait_for(lambda: not {t for t, _k, _s in taps} & set(lab.links()), timeout=10)
        wait_for(lambda: ok(uri, "net-port-list iso1 --uuid").split() == [], timeout=10)
    finally:
        con.close()
        virsh(uri, "destroy g3; undefine g3")


def _ruleset(lab: Lab) -> str:
    return lab.ns(lab.host, "nft", "-s", "list", "table", "inet", "pyvirtd").stdout  # no counters


def _dnsmasqs(lab: Lab) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if b"dnsmasq" in cmd.split(b"\0")[0] and str(lab.root).encode() in cmd \
                and b"nat1" in cmd:
            pids.append(int(entry))
    return pids


def test_daemon_restart_keeps_guest_connectivity(uri, lab, nat_guest):
    """pyvirtd stops and starts again while the guest pings its gateway: not one echo
    is lost, and the network comes back as it was: the same rules, the same dnsmasq.
    (Last in the module: the console session of nat_guest ends with the daemon.)"""
    nat_guest.wait(r"GUEST IP", timeout=30)
    rules, dnsmasq = _ruleset(lab), _dnsmasqs(lab)
    assert len(dnsmasq) == 1
    nat_guest.run("ping -c 12 -W 2 10.77.0.1 > /tmp/ping.out 2>&1 &", re.escape(PROMPT))
    time.sleep(2)
    stop_daemon(lab.daemon)
    time.sleep(2)                              # the guest keeps pinging meanwhile
    lab.start_daemon()
    assert "running" in ok(uri, "domstate g1")
    con = Console(uri, "g1")
    try:
        con.send("\n")
        con.wait(re.escape(PROMPT), timeout=30)
        con.run("sleep 12; cat /tmp/ping.out", r"12 packets transmitted, 12 packets received",
                timeout=60)
    finally:
        con.close()
    assert _ruleset(lab) == rules              # reconciled, nothing added twice
    assert _dnsmasqs(lab) == dnsmasq           # the same dnsmasq serves on
