"""The network-port API over RPC (virsh net-port-*, python-libvirt), inside network namespaces.

pyvirtd runs in a HOST namespace the test creates (`test_network_netns.Lab`)
and serves qemu:///session; the networks' bridges and dnsmasqs live there.
A port made by a client has plug type none in its XML and gets its plug
from the network (libvirt's networkAllocatePort); ports survive a daemon
restart (status files) and go away with net-destroy.
"""

from __future__ import annotations

import re
import uuid as uuidlib

import libvirt
import pytest

from test_network_netns import (Lab, _qemu_driver, _start_daemon, lab, nat_xml,  # noqa: F401
                                pytestmark, run)

pytestmark = [*pytestmark, pytest.mark.skipif(not _qemu_driver(), reason="no QEMU driver")]

PORT_UUID = "1b0b6e1c-5f3e-4a53-9b1e-6b3f1e0c0a01"
OWNER_UUID = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
PORT_XML = f"""<networkport>
  <uuid>{PORT_UUID}</uuid>
  <owner><name>guest1</name><uuid>{OWNER_UUID}</uuid></owner>
  <mac address='52:54:00:AA:00:07'/>
  <bandwidth><inbound average='1000' peak='5000' burst='1024'/><outbound average='128'/></bandwidth>
  <rxfilters trustGuest='yes'/>
</networkport>"""


class Virsh:
    def __init__(self, lab: Lab) -> None:
        self.uri = f"qemu+unix:///session?socket={lab.root / 'run' / 'libvirt-sock'}"

    def __call__(self, *args, check=True):
        return run("virsh", "-c", self.uri, *args, check=check)

    def fails(self, *args) -> str:
        res = self(*args, check=False)
        assert res.returncode != 0, res.stdout
        return res.stderr


def start(lab: Lab, virsh: Virsh, xml: str, name: str) -> None:
    f = lab.tmp / f"{name}.xml"
    f.write_text(xml)
    virsh("net-define", f)
    virsh("net-start", name)


def test_virsh_port_create_list_dumpxml_delete_and_restart(lab):
    daemon = _start_daemon(lab)
    virsh = Virsh(lab)
    start(lab, virsh, nat_xml(), "nat1")
    f = lab.tmp / "port.xml"
    f.write_text(PORT_XML)
    out = virsh("net-port-create", "nat1", f).stdout
    assert f"Network port {PORT_UUID} created from {f}" in out
    assert virsh("net-port-list", "nat1", "--uuid").stdout.split() == [PORT_UUID]
    assert virsh("net-port-dumpxml", "nat1", PORT_UUID).stdout == f"""<networkport>
  <uuid>{PORT_UUID}</uuid>
  <owner>
    <name>guest1</name>
    <uuid>{OWNER_UUID}</uuid>
  </owner>
  <mac address='52:54:00:aa:00:07'/>
  <bandwidth>
    <inbound average='1000' peak='5000' burst='1024'/>
    <outbound average='128'/>
  </bandwidth>
  <rxfilters trustGuest='yes'/>
  <plug type='network' bridge='virbr0'/>
</networkport>

"""
    assert "<network connections='1'>" in virsh("net-dumpxml", "nat1").stdout
    assert "connections" not in virsh("net-dumpxml", "nat1", "--inactive").stdout

    # the same UUID twice; a plug without --reclaim (virsh has none: flags 0)
    err = virsh.fails("net-port-create", "nat1", f)
    assert f"Network port with UUID {PORT_UUID} already exists" in err, err
    plugged = lab.tmp / "plugged.xml"
    plugged.write_text(PORT_XML.replace(PORT_UUID, str(uuidlib.uuid4())).replace(
        "</networkport>", "<plug type='network' bridge='virbr0'/></networkport>"))
    assert "Port reclaim not requested but plug type is not none" in \
        virsh.fails("net-port-create", "nat1", plugged)
    nouuid = lab.tmp / "nouuid.xml"
    nouuid.write_text(re.sub(r"<uuid>[^<]*</uuid>\s*<owner>", "<owner>", PORT_XML))
    assert "network port has no uuid" in virsh.fails("net-port-create", "nat1", nouuid)

    # a daemon restart keeps the port (run-state files)
    daemon.terminate()
    daemon.wait(timeout=10)
    _start_daemon(lab)
    assert virsh("net-port-list", "nat1", "--uuid").stdout.split() == [PORT_UUID]

    virsh("net-port-delete", "nat1", PORT_UUID)
    assert virsh("net-port-list", "nat1", "--uuid").stdout.split() == []
    # (virsh 9.0 prints only its own line here, and exits 0)
    err = virsh("net-port-dumpxml", "nat1", PORT_UUID, check=False).stderr
    assert f"failed to get network port '{PORT_UUID}'" in err

    # destroying the network removes its ports; an inactive network has none to give
    virsh("net-port-create", "nat1", f)
    virsh("net-destroy", "nat1")
    assert not (lab.root / "run" / "network" / "nat1").exists()
    assert "network 'nat1' is not active" in virsh.fails("net-port-create", "nat1", f)
    assert "network 'nat1' is not active" in virsh.fails("net-port-list", "nat1")
    virsh("net-start", "nat1")
    assert virsh("net-port-list", "nat1", "--uuid").stdout.split() == []


