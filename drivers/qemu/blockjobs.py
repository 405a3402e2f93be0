"""Block jobs of running QEMU guests: copy, commit, pull, resize.

The jobs are QEMU's, started over QMP on the disks' block nodes
(diskchain.py) and followed through its events (guest_events.py hands
BLOCK_JOB_* here):

  virDomainBlockCopy / BlockRebase(COPY)   blockdev-add of the destination,
                                           then blockdev-mirror (sync full, or
                                           top with --shallow)
  virDomainBlockCommit                     block-commit (active layer: --active,
                                           a mirror that must be pivoted)
  virDomainBlockPull / BlockRebase         block-stream
  virDomainBlockJobAbort                   block-job-cancel, or with --pivot
                                           job-complete
  GetBlockJobInfo / BlockJobSetSpeed       query-block-jobs / block-job-set-speed
  virDomainBlockResize                     block_resize

As libvirt's, a block job is not a domain job: the job lock is held only
while one starts or ends (jobs.locked), and one disk has at most one job
("disk 'vda' already in active block job").  A copy or active commit becomes
READY once the destination caught up; from then the guest's writes go to
both, until --pivot switches the disk to the destination (or base) or an
abort leaves it where it was (a ready copy then ends as a consistent image:
virsh blockcopy --finish).  Each state change is reported as libvirt does,
twice: BLOCK_JOB (the disk's source path) and BLOCK_JOB_2 (its target name),
and the live XML shows the ``<mirror>`` element during a copy or active
commit (``ready='yes'`` once it caught up).

Not done: block jobs do not survive a daemon restart (their state is in
memory; QEMU's job goes on, unfollowed), --keep-relative, --delete,
copies to network destinations, SetBlockThreshold.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from lxml import etree

from pyvirtd.driver import domains as ds
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import diskchain as dc
from . import jobs

if TYPE_CHECKING:
    from .guest import QemuDomain, QemuState
    from .monitor import Monitor

log = logging.getLogger(__name__)

FROM = P.VIR_FROM_QEMU
T = P.DomainBlockJobType
PULL, COPY, COMMIT, ACTIVE_COMMIT = (T.VIR_DOMAIN_BLOCK_JOB_TYPE_PULL, T.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
                                     T.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT,
                                     T.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT)
# virConnectDomainEventBlockJobStatus
_J = P.ConnectDomainEventBlockJobStatus
COMPLETED, FAILED, CANCELED, READY = (_J.VIR_DOMAIN_BLOCK_JOB_COMPLETED, _J.VIR_DOMAIN_BLOCK_JOB_FAILED,
                                      _J.VIR_DOMAIN_BLOCK_JOB_CANCELED, _J.VIR_DOMAIN_BLOCK_JOB_READY)
JOB_NAMES = {PULL: "pull", COPY: "copy", COMMIT: "commit", ACTIVE_COMMIT: "active-commit"}

_CF = P.DomainBlockCopyFlags
COPY_SHALLOW, COPY_REUSE_EXT, COPY_TRANSIENT = (_CF.VIR_DOMAIN_BLOCK_COPY_SHALLOW,
                                                _CF.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT,
                                                _CF.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB)
_RF = P.DomainBlockRebaseFlags
REBASE_SHALLOW, REBASE_REUSE_EXT, REBASE_COPY_RAW, REBASE_COPY, REBASE_BYTES = (
    _RF.VIR_DOMAIN_BLOCK_REBASE_SHALLOW, _RF.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT,
    _RF.VIR_DOMAIN_BLOCK_REBASE_COPY_RAW, _RF.VIR_DOMAIN_BLOCK_REBASE_COPY,
    _RF.VIR_DOMAIN_BLOCK_REBASE_BANDWIDTH_BYTES)
_KF = P.DomainBlockCommitFlags
COMMIT_SHALLOW, COMMIT_ACTIVE, COMMIT_BYTES = (_KF.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW,
                                               _KF.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
                                               _KF.VIR_DOMAIN_BLOCK_COMMIT_BANDWIDTH_BYTES)
PULL_BYTES = P.DomainBlockPullFlags.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
ABORT_ASYNC = P.DomainBlockJobAbortFlags.VIR_DOMAIN_BLOCK_JOB_ABORT_ASYNC
ABORT_PIVOT = P.DomainBlockJobAbortFlags.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
INFO_BYTES = P.DomainBlockJobInfoFlags.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES
SPEED_BYTES = P.DomainBlockJobSetSpeedFlags.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES
RESIZE_BYTES = P.DomainBlockResizeFlags.VIR_DOMAIN_BLOCK_RESIZE_BYTES

QMP_EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
MIB = 1 << 20
# bandwidths are MiB/s on the API unless *_BYTES; QEMU takes bytes/s (an int64)
MAX_BANDWIDTH_MIB = ((1 << 63) - 1) // MIB


def _err(code: int, message: str, domain: int = FROM) -> VirError:
    return VirError(code, message, domain=domain)


@dataclass
class BlockJob:
    """One block job of a disk (libvirt's qemuBlockJobData)."""
    kind: int
    target: str
    job_id: str
    dest_path: str | None = None        # copy: the destination
    dest_format: str | None = None
    dest_type: str = "file"
    dest_index: int | None = None
    dest_nodes: list[str] = field(default_factory=list)   # ours, removed unless pivoted
    base_path: str | None = None        # active commit: the image the disk pivots to
    base_format: str | None = None
    transient: bool = False
    old_top: str = ""                   # the disk's top node when the job started
    ready: bool = False
    pivoting: bool = False
    aborting: bool = False
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def mirrors(self) -> bool:
        return self.kind in (COPY, ACTIVE_COMMIT)


def block_jobs(dom: QemuDomain) -> dict[str, BlockJob]:
    """The guest's block jobs by disk target (while it runs)."""
    return dom.job_slots.setdefault("block", {})


def _active(dom: QemuDomain) -> Monitor:
    if not dom.active or dom.monitor is None:
        raise ds.not_running()
    return dom.monitor


def _check_idle(dom: QemuDomain, target: str) -> None:
    if target in block_jobs(dom):
        raise _err(P.VIR_ERR_BLOCK_COPY_ACTIVE, f"disk '{target}' already in active block job")


def _set_mirror(el: Any, job: BlockJob) -> None:
    """The <mirror> element of a copy or active commit (before <target>)."""
    for old in el.findall("mirror"):
        el.remove(old)
    m = etree.Element("mirror")
    m.set("type", job.dest_type if job.kind == COPY else "file")
    path = job.dest_path if job.kind == COPY else job.base_path
    fmt = job.dest_format if job.kind == COPY else job.base_format
    if job.kind == COPY and job.dest_type == "file":
        m.set("file", path or "")
        m.set("format", fmt or "raw")
    m.set("job", JOB_NAMES[job.kind])
    if job.pivoting:
        m.set("ready", "pivot")
    elif job.aborting:
        m.set("ready", "abort")
    elif job.ready:
        m.set("ready", "yes")
    etree.SubElement(m, "format").set("type", fmt or "raw")
    m.append(dc.source_element(job.dest_type, path or "", job.dest_index))
    etree.SubElement(m, "backingStore")
    tgt = el.find("target")
    if tgt is not None:
        tgt.addprevious(m)
    else:
        el.append(m)


# ------------------------------------------------------------------ events
def _emit(state: QemuState, dom: QemuDomain, el: Any, kind: int, status: int) -> None:
    """BLOCK_JOB (by source path) and BLOCK_JOB_2 (by target), as libvirt sends both."""
    state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_BLOCK_JOB, dom.ref(), dc.path_of(dom, el),
                      kind, status)
    state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, dom.ref(), dc.target_of(el),
                      kind, status)


