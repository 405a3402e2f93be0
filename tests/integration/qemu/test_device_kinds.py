"""The smaller device kinds run in a real QEMU: <panic>, <iommu>, <hub>, <parallel>, <shmem>,
<smartcard> (passthrough),
audio backends, rng backends and the character device types, each seen by QEMU itself
(HMP ``info qtree``, QMP ``query-chardev``) in a firmware-only guest; and what
cannot run here (<vsock> without /dev/vhost-vsock, a stdio chardev) fails at start
with a clear error while the definition is kept."""

from __future__ import annotations

import json
import os
import socket

import pytest

from daemon_helpers import KVM_OK, guest_pid, module_daemon, needs_qemu, ok, qemu_uri, virsh

pytestmark = needs_qemu

daemon = module_daemon("qemu-devkinds")

GUEST = """<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <features><acpi/>{features}</features>
  <devices>
{devices}
  </devices>
</domain>
"""


def _define(uri: str, tmp_path, name: str, devices: str, *, machine: str = "q35",
            features: str = "") -> None:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(GUEST.format(virt="kvm" if KVM_OK else "qemu", name=name, machine=machine,
                                features=features, devices=devices))
    ok(uri, f"define {xml}")


def _argv(daemon, name: str) -> list[str]:
    """The command line of a running guest's QEMU."""
    pid = guest_pid(daemon.root, name)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def _hmp(uri: str, name: str, command: str) -> str:
    return ok(uri, f"qemu-monitor-command {name} --hmp '{command}'")


def _qmp(uri: str, name: str, command: str) -> dict:
    return json.loads(ok(uri, f"qemu-monitor-command {name} '{{\"execute\":\"{command}\"}}'"))


