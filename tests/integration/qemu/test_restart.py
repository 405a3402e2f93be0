"""kill -9 pyvirtd while guests run, start it again: the guests are still there and controllable.

A guest whose QEMU was killed while no daemon ran is reported shut off
(crashed); a guest left running keeps its id, its state, its console, and
answers suspend/resume/destroy.  Persistent guests marked autostart start
with the daemon.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from daemon_helpers import (guest_pid, guest_pids, guest_xml, kill_guests, needs_qemu, ok, qemu_uri,
                            start_daemon, stop_daemon, virsh)

pytestmark = needs_qemu


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "pyvirtd"
    try:
        yield root
    finally:
        kill_guests(root)


def kill9(d) -> None:
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()


def test_guests_survive_kill9_and_are_reattached(root, tmp_path):
    import libvirt

    d = start_daemon(root)
    uri = qemu_uri(d)
    for name in ("keep", "lost", "held"):
        (tmp_path / f"{name}.xml").write_text(guest_xml(name))
        ok(uri, f"define {tmp_path / name}.xml")
        ok(uri, f"start {name}")
    ok(uri, "suspend held")
    keep_id = int(ok(uri, "domid keep"))
    held_id = int(ok(uri, "domid held"))
    keep_pid = guest_pid(root, "keep")
    tty = re.search(r"tty='(/dev/pts/\d+)'", ok(uri, "dumpxml keep")).group(1)

    kill9(d)
    os.kill(guest_pid(root, "lost"), signal.SIGKILL)   # dies while no daemon watches
    assert keep_pid in guest_pids(root)

    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        out = ok(uri, "list --all")
        assert re.search(rf"{keep_id}\s+keep\s+running", out)
        assert re.search(rf"{held_id}\s+held\s+paused", out)
        assert re.search(r"-\s+lost\s+shut off", out)
        assert ok(uri, "domstate lost --reason").strip() == "shut off (crashed)"
        assert ok(uri, "domstate keep --reason").strip() == "running (booted)"
        assert ok(uri, "domstate held --reason").strip() == "paused (user)"
        assert f"tty='{tty}'" in ok(uri, "dumpxml keep")
        assert guest_pid(root, "keep") == keep_pid

        # still controllable
        ok(uri, "suspend keep")
        assert ok(uri, "domstate keep --reason").strip() == "paused (user)"
        ok(uri, "resume keep; resume held")
        assert ok(uri, "domstate keep --reason").strip() == "running (unpaused)"
        # the console is reachable again
        conn = libvirt.open(uri)
        try:
            st = conn.newStream(0)
            conn.lookupByName("keep").openConsole(None, st, 0)
            st.finish()
        finally:
            conn.close()
        # a new start gets an id after the reattached ones
        ok(uri, "start lost")
        assert int(ok(uri, "domid lost")) > max(keep_id, held_id)
        ok(uri, "destroy keep")
        assert keep_pid not in guest_pids(root)
        assert ok(uri, "domstate keep --reason").strip() == "shut off (destroyed)"

        # a clean stop detaches too: guests keep running
        ok(uri, "autostart keep")
        held_pid = guest_pid(root, "held")
    finally:
        stop_daemon(d)
    assert held_pid in guest_pids(root)

    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        assert ok(uri, "domstate held").strip() == "running"
        assert ok(uri, "domstate keep --reason").strip() == "running (booted)"   # autostarted
    finally:
        virsh(uri, "destroy keep; destroy held; destroy lost")
        stop_daemon(d)
    assert not guest_pids(root)


def test_guest_found_dead_at_restart_is_announced_to_the_first_listener(root, tmp_path):
    """The stopped/failed event of a guest whose QEMU died while no daemon ran is held
    until a client registers for domain events (libvirt emits it before anyone can
    listen), then delivered once."""
    import libvirt

    from daemon_helpers import EventCollector

    d = start_daemon(root)
    uri = qemu_uri(d)
    (tmp_path / "gone.xml").write_text(guest_xml("gone"))
    ok(uri, f"define {tmp_path / 'gone.xml'}")
    ok(uri, "start gone")
    kill9(d)
    os.kill(guest_pid(root, "gone"), signal.SIGKILL)

    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        assert ok(uri, "domstate gone --reason").strip() == "shut off (crashed)"
        first = EventCollector(uri)
        try:
            first.wait(("gone", libvirt.VIR_DOMAIN_EVENT_STOPPED,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED), timeout=5)
        finally:
            first.close()
        later = EventCollector(uri)       # delivered once, not replayed to later clients
        try:
            # a replay would come at registration, before the event of anything done after it
            ok(uri, "undefine gone")
            undefined = ("gone", libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
                         libvirt.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED)
            later.wait(undefined, timeout=5)
            assert later.events == [undefined]
        finally:
            later.close()
    finally:
        stop_daemon(d)
