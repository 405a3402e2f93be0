"""Fixtures shared by the integration tests: a real pyvirtd, real virsh, python-libvirt."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The test driver's node file for test:///default (what a private state starts from).
DEFAULT_NODE = REPO / "drivers" / "testdrv" / "default.xml"


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = ""):
    """Poll ``predicate`` until it is true and return its value.

    Tests wait for the condition they need, never for an amount of time:
    ``timeout`` only ends a wait that would otherwise hang, as an AssertionError.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not reached in {timeout} s: {what or predicate}")
        time.sleep(interval)


@dataclass
class RunningDaemon:
    root: Path
    proc: subprocess.Popen
    sock_dir: Path | None = None     # unix_sock_dir when the config sets it

    @property
    def sock(self) -> Path:
        return (self.sock_dir or self.root / "run") / "libvirt-sock"

    @property
    def sock_ro(self) -> Path:
        return (self.sock_dir or self.root / "run") / "libvirt-sock-ro"

    @property
    def sock_admin(self) -> Path:
        return (self.sock_dir or self.root / "run") / "libvirt-admin-sock"

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


def start_daemon(root: Path, *extra: str, config: str | None = None,
                 sock_dir: Path | None = None) -> RunningDaemon:
    """Start pyvirtd --root ROOT and wait until its sockets accept connections.

    ``sock_dir`` tells where the sockets are when ``config`` sets unix_sock_dir.
    """
    root.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pyvirtd.cli", "--root", str(root), *extra]
    if config is not None:
        cfg = root / "test-config.yaml"
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    logf = open(root / "daemon.log", "wb")
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO)
    d = RunningDaemon(root, proc, sock_dir)
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


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory):
    """One pyvirtd for a whole module, for tests that each open a private state.

    Starting a daemon costs more than most scenarios; tests on this one must not
    change what they share (test:///default), only their own ``private_test_uri``.
    """
    d = start_daemon(tmp_path_factory.mktemp("pyvirtd"))
    yield d
    stop_daemon(d)


def private_test_uri(directory: Path) -> str:
    """``test:///DIRECTORY/default.xml``: a copy of test:///default's node file.

    The test driver gives every connection to a node file its own state, loaded
    from the file, so nothing one scenario does is seen by another (libvirt's
    in-process test driver does the same with the same URI).
    """
    node = directory / "default.xml"
    shutil.copyfile(DEFAULT_NODE, node)
    return f"test://{node}"


@dataclass
class VirshResult:
    rc: int
    out: str
    err: str


# Debian's virsh 9.0 sometimes hangs in its exit path after save/managedsave/dump
# (its event-loop thread never joins), with libvirt's own test:///default too.
# SIGINT sometimes gets it out with its real status; otherwise the invocation
# is lost and the caller retries it (see retry_on_hang).
VIRSH_EXIT_HANG = 10


class VirshHang(Exception):
    """virsh did not exit; its commands may or may not all have run."""


def virsh(uri: str, commands: str, *, stdin: str | None = None, timeout: float = 60) -> VirshResult:
    """Run one virsh invocation; several commands may be separated by ';'."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    env.pop("LIBVIRT_DEFAULT_URI", None)
    p = subprocess.Popen(["virsh", "-c", uri, commands], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(stdin, timeout=min(timeout, VIRSH_EXIT_HANG))
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise VirshHang(commands) from None
    return VirshResult(p.returncode, out, err)


def retry_on_hang(run, *, attempts: int = 5, on_hang=None) -> VirshResult:
    """Run ``run()`` (a virsh invocation) again when virsh hangs at exit.

    ``on_hang`` resets what the lost attempt may have changed, since the next
    attempt must start from the same state (nothing to reset on a private
    test:///PATH state: every connection loads the file again).
    """
    for attempt in range(attempts):
        try:
            return run()
        except VirshHang:
            if attempt == attempts - 1:
                raise
            if on_hang is not None:
                on_hang()
    raise AssertionError("unreachable")


@pytest.fixture
def run_virsh():
    return virsh
