"""A stuck iSCSI target stalls only calls that read its LUNs (runs late: it freezes tgtd).

tgtd is stopped with SIGSTOP: its TCP connection stays up, so the initiator
keeps waiting for the SCSI commands it sent (well inside the 30 s command
timeout and iscsid's recovery window) and a read of a LUN blocks in the
kernel.  A vol-download from the iscsi pool then hangs, while listings,
lookups and pool info (the stuck pool's too: they read memory only), a
domain list and storage work on another pool keep answering.  With SIGCONT
the target answers again and the stalled download completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.lab.inside.conftest import IQN, sh

ANSWER_WITHIN = 15.0
LUN1_BYTES = 64 * 1024 * 1024      # tests/lab/guest_job.sh's first LUN


def tgtd_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == "tgtd":
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_stuck_iscsi_target_stalls_only_its_reads(lab, tmp_path) -> None:
    lab.ok(f"pool-create-as frozen iscsi --source-host 127.0.0.1 --source-dev {IQN} "
           "--target /dev/disk/by-path")
    lab.ok(f"pool-create-as local2 dir --target {tmp_path / 'local'} --build")
    lab.ok("vol-create-as local2 x 1M")
    pids = tgtd_pids()
    assert pids, "tgtd is not running"
    sh("sync")
    Path("/proc/sys/vm/drop_caches").write_text("3\n")   # the LUN must be read from the target

    copy = tmp_path / "lun1.copy"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)                      # the target stops answering
    env = dict(os.environ, LC_ALL="C")
    stuck = subprocess.Popen(["virsh", "-c", lab.uri,
                              f"vol-download unit:0:0:1 {copy} --pool frozen"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(3)
        assert stuck.poll() is None, f"vol-download from the frozen target returned: " \
                                     f"{stuck.communicate()}"
        out = lab.answers("pool-list --all", ANSWER_WITHIN)
        assert " frozen " in out and " local2 " in out, out
        out = lab.answers("vol-list frozen; pool-info frozen", ANSWER_WITHIN)
        assert "unit:0:0:1" in out and "running" in out, out
        out = lab.answers("vol-list local2", ANSWER_WITHIN)
        assert " x " in out, out
        lab.answers("list --all", ANSWER_WITHIN)
        lab.answers("vol-create-as local2 y 1M", ANSWER_WITHIN)     # storage work on another pool
        assert stuck.poll() is None, "the download from the frozen target should still wait"
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)                  # the target is back
    try:
        out, err = stuck.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stuck.kill()
        stuck.communicate()
        raise AssertionError("the stalled download did not complete after the target came back")
    assert stuck.returncode == 0, err
    assert copy.stat().st_size == LUN1_BYTES
    lab.ok("pool-destroy frozen")
    lab.ok("pool-destroy local2")