def test_python_libvirt_port_parameters_and_direct_pool(lab):
    _start_daemon(lab)
    virsh = Virsh(lab)
    start(lab, virsh, nat_xml(), "nat1")
    conn = libvirt.open(virsh.uri)
    try:
        net = conn.networkLookupByName("nat1")
        port = net.portCreateXML(PORT_XML)
        assert port.UUIDString() == PORT_UUID
        assert [p.UUIDString() for p in net.listAllPorts()] == [PORT_UUID]
        assert net.portLookupByUUIDString(PORT_UUID).UUIDString() == PORT_UUID
        assert port.parameters() == {
            "inbound.average": 1000, "inbound.peak": 5000, "inbound.floor": 0,
            "inbound.burst": 1024, "outbound.average": 128, "outbound.peak": 0,
            "outbound.burst": 0}
        port.setParameters({"inbound.average": 2000, "outbound.average": 0})
        assert port.parameters() == {"inbound.average": 2000, "inbound.peak": 0,
                                        "inbound.floor": 0, "inbound.burst": 0}
        assert "<inbound average='2000'/>" in port.XMLDesc()
        assert "outbound" not in port.XMLDesc()
        # floor needs the network's inbound QoS
        with pytest.raises(libvirt.libvirtError) as exc:
            port.setParameters({"inbound.floor": 100})
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED
        assert "network 'nat1' has no inbound QoS set" in str(exc.value)
        missing = str(uuidlib.uuid4())
        with pytest.raises(libvirt.libvirtError) as exc:
            net.portLookupByUUIDString(missing)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_NO_NETWORK_PORT
        assert f"Network port with UUID {missing} does not exist" in str(exc.value)
        port.delete()
        assert net.listAllPorts() == []

        # a macvtap-mode network: ports get the least used device of its pool
        # (allocation only: nothing is plugged until a guest uses the port)
        direct = conn.networkDefineXML("""<network><name>pool1</name>
          <forward mode='bridge'><interface dev='up0'/><interface dev='lo'/></forward>
        </network>""")
        direct.create()
        plugs = []
        for i in range(3):
            p = direct.portCreateXML(PORT_XML.replace(PORT_UUID, str(uuidlib.uuid4())))
            plugs.append(re.search(r"<plug [^>]*>", p.XMLDesc()).group(0))
        assert plugs == ["<plug type='direct' dev='up0' mode='bridge'/>",
                         "<plug type='direct' dev='lo' mode='bridge'/>",
                         "<plug type='direct' dev='up0' mode='bridge'/>"]
        xml = direct.XMLDesc()
        assert "<network connections='3'>" in xml
        assert "<interface dev='up0' connections='2'/>" in xml, xml
    finally:
        conn.close()


def test_test_driver_has_no_ports_like_libvirts(daemon):
    """libvirt's test driver implements no port API; neither does pyvirtd's."""
    res = run("virsh", "-c", daemon.uri(), "net-port-list", "default", check=False)
    assert res.returncode != 0
    assert "this function is not supported by the connection driver: virNetworkListAllPorts" \
        in res.stderr
