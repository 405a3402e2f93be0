"""Internal snapshots of QEMU guests: the snapshots live inside the guest's qcow2 disks.

A running (or paused) guest is snapshotted by QEMU itself: the QMP job
``snapshot-save`` writes every writable disk's snapshot and the guest's
memory and device state (vmstate) into the first qcow2 disk;
``snapshot-delete`` removes one.  A revert to such a snapshot starts a new
QEMU with ``-loadvm NAME`` (a running guest is stopped first), as libvirt
9.0 does since -blockdev: its events are stopped, started, then resumed or
suspended, all from-snapshot, and the domain id changes.  A shut-off guest's
disks are handled with ``qemu-img snapshot -c/-a/-d`` (a subprocess, off the
event loop).  Jobs are polled with ``query-jobs`` from trio, as save.py polls
a migration; no thread waits on QEMU.

The snapshot model and tree are the shared ones (pyvirtd/xml/snapshot.py,
pyvirtd/driver/snapshots.py).  Their metadata lives in
state_dir/qemu/snapshot/DOMAIN/NAME.xml (libvirt's
/var/lib/libvirt/qemu/snapshot) and is read back when the daemon starts.

States and events, as libvirt 9.0's QEMU driver (src/qemu/qemu_snapshot.c):

    create, guest running   paused (save) while QEMU writes     suspended/paused
                            -> running (unpaused)               resumed/unpaused
            with --halt     -> shut off (from snapshot)         stopped/from-snapshot
    revert to a snapshot with memory (qemuSnapshotRevertActive):
            guest running or paused: shut off (from snapshot)   stopped/from-snapshot
                            QEMU starts with -loadvm            started/from-snapshot
                            -> running (from snapshot)          resumed/from-snapshot
                            or, snapshot paused or --paused:
                            -> paused (from snapshot)           suspended/from-snapshot
    revert to a shut-off snapshot (qemuSnapshotRevertInactive), guest running:
                            -> shut off (from snapshot)         stopped/from-snapshot
            with --running / --paused: a fresh boot             started/from-snapshot
                            (--paused: paused (user))           suspended/from-snapshot

Disk-only external snapshots (new qcow2 overlays) are extsnap.py's; external
snapshots with memory, and reverting to or deleting the data of external
snapshots, are refused as unsupported.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver import snapshots as st
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import snapshot as snapxml
from pyvirtd.xml.snapshot import SnapshotDef, SnapshotDisk

from . import extsnap, jobs, volumes
from .driver import QemuDriverState
from .guest import QemuDomain

if TYPE_CHECKING:
    from .monitor import Monitor

FROM = P.VIR_FROM_QEMU
QEMU_IMG = "qemu-img"
# query-jobs polling: a tiny guest's snapshot takes a few ms, a big one seconds
POLL_FIRST, POLL_MAX = 0.01, 0.2
_job_ids = itertools.count(1)


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=FROM)


def _unsupported(what: str) -> VirError:
    return _err(P.VIR_ERR_OPERATION_UNSUPPORTED, f"{what} are not supported by pyvirtd yet")


def load_snapshots(drv: QemuDriverState) -> None:
    """At daemon start: every guest's snapshot metadata (blocking)."""
    for dom in list(drv.domains.values()):
        dom.snapshots.load_sync(drv.store.snapshot_dir(dom.name))


async def _persist(drv: QemuDriverState, dom: QemuDomain,
                   removed: tuple[str, ...] | list[str] = ()) -> None:
    """Rewrite the domain's metadata files (few per guest: all, so that parent and
    current markers stay right) and remove those of ``removed``."""
    directory = drv.store.snapshot_dir(dom.name)

    def write() -> None:
        dom.snapshots.remove_sync(directory, list(removed))
        if len(dom.snapshots):
            dom.snapshots.save_sync(directory)

    await trio.to_thread.run_sync(write)


async def remove_metadata(drv: QemuDriverState, dom: QemuDomain) -> None:
    """undefine --snapshots-metadata: forget them (the qcow2 disks keep theirs)."""
    dom.snapshots.clear()
    await trio.to_thread.run_sync(st.SnapshotTree.remove_all_sync,
                                  drv.store.snapshot_dir(dom.name))


# ------------------------------------------------------------------- disks
@dataclass
class _Disk:
    target: str
    path: str
    format: str
    node: str | None = None     # the format node, while QEMU runs
    alias: str | None = None


