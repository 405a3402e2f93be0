"""Test driver: domain snapshots (metadata only: nothing is really saved).

A snapshot records the domain definition and run state at creation; reverting
puts both back.  Snapshots form a tree through ``parent``; each domain has at
most one current snapshot, the parent of the next one created.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import fromstring, hardened_parser, schema

from .domains import (EV_SUSPENDED, PAUSED, PAUSED_FROM_SNAPSHOT,
                      RUNNING, RUNNING_FROM_SNAPSHOT, SHUTOFF, SHUTOFF_FROM_SNAPSHOT,
                      STARTED_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT, SUSPENDED_FROM_SNAPSHOT,
                      Domain)

# virDomainSnapshotCreateFlags
CREATE_REDEFINE, CREATE_CURRENT, CREATE_NO_METADATA, CREATE_HALT = 1, 2, 4, 8
CREATE_DISK_ONLY, CREATE_ATOMIC, CREATE_VALIDATE = 16, 128, 512
# virDomainSnapshotListFlags (ROOTS and DESCENDANTS share a bit)
LIST_ROOTS = LIST_DESCENDANTS = 1
LIST_METADATA, LIST_LEAVES, LIST_NO_LEAVES, LIST_NO_METADATA = 2, 4, 8, 16
LIST_INACTIVE, LIST_ACTIVE, LIST_DISK_ONLY, LIST_INTERNAL, LIST_EXTERNAL = 32, 64, 128, 256, 512
LIST_TOPOLOGICAL = 1024
# virDomainSnapshotDeleteFlags
DELETE_CHILDREN, DELETE_METADATA_ONLY, DELETE_CHILDREN_ONLY = 1, 2, 4
# virDomainSnapshotRevertFlags
REVERT_RUNNING, REVERT_PAUSED, REVERT_FORCE = 1, 2, 4

_STATE_NAMES = {RUNNING: "running", PAUSED: "paused", SHUTOFF: "shutoff"}


@dataclass(eq=False)
class Snapshot:
    name: str
    description: str | None
    state: int                      # the domain's state when taken
    creation_time: int
    parent: str | None
    definition: domxml.DomainDef

    def xml(self, secure: bool = False) -> str:
        lines = ["<domainsnapshot>", f"  <name>{escape(self.name)}</name>"]
        if self.description is not None:
            lines.append(f"  <description>{escape(self.description)}</description>")
        lines.append(f"  <state>{_STATE_NAMES.get(self.state, 'nostate')}</state>")
        if self.parent is not None:
            lines += ["  <parent>", f"    <name>{escape(self.parent)}</name>", "  </parent>"]
        lines.append(f"  <creationTime>{self.creation_time}</creationTime>")
        memory = "no" if self.state == SHUTOFF else "internal"
        lines.append(f"  <memory snapshot='{memory}'/>")
        disks = [d for d in self.definition.devices_of("disk") if d.get("device", "disk") == "disk"]
        if disks:
            lines.append("  <disks>")
            for disk in disks:
                target = disk.find("target")
                name = target.get("dev") if target is not None else ""
                lines.append(f"    <disk name='{name}' snapshot='internal'/>")
            lines.append("  </disks>")
        dom = domxml.format(self.definition, secure=secure)
        lines += ["  " + line for line in dom.rstrip("\n").split("\n")]
        lines.append("</domainsnapshot>")
        return "\n".join(lines) + "\n"


def _parse_snapshot_xml(text: str, *, validate_schema: bool = False
                        ) -> tuple[str | None, str | None]:
    try:
        root = fromstring(text, hardened_parser())
    except etree.XMLSyntaxError as exc:
        raise VirError(P.VIR_ERR_XML_DETAIL, domain=P.VIR_FROM_DOMAIN_SNAPSHOT,
                       message=f"(domain_snapshot):{exc.lineno}: {exc.msg}") from None
    if root.tag != "domainsnapshot":
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"expecting root element of 'domainsnapshot', not '{root.tag}'",
                       domain=P.VIR_FROM_XML)
    if validate_schema:
        schema.validate(root, "domainsnapshot")
    name = root.findtext("name")
    desc = root.findtext("description")
    if name and name.strip():
        check_name("snapshot", name.strip())
    return (name.strip() if name else None), desc


class SnapshotMixin:
    """Methods are named after the snapshot procedures; the domain ones live in domains.py."""

    def _snap(self, ref: Any) -> tuple[Domain, Snapshot]:
        dom = self._dom(ref.dom)
        snap = dom.snapshots.get(ref.name)
        if snap is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           f"no domain snapshot with matching name '{ref.name}'",
                           domain=P.VIR_FROM_TEST)
        return dom, snap

    @staticmethod
    def _snap_ref(dom: Domain, snap: Snapshot) -> Any:
        return P.remote_nonnull_domain_snapshot(snap.name, dom.ref())

    def domain_snapshot_create_xml(self, ref: Any, xml_desc: str, flags: int) -> Any:
        check_flags(flags, CREATE_REDEFINE | CREATE_CURRENT | CREATE_NO_METADATA | CREATE_HALT
                    | CREATE_ATOMIC | CREATE_VALIDATE, "testDomainSnapshotCreateXML",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        name, desc = _parse_snapshot_xml(xml_desc, validate_schema=bool(flags & CREATE_VALIDATE))
        now = int(time.time())
        name = name or str(now)
        if name in dom.snapshots:
            raise VirError(P.VIR_ERR_OPERATION_FAILED, f"domain moment {name} already exists",
                           domain=P.VIR_FROM_DOMAIN_SNAPSHOT)
        snap = Snapshot(name, desc, dom.state, now, dom.current_snapshot,
                        dom.definition.copy())
        if flags & CREATE_NO_METADATA:
            return self._snap_ref(dom, snap)
        dom.snapshots[name] = snap
        dom.current_snapshot = name
        if flags & CREATE_HALT and dom.active:
            self._stop(dom, SHUTOFF_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT)
        return self._snap_ref(dom, snap)

    # -- listing ----------------------------------------------------------

    def _filter(self, dom: Domain, snaps: list[Snapshot], flags: int) -> list[Snapshot]:
        def has_children(s: Snapshot) -> bool:
            return any(c.parent == s.name for c in dom.snapshots.values())

        out = []
        for s in snaps:
            if flags & (LIST_LEAVES | LIST_NO_LEAVES):
                leaf = not has_children(s)
                if not (flags & LIST_LEAVES and leaf or flags & LIST_NO_LEAVES and not leaf):
                    continue
            if flags & (LIST_METADATA | LIST_NO_METADATA) and not flags & LIST_METADATA:
                continue
            if flags & (LIST_INACTIVE | LIST_ACTIVE | LIST_DISK_ONLY):
                off = s.state == SHUTOFF
                if not (flags & LIST_INACTIVE and off or flags & LIST_ACTIVE and not off):
                    continue
            if flags & (LIST_INTERNAL | LIST_EXTERNAL) and not flags & LIST_INTERNAL:
                continue
            out.append(s)
        return out

    def _descendants(self, dom: Domain, name: str, recursive: bool) -> list[Snapshot]:
        out = []
        for s in dom.snapshots.values():
            if s.parent == name:
                out.append(s)
                if recursive:
                    out += self._descendants(dom, s.name, True)
        return out

    def _domain_snapshots(self, dom: Domain, flags: int) -> list[Snapshot]:
        snaps = list(dom.snapshots.values())
        if flags & LIST_ROOTS:
            snaps = [s for s in snaps if s.parent is None]
        return self._filter(dom, snaps, flags)

    def domain_list_all_snapshots(self, ref: Any, need_results: int, flags: int) -> tuple:
        dom = self._dom(ref)
        snaps = self._domain_snapshots(dom, flags)
        return ([self._snap_ref(dom, s) for s in snaps] if need_results else [], len(snaps))

    def domain_snapshot_num(self, ref: Any, flags: int) -> int:
        return len(self._domain_snapshots(self._dom(ref), flags))

    def domain_snapshot_list_names(self, ref: Any, maxnames: int, flags: int) -> list[str]:
        return [s.name for s in self._domain_snapshots(self._dom(ref), flags)][:maxnames]

    def _children(self, ref: Any, flags: int) -> tuple[Domain, list[Snapshot]]:
        dom, snap = self._snap(ref)
        kids = self._descendants(dom, snap.name, bool(flags & LIST_DESCENDANTS))
        return dom, self._filter(dom, kids, flags)

    def domain_snapshot_list_all_children(self, snapshot: Any, need_results: int, flags: int) -> tuple:
        dom, kids = self._children(snapshot, flags)
        return ([self._snap_ref(dom, s) for s in kids] if need_results else [], len(kids))

    def domain_snapshot_num_children(self, snap: Any, flags: int) -> int:
        return len(self._children(snap, flags)[1])

    def domain_snapshot_list_children_names(self, snap: Any, maxnames: int, flags: int) -> list[str]:
        return [s.name for s in self._children(snap, flags)[1]][:maxnames]

    # -- single snapshots -------------------------------------------------

    def domain_snapshot_lookup_by_name(self, ref: Any, name: str, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotLookupByName", P.VIR_FROM_TEST)
        dom, snap = self._snap(P.remote_nonnull_domain_snapshot(name, ref))
        return self._snap_ref(dom, snap)

    def domain_snapshot_get_xml_desc(self, snap: Any, flags: int) -> str:
        check_flags(flags, 1, "testDomainSnapshotGetXMLDesc", P.VIR_FROM_TEST)
        return self._snap(snap)[1].xml(secure=bool(flags & 1))

    def domain_has_current_snapshot(self, ref: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainHasCurrentSnapshot", P.VIR_FROM_TEST)
        return int(self._dom(ref).current_snapshot is not None)

    def domain_snapshot_current(self, ref: Any, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotCurrent", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if dom.current_snapshot is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           "the domain does not have a current snapshot", domain=P.VIR_FROM_TEST)
        return self._snap_ref(dom, dom.snapshots[dom.current_snapshot])

    def domain_snapshot_get_parent(self, snap: Any, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotGetParent", P.VIR_FROM_TEST)
        dom, s = self._snap(snap)
        if s.parent is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           f"snapshot '{s.name}' does not have a parent", domain=P.VIR_FROM_TEST)
        return self._snap_ref(dom, dom.snapshots[s.parent])

    def domain_snapshot_is_current(self, snap: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainSnapshotIsCurrent", P.VIR_FROM_TEST)
        dom, s = self._snap(snap)
        return int(dom.current_snapshot == s.name)

    def domain_snapshot_has_metadata(self, snap: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainSnapshotHasMetadata", P.VIR_FROM_TEST)
        self._snap(snap)
        return 1

    def domain_snapshot_delete(self, snap: Any, flags: int) -> None:
        check_flags(flags, DELETE_CHILDREN | DELETE_METADATA_ONLY | DELETE_CHILDREN_ONLY,
                    "testDomainSnapshotDelete", P.VIR_FROM_TEST)
        dom, s = self._snap(snap)
        doomed = []
        if flags & (DELETE_CHILDREN | DELETE_CHILDREN_ONLY):
            doomed = [d.name for d in self._descendants(dom, s.name, True)]
        if not flags & DELETE_CHILDREN_ONLY:
            doomed.append(s.name)
            for child in dom.snapshots.values():
                if child.parent == s.name:
                    child.parent = s.parent
        for name in doomed:
            del dom.snapshots[name]
        if dom.current_snapshot in doomed:
            dom.current_snapshot = s.parent if s.name in doomed else s.name

    def domain_revert_to_snapshot(self, snap: Any, flags: int) -> None:
        check_flags(flags, REVERT_RUNNING | REVERT_PAUSED | REVERT_FORCE,
                    "testDomainRevertToSnapshot", P.VIR_FROM_TEST)
        dom, s = self._snap(snap)
        target = s.state
        if flags & REVERT_RUNNING:
            target = RUNNING
        elif flags & REVERT_PAUSED:
            target = PAUSED
        dom.definition = s.definition.copy()
        if target == SHUTOFF:
            if dom.active:  # an inactive domain keeps its shutoff reason
                self._stop(dom, SHUTOFF_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT)
        else:
            if not dom.active:
                self._start(dom, RUNNING_FROM_SNAPSHOT, STARTED_FROM_SNAPSHOT)
            if target == PAUSED:
                dom.set_state(PAUSED, PAUSED_FROM_SNAPSHOT)
                self._emit(dom, EV_SUSPENDED, SUSPENDED_FROM_SNAPSHOT)
            else:
                dom.set_state(RUNNING, RUNNING_FROM_SNAPSHOT)
        dom.current_snapshot = s.name
