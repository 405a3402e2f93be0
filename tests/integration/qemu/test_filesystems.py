"""<filesystem type='mount'>: 9p served by QEMU itself, and virtiofs through the
virtiofsd of QEMU 7.2 (Debian's qemu-system-common) started for the guest, each
seen by QEMU (HMP info qtree) in a firmware-only guest; virtiofs without shared
memory is refused at define as libvirt does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon_helpers import (KVM_OK, helper_pids, module_daemon, needs_qemu, ok, privileged_daemon,
                            qemu_uri, virsh, wait_for)

pytestmark = needs_qemu

daemon = module_daemon("qemu-fs")

GUEST = """<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  {backing}
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>{devices}</devices>
</domain>
"""
SHARED = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"


def _define(uri: str, tmp_path, name: str, devices: str, backing: str = "",
            virt: str | None = None) -> None:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(GUEST.format(virt=virt or ("kvm" if KVM_OK else "qemu"), name=name,
                                backing=backing, devices=devices))
    ok(uri, f"define {xml}")


def _virtiofsd_pids(share: Path) -> list[int]:
    return helper_pids(b"virtiofsd", f"source={share}".encode())


def test_9p_shares(daemon, tmp_path):
    uri = qemu_uri(daemon)
    share = tmp_path / "dk-9p"
    share.mkdir()
    _define(uri, tmp_path, "dk-9p", f"""
      <filesystem type='mount' accessmode='mapped'><source dir='{share}'/>
        <target dir='dkshare'/><readonly/></filesystem>
      <filesystem><driver type='path' wrpolicy='immediate'/><source dir='{tmp_path}'/>
        <target dir='dkother'/></filesystem>""")
    try:
        ok(uri, "start dk-9p")
        qtree = ok(uri, "qemu-monitor-command dk-9p --hmp 'info qtree'")
        assert 'dev: virtio-9p-pci, id "fs0"' in qtree and 'mount_tag = "dkshare"' in qtree
        assert 'dev: virtio-9p-pci, id "fs1"' in qtree and 'mount_tag = "dkother"' in qtree
        assert "<alias name='fs0'/>" in ok(uri, "dumpxml dk-9p")
    finally:
        virsh(uri, "destroy dk-9p; undefine dk-9p")


@pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd needs root")
@pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"), reason="no virtiofsd")
def test_virtiofs_runs_virtiofsd_for_the_guest(daemon, tmp_path):
    uri = qemu_uri(daemon)
    share = tmp_path / "dk-vfs"
    share.mkdir()
    _define(uri, tmp_path, "dk-vfs", f"""
      <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>
        <source dir='{share}'/><target dir='dkvfs'/></filesystem>""", backing=SHARED)
    try:
        ok(uri, "start dk-vfs")
        qtree = ok(uri, "qemu-monitor-command dk-vfs --hmp 'info qtree'")
        assert 'dev: vhost-user-fs-pci, id "fs0"' in qtree and 'tag = "dkvfs"' in qtree
        assert len(_virtiofsd_pids(share)) >= 1
        ok(uri, "destroy dk-vfs")
        wait_for(lambda: not _virtiofsd_pids(share), 10)
    finally:
        virsh(uri, "destroy dk-vfs; undefine dk-vfs")


@pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root daemon")
@pytest.mark.skipif(not os.path.exists("/usr/lib/qemu/virtiofsd"), reason="no virtiofsd")
def test_9p_and_virtiofs_under_a_privileged_daemon(tmp_path):
    """QEMU runs as pyvirtd-qemu: it still reaches virtiofsd's socket (handed to
    its user) and a 9p directory it may read."""
    with privileged_daemon("pyvirtd-fs-") as (d, uri):
        share = d.root.parent / "share"
        share.mkdir(mode=0o755)
        _define(uri, tmp_path, "dk-fs-sys", f"""
          <filesystem><source dir='{share}'/><target dir='dk9p'/><readonly/></filesystem>
          <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>
            <source dir='{share}'/><target dir='dkvfs'/></filesystem>""", backing=SHARED,
                virt="qemu")          # the confined QEMU is not given /dev/kvm here
        try:
            ok(uri, "start dk-fs-sys")
            qtree = ok(uri, "qemu-monitor-command dk-fs-sys --hmp 'info qtree'")
            assert 'mount_tag = "dk9p"' in qtree and 'tag = "dkvfs"' in qtree
        finally:
            virsh(uri, "destroy dk-fs-sys; undefine dk-fs-sys")
        wait_for(lambda: not _virtiofsd_pids(share), 10)


def test_virtiofs_needs_shared_memory(daemon, tmp_path):
    uri = qemu_uri(daemon)
    xml = tmp_path / "dk-vfs-noshare.xml"
    xml.write_text(GUEST.format(virt="qemu", name="dk-vfs-noshare", backing="", devices=(
        "<filesystem type='mount'><driver type='virtiofs'/><source dir='/tmp'/>"
        "<target dir='t'/></filesystem>")))
    r = virsh(uri, f"define {xml}")
    assert r.rc != 0 and "'virtiofs' requires shared memory" in r.err, r
