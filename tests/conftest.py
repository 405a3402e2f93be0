"""Fixtures shared by the integration tests: a real pyvirtd, real virsh, python-libvirt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunningDaemon:
    root: Path
    proc: subprocess.Popen

    @property
    def sock(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def sock_ro(self) -> Path:
        return self.root / "run" / "libvirt-sock-ro"

    @property
    def sock_admin(self) -> Path:
        return self.root / "run" / "libvirt-admin-sock"

    def uri(self, base: str = "test:///default", readonly: bool = False) -> str:
        scheme, rest = base.split(":", 1)
        sock = self.sock_ro if readonly else self.sock
        return f"{scheme}+unix:{rest}?socket={sock}"

    @property
    def admin_uri(self) -> str:
        return f"libvirtd+unix:///system?socket={self.sock_admin}"

    def log(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text() if path.exists() else ""


def start_daemon(root: Path, *extra: str, config: str | None = None) -> RunningDaemon:
    """Start pyvirtd --root ROOT and wait until its sockets accept connections."""
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pyvirtd.cli", "--root", str(root), *extra]
    if config is not None:
        cfg = root / "test-config.yaml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    logf = open(root / "daemon.log", "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    d = RunningDaemon(root, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pyvirtd exited with {proc.returncode}:\n{d.log()}")
        if d.sock.exists() and b"ready" in (root / "daemon.log").read_bytes():
            return d
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"pyvirtd did not start:\n{d.log()}")


def stop_daemon(d: RunningDaemon) -> int:
    if d.proc.poll() is None:
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
    return d.proc.returncode


@pytest.fixture
def daemon(tmp_path: Path):
    """A fresh pyvirtd (fresh test:///default state) for one test."""
    d = start_daemon(tmp_path / "pyvirtd")
    yield d
    stop_daemon(d)


@dataclass
class VirshResult:
    rc: int
    out: str
    err: str


def virsh(uri: str, commands: str, *, stdin: str | None = None, timeout: float = 60) -> VirshResult:
    """Run one virsh invocation; several commands may be separated by ';'."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    env.pop("LIBVIRT_DEFAULT_URI", None)
    p = subprocess.run(["virsh", "-c", uri, commands], input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    return VirshResult(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def run_virsh():
    return virsh
