"""Guests users already have, defined and run on pyvirtd's QEMU driver with real clients.

The losses and crashes of issue #13, each through virsh or python-libvirt
against a real daemon and real QEMU: PCI-heavy definitions, what a define
must keep, two guests sharing one disk, <qemu:commandline>, nova's
<vmcoreinfo>, kinds the driver cannot run yet (kept, refused at start), and
the NVRAM file at undefine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from daemon_helpers import (KVM_OK, guest_pid, module_daemon, module_uri, needs_qemu, ok,
                            virsh)

pytestmark = needs_qemu

daemon = module_daemon("qemu-fidelity")
uri = module_uri
VIRT = "kvm" if KVM_OK else "qemu"


def _disk_name(i: int) -> str:
    name, i = "", i + 1
    while i:
        i -= 1
        name, i = chr(97 + i % 26) + name, i // 26
    return "vd" + name


def _guest(name: str, devices: str = "", *, top: str = "", os_extra: str = "",
           machine: str = "pc", ns: str = "") -> str:
    return (f"<domain type='{VIRT}'{ns}><name>{name}</name><memory unit='MiB'>64</memory>"
            f"{top}<os><type arch='x86_64' machine='{machine}'>hvm</type>{os_extra}</os>"
            f"<devices>{devices}</devices></domain>")


def _disks(tmp_path: Path, n: int, extra: str = "") -> str:
    out = []
    for i in range(n):
        img = tmp_path / f"d{i}.img"
        img.write_bytes(b"")
        out.append(f"<disk type='file' device='disk'><source file='{img}'/>"
                   f"<target dev='{_disk_name(i)}' bus='virtio'/>{extra}</disk>")
    return "".join(out)


def _define(uri: str, tmp_path: Path, name: str, xml: str):
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return virsh(uri, f"define {path}")


def test_pci_heavy_definitions_grow_the_topology(uri, tmp_path):
    # 29 virtio disks and the balloon: one more device than the pc's bus 0 holds
    r = _define(uri, tmp_path, "pcigrow", _guest("pcigrow", _disks(tmp_path, 29)))
    assert r.rc == 0, r.err
    xml = ok(uri, "dumpxml pcigrow")
    assert "<controller type='pci' index='1' model='pci-bridge'>" in xml
    assert "bus='0x01' slot='0x01'" in xml
    # the same on q35 with conventional NICs: a pcie-to-pci-bridge, then a pci-bridge
    nics = "".join("<interface type='user'><model type='e1000'/></interface>" for _ in range(32))
    r = _define(uri, tmp_path, "q35grow", _guest("q35grow", nics, machine="q35"))
    assert r.rc == 0, r.err
    xml = ok(uri, "dumpxml q35grow")
    assert "model='pcie-to-pci-bridge'" in xml and "model='pci-bridge'" in xml
    # every slot taken but the one a new bridge would need: refused as libvirt does
    r = _define(uri, tmp_path, "pcifull", _guest("pcifull", _disks(tmp_path, 59)))
    assert r.rc != 0
    assert "a PCI slot is needed to connect a PCI controller model='pci-bridge'" in r.err
    assert "StopIteration" not in r.err
    # and the bridged guest runs: QEMU accepts the topology
    ok(uri, "start pcigrow --paused")
    ok(uri, "destroy pcigrow; undefine pcigrow; undefine q35grow")


def test_define_keeps_what_the_user_wrote(daemon, uri, tmp_path):
    img = tmp_path / "keep.img"
    img.write_bytes(b"")
    xml = _guest(
        "keep",
        f"<disk type='file' device='disk'><driver name='qemu' type='raw' ioeventfd='on' "
        f"event_idx='off' detect_zeroes='on' iothread='1' queues='2'/><source file='{img}'/>"
        f"<target dev='vda' bus='virtio'/></disk>",
        top="<vcpu placement='static' cpuset='0'>2</vcpu><iothreads>1</iothreads>"
            "<iothreadids><iothread id='1'/></iothreadids>"
            "<cputune><vcpupin vcpu='0' cpuset='0'/></cputune>"
            "<features><acpi/><vmcoreinfo state='on'/></features>"
            "<cpu mode='custom' match='exact'><model>qemu64</model>"
            "<numa><cell cpus='0-1' memory='64' unit='MiB' memAccess='shared'/></numa></cpu>"
            "<seclabel type='none' model='none'/>",
        os_extra="", ns=" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'")
    xml = xml.replace("</devices>", "</devices><qemu:commandline>"
                      "<qemu:arg value='-set'/><qemu:arg value='device.virtio-disk0.serial=kept'/>"
                      "</qemu:commandline>")
    r = _define(uri, tmp_path, "keep", xml)
    assert r.rc == 0, r.err
    out = ok(uri, "dumpxml --inactive keep")
    for piece in ("<vcpu placement='static' cpuset='0'>2</vcpu>",
                  "<iothreadids>", "<vcpupin vcpu='0' cpuset='0'/>",
                  "ioeventfd='on' event_idx='off' iothread='1' detect_zeroes='on' queues='2'",
                  "<vmcoreinfo state='on'/>",
                  f"<cpu mode='custom' match='exact' check='{'partial' if VIRT == 'kvm' else 'none'}'>",
                  "<model fallback='allow'>qemu64</model>",
                  "<cell id='0' cpus='0-1' memory='65536' unit='KiB' memAccess='shared'/>",
                  "<seclabel type='none' model='none'/>",
                  "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'",
                  "<qemu:arg value='device.virtio-disk0.serial=kept'/>"):
        assert piece in out, piece
    # it runs, and QEMU got the passthrough args and the vmcoreinfo device (nova)
    ok(uri, "start keep --paused")
    cmdline = Path(f"/proc/{guest_pid(daemon.root, 'keep')}/cmdline").read_bytes().split(b"\0")
    assert b"device.virtio-disk0.serial=kept" in cmdline and b"vmcoreinfo" in cmdline
    assert any(b"ioeventfd=on" in a and b"num-queues=2" in a for a in cmdline)
    ok(uri, "destroy keep; undefine keep")


def test_two_guests_share_a_shareable_disk(uri, tmp_path):
    img = tmp_path / "shared.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(img), "1M"], check=True)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            f"<source file='{img}'/><target dev='vda' bus='virtio'/><shareable/></disk>")
    for name in ("share1", "share2"):
        r = _define(uri, tmp_path, name, _guest(name, disk))
        assert r.rc == 0, r.err
    ok(uri, "start share1 --paused")
    r = virsh(uri, "start share2 --paused")       # without share-rw: QEMU's write lock
    assert r.rc == 0, r.err
    assert ok(uri, "domstate share2").strip() == "paused"
    ok(uri, "destroy share1; destroy share2; undefine share1; undefine share2")


def test_kinds_not_runnable_are_kept_and_refused_at_start(uri, tmp_path):
    xml = _guest("kinds", "<panic model='hyperv'/><vsock model='virtio'><cid auto='yes'/></vsock>"
                 "<interface type='udp'><source address='127.0.0.1' port='5555'>"
                 "<local address='127.0.0.1' port='5556'/></source></interface>")
    r = _define(uri, tmp_path, "kinds", xml)
    assert r.rc == 0, r.err
    out = ok(uri, "dumpxml kinds")
    assert "<panic model='hyperv'/>" in out and "<local address='127.0.0.1' port='5556'/>" in out
    r = virsh(uri, "start kinds")
    assert r.rc != 0 and "unsupported configuration" in r.err
    assert "interface type 'udp'" in r.err or "panic model 'hyperv'" in r.err
    assert ok(uri, "domstate kinds").strip() == "shut off"
    ok(uri, "undefine kinds")


def test_undefine_and_the_nvram_file(uri, tmp_path):
    import libvirt

    code = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    if not code.exists():
        pytest.skip("OVMF is not installed")
    nvram = tmp_path / "nv_VARS.fd"

    def define() -> None:
        r = _define(uri, tmp_path, "nv", _guest(
            "nv", machine="q35", top="<features><acpi/></features>",
            os_extra=f"<loader readonly='yes' type='pflash'>{code}</loader>"
                     f"<nvram>{nvram}</nvram>"))
        assert r.rc == 0, r.err

    define()
    ok(uri, "undefine nv")                       # no NVRAM file yet: nothing to refuse
    nvram.write_bytes(b"vars")
    define()
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("nv")
        with pytest.raises(libvirt.libvirtError) as info:
            dom.undefine()
        assert info.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        assert "cannot undefine domain with nvram" in str(info.value)
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
        assert nvram.exists()
        define()
        conn.lookupByName("nv").undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        assert not nvram.exists()
    finally:
        conn.close()
