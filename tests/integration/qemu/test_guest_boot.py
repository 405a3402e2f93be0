"""A Linux guest that really boots, on pyvirtd's QEMU driver: console, ACPI shutdown, reboot, on_* actions.

The guest is the tiny one of tests/guest/build.py (Debian's kernel, a
busybox-static initramfs; built once and cached under .cache/guest/) under
TCG, since this host's KVM cannot run a Linux kernel.  It reaches
``GUEST READY`` about 4 s after QEMU starts.  One daemon and one guest serve
most of the module, in the order of the tests (boot, reboots, shutdown); a
second guest checks on_poweroff=restart and on_reboot=destroy.  Every QEMU
is killed at the end, whatever happened.
"""

from __future__ import annotations

import re

import pytest

from daemon_helpers import (guest_pids, module_daemon, module_uri, needs_qemu, ok,
                            virsh, wait_for)
from guest_helpers import PROMPT, Console, Events, tiny_guest, tiny_xml

pytestmark = needs_qemu

# virDomainEventType and details, as libvirt numbers them
STARTED, RESUMED, STOPPED, SHUTDOWN = 2, 4, 5, 6
STOPPED_SHUTDOWN, STOPPED_DESTROYED = 0, 1
SHUTDOWN_GUEST = 1
BOOT_TIMEOUT = 60


@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


daemon = module_daemon("qemu-guest-boot")

uri = module_uri


@pytest.fixture(scope="module")
def events(uri):
    ev = Events(uri)
    try:
        yield ev
    finally:
        ev.close()


class Booted:
    def __init__(self, uri: str, name: str, console: Console) -> None:
        self.uri, self.name, self.console = uri, name, console


def boot(uri: str, name: str, xml_path) -> Booted:
    """Define and start ``name`` paused, attach the console, resume, wait for the shell."""
    ok(uri, f"define {xml_path}")
    ok(uri, f"start {name} --paused")        # the console is there before the kernel speaks
    console = Console(uri, name)
    ok(uri, f"resume {name}")
    console.wait("GUEST READY", timeout=BOOT_TIMEOUT)
    console.wait(re.escape(PROMPT))
    return Booted(uri, name, console)


