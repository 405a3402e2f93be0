"""Guest NICs and host interfaces on the lab kernel (Debian's, with macvtap, vlan, bonding).

A veth pair lab0/lab1 stands in for the host's NICs (the VM has no network).
A firmware-only guest, started paused, holds a macvtap on lab0 from start to
destroy; host interfaces of type vlan and bond are read back as libvirt's
udev backend describes them.
"""

from __future__ import annotations

import re

import pytest

from tests.conftest import wait_for
from tests.lab.inside.conftest import sh

MAC = "52:54:00:1a:b0:01"
GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <interface type='direct'><mac address='{mac}'/><source dev='lab0' mode='{mode}'/>
      <model type='virtio'/></interface>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def links():
    # (loading bonding makes a bond0 of its own: ours has another name)
    for module in ("veth", "macvtap", "8021q", "bonding"):
        sh("modprobe", module, check=False)
    sh("ip", "link", "add", "lab0", "type", "veth", "peer", "name", "lab1")
    sh("ip", "link", "set", "lab0", "up")
    sh("ip", "link", "set", "lab1", "up")
    yield
    for name in ("lab0", "lab1.10", "labbond", "bv0"):
        sh("ip", "link", "del", name, check=False)


def macvtaps() -> dict[str, str]:
    out = sh("ip", "-d", "-o", "link", "show", "type", "macvtap")
    return {m.group(1): f"{m.group(3)}@{m.group(2)}"
            for m in re.finditer(r"\d+: ([^@:]+)@(\S+?):.* macvtap mode (\S+)", out)}


@pytest.mark.parametrize("mode", ["vepa", "bridge"])
def test_direct_guest_macvtap_in_its_mode_gone_at_destroy(lab, links, mode, tmp_path):
    name = f"lab-{mode}"
    path = tmp_path / f"{name}.xml"
    path.write_text(GUEST.format(name=name, mac=MAC, mode=mode))
    lab.ok(f"define {path}")
    try:
        lab.ok(f"start {name} --paused")
        xml = lab.ok(f"dumpxml {name}")
        tap = re.search(r"<target dev='(macvtap\d+)'/>", xml).group(1)
        assert macvtaps() == {tap: f"{mode}@lab0"}
        assert sh("cat", f"/sys/class/net/{tap}/address").strip() == MAC
        lab.ok(f"destroy {name}")
        for _ in range(100):
            if not macvtaps():
                break
            sh("sleep", "0.1")
        assert macvtaps() == {}
    finally:
        lab.virsh(f"destroy {name}; undefine {name}")


def test_host_interfaces_vlan_and_bond(lab, links):
    sh("ip", "link", "add", "link", "lab1", "name", "lab1.10", "type", "vlan", "id", "10")
    sh("ip", "link", "add", "labbond", "type", "bond", "mode", "active-backup", "miimon", "100")
    sh("ip", "link", "add", "bv0", "type", "veth", "peer", "name", "bv1")
    sh("ip", "link", "set", "bv0", "master", "labbond")
    assert lab.ok("iface-dumpxml lab1.10") == """<interface type='vlan' name='lab1.10'>
  <mtu size='1500'/>
  <link state='down'/>
  <vlan tag='10'>
    <interface name='lab1'/>
  </vlan>
</interface>

"""
    bv0_mac = sh("cat", "/sys/class/net/bv0/address").strip()
    # a slave's link as libvirt reads it (virNetDevGetLinkInfo): sysfs operstate,
    # and the speed only when it is up
    def expected(state: str) -> str:
        speed = (f" speed='{sh('cat', '/sys/class/net/bv0/speed').strip()}'" if state == "up"
                 else "")
        return f"""<interface type='bond' name='labbond'>
  <mtu size='1500'/>
  <link state='down'/>
  <bond mode='active-backup'>
    <miimon freq='100' carrier='netif'/>
    <interface type='ethernet' name='bv0'>
      <link{speed} state='{state}'/>
      <mac address='{bv0_mac}'/>
    </interface>
  </bond>
</interface>

"""

    def settled_and_matching() -> bool:
        # the kernel moves a new slave's operstate on by itself (down, then
        # lowerlayerdown): compare only a reading that did not change around the call
        before = sh("cat", "/sys/class/net/bv0/operstate").strip()
        seen.append(lab.ok("iface-dumpxml labbond"))
        after = sh("cat", "/sys/class/net/bv0/operstate").strip()
        return before == after and seen[-1] == expected(before)

    seen: list[str] = []
    wait_for(settled_and_matching, timeout=30, what="iface-dumpxml labbond on a settled slave")
    listed = lab.ok("iface-list --all")
    assert re.search(r"^ lab1\.10\s+inactive", listed, re.M), listed
    assert re.search(r"^ labbond\s+inactive", listed, re.M), listed
