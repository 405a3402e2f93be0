"""Virtual networks end to end, inside network namespaces these tests create.

Layout of every test (nothing touches the host's interfaces or firewall):

    HOST ns   the "daemon" side: pyvirtd's network subsystem runs here
              (tests/integration/network_helper.py, one short-lived process
              per command: every command is also a daemon restart), owns the
              network's bridge, dnsmasq and nftables table.
    CLIENT ns a veth whose peer is on the bridge: it stands in for a guest
              (busybox udhcpc gets its lease).
    OUT ns    "outside": a veth to HOST (172.30.0.0/24), running a UDP echo
              that answers with the source address it saw.

RPC-level tests (virsh net-* against qemu+unix://) wait for the QEMU driver:
they are skipped until its entry point exists.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent.parent
HELPER = Path(__file__).with_name("network_helper.py")
PY = sys.executable

_MISSING = [tool for tool in ("ip", "nft", "dnsmasq", "busybox")
            if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(bool(_MISSING), reason=f"missing tools: {', '.join(_MISSING)} "
                                               f"(make deps installs them)"),
]

_counter = itertools.count()

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via ${router%% *} dev "$interface"
    echo "$ip" > "$UDHCPC_OUT"
    ;;
esac
exit 0
"""

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7777))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(1000)
    s.sendto(peer[0].encode(), peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[2]))
for _ in range(3):
    s.sendto(b"hi", (sys.argv[1], 7777))
    try:
        print(s.recvfrom(1000)[0].decode()); break
    except socket.timeout:
        pass
else:
    print("TIMEOUT")
"""


def run(*argv, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                         timeout=timeout, **kw)
    if check and res.returncode:
        raise AssertionError(f"{argv} failed ({res.returncode}): {res.stdout}{res.stderr}")
    return res


class Lab:
    """Namespaces, the helper "daemon" and the veths of one test."""

    def __init__(self, tmp: Path) -> None:
        n = f"{os.getpid() % 10000}{next(_counter)}"
        self.tmp = tmp
        self.root = tmp / "root"
        self.host, self.client, self.out = f"pvh{n}", f"pvc{n}", f"pvo{n}"
        self.tag = n
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        for ns in (self.host, self.client, self.out):
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            self.ns(ns, "ip", "link", "set", "lo", "up")
        # HOST <-> OUT: the "outside world" behind the host
        run("ip", "link", "add", "up0", "netns", self.host, "type", "veth",
            "peer", "name", "up0", "netns", self.out)
        self.ns(self.host, "ip", "addr", "add", "172.30.0.1/24", "dev", "up0")
        self.ns(self.host, "ip", "link", "set", "up0", "up")
        self.ns(self.out, "ip", "addr", "add", "172.30.0.2/24", "dev", "up0")
        self.ns(self.out, "ip", "link", "set", "up0", "up")
        script = tmp / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        self.udhcpc_script = script

    def ns(self, ns: str, *argv, **kw) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns, *argv, **kw)

    def helper(self, *args, check=True, env=None) -> object:
        res = self.ns(self.host, PY, HELPER, self.root, *args, check=False,
                      env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        if check and res.returncode:
            raise AssertionError(f"helper {args}: {res.returncode} {res.stdout} {res.stderr}")
        if res.returncode not in (0, 3):
            raise AssertionError(f"helper {args} crashed: {res.stderr}")
        out = json.loads(res.stdout.strip().splitlines()[-1])
        return out

    def define_and_start(self, xml: str, name: str) -> None:
        f = self.tmp / f"{name}.xml"
        f.write_text(xml)
        assert self.helper("define", f) == name
        assert self.helper("start", name) is None

    def attach_client(self, bridge: str, mac: str = "52:54:00:aa:00:01", ifname: str = "eth0") -> None:
        """The client's veth, its peer on the bridge: it stands in for a guest's NIC."""
        peer = f"vp{self.tag}"[:15]
        run("ip", "link", "add", ifname, "netns", self.client, "type", "veth",
            "peer", "name", peer, "netns", self.host)
        self.ns(self.host, "ip", "link", "set", peer, "master", bridge, "up")
        self.ns(self.client, "ip", "link", "set", ifname, "address", mac, "up")

    def dhcp(self, ifname: str = "eth0", hostname: str = "guest1") -> str:
        out = self.tmp / "lease.out"
        out.unlink(missing_ok=True)
        # an STP bridge forwards after 2 x 2 s (the kernel's minimum forward delay)
        self.ns(self.client, "busybox", "udhcpc", "-i", ifname, "-s", self.udhcpc_script,
                "-n", "-q", "-t", "15", "-T", "1", "-x", f"hostname:{hostname}",
                env={**os.environ, "UDHCPC_OUT": str(out)})
        return out.read_text().strip()

    def udp_echo(self) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.out, PY, "-c", UDP_ECHO],
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"

    def ask_outside(self, timeout: float = 1.0) -> str:
        return self.ns(self.client, PY, "-c", UDP_ASK, "172.30.0.2", str(timeout)).stdout.strip()

    def dnsmasq_pids(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"dnsmasq") and str(self.root).encode() in b" ".join(cmd):
                pids.append(int(proc.name))
        return pids

    def nft(self) -> str:
        return self.ns(self.host, "nft", "list", "ruleset").stdout

    def links(self) -> set[str]:
        out = self.ns(self.host, "ip", "-o", "link").stdout
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for pid in self.dnsmasq_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def nat_xml(name="nat1", mode="nat", subnet="10.77.0", extra="", dhcp_hosts=""):
    forward = f"<forward mode='{mode}'/>" if mode else ""
    return f"""<network>
  <name>{name}</name>
  {forward}
  <domain name='example.test'/>
  <dns><host ip='10.99.0.50'><hostname>outsidehost</hostname></host></dns>
  <ip address='{subnet}.1' netmask='255.255.255.0'>
    <dhcp><range start='{subnet}.100' end='{subnet}.150'/>{dhcp_hosts}</dhcp>
  </ip>
  {extra}
