"""Helpers for the QEMU driver's client tests: a pyvirtd serving qemu:///session, guests, cleanup.

Every QEMU a test daemon starts has its monitor socket under the daemon's
root, so `kill_guests` finds them all through /proc (whatever state the
daemon or the test is in) and the fixtures call it even when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon, start_daemon, stop_daemon, virsh, wait_for

KVM_OK = os.access("/dev/kvm", os.R_OK | os.W_OK)
needs_qemu = pytest.mark.skipif(not os.access("/usr/bin/qemu-system-x86_64", os.X_OK),
                                reason="qemu-system-x86_64 not installed")

# A firmware-only guest: no disk, no OS, enough for the whole lifecycle.
# KVM when usable (this host's nested KVM runs firmware fine), TCG otherwise.
FIRMWARE_GUEST = """<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type>{bios}</os>
  <on_poweroff>{on_poweroff}</on_poweroff>
  <devices>
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def guest_xml(name: str, *, virt: str | None = None, machine: str = "q35", serial_bios: bool = False,
              on_poweroff: str = "destroy") -> str:
    return FIRMWARE_GUEST.format(name=name, virt=virt or ("kvm" if KVM_OK else "qemu"),
                                 machine=machine, on_poweroff=on_poweroff,
                                 bios="<bios useserial='yes'/>" if serial_bios else "")


def qemu_uri(d: RunningDaemon) -> str:
    return f"qemu+unix:///session?socket={d.sock}"


def guest_pids(root: Path) -> list[int]:
    """Every live QEMU whose command line points into ``root``."""
    return helper_pids(b"qemu-system", str(root).encode())


def helper_pids(*needles: bytes) -> list[int]:
    """Live processes (zombies count as gone) whose command line holds every needle:
    a guest's swtpm or virtiofsd."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(n in cmdline for n in needles):
            pids.append(int(entry))
    return pids


def kill_guests(root: Path) -> None:
    for pid in guest_pids(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def guest_pid(root: Path, name: str) -> int:
    return int((root / "run" / "qemu" / f"{name}.pid").read_text())


def ok(uri: str, commands: str) -> str:
    r = virsh(uri, commands)
    assert r.rc == 0, f"virsh {commands!r} failed: {r.err}"
    return r.out


class EventCollector:
    """Domain lifecycle events, as a python-libvirt client on its own connection receives them."""

    _loop_started = False

    def __init__(self, uri: str) -> None:
        import libvirt

        EventCollector._start_loop()
        self.conn = libvirt.open(uri)
        self.events: list[tuple[str, int, int]] = []
        self.cb = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    @classmethod
    def _start_loop(cls) -> None:
        import libvirt

        if cls._loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, daemon=True).start()
        cls._loop_started = True

    def _on_event(self, conn, dom, event: int, detail: int, opaque) -> None:
        self.events.append((dom.name(), event, detail))

    def wait(self, expected: tuple[str, int, int], timeout: float = 10.0) -> None:
        wait_for(lambda: expected in self.events, timeout)

    def close(self) -> None:
        try:
            self.conn.domainEventDeregisterAny(self.cb)
        finally:
            self.conn.close()


__all__ = ["EventCollector", "KVM_OK", "guest_pid", "guest_pids", "guest_xml", "kill_guests",
           "needs_qemu", "ok", "qemu_uri", "start_daemon", "stop_daemon", "virsh", "wait_for"]


def module_daemon(name: str):
    """A module-scoped ``daemon`` fixture: one pyvirtd for all the module's tests,
    its guests killed at the end whatever happened.  Use as
    ``daemon = module_daemon("qemu-console")``."""
    @pytest.fixture(scope="module")
    def daemon(tmp_path_factory):
        root = tmp_path_factory.mktemp(name) / "pyvirtd"
        d = start_daemon(root)
        try:
            yield d
        finally:
            stop_daemon(d)
            kill_guests(root)
    return daemon


@pytest.fixture(scope="module")
def module_uri(daemon) -> str:
    """qemu:///session on the module's daemon (``uri = module_uri`` in a module)."""
    return qemu_uri(daemon)


@contextlib.contextmanager
def privileged_daemon(prefix: str):
    """A root pyvirtd with the system daemon's behaviour (QEMU confined to
    pyvirtd-qemu), under a directory that user may traverse; yields (daemon,
    qemu:///system URI), and kills its guests and removes the directory at the end."""
    import shutil
    import subprocess
    import sys
    import tempfile

    subprocess.run([sys.executable, "-m", "pyvirtd.cli", "qemu-user"], check=True,
                   stdout=subprocess.DEVNULL)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    base.chmod(0o755)
    root = base / "pyvirtd"
    (root / "lib" / "network").mkdir(parents=True)   # no 'default' network on this host
    d = start_daemon(root, "--privileged")
    try:
        yield d, f"qemu+unix:///system?socket={d.sock}"
    finally:
        stop_daemon(d)
        kill_guests(base)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def fenced_libvirtd(base: Path, tag: str):
    """Debian's libvirtd as the root system daemon, fenced off in private mount and
    network namespaces (bench/daemons.start_system_libvirtd): the reference the
    side-by-side tests compare pyvirtd with.  Yields its qemu:///system URI."""
    import subprocess
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    from daemons import kill_netns, start_system_libvirtd
    ns = f"pv{tag}{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        lv = start_system_libvirtd(base / "libvirtd", ns)
        if isinstance(lv, str):
            pytest.fail(f"libvirtd did not start: {lv}")
        try:
            yield lv.system_uri
        finally:
            lv.stop()
    finally:
        kill_netns(ns)
        subprocess.run(["ip", "netns", "del", ns])


needs_root_libvirtd = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a system libvirtd needs root"),
    pytest.mark.skipif(not Path("/usr/sbin/libvirtd").exists(), reason="libvirtd not installed"),
]
