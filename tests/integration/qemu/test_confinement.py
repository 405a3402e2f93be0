"""QEMU confinement under a privileged daemon (qemu:///system): user, capabilities, seccomp, DAC,
private /dev, cgroup device ACL.

A root pyvirtd (``--root DIR --privileged``: the system daemon's behaviour,
with its files under DIR) starts real TCG guests.  /proc shows each QEMU
running as the unprivileged ``pyvirtd-qemu`` user with no capabilities,
NoNewPrivs and QEMU's seccomp filter; its disk images belong to that user
while it runs and to their owner again afterwards (also when the guest died
while the daemon was down); and a file that no running guest was given (root's, mode
0600, e.g. a stopped guest's disk) is refused by the kernel when a guest
makes QEMU open it.  Each QEMU has its own mount namespace whose /dev holds
only the standard nodes and its disks' nodes, and its own cgroup whose
device list allows only those: a host device it was not given is missing
from its /dev, and refused by the kernel even when the node is planted
there.  A session daemon keeps running QEMU as itself.

Everything lives in a directory the QEMU user may traverse (pytest's own
temp directory is root's alone); the guests' QEMUs are found for cleanup by
that directory, which their image paths name (a confined QEMU's command line
names no daemon path: its monitor is an inherited fd).  The network config
directory exists before the daemon starts, so that the privileged daemon
does not create libvirt's 'default' network on this host.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon_helpers import (guest_pid, guest_pids, kill_guests, needs_qemu, ok, start_daemon,
                            stop_daemon, virsh, wait_for)
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml

pytestmark = [
    needs_qemu,
    pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root daemon"),
    pytest.mark.skipif(not shutil.which("setpriv") or not shutil.which("useradd"),
                       reason="setpriv and useradd (util-linux, passwd) needed"),
]

XATTR = "trusted.pyvirtd.security.dac"

GUEST = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {extra}
    <serial type='pty'/>
  </devices>
</domain>
"""


def _image(path: Path, mode: int = 0o600) -> Path:
    with open(path, "wb") as f:
        f.truncate(1024 * 1024)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    return path


def _owner(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


class Host:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.images = base / "images"
        self.images.mkdir(mode=0o755)
        self.root = base / "pyvirtd"
        (self.root / "lib" / "network").mkdir(parents=True)
        self.daemon = start_daemon(self.root, "--privileged")
        self.uri = f"qemu+unix:///system?socket={self.daemon.sock}"
        self.qemu = pwd.getpwnam("pyvirtd-qemu")

    def restart(self) -> None:
        stop_daemon(self.daemon)
        self.daemon = start_daemon(self.root, "--privileged")

    def define(self, name: str, disk: Path, extra: str = "") -> None:
        xml = self.base / f"{name}.xml"
        xml.write_text(GUEST.format(name=name, disk=disk, extra=extra))
        ok(self.uri, f"define {xml}")


@pytest.fixture(scope="module")
def host():
    subprocess.run([sys.executable, "-m", "pyvirtd.cli", "qemu-user"], check=True,
                   stdout=subprocess.DEVNULL)
    base = Path(tempfile.mkdtemp(prefix="pyvirtd-confine-", dir="/var/tmp"))
    base.chmod(0o755)
    h = Host(base)
    try:
        yield h
    finally:
        stop_daemon(h.daemon)
        kill_guests(base)     # their command lines name their images, not the daemon's root
        shutil.rmtree(base, ignore_errors=True)


def test_qemu_runs_unprivileged_sandboxed_and_owns_only_its_files(host):
    disk = _image(host.images / "c1.img")
    cdrom = _image(host.images / "c1.iso", 0o644)
    host.define("c1", disk, f"""<disk type='file' device='cdrom'>
      <source file='{cdrom}'/><target dev='sda' bus='sata'/><readonly/></disk>""")
    ok(host.uri, "start c1")
    pid = guest_pid(host.root, "c1")
    st = _status(pid)
    uid, gid = host.qemu.pw_uid, host.qemu.pw_gid
    assert st["Uid"].split() == [str(uid)] * 4
    assert st["Gid"].split() == [str(gid)] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])
    assert st["NoNewPrivs"] == "1"
    assert st["Seccomp"] == "2"
    # the read-write image is the QEMU user's; the read-only one only readable by its group
    assert _owner(disk) == (uid, gid, 0o600)
    assert os.getxattr(disk, XATTR) == b"0:0:600"
    assert _owner(cdrom) == (0, gid, 0o644)
    ok(host.uri, "destroy c1")
    wait_for(lambda: _owner(disk) == (0, 0, 0o600) and _owner(cdrom) == (0, 0, 0o644))
    assert XATTR not in os.listxattr(disk)


