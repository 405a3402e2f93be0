"""Round trips of the network, storage, interface, node device and secret XML models."""

from __future__ import annotations

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import interface, network, nodedev, secret, storage

NETWORK = """<network>
  <name>default</name>
  <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:00:00:01' name='h1' ip='192.168.122.50'/>
    </dhcp>
  </ip>
</network>
"""

POOL = """<pool type='netfs'>
  <name>nfs</name>
  <uuid>89c7d40d-b769-4abd-9022-6742ed307f42</uuid>
  <capacity unit='bytes'>107374182400</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>107374182400</available>
  <source>
    <host name='nfs.example.com'/>
    <dir path='/export'/>
    <format type='auto'/>
  </source>
  <target>
    <path>/mnt/nfs</path>
  </target>
</pool>
"""

VOLUME = """<volume type='file'>
  <name>q.qcow2</name>
  <key>/p/q.qcow2</key>
  <capacity unit='bytes'>2147483648</capacity>
  <allocation unit='bytes'>0</allocation>
  <target>
    <path>/p/q.qcow2</path>
    <format type='qcow2'/>
  </target>
</volume>
"""

IFACE = """<interface type='ethernet' name='eth1'>
  <start mode='onboot'/>
  <mtu size='1492'/>
  <protocol family='ipv4'>
    <ip address='192.168.0.5' prefix='24'/>
    <route gateway='192.168.0.1'/>
  </protocol>
  <mac address='aa:bb:cc:dd:ee:ff'/>
</interface>
"""

NODEDEV = """<device>
  <name>scsi_host1</name>
  <parent>computer</parent>
  <capability type='scsi_host'>
    <host>1</host>
    <unique_id>0</unique_id>
    <capability type='fc_host'>
      <wwnn>2000000012341234</wwnn>
      <wwpn>1000000012341234</wwpn>
      <fabric_wwn>2000000043214321</fabric_wwn>
    </capability>
    <capability type='vport_ops'>
      <max_vports>0</max_vports>
      <vports>0</vports>
    </capability>
  </capability>
</device>
"""

SECRET = """<secret ephemeral='no' private='yes'>
  <uuid>aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee</uuid>
  <description>ceph key</description>
  <usage type='ceph'>
    <name>client.admin</name>
  </usage>
</secret>
"""


def test_network_round_trip() -> None:
    assert network.format(network.parse(NETWORK)) == NETWORK


def test_network_defaults_and_order() -> None:
    text = ("<network><ip netmask='255.255.255.0' address='10.0.0.1'/>"
            "<bridge name='br9'/><name>n</name>"
            "<uuid>11111111-2222-3333-4444-555555555555</uuid></network>")
    assert network.format(network.parse(text)) == (
        "<network>\n  <name>n</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n"
        "  <bridge name='br9' stp='on' delay='0'/>\n"
        "  <ip address='10.0.0.1' netmask='255.255.255.0'/>\n</network>\n")


def test_network_update_dhcp_host() -> None:
    net = network.parse(NETWORK)
    host = "<host mac='52:54:00:00:00:02' name='h2' ip='192.168.122.51'/>"
    network.update(net, network.CMD_ADD_LAST, network.SECTION_IP_DHCP_HOST, -1, host)
    assert host in network.format(net)
    with pytest.raises(VirError) as exc:
        network.update(net, network.CMD_ADD_LAST, network.SECTION_IP_DHCP_HOST, -1, host)
    assert exc.value.code == P.VIR_ERR_OPERATION_INVALID
    network.update(net, network.CMD_DELETE, network.SECTION_IP_DHCP_HOST, -1, host)
    assert network.format(net) == NETWORK


@pytest.mark.parametrize("text, code", [
    ("<network><bridge name='x'/></network>", P.VIR_ERR_NO_NAME),
    ("<network", P.VIR_ERR_XML_DETAIL),
    ("<pool/>", P.VIR_ERR_XML_ERROR),
])
def test_network_invalid(text: str, code: int) -> None:
    with pytest.raises(VirError) as exc:
        network.parse(text)
    assert exc.value.code == code


def test_pool_round_trip() -> None:
    assert storage.format_pool(storage.parse_pool(POOL)) == POOL


def test_pool_empty_source_is_an_open_close_pair() -> None:
    pool = storage.parse_pool("<pool type='dir'><name>p</name><target><path>/p/</path>"
                              "</target></pool>")
    pool.set_sizes(10, 0, 10)
    assert "  <source>\n  </source>\n" in storage.format_pool(pool)
    assert pool.target_path == "/p"


def test_pool_invalid_type() -> None:
    with pytest.raises(VirError) as exc:
        storage.parse_pool("<pool type='bogus'><name>p</name></pool>")
    assert exc.value.message == ("XML error: Invalid value for attribute 'type' in element "
                                 "'pool': 'bogus'.")


def test_volume_round_trip_and_units() -> None:
    assert storage.format_volume(storage.parse_volume(VOLUME, "dir")) == VOLUME
    vol = storage.parse_volume("<volume><name>v</name><capacity unit='MiB'>100</capacity>"
                               "</volume>", "dir")
    assert (vol.capacity, vol.allocation) == (100 * 1024 ** 2, 100 * 1024 ** 2)
    vol.place("/p/v")
    assert vol.key == vol.path == "/p/v"
    assert "<format type='raw'/>" in storage.format_volume(vol)


def test_interface_round_trip() -> None:
    assert interface.format(interface.parse(IFACE)) == IFACE


def test_nodedev_round_trip() -> None:
    dev = nodedev.parse(NODEDEV)
    assert nodedev.format(dev) == NODEDEV
    assert dev.caps == ["scsi_host"]
    assert dev.has_cap("fc_host") and dev.has_cap("vports") and not dev.has_cap("net")
    assert dev.wwns() == ("2000000012341234", "1000000012341234")


def test_secret_round_trip() -> None:
    sec = secret.parse(SECRET)
    assert secret.format(sec) == SECRET
    assert (sec.usage_number, sec.usage_id, sec.private) == (2, "client.admin", True)
