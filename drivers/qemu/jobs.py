"""Domain jobs of QEMU guests: one at a time per guest, their progress, abort, completion.

libvirt runs every state-changing call on a guest as a *job*; a second job
waits for the first for up to 30 s (QEMU_JOB_WAIT_TIME) and then fails with
"Timed out during operation: cannot acquire state change lock (held by
monitor=remoteDispatchDomainSave)" (VIR_ERR_OPERATION_TIMEOUT).  Here the
job lock is the guest's ``dom.lock`` (pyvirtd/driver/hypervisor.py);
``job()`` takes it with that timeout and records who holds it.

A long job (save, snapshot) is also *visible*: ``virDomainGetJobInfo`` and
``GetJobStats`` report it while it runs (type unbounded, its operation, time
elapsed and, for a save, QEMU's ``query-migrate`` figures), ``AbortJob``
cancels it, and once it ends its statistics stay readable with
``--completed`` (type completed, ``success``) and go out in a JOB_COMPLETED
event.  Block jobs (blockjobs.py) are not domain jobs: like libvirt's, they
take the job lock only to start or finish.

Reads take no lock (the state only changes between awaits on the trio
thread), so ``domjobinfo`` answers while the job runs.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from .guest import QemuState as QemuDriverState
    from .guest import QemuDomain

# src/qemu/qemu_domainjob.h: QEMU_JOB_WAIT_TIME, how long a job waits for the one before it
JOB_WAIT_TIME = 30.0

# virDomainJobType
JOB_NONE, JOB_BOUNDED, JOB_UNBOUNDED, JOB_COMPLETED, JOB_FAILED, JOB_CANCELLED = range(6)
OP = P.DomainJobOperation
STATS_COMPLETED = P.DomainGetJobStatsFlags.VIR_DOMAIN_JOB_STATS_COMPLETED
STATS_KEEP_COMPLETED = P.DomainGetJobStatsFlags.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED

_INT, _UINT, _ULLONG, _BOOL, _STRING = (P.VIR_TYPED_PARAM_INT, P.VIR_TYPED_PARAM_UINT,
                                        P.VIR_TYPED_PARAM_ULLONG, P.VIR_TYPED_PARAM_BOOLEAN,
                                        P.VIR_TYPED_PARAM_STRING)

# query-migrate's "ram" keys -> libvirt's memory_* job statistics
_RAM_STATS = (("memory_total", "total"), ("memory_processed", "transferred"),
              ("memory_remaining", "remaining"), ("memory_constant", "duplicate"),
              ("memory_normal", "normal"), ("memory_normal_bytes", "normal-bytes"),
              ("memory_dirty_rate", "dirty-pages-rate"), ("memory_iteration", "dirty-sync-count"),
              ("memory_page_size", "page-size"))


def _param(name: str, kind: int, value: Any) -> Any:
    return P.remote_typed_param(name, P.remote_typed_param_value(kind, value))


@dataclass
class Job:
    """One running domain job (libvirt's virDomainJobObj + its current virDomainJobData)."""
    operation: int
    owner: str                      # the API holding it, as libvirt names it in errors
    name: str                       # what errors call it ("domain save job")
    started: float = field(default_factory=time.time)
    # QEMU's progress (a save's query-migrate reply), refreshed by whoever polls it
    migration: dict = field(default_factory=dict)
    # set by AbortJob; the job's own loop notices it and gives up
    abort_requested: bool = False
    abort: Callable[[], Awaitable[None]] | None = None
    visible: bool = True            # reported by GetJobInfo (a long, async job)

    def elapsed_ms(self) -> int:
        return max(0, int((time.time() - self.started) * 1000))

    def check_aborted(self) -> None:
        """Raise libvirt's error once the client aborted the job."""
        if self.abort_requested:
            raise VirError(P.VIR_ERR_OPERATION_ABORTED, f"{self.name}: canceled by client",
                           domain=P.VIR_FROM_QEMU)

    def figures(self) -> dict[str, int]:
        """memory_* and data_* figures from the last query-migrate."""
        ram = self.migration.get("ram") or {}
        out = {name: int(ram.get(key, 0)) for name, key in _RAM_STATS if key in ram}
        total = int(ram.get("total", 0))
        processed = int(ram.get("transferred", 0))
        remaining = int(ram.get("remaining", 0))
        out.update(data_total=total, data_processed=processed, data_remaining=remaining)
        if "mbps" in ram:
            out["memory_bps"] = int(float(ram["mbps"]) * 1_000_000 / 8)
        return out

    def stats(self, completed: bool, success: bool = True, error: str = "") -> list:
        """The typed parameters GetJobStats and JOB_COMPLETED carry."""
        params = [_param("operation", _INT, self.operation),
                  _param("time_elapsed", _ULLONG, self.elapsed_ms())]
        for name, value in self.figures().items():
            params.append(_param(name, _ULLONG, max(0, value)))
        if completed:
            params.append(_param("success", _BOOL, int(success)))
            if error:
                params.append(_param("errmsg", _STRING, error))
        return params


@dataclass
class CompletedJob:
    """What --completed reports of the last job that ended."""
    type: int
    params: list


def _jobs(dom: QemuDomain) -> dict:
    """The guest's job slots: kept on the domain object, made on first use."""
    slots = dom.job_slots
    for key in ("current", "completed", "owner"):
        slots.setdefault(key, None)
    return slots


def current(dom: QemuDomain) -> Job | None:
    return _jobs(dom)["current"]


def _timeout(owner: str | None) -> VirError:
    if owner:
        text = f"cannot acquire state change lock (held by monitor={owner})"
    else:
        text = "cannot acquire state change lock"
    return VirError(P.VIR_ERR_OPERATION_TIMEOUT, text, domain=P.VIR_FROM_NONE)


@asynccontextmanager
async def locked(dom: QemuDomain, owner: str) -> AsyncIterator[None]:
    """Take the guest's job lock as API ``owner`` (remoteDispatchDomain...), waiting at
    most JOB_WAIT_TIME for the job before it; libvirt's timeout error otherwise."""
    slots = _jobs(dom)
    with trio.move_on_after(JOB_WAIT_TIME) as scope:
        await dom.lock.acquire()
    if scope.cancelled_caught:
        raise _timeout(slots["owner"])
    slots["owner"] = owner
    try:
        yield
    finally:
        slots["owner"] = None
        dom.lock.release()


@asynccontextmanager
async def async_job(drv: QemuDriverState, dom: QemuDomain, operation: int, owner: str,
                    name: str, emit_completed: bool = False) -> AsyncIterator[Job]:
    """Run a long job (save, snapshot) under the job lock, visible to GetJobInfo.

    On success its statistics become the completed job's (and, with
    ``emit_completed``, go out in a JOB_COMPLETED event: libvirt sends it for
    migration and backup; pyvirtd for a save too, the one job with QEMU
    figures it has today); on failure they are kept as a failed or cancelled job.
    """
    async with locked(dom, owner):
        job = Job(operation, owner, name)
        slots = _jobs(dom)
        slots["current"] = job
        try:
            yield job
        except BaseException as exc:
            slots["current"] = None
            message = exc.message if isinstance(exc, VirError) else ""
            kind = JOB_CANCELLED if job.abort_requested else JOB_FAILED
            slots["completed"] = CompletedJob(kind, job.stats(True, False, message or ""))
            raise
        slots["current"] = None
        params = job.stats(True)
        slots["completed"] = CompletedJob(JOB_COMPLETED, params)
        if emit_completed:
            drv.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, dom.ref(), params)


