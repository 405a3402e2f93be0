"""A stuck guest never slows anyone else (issue 22): a QEMU frozen with SIGSTOP.

Calls on the frozen guest fail at the monitor deadline (qemu_monitor_timeout,
short here) with libvirt's VIR_ERR_OPERATION_TIMEOUT; while they are still
pending, every other client's calls on the other guests, listings, lookups
and all-domain stats with NOWAIT complete; the guest works again once QEMU is
continued.  After a kill -9 of the daemon, guests are listed at once in their
last known state while their monitors reconnect in the background, and a call
on a guest whose monitor is not back yet waits for it.

Nothing here measures time: the deadline only bounds the stuck calls, and
"while still pending" is checked on the pending call itself.
"""

from __future__ import annotations

import os
import re
import signal
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from daemon_helpers import (guest_pid, guest_pids, guest_xml, kill_guests, needs_qemu, ok, qemu_uri,
                            start_daemon, stop_daemon, wait_for)

pytestmark = needs_qemu

DEADLINE = 10      # qemu_monitor_timeout of these daemons, seconds
CONFIG = f"qemu_monitor_timeout: {DEADLINE}\n"


def _stats_by_name(records) -> dict[str, dict]:
    return {dom.name(): stats for dom, stats in records}


def _failure(fut: Future):
    """The libvirtError a pending call ended with (it must have failed)."""
    import libvirt
    exc = fut.exception(timeout=DEADLINE * 3)
    assert isinstance(exc, libvirt.libvirtError), f"expected a libvirt error, got {exc!r}"
    return exc


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "pyvirtd"
    try:
        yield root
    finally:
        for pid in guest_pids(root):     # a stopped QEMU must be continued to die cleanly
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kill_guests(root)


def _start_guests(uri: str, tmp_path, names: list[str]) -> None:
    for name in names:
        (tmp_path / f"{name}.xml").write_text(guest_xml(name))
        ok(uri, f"create {tmp_path / name}.xml")


def test_frozen_guest_times_out_and_never_slows_the_others(root, tmp_path):
    import libvirt

    d = start_daemon(root, config=CONFIG)
    uri = qemu_uri(d)
    pool = ThreadPoolExecutor(4)
    conns = []
    try:
        _start_guests(uri, tmp_path, ["stk-frozen", "stk-a", "stk-b"])
        frozen_pid = guest_pid(root, "stk-frozen")
        conns = [libvirt.open(uri) for _ in range(3)]
        stuck, stats_client, other = conns
        os.kill(frozen_pid, signal.SIGSTOP)

        # two clients get stuck on the frozen guest: a suspend, and all-domain
        # stats without NOWAIT (which asks every guest's monitor)
        suspend = pool.submit(stuck.lookupByName("stk-frozen").suspend)
        full_stats = pool.submit(stats_client.getAllDomainStats, 0, 0)

        # meanwhile everyone else is served
        listed = {dom.name(): dom.state()[0] for dom in other.listAllDomains(0)}
        assert listed == {"stk-frozen": libvirt.VIR_DOMAIN_RUNNING,
                          "stk-a": libvirt.VIR_DOMAIN_RUNNING,
                          "stk-b": libvirt.VIR_DOMAIN_RUNNING}
        assert re.search(r"stk-frozen\s+running", ok(uri, "list"))
        a = other.lookupByName("stk-a")
        assert other.lookupByUUIDString(a.UUIDString()).name() == "stk-a"
        assert a.info()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert other.lookupByName("stk-frozen").info()[0] == libvirt.VIR_DOMAIN_RUNNING
        a.suspend()
        assert a.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        a.resume()
        ok(uri, "dominfo stk-b")
        # libvirt's control info tells an operator that the monitor is occupied
        wait_for(lambda: ok(uri, "domcontrol stk-frozen").startswith("occupied ("),
                 DEADLINE / 2, what="domcontrol occupied")
        assert ok(uri, "domcontrol stk-a").strip() == "ok"
        # NOWAIT: the frozen guest is reported with what is known without its monitor
        nowait = _stats_by_name(other.getAllDomainStats(
            0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT))
        assert set(nowait) == {"stk-frozen", "stk-a", "stk-b"}
        assert nowait["stk-frozen"]["state.state"] == libvirt.VIR_DOMAIN_RUNNING
        assert nowait["stk-frozen"]["vcpu.current"] == 1
        assert nowait["stk-frozen"]["balloon.maximum"] == 64 * 1024
        assert nowait["stk-a"]["vcpu.0.time"] > 0       # asked its monitor
        # stats of the other guests alone never touch the frozen one
        only_b = _stats_by_name(other.domainListGetStats([other.lookupByName("stk-b")], 0, 0))
        assert only_b["stk-b"]["vcpu.0.time"] > 0
        # ... and all of that was answered while the stuck calls were still pending
        assert not suspend.done() and not full_stats.done()

        # the stuck call fails at the deadline with libvirt's error
        err = _failure(suspend)
        assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT
        assert err.get_error_domain() == libvirt.VIR_FROM_QEMU
        assert "Timed out during operation: cannot acquire state change lock (held by monitor=" \
            in err.get_error_message()
        # stats without NOWAIT come back once the deadline passed, every guest in them
        full = _stats_by_name(full_stats.result(timeout=DEADLINE * 3))
        assert set(full) == {"stk-frozen", "stk-a", "stk-b"}
        assert full["stk-frozen"]["state.state"] == libvirt.VIR_DOMAIN_RUNNING
        assert full["stk-a"]["vcpu.0.time"] > 0

        # a later call on the still frozen guest fails the same way
        err = _failure(pool.submit(stuck.lookupByName("stk-frozen").suspend))
        assert err.get_error_code() == libvirt.VIR_ERR_OPERATION_TIMEOUT

        # thawed: QEMU runs the stop it was sent (the guest reports paused, as it is),
        # and the guest answers again
        os.kill(frozen_pid, signal.SIGCONT)
        f = other.lookupByName("stk-frozen")
        wait_for(lambda: f.state()[0] == libvirt.VIR_DOMAIN_PAUSED, DEADLINE,
                 what="the late stop to take effect")
        f.resume()
        assert f.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED]
        ok(uri, "suspend stk-frozen; resume stk-frozen")
        wait_for(lambda: ok(uri, "domcontrol stk-frozen").strip() == "ok", DEADLINE,
                 what="domcontrol ok after the thaw")
        # and NOWAIT asks its monitor again once it has nothing in flight
        wait_for(lambda: _stats_by_name(other.getAllDomainStats(
            0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT))["stk-frozen"].get(
                "vcpu.0.time", 0) > 0, DEADLINE, what="NOWAIT stats of the thawed guest")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for c in conns:
            c.close()
        stop_daemon(d)