async def on_event(state: QemuState, dom: QemuDomain, name: str, data: dict) -> None:
    """A BLOCK_JOB_* event of QEMU (guest_events.handle): follow the job it names."""
    device = data.get("device")
    job = next((j for j in block_jobs(dom).values() if j.job_id == device), None)
    if job is None:
        return
    try:
        el = dc.find_disk(dom, job.target)
    except VirError:
        block_jobs(dom).pop(job.target, None)
        job.done.set()
        return
    if name == "BLOCK_JOB_READY":
        job.ready = True
        if not job.pivoting and not job.aborting:
            _set_mirror(el, job)
        _emit(state, dom, el, job.kind, READY)
        await state.save_status(dom)
        return
    failed = bool(data.get("error")) and not job.aborting
    cancelled = name == "BLOCK_JOB_CANCELLED" or job.aborting
    await _concluded(state, dom, el, job, failed=failed, cancelled=cancelled and not failed)


async def _concluded(state: QemuState, dom: QemuDomain, el: Any, job: BlockJob, *,
                     failed: bool, cancelled: bool) -> None:
    """The job ended in QEMU: the disk's XML follows, our nodes go, the events go out."""
    mon = dom.monitor
    block_jobs(dom).pop(job.target, None)
    try:
        dc.drop_mirror(el)
        if failed or cancelled or (job.mirrors and not job.pivoting):
            await dc.delete_nodes(mon, job.dest_nodes)
            status = FAILED if failed else CANCELED
        else:
            old_nodes = dc.own_nodes(job.old_top) if job.mirrors else []
            if job.kind == COPY:
                dc.switch_source(el, job.dest_type, job.dest_path or "", job.dest_format or "raw")
                if not job.transient:
                    dc.rewrite_config(dom, job.target, job.dest_type, job.dest_path or "",
                                   job.dest_format or "raw")
            elif job.kind == ACTIVE_COMMIT:
                dc.switch_source(el, "file", job.base_path or "", job.base_format or "raw")
                dc.rewrite_config(dom, job.target, "file", job.base_path or "",
                               job.base_format or "raw")
            await dc.delete_nodes(mon, old_nodes)
            if job.mirrors and dom.new_def is not None and not job.transient:
                await state.save_config(dom.new_def)
            status = COMPLETED
        await dc.refresh_chain(dom, el)
        _emit(state, dom, el, job.kind, status)
        await state.save_status(dom)
    finally:
        job.done.set()


