"""iscsi pools: tgtd's target on 127.0.0.1:3260 with two LUNs (64 and 32 MiB),
logged in to with open-iscsi (tests/lab/guest_job.sh)."""

from __future__ import annotations

from tests.lab.inside.conftest import IQN, sh

BY_PATH = f"/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{IQN}"


def test_iscsi_pool_lifecycle(lab) -> None:
    found = lab.ok("find-storage-pool-sources-as iscsi 127.0.0.1 3260")
    assert "<host name='127.0.0.1' port='3260'/>" in found
    assert f"<device path='{IQN}'/>" in found
    assert "hostname must be specified for iscsi sources" in lab.fails(
        "find-storage-pool-sources iscsi")

    assert "Pool lun defined" in lab.ok(
        f"pool-define-as lun iscsi --source-host 127.0.0.1 --source-dev {IQN} "
        "--target /dev/disk/by-path")
    assert "Pool lun started" in lab.ok("pool-start lun")
    assert IQN in sh("iscsiadm", "--mode", "session")
    listing = lab.ok("vol-list lun")
    assert f" unit:0:0:1   {BY_PATH}-lun-1" in listing, listing
    assert f" unit:0:0:2   {BY_PATH}-lun-2" in listing, listing
    info = lab.ok("vol-info unit:0:0:1 --pool lun; echo ==; "
                  f"vol-info --vol {BY_PATH}-lun-2; echo ==; pool-info lun").split("==")
    assert "Type:           block" in info[0] and "Capacity:       64.00 MiB" in info[0]
    assert "Capacity:       32.00 MiB" in info[1]
    assert "Capacity:       96.00 MiB" in info[2]
    assert "storage pool does not support volume creation" in lab.fails(
        "vol-create-as lun new 1M")
    assert "storage pool does not support vol deletion" in lab.fails(
        "vol-delete unit:0:0:1 --pool lun")

    # a LUN written through the stream lands on the target's backing file
    data = b"pyvirtd-lab" * 1000
    open("/tmp/lun-data", "wb").write(data)
    lab.ok("vol-upload unit:0:0:2 /tmp/lun-data --pool lun")
    sh("sync")
    with open("/var/lib/lab/lun2.img", "rb") as f:
        assert f.read(len(data)) == data

    assert "Pool lun destroyed" in lab.ok("pool-refresh lun; pool-destroy lun")
    assert IQN not in sh("iscsiadm", "--mode", "session", check=False)
    assert "Pool lun has been undefined" in lab.ok("pool-undefine lun")
