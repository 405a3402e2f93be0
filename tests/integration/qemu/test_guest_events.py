"""Domain events beyond the lifecycle, each with a real trigger: graphics, watchdog, I/O error.

* graphics: the test speaks RFB to the guest's VNC port (version, security
  type None, ClientInit) and hangs up: QEMU's VNC_CONNECTED, VNC_INITIALIZED
  and VNC_DISCONNECTED become GRAPHICS events (a firmware-only KVM guest is
  enough);
* watchdog: the tiny guest (tests/guest/build.py) arms its i6300esb with
  busybox ``watchdog`` and then stops feeding it; QEMU's WATCHDOG action
  pauses the guest, paused (watchdog);
* I/O error: the guest's disk is a qcow2 image on a 4 MiB tmpfs the test
  mounts; the guest writes until the tmpfs is full, QEMU stops the guest
  (werror's default is enospc) and reports BLOCK_IO_ERROR: IO_ERROR and
  IO_ERROR_REASON events, paused (I/O error).

Every event is checked on two python-libvirt connections (each registered
client gets it); the graphics events also through ``virsh event --all``.
CONTROL_ERROR has no real trigger here (see the last test).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from daemon_helpers import (guest_pid, guest_xml, module_daemon, module_uri,
                            needs_qemu, ok, virsh, wait_for)
from guest_helpers import PROMPT, Console, EventLog, tiny_guest, tiny_xml

pytestmark = needs_qemu

# virDomainEventType / details and the event codes, as libvirt numbers them
SUSPENDED, SUSPENDED_IOERROR, SUSPENDED_WATCHDOG = 3, 2, 3
RESUMED, RESUMED_UNPAUSED = 4, 0
WATCHDOG_PAUSE, WATCHDOG_RESET, WATCHDOG_POWEROFF = 1, 2, 3
STOPPED, STOPPED_FAILED = 5, 5
IO_ERROR_PAUSE, IO_ERROR_REPORT = 1, 2
PHASE_CONNECT, PHASE_INITIALIZE, PHASE_DISCONNECT = 0, 1, 2
FAMILY_IPV4 = 0


def collector(uri: str) -> EventLog:
    import libvirt

    return EventLog(uri, {"lifecycle": libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                          "reboot": libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                          "watchdog": libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG,
                          "io": libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR,
                          "io-reason": libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
                          "balloon": libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
                          "graphics": libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS,
                          "control-error": libvirt.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR})


daemon = module_daemon("qemu-events")

uri = module_uri


@pytest.fixture(scope="module")
def clients(uri):
    cs = [collector(uri), collector(uri)]
    try:
        yield cs
    finally:
        for c in cs:
            c.close()


def boot(uri: str, name: str, xml: str, path: Path) -> Console:
    path.write_text(xml)
    ok(uri, f"define {path}")
    ok(uri, f"start {name} --paused")
    con = Console(uri, name)
    ok(uri, f"resume {name}")
    con.wait("GUEST READY", timeout=90)
    con.wait(re.escape(PROMPT))
    return con


def reason(uri: str, name: str) -> str:
    return ok(uri, f"domstate {name} --reason").strip()


# -- graphics ---------------------------------------------------------------------

def rfb_session(port: int) -> tuple[str, int]:
    """Connect, pick security type None, send ClientInit, read ServerInit, hang up.
    Returns our side's (address, port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.read(12).startswith(b"RFB 003.")
        s.sendall(b"RFB 003.008\n")
        count = f.read(1)[0]
        types = f.read(count)
        assert 1 in types                              # None: the guest has no password
        s.sendall(b"\x01")
        assert f.read(4) == b"\0\0\0\0"                # SecurityResult OK
        s.sendall(b"\x01")                             # ClientInit, shared
        f.read(24)                                     # ServerInit up to the name
        return s.getsockname()[:2]


