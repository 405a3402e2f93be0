"""The QMP monitor against a real QEMU (KVM firmware-only guests and TCG)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import trio

from pyvirtd.drivers.qemu import process
from pyvirtd.drivers.qemu.monitor import Monitor, Vcpu
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from qemu_helpers import needs_kvm, needs_qemu, qemu_guard  # noqa: F401  (fixture)

pytestmark = needs_qemu

ACCELS = [pytest.param("kvm", marks=needs_kvm), "tcg"]


async def start(guard, accel="kvm", *extra):
    g = guard.guest()
    pid = await process.launch(g.argv(accel, *extra), log_path=g.log, pid_path=g.pidfile)
    mon = await Monitor.connect(g.qmp, timeout=10)
    return g, pid, mon


@pytest.mark.parametrize("accel", ACCELS)
async def test_lifecycle_and_events(qemu_guard, accel):
    g, pid, mon = await start(qemu_guard, accel)
    events = []
    async with trio.open_nursery() as nursery:
        async def collect():
            async for ev in mon.events():
                events.append(ev["event"])
        nursery.start_soon(collect)

        assert mon.greeting["QMP"]["version"]["qemu"]["major"] >= 7
        assert await mon.query_status() == (False, "prelaunch")
        await mon.cont()
        assert await mon.query_status() == (True, "running")
        await mon.stop()
        assert await mon.query_status() == (False, "paused")
        await mon.system_reset()
        await mon.cont()
        assert await mon.query_kvm() == (True, accel == "kvm")
        await mon.quit()                     # the lost connection is the answer, not an error
        with trio.fail_after(5):
            await process.wait_exit(pid)
        # events() ends by itself once QEMU closed the monitor
    assert events[:2] == ["RESUME", "STOP"]
    assert "RESET" in events and events[-1] == "SHUTDOWN"
    assert mon.closed
    with pytest.raises(VirError) as ei:
        await mon.query_status()
    assert ei.value.code == P.VIR_ERR_OPERATION_FAILED
    assert ei.value.message == "operation failed: End of file from qemu monitor"
    await mon.close()   # idempotent after EOF


@needs_kvm
async def test_queries(qemu_guard):
    g, pid, mon = await start(
        qemu_guard, "kvm",
        "-smp", "2", "-chardev", "pty,id=charserial0", "-device", "isa-serial,chardev=charserial0",
        "-device", "virtio-balloon-pci,id=balloon0", "-vnc", "127.0.0.1:0,to=99",
        "-blockdev", '{"driver":"null-co","node-name":"n0","size":1048576}',
        "-device", "virtio-blk-pci,drive=n0,id=virtio-disk0")
    async with mon:
        pty = (await mon.query_chardev())["charserial0"]
        assert pty.startswith("/dev/pts/") and os.path.exists(pty)
        vcpus = await mon.query_cpus_fast()
        assert [v.index for v in vcpus] == [0, 1] and all(isinstance(v, Vcpu) for v in vcpus)
        assert all(v.thread_id and os.path.exists(f"/proc/{pid}/task/{v.thread_id}") for v in vcpus)
        await mon.cont()
        assert await mon.query_balloon() == 64 << 20
        await mon.balloon(32 << 20)         # accepted; the firmware-only guest never deflates
        block = await mon.query_block()
        assert any(b.get("qdev", "").endswith("virtio-disk0/virtio-backend") for b in block)
        stats = await mon.query_blockstats()
        assert "rd_bytes" in stats[0]["stats"]
        vnc = await mon.query_vnc()
        assert vnc["enabled"] and vnc["host"] == "127.0.0.1"
        assert "running" in await mon.human_monitor_command("info status")
        major, minor, micro, package = await mon.query_version()
        assert major >= 7
        assert await mon.query_name() == g.name


@needs_kvm
async def test_errors_and_passthrough(qemu_guard):
    g, pid, mon = await start(qemu_guard, "kvm")
    async with mon:
        with pytest.raises(VirError) as ei:
            await mon.execute("no-such-command")
        assert ei.value.code == P.VIR_ERR_INTERNAL_ERROR
        assert ei.value.domain == P.VIR_FROM_QEMU
        assert ei.value.message == ("internal error: unable to execute QEMU command "
                                    "'no-such-command': The command no-such-command has not been found")
        with pytest.raises(VirError, match="unable to execute QEMU command 'balloon'"):
            await mon.balloon(1 << 20)          # no balloon device
        reply = json.loads(await mon.execute_json('{"execute":"query-status"}'))
        assert reply["return"]["status"] == "prelaunch"
        reply = json.loads(await mon.execute_json('{"execute":"nope"}'))   # errors come back as text
        assert reply["error"]["class"] == "CommandNotFound"
        with pytest.raises(VirError, match="cannot parse json"):
            await mon.execute_json("not json")
        assert await mon.execute("query-status") == {"status": "prelaunch", "singlestep": False,
                                                     "running": False}


@needs_kvm
async def test_pending_call_fails_when_qemu_dies(qemu_guard):
    g, pid, mon = await start(qemu_guard, "kvm")
    os.kill(pid, signal.SIGSTOP)               # the call below stays in flight ...
    result = []

    async def call():
        with pytest.raises(VirError) as ei:
            await mon.query_status()
        result.append(ei.value)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)       # ... until QEMU dies under it
    assert result[0].code == P.VIR_ERR_OPERATION_FAILED
    with trio.fail_after(5):
        async for _ in mon.events():          # the event stream ends too
            pass
    await mon.close()


async def test_connect_timeout(tmp_path):
    with trio.fail_after(5):
        with pytest.raises(VirError) as ei:
            await Monitor.connect(str(tmp_path / "nothing.sock"), timeout=0.3)
    assert ei.value.code == P.VIR_ERR_INTERNAL_ERROR
    assert "failed to connect to monitor socket" in ei.value.message


@needs_kvm
async def test_two_monitors_concurrently(qemu_guard):
    _, _, m1 = await start(qemu_guard, "kvm")
    _, _, m2 = await start(qemu_guard, "kvm")
    async with m1, m2:
        results = []

        async def ask(m):
            results.append(await m.query_status())

        async with trio.open_nursery() as nursery:
            for m in (m1, m2):
                for _ in range(20):
                    nursery.start_soon(ask, m)
        assert results == [(False, "prelaunch")] * 40


@needs_kvm
async def test_deadline_on_a_stopped_qemu_then_usable_after_sigcont(qemu_guard):
    """A SIGSTOPped QEMU: the call fails at the deadline with libvirt's timeout error,
    the monitor is busy until QEMU answers, and works again once QEMU runs."""
    g, pid, mon = await start(qemu_guard, "kvm")
    mon.deadline = 0.5
    async with mon:
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(VirError) as ei:
                await mon.execute("query-name")
            assert ei.value.code == P.VIR_ERR_OPERATION_TIMEOUT
            assert ei.value.message == ("Timed out during operation: cannot acquire state change "
                                        "lock (held by monitor=query-name)")
            assert mon.busy      # query-name is still in flight
            assert mon.waiting_since is not None
            # a second command names the one that holds the monitor
            with pytest.raises(VirError) as ei:
                await mon.query_status()
            assert "(held by monitor=query-name)" in ei.value.message
        finally:
            os.kill(pid, signal.SIGCONT)
        mon.deadline = 10
        assert await mon.query_status() == (False, "prelaunch")
        with trio.fail_after(10):
            while mon.busy:           # the late answers arrived and were dropped
                await trio.sleep(0.01)
        assert not mon.closed and mon.waiting_since is None


@needs_kvm
async def test_pending_monitor_commands_wait_for_establish(qemu_guard):
    """Monitor.pending: a command issued before the connection exists waits for it."""
    g = qemu_guard.guest()
    mon = Monitor.pending(g.qmp, deadline=10)
    assert mon.busy and not mon.closed
    results = []
    async with trio.open_nursery() as nursery:
        async def ask():
            results.append(await mon.query_status())
        nursery.start_soon(ask)
        await trio.sleep(0)
        assert results == []
        await process.launch(g.argv("kvm"), log_path=g.log, pid_path=g.pidfile)
        await mon.establish(timeout=10)
    assert results == [(False, "prelaunch")]
    assert not mon.busy
    await mon.close()


async def test_pending_monitor_that_cannot_connect_fails_its_waiters(tmp_path):
    mon = Monitor.pending(str(tmp_path / "nothing.sock"), deadline=10)
    errors = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def ask():
                with pytest.raises(VirError) as ei:
                    await mon.query_status()
                errors.append(ei.value)
            nursery.start_soon(ask)
            with pytest.raises(VirError):
                await mon.establish(timeout=0.3)
    assert [e.code for e in errors] == [P.VIR_ERR_OPERATION_FAILED]
    assert mon.closed


async def test_pending_monitor_times_out_like_a_stuck_one(tmp_path):
    mon = Monitor.pending(str(tmp_path / "later.sock"), deadline=0.3)
    with trio.fail_after(5):
        with pytest.raises(VirError) as ei:
            await mon.query_status()
    assert ei.value.code == P.VIR_ERR_OPERATION_TIMEOUT
    assert "(held by monitor=reconnect)" in ei.value.message
    await mon.close()