# ------------------------------------------------------------------ starting jobs
async def _start(state: QemuState, dom: QemuDomain, el: Any, job: BlockJob, command: str,
                 args: dict) -> None:
    mon = _active(dom)
    job.old_top = args["device"]
    block_jobs(dom)[job.target] = job
    try:
        await mon.execute(command, {"job-id": job.job_id, **args})
    except BaseException:
        block_jobs(dom).pop(job.target, None)
        with trio.CancelScope(shield=True):
            await dc.delete_nodes(mon, job.dest_nodes)
        raise
    if job.mirrors:
        _set_mirror(el, job)
    await state.save_status(dom)


def _bandwidth(value: int, in_bytes: bool) -> int:
    """An API bandwidth (MiB/s, or bytes/s with *_BANDWIDTH_BYTES) as QEMU's bytes/s."""
    if in_bytes:
        return value
    if value > MAX_BANDWIDTH_MIB:
        raise _err(P.VIR_ERR_OVERFLOW,
                   f"bandwidth must be less than {MAX_BANDWIDTH_MIB}")
    return value * MIB


def _parse_dest(destxml: str) -> tuple[str, str, str | None]:
    """(type, path, format) of virDomainBlockCopy's <disk> destination."""
    try:
        root = etree.fromstring(destxml.encode())
    except etree.XMLSyntaxError as exc:
        raise _err(P.VIR_ERR_XML_DETAIL, f"(domain_definition):1: {exc}", P.VIR_FROM_XML)
    kind = root.get("type", "file")
    if root.tag != "disk" or kind not in ("file", "block"):
        raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                   f"unsupported destination for block copy: disk type '{kind}'")
    src = root.find("source")
    path = src.get("dev" if kind == "block" else "file") if src is not None else None
    if not path:
        raise _err(P.VIR_ERR_XML_ERROR, "missing source for the copy destination",
                   P.VIR_FROM_DOMAIN)
    drv = root.find("driver")
    return kind, path, drv.get("type") if drv is not None else None