def test_restart_lists_at_once_and_calls_wait_for_the_monitor(root, tmp_path):
    import libvirt

    d = start_daemon(root, config=CONFIG)
    uri = qemu_uri(d)
    _start_guests(uri, tmp_path, ["stk-r1", "stk-r2", "stk-r3"])
    (tmp_path / "stk-r4.xml").write_text(guest_xml("stk-r4"))
    ok(uri, f"define {tmp_path / 'stk-r4.xml'}; start stk-r4")
    ok(uri, "suspend stk-r2")
    ids = {n: ok(uri, f"domid {n}").strip() for n in ("stk-r1", "stk-r2", "stk-r3")}
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    # stk-r3's QEMU cannot answer its monitor when the daemon comes back
    r3_pid = guest_pid(root, "stk-r3")
    os.kill(r3_pid, signal.SIGSTOP)
    os.kill(guest_pid(root, "stk-r4"), signal.SIGSTOP)

    d = start_daemon(root, config=CONFIG)
    uri = qemu_uri(d)
    pool = ThreadPoolExecutor(2)
    conns = []
    try:
        # listed in the last known state, although stk-r3's monitor is not back
        out = ok(uri, "list --all")
        assert re.search(rf"{ids['stk-r1']}\s+stk-r1\s+running", out)
        assert re.search(rf"{ids['stk-r2']}\s+stk-r2\s+paused", out)
        assert re.search(rf"{ids['stk-r3']}\s+stk-r3\s+running", out)
        conns = [libvirt.open(uri), libvirt.open(uri)]
        waiting, other = conns
        # a call on stk-r3 waits for its monitor instead of failing ...
        suspend = pool.submit(waiting.lookupByName("stk-r3").suspend)
        # ... while the other guests are controllable
        r1 = other.lookupByName("stk-r1")
        r1.suspend()
        r1.resume()
        other.lookupByName("stk-r2").resume()
        assert ok(uri, "domstate stk-r2").strip() == "running"
        # a guest whose monitor is not back can still be destroyed, and is reported so
        ok(uri, "destroy stk-r4")
        assert ok(uri, "domstate stk-r4 --reason").strip() == "shut off (destroyed)"
        assert not suspend.done()
        # QEMU continues: the monitor comes back and the waiting call goes through
        os.kill(r3_pid, signal.SIGCONT)
        assert suspend.result(timeout=DEADLINE * 3) == 0
        assert ok(uri, "domstate stk-r3 --reason").strip() == "paused (user)"
        ok(uri, "resume stk-r3")
        assert guest_pid(root, "stk-r3") == r3_pid
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for c in conns:
            c.close()
        stop_daemon(d)



def test_frozen_guest_can_be_destroyed(root, tmp_path):
    d = start_daemon(root, config=CONFIG)
    uri = qemu_uri(d)
    try:
        _start_guests(uri, tmp_path, ["stk-gone"])
        (tmp_path / "stk-kept.xml").write_text(guest_xml("stk-kept"))
        ok(uri, f"define {tmp_path / 'stk-kept.xml'}; start stk-kept")
        pids = {n: guest_pid(root, n) for n in ("stk-gone", "stk-kept")}
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)
        ok(uri, "destroy stk-gone; destroy stk-kept")
        assert ok(uri, "domstate stk-kept --reason").strip() == "shut off (destroyed)"
        assert re.search(r"stk-kept\s+shut off", ok(uri, "list --all"))
        assert "stk-gone" not in ok(uri, "list --all")      # transient: gone with its run
        assert not set(pids.values()) & set(guest_pids(root))
    finally:
        stop_daemon(d)