async def _disks(drv: QemuDriverState, dom: QemuDomain) -> list[_Disk]:
    """The writable disks of the guest, with their host paths and formats."""
    out = []
    for index, disk in enumerate(d for d in devmod.parse_devices(dom.definition)
                                 if isinstance(d, devmod.Disk)):
        if disk.device != "disk" or disk.readonly:
            continue
        path, fmt = disk.path, disk.format
        if disk.type == "volume":
            if dom.active:
                path = dom.volume_paths.get(disk.target)
            else:
                src = await volumes.resolve_disk(drv, disk)
                path, fmt = src.path, fmt or src.format
        if path is None:
            continue
        out.append(_Disk(disk.target, path, fmt or "raw", f"libvirt-{index + 1}-format",
                         disk.alias))
    if dom.active and dom.monitor is not None and out:
        await _find_nodes(dom.monitor, out)
    return out


async def _find_nodes(mon: "Monitor", disks: list[_Disk]) -> None:
    """The format node of each disk as QEMU reports it (a hot-plugged disk's is not
    the one command.py names at start); by the device's alias, as stats.py finds it."""
    for entry in await mon.query_block():
        qdev = entry.get("qdev") or ""
        node = (entry.get("inserted") or {}).get("node-name")
        for d in disks:
            if node and d.alias and (qdev.endswith(f"/{d.alias}") or f"/{d.alias}/" in qdev):
                d.node = node


def _check_internal(disks: list[_Disk]) -> None:
    for d in disks:
        if d.format != "qcow2":
            raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, f"internal snapshot for disk {d.target} "
                       f"unsupported for storage type {d.format}")


def _requested(req: SnapshotDef, disks: list[_Disk], active: bool) -> list[_Disk]:
    """The disks the client's XML asks for (all by default); external ones refused."""
    if req.memory == "external" or any(d.snapshot == "external" for d in req.disks):
        raise _unsupported("external snapshots")
    if req.memory == "internal" and not active:
        raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED,
                   "memory state cannot be saved with offline or disk-only snapshot")
    targets = {d.target for d in disks}
    skip = set()
    for d in req.disks:
        if d.name not in targets:
            raise _err(P.VIR_ERR_INVALID_ARG, f"no disk named '{d.name}'")
        if d.snapshot == "no":
            skip.add(d.name)
    return [d for d in disks if d.target not in skip]


async def _qemu_img(*args: str) -> None:
    """Run ``qemu-img snapshot ARGS``; libvirt's wording when it fails."""
    argv = [QEMU_IMG, "snapshot", *args]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"qemu-img snapshot {args[0]} failed: {detail}")


async def _run_job(mon: "Monitor", command: str, arguments: dict) -> None:
    """Start a QMP job and wait until it concluded; dismiss it; its error as ours."""
    job_id = f"pyvirtd-snapshot-{next(_job_ids)}"
    await mon.execute(command, {"job-id": job_id, **arguments})
    delay = POLL_FIRST
    try:
        while True:
            jobs = await mon.execute("query-jobs")
            job = next((j for j in jobs if j.get("id") == job_id), None)
            if job is None:
                raise _err(P.VIR_ERR_OPERATION_FAILED, f"QEMU lost the job '{job_id}'")
            if job.get("status") == "concluded":
                error = job.get("error")
                break
            await trio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await mon.execute("job-cancel", {"id": job_id})
            except VirError:
                pass
        raise
    await mon.execute("job-dismiss", {"id": job_id})
    if error:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"{command} job failed: {error}")


async def _pause(drv: QemuDriverState, dom: QemuDomain, mon: "Monitor", reason: int,
                 detail: int) -> bool:
    """Pause a running guest ourselves (QEMU would, but unannounced); True if it ran."""
    if dom.state != ds.RUNNING:
        return False
    dom.quiet_pause += 1
    try:
        await mon.stop()
    except BaseException:
        dom.quiet_pause -= 1
        raise
    dom.set_state(ds.PAUSED, reason)
    drv.emit(dom, ds.EV_SUSPENDED, detail)
    await drv.save_status(dom)
    return True


