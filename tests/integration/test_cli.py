"""The pyvirtd command line as an administrator uses it: activation, detaching, limits."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import virsh, wait_for

PYVIRTD = [sys.executable, "-m", "pyvirtd.cli"]


def test_version_is_printed() -> None:
    out = subprocess.run([*PYVIRTD, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pyvirtd ")


def test_unknown_config_key_stops_the_daemon_naming_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_client: 10\n")
    p = subprocess.run([*PYVIRTD, "--root", str(tmp_path / "r"), "-f", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert str(cfg) in p.stderr and "max_client" in p.stderr


def test_wrong_type_in_config_names_what_was_expected(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("max_clients: lots\n")
    p = subprocess.run([*PYVIRTD, "--root", str(tmp_path / "r"), "-f", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "max_clients" in p.stderr and "integer" in p.stderr


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate (package systemd) is not installed")
def test_socket_activation_and_readiness_notification(tmp_path: Path) -> None:
    """systemd hands over the listening socket and waits for READY=1."""
    sock_path = tmp_path / "activated-sock"
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock_path), "--fdname=pyvirtd.socket",
         "-E", f"NOTIFY_SOCKET={notify_path}",
         *PYVIRTD, "--root", str(tmp_path / "root")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(sock_path.exists)
        # systemd-socket-activate starts the daemon at the first connection
        uri = f"test+unix:///default?socket={sock_path}"
        r = virsh(uri, "domstate test")
        assert r.rc == 0, r.err
        assert r.out.strip() == "running"
        assert notify.recv(4096) == b"READY=1"
        # the daemon bound none of its own sockets: it uses the inherited one
        assert not (tmp_path / "root" / "run" / "libvirt-sock").exists()
    finally:
        proc.terminate()
        proc.wait(20)
        notify.close()


def test_detached_daemon_writes_pid_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pid_file = tmp_path / "pyvirtd.pid"
    p = subprocess.run([*PYVIRTD, "--root", str(root), "-d", "-p", str(pid_file)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0  # the foreground process returns at once
    assert wait_for(lambda: pid_file.exists() and (root / "run" / "libvirt-sock").exists())
    pid = int(pid_file.read_text())
    try:
        r = virsh(f"test+unix:///default?socket={root}/run/libvirt-sock", "domstate test")
        assert r.out.strip() == "running"
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not pid_file.exists())
    assert not (root / "run" / "libvirt-sock").exists()


def test_timeout_exits_once_idle(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = subprocess.Popen([*PYVIRTD, "--root", str(root), "--timeout", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for((root / "run" / "libvirt-sock").exists)
        r = virsh(f"test+unix:///default?socket={root}/run/libvirt-sock", "domstate test")
        assert r.rc == 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