@pytest.fixture(scope="module")
def tiny(uri, guest_files, events, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny1.xml"
    path.write_text(tiny_xml("tiny1", guest_files))
    g = boot(uri, "tiny1", path)
    try:
        yield g
    finally:
        g.console.close()
        virsh(uri, "destroy tiny1; undefine tiny1")


def reason(uri: str, name: str) -> str:
    return ok(uri, f"domstate {name} --reason").strip()


# -- console --------------------------------------------------------------------

def test_console_shows_boot_and_runs_a_command(tiny):
    con = tiny.console
    # the kernel's own boot messages came through, then the guest's init
    assert "Linux version" in con.text()
    assert con.text().index("Linux version") < con.text().index("GUEST READY")
    # typing goes in, the shell's output comes out: both directions work
    con.run("echo hi-$((6*7))", r"hi-42\r?\n")
    con.run("cat /proc/cmdline", r"console=ttyS0")
    assert reason(tiny.uri, "tiny1") == "running (unpaused)"   # started paused, then resumed


# -- reboots ----------------------------------------------------------------------

def test_virsh_reboot_acpi(tiny, events):
    con, n = tiny.console, len(events.events)
    at = con.mark()
    assert "Domain 'tiny1' is being rebooted" in ok(tiny.uri, "reboot tiny1 --mode acpi")
    # the power button reached the guest's acpid, which powered off; pyvirtd
    # turned that power-off into a reset (a "fake reboot", as libvirt does)
    con.wait("GUEST POWER BUTTON", since=at, timeout=BOOT_TIMEOUT)
    con.wait("Linux version", since=at, timeout=BOOT_TIMEOUT)
    con.wait("GUEST READY", since=at, timeout=BOOT_TIMEOUT)
    wait_for(lambda: ("tiny1", "reboot") in events.since(n))
    assert ("tiny1", RESUMED, 0) in events.since(n)
    assert not [e for e in events.since(n) if e[1:2] == (STOPPED,)]
    assert reason(tiny.uri, "tiny1") == "running (booted)"
    con.run("echo rebooted-$((2*3))", r"rebooted-6\r?\n")


def test_virsh_reboot_default_mode(tiny, events):
    con, n = tiny.console, len(events.events)
    at = con.mark()
    ok(tiny.uri, "reboot tiny1")
    con.wait("GUEST POWER BUTTON", since=at, timeout=BOOT_TIMEOUT)
    con.wait("GUEST READY", since=at, timeout=BOOT_TIMEOUT)
    wait_for(lambda: ("tiny1", "reboot") in events.since(n))
    assert reason(tiny.uri, "tiny1") == "running (booted)"


def test_virsh_reset(tiny, events):
    con, n = tiny.console, len(events.events)
    at = con.mark()
    assert "Domain 'tiny1' was reset" in ok(tiny.uri, "reset tiny1")
    con.wait("Linux version", since=at, timeout=BOOT_TIMEOUT)
    con.wait("GUEST READY", since=at, timeout=BOOT_TIMEOUT)
    assert "GUEST POWER BUTTON" not in con.text(at)     # a hard reset: no ACPI
    wait_for(lambda: ("tiny1", "reboot") in events.since(n))
    assert reason(tiny.uri, "tiny1") == "running (booted)"


def test_guest_reboots_itself_on_reboot_restart(tiny, events):
    con, n = tiny.console, len(events.events)
    pid = guest_pids(tiny_root(tiny))
    at = con.mark()
    con.send("reboot -f\n")
    con.wait("GUEST READY", since=at + 1, timeout=BOOT_TIMEOUT)
    wait_for(lambda: ("tiny1", "reboot") in events.since(n))
    assert guest_pids(tiny_root(tiny)) == pid          # the same QEMU carried on
    assert reason(tiny.uri, "tiny1") == "running (booted)"


def tiny_root(tiny: Booted):
    from pathlib import Path

    return Path(re.search(r"socket=(.*)/run/libvirt-sock", tiny.uri).group(1))


# -- ACPI shutdown (ends tiny1) -----------------------------------------------------------

def test_virsh_shutdown_acpi_powers_the_guest_off(tiny, events):
    con, n = tiny.console, len(events.events)
    root = tiny_root(tiny)
    at = con.mark()
    assert "Domain 'tiny1' is being shutdown" in ok(tiny.uri, "shutdown tiny1")
    con.wait("GUEST POWER BUTTON", since=at, timeout=BOOT_TIMEOUT)
    wait_for(lambda: reason(tiny.uri, "tiny1") == "shut off (shutdown)", timeout=30)
    wait_for(lambda: ("tiny1", STOPPED, STOPPED_SHUTDOWN) in events.since(n))
    got = [e for e in events.since(n) if e[0] == "tiny1" and e[1] != "reboot"]
    # shutdown (the guest asked for it), then stopped (shutdown): libvirt's two events
    assert got[:2] == [("tiny1", SHUTDOWN, SHUTDOWN_GUEST), ("tiny1", STOPPED, STOPPED_SHUTDOWN)]
    wait_for(lambda: guest_pids(root) == [])
    wait_for(lambda: con.closed)                  # the console session ended with the guest
    assert re.search(r"-\s+tiny1\s+shut off", ok(tiny.uri, "list --all"))


# -- on_poweroff / on_reboot --------------------------------------------------------------

def test_on_poweroff_restart_then_on_reboot_destroy(uri, guest_files, events, daemon, tmp_path):
    path = tmp_path / "tiny2.xml"
    path.write_text(tiny_xml("tiny2", guest_files, on_poweroff="restart", on_reboot="destroy"))
    g = boot(uri, "tiny2", path)
    try:
        con = g.console
        # the guest powers off (ACPI, then poweroff -f): on_poweroff=restart boots it again
        n, at = len(events.events), con.mark()
        ok(uri, "shutdown tiny2")
        con.wait("GUEST POWER BUTTON", since=at, timeout=BOOT_TIMEOUT)
        con.wait("GUEST READY", since=at, timeout=BOOT_TIMEOUT)
        assert reason(uri, "tiny2") == "running (booted)"
        assert not [e for e in events.since(n) if e[0] == "tiny2" and e[1] == STOPPED]

        # the guest reboots itself: on_reboot=destroy ends it instead (as
        # libvirt: reason destroyed; pyvirtd also sends stopped/destroyed)
        n = len(events.events)
        con.send("reboot -f\n")
        wait_for(lambda: reason(uri, "tiny2") == "shut off (destroyed)", timeout=30)
        wait_for(lambda: ("tiny2", STOPPED, STOPPED_DESTROYED) in events.since(n))
        assert ("tiny2", "reboot") in events.since(n)
        assert guest_pids(daemon.root) == []
    finally:
        g.console.close()
        virsh(uri, "destroy tiny2; undefine tiny2")
