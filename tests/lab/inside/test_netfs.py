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
    assert "Pool nfsa built" in lab.ok("pool-build nfsa")
    assert os.path.isdir("/mnt/nfsa")
    assert "Pool nfsa started" in lab.ok("pool-start nfsa")
    where = mounted("/mnt/nfsa")
    assert where is not None and where.startswith("127.0.0.1:/srv/nfs/a nfs"), where

    assert "Vol v1 created" in lab.ok("vol-create-as nfsa v1 8M --format qcow2")
    lab.ok("vol-create-as nfsa v2 4M")
    assert os.path.exists("/srv/nfs/a/v1") and os.path.exists("/srv/nfs/a/v2")   # server side
    listing = lab.ok("vol-list nfsa")
    assert " v1     /mnt/nfsa/v1" in listing and " v2     /mnt/nfsa/v2" in listing
    info = lab.ok("vol-info v1 --pool nfsa")
    assert "Type:           file" in info and "Capacity:       8.00 MiB" in info
    assert "<format type='qcow2'/>" in lab.ok("vol-dumpxml v1 --pool nfsa")

    # a file made on the server shows up after a refresh
    with open("/srv/nfs/a/fromserver", "wb") as f:
        f.truncate(1024 * 1024)
    lab.ok("pool-refresh nfsa")
    assert "fromserver" in lab.ok("vol-list nfsa")

    assert "Vol v1 deleted" in lab.ok("vol-delete v1 --pool nfsa")
    assert not os.path.exists("/srv/nfs/a/v1")
    assert "Target '/mnt/nfsa' is already mounted" in lab.fails(
        "pool-create-as nfsdup netfs --source-host 127.0.0.1 --source-path /srv/nfs/b "
        "--target /mnt/nfsa")
    assert "Pool nfsa destroyed" in lab.ok("pool-destroy nfsa")
    assert mounted("/mnt/nfsa") is None
    assert "Pool nfsa has been undefined" in lab.ok("pool-undefine nfsa")
    sh("rm", "-f", "/srv/nfs/a/v2", "/srv/nfs/a/fromserver")