async def _probe_format(path: str) -> str:
    """The format of an existing destination (--reuse-external without a format)."""
    res = await trio.run_process(["qemu-img", "info", "-U", "--output=json", path],
                                 capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        return "raw"
    import json
    return json.loads(res.stdout).get("format", "raw")


async def _create_image(path: str, fmt: str, size: int, backing: dict | None) -> None:
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-b", backing["filename"], "-F", backing["format"]]
    argv += [path, str(size)]
    res = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if res.returncode != 0:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"unable to create '{path}': "
                   f"{res.stderr.decode(errors='replace').strip()}")


def _check_dest(target: str, kind: str, path: str, reuse: bool) -> None:
    """qemuDomainBlockCopyValidateMirror: what the destination may be (blocking stat)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if reuse or kind == "block":
            raise _err(P.VIR_ERR_SYSTEM_ERROR, f"missing destination file for disk {target}: "
                       f"{path}: No such file or directory") from None
        return
    import stat as _stat
    if not _stat.S_ISBLK(st.st_mode) and st.st_size and not reuse:
        raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, f"external destination file for disk "
                   f"{target} already exists and is not a block device: {path}")


async def start_copy(state: QemuState, dom: QemuDomain, disk: str, kind: str, path: str,
                     fmt: str | None, bandwidth: int, flags: int) -> None:
    """qemuDomainBlockCopyCommon; COPY_* flags."""
    async with jobs.locked(dom, "remoteDispatchDomainBlockCopy"):
        mon = _active(dom)
        el = dc.find_disk(dom, disk)
        target = dc.target_of(el)
        _check_idle(dom, target)
        entry = await dc.block_entry(mon, dc.alias_of(el))
        images = dc.chain_of(entry)
        if not images:
            raise _err(P.VIR_ERR_OPERATION_INVALID, f"disk '{target}' has no media")
        shallow = bool(flags & COPY_SHALLOW) and len(images) > 1
        reuse = bool(flags & COPY_REUSE_EXT)
        await trio.to_thread.run_sync(_check_dest, target, kind, path, reuse)
        if fmt is None:
            fmt = await _probe_format(path) if reuse else images[0]["format"]
        if shallow and fmt == "raw" and not reuse:
            raise _err(P.VIR_ERR_INVALID_ARG, f"shallow copy of disk '{target}' into a raw "
                       "file is not possible")
        size = int(((entry.get("inserted") or {}).get("image") or {}).get("virtual-size", 0))
        if not reuse:
            await _create_image(path, fmt, size, images[1] if shallow else None)
        index = await dc.next_index(dom, mon)
        storage, fnode = f"libvirt-{index}-storage", f"libvirt-{index}-format"
        job = BlockJob(COPY, target, f"copy-{target}-{await dc.top_node(mon, el)}",
                       dest_path=path, dest_format=fmt, dest_type=kind, dest_index=index,
                       transient=bool(flags & COPY_TRANSIENT))
        await mon.blockdev_add({"driver": "host_device" if kind == "block" else "file",
                                "filename": path, "node-name": storage,
                                "auto-read-only": True, "discard": "unmap"})
        job.dest_nodes.append(storage)
        fmt_node: dict = {"driver": fmt, "node-name": fnode, "file": storage}
        if not shallow and fmt != "raw":
            fmt_node["backing"] = None      # a full copy stands alone
        try:
            await mon.blockdev_add(fmt_node)
        except BaseException:
            with trio.CancelScope(shield=True):
                await dc.delete_nodes(mon, job.dest_nodes)
            raise
        job.dest_nodes.insert(0, fnode)
        args = {"device": await dc.top_node(mon, el), "target": fnode,
                "sync": "top" if shallow else "full"}
        if bandwidth:
            args["speed"] = bandwidth
        await _start(state, dom, el, job, "blockdev-mirror", args)


async def _resolve_image(mon: Monitor, el: Any, images: list[dict], name: str | None,
                         dom: QemuDomain) -> int:
    """Position in the chain (0 = top) of an image named by path or 'vda[N]'."""
    if name is None:
        return -1
    m = dc.INDEXED.match(name)
    indexes = dom.job_slots.get("indexes", {})
    for pos, image in enumerate(images):
        if image["filename"] == name:
            return pos
        if m and m["dev"] == dc.target_of(el) and indexes.get(image["filename"]) == int(m["index"]):
            return pos
    raise _err(P.VIR_ERR_INVALID_ARG, f"could not find image '{name}' in chain for "
               f"'{dc.path_of(dom, el)}'")


async def start_commit(state: QemuState, dom: QemuDomain, disk: str, base: str | None,
                       top: str | None, bandwidth: int, flags: int) -> None:
    """qemuDomainBlockCommit."""
    async with jobs.locked(dom, "remoteDispatchDomainBlockCommit"):
        mon = _active(dom)
        el = dc.find_disk(dom, disk)
        target = dc.target_of(el)
        _check_idle(dom, target)
        await dc.refresh_chain(dom, el)
        images = dc.chain_of(await dc.block_entry(mon, dc.alias_of(el)))
        top_pos = await _resolve_image(mon, el, images, top, dom)
        top_pos = max(top_pos, 0)
        if top_pos >= len(images) - 1:
            raise _err(P.VIR_ERR_INVALID_ARG, f"top '{images[top_pos]['filename'] if images else ''}'"
                       f" in chain for '{dc.path_of(dom, el)}' has no backing file")
        active = top_pos == 0
        if active and not flags & COMMIT_ACTIVE:
            raise _err(P.VIR_ERR_INVALID_ARG,
                       f"commit of '{target}' active layer requires active flag")
        if not active and flags & COMMIT_ACTIVE:
            raise _err(P.VIR_ERR_INVALID_ARG, f"active commit requested but "
                       f"'{images[top_pos]['filename']}' is not active")
        if flags & COMMIT_SHALLOW:
            base_pos = top_pos + 1
            if base is not None and await _resolve_image(mon, el, images, base, dom) != base_pos:
                raise _err(P.VIR_ERR_INVALID_ARG, f"base '{base}' is not immediately below "
                           f"top '{images[top_pos]['filename']}'")
        elif base is None:
            base_pos = len(images) - 1
        else:
            base_pos = await _resolve_image(mon, el, images, base, dom)
        if base_pos <= top_pos:
            raise _err(P.VIR_ERR_INVALID_ARG, f"could not find base image in chain for "
                       f"'{dc.path_of(dom, el)}'")
        device = await dc.top_node(mon, el)
        depth = len(images) - 1
        base_node = await dc.node_of_file(mon, images[base_pos]["filename"], depth - base_pos)
        args: dict = {"device": device, "base-node": base_node}
        if not active:
            args["top-node"] = await dc.node_of_file(mon, images[top_pos]["filename"],
                                                   depth - top_pos)
        if bandwidth:
            args["speed"] = bandwidth
        kind = ACTIVE_COMMIT if active else COMMIT
        job = BlockJob(kind, target, f"{JOB_NAMES[kind]}-{target}-{device}",
                       base_path=images[base_pos]["filename"],
                       base_format=images[base_pos]["format"],
                       dest_index=dom.job_slots.get("indexes", {}).get(
                           images[base_pos]["filename"]))
        await _start(state, dom, el, job, "block-commit", args)


async def start_pull(state: QemuState, dom: QemuDomain, disk: str, base: str | None,
                     bandwidth: int, owner: str) -> None:
    """qemuDomainBlockPullCommon: block-stream into the top, down to ``base``."""
    async with jobs.locked(dom, owner):
        mon = _active(dom)
        el = dc.find_disk(dom, disk)
        target = dc.target_of(el)
        _check_idle(dom, target)
        await dc.refresh_chain(dom, el)
        images = dc.chain_of(await dc.block_entry(mon, dc.alias_of(el)))
        device = await dc.top_node(mon, el)
        args: dict = {"device": device}
        if base is not None:
            pos = await _resolve_image(mon, el, images, base, dom)
            if pos <= 0:
                raise _err(P.VIR_ERR_INVALID_ARG, f"could not find base image in chain for "
                           f"'{dc.path_of(dom, el)}'")
            args["base-node"] = await dc.node_of_file(mon, images[pos]["filename"],
                                                    len(images) - 1 - pos)
        if bandwidth:
            args["speed"] = bandwidth
        job = BlockJob(PULL, target, f"pull-{target}-{device}")
        await _start(state, dom, el, job, "block-stream", args)


async def _wait_done(dom: QemuDomain, job: BlockJob) -> None:
    """Until QEMU ended the job, or the guest's run did (then no event will come)."""
    run = dom.run
    while not job.done.is_set():
        if not dom.active or dom.run != run:
            return
        with trio.move_on_after(1.0):
            await job.done.wait()


