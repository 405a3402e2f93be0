"""Helpers for tests with the tiny bootable guest (tests/guest/build.py) on pyvirtd.

* `tiny_guest()`: the guest's kernel and initramfs, built once and cached;
  the calling test module is skipped when it cannot be built here.
* `tiny_xml(...)`: a TCG domain (this host's KVM cannot run a Linux kernel)
  booting that kernel directly, 128 MiB, one vCPU, ACPI on (the power button
  needs it), serial console on a pty; optionally disks and more kernel
  arguments (``root=/dev/vda`` boots into a disk made by make_root_image).
* `Console`: the guest's serial console over a python-libvirt stream (what
  `virsh console` uses), read by libvirt's event loop into a buffer the test
  can wait on, and written to like a keyboard.
* `Events`: lifecycle and reboot events as another client receives them.
* `EventLog`: any domain events, as (domain, kind, fields...) tuples.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from daemon_helpers import EventCollector, wait_for

# the serial console's prompt, as the guest's /etc/profile sets it
PROMPT = "guest# "

TINY = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>{on_poweroff}</on_poweroff>
  <on_reboot>{on_reboot}</on_reboot>
  <devices>
    {disks}
    {interfaces}
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def tiny_guest():
    """The built guest (TinyGuest), or skip the module with the reason."""
    from tests.guest.build import ensure_guest

    try:
        return ensure_guest()
    except Exception as exc:   # no network for apt-get, no busybox-static, ...
        pytest.skip(f"cannot build the tiny guest: {exc}")


def tiny_xml(name: str, guest, *, on_poweroff: str = "destroy", on_reboot: str = "restart",
             interfaces: str = "", disks: str = "", cmdline_extra: str = "") -> str:
    """``cmdline_extra`` is appended to the kernel command line (e.g. ``root=/dev/vda``)."""
    cmdline = f"{guest.cmdline} {cmdline_extra}".strip()
    return TINY.format(name=name, kernel=guest.kernel, initrd=guest.initrd, cmdline=cmdline,
                       on_poweroff=on_poweroff, on_reboot=on_reboot, interfaces=interfaces,
                       disks=disks)


class Console:
    """A console session on ``name`` (forced: it takes over any earlier one)."""

    def __init__(self, uri: str, name: str) -> None:
        import libvirt

        EventCollector._start_loop()          # libvirt's default event loop, in a thread
        self.conn = libvirt.open(uri)
        self.dom = self.conn.lookupByName(name)
        self.stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        self.dom.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.closed = False
        self.stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE
                                     | libvirt.VIR_STREAM_EVENT_ERROR
                                     | libvirt.VIR_STREAM_EVENT_HANGUP, self._on_event, None)

    def _on_event(self, stream, events, opaque) -> None:
        import libvirt

        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            try:
                data = stream.recv(65536)
            except libvirt.libvirtError:
                data = b""
            if data == -2:          # would block
                return
            if data:
                with self._lock:
                    self._buf += data
                return
        self.closed = True          # EOF, error or hangup: the session is over
        try:
            stream.eventRemoveCallback()
        except Exception:
            pass

    # -- reading ------------------------------------------------------------
    def text(self, since: int = 0) -> str:
        with self._lock:
            return bytes(self._buf[since:]).decode(errors="replace")

    def mark(self) -> int:
        """A position in the output: later waits can look only at what follows."""
        with self._lock:
            return len(self._buf)

    def wait(self, pattern: str, since: int = 0, timeout: float = 60.0) -> re.Match:
        """Wait until ``pattern`` (a regex) appears in the output after ``since``."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.text(since))
            if m:
                return m
            if time.monotonic() > deadline:
                tail = self.text(since)[-2000:]
                raise AssertionError(f"{pattern!r} not on the console after {timeout} s; "
                                     f"last output:\n{tail}")
            time.sleep(0.05)

    # -- writing ------------------------------------------------------------
    def send(self, text: str) -> None:
        data = text.encode()
        while data:
            n = self.stream.send(data)
            if n == -2:
                time.sleep(0.01)
                continue
            data = data[n:]

    def run(self, command: str, expect: str, timeout: float = 30.0) -> re.Match:
        """Type ``command`` at the shell and wait for ``expect`` (regex) in what follows."""
        at = self.mark()
        self.send(command + "\n")
        return self.wait(expect, since=at, timeout=timeout)

    def close(self) -> None:
        if not self.closed:
            try:
                self.stream.eventRemoveCallback()
            except Exception:
                pass
            try:
                self.stream.abort()
            except Exception:
                pass
        try:
            self.conn.close()
        except Exception:
            pass


class Events(EventCollector):
    """Lifecycle events as (name, event, detail), reboot events as (name, 'reboot')."""

    def __init__(self, uri: str) -> None:
        import libvirt

        super().__init__(uri)
        self.reboot_cb = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, None)

    def _on_reboot(self, conn, dom, opaque) -> None:
        self.events.append((dom.name(), "reboot"))

    def since(self, n: int) -> list:
        return list(self.events[n:])

    def close(self) -> None:
        try:
            self.conn.domainEventDeregisterAny(self.reboot_cb)
        except Exception:
            pass
        super().close()


class EventLog:
    """Domain events of the kinds asked for, as one python-libvirt client receives them.

    ``kinds`` maps a name of the test's choosing to a VIR_DOMAIN_EVENT_ID_*; each
    event is kept as (domain name, kind, the callback's fields...).
    """

    def __init__(self, uri: str, kinds: dict[str, int]) -> None:
        import libvirt

        EventCollector._start_loop()
        self.conn = libvirt.open(uri)
        self.events: list[tuple] = []
        self._lock = threading.Lock()
        self.cbs = [self.conn.domainEventRegisterAny(None, event_id, self._callback(kind), None)
                    for kind, event_id in kinds.items()]

    def _callback(self, kind: str):
        def on_event(conn, dom, *fields) -> None:     # the last field is the opaque
            with self._lock:
                self.events.append((dom.name(), kind, *fields[:-1]))
        return on_event

    def of(self, name: str, kind: str) -> list[tuple]:
        """The fields of ``name``'s events of ``kind``, in order."""
        with self._lock:
            return [e[2:] for e in self.events if e[0] == name and e[1] == kind]

    def wait(self, expected: tuple, timeout: float = 30.0) -> None:
        wait_for(lambda: expected in self.events, timeout)

    def close(self) -> None:
        cbs, self.cbs = self.cbs, []
        if not cbs:
            return
        for cb in cbs:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except Exception:
                pass
        self.conn.close()
