"""The daemon-wide storage subsystem: pools, their lifecycle, listing and persistence.

Methods are named after the storage procedures and called by the dispatcher
like a driver connection's (pyvirtd/dispatch.py): XDR arguments in order,
the reply's fields returned.  Volume procedures are in volumes.py, the upload
and download streams in transfer.py.

Isolation: listing, lookups, pool info and XML read memory only and never
wait for storage.  Anything that touches storage runs on the pool's own
threads (`Pool.io`) or as a child process, and a pool's lifecycle calls are
serialised by the pool's lock only, so a pool whose storage hangs stalls
the calls on that pool and nothing else.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import trio
from lxml import etree

from pyvirtd.driver import DriverContext
from pyvirtd.driver.objects import STORAGE_POOL, ObjectList
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.storage.backends.base import Backend
from pyvirtd.storage.backends.dir import DirBackend
from pyvirtd.storage.backends.fs import FsBackend
from pyvirtd.storage.backends.iscsi import IscsiBackend
from pyvirtd.storage.backends.logical import LogicalBackend
from pyvirtd.storage.backends.netfs import NetfsBackend
from pyvirtd.storage.pool import LIST_ALL, Pool, pool_store
from pyvirtd.storage.transfer import TransferProcedures
from pyvirtd.storage.volumes import VolumeProcedures
from pyvirtd.xml import format_libvirt, format_uuid
from pyvirtd.xml import storage as stxml

log = logging.getLogger(__name__)
_FROM = P.VIR_FROM_STORAGE

# Backends by pool type (logical, netfs and iscsi are tested in the lab VM, tests/lab/).
BACKENDS: dict[str, type[Backend]] = {"dir": DirBackend, "fs": FsBackend, "netfs": NetfsBackend,
                                      "logical": LogicalBackend, "iscsi": IscsiBackend}

# virStoragePoolCreateFlags
CREATE_WITH_BUILD = P.StoragePoolCreateFlags.VIR_STORAGE_POOL_CREATE_WITH_BUILD
CREATE_WITH_BUILD_OVERWRITE = P.StoragePoolCreateFlags.VIR_STORAGE_POOL_CREATE_WITH_BUILD_OVERWRITE
CREATE_WITH_BUILD_NO_OVERWRITE = (
    P.StoragePoolCreateFlags.VIR_STORAGE_POOL_CREATE_WITH_BUILD_NO_OVERWRITE)
# virStoragePoolBuildFlags
BUILD_REPAIR = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_REPAIR
BUILD_RESIZE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_RESIZE
BUILD_NO_OVERWRITE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
BUILD_OVERWRITE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_OVERWRITE
# virStoragePoolDeleteFlags
DELETE_ZEROED = P.StoragePoolDeleteFlags.VIR_STORAGE_POOL_DELETE_ZEROED
# virStoragePoolDefineFlags / virStorageXMLFlags
DEFINE_VALIDATE = P.StoragePoolDefineFlags.VIR_STORAGE_POOL_DEFINE_VALIDATE
XML_INACTIVE = P.StorageXMLFlags.VIR_STORAGE_XML_INACTIVE

(EV_DEFINED, EV_UNDEFINED, EV_STARTED, EV_STOPPED, EV_CREATED, EV_DELETED) = range(6)

# How long daemon start waits for one pool's storage to answer before
# leaving that pool inactive (a dead NFS server must not stop the daemon).
STARTUP_CHECK_SECONDS = 20


def _pool_capabilities(supported: set[str]) -> str:
    """libvirt 9.0's pool capabilities, marking as supported only the backends we have."""
    text = resources.files("pyvirtd.storage").joinpath("pool-capabilities.xml").read_bytes()
    root = etree.fromstring(text)
    for pool in root.findall("pool"):
        if pool.get("type") not in supported:
            pool.set("supported", "no")
            for child in list(pool):
                pool.remove(child)
    return format_libvirt(root)