# ------------------------------------------------------------------ procedures
class BlockJobsMixin:
    """The block job procedures of a qemu:// connection."""
    driver: QemuState
    _dom: Any

    async def domain_block_copy(self, ref: Any, path: str, destxml: str, params: list,
                                flags: int) -> None:
        check_flags(flags, COPY_SHALLOW | COPY_REUSE_EXT | COPY_TRANSIENT,
                    "qemuDomainBlockCopy", FROM)
        bandwidth = 0
        for p in params:
            if p.field == "bandwidth":
                bandwidth = int(p.value.value)
            elif p.field not in ("granularity", "buf-size"):
                raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED, f"parameter '{p.field}' not "
                           "supported", P.VIR_FROM_NONE)
        kind, dest, fmt = _parse_dest(destxml)
        await start_copy(self.driver, self._dom(ref), path, kind, dest, fmt, bandwidth, flags)

    async def domain_block_rebase(self, ref: Any, path: str, base: str | None, bandwidth: int,
                                  flags: int) -> None:
        check_flags(flags, REBASE_SHALLOW | REBASE_REUSE_EXT | REBASE_COPY_RAW | REBASE_COPY
                    | REBASE_BYTES, "qemuDomainBlockRebase", FROM)
        speed = _bandwidth(bandwidth, bool(flags & REBASE_BYTES))
        dom = self._dom(ref)
        if flags & REBASE_COPY:
            if not base:
                raise _err(P.VIR_ERR_INVALID_ARG, "destination must be given for a copy")
            copy_flags = (COPY_SHALLOW if flags & REBASE_SHALLOW else 0) | \
                (COPY_REUSE_EXT if flags & REBASE_REUSE_EXT else 0)
            fmt = "raw" if flags & REBASE_COPY_RAW else None
            await start_copy(self.driver, dom, path, "file", base, fmt, speed, copy_flags)
            return
        if flags & (REBASE_SHALLOW | REBASE_REUSE_EXT | REBASE_COPY_RAW):
            raise _err(P.VIR_ERR_INVALID_ARG, "flags only valid with a copy")
        await start_pull(self.driver, dom, path, base or None, speed,
                         "remoteDispatchDomainBlockRebase")

    async def domain_block_pull(self, ref: Any, path: str, bandwidth: int, flags: int) -> None:
        check_flags(flags, PULL_BYTES, "qemuDomainBlockPull", FROM)
        speed = _bandwidth(bandwidth, bool(flags & PULL_BYTES))
        await start_pull(self.driver, self._dom(ref), path, None, speed,
                         "remoteDispatchDomainBlockPull")

    async def domain_block_commit(self, ref: Any, disk: str, base: str | None, top: str | None,
                                  bandwidth: int, flags: int) -> None:
        check_flags(flags, COMMIT_SHALLOW | COMMIT_ACTIVE | COMMIT_BYTES,
                    "qemuDomainBlockCommit", FROM)
        speed = _bandwidth(bandwidth, bool(flags & COMMIT_BYTES))
        await start_commit(self.driver, self._dom(ref), disk, base or None, top or None, speed,
                           flags)

    async def domain_block_job_abort(self, ref: Any, path: str, flags: int) -> None:
        check_flags(flags, ABORT_ASYNC | ABORT_PIVOT, "qemuDomainBlockJobAbort", FROM)
        dom = self._dom(ref)
        async with jobs.locked(dom, "remoteDispatchDomainBlockJobAbort"):
            mon = _active(dom)
            el = dc.find_disk(dom, path)
            target = dc.target_of(el)
            job = block_jobs(dom).get(target)
            if job is None:
                raise _err(P.VIR_ERR_INVALID_ARG,
                           f"disk {target} does not have an active block job")
            if job.pivoting or job.aborting:
                raise _err(P.VIR_ERR_OPERATION_INVALID,
                           f"block job on disk '{target}' is still being ended")
            if flags & ABORT_PIVOT:
                if not job.mirrors:
                    raise _err(P.VIR_ERR_OPERATION_INVALID, f"pivot of disk '{target}' "
                               f"requires an active copy job")
                if not job.ready:
                    raise _err(P.VIR_ERR_BLOCK_COPY_ACTIVE,
                               f"disk '{target}' not ready for pivot yet")
                job.pivoting = True
                _set_mirror(el, job)
                await mon.execute("job-complete", {"id": job.job_id})
            else:
                job.aborting = True
                if job.mirrors:
                    _set_mirror(el, job)
                # not forced: a ready mirror then ends with its destination a
                # consistent copy (virsh blockcopy --finish), others are cancelled
                await mon.execute("block-job-cancel", {"device": job.job_id, "force": False})
        if not flags & ABORT_ASYNC:
            await _wait_done(dom, job)

    async def domain_get_block_job_info(self, ref: Any, path: str, flags: int) -> tuple:
        check_flags(flags, INFO_BYTES, "qemuDomainGetBlockJobInfo", FROM)
        dom = self._dom(ref)
        mon = _active(dom)
        el = dc.find_disk(dom, path)
        job = block_jobs(dom).get(dc.target_of(el))
        if job is None:
            return (0, 0, 0, 0, 0)
        info = next((j for j in await mon.execute("query-block-jobs")
                     if j.get("device") == job.job_id), None)
        if info is None:        # ended in QEMU, its event not handled yet
            return (1, job.kind, 0, 1, 1)
        cur, end, speed = int(info.get("offset", 0)), int(info.get("len", 0)), \
            int(info.get("speed", 0))
        if job.mirrors:         # as libvirt: 100 % only once the mirror is ready
            if info.get("ready") or job.ready:
                if end == 0:
                    cur = end = 1
            elif cur == end and end > 0:
                cur -= 1
        bandwidth = speed if flags & INFO_BYTES else speed // MIB
        return (1, job.kind, bandwidth, cur, end)

    async def domain_block_job_set_speed(self, ref: Any, path: str, bandwidth: int,
                                         flags: int) -> None:
        check_flags(flags, SPEED_BYTES, "qemuDomainBlockJobSetSpeed", FROM)
        speed = _bandwidth(bandwidth, bool(flags & SPEED_BYTES))
        dom = self._dom(ref)
        async with jobs.locked(dom, "remoteDispatchDomainBlockJobSetSpeed"):
            mon = _active(dom)
            el = dc.find_disk(dom, path)
            job = block_jobs(dom).get(dc.target_of(el))
            if job is None:
                raise _err(P.VIR_ERR_INVALID_ARG,
                           f"disk {dc.target_of(el)} does not have an active block job")
            await mon.execute("block-job-set-speed", {"device": job.job_id, "speed": speed})

    async def domain_block_resize(self, ref: Any, disk: str, size: int, flags: int) -> None:
        check_flags(flags, RESIZE_BYTES, "qemuDomainBlockResize", FROM)
        dom = self._dom(ref)
        async with jobs.locked(dom, "remoteDispatchDomainBlockResize"):
            mon = _active(dom)
            el = dc.find_disk(dom, disk, missing="disk '{}' was not found in the domain config")
            if not flags & RESIZE_BYTES:
                if size > ((1 << 63) - 1) // 1024:
                    raise _err(P.VIR_ERR_OVERFLOW, f"size must be less than "
                               f"{((1 << 63) - 1) // 1024}")
                size *= 1024
            if dc.format_of(el) in ("qcow2", "qed"):     # their sizes are whole sectors
                size = (size + 511) // 512 * 512
            await mon.execute("block_resize", {"node-name": await dc.top_node(mon, el),
                                               "size": size})
