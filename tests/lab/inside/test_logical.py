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
    assert "Pool vg1 started" in lab.ok("pool-start vg1")
    info = lab.ok("pool-info vg1")
    assert "State:          running" in info and "Capacity:       252.00 MiB" in info

    assert "Vol lv1 created" in lab.ok("vol-create-as vg1 lv1 16M")
    lab.ok("vol-create-as vg1 lv2 8M")
    assert set(lvs("vg1")) == {"lv1", "lv2"}
    listing = lab.ok("vol-list vg1")
    assert " lv1    /dev/vg1/lv1" in listing and " lv2    /dev/vg1/lv2" in listing
    info = lab.ok("vol-info lv1 --pool vg1")
    assert "Type:           block" in info and "Capacity:       16.00 MiB" in info
    xml = lab.ok("vol-dumpxml lv1 --pool vg1")
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

    lab.ok("vol-resize lv2 12M --pool vg1")
    assert int(lvs("vg1")["lv2"]["lv_size"]) == 12 * MiB
    assert "Capacity:       12.00 MiB" in lab.ok("vol-info lv2 --pool vg1")
    assert "Vol lv2 deleted" in lab.ok("vol-delete lv2 --pool vg1")
    assert set(lvs("vg1")) == {"lv1"}
    assert "no storage vol with matching path 'lv2'" in lab.fails("vol-info lv2 --pool vg1")

    found = lab.ok("find-storage-pool-sources logical")
    assert "<name>vg1</name>" in found and "<device path='/dev/vdb'/>" in found

    lab.ok("pool-refresh vg1")
    assert "Pool vg1 destroyed" in lab.ok("pool-destroy vg1")
    assert lvs("vg1")["lv1"]["lv_attr"][4] != "a"        # deactivated
    assert "storage pool 'vg1' is not active" in lab.fails("vol-list vg1")
    lab.ok("pool-start vg1")
    assert "lv1" in lab.ok("vol-list vg1")               # still there after a restart
    lab.ok("pool-destroy vg1")
    assert "Pool vg1 deleted" in lab.ok("pool-delete vg1")
    assert "vg1" not in sh("vgs", "--noheadings", "-o", "vg_name")
    assert "Pool vg1 has been undefined" in lab.ok("pool-undefine vg1")


def test_logical_build_refuses_a_used_device(lab) -> None:
    sh("mkfs.ext4", "-q", "-F", "/dev/vdc")
    lab.ok("pool-define-as vg2 logical --source-dev /dev/vdc --source-name vg2 --target /dev/vg2")
    err = lab.fails("pool-build vg2 --no-overwrite")
    assert "forced overwrite is necessary" in err or "already formatted" in err
    assert "Pool vg2 built" in lab.ok("pool-build vg2 --overwrite")
    lab.ok("pool-start vg2")
    lab.ok("vol-create-as vg2 thick 8M")
    assert "thick" in lab.ok("vol-list vg2")
    lab.ok("pool-destroy vg2")
    lab.ok("pool-delete vg2")
    lab.ok("pool-undefine vg2")
