"""One domain's snapshot tree: parent, children, current, list filters, metadata files.

Snapshots form a tree through ``parent``; a domain has at most one current
snapshot, the parent of the next one created.  The filters are those of
virDomainListAllSnapshots / virDomainSnapshotListAllChildren.  Drivers keep
one `SnapshotTree` per domain; a driver whose snapshots outlive the daemon
persists each one as DIR/NAME.xml (`save_sync`, `load_sync`, blocking: call
them through trio.to_thread), libvirt's snapshot/DOMAIN/NAME.xml layout.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pyvirtd.driver.api import Dom, Snap
from pyvirtd.errors import VirError, check_flags
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import snapshot as snapxml
from pyvirtd.xml.snapshot import SnapshotDef

log = logging.getLogger(__name__)

# virDomainSnapshotCreateFlags
CREATE_REDEFINE, CREATE_CURRENT, CREATE_NO_METADATA, CREATE_HALT = 1, 2, 4, 8
CREATE_DISK_ONLY, CREATE_REUSE_EXT, CREATE_QUIESCE, CREATE_ATOMIC = 16, 32, 64, 128
CREATE_LIVE, CREATE_VALIDATE = 256, 512
# virDomainSnapshotListFlags (ROOTS and DESCENDANTS share a bit)
LIST_ROOTS = LIST_DESCENDANTS = 1
LIST_METADATA, LIST_LEAVES, LIST_NO_LEAVES, LIST_NO_METADATA = 2, 4, 8, 16
LIST_INACTIVE, LIST_ACTIVE, LIST_DISK_ONLY, LIST_INTERNAL, LIST_EXTERNAL = 32, 64, 128, 256, 512
LIST_TOPOLOGICAL = 1024
# virDomainSnapshotDeleteFlags
DELETE_CHILDREN, DELETE_METADATA_ONLY, DELETE_CHILDREN_ONLY = 1, 2, 4
# virDomainSnapshotRevertFlags
REVERT_RUNNING, REVERT_PAUSED, REVERT_FORCE = 1, 2, 4
# virDomainSnapshotXMLFlags
XML_SECURE = 1


# lookups fail in the driver's error domain (libvirt's test driver: VIR_FROM_TEST)
_FROM = P.VIR_FROM_DOMAIN_SNAPSHOT


class SnapshotTree:
    """The snapshots of one domain, by name (creation order kept)."""

    def __init__(self) -> None:
        self.snaps: dict[str, SnapshotDef] = {}
        self.current: str | None = None

    def __len__(self) -> int:
        return len(self.snaps)

    def __contains__(self, name: str) -> bool:
        return name in self.snaps

    # -- lookups ------------------------------------------------------------
    def get(self, name: str, *, error_domain: int = _FROM) -> SnapshotDef:
        snap = self.snaps.get(name)
        if snap is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           f"no domain snapshot with matching name '{name}'",
                           domain=error_domain)
        return snap

    def current_snapshot(self, *, error_domain: int = _FROM) -> SnapshotDef:
        if self.current is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           "the domain does not have a current snapshot", domain=error_domain)
        return self.snaps[self.current]

    def parent_of(self, name: str, *, error_domain: int = _FROM) -> SnapshotDef:
        snap = self.get(name, error_domain=error_domain)
        if snap.parent is None:
            raise VirError(P.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                           f"snapshot '{snap.name}' does not have a parent",
                           domain=error_domain)
        return self.snaps[snap.parent]

    # -- changes ------------------------------------------------------------
    def check_new(self, name: str) -> None:
        if name in self.snaps:
            raise VirError(P.VIR_ERR_OPERATION_FAILED, f"domain moment {name} already exists",
                           domain=P.VIR_FROM_DOMAIN_SNAPSHOT)

    def add(self, snap: SnapshotDef) -> None:
        """Insert a new snapshot as the current one (its parent was the current)."""
        self.check_new(snap.name)
        self.snaps[snap.name] = snap
        self.current = snap.name

    def plan_delete(self, name: str, flags: int) -> list[str]:
        """The names a delete with ``flags`` removes (children before their parents)."""
        snap = self.get(name)
        doomed = []
        if flags & (DELETE_CHILDREN | DELETE_CHILDREN_ONLY):
            doomed = [d.name for d in reversed(self.descendants(snap.name, True))]
        if not flags & DELETE_CHILDREN_ONLY:
            doomed.append(snap.name)
        return doomed

    def delete(self, name: str, flags: int) -> list[str]:
        """Remove the planned names; children of a removed snapshot move up to its
        parent; the current snapshot moves up too.  Returns the removed names."""
        snap = self.get(name)
        doomed = self.plan_delete(name, flags)
        if not flags & DELETE_CHILDREN_ONLY:
            for child in self.snaps.values():
                if child.parent == snap.name:
                    child.parent = snap.parent
        for gone in doomed:
            del self.snaps[gone]
        if self.current in doomed:
            self.current = snap.parent if snap.name in doomed else snap.name
        return doomed

    def clear(self) -> None:
        self.snaps.clear()
        self.current = None

    # -- listings -----------------------------------------------------------
    def has_children(self, name: str) -> bool:
        return any(c.parent == name for c in self.snaps.values())

    def descendants(self, name: str, recursive: bool) -> list[SnapshotDef]:
        out = []
        for s in self.snaps.values():
            if s.parent == name:
                out.append(s)
                if recursive:
                    out += self.descendants(s.name, True)
        return out

    def filter(self, snaps: list[SnapshotDef], flags: int) -> list[SnapshotDef]:
        """libvirt's list filters: each group (leaves, metadata, state, location)
        given in ``flags`` keeps the snapshots that match one of its flags."""
        out = []
        for s in snaps:
            if flags & (LIST_LEAVES | LIST_NO_LEAVES):
                leaf = not self.has_children(s.name)
                if not (flags & LIST_LEAVES and leaf or flags & LIST_NO_LEAVES and not leaf):
                    continue
            if flags & (LIST_METADATA | LIST_NO_METADATA) and not flags & LIST_METADATA:
                continue   # every snapshot listed has metadata
            if flags & (LIST_INACTIVE | LIST_ACTIVE | LIST_DISK_ONLY):
                kind = (LIST_INACTIVE if s.state == "shutoff" else
                        LIST_DISK_ONLY if s.state == "disk-snapshot" else LIST_ACTIVE)
                if not flags & kind:
                    continue
            if flags & (LIST_INTERNAL | LIST_EXTERNAL):
                if not flags & (LIST_EXTERNAL if s.external else LIST_INTERNAL):
                    continue
            out.append(s)
        return out

    def list(self, flags: int) -> list[SnapshotDef]:
        snaps = list(self.snaps.values())
        if flags & LIST_ROOTS:
            snaps = [s for s in snaps if s.parent is None]
        return self.filter(snaps, flags)

    def children(self, name: str, flags: int, *, error_domain: int = _FROM) -> list[SnapshotDef]:
        snap = self.get(name, error_domain=error_domain)
        return self.filter(self.descendants(snap.name, bool(flags & LIST_DESCENDANTS)), flags)

    # -- metadata files (blocking) ------------------------------------------
    def save_sync(self, directory: Path, names: list[str] | None = None) -> None:
        """Write ``names`` (default: all) as DIRECTORY/NAME.xml, atomically."""
        directory.mkdir(parents=True, exist_ok=True)
        for name in self.snaps if names is None else names:
            snap = self.snaps[name]
            write_atomic(name_path(directory, name, ".xml"),
                         snapxml.format(snap, secure=True, current=name == self.current))

    @staticmethod
    def remove_sync(directory: Path, names: list[str]) -> None:
        for name in names:
            name_path(directory, name, ".xml").unlink(missing_ok=True)

    @staticmethod
    def remove_all_sync(directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def load_sync(self, directory: Path) -> None:
        """Read every DIRECTORY/*.xml; a file that cannot be read is logged and skipped."""
        self.clear()
        if not directory.is_dir():
            return
        loaded = []
        for path in directory.glob("*.xml"):
            try:
                snap, current = snapxml.parse_saved(path.read_text())
            except (OSError, VirError) as exc:
                log.warning("ignoring snapshot metadata %s: %s", path, exc)
                continue
            loaded.append(snap)
            if current:
                self.current = snap.name
        for snap in sorted(loaded, key=lambda s: (s.creation_time, s.name)):
            self.snaps[snap.name] = snap


class SnapshotQueries:
    """The read-only snapshot procedures, the same for every driver that keeps a
    `SnapshotTree` in ``dom.snapshots``.  The driver class sets ``snapshot_from``
    (its error domain) and ``snapshot_api`` (libvirt's function name prefix,
    "test" or "qemu", for the unsupported-flags message); ``_dom`` is its lookup."""
    snapshot_from: int
    snapshot_api: str
    _dom: Any

    def _snap(self, ref: Snap) -> tuple[Any, SnapshotDef]:
        dom = self._dom(ref.dom)
        return dom, dom.snapshots.get(ref.name, error_domain=self.snapshot_from)

    @staticmethod
    def _snap_ref(dom: Any, snap: SnapshotDef) -> Any:
        return P.remote_nonnull_domain_snapshot(snap.name, dom.ref())

    def _check(self, flags: int, allowed: int, api: str) -> None:
        check_flags(flags, allowed, f"{self.snapshot_api}{api}", self.snapshot_from)

    # -- listing ----------------------------------------------------------
    def domain_list_all_snapshots(self, ref: Dom, need_results: int, flags: int) -> tuple:
        dom = self._dom(ref)
        snaps = dom.snapshots.list(flags)
        return ([self._snap_ref(dom, s) for s in snaps] if need_results else [], len(snaps))

    def domain_snapshot_num(self, ref: Dom, flags: int) -> int:
        return len(self._dom(ref).snapshots.list(flags))

    def domain_snapshot_list_names(self, ref: Dom, maxnames: int, flags: int) -> list[str]:
        return [s.name for s in self._dom(ref).snapshots.list(flags)][:maxnames]

    def _children(self, ref: Snap, flags: int) -> tuple[Any, list[SnapshotDef]]:
        dom = self._dom(ref.dom)
        return dom, dom.snapshots.children(ref.name, flags, error_domain=self.snapshot_from)

    def domain_snapshot_list_all_children(self, snapshot: Any, need_results: int,
                                          flags: int) -> tuple:
        dom, kids = self._children(snapshot, flags)
        return ([self._snap_ref(dom, s) for s in kids] if need_results else [], len(kids))

    def domain_snapshot_num_children(self, snap: Any, flags: int) -> int:
        return len(self._children(snap, flags)[1])

    def domain_snapshot_list_children_names(self, snap: Any, maxnames: int,
                                            flags: int) -> list[str]:
        return [s.name for s in self._children(snap, flags)[1]][:maxnames]

    # -- single snapshots -------------------------------------------------
    def domain_snapshot_lookup_by_name(self, ref: Dom, name: str, flags: int) -> Any:
        self._check(flags, 0, "DomainSnapshotLookupByName")
        dom, snap = self._snap(P.remote_nonnull_domain_snapshot(name, ref))
        return self._snap_ref(dom, snap)

    def domain_snapshot_get_xml_desc(self, snap: Any, flags: int) -> str:
        self._check(flags, XML_SECURE, "DomainSnapshotGetXMLDesc")
        return snapxml.format(self._snap(snap)[1], secure=bool(flags & XML_SECURE))

    def domain_has_current_snapshot(self, ref: Dom, flags: int) -> int:
        self._check(flags, 0, "DomainHasCurrentSnapshot")
        return int(self._dom(ref).snapshots.current is not None)

    def domain_snapshot_current(self, ref: Dom, flags: int) -> Any:
        self._check(flags, 0, "DomainSnapshotCurrent")
        dom = self._dom(ref)
        return self._snap_ref(dom, dom.snapshots.current_snapshot(error_domain=self.snapshot_from))

    def domain_snapshot_get_parent(self, snap: Any, flags: int) -> Any:
        self._check(flags, 0, "DomainSnapshotGetParent")
        dom = self._dom(snap.dom)
        return self._snap_ref(dom, dom.snapshots.parent_of(snap.name,
                                                           error_domain=self.snapshot_from))

    def domain_snapshot_is_current(self, snap: Any, flags: int) -> int:
        self._check(flags, 0, "DomainSnapshotIsCurrent")
        dom, s = self._snap(snap)
        return int(dom.snapshots.current == s.name)

    def domain_snapshot_has_metadata(self, snap: Any, flags: int) -> int:
        self._check(flags, 0, "DomainSnapshotHasMetadata")
        self._snap(snap)
        return 1
