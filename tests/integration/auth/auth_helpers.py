"""Shared by the remote-access tests: free loopback ports, a daemon with -l, virsh with env."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon, start_daemon, wait_for


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemon binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (TCP)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def listening_daemon(root: Path, config: str, port: int, *extra: str) -> RunningDaemon:
    """Start pyvirtd --listen with ``config`` and wait until ``port`` accepts."""
    d = start_daemon(root, "--listen", *extra, config=config)
    try:
        wait_for(lambda: accepts(port), timeout=10)
    except AssertionError:
        raise RuntimeError(f"pyvirtd does not listen on {port}:\n{d.log()}") from None
    return d


def run(argv: list[str], *, env: dict | None = None, input: str | None = None,
        timeout: float = 30, user: int | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ, LC_ALL="C", LANG="C")
    full.pop("LIBVIRT_DEFAULT_URI", None)
    full.update(env or {})
    return subprocess.run(argv, env=full, input=input, text=True, capture_output=True,
                          timeout=timeout, user=user)


def need_commands(*names: str, package: str) -> None:
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian package {package}; `make deps`)")


def need_module(name: str, package: str):
    try:
        return __import__(name)
    except ImportError:
        pytest.skip(f"needs the Python package {package} (`make venv`)")