def test_file_of_a_stopped_guest_is_refused_by_the_kernel(host):
    mine = _image(host.images / "c2.img")
    theirs = _image(host.images / "other.img")
    host.define("c2", mine)
    host.define("other", theirs)       # defined, not running: its disk is root's
    ok(host.uri, "start c2")
    try:
        cmd = json.dumps({"execute": "blockdev-add", "arguments": {
            "driver": "file", "node-name": "stolen", "filename": str(theirs)}})
        r = virsh(host.uri, f"qemu-monitor-command c2 '{cmd}'")
        # QEMU tried (pyvirtd passed the command through) and open() was refused
        assert "Permission denied" in r.out + r.err, r
        assert "stolen" not in ok(host.uri, "qemu-monitor-command c2 --hmp 'info block'")
        # the very same command works for the guest's own disk
        cmd = json.dumps({"execute": "blockdev-add", "arguments": {
            "driver": "file", "node-name": "own", "filename": str(mine), "read-only": True}})
        assert '"return":{}' in ok(host.uri, f"qemu-monitor-command c2 '{cmd}'")
    finally:
        ok(host.uri, "destroy c2")


def test_hotplugged_disk_is_labelled_and_restored(host):
    disk = _image(host.images / "c3.img")
    extra = _image(host.images / "c3-extra.img")
    host.define("c3", disk)
    ok(host.uri, "start c3")
    ok(host.uri, f"attach-disk c3 {extra} vdb --live")
    assert _owner(extra)[:2] == (host.qemu.pw_uid, host.qemu.pw_gid)
    assert "vdb" in ok(host.uri, "domblklist c3")
    ok(host.uri, "destroy c3")
    wait_for(lambda: _owner(extra) == (0, 0, 0o600) and _owner(disk) == (0, 0, 0o600))


def test_owner_restored_after_guest_died_while_daemon_was_down(host):
    disk = _image(host.images / "c4.img")
    host.define("c4", disk)
    ok(host.uri, "start c4")
    pid = guest_pid(host.root, "c4")
    assert _owner(disk)[0] == host.qemu.pw_uid
    stop_daemon(host.daemon)          # detaches; the guest keeps running
    assert _owner(disk)[0] == host.qemu.pw_uid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _cmdline(pid))
    host.restart()
    wait_for(lambda: _owner(disk) == (0, 0, 0o600))
    assert "shut off" in ok(host.uri, "domstate c4")


def test_restarted_daemon_reattaches_to_a_confined_guest(host):
    disk = _image(host.images / "c5.img")
    host.define("c5", disk)
    ok(host.uri, "start c5")
    pid = guest_pid(host.root, "c5")
    host.restart()
    assert "running" in ok(host.uri, "domstate c5")
    assert guest_pid(host.root, "c5") == pid
    ok(host.uri, "destroy c5")
    wait_for(lambda: _owner(disk) == (0, 0, 0o600))


