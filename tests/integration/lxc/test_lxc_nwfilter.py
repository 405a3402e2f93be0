"""Network filters end to end: virsh and python-libvirt against a pyvirtd serving
lxc:/// inside its own network namespace (tests/integration/lxc/test_lxc.py's
Lab), and real traffic between two containers on one bridge: with clean-traffic
the container that spoofs its IP or MAC cannot reach its neighbour.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest

from tests.integration.lxc.test_lxc import container_xml, lab, make_root  # noqa: F401 (fixture)

BINDING = """<filterbinding>
  <owner>
    <name>vm1</name>
    <uuid>d54df46f-1ab5-4a22-8618-4560ef5fac2c</uuid>
  </owner>
  <portdev name='{dev}'/>
  <mac address='52:54:00:aa:bb:cc'/>
  <filterref filter='{filter}'>
    <parameter name='IP' value='10.1.2.3'/>
  </filterref>
</filterbinding>
"""
LOOP_A = "<filter name='loop-a' chain='root'><filterref filter='loop-b'/></filter>"
LOOP_B = "<filter name='loop-b' chain='root'><filterref filter='loop-a'/></filter>"
SSH = """<filter name='allow-ssh' chain='root'>
  <rule action='accept' direction='in' priority='500'>
    <tcp dstportstart='22'/>
  </rule>
