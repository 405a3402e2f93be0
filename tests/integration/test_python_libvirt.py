"""python-libvirt, the client nova and virt-manager are built on, driving the daemon."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import threading

import libvirt
import pytest

from tests.conftest import start_daemon, stop_daemon

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    daemon = start_daemon(tmp_path_factory.mktemp("pylibvirt") / "pyvirtd")
    yield daemon
    assert stop_daemon(daemon) == 0, daemon.log()
    assert "Traceback" not in daemon.log()


_loop_started = False


@pytest.fixture(scope="module")
def event_loop_impl():
    """libvirt's default event loop, run in a thread, as python clients do it.

    Registering it is process-wide and cannot be undone; it also turns on
    keepalive for connections opened afterwards, which is harmless here.
    """
    global _loop_started
    if not _loop_started:
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-event-loop", daemon=True).start()
        _loop_started = True


def test_open_and_close(d) -> None:
    conn = libvirt.open(d.uri())
    assert conn.isAlive() == 1
    assert conn.getURI() == d.uri()      # the client keeps the URI it was given
    assert conn.close() == 0
    with pytest.raises(libvirt.libvirtError):
        conn.getLibVersion()


def test_open_read_only(d) -> None:
    conn = libvirt.openReadOnly(d.uri())
    assert conn.getLibVersion() == 9_000_000
    conn.close()


def test_connection_facts(d) -> None:
    conn = libvirt.open(d.uri())
    assert conn.getLibVersion() == 9_000_000
    assert conn.getVersion() > 0
    assert conn.getType() == "TEST"      # as libvirtd's test driver answers
    assert conn.getHostname() == socket.gethostname()
    # libvirt's test driver node: i686, 3 GiB (reported in MiB), 16 cpus at 1400 MHz,
    # 2 NUMA nodes, 2 sockets, 2 cores, 2 threads
    assert conn.getInfo() == ["i686", 3072, 16, 1400, 2, 2, 2, 2]
    conn.close()


def test_many_connections_at_once(d) -> None:
    conns = [libvirt.open(d.uri()) for _ in range(20)]
    assert {c.getLibVersion() for c in conns} == {9_000_000}
    for c in conns:
        c.close()


def test_close_callback_registration_and_remote_close(d, event_loop_impl) -> None:
    conn = libvirt.open(d.uri())
    reasons: queue.Queue = queue.Queue()
    assert conn.registerCloseCallback(lambda c, reason, opaque: reasons.put(reason), None) == 0
    conn.unregisterCloseCallback()       # returns None in the python binding
    assert conn.registerCloseCallback(lambda c, reason, opaque: reasons.put(reason), None) == 0
    # the daemon drops the client: the callback reports EOF
    out = subprocess.run(["virt-admin", "-c", d.admin_uri, "srv-clients-list libvirtd"],
                         capture_output=True, text=True, check=True).stdout
    ids = [line.split()[0] for line in out.splitlines()[2:] if line.strip()]
    assert len(ids) == 1, out
    subprocess.run(["virt-admin", "-c", d.admin_uri, f"client-disconnect libvirtd {ids[0]}"],
                   capture_output=True, check=True)
    assert reasons.get(timeout=5) == libvirt.VIR_CONNECT_CLOSE_REASON_EOF
    assert conn.isAlive() == 0


def test_domain_lifecycle_events_from_another_connection(d, event_loop_impl) -> None:
    watcher = libvirt.open(d.uri())
    actor = libvirt.open(d.uri())
    events: queue.Queue = queue.Queue()

    def lifecycle(conn, dom, event, detail, opaque) -> None:
        events.put((dom.name(), event, detail, opaque))

    cb = watcher.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        lifecycle, "tag")
    try:
        dom = actor.lookupByName("test")
        dom.suspend()
        dom.resume()
        got = [events.get(timeout=5), events.get(timeout=5)]
        assert got == [
            ("test", libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, "tag"),
            ("test", libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, "tag"),
        ]
    finally:
        watcher.domainEventDeregisterAny(cb)
    # deregistered: no more events.  A new callback on the same connection is
    # sent the same events: once it has both, a leftover registration would
    # have been sent at least the suspend before them.
    later: queue.Queue = queue.Queue()
    cb = watcher.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
        lambda conn, dom, event, detail, opaque: later.put(event), None)
    dom.suspend()
    dom.resume()
    assert [later.get(timeout=5), later.get(timeout=5)] == [
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED]
    assert events.empty()
    watcher.domainEventDeregisterAny(cb)
    watcher.close()
    actor.close()


def test_domain_event_filtered_to_one_domain(d, event_loop_impl) -> None:
    watcher = libvirt.open(d.uri())
    actor = libvirt.open(d.uri())
    events: queue.Queue = queue.Queue()
    dom_w = watcher.lookupByName("test")
    cb = watcher.domainEventRegisterAny(dom_w, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                        lambda c, dom, ev, det, o: events.put((dom.name(), ev)),
                                        None)
    dom = actor.lookupByName("test")
    dom.suspend()
    dom.resume()
    assert [events.get(timeout=5), events.get(timeout=5)] == [
        ("test", libvirt.VIR_DOMAIN_EVENT_SUSPENDED), ("test", libvirt.VIR_DOMAIN_EVENT_RESUMED)]
    watcher.domainEventDeregisterAny(cb)
    watcher.close()
    actor.close()
