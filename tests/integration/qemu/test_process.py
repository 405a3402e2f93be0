"""Launching, finding and stopping real QEMU processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pyvirtd.drivers.qemu import process
from pyvirtd.drivers.qemu.monitor import Monitor
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from qemu_helpers import QEMU, needs_kvm, needs_qemu, qemu_guard  # noqa: F401  (fixture)

pytestmark = [needs_qemu, needs_kvm]


async def test_launch_daemonizes_and_logs(qemu_guard):
    g = qemu_guard.guest()
    pid = await process.launch(g.argv(), log_path=g.log, pid_path=g.pidfile)
    assert process.read_pidfile(g.pidfile) == pid
    assert process.is_running(pid, g.uuid)
    assert not process.is_running(pid, "not-this-guest")
    # a daemonized QEMU is nobody's child here: it survives its starter
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
    log = Path(g.log).read_text()
    assert "starting up" in log and g.uuid in log and "-daemonize" in log
    # reattach by pid, as a restarted daemon does: the monitor still answers
    async with await Monitor.connect(g.qmp, timeout=5) as mon:
        assert await mon.query_status() == (False, "prelaunch")
    await process.terminate(pid, marker=g.uuid)
    assert not process.is_running(pid)
    with trio.fail_after(1):
        await process.wait_exit(pid)    # already gone: returns at once


async def test_bad_argv_gives_qemus_error(qemu_guard):
    g = qemu_guard.guest()
    with pytest.raises(VirError) as ei:
        await process.launch(g.argv("kvm", "-device", "no-such-device"), log_path=g.log,
                             pid_path=g.pidfile)
    assert ei.value.code == P.VIR_ERR_INTERNAL_ERROR
    assert ei.value.message.startswith("internal error: process exited while connecting to monitor: ")
    assert "'no-such-device' is not a valid device model name" in ei.value.message
    assert "starting up" not in ei.value.message     # our header is not QEMU's text
    assert process.read_pidfile(g.pidfile) is None or not process.is_running(
        process.read_pidfile(g.pidfile), g.uuid)
    # the log keeps it too, appended after the header
    assert "no-such-device" in Path(g.log).read_text()


async def test_missing_emulator(tmp_path):
    with pytest.raises(VirError) as ei:
        await process.launch([str(tmp_path / "qemu-nope"), "-S"], log_path=str(tmp_path / "l.log"),
                             pid_path=str(tmp_path / "p.pid"))
    assert ei.value.code == P.VIR_ERR_INTERNAL_ERROR
    assert "Unable to start emulator" in ei.value.message


async def test_second_start_refused_first_guest_untouched(qemu_guard):
    g = qemu_guard.guest()
    pid = await process.launch(g.argv(), log_path=g.log, pid_path=g.pidfile)
    other = qemu_guard.guest()
    argv = other.argv()
    with pytest.raises(VirError, match="pid file"):
        await process.launch(argv, log_path=other.log, pid_path=g.pidfile)   # same pidfile
    assert process.is_running(pid, g.uuid)
    assert process.read_pidfile(g.pidfile) == pid


async def test_wait_exit_and_terminate(qemu_guard):
    g = qemu_guard.guest()
    pid = await process.launch(g.argv(), log_path=g.log, pid_path=g.pidfile)
    with trio.move_on_after(0.2) as scope:
        await process.wait_exit(pid)
    assert scope.cancelled_caught                 # still running: wait_exit blocks, cancellably

    async def killer():
        await trio.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            await process.wait_exit(pid)
    assert not process.is_running(pid)
    await process.terminate(pid)                   # gone already: success


async def test_terminate_graceful_and_forced(qemu_guard):
    g = qemu_guard.guest()
    pid = await process.launch(g.argv(), log_path=g.log, pid_path=g.pidfile)
    os.kill(pid, signal.SIGSTOP)                   # a QEMU that cannot act on SIGTERM
    with pytest.raises(VirError) as ei:
        await process.terminate(pid, graceful=True, timeout=0.3)
    assert ei.value.code == P.VIR_ERR_SYSTEM_ERROR
    assert ei.value.message == f"Failed to terminate process {pid} with SIGTERM: Device or resource busy"
    assert process.is_running(pid, g.uuid)
    with trio.fail_after(5):
        await process.terminate(pid, timeout=0.3)  # SIGKILL after the timeout
    assert not process.is_running(pid)


async def test_terminate_leaves_other_processes(qemu_guard):
    g = qemu_guard.guest()
    pid = await process.launch(g.argv(), log_path=g.log, pid_path=g.pidfile)
    await process.terminate(pid, marker="some-other-uuid")   # a recycled pid: not ours
    assert process.is_running(pid, g.uuid)
    await process.terminate(pid, marker=g.uuid)
    assert not process.is_running(pid)


async def test_survives_killed_starter(qemu_guard, tmp_path):
    """A guest started by a process that is then SIGKILLed keeps running."""
    g = qemu_guard.guest()
    script = tmp_path / "starter.py"
    script.write_text(
        "import sys, trio\n"
        "from pyvirtd.drivers.qemu import process\n"
        "async def main():\n"
        f"    print(await process.launch({g.argv()!r}, log_path={g.log!r}, pid_path={g.pidfile!r}),"
        " flush=True)\n"
        "    await trio.sleep_forever()\n"
        "trio.run(main)\n")
    proc = await trio.lowlevel.open_process([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        with trio.fail_after(10):
            line = await proc.stdout.receive_some(100)
        pid = int(line)
    finally:
        proc.kill()
        await proc.wait()
    assert process.is_running(pid, g.uuid)
    async with await Monitor.connect(g.qmp, timeout=5) as mon:
        await mon.cont()
        assert await mon.query_status() == (True, "running")
