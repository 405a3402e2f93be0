"""virt-install --import creates and starts a diskless guest on pyvirtd's QEMU driver.

virt-install runs with its own defaults (the machine it takes from the
capabilities, where the default machine comes first, and the ich9 EHCI+UHCI
USB controllers it adds for it), except for the CPU: its default
host-passthrough aborts QEMU 7.2 under this host's nested KVM, so under KVM the
CPU is named (see test-environment.md); under TCG none is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from daemon_helpers import KVM_OK, guest_pids, kill_guests, needs_qemu, ok, qemu_uri, start_daemon, stop_daemon, virsh

pytestmark = [needs_qemu,
              pytest.mark.skipif(shutil.which("virt-install") is None, reason="virt-install not installed")]


@pytest.fixture
def daemon(tmp_path):
    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        yield d
    finally:
        stop_daemon(d)
        kill_guests(root)


def virt_install(uri: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C", LANG="C", HOME=os.environ.get("HOME", "/root"))
    return subprocess.run(
        ["virt-install", "--connect", uri, "--memory", "64", "--vcpus", "1", "--disk", "none",
         "--import", "--osinfo", "generic", "--network", "none", "--graphics", "none",
         "--noautoconsole",
         *(["--virt-type", "kvm", "--cpu", "qemu64,disable=svm"] if KVM_OK else ["--virt-type", "qemu"]),
         *args],
        capture_output=True, text=True, timeout=120, env=env)


def test_virt_install_import(daemon):
    uri = qemu_uri(daemon)
    r = virt_install(uri, "--name", "vi1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Domain creation completed" in r.stdout
    assert re.search(r"\d+\s+vi1\s+running", ok(uri, "list"))
    assert ok(uri, "domstate vi1 --reason").strip() == "running (booted)"
    assert re.search(r"Persistent:\s+yes", ok(uri, "dominfo vi1"))
    xml = ok(uri, "dumpxml vi1")
    assert "machine='pc-i440fx-" in xml         # the default machine, listed first
    assert xml.count("<controller type='usb'") == 4     # ich9 EHCI and its three UHCI companions
    if KVM_OK:
        assert "qemu64" in xml
    assert guest_pids(daemon.root)
    ok(uri, "destroy vi1")
    ok(uri, "undefine vi1")
    assert not guest_pids(daemon.root)


def test_virt_install_reports_qemu_failure(daemon):
    uri = qemu_uri(daemon)
    r = virt_install(uri, "--name", "vi2", "--vcpus", "999")
    assert r.returncode != 0
    assert "999" in r.stderr, r.stderr     # QEMU's own complaint about the CPU count
    assert not guest_pids(daemon.root)
    virsh(uri, "undefine vi2")
