"""<interface type='direct'> (macvtap) and macvtap-mode networks, with pyvirtd in a test namespace.

The HOST namespace of `test_guest_network.Lab` has up0, a veth to OUT: the
macvtaps' parent.  Guests are firmware-only and started paused: a macvtap
exists from start to destroy whatever the guest does.  Where the kernel
has no macvtap driver the guest must fail to start with libvirt's error
and leave nothing behind (no macvtap, no network port); where it has one,
the guest gets a macvtap in the right mode on the right parent, removed at
destroy (also run in the lab VM, tests/lab).  A parent the kernel refuses
(lo is no Ethernet device) takes the same error path on any kernel.  The
last test follows a guest's network port across daemon restarts.
"""

from __future__ import annotations

import os
import re

import pytest

from daemon_helpers import guest_xml, needs_qemu, ok, virsh, wait_for
from test_guest_network import Lab

pytestmark = [needs_qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

MAC = "52:54:00:5a:00:01"
POOL_NET = """<network><name>pool1</name>
  <forward mode='{mode}'><interface dev='up0'/></forward>
</network>"""


def _macvtap_available(lab: Lab) -> bool:
    r = lab.ns(lab.host, "ip", "link", "add", "mvprobe", "link", "up0", "type", "macvtap",
               check=False)
    lab.ns(lab.host, "ip", "link", "del", "mvprobe", check=False)
    return r.returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("direct"))
    try:
        lab.uri = lab.start_daemon()
        lab.has_macvtap = _macvtap_available(lab)
        yield lab
    finally:
        lab.close()


def define(lab: Lab, name: str, interface: str) -> None:
    xml = guest_xml(name).replace("<devices>", f"<devices>{interface}")
    path = lab.root.parent / f"{name}.xml"
    path.write_text(xml)
    ok(lab.uri, f"define {path}")


def direct(mode: str) -> str:
    return (f"<interface type='direct'><mac address='{MAC}'/>"
            f"<source dev='up0' mode='{mode}'/><model type='virtio'/></interface>")


def macvtaps(lab: Lab) -> dict[str, str]:
    """name -> 'mode@parent' of every macvtap in the HOST namespace."""
    out = lab.ns(lab.host, "ip", "-d", "-o", "link", "show", "type", "macvtap").stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\d+: ([^@:]+)@(\S+?):.* macvtap mode (\S+)", line)
        if m:
            found[m.group(1)] = f"{m.group(3)}@{m.group(2)}"
    return found


def test_direct_without_macvtap_fails_like_libvirt(lab):
    if lab.has_macvtap:
        pytest.skip("this kernel has macvtap: the missing-driver error cannot happen here")
    define(lab, "d1", direct("vepa"))
    try:
        r = virsh(lab.uri, "start d1")
        assert r.rc != 0
        assert ("error: internal error" not in r.err and
                f"error creating macvtap interface macvtap0@up0 ({MAC}): Operation not supported"
                in r.err), r.err
        assert "shut off" in ok(lab.uri, "domstate d1")
        assert not macvtaps(lab)
    finally:
        virsh(lab.uri, "undefine d1")


def test_network_of_macvtap_mode_without_macvtap_releases_its_port(lab):
    if lab.has_macvtap:
        pytest.skip("this kernel has macvtap: the missing-driver error cannot happen here")
    path = lab.root.parent / "pool1.xml"
    path.write_text(POOL_NET.format(mode="bridge"))
    ok(lab.uri, f"net-define {path}; net-start pool1")
    define(lab, "d2", f"<interface type='network'><mac address='{MAC}'/>"
                      f"<source network='pool1'/><model type='virtio'/></interface>")
    try:
        r = virsh(lab.uri, "start d2")
        assert r.rc != 0
        assert f"error creating macvtap interface macvtap0@up0 ({MAC}): Operation not supported" \
            in r.err, r.err
        assert ok(lab.uri, "net-port-list pool1 --uuid").split() == []
        assert "connections" not in ok(lab.uri, "net-dumpxml pool1")
    finally:
        virsh(lab.uri, "undefine d2; net-destroy pool1; net-undefine pool1")


@pytest.mark.parametrize("mode,kernel_mode", [("vepa", "vepa"), ("bridge", "bridge"),
                                              ("private", "private")])
def test_direct_guest_gets_a_macvtap_in_its_mode(lab, mode, kernel_mode):
    if not lab.has_macvtap:
        pytest.skip("this kernel has no macvtap driver (the lab VM runs this path)")
    name = f"d{mode}"
    define(lab, name, direct(mode))
    try:
        ok(lab.uri, f"start {name} --paused")
        tap = re.search(r"<target dev='(macvtap\d+)'/>", ok(lab.uri, f"dumpxml {name}")).group(1)
        assert macvtaps(lab) == {tap: f"{kernel_mode}@up0"}
        addr = lab.ns(lab.host, "cat", f"/sys/class/net/{tap}/address").stdout.strip()
        assert addr == MAC
        ok(lab.uri, f"destroy {name}")
        wait_for(lambda: macvtaps(lab) == {}, timeout=10)
    finally:
        virsh(lab.uri, f"destroy {name}; undefine {name}")