@pytest.fixture
def egd_server():
    """A listening TCP socket for the egd rng backend to connect to."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    yield srv.getsockname()[1]
    srv.close()


def test_small_device_kinds_run_in_qemu(daemon, tmp_path, egd_server):
    uri = qemu_uri(daemon)
    wav = tmp_path / "dk-audio.wav"
    log = tmp_path / "dk-serial.log"
    fifo = tmp_path / "dk-pipe"
    os.mkfifo(fifo)
    os.chmod(tmp_path, 0o777)          # a QEMU running as another user writes here
    devices = f"""
    <serial type='file'><source path='{log}'/></serial>
    <serial type='null'/>
    <serial type='vc'/>
    <parallel type='pty'/>
    <channel type='pipe'><source path='{fifo}'/>
      <target type='virtio' name='org.dk.pipe'/></channel>
    <channel type='udp'><source mode='bind' host='127.0.0.1' service='0'/>
      <source mode='connect' host='127.0.0.1' service='9'/><target type='virtio' name='org.dk.udp'/></channel>
    <channel type='tcp'><source mode='bind' host='127.0.0.1' service='0'/>
      <target type='virtio' name='org.dk.tcp'/></channel>
    <hub type='usb'/>
    <audio id='1' type='file' path='{wav}'/>
    <rng model='virtio'><backend model='builtin'/></rng>
    <rng model='virtio'><backend model='egd' type='tcp'>
      <source mode='connect' host='127.0.0.1' service='{egd_server}'/>
      <protocol type='raw'/></backend></rng>
    <panic model='isa'><address type='isa' iobase='0x505'/></panic>
    <shmem name='dk-shm-{os.getpid()}'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>
    <iommu model='intel'/>"""
    _define(uri, tmp_path, "dk-all", devices)
    ok(uri, "start dk-all")
    try:
        qtree = _hmp(uri, "dk-all", "info qtree")
        for what in ('dev: pvpanic', 'ioport = 1285', 'dev: intel-iommu, id "iommu0"',
                     'dev: usb-hub, id "hub0"', 'dev: isa-parallel, id "parallel0"',
                     'dev: ivshmem-plain, id "shmem0"', 'dev: virtio-rng-pci, id "rng0"',
                     'dev: virtio-rng-pci, id "rng1"', 'dev: isa-serial, id "serial2"',
                     'dev: virtserialport, id "channel0"', 'name = "org.dk.udp"'):
            assert what in qtree, what
        chardevs = {c["label"]: c["filename"]
                    for c in _qmp(uri, "dk-all", "query-chardev")["return"]}
        assert chardevs["charserial0"] == "file"
        assert chardevs["charparallel0"].startswith("pty:")
        assert chardevs["charserial2"].startswith("vc")
        assert chardevs["charchannel0"].startswith("pipe")
        assert chardevs["charchannel1"] == "udp"
        assert chardevs["charrng1"].endswith(f"<-> 127.0.0.1:{egd_server}")   # connected
        argv = _argv(daemon, "dk-all")
        assert json.loads(argv[argv.index("-audiodev") + 1]) == {
            "id": "audio1", "driver": "wav", "path": str(wav)}
        assert os.path.exists(f"/dev/shm/dk-shm-{os.getpid()}")
        live = ok(uri, "dumpxml dk-all")
        for alias in ("hub0", "parallel0", "shmem0", "iommu0", "rng1"):
            assert f"<alias name='{alias}'/>" in live, alias
        assert "<parallel type='pty'>" in live and "<source path='/dev/pts/" in live
    finally:
        virsh(uri, "destroy dk-all; undefine dk-all")
        try:
            os.unlink(f"/dev/shm/dk-shm-{os.getpid()}")
        except FileNotFoundError:
            pass


def test_smartcard_passthrough_on_a_ccid_controller(daemon, tmp_path, egd_server):
    uri = qemu_uri(daemon)
    _define(uri, tmp_path, "dk-card", f"""
    <smartcard mode='passthrough' type='tcp'>
      <source mode='connect' host='127.0.0.1' service='{egd_server}'/><protocol type='raw'/>
    </smartcard>""")
    try:
        inactive = ok(uri, "dumpxml --inactive dk-card")
        assert "<controller type='ccid' index='0'>" in inactive
        assert "<address type='ccid' controller='0' slot='0'/>" in inactive
        ok(uri, "start dk-card")
        qtree = _hmp(uri, "dk-card", "info qtree")
        assert 'dev: usb-ccid, id "ccid0"' in qtree
        assert 'dev: ccid-card-passthru, id "smartcard0"' in qtree
        chardevs = {c["label"]: c["filename"]
                    for c in _qmp(uri, "dk-card", "query-chardev")["return"]}
        assert chardevs["charsmartcard0"].endswith(f"<-> 127.0.0.1:{egd_server}")
    finally:
        virsh(uri, "destroy dk-card; undefine dk-card")


def test_intel_iommu_needs_q35(daemon, tmp_path):
    uri = qemu_uri(daemon)
    xml = tmp_path / "dk-iommu.xml"
    xml.write_text(GUEST.format(virt="qemu", name="dk-iommu-pc", machine="pc", features="",
                                devices="<iommu model='intel'/>"))
    r = virsh(uri, f"define {xml}")
    assert r.rc != 0 and "IOMMU device: 'intel' is only supported with Q35 machines" in r.err


def test_intel_iommu_interrupt_remapping_uses_split_irqchip(daemon, tmp_path):
    uri = qemu_uri(daemon)
    _define(uri, tmp_path, "dk-intremap", "<iommu model='intel'><driver intremap='on'/></iommu>",
            features="<ioapic driver='qemu'/>")
    ok(uri, "start dk-intremap")
    try:
        qtree = _hmp(uri, "dk-intremap", "info qtree")
        assert 'dev: intel-iommu, id "iommu0"' in qtree
        assert "intremap = \"on\"" in qtree or "intremap = on" in qtree
    finally:
        virsh(uri, "destroy dk-intremap; undefine dk-intremap")


@pytest.mark.skipif(os.path.exists("/dev/vhost-vsock"), reason="this host has vhost-vsock")
def test_vsock_without_vhost_vsock_fails_at_start_and_is_kept(daemon, tmp_path):
    uri = qemu_uri(daemon)
    _define(uri, tmp_path, "dk-vsock", "<vsock model='virtio'><cid auto='yes'/></vsock>")
    try:
        r = virsh(uri, "start dk-vsock")
        assert r.rc != 0 and "unable to open vhost-vsock device: No such file or directory" \
            in r.err, r
        assert "<cid auto='yes'/>" in ok(uri, "dumpxml --inactive dk-vsock")
        assert "shut off" in ok(uri, "domstate dk-vsock")
    finally:
        virsh(uri, "undefine dk-vsock")


def test_stdio_chardev_is_refused_at_start(daemon, tmp_path):
    uri = qemu_uri(daemon)
    _define(uri, tmp_path, "dk-stdio", "<serial type='stdio'/>", machine="pc")
    try:
        r = virsh(uri, "start dk-stdio")
        assert r.rc != 0 and "character device type 'stdio' is not supported" in r.err, r
    finally:
        virsh(uri, "undefine dk-stdio")