</filter>
"""


def _files(lab) -> set[str]:
    return {p.name for p in (lab.root_dir / "lib" / "nwfilter").glob("*")}


def _fails(lab, *args) -> str:
    p = lab.virsh(*args, check=False)
    assert p.returncode != 0, p.stdout
    return p.stderr


def test_virsh_filters_and_bindings_with_libvirts_errors(lab, tmp_path):
    listed = lab.virsh("nwfilter-list").stdout
    for name in ("clean-traffic", "no-ip-spoofing", "no-mac-spoofing", "no-arp-spoofing",
                 "allow-dhcp", "allow-incoming-ipv4", "no-other-l2-traffic", "qemu-announce-self"):
        assert f"   {name}\n" in listed
    assert "<filterref filter='no-mac-spoofing'/>" in lab.virsh("nwfilter-dumpxml",
                                                                "clean-traffic").stdout
    (tmp_path / "ssh.xml").write_text(SSH)
    lab.virsh("nwfilter-define", str(tmp_path / "ssh.xml"))
    dumped = lab.virsh("nwfilter-dumpxml", "allow-ssh").stdout
    uuid = dumped.split("<uuid>")[1].split("</uuid>")[0]
    assert lab.virsh("nwfilter-dumpxml", uuid).stdout == dumped
    assert "allow-ssh.xml" in _files(lab)
    before = _files(lab)

    # malformed rules, loops, unknown references: refused, nothing written
    (tmp_path / "bad.xml").write_text(
        "<filter name='bad'><rule action='accept' direction='out'>"
        "<ip srcipaddr='10.0.0.300'/></rule></filter>")
    assert "internal error: srcipaddr has illegal value 10.0.0.300" in \
        _fails(lab, "nwfilter-define", str(tmp_path / "bad.xml"))
    (tmp_path / "a.xml").write_text(LOOP_A)
    (tmp_path / "b.xml").write_text(LOOP_B)
    lab.virsh("nwfilter-define", str(tmp_path / "a.xml"))
    assert "operation failed: filter would introduce a loop" in \
        _fails(lab, "nwfilter-define", str(tmp_path / "b.xml"))
    assert _files(lab) == before | {"loop-a.xml"}
    (tmp_path / "bind-loop.xml").write_text(BINDING.format(dev="nwft1", filter="loop-a"))
    assert "internal error: referenced filter 'loop-b' is missing" in \
        _fails(lab, "nwfilter-binding-create", str(tmp_path / "bind-loop.xml"))
    assert "nwft1" not in lab.virsh("nwfilter-binding-list").stdout
    lab.virsh("nwfilter-undefine", "loop-a")

    # a binding: created, listed, dumped, in the nft table; its filters are in use
    (tmp_path / "bind.xml").write_text(BINDING.format(dev="nwft0", filter="clean-traffic"))
    lab.virsh("nwfilter-binding-create", str(tmp_path / "bind.xml"))
    assert " nwft0      clean-traffic" in lab.virsh("nwfilter-binding-list").stdout
    assert lab.virsh("nwfilter-binding-dumpxml", "nwft0").stdout == \
        BINDING.format(dev="nwft0", filter="clean-traffic") + "\n"   # virsh adds a line
    assert "operation failed: binding 'nwft0' already exists" in \
        _fails(lab, "nwfilter-binding-create", str(tmp_path / "bind.xml"))
    ruleset = lab.ns_exec("nft", "list", "table", "bridge", "pyvirtd_nwfilter").stdout
    assert 'iifname "nwft0" jump I-nwft0' in ruleset
    assert "ip saddr 10.1.2.3 return" in ruleset
    for name in ("clean-traffic", "no-ip-spoofing", "no-arp-mac-spoofing"):
        assert "Requested operation is not valid: nwfilter is in use" in \
            _fails(lab, "nwfilter-undefine", name)
    assert "no-ip-spoofing.xml" in _files(lab)
    lab.virsh("nwfilter-binding-delete", "nwft0")
    assert "error: no nwfilter binding for port dev 'nwft0'" in \
        _fails(lab, "nwfilter-binding-dumpxml", "nwft0")
    assert lab.ns_exec("nft", "list", "tables").stdout.count("pyvirtd_nwfilter") == 0
    lab.virsh("nwfilter-undefine", "allow-ssh")
    assert "error: Network filter not found: no nwfilter with matching name 'allow-ssh'" in \
        _fails(lab, "nwfilter-dumpxml", "allow-ssh")


def test_python_libvirt_every_nwfilter_call(lab):
    conn = libvirt.open(lab.uri)
    try:
        names = conn.listNWFilters()
        assert conn.numOfNWFilters() == len(names) and "clean-traffic" in names
        assert sorted(f.name() for f in conn.listAllNWFilters()) == sorted(names)
        f = conn.nwfilterDefineXML(SSH)
        assert conn.nwfilterLookupByName("allow-ssh").UUIDString() == f.UUIDString()
        assert conn.nwfilterLookupByUUIDString(f.UUIDString()).name() == "allow-ssh"
        assert conn.nwfilterLookupByUUID(f.UUID()).name() == "allow-ssh"
        xml = f.XMLDesc()
        assert "<tcp dstportstart='22'/>" in xml
        # redefining with the same UUID replaces; a new UUID for an existing name is refused
        again = conn.nwfilterDefineXMLFlags(xml.replace("'22'", "'2222'"),
                                            libvirt.VIR_NWFILTER_DEFINE_VALIDATE)
        assert "'2222'" in again.XMLDesc()
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.nwfilterDefineXML(SSH.replace("<filter name='allow-ssh' chain='root'>",
                                               f"<filter name='allow-ssh' chain='root'><uuid>"
                                               f"{uuidlib.uuid4()}</uuid>"))
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
        assert "filter 'allow-ssh' already exists with uuid" in str(exc.value)

        b = conn.nwfilterBindingCreateXML(BINDING.format(dev="nwft2", filter="allow-ssh"))
        assert (b.portDev(), b.filterName()) == ("nwft2", "allow-ssh")
        assert [x.portDev() for x in conn.listAllNWFilterBindings()] == ["nwft2"]
        assert conn.nwfilterBindingLookupByPortDev("nwft2").XMLDesc() == \
            BINDING.format(dev="nwft2", filter="allow-ssh")
        ruleset = lab.ns_exec("nft", "list", "table", "bridge", "pyvirtd_nwfilter").stdout
        assert "tcp dport 2222 accept" in ruleset       # the redefined rule is live
        with pytest.raises(libvirt.libvirtError) as exc:
            f.undefine()
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        b.delete()
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.nwfilterBindingLookupByPortDev("nwft2")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER_BINDING
        f.undefine()
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.nwfilterLookupByName("allow-ssh")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_NWFILTER
    finally:
        conn.close()


def test_reject_rules_drop_and_the_log_says_so(lab, tmp_path):
    """No nftables reject in the bridge family on this kernel: reject drops, and the
    daemon's log names the port and the reason once."""
    (tmp_path / "rej.xml").write_text(
        "<filter name='reject-ssh' chain='root'><rule action='reject' direction='in' "
        "priority='500'><tcp dstportstart='22'/></rule></filter>")
    lab.virsh("nwfilter-define", str(tmp_path / "rej.xml"))
    (tmp_path / "bind.xml").write_text(BINDING.format(dev="nwft3", filter="reject-ssh"))
    lab.virsh("nwfilter-binding-create", str(tmp_path / "bind.xml"))
    ruleset = lab.ns_exec("nft", "list", "table", "bridge", "pyvirtd_nwfilter").stdout
    assert "tcp dport 22 drop" in ruleset and "reject" not in ruleset
    (tmp_path / "bind4.xml").write_text(BINDING.format(dev="nwft4", filter="reject-ssh"))
    lab.virsh("nwfilter-binding-create", str(tmp_path / "bind4.xml"))
    log = lab.log()
    assert log.count("the filter of nwft3 has 1 reject rule(s): they drop the frames") == 1
    assert "the filter of nwft4 has 1 reject rule(s)" in log
    lab.virsh("nwfilter-binding-delete", "nwft3")
    lab.virsh("nwfilter-binding-delete", "nwft4")


