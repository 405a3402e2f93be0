"""Shared by the UML integration tests: a busybox hostfs root, console dialogue, waits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, RunningDaemon, start_daemon, stop_daemon
from tests.conftest import wait_for as wait_until
from tests.integration import console_helpers

KERNEL = "/usr/bin/linux.uml"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "echo", "cat", "mount", "poweroff", "reboot", "halt", "sleep", "sync", "ls",
           "touch")

INITTAB = """::sysinit:/bin/mount -t proc proc /proc
::respawn:-/bin/sh
::ctrlaltdel:/bin/poweroff
"""


def make_root(path: Path, extra_applets: tuple[str, ...] = ()) -> Path:
    """A hostfs root: busybox-static, busybox init whose Ctrl-Alt-Del powers off."""
    for d in ("bin", "sbin", "etc", "tmp", "proc", "sys", "dev"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, path / "bin/busybox")
    for applet in APPLETS + tuple(extra_applets):
        (path / "bin" / applet).symlink_to("busybox")
    (path / "sbin/init").symlink_to("../bin/busybox")
    (path / "etc/inittab").write_text(INITTAB)
    return path


def console_expect(conn, dom, send: bytes, expect: bytes, timeout: float = 30,
                   repeat: bool = True) -> bytes:
    """The shared console helper, typing the line again each second until its
    answer shows (the shell may still be starting), or with ``repeat`` False
    once (a command with effects)."""
    return console_helpers.console_expect(conn, dom, send, expect, timeout, repeat=repeat)


def wait_for(cond, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def guest_xml(name: str, root: Path, *, kernel: str = KERNEL, extra: str = "") -> str:
    return f"""<domain type='uml'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type>uml</type><kernel>{kernel}</kernel><cmdline>quiet</cmdline></os>
  <devices>
    <filesystem type='mount'><source dir='{root}'/><target dir='/'/></filesystem>
    {extra}
    <console type='pty'/>
  </devices>
</domain>
"""


class Lab:
    """A pyvirtd --root for UML tests; with ``netns``, run inside that network namespace."""

    def __init__(self, tmp: Path, netns: str | None = None) -> None:
        self.root_dir = tmp / "pyvirtd"
        self.netns = netns
        self.d = self._start()
        self.uri = self.d.uri("uml:///system")

    def _start(self) -> RunningDaemon:
        if self.netns is None:
            return start_daemon(self.root_dir)
        self.root_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.root_dir / "daemon.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m",
                                 "pyvirtd.cli", "--root", str(self.root_dir)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        d = RunningDaemon(self.root_dir, proc)
        wait_until(lambda: proc.poll() is not None or d.sock.exists() and "ready" in d.log(),
                   timeout=30, what="pyvirtd ready")
        assert proc.poll() is None, d.log()
        return d

    def restart(self, *, kill9: bool) -> None:
        if kill9:
            self.d.proc.send_signal(signal.SIGKILL)
            self.d.proc.wait()
            self.d.sock.unlink(missing_ok=True)
            self.d.sock_ro.unlink(missing_ok=True)
        else:
            stop_daemon(self.d)
        self.d = self._start()

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                           env=dict(os.environ, LC_ALL="C"), timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"virsh {args} failed: {p.stderr}\n{self.d.log()}")
        return p

    def kernel_pids(self) -> list[int]:
        """The launchers of every guest the daemon recorded, and the kernels
        (each leads a process group of its own)."""
        run = self.root_dir / "run" / "uml"
        if not run.is_dir():
            return []
        pids = [json.loads(p.read_text())["pid"] for p in run.glob("*.json")]
        return pids + [int(p.read_text()) for p in run.glob("*/pid")]

    def kill_all(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kernels_gone(self, pids: list[int]) -> bool:
        """No process of these kernels' groups is left (zombies count as gone)."""
        out = subprocess.run(["ps", "-e", "-o", "pgid=,stat="], capture_output=True,
                             text=True).stdout.split("\n")
        groups = set(pids)
        return not any(int(l.split()[0]) in groups and not l.split()[1].startswith("Z")
                       for l in out if l.strip())

    def close(self) -> None:
        pids = self.kernel_pids()
        stop_daemon(self.d)
        self.kill_all(pids)
