"""A guest whose disk is a storage volume (<disk type='volume'>), on pyvirtd's QEMU driver.

The proof of the storage issue: a root file system image goes into a dir pool
with ``virsh vol-upload``, a TCG guest names that volume as its disk and
boots from it (the tiny guest's initramfs mounts ``root=/dev/vda`` and
switch_roots into it), runs commands there and writes a file that is then
read back from the volume with ``virsh vol-download``.  The errors of a
volume disk that cannot be resolved are libvirtd 9.0's, as virsh prints
them and as python-libvirt reports their codes.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess

import pytest

from daemon_helpers import guest_pids, kill_guests, module_daemon, module_uri, needs_qemu, ok, qemu_uri, start_daemon, stop_daemon, virsh
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml

pytestmark = [needs_qemu,
              pytest.mark.skipif(shutil.which("mke2fs") is None, reason="mke2fs (e2fsprogs) missing")]

BOOT_TIMEOUT = 90
MiB = 1024 * 1024

VOLUME_DISK = """<disk type='volume' device='disk'>
      <source pool='{pool}' volume='{volume}'{extra}/>
      <target dev='{target}' bus='virtio'/>
    </disk>"""

# a guest that is never booted: only its start's errors matter
UNBOOTED = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>{disks}</devices>
</domain>
"""


daemon = module_daemon("volume-disks")

uri = module_uri


@pytest.fixture(scope="module")
def pool(uri, tmp_path_factory):
    """An active dir pool 'guests'."""
    target = tmp_path_factory.mktemp("pool-guests")
    ok(uri, f"pool-define-as guests dir --target {target}; pool-start guests")
    return target


def disk_xml(pool: str, volume: str, target: str = "vda", extra: str = "") -> str:
    return VOLUME_DISK.format(pool=pool, volume=volume, target=target, extra=extra)


