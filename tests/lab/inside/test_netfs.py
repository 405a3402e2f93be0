"""netfs pools on the lab's NFS server (127.0.0.1:/srv/nfs/a, tests/lab/guest_job.sh)."""

from __future__ import annotations

import os

from tests.lab.inside.conftest import sh


def mounted(target: str) -> str | None:
    for line in open("/proc/self/mounts"):
        fields = line.split()
        if fields[1] == target:
            return f"{fields[0]} {fields[2]}"
    return None


def test_netfs_pool_lifecycle(lab) -> None:
    found = lab.ok("find-storage-pool-sources-as netfs 127.0.0.1")
    assert "<host name='127.0.0.1'/>" in found
    assert "<dir path='/srv/nfs/a'/>" in found and "<format type='nfs'/>" in found
    assert "hostname must be specified for netfs sources" in lab.fails(
        "find-storage-pool-sources netfs")

    assert "Pool nfsa defined" in lab.ok(
        "pool-define-as nfsa netfs --source-host 127.0.0.1 --source-path /srv/nfs/a "
        "--source-format nfs --target /mnt/nfsa")
    out = lab.ok("pool-build nfsa; pool-start nfsa")
    assert "Pool nfsa built" in out and "Pool nfsa started" in out
    where = mounted("/mnt/nfsa")
    assert where is not None and where.startswith("127.0.0.1:/srv/nfs/a nfs"), where

    out = lab.ok("vol-create-as nfsa v1 8M --format qcow2; vol-create-as nfsa v2 4M; "
                 "vol-list nfsa; vol-info v1 --pool nfsa; vol-dumpxml v1 --pool nfsa")
    assert "Vol v1 created" in out
    assert os.path.exists("/srv/nfs/a/v1") and os.path.exists("/srv/nfs/a/v2")   # server side
    assert " v1     /mnt/nfsa/v1" in out and " v2     /mnt/nfsa/v2" in out
    assert "Type:           file" in out and "Capacity:       8.00 MiB" in out
    assert "<format type='qcow2'/>" in out

    # a file made on the server shows up after a refresh
    with open("/srv/nfs/a/fromserver", "wb") as f:
        f.truncate(1024 * 1024)
    assert "fromserver" in lab.ok("pool-refresh nfsa; vol-list nfsa")

    assert "Vol v1 deleted" in lab.ok("vol-delete v1 --pool nfsa")
    assert not os.path.exists("/srv/nfs/a/v1")
    assert "Target '/mnt/nfsa' is already mounted" in lab.fails(
        "pool-create-as nfsdup netfs --source-host 127.0.0.1 --source-path /srv/nfs/b "
        "--target /mnt/nfsa")
    assert "Pool nfsa destroyed" in lab.ok("pool-destroy nfsa")
    assert mounted("/mnt/nfsa") is None
    assert "Pool nfsa has been undefined" in lab.ok("pool-undefine nfsa")
    sh("rm", "-f", "/srv/nfs/a/v2", "/srv/nfs/a/fromserver")
