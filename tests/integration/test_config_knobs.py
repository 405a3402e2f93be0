"""Configuration knobs that must take effect in a real daemon, or stop it with a reason.

Each knob of pyvirtd.yaml either works (checked here through stock clients)
or is refused at start with a message naming the file and the key; none is
accepted and ignored.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from tests.conftest import start_daemon, stop_daemon, virsh

PYVIRTD = [sys.executable, "-m", "pyvirtd.cli"]
HOST_UUID = "8f1e7a52-3c4b-4d2e-9a61-0b5c2d7e4f10"


def start_refused(tmp_path: Path, config: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "pyvirtd.yaml"
    cfg.write_text(config)
    return subprocess.run([*PYVIRTD, "--root", str(tmp_path / "r"), "-f", str(cfg)],
                          capture_output=True, text=True, timeout=30)


def test_unix_sock_dir_moves_the_sockets(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    d = start_daemon(tmp_path / "pyvirtd", config=f"unix_sock_dir: {sockets}\n", sock_dir=sockets)
    try:
        assert sorted(p.name for p in sockets.iterdir()) == [
            "libvirt-admin-sock", "libvirt-sock", "libvirt-sock-ro"]
        assert not (d.root / "run" / "libvirt-sock").exists()
        r = virsh(d.uri(), "list --name")
        assert r.rc == 0 and r.out.split() == ["test"], r.err
        r = virsh(d.uri(readonly=True), "define /dev/null")
        assert "read only access prevents" in r.err
    finally:
        assert stop_daemon(d) == 0, d.log()
    assert list(sockets.iterdir()) == []


@pytest.mark.parametrize("uri", ["lxc:///system", "qemu:///session"])
def test_host_uuid_is_the_capabilities_host_uuid(tmp_path: Path, uri: str) -> None:
    d = start_daemon(tmp_path / "pyvirtd", config=f"host_uuid: '{HOST_UUID.upper()}'\n")
    try:
        r = virsh(d.uri(uri), "capabilities")
        assert r.rc == 0, r.err
        host = r.out.split("<host>", 1)[1].split("</host>", 1)[0]
        assert f"<uuid>{HOST_UUID}</uuid>" in host
    finally:
        stop_daemon(d)


@pytest.mark.parametrize(("config", "key", "reason"), [
    ("host_uuid: '11111111-1111-1111-1111-111111111111'\n", "host_uuid", "invalid host UUID"),
    ("tcp_min_ssf: 60\n", "tcp_min_ssf", "lower than 112 are not supported"),
    ("audit_level: 2\n", "audit_level", "no audit records"),
    ("audit_logging: true\n", "audit_logging", "no audit records"),
    ("ovs_timeout: 20\n", "ovs_timeout", "never calls ovs-vsctl"),
    ("unix_sock_dir: relative/dir\n", "unix_sock_dir", "absolute"),
])
def test_a_knob_that_cannot_work_stops_the_daemon(tmp_path: Path, config: str, key: str,
                                                  reason: str) -> None:
    p = start_refused(tmp_path, config)
    assert p.returncode == 2, p.stderr
    assert f"{tmp_path / 'pyvirtd.yaml'}: key '{key}': " in p.stderr and reason in p.stderr
    assert not (tmp_path / "r" / "run" / "libvirt-sock").exists()


def test_admin_max_queued_clients_is_the_admin_sockets_backlog(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "pyvirtd",
                     config="admin_max_clients: 1\nadmin_max_queued_clients: 2\n")
    held: list[socket.socket] = []
    try:
        # the one admin client the daemon accepts; a PONG proves it was accepted
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        held.append(first)
        first.settimeout(10)
        first.connect(str(d.sock_admin))
        first.sendall(frame.build_raw(P.KEEPALIVE_PROGRAM, 1, 1, frame.MESSAGE, 0, frame.OK))
        assert len(first.recv(28)) > 0
        # the next ones wait in the backlog until it is full; Linux queues
        # backlog + 1 on a unix socket (af_unix.c: full when the queue > backlog)
        queued = 0
        while queued < 10:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            s.setblocking(False)
            try:
                s.connect(str(d.sock_admin))
            except BlockingIOError as exc:
                assert exc.errno == errno.EAGAIN
                break
            queued += 1
        assert queued == 2 + 1
    finally:
        for s in held:
            s.close()
        assert stop_daemon(d) == 0, d.log()
