"""Host interfaces over qemu:// (libvirt's read-only udev backend), in a network namespace.

pyvirtd runs in a HOST namespace the test creates (`test_network_netns.Lab`:
it has lo and up0, a veth to the OUT namespace); the test adds a bridge
br0 with a veth port, the veth's other end ve1, and a tap vnet0 on br0 as a
guest's would be.  virsh iface-* must see what libvirtd's udev backend
shows: bridge ports and taps are not listed, active means operstate up,
and nothing can be defined or started.  (This kernel has no vlan or
bonding driver: those types are exercised in the lab VM, tests/lab.)
"""

from __future__ import annotations

import re

import pytest

from test_network_netns import Lab, _qemu_driver, _start_daemon, pytestmark, run  # noqa: F401
from tests.conftest import wait_for

pytestmark = [*pytestmark, pytest.mark.skipif(not _qemu_driver(), reason="no QEMU driver")]

MAC_VE0, MAC_VE1 = "52:54:00:3a:00:01", "52:54:00:3a:00:02"
# The links the tests see active: their operstate must be "up" before they look.
UP = ("br0", "ve0", "ve1", "up0")


@pytest.fixture
def lab(tmp_path):
    lab = Lab(tmp_path)
    try:
        host = lab.host
        lab.ns(host, "ip", "link", "add", "br0", "type", "bridge", "stp_state", "0",
               "forward_delay", "0")
        lab.ns(host, "ip", "link", "add", "ve0", "address", MAC_VE0, "type", "veth",
               "peer", "name", "ve1", "address", MAC_VE1)
        lab.ns(host, "ip", "link", "set", "ve0", "master", "br0", "up")
        lab.ns(host, "ip", "link", "set", "ve1", "mtu", "1400", "up")
        lab.ns(host, "ip", "tuntap", "add", "vnet0", "mode", "tap")
        lab.ns(host, "ip", "link", "set", "vnet0", "master", "br0")
        lab.ns(host, "ip", "link", "set", "br0", "up")
        lab.ns(host, "ip", "link", "add", "vdown", "type", "veth", "peer", "name", "vdown1")
        # the kernel sets operstates a moment after the links go up (the bridge once
        # it noticed its port's carrier): the tests expect them all up
        def operstates() -> list[str]:
            return lab.ns(host, "cat", *(f"/sys/class/net/{name}/operstate"
                                         for name in UP)).stdout.split()
        wait_for(lambda: operstates() == ["up"] * len(UP), timeout=10,
                 what=f"{UP} up")
        yield lab
    finally:
        lab.close()


def test_virsh_iface_list_dumpxml_mac_name(lab):
    _start_daemon(lab)
    uri = f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}"

    def virsh(*args, check=True):
        return run("virsh", "-c", uri, *args, check=check)

    def listing(*flags):
        out = virsh("iface-list", *flags).stdout
        return {m.group(1): (m.group(2), m.group(3))
                for m in re.finditer(r"^ (\S+)\s+(active|inactive)\s+(\S+)$", out, re.M)}

    up0_mac = lab.ns(lab.host, "cat", "/sys/class/net/up0/address").stdout.strip()
    everything = listing("--all")
    # ve0 and vnet0 are bridge ports, vnet0 also a tap: neither is listed;
    # lo's operstate is "unknown", so it is inactive
    assert everything == {
        "br0": ("active", lab.ns(lab.host, "cat", "/sys/class/net/br0/address").stdout.strip()),
        "lo": ("inactive", "00:00:00:00:00:00"),
        "up0": ("active", up0_mac),
        "ve1": ("active", MAC_VE1),
        "vdown": ("inactive", everything["vdown"][1]),
        "vdown1": ("inactive", everything["vdown1"][1]),
    }
    assert set(listing()) == {"br0", "up0", "ve1"}
    assert set(listing("--inactive")) == {"lo", "vdown", "vdown1"}

    assert virsh("iface-dumpxml", "br0").stdout == f"""<interface type='bridge' name='br0'>
  <mtu size='1500'/>
  <bridge stp='off' delay='0'>
    <interface type='ethernet' name='ve0'>
      <link speed='10000' state='up'/>
      <mac address='{MAC_VE0}'/>
    </interface>
  </bridge>
</interface>

"""
    assert virsh("iface-dumpxml", "ve1").stdout == f"""<interface type='ethernet' name='ve1'>
  <mtu size='1400'/>
  <link speed='10000' state='up'/>
  <mac address='{MAC_VE1}'/>
</interface>

"""
    assert "<link state='down'/>" in virsh("iface-dumpxml", "vdown").stdout
    assert virsh("iface-mac", "ve1").stdout.strip() == MAC_VE1
    assert virsh("iface-name", MAC_VE1).stdout.strip() == "ve1"
    # a port is not listed but can still be looked up by name (udev does)
    assert virsh("iface-mac", "ve0").stdout.strip() == MAC_VE0

    err = virsh("iface-dumpxml", "nosuch", check=False).stderr
    assert "couldn't find interface named 'nosuch'" in err
    err = virsh("iface-name", "52:54:00:ff:ff:ff", check=False).stderr
    assert "couldn't find interface with MAC address '52:54:00:ff:ff:ff'" in err

    # read-only, like the udev backend: no define, start, stop, transactions
    f = lab.tmp / "if.xml"
    f.write_text("<interface type='ethernet' name='eth9'><mac address='52:54:00:00:00:09'/>"
                 "</interface>")
    for args, api in ((("iface-define", f), "virInterfaceDefineXML"),
                      (("iface-start", "vdown"), "virInterfaceCreate"),
                      (("iface-destroy", "ve1"), "virInterfaceDestroy"),
                      (("iface-undefine", "ve1"), "virInterfaceUndefine"),
                      (("iface-begin",), "virInterfaceChangeBegin")):
        res = virsh(*args, check=False)
        assert res.returncode != 0
        assert f"this function is not supported by the connection driver: {api}" in res.stderr
    assert "ve1" in listing()   # still there, still up


def test_python_libvirt_interfaces(lab):
    import libvirt

    _start_daemon(lab)
    conn = libvirt.open(f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}")
    try:
        names = sorted(i.name() for i in conn.listAllInterfaces(
            libvirt.VIR_CONNECT_LIST_INTERFACES_INACTIVE))
        assert names == ["lo", "vdown", "vdown1"]
        assert conn.numOfDefinedInterfaces() == 2     # lo is neither up nor down
        iface = conn.interfaceLookupByMACString(MAC_VE1)
        assert iface.name() == "ve1" and iface.isActive() == 1
        assert conn.interfaceLookupByName("vdown").isActive() == 0
        with pytest.raises(libvirt.libvirtError) as exc:
            conn.interfaceLookupByName("nosuch")
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_INTERFACE
        assert exc.value.get_error_domain() == libvirt.VIR_FROM_INTERFACE
    finally:
        conn.close()
