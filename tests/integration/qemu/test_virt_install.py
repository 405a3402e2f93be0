"""virt-install --import creates and starts a diskless guest on pyvirtd's QEMU driver.

virt-install runs with its own defaults (the machine it takes from the
capabilities, where the default machine comes first, and the ich9 EHCI+UHCI
USB controllers it adds for it), except for the CPU: its default
host-passthrough aborts QEMU 7.2 under this host's nested KVM, so under KVM the
CPU is named (see test-environment.md); under TCG none is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from daemon_helpers import KVM_OK, guest_pids, kill_guests, needs_qemu, ok, qemu_uri, start_daemon, stop_daemon, virsh

pytestmark = [needs_qemu,
              pytest.mark.skipif(shutil.which("virt-install") is None, reason="virt-install not installed")]


@pytest.fixture
def daemon(tmp_path):
    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        yield d
    finally:
        stop_daemon(d)
        kill_guests(root)


def virt_install(uri: str, *args: str, disk: str = "none", memory: int = 64,
                 tcg: bool = not KVM_OK) -> subprocess.CompletedProcess:
    """virt-install --import; ``tcg`` for a guest that must boot an OS (this KVM cannot)."""
    env = dict(os.environ, LC_ALL="C", LANG="C", HOME=os.environ.get("HOME", "/root"))
    return subprocess.run(
        ["virt-install", "--connect", uri, "--memory", str(memory), "--vcpus", "1",
         "--disk", disk, "--import", "--osinfo", "generic", "--network", "none",
         "--graphics", "none", "--noautoconsole",
         *(["--virt-type", "qemu"] if tcg else ["--virt-type", "kvm", "--cpu", "qemu64,disable=svm"]),
         *args],
        capture_output=True, text=True, timeout=120, env=env)


def test_virt_install_import(daemon):
    uri = qemu_uri(daemon)
    r = virt_install(uri, "--name", "vi1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Domain creation completed" in r.stdout
    assert re.search(r"\d+\s+vi1\s+running", ok(uri, "list"))
    assert ok(uri, "domstate vi1 --reason").strip() == "running (booted)"
    assert re.search(r"Persistent:\s+yes", ok(uri, "dominfo vi1"))
    xml = ok(uri, "dumpxml vi1")
    assert "machine='pc-i440fx-" in xml         # the default machine, listed first
    assert xml.count("<controller type='usb'") == 4     # ich9 EHCI and its three UHCI companions
    if KVM_OK:
        assert "qemu64" in xml
    assert guest_pids(daemon.root)
    ok(uri, "destroy vi1")
    ok(uri, "undefine vi1")
    assert not guest_pids(daemon.root)


def test_virt_install_reports_qemu_failure(daemon):
    uri = qemu_uri(daemon)
    r = virt_install(uri, "--name", "vi2", "--vcpus", "999")
    assert r.returncode != 0
    assert "999" in r.stderr, r.stderr     # QEMU's own complaint about the CPU count
    assert not guest_pids(daemon.root)
    virsh(uri, "undefine vi2")


def _spice_link_reply(port: int) -> bytes:
    """The start of a SPICE server's answer to a client's link message for the main channel."""
    import socket
    import struct
    body = struct.pack("<IBBIIII", 0, 1, 0, 0, 0, 18, 18)   # connection id, main channel, no caps
    header = b"REDQ" + struct.pack("<III", 2, 2, len(body))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(header + body)
        return s.recv(16)


@pytest.fixture
def short_daemon():
    """A daemon whose root has a short path: a guest's unix channel sockets live
    below it, and a socket path must stay under 108 bytes (pytest's tmp_path
    alone takes 70)."""
    import tempfile
    from pathlib import Path
    root = Path(tempfile.mkdtemp(prefix="pv"))
    d = start_daemon(root / "d")
    try:
        yield d
    finally:
        stop_daemon(d)
        kill_guests(root / "d")
        shutil.rmtree(root, ignore_errors=True)


def test_virt_install_desktop_defaults(short_daemon):
    """What virt-install (and virt-manager's new-VM wizard) makes by default for a
    desktop OS: q35, SPICE display with its agent channel and USB redirection, an
    HDA sound card, a guest agent channel, a USB tablet, virtio RNG."""
    daemon = short_daemon
    uri = qemu_uri(daemon)
    env = dict(os.environ, LC_ALL="C", LANG="C", HOME=os.environ.get("HOME", "/root"))
    r = subprocess.run(
        ["virt-install", "--connect", uri, "--name", "vi3", "--memory", "64", "--vcpus", "1",
         "--disk", "none", "--import", "--osinfo", "debian11", "--noautoconsole",
         *(["--virt-type", "kvm", "--cpu", "qemu64,disable=svm"] if KVM_OK
           else ["--virt-type", "qemu"])],
        capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ok(uri, "domstate vi3").strip() == "running"
    xml = ok(uri, "dumpxml vi3")
    for piece in ("<graphics type='spice'", "<sound model='ich9'>", "<audio id='1' type='spice'/>",
                  "<channel type='spicevmc'>", "name='com.redhat.spice.0'",
                  "<redirdev bus='usb' type='spicevmc'>", "name='org.qemu.guest_agent.0'",
                  "<input type='tablet' bus='usb'>", "machine='pc-q35-"):
        assert piece in xml, piece
    port = int(re.search(r"<graphics type='spice' port='(\d+)'", xml).group(1))
    assert port >= 5900
    assert _spice_link_reply(port).startswith(b"REDQ")     # QEMU's SPICE server answers
    assert ok(uri, "domdisplay vi3").startswith(f"spice://")
    agent = re.search(r"<source mode='bind' path='([^']+org\.qemu\.guest_agent\.0)'/>", xml)
    assert agent and os.path.exists(agent.group(1))         # QEMU listens on the agent socket
    ok(uri, "destroy vi3")
    ok(uri, "undefine vi3")
    assert not guest_pids(daemon.root)


def test_virt_install_creates_its_disk_in_a_pool(daemon, tmp_path):
    """--disk pool=NAME,size=N: virt-install makes the volume, and the guest gets it as its disk."""
    from guest_helpers import PROMPT, Console, tiny_guest

    guest = tiny_guest()
    uri = qemu_uri(daemon)
    ok(uri, f"pool-define-as guests dir --target {tmp_path / 'pool'}; pool-build guests; "
            "pool-start guests")
    # the tiny guest on TCG, its kernel booted directly; root= loads virtio_blk, and
    # the empty disk cannot be mounted, so it boots on to its shell with the disk seen
    r = virt_install(uri, "--name", "vi3", "--boot",
                     f"kernel={guest.kernel},initrd={guest.initrd},"
                     f"kernel_args={guest.cmdline} root=/dev/vda",
                     disk="pool=guests,size=0.01,format=qcow2,bus=virtio", memory=128, tcg=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Allocating 'vi3.qcow2'" in r.stdout
    assert "Domain creation completed" in r.stdout
    assert ok(uri, "domstate vi3").strip() == "running"

    # 0.01 GiB, rounded up to whole 512-byte sectors, as a qcow2 image
    path = tmp_path / "pool" / "vi3.qcow2"
    capacity = 10737664
    vol = ok(uri, "vol-dumpxml --pool guests vi3.qcow2")
    assert f"<capacity unit='bytes'>{capacity}</capacity>" in vol
    assert "<format type='qcow2'/>" in vol
    info = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                          capture_output=True, text=True, check=True).stdout
    assert '"format": "qcow2"' in info and f'"virtual-size": {capacity}' in info

    xml = ok(uri, "dumpxml vi3")
    assert re.search(r"<disk type='file' device='disk'>\s*<driver name='qemu' type='qcow2'[^>]*/>"
                     rf"\s*<source file='{re.escape(str(path))}' index='1'/>\s*<backingStore/>"
                     r"\s*<target dev='vda' bus='virtio'/>",
                     xml), xml
    # the guest sees a disk of that size (restarted paused so the console sees the boot)
    ok(uri, "destroy vi3")
    ok(uri, "start vi3 --paused")
    console = Console(uri, "vi3")
    try:
        ok(uri, "resume vi3")
        console.wait("GUEST ROOT FAILED", timeout=90)
        console.wait(re.escape(PROMPT), timeout=60)
        console.run("cat /sys/block/vda/size", rf"\n{capacity // 512}\s")
    finally:
        console.close()
    out = ok(uri, "destroy vi3; undefine vi3 --remove-all-storage")
    assert f"Volume 'vda'({path}) removed." in out
    assert "vi3.qcow2" not in ok(uri, "vol-list guests")
    assert not path.exists()
