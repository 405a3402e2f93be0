"""The UML driver end to end: a UML kernel boots a busybox-static hostfs root to its shell.

virsh and python-libvirt drive a real pyvirtd (uml:///system, the daemon runs
as root here) through define, start, the console, suspend/resume, reboot,
shutdown, destroy, autostart and a kill -9 of the daemon; bad input leaves
nothing running.  Teardown kills any kernel a failed test left (by the pids
the daemon recorded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from uml_helpers import KERNEL, Lab, console_expect, guest_xml, make_root, wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists(KERNEL), reason="user-mode-linux not installed"),
    pytest.mark.skipif(not shutil.which("virsh"), reason="virsh not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="uml:///system needs a root daemon"),
]

@pytest.fixture
def lab(tmp_path: Path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_lifecycle_console_suspend_reboot_shutdown(lab, tmp_path):
    import libvirt

    root = make_root(tmp_path / "root1")
    xml = tmp_path / "u1.xml"
    xml.write_text(guest_xml("u1", root))
    lab.virsh("define", str(xml))
    caps = lab.virsh("capabilities").stdout
    assert "<os_type>uml</os_type>" in caps and f"<emulator>{KERNEL}</emulator>" in caps
    assert "UML" in lab.virsh("version").stdout
    lab.virsh("start", "u1")
    assert lab.virsh("domstate", "--reason", "u1").stdout.strip() == "running (booted)"

    conn = libvirt.open(lab.uri)
    try:
        dom = conn.lookupByName("u1")
        assert dom.OSType() == "uml"
        out = console_expect(conn, dom, b"echo hello-$((6*7))\n", b"hello-42")
        assert b"hello-42" in out, out
        assert "<source path='/dev/pts/" in lab.virsh("dumpxml", "u1").stdout
        # the root is the host directory: a file put there is read inside
        (root / "etc/motd").write_text("from-the-host\n")
        out = console_expect(conn, dom, b"cat /etc/motd\n", b"from-the-host")
        assert b"from-the-host" in out, out
        out = console_expect(conn, dom, b"echo inside > /tmp/marker; sync; echo wrote-$((1+1))\n",
                             b"wrote-2")
        assert b"wrote-2" in out and (root / "tmp/marker").read_text() == "inside\n", out

        dom.suspend()
        assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
        lab.virsh("resume", "u1")
        assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED]
        out = console_expect(conn, dom, b"echo after-$((2*2))\n", b"after-4")
        assert b"after-4" in out

        # reboot: the kernel re-executes itself (same process); devtmpfs starts empty
        console_expect(conn, dom, b"touch /dev/before; echo marked-$((7*7))\n", b"marked-49")
        lab.virsh("reboot", "u1")
        out = console_expect(conn, dom, b"ls /dev/before || echo rebooted-$((3*3))\n",
                             b"rebooted-9", timeout=60)
        assert b"rebooted-9" in out, out
        assert dom.isActive()

        # shutdown: Ctrl-Alt-Del, which the guest's init turns into poweroff
        lab.virsh("shutdown", "u1")
        assert wait_for(lambda: not dom.isActive())
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    finally:
        conn.close()
    lab.virsh("start", "u1")
    pids = lab.kernel_pids()
    lab.virsh("destroy", "u1")
    assert wait_for(lambda: lab.kernels_gone(pids)), pids
    assert lab.virsh("domstate", "--reason", "u1").stdout.strip() == "shut off (destroyed)"
    lab.virsh("undefine", "u1")
    assert "u1" not in lab.virsh("list", "--all", "--name").stdout.split()
    assert not list((lab.root_dir / "run" / "uml").glob("u1*"))


def test_kill9_and_restart_keep_the_guest(lab, tmp_path):
    import libvirt

    root = make_root(tmp_path / "root2")
    xml = tmp_path / "u2.xml"
    xml.write_text(guest_xml("u2", root))
    lab.virsh("define", str(xml))
    lab.virsh("autostart", "u2")
    lab.virsh("start", "u2")
    dom_id = lab.virsh("domid", "u2").stdout.strip()
    lab.virsh("suspend", "u2")
    lab.restart(kill9=True)
    assert lab.virsh("domstate", "--reason", "u2").stdout.strip() == "paused (user)"
    assert lab.virsh("domid", "u2").stdout.strip() == dom_id
    lab.virsh("resume", "u2")
    lab.restart(kill9=False)
    conn = libvirt.open(lab.uri)
    try:
        dom = conn.lookupByName("u2")
        out = console_expect(conn, dom, b"echo still-$((5*5))\n", b"still-25")
        assert b"still-25" in out, out
        # PARAVIRT shutdown halts the kernel itself
        dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_PARAVIRT)
        assert wait_for(lambda: not dom.isActive())
        assert dom.state()[1] == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN
    finally:
        conn.close()
    # autostart: a restarted daemon starts it again
    lab.restart(kill9=False)
    assert lab.virsh("domstate", "u2").stdout.strip() == "running"
    lab.virsh("destroy", "u2")


def test_transient_guest_and_a_guest_killed_behind_our_back(lab, tmp_path):
    root = make_root(tmp_path / "root3")
    xml = tmp_path / "u3.xml"
    xml.write_text(guest_xml("u3", root))
    lab.virsh("create", str(xml))
    pids = lab.kernel_pids()
    lab.kill_all(pids)
    assert wait_for(lambda: "u3" not in lab.virsh("list", "--all", "--name").stdout.split())
    assert wait_for(lambda: lab.kernels_gone(pids))


def test_bad_input_clear_errors_and_nothing_started(lab, tmp_path):
    root = make_root(tmp_path / "root4")
    bad = tmp_path / "bad.xml"
    bad.write_text(guest_xml("nk", root, kernel=str(tmp_path / "no-such-kernel")))
    lab.virsh("define", str(bad))
    p = lab.virsh("start", "nk", check=False)
    assert p.returncode != 0
    assert f"Cannot find UML kernel {tmp_path / 'no-such-kernel'}" in p.stderr
    assert lab.virsh("domstate", "nk").stdout.strip() == "shut off"

    disk = ("<disk type='file' device='disk'><source file='"
            f"{tmp_path / 'missing.img'}'/><target dev='ubdb'/></disk>")
    bad.write_text(guest_xml("nd", root, extra=disk))
    p = lab.virsh("create", str(bad), check=False)
    assert p.returncode != 0 and f"'{tmp_path / 'missing.img'}'" in p.stderr, p.stderr
    assert "nd" not in lab.virsh("list", "--all", "--name").stdout.split()

    bad.write_text(guest_xml("ng", root, extra="<graphics type='vnc'/>"))
    p = lab.virsh("define", str(bad), check=False)
    assert p.returncode != 0 and "unsupported device type 'graphics'" in p.stderr
    bad.write_text(guest_xml("nv", root).replace("<memory", "<vcpu>2</vcpu><memory"))
    p = lab.virsh("define", str(bad), check=False)
    assert p.returncode != 0 and "one vCPU" in p.stderr
    hvm = guest_xml("nh", root).replace("<type>uml</type>", "<type>hvm</type>")
    bad.write_text(hvm)
    p = lab.virsh("define", str(bad), check=False)
    assert p.returncode != 0 and "ostype=hvm" in p.stderr
    assert lab.kernel_pids() == []
    lab.virsh("undefine", "nk")


def test_ubd_disk_root(lab, tmp_path):
    """A root on an ext4 image (mke2fs -d) as ubda."""
    if not shutil.which("mke2fs"):
        pytest.skip("e2fsprogs not installed")
    root = make_root(tmp_path / "root5")
    img = tmp_path / "root.img"
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(root), str(img), "32M"], check=True)
    xml = f"""<domain type='uml'>
  <name>u5</name>
  <memory unit='MiB'>64</memory>
  <os><type>uml</type><kernel>{KERNEL}</kernel><cmdline>root=/dev/ubda rw</cmdline></os>
  <devices>
    <disk type='file' device='disk'><source file='{img}'/><target dev='ubda'/></disk>
    <console type='pty'/>
  </devices>
</domain>"""
    (tmp_path / "u5.xml").write_text(xml)
    import libvirt
    conn = libvirt.open(lab.uri)
    try:
        dom = conn.createXML(xml, 0)
        out = console_expect(conn, dom, b"cat /proc/cmdline; echo disk-$((4*4))\n", b"disk-16")
        assert b"root=/dev/ubda" in out and b"disk-16" in out, out
        assert "<target dev='ubda' bus='uml'/>" in dom.XMLDesc(0)
        dom.destroy()
    finally:
        conn.close()
