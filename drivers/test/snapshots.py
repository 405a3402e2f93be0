"""Test driver: domain snapshots (metadata only: nothing is really saved).

A snapshot records the domain definition and run state at creation; reverting
puts both back.  The model (pyvirtd/xml/snapshot.py) and the tree with its
filters (pyvirtd/driver/snapshots.py) are the shared ones; this module adds
what the test driver does with them.
"""

from __future__ import annotations

import time
from typing import Any

from pyvirtd.driver import snapshots as st
from pyvirtd.errors import check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import snapshot as snapxml
from pyvirtd.xml.snapshot import SnapshotDef, SnapshotDisk

from .domains import (EV_SUSPENDED, PAUSED, PAUSED_FROM_SNAPSHOT,
                      RUNNING, RUNNING_FROM_SNAPSHOT, SHUTOFF, SHUTOFF_FROM_SNAPSHOT,
                      STARTED_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT, SUSPENDED_FROM_SNAPSHOT,
                      Domain)

_STATE_NAMES = {RUNNING: "running", PAUSED: "paused", SHUTOFF: "shutoff"}
_STATES = {v: k for k, v in _STATE_NAMES.items()}
FROM = P.VIR_FROM_TEST


def _new_snapshot(dom: Domain, name: str, desc: str | None, now: int) -> SnapshotDef:
    """What libvirt's test driver records: every disk internal, memory unless shut off."""
    disks = [SnapshotDisk(d.find("target").get("dev") if d.find("target") is not None else "")
             for d in dom.definition.devices_of("disk") if d.get("device", "disk") == "disk"]
    return SnapshotDef(name=name, description=desc,
                       state=_STATE_NAMES.get(dom.state, "nostate"), creation_time=now,
                       parent=dom.snapshots.current,
                       memory="no" if dom.state == SHUTOFF else "internal",
                       disks=disks, domain=dom.definition.copy())


class SnapshotMixin:
    """Methods are named after the snapshot procedures; the domain ones live in domains.py."""

    def _snap(self, ref: Any) -> tuple[Domain, SnapshotDef]:
        dom = self._dom(ref.dom)
        return dom, dom.snapshots.get(ref.name, error_domain=FROM)

    @staticmethod
    def _snap_ref(dom: Domain, snap: SnapshotDef) -> Any:
        return P.remote_nonnull_domain_snapshot(snap.name, dom.ref())

    def domain_snapshot_create_xml(self, ref: Any, xml_desc: str, flags: int) -> Any:
        check_flags(flags, st.CREATE_REDEFINE | st.CREATE_CURRENT | st.CREATE_NO_METADATA
                    | st.CREATE_HALT | st.CREATE_ATOMIC | st.CREATE_VALIDATE,
                    "testDomainSnapshotCreateXML", FROM)
        dom = self._dom(ref)
        req = snapxml.parse(xml_desc, validate_schema=bool(flags & st.CREATE_VALIDATE))
        now = int(time.time())
        snap = _new_snapshot(dom, req.name or str(now), req.description, now)
        dom.snapshots.check_new(snap.name)
        if flags & st.CREATE_NO_METADATA:
            return self._snap_ref(dom, snap)
        dom.snapshots.add(snap)
        if flags & st.CREATE_HALT and dom.active:
            self._stop(dom, SHUTOFF_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT)
        return self._snap_ref(dom, snap)

    # -- listing ----------------------------------------------------------

    def domain_list_all_snapshots(self, ref: Any, need_results: int, flags: int) -> tuple:
        dom = self._dom(ref)
        snaps = dom.snapshots.list(flags)
        return ([self._snap_ref(dom, s) for s in snaps] if need_results else [], len(snaps))

    def domain_snapshot_num(self, ref: Any, flags: int) -> int:
        return len(self._dom(ref).snapshots.list(flags))

    def domain_snapshot_list_names(self, ref: Any, maxnames: int, flags: int) -> list[str]:
        return [s.name for s in self._dom(ref).snapshots.list(flags)][:maxnames]

    def _children(self, ref: Any, flags: int) -> tuple[Domain, list[SnapshotDef]]:
        dom = self._dom(ref.dom)
        return dom, dom.snapshots.children(ref.name, flags, error_domain=FROM)

    def domain_snapshot_list_all_children(self, snapshot: Any, need_results: int, flags: int) -> tuple:
        dom, kids = self._children(snapshot, flags)
        return ([self._snap_ref(dom, s) for s in kids] if need_results else [], len(kids))

    def domain_snapshot_num_children(self, snap: Any, flags: int) -> int:
        return len(self._children(snap, flags)[1])

    def domain_snapshot_list_children_names(self, snap: Any, maxnames: int, flags: int) -> list[str]:
        return [s.name for s in self._children(snap, flags)[1]][:maxnames]

    # -- single snapshots -------------------------------------------------

    def domain_snapshot_lookup_by_name(self, ref: Any, name: str, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotLookupByName", FROM)
        dom, snap = self._snap(P.remote_nonnull_domain_snapshot(name, ref))
        return self._snap_ref(dom, snap)

    def domain_snapshot_get_xml_desc(self, snap: Any, flags: int) -> str:
        check_flags(flags, st.XML_SECURE, "testDomainSnapshotGetXMLDesc", FROM)
        return snapxml.format(self._snap(snap)[1], secure=bool(flags & st.XML_SECURE))

    def domain_has_current_snapshot(self, ref: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainHasCurrentSnapshot", FROM)
        return int(self._dom(ref).snapshots.current is not None)

    def domain_snapshot_current(self, ref: Any, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotCurrent", FROM)
        dom = self._dom(ref)
        return self._snap_ref(dom, dom.snapshots.current_snapshot(error_domain=FROM))

    def domain_snapshot_get_parent(self, snap: Any, flags: int) -> Any:
        check_flags(flags, 0, "testDomainSnapshotGetParent", FROM)
        dom = self._dom(snap.dom)
        return self._snap_ref(dom, dom.snapshots.parent_of(snap.name, error_domain=FROM))

    def domain_snapshot_is_current(self, snap: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainSnapshotIsCurrent", FROM)
        dom, s = self._snap(snap)
        return int(dom.snapshots.current == s.name)

    def domain_snapshot_has_metadata(self, snap: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainSnapshotHasMetadata", FROM)
        self._snap(snap)
        return 1

    def domain_snapshot_delete(self, snap: Any, flags: int) -> None:
        check_flags(flags, st.DELETE_CHILDREN | st.DELETE_METADATA_ONLY | st.DELETE_CHILDREN_ONLY,
                    "testDomainSnapshotDelete", FROM)
        dom, s = self._snap(snap)
        dom.snapshots.delete(s.name, flags)

    def domain_revert_to_snapshot(self, snap: Any, flags: int) -> None:
        check_flags(flags, st.REVERT_RUNNING | st.REVERT_PAUSED | st.REVERT_FORCE,
                    "testDomainRevertToSnapshot", FROM)
        dom, s = self._snap(snap)
        target = _STATES.get(s.state, SHUTOFF)
        if flags & st.REVERT_RUNNING:
            target = RUNNING
        elif flags & st.REVERT_PAUSED:
            target = PAUSED
        dom.definition = s.domain.copy()
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
        dom.snapshots.current = s.name