async def _resume(drv: QemuDriverState, dom: QemuDomain, mon: "Monitor", reason: int,
                  detail: int) -> None:
    dom.quiet_pause += 1
    try:
        await mon.cont()
    except BaseException:
        dom.quiet_pause -= 1
        raise
    dom.set_state(ds.RUNNING, reason)
    drv.emit(dom, ds.EV_RESUMED, detail)
    await drv.save_status(dom)


def _state_name(dom: QemuDomain) -> str:
    return {ds.RUNNING: "running", ds.PAUSED: "paused"}.get(dom.state, "shutoff")


# ------------------------------------------------------------------ procedures
class SnapshotMixin(st.SnapshotQueries):
    """The snapshot procedures of a qemu:// connection (queries: the shared mixin)."""
    driver: QemuDriverState
    snapshot_from = FROM
    snapshot_api = "qemu"

    async def domain_snapshot_create_xml(self, ref: Any, xml_desc: str, flags: int) -> Any:
        check_flags(flags, st.CREATE_HALT | st.CREATE_ATOMIC | st.CREATE_VALIDATE
                    | st.CREATE_NO_METADATA | st.CREATE_DISK_ONLY | st.CREATE_REUSE_EXT,
                    "qemuDomainSnapshotCreateXML", FROM)
        drv = self.driver
        dom = self._dom(ref)
        req = snapxml.parse(xml_desc, validate_schema=bool(flags & st.CREATE_VALIDATE))
        async with jobs.async_job(drv, dom, jobs.OP.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT,
                                  "remoteDispatchDomainSnapshotCreateXML", "snapshot job"):
            now = int(time.time())
            name = req.name or str(now)
            dom.snapshots.check_new(name)
            all_disks = await _disks(drv, dom)
            if flags & st.CREATE_DISK_ONLY or extsnap.wants_external(req):
                snap = await self._create_external(dom, req, name, now, all_disks, flags)
                return self._snap_ref(dom, snap)
            disks = _requested(req, all_disks, dom.active)
            _check_internal(disks)
            snap = SnapshotDef(
                name=name, description=req.description, state=_state_name(dom),
                creation_time=now, parent=dom.snapshots.current,
                memory="internal" if dom.active else "no",
                disks=[SnapshotDisk(d.target, "internal" if d in disks else "no")
                       for d in all_disks],
                domain=dom.definition.copy())
            if dom.active:
                await self._create_live(dom, name, disks, flags)
            else:
                for d in disks:
                    await _qemu_img("-c", name, d.path)
            if not flags & st.CREATE_NO_METADATA:
                dom.snapshots.add(snap)
                await _persist(drv, dom)
        return self._snap_ref(dom, snap)

    async def _create_external(self, dom: QemuDomain, req: SnapshotDef, name: str, now: int,
                               disks: list[_Disk], flags: int) -> SnapshotDef:
        """A disk-only snapshot: new qcow2 overlays (extsnap.py), then the metadata."""
        if req.memory == "external":
            raise _unsupported("external snapshots with memory")
        domain = dom.definition.copy()
        state = "disk-snapshot" if dom.active else _state_name(dom)
        taken = await extsnap.create(self.driver, dom, req, name, disks, flags,
                                     bool(flags & st.CREATE_REUSE_EXT))
        snap = SnapshotDef(name=name, description=req.description, state=state,
                           creation_time=now, parent=dom.snapshots.current, memory="no",
                           disks=taken, domain=domain)
        if not flags & st.CREATE_NO_METADATA:
            dom.snapshots.add(snap)
            await _persist(self.driver, dom)
        if flags & st.CREATE_HALT and dom.active:
            await self.driver.destroy_domain(dom, reason=ds.SHUTOFF_FROM_SNAPSHOT,
                                             detail=ds.STOPPED_FROM_SNAPSHOT)
        return snap

    async def _create_live(self, dom: QemuDomain, name: str, disks: list[_Disk],
                           flags: int) -> None:
        drv = self.driver
        mon = dom.monitor
        if mon is None:
            raise ds.not_running()
        if not disks:
            raise _err(P.VIR_ERR_OPERATION_INVALID,
                       "a snapshot of a running guest needs a qcow2 disk for its memory")
        paused = await _pause(drv, dom, mon, ds.PAUSED_SAVE, ds.SUSPENDED_PAUSED)
        try:
            await _run_job(mon, "snapshot-save", {
                "tag": name, "vmstate": disks[0].node, "devices": [d.node for d in disks]})
        finally:
            if paused and not flags & st.CREATE_HALT and dom.active and dom.monitor is mon:
                with trio.CancelScope(shield=True):
                    await _resume(drv, dom, mon, ds.RUNNING_UNPAUSED, ds.RESUMED_UNPAUSED)
        if flags & st.CREATE_HALT:
            await drv.destroy_domain(dom, reason=ds.SHUTOFF_FROM_SNAPSHOT,
                                     detail=ds.STOPPED_FROM_SNAPSHOT)

    async def domain_snapshot_delete(self, snap: Any, flags: int) -> None:
        check_flags(flags, st.DELETE_CHILDREN | st.DELETE_METADATA_ONLY | st.DELETE_CHILDREN_ONLY,
                    "qemuDomainSnapshotDelete", FROM)
        drv = self.driver
        dom, s = self._snap(snap)
        async with dom.lock:
            doomed = dom.snapshots.plan_delete(s.name, flags)
            if not flags & st.DELETE_METADATA_ONLY and any(
                    dom.snapshots.get(n).external for n in doomed):
                raise _unsupported("deletion of external snapshots (use --metadata, then "
                                   "blockcommit)")
            if not flags & st.DELETE_METADATA_ONLY:
                disks = await _disks(drv, dom)
                for name in doomed:
                    await self._delete_data(dom, dom.snapshots.get(name), disks)
            removed = dom.snapshots.delete(s.name, flags)
            await _persist(drv, dom, removed)

    async def _delete_data(self, dom: QemuDomain, snap: SnapshotDef, disks: list[_Disk]) -> None:
        """Remove one snapshot from the disks that hold it (those still attached)."""
        held = {d.name for d in snap.disks if d.snapshot == "internal"}
        mine = [d for d in disks if d.target in held]
        if dom.active and dom.monitor is not None:
            if mine:
                await _run_job(dom.monitor, "snapshot-delete",
                               {"tag": snap.name, "devices": [d.node for d in mine]})
            return
        for d in mine:
            await _qemu_img("-d", snap.name, d.path)

    async def domain_revert_to_snapshot(self, snap: Any, flags: int) -> None:
        check_flags(flags, st.REVERT_RUNNING | st.REVERT_PAUSED | st.REVERT_FORCE,
                    "qemuDomainRevertToSnapshot", FROM)
        if flags & st.REVERT_RUNNING and flags & st.REVERT_PAUSED:
            raise _err(P.VIR_ERR_INVALID_ARG, "Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' and "
                       "'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive")
        drv = self.driver
        dom, s = self._snap(snap)
        if s.external:
            raise _unsupported("reverts to external snapshots")
        async with dom.lock:
            if s.memory == "internal":
                paused = bool(flags & st.REVERT_PAUSED) or (
                    s.state == "paused" and not flags & st.REVERT_RUNNING)
                if dom.active:   # libvirt restarts QEMU for this too
                    await drv.destroy_domain(dom, reason=ds.SHUTOFF_FROM_SNAPSHOT,
                                             detail=ds.STOPPED_FROM_SNAPSHOT)
                await self._revert_start(dom, s, paused)
            else:
                if dom.active:
                    await drv.destroy_domain(dom, reason=ds.SHUTOFF_FROM_SNAPSHOT,
                                             detail=ds.STOPPED_FROM_SNAPSHOT)
                held = {d.name for d in s.disks if d.snapshot == "internal"}
                for d in await _disks(drv, dom):
                    if d.target in held:
                        await _qemu_img("-a", s.name, d.path)
                if flags & (st.REVERT_RUNNING | st.REVERT_PAUSED):
                    await drv.start_domain(dom, paused=bool(flags & st.REVERT_PAUSED),
                                           reverted=True)
            dom.snapshots.current = s.name
            await _persist(drv, dom)

    async def _revert_start(self, dom: QemuDomain, s: SnapshotDef, paused: bool) -> None:
        """Start the shut-off guest straight into the snapshot (QEMU's -loadvm)."""
        drv = self.driver
        await drv.start_domain(dom, paused=True, from_snapshot=s.name)
        if paused:
            drv.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_FROM_SNAPSHOT)
            await drv.save_status(dom)
        elif dom.monitor is not None:
            await _resume(drv, dom, dom.monitor, ds.RUNNING_FROM_SNAPSHOT,
                          ds.RESUMED_FROM_SNAPSHOT)
