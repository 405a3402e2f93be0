"""virt-manager 4.1 under Xvfb connects to pyvirtd's QEMU driver and shows a running guest.

virt-manager runs for ~20 s with --debug against qemu+unix:///session on a
test daemon, with a firmware-only guest running (KVM when usable) and the
guest's console window open.  Its own debug log must show the connection
active, the guest listed and its console stream opened, with no traceback
and no libvirtError; libvirt's client-side RPC log (LIBVIRT_LOG_FILTERS in
virt-manager's process) shows the stats polling virt-manager does for its
CPU graphs (CONNECT_GET_ALL_DOMAIN_STATS, procedure 344) answered again and
again.  A screenshot is left in the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from daemon_helpers import (guest_xml, kill_guests, needs_qemu, ok, qemu_uri, start_daemon,
                            stop_daemon, wait_for)

pytestmark = [needs_qemu,
              pytest.mark.skipif(shutil.which("virt-manager") is None or shutil.which("Xvfb") is None
                                 or shutil.which("dbus-run-session") is None,
                                 reason="virt-manager, Xvfb or dbus-run-session not installed "
                                        "(apt-get install virt-manager xvfb dbus-x11 imagemagick)")]

RUN_SECONDS = 120          # at most: the test goes on once virt-manager has done it all
# What virt-manager's debug log says once it has connected and shown the guest's console.
SHOWN = ("changed to state=Active", "status=Running added", "Opening console stream",
         "Showing VM details")
PROC_GET_ALL_DOMAIN_STATS = 344


def _start_xvfb(tmp_path):
    """Xvfb on a display it picks itself (-displayfd); returns (proc, display)."""
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24",
                             "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "xvfb.log", "wb"), start_new_session=True)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    return proc, f":{number}"


def _stop(proc: subprocess.Popen) -> None:
    """End a process group we started (virt-manager, its dbus session, Xvfb)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _polls(rpc_log: Path) -> list[str]:
    """getAllDomainStats calls answered OK, in the client library's RPC log."""
    rpc = rpc_log.read_text(errors="replace") if rpc_log.exists() else ""
    return re.findall(rf"proc={PROC_GET_ALL_DOMAIN_STATS} type=1 status=0", rpc)


def _has_shown_and_polled(debug_log: Path, rpc_log: Path) -> bool:
    log = debug_log.read_text(errors="replace") if debug_log.exists() else ""
    return (all(line in log for line in SHOWN) and len(_polls(rpc_log)) >= 3)


@pytest.fixture
def daemon(tmp_path):
    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        yield d
    finally:
        stop_daemon(d)
        kill_guests(root)


def test_virt_manager_connects_lists_and_polls(daemon, tmp_path):
    uri = qemu_uri(daemon)
    xml = tmp_path / "vm.xml"
    xml.write_text(guest_xml("vmgr", serial_bios=True))
    ok(uri, f"define {xml}")
    ok(uri, "start vmgr")

    xvfb, display = _start_xvfb(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    debug_log = tmp_path / "virt-manager.log"
    rpc_log = tmp_path / "libvirt-client.log"
    env = dict(os.environ, DISPLAY=display, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"), XDG_DATA_HOME=str(home / ".local/share"),
               LIBVIRT_LOG_FILTERS="1:rpc.netclient",
               LIBVIRT_LOG_OUTPUTS=f"1:file:{rpc_log}", LC_ALL="C.UTF-8")
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    vm = subprocess.Popen(["dbus-run-session", "--", "virt-manager", "--connect", uri, "--no-fork",
                           "--debug", "--show-domain-console", "vmgr"],
                          env=env, stdout=open(debug_log, "wb"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        # until it has shown the guest and polled its stats a few times (or died)
        wait_for(lambda: vm.poll() is not None or _has_shown_and_polled(debug_log, rpc_log),
                 timeout=RUN_SECONDS, interval=0.5)
        if shutil.which("import"):
            subprocess.run(["import", "-display", display, "-window", "root",
                            str(tmp_path / "virt-manager.png")], capture_output=True, timeout=30)
        assert vm.poll() is None, "virt-manager exited early:\n" + debug_log.read_text()[-3000:]
    finally:
        _stop(vm)
        _stop(xvfb)

    log = debug_log.read_text(errors="replace")
    assert "changed to state=Active" in log, log[-3000:]
    assert re.search(r"domain=vmgr status=Running added", log), log[-3000:]
    assert "Opening console stream" in log and "Showing VM details" in log
    bad = [line for line in log.splitlines() if "Traceback" in line or "libvirtError" in line
           or "libvirt.libvirtError" in line]
    assert not bad, "\n".join(bad) + "\n" + log[-5000:]
    assert "doesn't seem to support" not in log        # storage, network and nodedev APIs

    # stats polling, seen in the client library's RPC log: calls and their OK replies
    rpc = rpc_log.read_text(errors="replace") if rpc_log.exists() else ""
    assert len(_polls(rpc_log)) >= 3, rpc[-3000:]
    # and no call failed (status=1): nothing virt-manager used is missing or broken
    failed = re.findall(r"RPC_CLIENT_MSG_RX: .* proc=(\d+) type=1 status=1", rpc)
    assert not failed, f"procedures answered with an error: {sorted(set(failed))}"
