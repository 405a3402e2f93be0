"""Inside the lab VM: one pyvirtd for the session, driven with Debian's virsh.

Storage is reached through qemu:///session of a `pyvirtd --root` daemon, as
on the host (tests/integration/test_virsh_storage.py); the QEMU driver loads
because the image carries qemu-system-x86, though no guest runs here.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, RunningDaemon, stop_daemon, virsh

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

    def virsh(self, commands: str, timeout: float = 60):
        return virsh(self.uri, commands, timeout=timeout)

    def ok(self, commands: str) -> str:
        r = self.virsh(commands)
        assert r.rc == 0, f"{commands}: {r.err}"
        return r.out

    def fails(self, commands: str) -> str:
        r = self.virsh(commands)
        assert r.rc == 1, f"{commands} did not fail: {r.out}"
        return r.err


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("pyvirtd"))
    yield Lab(d)
    stop_daemon(d)
    print(d.log()[-4000:])


def sh(*argv: str, check: bool = True, timeout: float = 60) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{argv}: {p.stderr}"
    return p.stdout
