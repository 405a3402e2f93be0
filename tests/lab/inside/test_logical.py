"""logical pools on real LVM (the lab's blank disks /dev/vdb and /dev/vdc)."""

from __future__ import annotations

import json
import os

from tests.lab.inside.conftest import sh

MiB = 1024 * 1024


def lvs(vg: str) -> dict[str, dict]:
    out = sh("lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
             "-o", "lv_name,lv_size,lv_attr", vg)
    return {lv["lv_name"]: lv for lv in json.loads(out)["report"][0]["lv"]}


def test_logical_pool_lifecycle(lab, tmp_path) -> None:
    assert "Pool vg1 defined" in lab.ok(
        "pool-define-as vg1 logical --source-dev /dev/vdb --source-name vg1 --target /dev/vg1")
    assert "unsupported configuration: cannot find logical volume group name 'vg1'" in \
        lab.fails("pool-start vg1")
    assert "Pool vg1 built" in lab.ok("pool-build vg1")
    assert "vg1" in sh("vgs", "--noheadings", "-o", "vg_name")
    info = lab.ok("pool-start vg1; pool-info vg1")
    assert "Pool vg1 started" in info
    assert "State:          running" in info and "Capacity:       252.00 MiB" in info

    assert "Vol lv1 created" in lab.ok("vol-create-as vg1 lv1 16M; vol-create-as vg1 lv2 8M")
    assert set(lvs("vg1")) == {"lv1", "lv2"}
    out = lab.ok("vol-list vg1; vol-info lv1 --pool vg1; vol-dumpxml lv1 --pool vg1")
    assert " lv1    /dev/vg1/lv1" in out and " lv2    /dev/vg1/lv2" in out
    assert "Type:           block" in out and "Capacity:       16.00 MiB" in out
    xml = out
    assert "<volume type='block'>" in xml and "<path>/dev/vg1/lv1</path>" in xml
    assert "storage volume 'lv1' exists already" in lab.fails("vol-create-as vg1 lv1 4M")

    # data through RPC streams onto the LV and back
    data = os.urandom(MiB)
    (tmp_path / "up").write_bytes(data)
    lab.ok(f"vol-upload lv1 {tmp_path / 'up'} --pool vg1")
    with open("/dev/vg1/lv1", "rb") as f:
        assert f.read(MiB) == data
    lab.ok(f"vol-download lv1 {tmp_path / 'down'} --pool vg1 --length {MiB}")
    assert (tmp_path / "down").read_bytes() == data

    assert "Capacity:       12.00 MiB" in lab.ok("vol-resize lv2 12M --pool vg1; "
                                                 "vol-info lv2 --pool vg1")
    assert int(lvs("vg1")["lv2"]["lv_size"]) == 12 * MiB
    assert "Vol lv2 deleted" in lab.ok("vol-delete lv2 --pool vg1")
    assert set(lvs("vg1")) == {"lv1"}
    assert "no storage vol with matching path 'lv2'" in lab.fails("vol-info lv2 --pool vg1")

    found = lab.ok("find-storage-pool-sources logical")
    assert "<name>vg1</name>" in found and "<device path='/dev/vdb'/>" in found

    assert "Pool vg1 destroyed" in lab.ok("pool-refresh vg1; pool-destroy vg1")
    assert lvs("vg1")["lv1"]["lv_attr"][4] != "a"        # deactivated
    assert "storage pool 'vg1' is not active" in lab.fails("vol-list vg1")
    out = lab.ok("pool-start vg1; vol-list vg1; pool-destroy vg1; pool-delete vg1")
    assert "lv1" in out                                  # still there after a restart
    assert "Pool vg1 deleted" in out
    assert "vg1" not in sh("vgs", "--noheadings", "-o", "vg_name")
    assert "Pool vg1 has been undefined" in lab.ok("pool-undefine vg1")


def test_logical_build_refuses_a_used_device(lab) -> None:
    sh("mkfs.ext4", "-q", "-F", "/dev/vdc")
    lab.ok("pool-define-as vg2 logical --source-dev /dev/vdc --source-name vg2 --target /dev/vg2")
    err = lab.fails("pool-build vg2 --no-overwrite")
    assert "forced overwrite is necessary" in err or "already formatted" in err
    assert "Pool vg2 built" in lab.ok("pool-build vg2 --overwrite")
    out = lab.ok("pool-start vg2; vol-create-as vg2 thick 8M; vol-list vg2; pool-destroy vg2; "
                 "pool-delete vg2; pool-undefine vg2")
    assert " thick " in out and "Pool vg2 has been undefined" in out