def test_vnc_connect_initialize_disconnect(uri, clients, tmp_path):
    xml = guest_xml("vnc1").replace("<devices>", "<devices><graphics type='vnc' port='-1'/>")
    (tmp_path / "vnc1.xml").write_text(xml)
    ok(uri, f"define {tmp_path / 'vnc1.xml'}")
    watcher = None
    try:
        ok(uri, "start vnc1")
        port = int(ok(uri, "vncdisplay vnc1").strip().rsplit(":", 1)[1]) + 5900
        # virsh event --all as a third client; it is listening once it shows an event
        watcher = subprocess.Popen(["virsh", "-c", uri, "event", "--all", "--loop"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen: list[str] = []
        threading.Thread(target=lambda: seen.extend(watcher.stdout), daemon=True).start()

        def virsh_listens() -> bool:
            ok(uri, "suspend vnc1; resume vnc1")
            return any("lifecycle" in line for line in seen)
        wait_for(virsh_listens, timeout=30, interval=0.5)

        host, client_port = rfb_session(port)
        for c in clients:
            wait_for(lambda: len(c.of("vnc1", "graphics")) >= 3, timeout=30)
            phases = [e[0] for e in c.of("vnc1", "graphics")]
            assert phases[:3] == [PHASE_CONNECT, PHASE_INITIALIZE, PHASE_DISCONNECT]
            for phase, local, remote, auth, subject in c.of("vnc1", "graphics"):
                assert local == {"family": FAMILY_IPV4, "node": "127.0.0.1",
                                 "service": str(port)}
                assert remote == {"family": FAMILY_IPV4, "node": host,
                                  "service": str(client_port)}
                assert auth == "none" and subject == []
        wait_for(lambda: sum("graphics" in line for line in seen) >= 3, timeout=30)
        lines = [line for line in seen if "graphics" in line]
        assert "event 'graphics' for domain 'vnc1': connect" in lines[0]
        assert f"local[IPv4 127.0.0.1 {port}]" in lines[0]
        assert "disconnect" in lines[2]
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        virsh(uri, "destroy vnc1; undefine vnc1")


# -- watchdog ------------------------------------------------------------------------

def test_watchdog_pause(uri, daemon, clients, tmp_path):
    xml = tiny_xml("wd1", tiny_guest()).replace(
        "<devices>", "<devices><watchdog model='i6300esb' action='pause'/>")
    con = boot(uri, "wd1", xml, tmp_path / "wd1.xml")
    try:
        cmdline = Path(f"/proc/{guest_pid(daemon.root, 'wd1')}/cmdline").read_bytes().split(b"\0")
        assert b"i6300esb,id=watchdog0" in b" ".join(cmdline)
        assert cmdline[cmdline.index(b"-watchdog-action") + 1] == b"pause"
        assert "<alias name='watchdog0'/>" in ok(uri, "dumpxml wd1")
        before = len(clients[0].of("wd1", "lifecycle"))   # started paused, resumed
        # arm it with a 2 s timeout, feed it once, then never again
        con.run("watchdog -T 2 -t 3600 -F /dev/watchdog &", re.escape(PROMPT))
        for c in clients:
            wait_for(lambda: c.of("wd1", "watchdog") == [(WATCHDOG_PAUSE,)], timeout=60)
            wait_for(lambda: (SUSPENDED, SUSPENDED_WATCHDOG) in c.of("wd1", "lifecycle"))
        assert reason(uri, "wd1") == "paused (watchdog)"
        # QEMU's own STOP that follows is not reported a second time: the next
        # event after the watchdog's is the resume asked for here
        ok(uri, "resume wd1")
        for c in clients:
            wait_for(lambda: (RESUMED, RESUMED_UNPAUSED) in c.of("wd1", "lifecycle")[before:])
            assert c.of("wd1", "lifecycle")[before:] == [(SUSPENDED, SUSPENDED_WATCHDOG),
                                                         (RESUMED, RESUMED_UNPAUSED)]
    finally:
        con.close()
        virsh(uri, "destroy wd1; undefine wd1")


@pytest.mark.parametrize("action", ["reset", "poweroff"])
def test_watchdog_reset_and_poweroff(uri, daemon, clients, tmp_path, action):
    """reset: the guest reboots (REBOOT event) and keeps running; poweroff: QEMU exits
    without a SHUTDOWN event, which libvirt (and pyvirtd) report as shut off (crashed)."""
    name = f"wd{action}"
    xml = tiny_xml(name, tiny_guest()).replace(
        "<devices>", f"<devices><watchdog model='i6300esb' action='{action}'/>")
    con = boot(uri, name, xml, tmp_path / f"{name}.xml")
    try:
        assert f"-watchdog-action\0{action}\0".encode() in \
            Path(f"/proc/{guest_pid(daemon.root, name)}/cmdline").read_bytes()
        at = con.mark()
        con.run("watchdog -T 2 -t 3600 -F /dev/watchdog &", re.escape(PROMPT))
        code = WATCHDOG_RESET if action == "reset" else WATCHDOG_POWEROFF
        for c in clients:
            wait_for(lambda: c.of(name, "watchdog") == [(code,)], timeout=60)
        if action == "reset":
            con.wait("Linux version", since=at, timeout=90)  # booted again
            con.wait("GUEST READY", since=at, timeout=90)
            for c in clients:
                wait_for(lambda: c.of(name, "reboot"))
            assert reason(uri, name).startswith("running")
        else:
            for c in clients:
                wait_for(lambda: (STOPPED, STOPPED_FAILED) in c.of(name, "lifecycle"))
            assert reason(uri, name) == "shut off (crashed)"
    finally:
        con.close()
        virsh(uri, f"destroy {name}; undefine {name}")


# -- balloon -------------------------------------------------------------------------

def test_setmem_balloon_change(uri, clients, tmp_path):
    con = boot(uri, "bal1", tiny_xml("bal1", tiny_guest()), tmp_path / "bal1.xml")
    try:
        assert "<memballoon model='virtio'>" in ok(uri, "dumpxml bal1")
        ok(uri, "setmem bal1 96M --live")
        # the guest's virtio_balloon gave 32 MiB back; QEMU reported it as it went
        for c in clients:
            wait_for(lambda: c.of("bal1", "balloon")[-1:] == [(96 * 1024,)], timeout=60)
        assert "<currentMemory unit='KiB'>98304</currentMemory>" in ok(uri, "dumpxml bal1")
        assert re.search(r"Used memory:\s+98304 KiB", ok(uri, "dominfo bal1"))
        assert "<currentMemory unit='KiB'>131072</currentMemory>" in \
            ok(uri, "dumpxml bal1 --inactive")
        r = virsh(uri, "setmem bal1 1G --live")
        assert r.rc != 0 and "cannot set memory higher than max memory" in r.err
        r = virsh(uri, "setmaxmem bal1 256M")
        assert r.rc != 0 and "cannot resize the maximum memory on an active domain" in r.err
        ok(uri, "setmaxmem bal1 256M --config")
        assert "<memory unit='KiB'>262144</memory>" in ok(uri, "dumpxml bal1 --inactive")
    finally:
        con.close()
        virsh(uri, "destroy bal1; undefine bal1")


# -- I/O error -------------------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "pyvirtd-test", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("policy", [None, "report"])
def test_io_error_enospc(uri, clients, small_tmpfs, tmp_path, policy):
    """No error_policy: QEMU's default for writes (enospc) stops the guest; report
    hands the error to the guest, which keeps running."""
    name = f"io{policy or 'default'}"
    img = small_tmpfs / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True)
    attr = f" error_policy='{policy}'" if policy else ""
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'{attr}/>"
            f"<source file='{img}'/><target dev='vda' bus='virtio'/></disk>")
    con = boot(uri, name, tiny_xml(name, tiny_guest(), interfaces=disk), tmp_path / "io.xml")
    try:
        if policy:
            assert f"error_policy='{policy}'" in ok(uri, f"dumpxml {name}")
        # 32 MiB of data into a qcow2 image on a 4 MiB tmpfs
        con.send("dd if=/dev/urandom of=/dev/vda bs=1M count=32 conv=fsync\n")
        action = IO_ERROR_REPORT if policy == "report" else IO_ERROR_PAUSE
        want_io = (str(img), "virtio-disk0", action)
        for c in clients:
            wait_for(lambda: want_io in c.of(name, "io"), timeout=90)
            # QEMU sends "nospace" only for a disk whose policies can stop the guest
            # (blk_iostatus_is_enabled); libvirt's reason is "enospc" only with it
            assert (*want_io, "" if policy == "report" else "enospc") in c.of(name, "io-reason")
        if policy == "report":
            con.wait(re.escape(PROMPT), since=0)
            con.run("echo still-$((40+2))", r"still-42")     # the guest runs on
            assert reason(uri, name) == "running (unpaused)"
            assert not [e for e in clients[0].of(name, "lifecycle") if e == (SUSPENDED, SUSPENDED_IOERROR)]
        else:
            for c in clients:
                wait_for(lambda: (SUSPENDED, SUSPENDED_IOERROR) in c.of(name, "lifecycle"))
            assert reason(uri, name) == "paused (I/O error)"
    finally:
        con.close()
        virsh(uri, f"destroy {name}; undefine {name}")


# -- control error -------------------------------------------------------------------

def test_no_control_error_when_qemu_just_exits(clients):
    """CONTROL_ERROR is for a broken monitor stream (qemuProcessHandleMonitorError), which
    no real QEMU here can be made to produce; what can be checked is its absence: the
    guests above were destroyed, powered off by their watchdog and so on, and every
    one of those hang-ups is no monitor error."""
    for c in clients:
        assert len({e[0] for e in c.events}) >= 5            # the module's guests came and went
        assert not [e for e in c.events if e[1] == "control-error"]