class StorageSubsystem(VolumeProcedures, TransferProcedures):
    """Every storage pool of the daemon, served to every hypervisor connection."""

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.events = ctx.events
        self.store = pool_store(ctx.paths.state_dir, ctx.paths.run_dir)
        self.pools: ObjectList[Pool] = ObjectList(STORAGE_POOL)
        self.backends = {name: cls() for name, cls in BACKENDS.items()}
        # iSCSI CHAP passwords come from the secret service (made after this one)
        self.backends["iscsi"].services = ctx.services
        # LUKS passphrases too (dir-like pools), through qemu-img's private files
        for backend in self.backends.values():
            if isinstance(backend, DirBackend):
                backend.secrets = self.secrets
                backend.secret_dir = Path(ctx.paths.run_dir) / "storage" / "secrets"
        self._load()

    # --------------------------------------------------------------- helpers
    def secrets(self) -> Any:
        """The daemon's secret service (made after this one), or None where the
        daemon has none (an encrypted volume's passphrase then fails clearly)."""
        try:
            return self.ctx.services.secrets
        except VirError:
            return None

    def _backend(self, pool_type: str) -> Backend:
        backend = self.backends.get(pool_type)
        if backend is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
                f"internal error: missing backend for pool type "
                f"{stxml.POOL_TYPES.index(pool_type)} ({pool_type})"))
        return backend

    def _pool(self, ref) -> Pool:
        """The pool a remote_nonnull_storage_pool names (by uuid, as libvirt finds it)."""
        return self.pools.by_ref(ref)

    def _active_pool(self, ref) -> Pool:
        pool = self._pool(ref)
        if not pool.active:
            raise pool.not_active()
        return pool

    def _emit(self, pool: Pool, event: int) -> None:
        self.events.emit("storage", P.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, pool.ref(), event, 0)

    @staticmethod
    def _still_active(pool: Pool) -> VirError:
        return VirError(P.VIR_ERR_OPERATION_INVALID,
                        f"storage pool '{pool.name}' is still active", domain=_FROM)

    @staticmethod
    def _check_jobs(pool: Pool) -> None:
        if pool.asyncjobs:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
                f"internal error: pool '{pool.name}' has asynchronous jobs running."))

    # ------------------------------------------------------- daemon lifecycle
    def _load(self) -> None:
        """Read the definitions and live states (small local files: done at creation,
        so pools are known even before `start` runs)."""
        found = self.store.load_sync()
        for pdef, autostart in found.configs:
            if pdef.type not in self.backends:
                log.error("pool '%s': no backend for type %s yet; not loaded", pdef.name, pdef.type)
                continue
            pool = Pool(pdef, backend=self.backends[pdef.type], autostart=autostart)
            pool.definition.set_sizes(0, 0, 0)
            self.pools.add(pool)
        for live in found.statuses:
            pool = self.pools.get(live.name)
            if pool is None:
                if live.type not in self.backends:
                    continue
                pool = self.pools.add(Pool(live, backend=self.backends[live.type],
                                           persistent=False))
            elif pool.uuid == live.uuid:
                pool.new_def, pool.definition = pool.definition, live
            pool.starting = True       # was active: re-checked by start()

    async def start(self) -> None:
        """Re-check the pools that were active, autostart the others (daemon start).

        Each pool is checked concurrently and given STARTUP_CHECK_SECONDS, so
        one dead pool delays the daemon's start by that much at most.
        """
        async with trio.open_nursery() as nursery:
            for pool in self.pools:
                nursery.start_soon(self._recheck, pool)

    async def _recheck(self, pool: Pool) -> None:
        was_active, pool.starting = pool.starting, False
        with trio.move_on_after(STARTUP_CHECK_SECONDS) as timeout:
            try:
                if was_active and await pool.backend.check(pool):
                    async with pool.lock:
                        await self._refresh(pool)
                        pool.active = True
                    if pool.new_def is not None and stxml.format_pool(pool.new_def) == \
                            stxml.format_pool(pool.definition):
                        pool.new_def = None
                    return
            except VirError as exc:
                log.error("pool '%s' was active but cannot be refreshed: %s", pool.name, exc)
            if was_active:
                await self.store.delete_status(pool.name)
                self.pools.stopped(pool)
                if not pool.persistent:
                    return
            if pool.autostart and not pool.active:
                try:
                    await self._start(pool, 0)
                except VirError as exc:
                    log.error("failed to autostart storage pool '%s': %s", pool.name, exc)
        if timeout.cancelled_caught:
            log.error("storage pool '%s' did not answer within %d s at start-up; left inactive",
                      pool.name, STARTUP_CHECK_SECONDS)

    async def stop(self) -> None:
        """Active pools stay active (mounted) across a daemon restart, as with libvirtd."""

    # --------------------------------------------------------------- listing
    def connect_num_of_storage_pools(self) -> int:
        return self.pools.count(active=True)

    def connect_list_storage_pools(self, maxnames: int) -> list[str]:
        return self.pools.list_names(True, maxnames)

    def connect_num_of_defined_storage_pools(self) -> int:
        return self.pools.count(active=False)

    def connect_list_defined_storage_pools(self, maxnames: int) -> list[str]:
        return self.pools.list_names(False, maxnames)

    def connect_list_all_storage_pools(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL, "virConnectListAllStoragePools", _FROM)
        out = [p.ref() for p in self.pools.list_all(flags)]
        return (out if need_results else [], len(out))

    async def connect_find_storage_pool_sources(self, pool_type: str, src_spec: str | None,
                                                flags: int) -> str:
        if pool_type not in stxml.POOL_TYPES:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"unknown storage pool type {pool_type}",
                           domain=_FROM)
        return await self._backend(pool_type).find_sources(src_spec, flags)

    def connect_get_storage_pool_capabilities(self, flags: int) -> str:
        check_flags(flags, 0, "storageConnectGetStoragePoolCapabilities", _FROM)
        return _pool_capabilities(set(self.backends))

    # ---------------------------------------------------------------- lookup
    def storage_pool_lookup_by_name(self, name: str) -> P.remote_nonnull_storage_pool:
        return self.pools.by_name(name).ref()

    def storage_pool_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_storage_pool:
        return self.pools.by_uuid(uuid).ref()

    def storage_pool_lookup_by_volume(self, vol) -> P.remote_nonnull_storage_pool:
        pool = self.pools.by_name(vol.pool)
        if not pool.active:
            raise pool.not_active()
        return pool.ref()

    def storage_pool_lookup_by_target_path(self, path: str) -> P.remote_nonnull_storage_pool:
        clean = stxml._clean_path(path)
        for pool in self.pools:
            if pool.active and pool.target_path == clean:
                return pool.ref()
        raise VirError(P.VIR_ERR_NO_STORAGE_POOL,
                       f"no storage pool with matching target path '{path}'", domain=_FROM)

    # ------------------------------------------------------------ definition
    def _check_duplicates(self, pdef: stxml.PoolDef) -> Pool | None:
        """virStoragePoolObjIsDuplicate + virStoragePoolObjSourceFindDuplicate."""
        same = self.pools.check_add(pdef, live=False)
        for other in self.pools:
            if other is same:
                continue
            if _same_source(other.definition, pdef):
                raise VirError(P.VIR_ERR_OPERATION_FAILED,
                               f"Storage source conflict with pool: '{other.name}'",
                               domain=_FROM)
        return same

    async def storage_pool_define_xml(self, xml: str, flags: int) -> P.remote_nonnull_storage_pool:
        check_flags(flags, DEFINE_VALIDATE, "storagePoolDefineXML", _FROM)
        pdef = stxml.parse_pool(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        backend = self._backend(pdef.type)
        self._check_duplicates(pdef)
        pdef.set_sizes(0, 0, 0)
        await self.store.write_config(pdef)
        # the list may have changed while writing: its checks run again
        pool = self.pools.assign(pdef, live=False, make=lambda d: Pool(d, backend=backend))
        self._emit(pool, EV_DEFINED)
        return pool.ref()

    async def storage_pool_create_xml(self, xml: str, flags: int) -> P.remote_nonnull_storage_pool:
        check_flags(flags, CREATE_WITH_BUILD | CREATE_WITH_BUILD_OVERWRITE
                    | CREATE_WITH_BUILD_NO_OVERWRITE, "storagePoolCreateXML", _FROM)
        pdef = stxml.parse_pool(xml)
        backend = self._backend(pdef.type)
        same = self._check_duplicates(pdef)
        if same is not None:
            if same.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"storage pool '{same.name}' is already active", domain=_FROM)
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"pool '{same.name}' already exists with uuid {format_uuid(same.uuid)}",
                           domain=_FROM)
        pdef.set_sizes(0, 0, 0)
        pool = self.pools.assign(pdef, live=True, make=lambda d: Pool(d, backend=backend))
        try:
            await self._start(pool, flags)
        except BaseException:
            if not pool.active:
                self.pools.remove(pool)
            raise
        return pool.ref()

    async def storage_pool_undefine(self, ref) -> None:
        pool = self._pool(ref)
        if pool.active:
            raise self._still_active(pool)
        self.pools.check_undefine(pool)
        await self.store.delete_config(pool.name)
        self.pools.undefine(pool)
        self._emit(pool, EV_UNDEFINED)

    def storage_pool_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, XML_INACTIVE, "storagePoolGetXMLDesc", _FROM)
        return self._pool(ref).xml(inactive=bool(flags & XML_INACTIVE))

    # ------------------------------------------------------------- lifecycle
    async def storage_pool_build(self, ref, flags: int) -> None:
        check_flags(flags, BUILD_REPAIR | BUILD_RESIZE | BUILD_NO_OVERWRITE | BUILD_OVERWRITE,
                    "storagePoolBuild", _FROM)
        pool = self._pool(ref)
        async with pool.lock:
            if pool.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"storage pool '{pool.name}' is already active", domain=_FROM)
            await pool.backend.build(pool, flags)
        self._emit(pool, EV_CREATED)

    async def storage_pool_create(self, ref, flags: int) -> None:
        check_flags(flags, CREATE_WITH_BUILD | CREATE_WITH_BUILD_OVERWRITE
                    | CREATE_WITH_BUILD_NO_OVERWRITE, "storagePoolCreate", _FROM)
        await self._start(self._pool(ref), flags)

    async def _start(self, pool: Pool, flags: int) -> None:
        if flags & CREATE_WITH_BUILD_OVERWRITE and flags & CREATE_WITH_BUILD_NO_OVERWRITE:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "Flags 'VIR_STORAGE_POOL_CREATE_WITH_BUILD_OVERWRITE' and "
                "'VIR_STORAGE_POOL_CREATE_WITH_BUILD_NO_OVERWRITE' are mutually exclusive"))
        async with pool.lock:
            if pool.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"storage pool '{pool.name}' is already active", domain=_FROM)
            if flags & (CREATE_WITH_BUILD | CREATE_WITH_BUILD_OVERWRITE
                        | CREATE_WITH_BUILD_NO_OVERWRITE):
                build = (BUILD_OVERWRITE if flags & CREATE_WITH_BUILD_OVERWRITE else
                         BUILD_NO_OVERWRITE if flags & CREATE_WITH_BUILD_NO_OVERWRITE else 0)
                await pool.backend.build(pool, build)
            await pool.backend.start(pool)
            try:
                await self._refresh(pool)
                # the status file before the pool is marked active: a pool that
                # cannot record its state is stopped again, as libvirt does
                await self.store.write_status(pool.definition.copy())
            except BaseException:
                with trio.CancelScope(shield=True):
                    try:
                        await pool.backend.stop(pool)
                    except VirError as exc:
                        log.error("pool '%s': cannot undo its start: %s", pool.name, exc)
                raise
            pool.active = True
        self._emit(pool, EV_STARTED)

    async def _refresh(self, pool: Pool) -> None:
        scan = await pool.backend.refresh(pool)
        pool.capacity, pool.allocation, pool.available = (scan.capacity, scan.allocation,
                                                          scan.available)
        pool.perms = scan.target_perms
        building = {n: v for n, v in pool.volumes.items() if v.building}
        pool.volumes = {v.name: v for v in scan.volumes}
        pool.volumes.update(building)

    async def storage_pool_destroy(self, ref) -> None:
        pool = self._pool(ref)
        async with pool.lock:
            if not pool.active:
                raise pool.not_active()
            self._check_jobs(pool)
            await pool.backend.stop(pool)
            await self._deactivate(pool)

    async def _deactivate(self, pool: Pool) -> None:
        pool.active = False
        pool.volumes = {}
        await self.store.delete_status(pool.name)
        self.pools.stopped(pool)
        self._emit(pool, EV_STOPPED)

    async def storage_pool_delete(self, ref, flags: int) -> None:
        check_flags(flags, DELETE_ZEROED, "storagePoolDelete", _FROM)
        pool = self._pool(ref)
        async with pool.lock:
            if pool.active:
                raise self._still_active(pool)
            await pool.backend.delete(pool, flags)
        self._emit(pool, EV_DELETED)

    async def storage_pool_refresh(self, ref, flags: int) -> None:
        check_flags(flags, 0, "storagePoolRefresh", _FROM)
        pool = self._pool(ref)
        async with pool.lock:
            if not pool.active:
                raise pool.not_active()
            self._check_jobs(pool)
            try:
                await self._refresh(pool)
            except VirError:
                # as libvirt: a pool that cannot be refreshed is stopped
                with trio.CancelScope(shield=True):
                    try:
                        await pool.backend.stop(pool)
                    except VirError:
                        pass
                    await self._deactivate(pool)
                raise
        self.events.emit("storage", P.VIR_STORAGE_POOL_EVENT_ID_REFRESH, pool.ref())

    def storage_pool_get_info(self, ref) -> tuple:
        pool = self._pool(ref)
        state = 2 if pool.active else 1 if pool.starting else 0
        return (state, pool.capacity, pool.allocation, pool.available)

    def storage_pool_is_active(self, ref) -> int:
        return int(self._pool(ref).active)

    def storage_pool_is_persistent(self, ref) -> int:
        return int(self._pool(ref).persistent)

    def storage_pool_get_autostart(self, ref) -> int:
        return int(self._pool(ref).autostart)

    async def storage_pool_set_autostart(self, ref, autostart: int) -> None:
        pool = self._pool(ref)
        self.pools.check_autostart(pool)
        on = bool(autostart)
        if on != pool.autostart:
            await self.store.set_autostart(pool.name, on)
            pool.autostart = on


def _same_source(a: stxml.PoolDef, b: stxml.PoolDef) -> bool:
    """Two pools that would use the same storage (the checks of
    virStoragePoolObjSourceFindDuplicate for the types we serve)."""
    if a.type != b.type:
        return False
    if a.type == "dir":
        return a.target_path == b.target_path
    if a.type == "netfs":
        return _hosts(a) == _hosts(b) and bool(_hosts(a)) and (
            a.tree.find("source/dir") is not None and b.tree.find("source/dir") is not None
            and a.tree.find("source/dir").get("path") == b.tree.find("source/dir").get("path"))
    if a.type == "logical" and a.tree.findtext("source/name") == b.tree.findtext("source/name"):
        return True
    if a.type in ("fs", "logical", "disk", "iscsi"):
        da = {d.get("path") for d in a.tree.findall("source/device")}
        db = {d.get("path") for d in b.tree.findall("source/device")}
        if a.type == "iscsi":        # the same target IQN on the same portal
            return bool(da & db) and _hosts(a) == _hosts(b)
        return bool(da & db)
    return False


def _hosts(pdef: stxml.PoolDef) -> set[tuple[str | None, str | None]]:
    return {(h.get("name"), h.get("port")) for h in pdef.tree.findall("source/host")}