def test_guest_boots_writes_and_hotplugs_a_disk_under_confinement(host):
    """The tiny TCG guest boots from its kernel and initramfs, writes its disk,
    and gets a disk hotplugged and unplugged, all as the QEMU user."""
    root_disk = _image(host.images / "b1.img", 0o600)
    extra = _image(host.images / "b1-extra.img", 0o600)
    guest = tiny_guest()
    kernel_owner = _owner(Path(guest.kernel))
    xml = host.base / "b1.xml"
    xml.write_text(tiny_xml("b1", guest, disks=f"""<disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{root_disk}'/>
      <target dev='vda' bus='virtio'/></disk>"""))
    ok(host.uri, f"define {xml}")
    ok(host.uri, "start b1 --paused")
    con = Console(host.uri, "b1")
    try:
        ok(host.uri, "resume b1")
        con.wait("GUEST READY", timeout=90)
        con.wait(re.escape(PROMPT))
        con.run("dmesg -n 1", re.escape(PROMPT))
        assert _status(guest_pid(host.root, "b1"))["Uid"].split()[0] == str(host.qemu.pw_uid)
        # the kernel is only lent to the QEMU group, read-only
        assert _owner(Path(guest.kernel))[1] == host.qemu.pw_gid
        con.run("echo confined > /dev/vda && echo WROTE-$((6*7))", "WROTE-42")
        ok(host.uri, f"attach-disk b1 {extra} vdb --targetbus virtio")
        assert _owner(extra)[:2] == (host.qemu.pw_uid, host.qemu.pw_gid)
        con.run("until [ -e /sys/block/vdb ]; do sleep 0.2; done; echo HAS-$((1+1))-DISKS",
                "HAS-2-DISKS")
        ok(host.uri, "detach-disk b1 vdb")
        # the guest let go of it: it is root's again while the guest runs on
        wait_for(lambda: _owner(extra) == (0, 0, 0o600), timeout=30)
    finally:
        con.close()
        virsh(host.uri, "destroy b1")
    wait_for(lambda: _owner(root_disk) == (0, 0, 0o600))
    assert _owner(Path(guest.kernel)) == kernel_owner
    assert root_disk.read_bytes().startswith(b"confined\n")


