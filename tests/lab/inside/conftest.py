"""Inside the lab VM: one pyvirtd for the session, driven with Debian's virsh.

Storage is reached through qemu:///session of a `pyvirtd --root` daemon, as
on the host (tests/integration/test_virsh_storage.py); the QEMU driver loads
because the image carries qemu-system-x86, though no guest runs here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningDaemon, VirshResult, stop_daemon

IQN = "iqn.2024-01.lab.pyvirtd:store"     # tests/lab/guest_job.sh's target


def start_daemon(root: Path, timeout: float = 120) -> RunningDaemon:
    """tests.conftest.start_daemon with a deadline for TCG (the QEMU driver probes
    qemu-system-x86_64 at start, slow under emulation)."""
    root.mkdir(parents=True, exist_ok=True)
    logf = open(root / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pyvirtd.cli", "--root", str(root)],
                            stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    d = RunningDaemon(root, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pyvirtd exited with {proc.returncode}:\n{d.log()}")
        if d.sock.exists() and b"ready" in (root / "daemon.log").read_bytes():
            return d
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"pyvirtd did not start:\n{d.log()}")


class Lab:
    def __init__(self, daemon: RunningDaemon) -> None:
        self.daemon = daemon
        self.uri = daemon.uri("qemu:///session")

    def virsh(self, commands: str, timeout: float = 120) -> VirshResult:
        """One virsh invocation.  Not tests.conftest.virsh: its 10 s exit-hang
        guard (a virsh bug after save/managedsave) would interrupt a batch of
        LVM commands under TCG, which can take longer than that."""
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("LIBVIRT_DEFAULT_URI", None)
        p = subprocess.run(["virsh", "-c", self.uri, commands], capture_output=True,
                           text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)
        return VirshResult(p.returncode, p.stdout, p.stderr)

    def ok(self, commands: str) -> str:
        r = self.virsh(commands)
        assert r.rc == 0, f"{commands}: {r.err}"
        return r.out

    def answers(self, commands: str, within: float) -> str:
        """ok(), for a call that must answer while something else stalls: one
        that does not fails the test instead of hanging it (a bound on
        liveness, not a measure of speed)."""
        try:
            r = self.virsh(commands, timeout=within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{commands}: no answer within {within} s") from None
        assert r.rc == 0, f"{commands}: {r.err}"
        return r.out

    def fails(self, commands: str) -> str:
        r = self.virsh(commands)
        assert r.rc == 1, f"{commands} did not fail: {r.out}"
        return r.err


class Adopted:
    """A daemon the job script started (a Popen look-alike for RunningDaemon)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (timeout or 3600)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.1)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def adopt_daemon(root: Path, timeout: float = 120) -> RunningDaemon:
    """The pyvirtd tests/lab/guest_job.sh started while the services came up."""
    pidfile = root / "pid"
    deadline = time.monotonic() + timeout
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    d = RunningDaemon(root, Adopted(int(pidfile.read_text())))
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"pyvirtd exited:\n{d.log()}")
        if d.sock.exists() and b"ready" in (root / "daemon.log").read_bytes():
            return d
        time.sleep(0.1)
    raise RuntimeError(f"pyvirtd did not start:\n{d.log()}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    adopted = os.environ.get("LAB_DAEMON_ROOT")
    if adopted:
        d = adopt_daemon(Path(adopted))
    else:
        d = start_daemon(tmp_path_factory.mktemp("pyvirtd"))
    yield Lab(d)
    stop_daemon(d)
    print(d.log()[-4000:])


def sh(*argv: str, check: bool = True, timeout: float = 60) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{argv}: {p.stderr}"
    return p.stdout
