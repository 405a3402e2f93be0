"""virt-admin against the daemon's admin socket.

Expected output shapes were taken from virt-admin 9.0.0 talking to libvirt
9.0.0's own libvirtd (run unprivileged with XDG_RUNTIME_DIR, see
test-environment.md), with the values that differ by host replaced.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import time

import libvirt
import pytest

from tests.conftest import RunningDaemon

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0000"


def admin(d: RunningDaemon, commands: str) -> subprocess.CompletedProcess:
    return subprocess.run(["virt-admin", "-c", d.admin_uri, commands], capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, LC_ALL="C", LANG="C"))


def ok(d: RunningDaemon, commands: str) -> str:
    p = admin(d, commands)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    return p.stdout


def client_ids(d: RunningDaemon, server: str = "libvirtd") -> list[int]:
    out = ok(d, f"srv-clients-list {server}")
    return [int(m) for m in re.findall(r"^ (\d+) ", out, re.M)]


def test_version(daemon) -> None:
    assert ok(daemon, "version") == (
        "Compiled against library: libvirt 9.0.0\n"
        "Using library: libvirt 9.0.0\n"
        "Running against daemon: 9.0.0\n\n")


def test_srv_list(daemon) -> None:
    assert ok(daemon, "srv-list") == (
        " Id   Name\n"
        "----------------\n"
        " 0    admin\n"
        " 1    libvirtd\n\n")


def test_clients_list_and_info(daemon) -> None:
    assert ok(daemon, "srv-clients-list libvirtd") == (
        " Id   Transport   Connected since\n"
        "-----------------------------------\n\n")
    conn = libvirt.open(daemon.uri())
    ro = libvirt.open(daemon.uri(readonly=True))
    out = ok(daemon, "srv-clients-list libvirtd")
    rows = re.findall(rf"^ (\d+)\s+unix\s+{STAMP}$", out, re.M)
    assert len(rows) == 2, out
    assert out.startswith(" Id   Transport   Connected since\n---")
    rw_id, ro_id = sorted(int(r) for r in rows)
    info = ok(daemon, f"client-info libvirtd {rw_id}")
    assert re.fullmatch(
        f"id             : {rw_id}\n"
        f"connection_time: {STAMP}\n"
        "transport      : unix\n"
        "readonly       : no\n"
        f"unix_user_id   : {os.getuid()}\n"
        f"unix_user_name : {pwd.getpwuid(os.getuid()).pw_name}\n"
        f"unix_group_id  : {os.getgid()}\n"
        f"unix_group_name: {grp.getgrgid(os.getgid()).gr_name}\n"
        f"unix_process_id: {os.getpid()}\n\n", info), info
    assert "readonly       : yes\n" in ok(daemon, f"client-info libvirtd {ro_id}")
    conn.close()
    ro.close()


def test_client_disconnect(daemon) -> None:
    conn = libvirt.open(daemon.uri())
    assert conn.getLibVersion() == 9_000_000
    (cid,) = client_ids(daemon)
    assert ok(daemon, f"client-disconnect libvirtd {cid}") == f"Client '{cid}' disconnected\n"
    with pytest.raises(libvirt.libvirtError):
        conn.getLibVersion()
    deadline = time.monotonic() + 5
    while client_ids(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client_ids(daemon) == []


def test_unknown_server_and_client(daemon) -> None:
    p = admin(daemon, "srv-clients-list nosuch")
    assert p.returncode == 1
    assert p.stderr == "error: Server not found: No server named 'nosuch'\n"
    p = admin(daemon, "client-info libvirtd 99")
    assert p.stderr == "error: Client not found: No client with matching ID '99'\n"
    p = admin(daemon, "client-disconnect libvirtd 99")
    assert p.stderr == "error: Client not found: No client with matching ID '99'\n"


def test_threadpool_info_and_set(daemon) -> None:
    assert ok(daemon, "srv-threadpool-info libvirtd") == (
        "minWorkers     : 5\n"
        "maxWorkers     : 20\n"
        "nWorkers       : 5\n"
        "freeWorkers    : 5\n"
        "prioWorkers    : 5\n"
        "jobQueueDepth  : 0\n\n")
    ok(daemon, "srv-threadpool-set libvirtd --max-workers 30")
    assert "maxWorkers     : 30\n" in ok(daemon, "srv-threadpool-info libvirtd")


def test_clients_info_and_set(daemon) -> None:
    conn = libvirt.open(daemon.uri())
    assert ok(daemon, "srv-clients-info libvirtd") == (
        "nclients_max        : 5000\n"
        "nclients            : 1\n"
        "nclients_unauth_max : 20\n"
        "nclients_unauth     : 0\n\n")
    # like libvirtd, a maximum below the unauthenticated maximum (20) is refused
    p = admin(daemon, "srv-clients-set libvirtd --max-clients 10")
    assert p.returncode == 1
    assert p.stderr == (
        "error: Unable to change server's client-related configuration limits\n"
        "error: invalid argument: The overall maximum number of clients waiting for "
        "authentication must not be less than the overall maximum number of clients\n")
    ok(daemon, "srv-clients-set libvirtd --max-clients 10 --max-unauth-clients 5")
    assert ok(daemon, "srv-clients-info libvirtd") == (
        "nclients_max        : 10\n"
        "nclients            : 1\n"
        "nclients_unauth_max : 5\n"
        "nclients_unauth     : 0\n\n")
    conn.close()


def test_admin_server_lists_virt_admin_itself(daemon) -> None:
    out = ok(daemon, "srv-clients-list admin")
    assert len(re.findall(rf"^ \d+\s+unix\s+{STAMP}$", out, re.M)) == 1, out


def test_log_outputs_and_filters_change_at_run_time(daemon, tmp_path) -> None:
    assert "3:stderr" in ok(daemon, "daemon-log-outputs")
    log_file = tmp_path / "debug.log"
    ok(daemon, f"daemon-log-outputs --outputs '1:file:{log_file}'")
    ok(daemon, "daemon-log-filters --filters '1:pyvirtd'")
    assert str(log_file) in ok(daemon, "daemon-log-outputs")
    assert "1:pyvirtd" in ok(daemon, "daemon-log-filters")
    ok(daemon, "srv-list")  # a new admin client: the daemon logs it at debug level
    assert "connected to admin" in log_file.read_text()
    bad = admin(daemon, "daemon-log-outputs --outputs 'nonsense'")
    assert bad.returncode != 0 and "invalid log output" in bad.stderr