def test_guest_boots_from_a_volume(uri, daemon, pool, tmp_path):
    from tests.guest.build import make_root_image

    guest = tiny_guest()
    token = secrets.token_hex(8)
    image = tmp_path / "root.img"
    make_root_image(image, files={"etc/volume-id": f"{token}\n".encode()}, size_mib=16)
    ok(uri, "vol-create-as guests root.img 16M --format raw")
    ok(uri, f"vol-upload --pool guests root.img {image}")

    xml = tmp_path / "vroot.xml"
    xml.write_text(tiny_xml("vroot", guest, disks=disk_xml("guests", "root.img"),
                            cmdline_extra="root=/dev/vda"))
    ok(uri, f"define {xml}")
    ok(uri, "start vroot --paused")     # the console is there before the kernel speaks
    console = Console(uri, "vroot")
    try:
        ok(uri, "resume vroot")
        console.wait(r"GUEST ROOT /dev/vda", timeout=BOOT_TIMEOUT)
        console.wait("GUEST ROOTFS READY", timeout=BOOT_TIMEOUT)
        console.wait(re.escape(PROMPT))
        # the shell runs on the volume's file system: its root is /dev/vda, its files are ours
        console.run("cat /etc/volume-id", token)
        console.run("grep ' / ' /proc/mounts", r"/dev/vda / ext4 rw")
        console.run("echo written-by-$(hostname) > /proof; sync; echo synced", r"\nsynced")
    finally:
        console.close()

    live = ok(uri, "dumpxml vroot")
    disk = re.search(r"<disk type='volume' device='disk'>.*?</disk>", live, re.S).group(0)
    # as libvirtd shows it: pool and volume stay, the format it runs with is filled in,
    # the running image has an index and (raw) an empty backing chain
    assert "<driver name='qemu' type='raw'/>" in disk
    assert "<source pool='guests' volume='root.img' index='1'/>\n      <backingStore/>" in disk
    assert str(pool) not in live
    assert re.search(r"^\s*vda\s+root\.img\s*$", ok(uri, "domblklist vroot"), re.M)
    assert re.search(r"^\s*volume\s+disk\s+vda\s+root\.img\s*$",
                     ok(uri, "domblklist vroot --details"), re.M)
    assert re.search(rf"Capacity:\s+{16 * MiB}\b", ok(uri, "domblkinfo vroot vda"))

    ok(uri, "destroy vroot")
    back = tmp_path / "back.img"
    ok(uri, f"vol-download --pool guests root.img {back}")
    # the guest's sync committed /proof to ext4's journal, which debugfs does not read:
    # replay it first (e2fsck: 0 clean, 1 "file system modified" by the replay)
    fsck = subprocess.run(["e2fsck", "-fy", str(back)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr
    proof = subprocess.run(["debugfs", "-R", "cat /proof", str(back)], capture_output=True,
                           text=True, check=True).stdout
    assert proof.strip() == "written-by-rootguest"
    ok(uri, "undefine vroot")


def _define(uri, tmp_path, name: str, disks: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(UNBOOTED.format(name=name, disks=disks))
    ok(uri, f"define {path}")


@pytest.mark.parametrize("name, disks, message, code, domain", [
    ("nopool", disk_xml("nosuchpool", "x.img"),
     "Storage pool not found: no storage pool with matching name 'nosuchpool'",
     "VIR_ERR_NO_STORAGE_POOL", "VIR_FROM_STORAGE"),
    ("novol", disk_xml("guests", "nosuchvol"),
     "Storage volume not found: no storage vol with matching name 'nosuchvol'",
     "VIR_ERR_NO_STORAGE_VOL", "VIR_FROM_STORAGE"),
    # libvirt resolves the last disk first, so vdb's pool is the one reported
    ("cold", disk_xml("guests", "data.img") + disk_xml("cold", "c.img", "vdb"),
     "unsupported configuration: storage pool 'cold' containing volume 'c.img' is not active",
     "VIR_ERR_CONFIG_UNSUPPORTED", "VIR_FROM_DOMAIN"),
    ("mode", disk_xml("guests", "data.img", extra=" mode='host'"),
     "XML error: disk source mode is only valid when storage pool is of iscsi type",
     "VIR_ERR_XML_ERROR", "VIR_FROM_DOMAIN"),
])
def test_volume_disk_errors(uri, daemon, pool, tmp_path, name, disks, message, code, domain):
    import libvirt

    if "cold" in disks:
        virsh(uri, f"pool-define-as cold dir --target {tmp_path / 'cold'}")
    virsh(uri, "vol-create-as guests data.img 1M")
    _define(uri, tmp_path, name, disks)
    r = virsh(uri, f"start {name}")
    assert r.rc == 1
    assert r.err == f"error: Failed to start domain '{name}'\nerror: {message}\n"
    conn = libvirt.open(uri)
    try:
        with pytest.raises(libvirt.libvirtError) as info:
            conn.lookupByName(name).create()
        assert info.value.get_error_code() == getattr(libvirt, code)
        assert info.value.get_error_domain() == getattr(libvirt, domain)
    finally:
        conn.close()
    assert "shut off" in ok(uri, f"domstate {name}")
    assert not guest_pids(daemon.root)
    ok(uri, f"undefine {name}")


def test_volume_disk_after_a_daemon_restart(tmp_path):
    """A restarted daemon resolves a running guest's volume disks again (as
    libvirt's qemuProcessReconnect does): block info still finds the file."""
    import signal

    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        ok(uri, f"pool-define-as keep dir --target {tmp_path / 'keep'}; pool-build keep; "
                "pool-start keep; vol-create-as keep d.img 3M")
        _define(uri, tmp_path, "survivor", disk_xml("keep", "d.img"))
        ok(uri, "start survivor --paused")
        assert re.search(rf"Capacity:\s+{3 * MiB}\b", ok(uri, "domblkinfo survivor vda"))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d = start_daemon(root)
        uri = qemu_uri(d)
        assert "paused" in ok(uri, "domstate survivor")
        assert re.search(rf"Capacity:\s+{3 * MiB}\b", ok(uri, "domblkinfo survivor vda"))
        assert re.search(r"^\s*vda\s+d\.img\s*$", ok(uri, "domblklist survivor"), re.M)
        ok(uri, "destroy survivor")
    finally:
        stop_daemon(d)
        kill_guests(root)


def test_block_info_of_an_inactive_guests_volume_disk(uri, daemon, pool, tmp_path):
    """Resolved only at start: libvirtd 9.0 answers block info of a shut-off guest's
    volume disk with its storage code's internal error."""
    import libvirt

    virsh(uri, "vol-create-as guests data.img 1M")
    _define(uri, tmp_path, "idle", disk_xml("guests", "data.img"))
    r = virsh(uri, "domblkinfo idle vda")
    assert r.rc == 1
    assert r.err == "error: internal error: missing storage backend for 'volume' storage\n"
    conn = libvirt.open(uri)
    try:
        with pytest.raises(libvirt.libvirtError) as info:
            conn.lookupByName("idle").blockInfo("vda")
        assert info.value.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR
        assert info.value.get_error_domain() == libvirt.VIR_FROM_STORAGE
    finally:
        conn.close()
    ok(uri, "undefine idle")