</network>"""


def bridge_of(lab: Lab, name: str) -> str:
    from lxml import etree
    return etree.fromstring(lab.helper("xml", name).encode()).find("bridge").get("name")


# --- NAT, DHCP, DNS, masquerading, teardown ------------------------------------

def test_nat_dhcp_veth_client_instead_of_guest(lab):
    lab.define_and_start(nat_xml(), "nat1")
    bridge = bridge_of(lab, "nat1")
    assert bridge == "virbr0"
    assert len(lab.dnsmasq_pids()) == 1
    lab.attach_client(bridge)
    lab.udp_echo()

    ip = lab.dhcp()
    assert ip.startswith("10.77.0.") and 100 <= int(ip.rsplit(".", 1)[1]) <= 150
    lab.ns(lab.client, "busybox", "ping", "-c", "2", "-W", "2", "10.77.0.1")
    dns = lab.ns(lab.client, "busybox", "nslookup", "-type=a", "outsidehost.example.test",
                 "10.77.0.1", check=False).stdout
    assert "10.99.0.50" in dns
    # masquerading: the outside peer sees the host's address, not the client's
    assert lab.ask_outside() == "172.30.0.1"

    leases = lab.helper("leases", "nat1")
    assert [(l["mac"], l["ipaddr"], l["hostname"], l["prefix"], l["iface"]) for l in leases] == \
        [("52:54:00:aa:00:01", ip, "guest1", 24, "virbr0")]

    # destroy removes the bridge, our nftables table and dnsmasq; nothing else
    assert lab.helper("destroy", "nat1") is None
    assert bridge not in lab.links() and "up0" in lab.links()
    assert "pyvirtd" not in lab.nft()
    assert lab.dnsmasq_pids() == []
    assert [n["active"] for n in lab.helper("list")] == [0]


def test_isolated_network_cannot_reach_outside(lab):
    lab.define_and_start(nat_xml("iso", mode=None, subnet="10.78.0"), "iso")
    bridge = bridge_of(lab, "iso")
    lab.attach_client(bridge)
    lab.udp_echo()
    ip = lab.dhcp()
    assert ip.startswith("10.78.0.")
    lab.ns(lab.client, "busybox", "ping", "-c", "1", "-W", "2", "10.78.0.1")
    # even with a route out, the host rejects forwarding for an isolated network
    lab.ns(lab.client, "ip", "route", "replace", "default", "via", "10.78.0.1")
    lab.ns(lab.host, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
    assert lab.ask_outside(timeout=0.5) == "TIMEOUT"
    assert "masquerade" not in lab.nft()


def test_routed_network_outside_sees_guest_address(lab):
    lab.define_and_start(nat_xml("routed", mode="route", subnet="10.79.0"), "routed")
    lab.attach_client(bridge_of(lab, "routed"))
    lab.ns(lab.out, "ip", "route", "add", "10.79.0.0/24", "via", "172.30.0.1")
    lab.udp_echo()
    ip = lab.dhcp()
    assert lab.ask_outside() == ip
    assert "masquerade" not in lab.nft()


def test_restart_leaves_network_running(lab):
    lab.define_and_start(nat_xml(), "nat1")
    lab.attach_client(bridge_of(lab, "nat1"))
    lab.dhcp()
    pids = lab.dnsmasq_pids()
    rules = lab.nft()
    ping = subprocess.Popen(["ip", "netns", "exec", lab.client, "busybox", "ping", "-i", "0.2",
                             "-c", "25", "10.77.0.1"], stdout=subprocess.PIPE, text=True)
    lab.procs.append(ping)
    for _ in range(3):   # three daemon restarts while the client pings
        assert lab.helper("startup") == ["nat1"]
    out, _ = ping.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert lab.dnsmasq_pids() == pids          # no second dnsmasq
    assert lab.nft() == rules                  # no duplicate rules


def test_daemon_start_repairs_running_network_and_removes_leftovers(lab):
    lab.define_and_start(nat_xml(), "nat1")
    rules = lab.nft()
    # damage: dnsmasq killed, our chains flushed, a stray chain of a network long gone
    for pid in lab.dnsmasq_pids():
        os.kill(pid, signal.SIGKILL)
    lab.ns(lab.host, "nft", "flush", "chain", "inet", "pyvirtd", "n_virbr0_fwd")
    lab.ns(lab.host, "nft", "add", "chain", "inet", "pyvirtd", "n_virbr7_fwd")
    wait_for(lambda: not lab.dnsmasq_pids(), timeout=10)    # the killed ones are gone
    assert lab.helper("startup") == ["nat1"]
    assert len(lab.dnsmasq_pids()) == 1
    assert lab.nft() == rules


def test_bridge_mode_uses_existing_host_bridge(lab):
    lab.ns(lab.host, "ip", "link", "add", "br-host", "type", "bridge")
    f = lab.tmp / "hb.xml"
    f.write_text("<network><name>hb</name><forward mode='bridge'/>"
                 "<bridge name='br-host'/></network>")
    assert lab.helper("define", f) == "hb"
    assert lab.helper("start", "hb") is None
    assert lab.helper("plug", "hb", "52:54:00:12:34:57")["master"] == "br-host"
    assert lab.dnsmasq_pids() == [] and "pyvirtd" not in lab.nft()
    lab.helper("destroy", "hb")
    assert "br-host" in lab.links()   # not ours: left alone


def test_net_update_static_host_applies_on_next_request(lab):
    lab.define_and_start(nat_xml(), "nat1")
    lab.attach_client(bridge_of(lab, "nat1"), mac="52:54:00:aa:00:07")
    first = lab.dhcp()
    assert first != "10.77.0.42"
    lab.helper("update-dhcp-host", "nat1",
               "<host mac='52:54:00:aa:00:07' name='fixed' ip='10.77.0.42'/>")
    assert "10.77.0.42" in lab.helper("xml", "nat1")
    # the live update reached dnsmasq (SIGHUP, no restart): the next request gets it
    pids = lab.dnsmasq_pids()
    lab.ns(lab.client, "ip", "addr", "flush", "dev", "eth0")
    assert lab.dhcp() == "10.77.0.42"
    assert lab.dnsmasq_pids() == pids


def test_autostart_and_default_network_on_fresh_system_host(lab):
    # a --system daemon on a fresh host defines and autostarts 'default'
    assert lab.helper("startup", "--system") == ["default"]
    nets = lab.helper("list")
    assert nets == [{"name": "default", "active": 1, "persistent": 1, "autostart": 1}]
    assert "192.168.122.1/24" in lab.ns(lab.host, "ip", "-o", "addr", "show", "virbr0").stdout
    # not fresh any more: destroy it, and a restart autostarts it again, once
    lab.helper("destroy", "default")
    assert lab.helper("startup", "--system") == ["default"]
    assert len(lab.dnsmasq_pids()) == 1


def test_plug_interface_tap_on_bridge(lab):
    lab.define_and_start(nat_xml(), "nat1")
    res = lab.helper("plug", "nat1", "52:54:00:12:34:56")
    assert res["master"] == "virbr0"
    assert res["mac"] == "fe:54:00:12:34:56"
    assert res["tap"].startswith("vnet") and res["gone"]


def test_errors_worded_as_libvirt(lab):
    bad = lab.tmp / "bad.xml"
    bad.write_text(nat_xml("bad").replace("10.77.0.150", "10.77.1.150"))
    err = lab.helper("define", bad, check=False)
    assert err["message"] == ("unsupported configuration: range 10.77.0.100 - 10.77.1.150 "
                              "is not entirely within network 10.77.0.0/24")

    lab.define_and_start(nat_xml(), "nat1")
    same_bridge = lab.tmp / "b.xml"
    same_bridge.write_text(nat_xml("b", subnet="10.80.0", extra="").replace(
        "<domain", "<bridge name='virbr0'/><domain"))
    err = lab.helper("define", same_bridge, check=False)
    assert err["message"] == "internal error: bridge name 'virbr0' already in use."

    overlap = lab.tmp / "o.xml"
    overlap.write_text(nat_xml("o"))
    assert lab.helper("define", overlap) == "o"
    err = lab.helper("start", "o", check=False)
    assert err["message"] == "internal error: Network is already in use by interface virbr0"
    assert lab.helper("list")[1]["active"] == 0

    other = lab.tmp / "n.xml"
    other.write_text(nat_xml("n", subnet="10.81.0"))
    lab.helper("define", other)
    err = lab.helper("start", "n", check=False, env={"NETWORK_HELPER_DNSMASQ": "dnsmasq-missing"})
    assert err["message"] == "Cannot check dnsmasq binary dnsmasq-missing: No such file or directory"
    assert "virbr2" not in lab.links()


# --- over RPC, once the QEMU driver serves the network procedures -----------------

def _qemu_driver() -> bool:
    return any(ep.name == "qemu" for ep in entry_points(group="pyvirtd.drivers"))


def _start_daemon(lab: Lab) -> subprocess.Popen:
    sock = lab.root / "run" / "libvirt-sock"
    sock.unlink(missing_ok=True)
    daemon = subprocess.Popen(["ip", "netns", "exec", lab.host, str(REPO / ".venv/bin/pyvirtd"),
                               "--root", str(lab.root)], stderr=subprocess.DEVNULL)
    lab.procs.append(daemon)
    wait_for(sock.exists, timeout=10, what="pyvirtd creates its socket")
    return daemon


@pytest.mark.skipif(not _qemu_driver(), reason="the QEMU driver (qemu:// URIs that delegate to "
                                               "the network subsystem) does not exist yet")
def test_virsh_nat_network_dhcp_veth_client_instead_of_guest(lab):
    daemon = _start_daemon(lab)
    uri = f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}"

    def virsh(*args, check=True):
        return run("virsh", "-c", uri, *args, check=check)

    f = lab.tmp / "nat1.xml"
    f.write_text(nat_xml())
    virsh("net-define", f)
    virsh("net-start", "nat1")
    assert "virbr0" == virsh("net-info", "nat1").stdout.split("Bridge:")[1].split()[0]
    lab.attach_client("virbr0")
    ip = lab.dhcp()
    assert ip in virsh("net-dhcp-leases", "nat1").stdout
    pids, rules = lab.dnsmasq_pids(), lab.nft()

    # daemon restart: the network keeps running, nothing is duplicated
    daemon.terminate()
    daemon.wait(timeout=10)
    assert "virbr0" in lab.links()
    _start_daemon(lab)
    assert "nat1" in virsh("net-list", "--name").stdout
    assert lab.dnsmasq_pids() == pids and lab.nft() == rules
    lab.ns(lab.client, "busybox", "ping", "-c", "1", "-W", "2", "10.77.0.1")

    virsh("net-update", "nat1", "add", "ip-dhcp-host",
          "<host mac='52:54:00:aa:00:09' ip='10.77.0.9'/>", "--live", "--config")
    assert "10.77.0.9" in virsh("net-dumpxml", "nat1", "--inactive").stdout

    virsh("net-destroy", "nat1")
    assert "virbr0" not in lab.links()
    assert lab.dnsmasq_pids() == [] and "pyvirtd" not in lab.nft()
    err = virsh("net-start", "nosuch", check=False)
    assert "Network not found: no network with matching name 'nosuch'" in err.stderr
