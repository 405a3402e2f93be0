"""External disk-only snapshots: each disk gets a new qcow2 overlay on top of its image.

``virsh snapshot-create-as --disk-only [--diskspec vda,file=PATH]``: the
image a disk used until now becomes read-only history, a new qcow2 file whose
backing file is that image takes the guest's writes.  For a running guest the
overlays are created with ``qemu-img create -u`` (unsafe: QEMU holds the
image's write lock, so its size comes from QEMU and the backing is not
opened), added with ``blockdev-add`` (``libvirt-N`` nodes, no backing: it is
attached by the snapshot) and switched to in one QMP ``transaction`` of
``blockdev-snapshot`` actions, so all disks move together or none does.  A
shut-off guest's overlays are created the same way and its definition
points at them.  As libvirt's, the live XML and a persistent guest's next
boot both use the overlays; the chain shows as ``<backingStore>``, and
``blockcommit --active --pivot`` (blockjobs.py) merges it back into the base.

An overlay's default name is the disk's file name with its extension
replaced by the snapshot's name (libvirt's rule: ``disk.qcow2`` ->
``disk.SNAP``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.snapshot import SnapshotDef, SnapshotDisk

from . import blockjobs as bj
from . import diskchain as dc

if TYPE_CHECKING:
    from .guest import QemuDomain, QemuState

FROM = P.VIR_FROM_QEMU


def _err(code: int, message: str, domain: int = FROM) -> VirError:
    return VirError(code, message, domain=domain)


@dataclass
class Overlay:
    target: str
    base: str           # the image the disk used so far
    base_format: str
    path: str           # the new overlay
    reuse: bool
    size: int = 0
    nodes: tuple[str, str] | None = None


def wants_external(req: SnapshotDef) -> bool:
    return any(d.snapshot == "external" for d in req.disks)


def default_name(path: str, snap: str) -> str:
    """libvirt's overlay name: the extension of the disk's file replaced by the snapshot's."""
    head, tail = os.path.split(path)
    stem, dot, _ = tail.rpartition(".")
    return os.path.join(head, f"{stem}.{snap}" if dot and stem else f"{tail}.{snap}")


def _plan(req: SnapshotDef, disks: list[Any], name: str, reuse: bool) -> list[Overlay]:
    """The overlays the request asks for (every writable disk unless snapshot='no')."""
    by_name = {d.target: d for d in disks}
    asked = {d.name: d for d in req.disks}
    for d in req.disks:
        if d.name not in by_name:
            raise _err(P.VIR_ERR_INVALID_ARG, f"no disk named '{d.name}'")
        if d.snapshot == "internal":
            raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, "mixing internal and external targets "
                       "for a snapshot is not yet supported")
    out = []
    for d in disks:
        spec = asked.get(d.target)
        if spec is not None and spec.snapshot == "no":
            continue
        if spec is not None and spec.driver_type not in (None, "qcow2"):
            raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, f"external snapshot format for disk "
                       f"{d.target} is unsupported: {spec.driver_type}")
        path = spec.source if spec is not None and spec.source else default_name(d.path, name)
        out.append(Overlay(d.target, d.path, d.format, path, reuse))
    if not out:
        raise _err(P.VIR_ERR_INVALID_ARG, "no disks selected for snapshot")
    return out


def _check_files(overlays: list[Overlay]) -> None:
    """What the overlay files may be (blocking stat), as qemuSnapshotPrepareDiskExternal."""
    for o in overlays:
        try:
            st = os.stat(o.path)
        except FileNotFoundError:
            if o.reuse:
                raise _err(P.VIR_ERR_SYSTEM_ERROR, f"missing existing file for disk "
                           f"{o.target}: {o.path}: No such file or directory") from None
            continue
        import stat as _stat
        if not o.reuse and not _stat.S_ISBLK(st.st_mode):
            raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, f"external snapshot file for disk "
                       f"{o.target} already exists and is not a block device: {o.path}")


async def _image_size(path: str) -> int:
    res = await trio.run_process(["qemu-img", "info", "-U", "--output=json", path],
                                 capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"cannot read '{path}': "
                   f"{res.stderr.decode(errors='replace').strip()}")
    return int(json.loads(res.stdout).get("virtual-size", 0))


async def _create(o: Overlay) -> None:
    res = await trio.run_process(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", o.base, "-F", o.base_format,
         o.path, str(o.size)], capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"unable to create '{o.path}': "
                   f"{res.stderr.decode(errors='replace').strip()}")


def _unlink_all(paths: list[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


async def create(state: QemuState, dom: QemuDomain, req: SnapshotDef, name: str,
                 disks: list[Any], flags: int, reuse: bool) -> list[SnapshotDisk]:
    """Take the overlays (caller holds the job); the snapshot's <disks> in return."""
    if req.memory not in ("", "no"):
        raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED,
                   "memory state cannot be saved with offline or disk-only snapshot")
    overlays = _plan(req, disks, name, reuse)
    for o in overlays:
        if o.target in bj.block_jobs(dom):
            raise _err(P.VIR_ERR_BLOCK_COPY_ACTIVE,
                       f"disk '{o.target}' already in active block job")
    await trio.to_thread.run_sync(_check_files, overlays)
    created: list[str] = []
    try:
        if dom.active and dom.monitor is not None:
            await _live(state, dom, overlays, created)
        else:
            for o in overlays:
                o.size = await _image_size(o.base)
                if not o.reuse:
                    await _create(o)
                    created.append(o.path)
            for o in overlays:
                dc.switch_source(dc.find_disk(dom, o.target), "file", o.path, "qcow2")
            await state.save_config(dom.definition)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink_all, created)
        raise
    chosen = {o.target: o for o in overlays}
    return [SnapshotDisk(d.target, "external", chosen[d.target].path, "file", "qcow2")
            if d.target in chosen else SnapshotDisk(d.target, "no") for d in disks]


async def _live(state: QemuState, dom: QemuDomain, overlays: list[Overlay],
                created: list[str]) -> None:
    mon = dom.monitor
    assert mon is not None
    actions = []
    added: list[str] = []
    try:
        for o in overlays:
            el = dc.find_disk(dom, o.target)
            entry = await dc.block_entry(mon, dc.alias_of(el))
            o.size = int(((entry.get("inserted") or {}).get("image") or {})
                         .get("virtual-size", 0))
            if not o.reuse:
                await _create(o)
                created.append(o.path)
            index = await dc.next_index(dom, mon)
            storage, fnode = f"libvirt-{index}-storage", f"libvirt-{index}-format"
            await mon.blockdev_add({"driver": "file", "filename": o.path, "node-name": storage,
                                    "auto-read-only": True, "discard": "unmap"})
            added.insert(0, storage)
            await mon.blockdev_add({"driver": "qcow2", "node-name": fnode, "file": storage,
                                    "backing": None})
            added.insert(0, fnode)
            actions.append({"type": "blockdev-snapshot",
                            "data": {"node": await dc.top_node(mon, el), "overlay": fnode}})
        await mon.execute("transaction", {"actions": actions})
    except BaseException:
        with trio.CancelScope(shield=True):
            await dc.delete_nodes(mon, added)
        raise
    for o in overlays:
        el = dc.find_disk(dom, o.target)
        dc.switch_source(el, "file", o.path, "qcow2")
        dc.rewrite_config(dom, o.target, "file", o.path, "qcow2")
        await dc.refresh_chain(dom, el)
    if dom.new_def is not None:
        await state.save_config(dom.new_def)
    await state.save_status(dom)
