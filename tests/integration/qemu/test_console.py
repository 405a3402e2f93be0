"""DOMAIN_OPEN_CONSOLE: the guest's serial console over an RPC stream, with real QEMU.

The guest is TCG (this host's KVM cannot run guest code past firmware
reliably) with no disk: SeaBIOS prints to the serial port when
``<bios useserial='yes'/>`` is set, which is all the output a console test
needs.  python-libvirt streams read it; ``virsh console`` runs under a pty
and leaves with Ctrl+].
"""

from __future__ import annotations

import os
import pty
import select
import termios
import time

import pytest

from daemon_helpers import guest_xml, module_daemon, needs_qemu, ok, qemu_uri, virsh, wait_for

pytestmark = needs_qemu


daemon = module_daemon("qemu-console")


@pytest.fixture
def guest(daemon, tmp_path):
    uri = qemu_uri(daemon)
    xml = tmp_path / "con.xml"
    xml.write_text(guest_xml("con", virt="qemu", machine="pc", serial_bios=True))
    ok(uri, f"define {xml}")
    try:
        yield uri
    finally:
        virsh(uri, "destroy con; undefine con")


def test_console_stream(guest, daemon):
    import libvirt

    uri = guest
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("con")
        ok(uri, "start con --paused")       # open the console before the firmware speaks
        st = conn.newStream(0)
        dom.openConsole(None, st, 0)
        ok(uri, "resume con")

        # one console at a time, unless forced
        st2 = conn.newStream(0)
        with pytest.raises(libvirt.libvirtError) as err:
            dom.openConsole(None, st2, 0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
        assert "Active console session exists for this domain" in str(err.value)
        assert "graphics=off" in (daemon.root / "log" / "qemu" / "con.log").read_text()
        data = b""
        deadline = time.monotonic() + 20
        while b"SeaBIOS" not in data and time.monotonic() < deadline:
            data += st.recv(4096)
        assert b"SeaBIOS" in data
        st.finish()                          # ends cleanly; the console is free again

        st3 = conn.newStream(0)
        dom.openConsole(None, st3, 0)
        st4 = conn.newStream(0)
        dom.openConsole(None, st4, libvirt.VIR_DOMAIN_CONSOLE_FORCE)   # takes it over
        st4.finish()
        # the session forced out was aborted by the daemon: the client's own
        # abort reports why, as with libvirtd
        with pytest.raises(libvirt.libvirtError, match="Active console session exists"):
            st3.abort()
    finally:
        conn.close()


def test_console_of_stopped_guest_is_refused(guest):
    r = virsh(guest, "console con")
    assert r.rc != 0 and "domain is not running" in r.err


def test_virsh_console_ctrl_bracket(guest, daemon):
    uri = guest
    ok(uri, "start con")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("virsh", ["virsh", "-c", uri, "console", "con"])
    out = b""
    try:
        deadline = time.monotonic() + 20
        while b"Escape character is ^]" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 4096)
        assert b"Connected to domain" in out
        # virsh reads the escape character once it made its terminal raw
        wait_for(lambda: not termios.tcgetattr(fd)[3] & termios.ICANON, timeout=10)
        os.write(fd, b"\x1d")                # Ctrl+]
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                if select.select([fd], [], [], 0.2)[0]:
                    out += os.read(fd, 4096)
            except OSError:
                pass
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, out
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    # the console is free again for the next client
    import libvirt
    conn = libvirt.open(uri)
    try:
        st = conn.newStream(0)
        conn.lookupByName("con").openConsole(None, st, 0)
        st.finish()
    finally:
        conn.close()
