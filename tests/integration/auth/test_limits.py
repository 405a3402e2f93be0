"""Limits under abuse: unauthenticated clients hold only their own (bounded) slots."""

from __future__ import annotations

import socket
import struct
import sys

from auth_helpers import need_module, run
from tests.conftest import start_daemon, stop_daemon

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame

PROG, VERS = P.PROGRAMS["remote"]
AUTH_LIST = 66


def auth_list(s: socket.socket, serial: int) -> None:
    s.sendall(frame.build(PROG, VERS, AUTH_LIST, frame.CALL, serial, frame.OK))


def replied(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        head = s.recv(4)
    except socket.timeout:
        return False
    assert len(head) == 4
    (length,) = struct.unpack(">I", head)
    body = b""
    while len(body) < length - 4:
        body += s.recv(length - 4 - len(body))
    return True


def test_max_anonymous_clients(tmp_path) -> None:
    need_module("scramp", "scramp")
    d = start_daemon(tmp_path / "d", config="auth_unix_rw: sasl\nmax_anonymous_clients: 2\n")
    try:
        idle = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        for s in idle:
            s.connect(str(d.sock))
        for i, s in enumerate(idle):      # both are served, and stay unauthenticated
            auth_list(s, i + 1)
            assert replied(s, 5)
        third = socket.socket(socket.AF_UNIX)
        third.connect(str(d.sock))        # waits in the backlog: not accepted yet
        auth_list(third, 9)
        assert not replied(third, 1)
        # clients that need no authentication are not held up (read-only socket)
        r = run(["virsh", "-c", d.uri(readonly=True), "list --name"])
        assert r.returncode == 0 and r.stdout.split() == ["test"], r.stderr
        idle[0].close()                   # a slot frees: the third gets its answer
        assert replied(third, 5)
        third.close()
        idle[1].close()
    finally:
        stop_daemon(d)


def test_stalled_sasl_exchange_does_not_block_others(tmp_path) -> None:
    """A client that starts SASL and goes silent holds nothing but its own connection."""
    need_module("scramp", "scramp")
    root = tmp_path / "d"
    r = run([sys.executable, "-m", "pyvirtd.cli", "sasl-user", "--root", str(root), "add",
             "alice"], input="pw\n")
    assert r.returncode == 0, r.stderr
    d = start_daemon(root, config="auth_unix_rw: sasl\n")
    try:
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(str(d.sock))
        auth_list(stalled, 1)
        assert replied(stalled, 5)
        stalled.sendall(frame.build(PROG, VERS, 67, frame.CALL, 2, frame.OK))   # SASL_INIT
        assert replied(stalled, 5)
        # ... and never sends AUTH_SASL_START; others log in meanwhile
        conf = tmp_path / "auth.conf"
        conf.write_text("[credentials-c]\nauthname=alice\npassword=pw\n\n"
                        "[auth-libvirt-localhost]\ncredentials=c\n\n"
                        "[auth-libvirt-default]\ncredentials=c\n")
        r = run(["virsh", "-c", d.uri(), "list --name"], env={"LIBVIRT_AUTH_FILE": str(conf)})
        assert r.returncode == 0 and r.stdout.split() == ["test"], r.stderr
        stalled.close()
    finally:
        stop_daemon(d)