async def refresh(dom: QemuDomain, job: Job) -> None:
    """Bring a save's figures up to date from QEMU (query-migrate), for a reader."""
    mon = dom.monitor
    if mon is None or job.operation not in (OP.VIR_DOMAIN_JOB_OPERATION_SAVE,
                                            OP.VIR_DOMAIN_JOB_OPERATION_DUMP,
                                            OP.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT):
        return
    try:
        job.migration = await mon.execute("query-migrate") or {}
    except VirError:
        pass


def _info_tuple(kind: int, job: Job | None, figures: dict[str, int] | None = None) -> tuple:
    """remote_domain_get_job_info_ret's fields."""
    if job is None and figures is None:
        return (kind, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    f = figures if figures is not None else job.figures()  # type: ignore[union-attr]
    elapsed = job.elapsed_ms() if job is not None else f.get("time_elapsed", 0)
    return (kind, elapsed, 0, f.get("data_total", 0), f.get("data_processed", 0),
            f.get("data_remaining", 0), f.get("memory_total", 0), f.get("memory_processed", 0),
            f.get("memory_remaining", 0), 0, 0, 0)


class JobsMixin:
    """GetJobInfo, GetJobStats and AbortJob of a qemu:// connection."""
    driver: QemuDriverState
    _dom: Any

    async def domain_get_job_info(self, ref: Dom) -> tuple:
        dom = self._dom(ref)
        if not dom.active:
            raise ds.not_running()
        job = current(dom)
        if job is None or not job.visible:
            return _info_tuple(JOB_NONE, None)
        await refresh(dom, job)
        return _info_tuple(JOB_UNBOUNDED, job)

    async def domain_get_job_stats(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, STATS_COMPLETED | STATS_KEEP_COMPLETED, "qemuDomainGetJobStats",
                    P.VIR_FROM_QEMU)
        if flags & STATS_KEEP_COMPLETED and not flags & STATS_COMPLETED:
            raise VirError(P.VIR_ERR_INVALID_ARG, "VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED is not "
                           "allowed without VIR_DOMAIN_JOB_STATS_COMPLETED",
                           domain=P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        slots = _jobs(dom)
        if flags & STATS_COMPLETED:
            done = slots["completed"]
            if done is None:
                return (JOB_NONE, [])
            if not flags & STATS_KEEP_COMPLETED:
                slots["completed"] = None
            return (done.type, list(done.params))
        if not dom.active:
            raise ds.not_running()
        job = current(dom)
        if job is None or not job.visible:
            return (JOB_NONE, [])
        await refresh(dom, job)
        return (JOB_UNBOUNDED, job.stats(False))

    async def domain_abort_job(self, ref: Dom) -> None:
        await self.domain_abort_job_flags(ref, 0)

    async def domain_abort_job_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainAbortJobFlags", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        if not dom.active:
            raise ds.not_running()
        job = current(dom)
        if job is None or not job.visible:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "no job is active on the domain",
                           domain=P.VIR_FROM_QEMU)
        if job.abort is None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"cannot abort {job.name}", domain=P.VIR_FROM_QEMU)
        job.abort_requested = True
        await job.abort()
