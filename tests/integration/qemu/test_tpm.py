"""<tpm> with an emulator backend: pyvirtd runs Debian's swtpm for the guest before
QEMU, QEMU sees the TPM (QMP query-tpm), the TPM's state is kept per guest across
runs, and swtpm goes away with QEMU."""

from __future__ import annotations

import json
import os
import pwd
import shutil
from pathlib import Path

import pytest

from daemon_helpers import (KVM_OK, helper_pids, module_daemon, needs_qemu, ok, privileged_daemon,
                            qemu_uri, virsh, wait_for)

pytestmark = [needs_qemu,
              pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm not installed")]

daemon = module_daemon("qemu-tpm")

GUEST = """<domain type='{virt}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <devices>{tpm}</devices>
</domain>
"""


def _swtpm_pids(name: str) -> list[int]:
    return helper_pids(b"swtpm\0socket", f"/swtpm/{name}.pid".encode())


def _query_tpm(uri: str, name: str) -> list[dict]:
    out = ok(uri, f"qemu-monitor-command {name} '{{\"execute\":\"query-tpm\"}}'")
    return json.loads(out)["return"]


@pytest.mark.parametrize("machine, tpm, model, version", [
    ("q35", "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
     "tpm-crb", "tpm2"),
    ("pc", "<tpm><backend type='emulator'/></tpm>", "tpm-tis", "tpm1.2"),
])
def test_emulated_tpm_runs_and_keeps_its_state(daemon, tmp_path, machine, tpm, model, version):
    uri = qemu_uri(daemon)
    name, uuid = f"dk-tpm-{machine}", f"7d0c5a1e-2b3f-4e6a-9c8d-00000000000{len(machine)}"
    xml = tmp_path / f"{name}.xml"
    xml.write_text(GUEST.format(virt="kvm" if KVM_OK else "qemu", name=name, uuid=uuid,
                                machine=machine, tpm=tpm))
    ok(uri, f"define {xml}")
    state = daemon.root / "lib" / "swtpm" / uuid / version
    try:
        ok(uri, f"start {name}")
        tpms = _query_tpm(uri, name)
        assert [(t["id"], t["model"], t["options"]["type"]) for t in tpms] == \
            [("tpm-tpm0", model, "emulator")]      # the -tpmdev id
        assert len(_swtpm_pids(name)) == 1
        assert "<alias name='tpm0'/>" in ok(uri, f"dumpxml {name}")
        made = {p.name: p.stat().st_mtime_ns for p in state.iterdir()}
        assert made, "no TPM state was written"

        ok(uri, f"destroy {name}")
        wait_for(lambda: not _swtpm_pids(name), 10)
        ok(uri, f"start {name}")           # the same state, not made anew
        assert _query_tpm(uri, name)[0]["model"] == model
        assert all((state / f).exists() for f in made)
    finally:
        virsh(uri, f"destroy {name}; undefine {name}")
    wait_for(lambda: not _swtpm_pids(name), 10)


@pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root daemon")
def test_swtpm_runs_as_tss_under_a_privileged_daemon(tmp_path):
    """As libvirt's swtpm_user: tss, with no capabilities; QEMU (pyvirtd-qemu)
    gets the control socket."""
    name = "dk-tpm-sys"
    with privileged_daemon("pyvirtd-tpm-") as (d, uri):
        try:
            xml = tmp_path / f"{name}.xml"
            xml.write_text(GUEST.format(virt="qemu", name=name, machine="q35",
                                        uuid="7d0c5a1e-2b3f-4e6a-9c8d-0000000000aa",
                                        tpm="<tpm model='tpm-crb'>"
                                            "<backend type='emulator' version='2.0'/></tpm>"))
            ok(uri, f"define {xml}")
            ok(uri, f"start {name}")
            assert _query_tpm(uri, name)[0]["model"] == "tpm-crb"
            [pid] = _swtpm_pids(name)
            status = dict(line.split(":\t", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
            assert status["Uid"].split() == [str(pwd.getpwnam("tss").pw_uid)] * 4
            assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
            ok(uri, f"destroy {name}")
            wait_for(lambda: not _swtpm_pids(name), 10)
        finally:
            virsh(uri, f"destroy {name}; undefine {name}")
            for pid in _swtpm_pids(name):
                os.kill(pid, 9)


def test_swtpm_is_stopped_by_a_restarted_daemon(tmp_path):
    """The daemon restarts while the guest runs: destroying it afterwards still
    takes its swtpm (found by the pid file beside the socket)."""
    from daemon_helpers import kill_guests, start_daemon, stop_daemon

    root = tmp_path / "pyvirtd"
    name = "dk-tpm-restart"
    d = start_daemon(root)
    try:
        uri = qemu_uri(d)
        xml = tmp_path / f"{name}.xml"
        xml.write_text(GUEST.format(virt="kvm" if KVM_OK else "qemu", name=name, machine="q35",
                                    uuid="7d0c5a1e-2b3f-4e6a-9c8d-0000000000bb",
                                    tpm="<tpm model='tpm-crb'>"
                                        "<backend type='emulator' version='2.0'/></tpm>"))
        ok(uri, f"define {xml}; start {name}")
        assert len(_swtpm_pids(name)) == 1
        stop_daemon(d)
        d = start_daemon(root)
        uri = qemu_uri(d)
        assert _query_tpm(uri, name)[0]["model"] == "tpm-crb"     # reattached
        ok(uri, f"destroy {name}")
        wait_for(lambda: not _swtpm_pids(name), 10)
        state = root / "lib" / "swtpm" / "7d0c5a1e-2b3f-4e6a-9c8d-0000000000bb"
        assert state.is_dir()
        # undefine --keep-tpm leaves the TPM's state; a plain undefine removes it
        ok(uri, f"undefine {name} --keep-tpm")
        assert state.is_dir()
        ok(uri, f"define {xml}; undefine {name}")
        assert not state.exists()
    finally:
        stop_daemon(d)
        kill_guests(root)
        for pid in _swtpm_pids(name):
            os.kill(pid, 9)
