"""VIR_DOMAIN_START_AUTODESTROY: a guest started so ends when the connection that started it closes."""

from __future__ import annotations

import pytest

from daemon_helpers import (EventCollector, guest_pids, guest_xml, kill_guests, needs_qemu, ok,
                            qemu_uri, start_daemon, stop_daemon, virsh, wait_for)

pytestmark = needs_qemu


@pytest.fixture
def daemon(tmp_path):
    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        yield d
    finally:
        stop_daemon(d)
        kill_guests(root)


def test_autodestroy_transient_and_persistent(daemon, tmp_path):
    import libvirt

    uri = qemu_uri(daemon)
    events = EventCollector(uri)
    try:
        conn = libvirt.open(uri)
        conn.createXML(guest_xml("ad-t"), libvirt.VIR_DOMAIN_START_AUTODESTROY)
        xml = tmp_path / "p.xml"
        xml.write_text(guest_xml("ad-p"))
        ok(uri, f"define {xml}")
        conn.lookupByName("ad-p").createWithFlags(libvirt.VIR_DOMAIN_START_AUTODESTROY)
        conn.createXML(guest_xml("keep"), 0)          # no flag: outlives the connection
        assert len(guest_pids(daemon.root)) == 3
        conn.close()

        events.wait(("ad-p", libvirt.VIR_DOMAIN_EVENT_STOPPED,
                     libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED))
        events.wait(("ad-t", libvirt.VIR_DOMAIN_EVENT_STOPPED,
                     libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED))
        wait_for(lambda: len(guest_pids(daemon.root)) == 1)
        assert ok(uri, "domstate ad-p --reason").strip() == "shut off (destroyed)"
        assert virsh(uri, "domstate ad-t").rc != 0          # transient: gone with its QEMU
        assert ok(uri, "domstate keep").strip() == "running"

        # only the run that connection started: a later start by another client stays
        ok(uri, "start ad-p")
        assert ok(uri, "domstate ad-p").strip() == "running"
    finally:
        events.close()
