"""A dead NFS server stalls only calls on its pool (runs last: it stops nfsd).

While the export stops answering (nfsd stopped: the hard mount retries for
ever), a volume creation on that pool hangs; pool-list, vol-list on another
pool and list keep answering.  When the server comes back, the stalled call
completes.
"""

from __future__ import annotations

import os
import subprocess
import time

from tests.lab.inside.conftest import sh

ANSWER_WITHIN = 15.0


def test_dead_nfs_stalls_only_its_pool(lab, tmp_path) -> None:
    lab.ok("pool-create-as nfsb netfs --source-host 127.0.0.1 --source-path /srv/nfs/b "
           "--source-format nfs --target /mnt/nfsb --build")
    lab.ok(f"pool-create-as local dir --target {tmp_path / 'local'} --build")
    lab.ok("vol-create-as local x 1M")
    lab.ok("vol-create-as nfsb before 1M")

    sh("rpc.nfsd", "0")                    # the export stops answering
    env = dict(os.environ, LC_ALL="C")
    stuck = subprocess.Popen(["virsh", "-c", lab.uri, "vol-create-as nfsb stuck 1M"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(3)
        assert stuck.poll() is None, f"vol-create-as on the dead pool returned: " \
                                     f"{stuck.communicate()}"
        out = lab.answers("pool-list --all", ANSWER_WITHIN)
        assert " nfsb " in out and " local " in out, out
        out = lab.answers("vol-list local", ANSWER_WITHIN)
        assert " x " in out, out
        lab.answers("list --all", ANSWER_WITHIN)
        out = lab.answers("pool-info local", ANSWER_WITHIN)
        assert "running" in out
        lab.ok("vol-create-as local y 1M")          # storage work on another pool too
        assert stuck.poll() is None, "the call on the dead pool should still be waiting"
    finally:
        sh("rpc.nfsd", "4")                # the server is back
    try:
        out, err = stuck.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stuck.kill()
        stuck.communicate()
        raise AssertionError("the stalled call did not complete after the server came back")
    assert stuck.returncode == 0, err
    assert os.path.exists("/srv/nfs/b/stuck")
    lab.ok("pool-destroy nfsb")
    lab.ok("pool-destroy local")
