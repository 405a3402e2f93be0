"""Core dumps of running QEMU guests: `virsh dump` (virDomainCoreDump(WithFormat)).

As libvirt's QEMU driver does (qemuDomainCoreDumpWithFormat):
- the daemon creates the file (0600) and hands QEMU its descriptor;
- `--memory-only` is QEMU's dump-guest-memory (ELF, kdump-zlib/lzo/snappy or
  win-dmp where this QEMU offers them); without it the dump is QEMU's
  migration stream (the "raw" format only);
- the guest is paused for the dump unless `--live`, and runs again after it
  unless `--crash` (shut off, reason crashed) — `--reset` resets it first;
- it is a domain job (jobs.py): GetJobInfo follows it, one job at a time.
A failed dump leaves no file behind.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from . import jobs
from .save import wait_migration

if TYPE_CHECKING:
    from .driver import QemuDriverState
    from .guest import QemuDomain
    from .monitor import Monitor

_F = P.DomainCoreDumpFlags
_FMT = P.DomainCoreDumpFormat
DUMP_FLAGS = (_F.VIR_DUMP_CRASH | _F.VIR_DUMP_LIVE | _F.VIR_DUMP_BYPASS_CACHE | _F.VIR_DUMP_RESET
              | _F.VIR_DUMP_MEMORY_ONLY)
# QEMU's names of the memory-only formats
FORMATS = {_FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW: "elf",
           _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB: "kdump-zlib",
           _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_LZO: "kdump-lzo",
           _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_SNAPPY: "kdump-snappy",
           _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_WIN_DMP: "win-dmp"}
FD_NAME = "dump"
POLL_FIRST, POLL_MAX = 0.01, 0.2


def _create(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Failed to create file '{path}': "
                       f"{exc.strerror}", domain=P.VIR_FROM_QEMU) from None


def _finish(fd: int, path: str) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass
    try:
        os.close(fd)
    except OSError as exc:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"unable to close {path}: {exc.strerror}",
                       domain=P.VIR_FROM_QEMU) from None


async def _memory_dump(mon: "Monitor", fmt: int) -> None:
    """QMP dump-guest-memory in the background, followed until it ends."""
    name = FORMATS.get(fmt)
    caps = await mon.execute("query-dump-guest-memory-capability")
    if name is None or name not in caps.get("formats", []):
        raise VirError(P.VIR_ERR_INVALID_ARG,
                       f"unsupported dumpformat '{name or fmt}' for this QEMU binary",
                       domain=P.VIR_FROM_QEMU)
    await mon.execute("dump-guest-memory", {"paging": False, "protocol": f"fd:{FD_NAME}",
                                            "format": name, "detach": True})
    delay = POLL_FIRST
    while True:
        info = await mon.execute("query-dump")
        status = info.get("status")
        if status == "completed":
            return
        if status == "failed":
            raise VirError(P.VIR_ERR_OPERATION_FAILED, "dump failed", domain=P.VIR_FROM_QEMU)
        await trio.sleep(delay)
        delay = min(delay * 2, POLL_MAX)


async def core_dump(drv: "QemuDriverState", dom: "QemuDomain", path: str, fmt: int,
                    flags: int, owner: str) -> None:
    async with jobs.async_job(drv, dom, jobs.OP.VIR_DOMAIN_JOB_OPERATION_DUMP, owner,
                              "domain core dump job") as job:
        if not dom.active or dom.monitor is None:
            raise ds.not_running()
        mon = dom.monitor
        memory_only = bool(flags & _F.VIR_DUMP_MEMORY_ONLY)
        if not memory_only and fmt != _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, "kdump-compressed format is only "
                           "supported with memory-only dump", domain=P.VIR_FROM_QEMU)

        async def cancel() -> None:
            try:
                await mon.execute("migrate_cancel")
            except VirError:
                pass
        if not memory_only:
            job.abort = cancel
        fd = await trio.to_thread.run_sync(_create, path)
        resume = dom.state == ds.RUNNING
        paused = False
        done = False
        try:
            if not flags & _F.VIR_DUMP_LIVE and dom.state == ds.RUNNING:
                await drv.run_vcpus(dom, mon, False, ds.PAUSED_DUMP, ds.EV_SUSPENDED,
                                    ds.SUSPENDED_PAUSED)
                paused = True
            await mon.getfd(fd, FD_NAME)
            if memory_only:
                await _memory_dump(mon, fmt)
            else:
                # QEMU's migration stream stops the vCPUs itself: the guest is
                # resumed after the dump as after a pause of ours
                await mon.execute("migrate", {"uri": f"fd:{FD_NAME}"})
                await wait_migration(mon, "dump job", job)
                paused = True
            fd, to_close = -1, fd
            await trio.to_thread.run_sync(_finish, to_close, path)
            done = True
        finally:
            if not done:
                with trio.CancelScope(shield=True):
                    if fd >= 0:
                        os.close(fd)
                    await trio.to_thread.run_sync(_unlink_quietly, path)
                    if paused and resume and dom.active and dom.monitor is mon:
                        await _resume(drv, dom, mon)
        if flags & _F.VIR_DUMP_CRASH:
            await drv.destroy_domain(dom, reason=ds.SHUTOFF_CRASHED, detail=ds.STOPPED_CRASHED)
            return
        if not dom.active or dom.monitor is not mon:
            return
        if flags & _F.VIR_DUMP_RESET:
            await drv.system_reset(dom, mon)
        if resume and (paused or dom.state == ds.PAUSED):
            await _resume(drv, dom, mon)


async def _resume(drv: "QemuDriverState", dom: "QemuDomain", mon: "Monitor") -> None:
    try:
        await drv.run_vcpus(dom, mon, True, ds.RUNNING_UNPAUSED, ds.EV_RESUMED,
                            ds.RESUMED_UNPAUSED)
    except VirError:
        drv.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_API_ERROR)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class DumpMixin:
    """virDomainCoreDump and virDomainCoreDumpWithFormat for QEMU guests."""
    driver: "QemuDriverState"

    async def domain_core_dump(self, ref: Dom, to: str, flags: int) -> None:
        check_flags(flags, DUMP_FLAGS, "qemuDomainCoreDump", P.VIR_FROM_QEMU)
        await core_dump(self.driver, self._active(ref), to,
                        _FMT.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, flags,
                        "remoteDispatchDomainCoreDump")

    async def domain_core_dump_with_format(self, ref: Dom, to: str, dumpformat: int,
                                           flags: int) -> None:
        check_flags(flags, DUMP_FLAGS, "qemuDomainCoreDumpWithFormat", P.VIR_FROM_QEMU)
        if dumpformat not in FORMATS:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"unsupported dumpformat '{dumpformat}'",
                           domain=P.VIR_FROM_QEMU)
        await core_dump(self.driver, self._active(ref), to, dumpformat, flags,
                        "remoteDispatchDomainCoreDumpWithFormat")