def test_failed_start_reports_qemus_error_and_restores_owners(host):
    disk = _image(host.images / "c6.img")
    xml = host.base / "c6.xml"
    # a raw file declared qcow2: QEMU itself refuses it, after the labelling
    xml.write_text(GUEST.format(name="c6", disk=disk, extra="").replace("type='raw'", "type='qcow2'"))
    ok(host.uri, f"define {xml}")
    r = virsh(host.uri, "start c6")
    assert r.rc != 0 and "qcow2" in r.err, r
    assert "process exited while connecting to monitor" in r.err
    assert _owner(disk) == (0, 0, 0o600)
    assert XATTR not in os.listxattr(disk)
    assert "shut off" in ok(host.uri, "domstate c6")
    assert not [p for p in guest_pids(host.base) if b"guest=c6," in _cmdline(p)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("sandbox", [None, 1])
def test_session_daemon_runs_qemu_as_itself(tmp_path, sandbox):
    """Unchanged by default; seccomp_sandbox: 1 adds the filter (and QEMU then
    starts through daemonize.py, since it may not fork)."""
    root = tmp_path / "pyvirtd"
    d = start_daemon(root, config=None if sandbox is None else f"seccomp_sandbox: {sandbox}\n")
    try:
        uri = f"qemu+unix:///session?socket={d.sock}"
        disk = _image(tmp_path / "s.img")
        xml = tmp_path / "s.xml"
        xml.write_text(GUEST.format(name="s", disk=disk, extra=""))
        ok(uri, f"create {xml}")
        st = _status(guest_pid(root, "s"))
        assert st["Uid"].split() == ["0"] * 4
        assert st["Seccomp"] == ("2" if sandbox else "0")
        assert _owner(disk) == (0, 0, 0o600)     # nothing relabelled
        ok(uri, "destroy s")
    finally:
        stop_daemon(d)
        kill_guests(tmp_path)


# -- private /dev and cgroup device ACL -----------------------------------------------

# cgroup_device_acl's default nodes (less /dev/kvm: TCG guests) and every pty
STANDARD_NODES = {"null", "full", "zero", "random", "urandom", "ptmx"}
STANDARD_RULES = {"c 1:3 rw", "c 1:7 rw", "c 1:5 rw", "c 1:8 rw", "c 1:9 rw", "c 5:2 rw",
                  "c 136:* rw"}


class Loop:
    """A loop device over a fresh image (root's, 0600), detached at the end."""

    def __init__(self, image: Path) -> None:
        _image(image)
        self.dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.name = os.path.basename(self.dev)
        rdev = os.stat(self.dev).st_rdev
        self.rdev = rdev
        self.rule = f"b {os.major(rdev)}:{os.minor(rdev)}"

    def close(self) -> None:
        subprocess.run(["losetup", "-d", self.dev], capture_output=True)


@pytest.fixture
def loops(host):
    made: list[Loop] = []

    def make(name: str) -> Loop:
        made.append(Loop(host.images / name))
        return made[-1]
    try:
        yield make
    finally:
        for loop in made:
            loop.close()


def _devices_cgroup(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if "devices" in ctrls.split(","):
            return Path("/sys/fs/cgroup/devices") / path.lstrip("/")
    raise AssertionError(f"QEMU {pid} is in no devices cgroup")


def _rules(group: Path) -> set[str]:
    return set((group / "devices.list").read_text().split("\n")) - {""}


def _host_dev_mounts() -> set[str]:
    return {p for p in ("pts", "shm", "mqueue", "hugepages") if os.path.ismount(f"/dev/{p}")}


def _block_disk(dev: str, target: str, readonly: bool = False) -> str:
    return (f"<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
            f"<source dev='{dev}'/><target dev='{target}' bus='virtio'/>"
            f"{'<readonly/>' if readonly else ''}</disk>")


def _blockdev_add(host, name: str, node: str, path: str):
    cmd = json.dumps({"execute": "blockdev-add", "arguments": {
        "driver": "host_device", "node-name": node, "filename": path}})
    return virsh(host.uri, f"qemu-monitor-command {name} '{cmd}'")


def test_qemu_has_a_private_dev_and_a_cgroup_allowing_only_its_devices(host, loops):
    disk = _image(host.images / "n1.img")
    rw, ro = loops("n1-rw.img"), loops("n1-ro.img")
    host.define("n1", disk, _block_disk(rw.dev, "vdb") + _block_disk(ro.dev, "vdc", True))
    ok(host.uri, "start n1")
    pid = guest_pid(host.root, "n1")
    try:
        # its own mount namespace, not the daemon's (which is this test's)
        own = os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{host.daemon.proc.pid}/ns/mnt") == own
        assert os.readlink(f"/proc/{pid}/ns/mnt") != own
        dev = Path(f"/proc/{pid}/root/dev")
        assert set(os.listdir(dev)) == STANDARD_NODES | _host_dev_mounts() | {rw.name, ro.name}
        # the disks' nodes are copies with the guest's labels: the read-write one
        # is the QEMU user's, the read-only one only lent to its group
        st = os.stat(dev / rw.name)
        assert (st.st_rdev, st.st_uid, st.st_gid) == (rw.rdev, host.qemu.pw_uid, host.qemu.pw_gid)
        assert os.stat(dev / ro.name).st_gid == host.qemu.pw_gid
        assert os.stat(dev / ro.name).st_uid == 0
        # the host's own /dev is untouched (its disks, loop-control, ... are not in QEMU's)
        assert {"loop-control", "net"} <= set(os.listdir("/dev"))
        # its cgroup: everything denied but the standard nodes, ptys and its disks
        group = _devices_cgroup(pid)
        assert group.name.endswith("-n1.libvirt-qemu"), group
        assert _rules(group) == STANDARD_RULES | {f"{rw.rule} rw", f"{ro.rule} r"}
        # QEMU opened its block disks through them
        assert rw.dev in ok(host.uri, "domblklist n1")
    finally:
        ok(host.uri, "destroy n1")
    wait_for(lambda: not group.exists())
    assert _owner(Path(rw.dev))[:2] == (0, 0)


def test_host_device_not_given_is_refused_by_the_kernel(host, loops):
    """QEMU is asked (through the monitor, as a compromised guest could ask it) to
    open a host block device it was not given: the node is not in its /dev; and
    planted there, with an owner QEMU may open, the devices cgroup refuses it."""
    disk = _image(host.images / "n2.img")
    other = loops("n2-other.img")
    host.define("n2", disk)
    ok(host.uri, "start n2")
    try:
        pid = guest_pid(host.root, "n2")
        r = _blockdev_add(host, "n2", "stolen", other.dev)
        # (virsh prints QEMU's error reply as it came)
        assert "No such file or directory" in r.out + r.err, r
        planted = f"/proc/{pid}/root/dev/{other.name}"
        os.mknod(planted, stat.S_IFBLK | 0o600, other.rdev)
        os.chown(planted, host.qemu.pw_uid, host.qemu.pw_gid)
        r = _blockdev_add(host, "n2", "stolen", other.dev)
        assert "Operation not permitted" in r.out + r.err, r
        assert "stolen" not in ok(host.uri, "qemu-monitor-command n2 --hmp 'info block'")
    finally:
        ok(host.uri, "destroy n2")


def test_namespaces_off_keeps_the_hosts_dev():
    base = Path(tempfile.mkdtemp(prefix="pyvirtd-confine-nons-", dir="/var/tmp"))
    base.chmod(0o755)
    root = base / "pyvirtd"
    (root / "lib" / "network").mkdir(parents=True)
    d = start_daemon(root, "--privileged", config="namespaces: []\n")
    try:
        uri = f"qemu+unix:///system?socket={d.sock}"
        images = base / "images"
        images.mkdir(mode=0o755)
        xml = base / "x.xml"
        xml.write_text(GUEST.format(name="x", disk=_image(images / "x.img"), extra=""))
        ok(uri, f"create {xml}")
        pid = guest_pid(root, "x")
        assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert _rules(_devices_cgroup(pid)) == STANDARD_RULES   # the cgroup stays
        ok(uri, "destroy x")
    finally:
        stop_daemon(d)
        kill_guests(base)
        shutil.rmtree(base, ignore_errors=True)


def test_block_device_hotplug_and_unplug_under_confinement(host, loops):
    """A booted guest gets a host block device hotplugged: the node appears in
    QEMU's /dev and the cgroup allows it, the guest writes to it; unplugged,
    both are gone again while the guest runs on."""
    guest = tiny_guest()
    loop = loops("h1-blk.img")
    xml = host.base / "h1.xml"
    xml.write_text(tiny_xml("h1", guest))
    ok(host.uri, f"define {xml}")
    ok(host.uri, "start h1 --paused")
    con = Console(host.uri, "h1")
    try:
        ok(host.uri, "resume h1")
        con.wait("GUEST READY", timeout=90)
        con.wait(re.escape(PROMPT))
        con.run("dmesg -n 1", re.escape(PROMPT))
        pid = guest_pid(host.root, "h1")
        group, node = _devices_cgroup(pid), Path(f"/proc/{pid}/root/dev/{loop.name}")
        assert not node.exists() and f"{loop.rule} rw" not in _rules(group)
        ok(host.uri, f"attach-disk h1 {loop.dev} vdb --targetbus virtio")
        assert f"{loop.rule} rw" in _rules(group)
        assert os.stat(node).st_uid == host.qemu.pw_uid
        # its first virtio disk: vda inside the guest
        con.run("until [ -e /sys/block/vda ]; do sleep 0.2; done; "
                "echo hotplugged > /dev/vda && echo WROTE-$((6*7))", "WROTE-42")
        ok(host.uri, "detach-disk h1 vdb")
        wait_for(lambda: f"{loop.rule} rw" not in _rules(group) and not node.exists(), timeout=30)
        assert _rules(group) == STANDARD_RULES
        assert _owner(Path(loop.dev))[:2] == (0, 0)
    finally:
        con.close()
        virsh(host.uri, "destroy h1")
    assert (host.images / "h1-blk.img").read_bytes().startswith(b"hotplugged\n")


def test_save_and_restore_where_only_root_may_write(host):
    """QEMU (pyvirtd-qemu) writes and reads the image through fds the daemon opened:
    the image's directory and the image itself stay root's alone."""
    disk = _image(host.images / "saved.img")
    host.define("saved", disk)
    private = host.base / "private"
    private.mkdir(mode=0o700)
    image = private / "saved.save"
    ok(host.uri, "start saved")
    ok(host.uri, f"save saved {image}")
    assert _owner(image) == (0, 0, 0o600)
    assert "shut off (saved)" in ok(host.uri, "domstate saved --reason")
    wait_for(lambda: _owner(disk) == (0, 0, 0o600))
    ok(host.uri, f"restore {image}")
    assert "running (restored)" in ok(host.uri, "domstate saved --reason")
    assert _status(guest_pid(host.root, "saved"))["Uid"].split()[0] == str(host.qemu.pw_uid)
    ok(host.uri, "managedsave saved")
    ok(host.uri, "start saved")
    assert "running (restored)" in ok(host.uri, "domstate saved --reason")
    ok(host.uri, "destroy saved")
