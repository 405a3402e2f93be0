"""Socket activation and sd_notify, checked against real fds and sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pyvirtd import systemd

# Run in a child: the fds must sit at 3, 4, ... and LISTEN_PID must be the
# child's own pid, exactly as systemd arranges it before exec.
CHILD = """
import fcntl, json, os
from pyvirtd.systemd import listen_fds
result = listen_fds()
print(json.dumps({
    "sockets": {
        name: [[s.fileno(), s.family, s.type,
                bool(fcntl.fcntl(s.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                s.getsockname()] for s in socks]
        for name, socks in result.items()
    },
    "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
}))
"""


def run_activated(sockets: list[socket.socket], names: str | None) -> dict:
    """Start CHILD with ``sockets`` at fd 3.. and the LISTEN_* variables set."""
    env = dict(os.environ, LISTEN_FDS=str(len(sockets)))
    env.pop("LISTEN_FDNAMES", None)
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    # bash moves each socket to its slot (via fd 200+i, in case a socket
    # already sits on another's slot), sets LISTEN_PID to its own pid and
    # execs Python, which keeps that pid.
    park = " ".join(f"{200 + i}<&{s.fileno()} {s.fileno()}<&-" for i, s in enumerate(sockets))
    place = " ".join(f"{3 + i}<&{200 + i} {200 + i}<&-" for i in range(len(sockets)))
    script = f'exec {park}; exec {place}; export LISTEN_PID=$$; exec "$0" -c "$1"'
    out = subprocess.run(
        ["bash", "-c", script, sys.executable, CHILD],
        env=env,
        pass_fds=[s.fileno() for s in sockets],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return json.loads(out.stdout)


@pytest.fixture
def unix_listener(tmp_path: Path):
    def make(name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / name))
        sock.listen()
        opened.append(sock)
        return sock

    opened: list[socket.socket] = []
    yield make
    for sock in opened:
        sock.close()


def test_listen_fds_by_name(unix_listener, tmp_path: Path) -> None:
    rw, ro, admin = (unix_listener(n) for n in ("rw", "ro", "admin"))
    got = run_activated(
        [rw, ro, admin], "pyvirtd.socket:pyvirtd-ro.socket:pyvirtd-admin.socket"
    )
    assert got["env"] == {}, "LISTEN_* must be unset for our children"
    stream = int(socket.SOCK_STREAM)
    assert got["sockets"] == {
        "pyvirtd.socket": [[3, socket.AF_UNIX, stream, True, str(tmp_path / "rw")]],
        "pyvirtd-ro.socket": [[4, socket.AF_UNIX, stream, True, str(tmp_path / "ro")]],
        "pyvirtd-admin.socket": [
            [5, socket.AF_UNIX, stream, True, str(tmp_path / "admin")]
        ],
    }
    roles = {systemd.FD_NAME_ROLES[name] for name in got["sockets"]}
    assert roles == {"rw", "ro", "admin"}


def test_listen_fds_groups_one_name_and_defaults_to_unknown(unix_listener) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    try:
        got = run_activated([unix_listener("a"), tcp], None)
    finally:
        tcp.close()
    [(name, socks)] = got["sockets"].items()
    assert name == "unknown"
    assert [(s[0], s[1]) for s in socks] == [(3, socket.AF_UNIX), (4, socket.AF_INET)]


def test_listen_fds_ignores_variables_meant_for_another_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "pyvirtd.socket")
    assert systemd.listen_fds() == {}
    assert not any(k.startswith("LISTEN_") for k in os.environ)


def test_listen_fds_without_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert systemd.listen_fds() == {}
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    assert systemd.listen_fds() == {}


@pytest.mark.parametrize(
    ("count", "names", "message"),
    [("x", None, "LISTEN_FDS"), ("2", "only-one", "2 fds")],
)
def test_listen_fds_rejects_malformed_variables(
    monkeypatch: pytest.MonkeyPatch, count: str, names: str | None, message: str
) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", count)
    if names is None:
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    else:
        monkeypatch.setenv("LISTEN_FDNAMES", names)
    with pytest.raises(ValueError, match=message):
        systemd.listen_fds()


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate not installed",
)
def test_listen_fds_under_systemd_socket_activate(tmp_path: Path) -> None:
    """The real tool, as a check that our reading matches systemd's writing."""
    path = tmp_path / "sock"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(path), "--fdname=pyvirtd-ro.socket",
         sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        # The tool execs the service on the first connection attempt.
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    got = json.loads(out)
    assert got["env"] == {}
    assert got["sockets"] == {
        "pyvirtd-ro.socket": [
            [3, socket.AF_UNIX, int(socket.SOCK_STREAM), True, str(path)]
        ]
    }


def test_notify_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1") is True
        assert manager.recv(4096) == b"READY=1"
    assert os.environ["NOTIFY_SOCKET"] == str(path), "later notifications need it"


def test_notify_abstract(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pyvirtd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=serving\nREADY=1") is True
        assert manager.recv(4096) == b"STATUS=serving\nREADY=1"


def test_notify_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    with pytest.raises(OSError):
        systemd.notify("READY=1")
