"""The QEMU driver's XML against libvirt's installed RelaxNG schemas and pyvirtd's own.

One firmware-only guest with many device kinds, defined with --validate,
then started (KVM when usable, TCG otherwise): its inactive and live
dumpxml, the capabilities and domcapabilities of qemu:///session.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from pyvirtd.xml import schema

from daemon_helpers import KVM_OK, kill_guests, needs_qemu, ok, qemu_uri, start_daemon, stop_daemon

LIBVIRT_SCHEMAS = Path("/usr/share/libvirt/schemas")
pytestmark = [needs_qemu,
              pytest.mark.skipif(not (LIBVIRT_SCHEMAS / "domain.rng").exists(),
                                 reason="libvirt's RelaxNG schemas not installed")]

MANY_DEVICES = """<domain type='{virt}'>
  <name>schema-guest</name>
  <memory unit='MiB'>64</memory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
    <bootmenu enable='no'/>
  </os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
    <topology sockets='1' dies='1' cores='2' threads='1'/>
  </cpu>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
    <timer name='pit' tickpolicy='delay'/>
    <timer name='hpet' present='no'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='virtio-serial' index='0'/>
    <interface type='user'>
      <mac address='52:54:00:5c:11:01'/>
      <model type='virtio'/>
      <link state='up'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'>
      <source mode='bind' path='{agent}'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <input type='tablet' bus='usb'/>
    <input type='keyboard' bus='virtio'/>
    <graphics type='vnc' port='-1' autoport='yes'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='virtio'><stats period='5'/></memballoon>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""


def assert_valid(xml: str, kind: str, ours: str | None) -> None:
    doc = etree.fromstring(xml.encode())
    rng = etree.RelaxNG(etree.parse(str(LIBVIRT_SCHEMAS / f"{kind}.rng")))
    assert rng.validate(doc), f"libvirt's {kind}.rng: {rng.error_log}\n{xml}"
    if ours is not None:
        assert schema.errors(doc, ours) is None, f"our {ours}.rng: {schema.errors(doc, ours)}\n{xml}"


@pytest.fixture(scope="module")
def running_guest(tmp_path_factory):
    base = tmp_path_factory.mktemp("qemu-schema")
    root = base / "pyvirtd"
    disk = base / "schema.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    xml = base / "guest.xml"
    xml.write_text(MANY_DEVICES.format(virt="kvm" if KVM_OK else "qemu", disk=disk,
                                       agent=base / "agent.sock"))
    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        ok(uri, f"define {xml} --validate")
        defined = ok(uri, "dumpxml schema-guest")
        ok(uri, "start schema-guest")
        yield uri, defined
    finally:
        stop_daemon(d)
        kill_guests(root)


def test_defined_guest_xml_validates(running_guest):
    _, defined = running_guest
    assert "<watchdog model='i6300esb'" in defined
    assert_valid(defined, "domain", "domain")


def test_running_guest_xml_validates(running_guest):
    uri, _ = running_guest
    live = ok(uri, "dumpxml schema-guest")
    assert "<domain type=" in live and " id='" in live and "<alias name=" in live
    assert_valid(live, "domain", "domain")
    assert_valid(ok(uri, "dumpxml schema-guest --inactive"), "domain", "domain")
    assert_valid(ok(uri, "dumpxml schema-guest --security-info"), "domain", "domain")


def test_qemu_capabilities_validate(running_guest):
    uri, _ = running_guest
    assert_valid(ok(uri, "capabilities"), "capability", "capability")
    assert_valid(ok(uri, "domcapabilities"), "domaincaps", "domaincaps")
    assert_valid(ok(uri, "domcapabilities --machine q35 --virttype qemu"), "domaincaps",
                 "domaincaps")
