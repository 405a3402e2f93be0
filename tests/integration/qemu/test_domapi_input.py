"""The QEMU passthrough program, send-key and inject-nmi on pyvirtd, with a real TCG guest.

One tiny guest (Debian's kernel, busybox shell on the serial console) boots
for the module.  Keys sent with `virsh send-key` reach the guest's PS/2
keyboard: a reader on the guest's first virtual terminal prints what was
typed on the serial console.  An NMI shows in the guest kernel's log.
Monitor commands are passed through unchanged and taint the guest as
libvirt does; monitor events reach python-libvirt (libvirt_qemu) and virsh.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from daemon_helpers import (EventCollector, module_daemon, module_uri, needs_qemu, ok, virsh,
                            wait_for)
from guest_helpers import Console, tiny_guest, tiny_xml

pytestmark = needs_qemu

daemon = module_daemon("qemu-domapi-input")
uri = module_uri
NAME = "dinput"


@pytest.fixture(scope="module")
def console(daemon, uri, tmp_path_factory):
    """The running guest's console, at its shell prompt."""
    guest = tiny_guest()
    xml = tmp_path_factory.mktemp("dinput") / "dinput.xml"
    xml.write_text(tiny_xml(NAME, guest))
    ok(uri, f"define {xml}; start {NAME} --paused")
    con = Console(uri, NAME)
    try:
        ok(uri, f"resume {NAME}")
        con.wait("GUEST READY", timeout=120)
        con.run("echo ok-$((1+1))", "ok-2")
        yield con
    finally:
        con.close()
        virsh(uri, f"destroy {NAME}; undefine {NAME}")


def _typed_on_vt(console: Console, send) -> str:
    """What the guest's first virtual terminal reads while ``send()`` types a line."""
    at = console.mark()
    console.send('read -r line < /dev/tty1; echo "KEYS""=[$line]"\n')
    wait_for(lambda: "tty1" in console.text(at))    # the command was read by the shell
    send()
    return console.wait(r"KEYS=\[(.*)\]", since=at, timeout=30).group(1)


def test_send_key_linux_names_reach_the_guest_keyboard(console, uri):
    assert _typed_on_vt(console, lambda: ok(uri, f"send-key {NAME} KEY_H KEY_I KEY_ENTER")) \
        == "hi"


@pytest.mark.parametrize("codeset, keys", [
    ("usb", "0x0b 0x0c 0x28"),          # HID usage codes of h, i, Enter
    ("atset1", "0x23 0x17 0x1c"),       # set 1 scancodes
    ("atset2", "0x33 0x43 0x5a"),       # set 2 scancodes
    ("qnum", "35 23 28"),               # QEMU's own numbers, as they are
])
def test_send_key_other_codesets(console, uri, codeset, keys):
    assert _typed_on_vt(console, lambda: ok(uri, f"send-key {NAME} --codeset {codeset} {keys}")) \
        == "hi"


def test_send_key_errors(console, uri):
    r = virsh(uri, f"send-key {NAME} --codeset atset1 0x7f")
    assert r.rc != 0
    assert "cannot translate keycode 127 of atset1 codeset to qnum keycode" in r.err
    r = virsh(uri, f"send-key {NAME} --codeset os_x 4")
    assert r.rc != 0 and "cannot translate keycode 4 of os_x codeset" in r.err


def test_inject_nmi_reaches_the_guest_kernel(console, uri):
    at = console.mark()
    ok(uri, f"inject-nmi {NAME}")
    console.wait(r"NMI received", since=at, timeout=30)


def test_monitor_command_qmp_hmp_and_taint(console, daemon, uri):
    log = daemon.root / "log" / "qemu" / f"{NAME}.log"
    dom_id = int(ok(uri, f"domid {NAME}").strip())
    out = ok(uri, f"""qemu-monitor-command {NAME} '{{"execute":"query-status"}}'""")
    assert re.search(r'"return":\{.*"running":true', out) and '"status":"running"' in out
    # QEMU's error reply is the answer, not a libvirt error
    out = ok(uri, f"""qemu-monitor-command {NAME} '{{"execute":"no-such-command"}}'""")
    assert '"class":"CommandNotFound"' in out
    assert "VM status: running" in ok(uri, f"qemu-monitor-command {NAME} --hmp 'info status'")
    # tainted once per run, in the guest's log and its messages
    line = f"Domain id={dom_id} is tainted: custom-monitor"
    wait_for(lambda: line in log.read_text())
    assert log.read_text().count(line) == 1
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\+0000: " + re.escape(line) + "$",
                     log.read_text(), re.M)
    assert re.search(r"Messages:\s+tainted: custom-monitor", ok(uri, f"dominfo {NAME}"))


def test_monitor_command_refusals(console, uri):
    import libvirt
    import libvirt_qemu

    conn = libvirt.open(uri)
    try:
        with pytest.raises(libvirt.libvirtError, match="cannot parse json"):
            libvirt_qemu.qemuMonitorCommand(conn.lookupByName(NAME), "not json", 0)
    finally:
        conn.close()
    r = virsh(uri, f"send-process-signal {NAME} 1 0")
    assert r.rc != 0
    assert "this function is not supported by the connection driver: " \
           "virDomainSendProcessSignal" in r.err


def test_monitor_events_to_python_libvirt(console, uri):
    import libvirt
    import libvirt_qemu

    EventCollector._start_loop()
    conn = libvirt.open(uri)
    got: list[tuple] = []
    lock = threading.Lock()

    def on_event(conn, dom, event, seconds, micros, details, opaque):
        with lock:
            got.append((dom.name(), event, seconds, details))

    every = libvirt_qemu.qemuMonitorEventRegister(conn, None, None, on_event, None, 0)
    regex = libvirt_qemu.qemuMonitorEventRegister(
        conn, conn.lookupByName(NAME), "^stop$", on_event, "rx",
        libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX
        | libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_NOCASE)
    try:
        ok(uri, f"suspend {NAME}; resume {NAME}")
        wait_for(lambda: [e[1] for e in got].count("STOP") == 2 and "RESUME" in
                 [e[1] for e in got])
        with lock:
            stops = [e for e in got if e[1] == "STOP"]
        assert all(e[0] == NAME and e[2] > 1_600_000_000 for e in stops)
        libvirt_qemu.qemuMonitorEventDeregister(conn, regex)
        with pytest.raises(libvirt.libvirtError, match="not registered"):
            libvirt_qemu.qemuMonitorEventDeregister(conn, regex)
        with pytest.raises(libvirt.libvirtError, match="failed to compile regex"):
            libvirt_qemu.qemuMonitorEventRegister(
                conn, None, "(", on_event, None,
                libvirt_qemu.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX)
    finally:
        try:
            libvirt_qemu.qemuMonitorEventDeregister(conn, every)
        finally:
            conn.close()


def test_monitor_event_in_virsh(console, uri):
    """`virsh qemu-monitor-event` prints the first matching event and exits."""
    p = subprocess.Popen(["virsh", "-c", uri, f"qemu-monitor-event {NAME} --event RESUME "
                          "--timeout 60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        # virsh registers some time after it starts: pause and resume until it saw one
        def resumed() -> bool:
            ok(uri, f"suspend {NAME}; resume {NAME}")
            return p.poll() is not None
        wait_for(resumed, timeout=60, interval=0.2)
        out = p.stdout.read()
        assert re.search(rf"event RESUME at \d+\.\d{{6}} for domain '{NAME}': <null>", out), out
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
