"""Domain snapshot XML (<domainsnapshot>): the model every driver shares.

A snapshot records a name, an optional description, the domain's state when
it was taken, its parent in the domain's snapshot tree, when it was made, how
memory and each disk were captured, and the domain definition of that moment.
`parse` reads what a client sends to snapshot-create (name and description;
the rest is the driver's to fill in); `parse_saved` reads back what a driver
persisted with `format` (the whole record).  Facts from libvirt's
docs/formatsnapshot.rst; the element order is the one libvirt prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P

from . import domain as domxml
from . import format_libvirt, fromstring, hardened_parser, schema

# <state> values: the domain's state at creation, or disk-snapshot for a
# disk-only snapshot (libvirt's virDomainSnapshotState)
STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
          "pmsuspended", "disk-snapshot")
SNAPSHOT_MODES = ("no", "internal", "external", "manual")


@dataclass
class SnapshotDisk:
    """One <disk name='vda' snapshot='internal'/> of a snapshot; an external one
    names its overlay: <disk ... snapshot='external' type='file'><driver type='qcow2'/>
    <source file='...'/></disk>."""
    name: str
    snapshot: str = "internal"
    source: str | None = None              # the overlay (external), file or device
    source_type: str = "file"
    driver_type: str | None = None


@dataclass(eq=False)
class SnapshotDef:
    name: str
    description: str | None = None
    state: str = "nostate"
    creation_time: int = 0
    parent: str | None = None
    memory: str = "no"                     # "no", "internal" or "external"
    disks: list[SnapshotDisk] = field(default_factory=list)
    domain: domxml.DomainDef | None = None

    @property
    def external(self) -> bool:
        """Any part kept outside the disks' own images (the list filter's meaning)."""
        return self.memory == "external" or any(d.snapshot == "external" for d in self.disks)


def _xml_error(message: str) -> VirError:
    return VirError(P.VIR_ERR_XML_ERROR, message, domain=P.VIR_FROM_XML)


def _root(text: str, *, validate_schema: bool = False) -> etree._Element:
    try:
        root = fromstring(text, hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise VirError(P.VIR_ERR_XML_DETAIL, domain=P.VIR_FROM_DOMAIN_SNAPSHOT,
                       message=f"(domain_snapshot):{exc.lineno}: {exc.msg}") from None
    if root.tag != "domainsnapshot":
        raise _xml_error(f"expecting root element of 'domainsnapshot', not '{root.tag}'")
    if validate_schema:
        schema.validate(root, "domainsnapshot")
    return root


def parse(text: str, *, validate_schema: bool = False) -> SnapshotDef:
    """A client's snapshot XML: name (may be empty: the driver names it), description,
    memory and disk requests.  Bad names are refused with libvirt's errors."""
    root = _root(text, validate_schema=validate_schema)
    name = (root.findtext("name") or "").strip()
    if name:
        check_name("snapshot", name)
    snap = SnapshotDef(name=name, description=root.findtext("description"))
    mem = root.find("memory")
    if mem is not None:
        snap.memory = mem.get("snapshot") or ""
    disks = root.find("disks")
    for d in (disks if disks is not None else []):
        if d.tag != "disk":
            continue
        if not d.get("name"):
            raise _xml_error("missing name from disk snapshot element")
        src = d.find("source")
        path = None if src is None else (src.get("file") or src.get("dev"))
        drv = d.find("driver")
        # a disk given a file and no mode is external (libvirt's parser implies it)
        mode = d.get("snapshot") or ("external" if path else "")
        snap.disks.append(SnapshotDisk(
            d.get("name"), mode, path,
            "block" if src is not None and src.get("dev") else (d.get("type") or "file"),
            drv.get("type") if drv is not None else None))
    return snap


def parse_saved(text: str) -> tuple[SnapshotDef, bool]:
    """A snapshot a driver persisted (``format(..., current=...)``): (snapshot, current)."""
    root = _root(text)
    snap = parse(text)
    snap.state = root.findtext("state") or "nostate"
    snap.parent = root.findtext("parent/name")
    snap.creation_time = int(root.findtext("creationTime") or 0)
    dom = root.find("domain")
    if dom is not None:
        snap.domain = domxml.parse_element(dom)
    return snap, root.findtext("active") == "1"


def format(snap: SnapshotDef, *, secure: bool = False, current: bool | None = None) -> str:
    """The snapshot as libvirt prints it (snapshot-dumpxml).

    ``current`` (metadata files only) adds libvirt's internal <active> marker
    of the domain's current snapshot.  ``secure`` is passed on to the domain.
    """
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = snap.name
    if snap.description is not None:
        etree.SubElement(root, "description").text = snap.description
    etree.SubElement(root, "state").text = snap.state
    if snap.parent is not None:
        etree.SubElement(etree.SubElement(root, "parent"), "name").text = snap.parent
    etree.SubElement(root, "creationTime").text = str(snap.creation_time)
    etree.SubElement(root, "memory", snapshot=snap.memory)
    if snap.disks:
        disks = etree.SubElement(root, "disks")
        for d in snap.disks:
            e = etree.SubElement(disks, "disk", name=d.name, snapshot=d.snapshot)
            if d.snapshot == "external" and d.source:
                e.set("type", d.source_type)
                if d.driver_type:
                    etree.SubElement(e, "driver", type=d.driver_type)
                etree.SubElement(e, "source", {"dev" if d.source_type == "block" else "file":
                                               d.source})
    if current is not None:
        etree.SubElement(root, "active").text = "1" if current else "0"
    text = format_libvirt(root)
    if snap.domain is None:
        return text
    # the domain is written from its model, not from a tree: nest its text one level in
    dom = domxml.format(snap.domain, secure=secure)
    nested = "".join(f"  {line}\n" for line in dom.rstrip("\n").split("\n"))
    head, tail = text.rsplit("</domainsnapshot>", 1)
    return head + nested + "</domainsnapshot>" + tail
