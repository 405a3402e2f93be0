"""The shared snapshot model (pyvirtd/xml/snapshot.py): client XML, libvirt's layout,
metadata files read back as written."""

from __future__ import annotations

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import snapshot as snapxml
from pyvirtd.xml.snapshot import SnapshotDef, SnapshotDisk

DOMAIN = ("<domain type='qemu'><name>g</name><memory>65536</memory>"
          "<os><type>hvm</type></os></domain>")


def test_client_xml() -> None:
    snap = snapxml.parse("<domainsnapshot><name> s1 </name><description>a &lt;b&gt;</description>"
                         "<memory snapshot='internal'/><disks><disk name='vda' snapshot='no'/>"
                         "</disks></domainsnapshot>")
    assert (snap.name, snap.description, snap.memory) == ("s1", "a <b>", "internal")
    assert snap.disks == [SnapshotDisk("vda", "no")]
    assert snapxml.parse("<domainsnapshot/>").name == ""


@pytest.mark.parametrize("text, code", [
    ("<domainsnapshot><name>a/b</name></domainsnapshot>", P.VIR_ERR_XML_ERROR),
    ("<domain/>", P.VIR_ERR_XML_ERROR),
    ("<domainsnapshot>", P.VIR_ERR_XML_DETAIL),
    ("<domainsnapshot><disks><disk/></disks></domainsnapshot>", P.VIR_ERR_XML_ERROR),
])
def test_bad_client_xml(text: str, code: int) -> None:
    with pytest.raises(VirError) as exc:
        snapxml.parse(text)
    assert exc.value.code == code


def test_format_as_libvirt_and_read_back() -> None:
    snap = SnapshotDef(name="s2", description="x & y", state="running", creation_time=1700000000,
                       parent="s1", memory="internal", disks=[SnapshotDisk("vda")],
                       domain=domxml.parse(DOMAIN))
    text = snapxml.format(snap)
    assert text.startswith("<domainsnapshot>\n  <name>s2</name>\n"
                           "  <description>x &amp; y</description>\n  <state>running</state>\n"
                           "  <parent>\n    <name>s1</name>\n  </parent>\n"
                           "  <creationTime>1700000000</creationTime>\n"
                           "  <memory snapshot='internal'/>\n"
                           "  <disks>\n    <disk name='vda' snapshot='internal'/>\n  </disks>\n"
                           "  <domain type='qemu'>\n    <name>g</name>\n")
    assert text.endswith("  </domain>\n</domainsnapshot>\n")
    assert "<active>" not in text
    back, current = snapxml.parse_saved(snapxml.format(snap, current=True))
    assert current
    assert snapxml.format(back) == text
    assert not snapxml.parse_saved(snapxml.format(snap, current=False))[1]


def test_external_disks_name_their_overlays() -> None:
    """virsh --diskspec vda,file=PATH sends a source and no mode: external is implied;
    the overlay is printed as libvirt prints it."""
    snap = snapxml.parse("<domainsnapshot><name>s</name><disks><disk name='vda'>"
                         "<source file='/i/ov.qcow2'/><driver type='qcow2'/></disk>"
                         "<disk name='vdb' snapshot='no'/></disks></domainsnapshot>")
    assert snap.disks == [SnapshotDisk("vda", "external", "/i/ov.qcow2", "file", "qcow2"),
                          SnapshotDisk("vdb", "no")]
    assert snap.external
    text = snapxml.format(snap)
    assert ("<disk name='vda' snapshot='external' type='file'>\n      <driver type='qcow2'/>\n"
            "      <source file='/i/ov.qcow2'/>\n    </disk>\n"
            "    <disk name='vdb' snapshot='no'/>") in text
    assert snapxml.parse_saved(text)[0].disks == snap.disks