def test_direct_on_a_parent_the_kernel_refuses(lab):
    """The macvtap creation error, worded as libvirt's, on any kernel: lo cannot carry one."""
    define(lab, "dlo", direct("vepa").replace("dev='up0'", "dev='lo'"))
    try:
        r = virsh(lab.uri, "start dlo")
        assert r.rc != 0
        reason = "Invalid argument" if lab.has_macvtap else "Operation not supported"
        assert f"error creating macvtap interface macvtap0@lo ({MAC}): {reason}" in r.err, r.err
        assert "shut off" in ok(lab.uri, "domstate dlo") and not macvtaps(lab)
        define(lab, "dnosuch", direct("vepa").replace("dev='up0'", "dev='nosuch0'"))
        r = virsh(lab.uri, "start dnosuch")
        assert "Unable to get index for interface nosuch0: No such device" in r.err, r.err
    finally:
        virsh(lab.uri, "undefine dlo; undefine dnosuch")


@pytest.mark.parametrize("mode", ["bridge", "passthrough"])
def test_guest_on_a_macvtap_network_gets_a_port_and_a_macvtap(lab, mode):
    if not lab.has_macvtap:
        pytest.skip("this kernel has no macvtap driver (the lab VM runs this path)")
    path = lab.root.parent / "pool2.xml"
    path.write_text(POOL_NET.format(mode=mode).replace("pool1", "pool2"))
    ok(lab.uri, f"net-define {path}; net-start pool2")
    define(lab, "d3", f"<interface type='network'><mac address='{MAC}'/>"
                      f"<source network='pool2'/><model type='virtio'/></interface>")
    try:
        up0_mac = lab.ns(lab.host, "cat", "/sys/class/net/up0/address").stdout.strip()
        ok(lab.uri, "start d3 --paused")
        xml = ok(lab.uri, "dumpxml d3")
        m = re.search(r"<interface type='direct'>\s*<mac address='[^']+'/>\s*"
                      r"<source network='pool2' portid='([0-9a-f-]+)' dev='up0' "
                      rf"mode='{mode}'/>\s*<target dev='(macvtap\d+)'/>", xml)
        assert m, xml
        portid, tap = m.groups()
        assert macvtaps(lab) == {tap: f"{'passthru' if mode == 'passthrough' else mode}@up0"}
        assert ok(lab.uri, "net-port-list pool2 --uuid").split() == [portid]
        assert f"<plug type='direct' dev='up0' mode='{mode}'/>" in \
            ok(lab.uri, f"net-port-dumpxml pool2 {portid}")
        assert "<interface dev='up0' connections='1'/>" in ok(lab.uri, "net-dumpxml pool2")
        assert "<interface type='network'>" in ok(lab.uri, "dumpxml d3 --inactive")
        # passthrough: the parent carries the guest's MAC while the guest runs
        parent_mac = lab.ns(lab.host, "cat", "/sys/class/net/up0/address").stdout.strip()
        assert parent_mac == (MAC if mode == "passthrough" else up0_mac)
        ok(lab.uri, "destroy d3")
        wait_for(lambda: macvtaps(lab) == {}, timeout=10)
        wait_for(lambda: ok(lab.uri, "net-port-list pool2 --uuid").split() == [], timeout=10)
        assert lab.ns(lab.host, "cat", "/sys/class/net/up0/address").stdout.strip() == up0_mac
    finally:
        virsh(lab.uri, "destroy d3; undefine d3; net-destroy pool2; net-undefine pool2")


def test_guest_port_survives_daemon_restarts_and_is_reclaimed(lab):
    """Ports are run state: a restarted daemon keeps them, and one lost with a
    restarted network is taken back (RECLAIM) when the daemon reattaches the guest."""
    from tests.conftest import stop_daemon

    path = lab.root.parent / "portnet.xml"
    path.write_text("<network><name>portnet</name>"
                    "<ip address='10.66.0.1' netmask='255.255.255.0'/></network>")
    ok(lab.uri, f"net-define {path}; net-start portnet")
    define(lab, "d4", f"<interface type='network'><mac address='{MAC}'/>"
                      f"<source network='portnet'/><model type='virtio'/></interface>")
    try:
        ok(lab.uri, "start d4 --paused")
        portid = re.search(r"portid='([0-9a-f-]+)'", ok(lab.uri, "dumpxml d4")).group(1)
        port_xml = ok(lab.uri, f"net-port-dumpxml portnet {portid}")

        stop_daemon(lab.daemon)
        lab.uri = lab.start_daemon()
        assert ok(lab.uri, "net-port-list portnet --uuid").split() == [portid]

        ok(lab.uri, "net-destroy portnet; net-start portnet")
        assert ok(lab.uri, "net-port-list portnet --uuid").split() == []
        stop_daemon(lab.daemon)
        lab.uri = lab.start_daemon()
        assert ok(lab.uri, "net-port-list portnet --uuid").split() == [portid]
        assert ok(lab.uri, f"net-port-dumpxml portnet {portid}") == port_xml

        ok(lab.uri, "destroy d4")
        wait_for(lambda: ok(lab.uri, "net-port-list portnet --uuid").split() == [], timeout=10)
    finally:
        virsh(lab.uri, "destroy d4; undefine d4; net-destroy portnet; net-undefine portnet")
