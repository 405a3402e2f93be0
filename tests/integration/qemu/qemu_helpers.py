"""Helpers for the QEMU runtime tests: argv for a throwaway guest, and a guard
that kills every QEMU a test started, whatever the test's outcome."""

from __future__ import annotations

import os
import shutil
import signal
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"

needs_qemu = pytest.mark.skipif(not os.access(QEMU, os.X_OK), reason="qemu-system-x86_64 not installed")
needs_kvm = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm not usable")


@dataclass
class Guest:
    name: str
    uuid: str
    dir: Path

    @property
    def qmp(self) -> str:
        return str(self.dir / f"{self.name}.qmp")

    @property
    def pidfile(self) -> str:
        return str(self.dir / f"{self.name}.pid")

    @property
    def log(self) -> str:
        return str(self.dir / "log" / f"{self.name}.log")

    def argv(self, accel: str = "kvm", *extra: str) -> list[str]:
        """A diskless, paused (-S) guest with a QMP socket; the uuid is the cmdline marker."""
        return [QEMU, "-name", f"guest={self.name}", "-uuid", self.uuid,
                "-machine", f"q35,accel={accel}", "-m", "64", "-nodefaults",
                "-display", "none", "-S",
                "-qmp", f"unix:{self.qmp},server=on,wait=off", *extra]


@dataclass
class QemuGuard:
    tmp: Path
    guests: list[Guest] = field(default_factory=list)

    def guest(self, name: str | None = None) -> Guest:
        name = name or f"g{len(self.guests)}"
        g = Guest(name, str(uuidlib.uuid4()), self.tmp)
        self.guests.append(g)
        return g

    def kill_all(self) -> None:
        for g in self.guests:
            try:
                pid = int(Path(g.pidfile).read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if g.uuid.encode() in cmdline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def qemu_guard(tmp_path: Path):
    guard = QemuGuard(tmp_path)
    yield guard
    guard.kill_all()