def _ping(lab, dom: str, target: str, setup: str = "") -> str:
    return lab.virsh("lxc-enter-namespace", dom, "/bin/sh", "-c",
                     f"{setup} ping -c 2 -W 1 {target}", check=False).stdout


def _container(lab, tmp_path: Path, name: str, ip: str, mac: str, extra: str = "") -> None:
    root = make_root(tmp_path / f"root-{name}")
    iface = (f"<interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>"
             f"<ip address='{ip}' prefix='24'/><guest dev='eth0'/>{extra}</interface>")
    xml = tmp_path / f"{name}.xml"
    xml.write_text(container_xml(name, root, extra=iface))
    lab.virsh("create", str(xml))


def _veth(lab, dom: str) -> str:
    return lab.virsh("dumpxml", dom).stdout.split("<target dev='")[1].split("'")[0]


def test_clean_traffic_stops_ip_and_mac_spoofing_between_containers(lab, tmp_path):
    lab.ns_exec("ip", "link", "add", "br0", "type", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.99.0.1/24", "dev", "br0")
    lab.ns_exec("ip", "link", "set", "br0", "up")
    flt = ("<filterref filter='clean-traffic'>"
           "<parameter name='IP' value='10.99.0.2'/></filterref>")
    _container(lab, tmp_path, "c1", "10.99.0.2", "52:54:00:00:99:02", flt)
    _container(lab, tmp_path, "c2", "10.99.0.3", "52:54:00:00:99:03")
    veth = _veth(lab, "c1")
    assert f" {veth}" in lab.virsh("nwfilter-binding-list").stdout
    ruleset = lab.ns_exec("nft", "list", "ruleset").stdout
    assert "table bridge pyvirtd_nwfilter" in ruleset
    assert f'iifname "{veth}" jump I-{veth}' in ruleset

    # honest traffic passes, both ways
    assert "2 packets received" in _ping(lab, "c1", "10.99.0.3")
    assert "2 packets received" in _ping(lab, "c2", "10.99.0.2")
    # c1 takes another IP: its ARP and IP are dropped
    spoof_ip = "ip addr flush dev eth0; ip addr add 10.99.0.9/24 dev eth0;"
    assert " 0 packets received" in _ping(lab, "c1", "10.99.0.3", spoof_ip)
    # the same spoofing from c2, which has no filter, works
    assert "2 packets received" in _ping(
        lab, "c2", "10.99.0.1", "ip addr flush dev eth0; ip addr add 10.99.0.8/24 dev eth0;")
    # c1 back to its own IP works again; then with another MAC it is cut off
    restore = "ip addr flush dev eth0; ip addr add 10.99.0.2/24 dev eth0;"
    assert "2 packets received" in _ping(lab, "c1", "10.99.0.1", restore)
    spoof_mac = ("ip link set eth0 down; ip link set eth0 address 52:54:00:00:99:66;"
                 "ip link set eth0 up; ip addr add 10.99.0.2/24 dev eth0 2>/dev/null;")
    assert " 0 packets received" in _ping(lab, "c1", "10.99.0.1", spoof_mac)

    # the daemon dies and the rules with it: a restart rebuilds them from the bindings
    lab.kill9()
    lab.ns_exec("nft", "delete", "table", "bridge", "pyvirtd_nwfilter")
    lab.start_daemon()
    # the socket is up before the subsystems have started: wait for the rules
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and \
            f'jump I-{veth}' not in lab.ns_exec("nft", "list", "ruleset").stdout:
        time.sleep(0.1)
    assert f'iifname "{veth}" jump I-{veth}' in lab.ns_exec("nft", "list", "ruleset").stdout, (lab.log(), list((lab.root_dir / "run").rglob("*")), lab.virsh("nwfilter-binding-list").stdout)

    # the NIC goes with the container, and so do its rules
    lab.virsh("destroy", "c1")
    assert veth not in lab.virsh("nwfilter-binding-list").stdout
    assert "pyvirtd_nwfilter" not in lab.ns_exec("nft", "list", "ruleset").stdout


def test_first_packets_teach_the_address_then_it_is_enforced(lab, tmp_path):
    """clean-traffic without IP: CTRL_IP_LEARNING 'any' (libvirt's default) learns the
    container's static address from its first packets; then only that one works."""
    lab.ns_exec("ip", "link", "add", "br0", "type", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.98.0.1/24", "dev", "br0")
    lab.ns_exec("ip", "link", "set", "br0", "up")
    _container(lab, tmp_path, "c4", "10.98.0.4", "52:54:00:00:98:04",
               "<filterref filter='clean-traffic'/>")
    veth = _veth(lab, "c4")
    binding = lab.virsh("nwfilter-binding-dumpxml", veth).stdout
    assert "<parameter name='IP'" not in binding        # nothing sent yet, nothing known
    assert "2 packets received" in _ping(lab, "c4", "10.98.0.1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "name='IP'" not in \
            lab.virsh("nwfilter-binding-dumpxml", veth).stdout:
        time.sleep(0.1)
    assert "<parameter name='IP' value='10.98.0.4'/>" in \
        lab.virsh("nwfilter-binding-dumpxml", veth).stdout
    assert "ip saddr 10.98.0.4 return" in lab.ns_exec("nft", "list", "ruleset").stdout
    spoof_ip = "ip addr flush dev eth0; ip addr add 10.98.0.9/24 dev eth0;"
    assert " 0 packets received" in _ping(lab, "c4", "10.98.0.1", spoof_ip)
    restore = "ip addr flush dev eth0; ip addr add 10.98.0.4/24 dev eth0;"
    assert "2 packets received" in _ping(lab, "c4", "10.98.0.1", restore)
    lab.virsh("destroy", "c4")
    assert "pyvirtd_nwfilter" not in lab.ns_exec("nft", "list", "ruleset").stdout


def test_container_with_unknown_filter_does_not_start(lab, tmp_path):
    lab.ns_exec("ip", "link", "add", "br0", "type", "bridge")
    lab.ns_exec("ip", "link", "set", "br0", "up")
    root = make_root(tmp_path / "root-c3")
    iface = ("<interface type='bridge'><source bridge='br0'/>"
             "<filterref filter='no-such-filter'/></interface>")
    (tmp_path / "c3.xml").write_text(container_xml("c3", root, extra=iface))
    p = lab.virsh("create", str(tmp_path / "c3.xml"), check=False)
    assert p.returncode != 0
    assert "referenced filter 'no-such-filter' is missing" in p.stderr
    assert "veth" not in lab.ns_exec("ip", "-o", "link").stdout
    assert lab.virsh("nwfilter-binding-list").stdout.count("\n") <= 3


def test_test_driver_has_no_nwfilter_support_like_libvirts(daemon):
    from tests.conftest import virsh
    ours = virsh(daemon.uri("test:///default"), "nwfilter-list; nwfilter-binding-list")
    theirs = virsh("test:///default", "nwfilter-list; nwfilter-binding-list")
    assert ours.err == theirs.err
    assert "virConnectNumOfNWFilters" in ours.err
