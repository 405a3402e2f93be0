"""drivers/qemu/volumes.py without a daemon: which disks it resolves and what the live XML gets."""

from __future__ import annotations

from pyvirtd.drivers.qemu import volumes
from pyvirtd.drivers.qemu.command import VolumeSource
from pyvirtd.xml import domain as domxml

GUEST = """<domain type='qemu'><name>v</name><memory>65536</memory><os><type>hvm</type></os>
<devices>
  <disk type='volume' device='cdrom'><target dev='hdc' bus='ide'/></disk>
  <disk type='volume'><source pool='p' volume='a.img'/><target dev='vda'/></disk>
  <disk type='volume'><driver name='qemu' type='qcow2'/><source pool='p' volume='b.qcow2'/>
    <target dev='vdb'/></disk>
  <disk type='file'><source file='/f.img'/><target dev='vdc'/></disk>
</devices></domain>"""


def test_only_disks_naming_a_volume_are_resolved() -> None:
    d = domxml.parse(GUEST)
    assert [(x.target, x.pool, x.volume) for x in volumes.volume_disks(d)] == [
        ("vda", "p", "a.img"), ("vdb", "p", "b.qcow2")]


def test_live_format_is_raw_unless_the_disk_names_one() -> None:
    d = domxml.parse(GUEST)
    volumes.set_live_formats(d)
    disks = {e.find("target").get("dev"): e for e in d.devices_of("disk")}
    assert disks["vda"].find("driver").attrib == {"name": "qemu", "type": "raw"}
    assert disks["vdb"].find("driver").get("type") == "qcow2"
    assert disks["hdc"].find("driver") is None          # no source: nothing to open
    assert disks["vdc"].find("driver") is None          # not a volume disk: untouched here


def test_paths_by_target() -> None:
    d = domxml.parse(GUEST)
    sources = {("p", "a.img"): VolumeSource("/pool/a.img"),
               ("p", "b.qcow2"): VolumeSource("/pool/b.qcow2")}
    assert volumes.paths_by_target(d, sources) == {"vda": "/pool/a.img", "vdb": "/pool/b.qcow2"}
