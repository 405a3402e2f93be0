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
from pyvirtd.driver.api import Dom
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


class SnapshotMixin(st.SnapshotQueries):
    """The snapshot procedures that change something; the queries are the shared ones."""
    snapshot_from = FROM
    snapshot_api = "test"

    def domain_snapshot_create_xml(self, ref: Dom, xml_desc: str, flags: int) -> Any:
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

