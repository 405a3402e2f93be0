"""A block volume (an iSCSI LUN) as a guest's <disk type='volume'>, on the QEMU driver in the lab.

The guest is only started paused (TCG inside the lab VM is too slow to boot
one, and QEMU opening the disk is what is checked): QEMU gets the LUN's
by-path device as a ``host_device`` node, raw since the disk names no
format, and the live XML keeps pool and volume as libvirtd shows them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.lab.inside.conftest import IQN

BY_PATH = f"/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{IQN}"
LUN2_BYTES = 32 * 1024 * 1024      # tests/lab/guest_job.sh's second LUN

GUEST = """<domain type='qemu'>
  <name>blkguest</name>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='volume' device='disk'>
      <source pool='blk' volume='unit:0:0:2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def _blockdevs(pid: int) -> list[dict]:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "-blockdev"]


def test_iscsi_lun_as_a_volume_disk(lab, tmp_path) -> None:
    lab.ok(f"pool-create-as blk iscsi --source-host 127.0.0.1 --source-dev {IQN} "
           "--target /dev/disk/by-path")
    xml = tmp_path / "blkguest.xml"
    xml.write_text(GUEST)
    lab.ok(f"define {xml}; start blkguest --paused")
    try:
        pid = int((lab.daemon.root / "run" / "qemu" / "blkguest.pid").read_text())
        nodes = _blockdevs(pid)
        storage = next(n for n in nodes if n.get("node-name", "").endswith("-storage"))
        assert storage["driver"] == "host_device"
        assert storage["filename"] == f"{BY_PATH}-lun-2"
        fmt = next(n for n in nodes if n.get("node-name", "").endswith("-format"))
        assert fmt["driver"] == "raw"

        live = lab.ok("dumpxml blkguest")
        assert "<driver name='qemu' type='raw'/>" in live
        assert "<source pool='blk' volume='unit:0:0:2' index='1'/>" in live
        assert "vda      unit:0:0:2" in lab.ok("domblklist blkguest")
        assert f"Capacity:       {LUN2_BYTES}" in lab.ok("domblkinfo blkguest vda")
    finally:
        lab.virsh("destroy blkguest")
        lab.virsh("undefine blkguest")
    lab.ok("pool-destroy blk")
