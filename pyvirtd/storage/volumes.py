"""Volume procedures of the storage subsystem: listing, lookup, create, clone,
delete, resize, wipe, info and XML.

Info and XML are refreshed from the storage on every call, as libvirt does
(stat, and qemu-img for images that are not raw), on the volume's pool's
threads.  A volume being created is listed but refuses use ("still being
allocated") until it exists, and keeps its pool from being refreshed or
destroyed meanwhile (the pool's ``asyncjobs``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.driver.api import StorageVolume
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.storage.backends.base import VOL_DIR, VOL_FILE, VOL_TYPE_NAMES, Volume
from pyvirtd.storage.backends.dir import (RESIZE_ALLOCATE, RESIZE_DELTA, RESIZE_SHRINK,
                                          VOL_CREATE_PREALLOC_METADATA, VOL_CREATE_REFLINK,
                                          WIPE_ALG_ZERO, probe_format)
from pyvirtd.storage import luks
from pyvirtd.storage.pool import Pool
from pyvirtd.xml import format_libvirt
from pyvirtd.xml import storage as stxml
from pyvirtd.xml.encryption import Encryption

if TYPE_CHECKING:
    from pyvirtd.storage.subsystem import StorageSubsystem
    from pyvirtd.driver.objects import ObjectList

_FROM = P.VIR_FROM_STORAGE

# virStorageVolCreateFlags' schema check (the other create flags come from the backends)
VOL_CREATE_VALIDATE = P.StorageVolCreateFlags.VIR_STORAGE_VOL_CREATE_VALIDATE
# virStorageVolDeleteFlags / virStorageVolInfoFlags
DELETE_ZEROED = P.StorageVolDeleteFlags.VIR_STORAGE_VOL_DELETE_ZEROED
DELETE_WITH_SNAPSHOTS = P.StorageVolDeleteFlags.VIR_STORAGE_VOL_DELETE_WITH_SNAPSHOTS
GET_PHYSICAL = P.StorageVolInfoFlags.VIR_STORAGE_VOL_GET_PHYSICAL


def no_vol(what: str, value: str) -> VirError:
    return VirError(P.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with matching {what} '{value}'",
                    domain=_FROM)


def in_use(vol: Volume) -> int:
    return vol.extra.get("in_use", 0)


def _file_elements(parent: etree._Element, vol: Volume) -> None:
    """<path>, <format>, <permissions>, <timestamps> as libvirt writes them for a file."""
    etree.SubElement(parent, "path").text = vol.path
    if vol.format:
        etree.SubElement(parent, "format", type=vol.format)
    perms = etree.SubElement(parent, "permissions")
    etree.SubElement(perms, "mode").text = f"{vol.mode:04o}"
    etree.SubElement(perms, "owner").text = str(vol.owner)
    etree.SubElement(perms, "group").text = str(vol.group)
    if vol.times:
        ts = etree.SubElement(parent, "timestamps")
        for tag, (sec, nsec) in zip(("atime", "mtime", "ctime"), vol.times):
            etree.SubElement(ts, tag).text = f"{sec}.{nsec:09d}" if nsec else str(sec)
        etree.SubElement(ts, "btime").text = "0"


def volume_xml(vol: Volume, encryption: Encryption | None = None) -> str:
    """A volume's XML; ``encryption``: how it is encrypted, with its secret when known."""
    root = etree.Element("volume", type=VOL_TYPE_NAMES[vol.type])
    etree.SubElement(root, "name").text = vol.name
    etree.SubElement(root, "key").text = vol.key
    for tag, value in (("capacity", vol.capacity), ("allocation", vol.allocation),
                       ("physical", vol.physical)):
        etree.SubElement(root, tag, unit="bytes").text = str(value)
    target = etree.SubElement(root, "target")
    _file_elements(target, vol)
    if encryption is not None:
        target.append(encryption.to_element())
    if vol.backing is not None:
        _file_elements(etree.SubElement(root, "backingStore"), vol.backing)
    return format_libvirt(root)


def _service_volume(pool: Pool, vol: Volume) -> StorageVolume:
    return StorageVolume(pool.name, vol.name, pool.type, vol.path, P.StorageVolType(vol.type),
                         vol.format)


class VolumeProcedures:
    pools: "ObjectList[Pool]"

    # ---------------------------------------------------------------- helpers
    def _vol(self: "StorageSubsystem", ref) -> tuple[Pool, Volume]:
        return self._volume(ref.pool, ref.name)

    def _volume(self: "StorageSubsystem", pool_name: str, name: str) -> tuple[Pool, Volume]:
        """virStorageVolDefFromVol: the pool by name, active, then the volume by name."""
        pool = self.pools.by_name(pool_name)
        if not pool.active:
            raise pool.not_active()
        vol = pool.volumes.get(name)
        if vol is None:
            raise no_vol("name", name)
        return pool, vol

    def _ready_vol(self: "StorageSubsystem", ref) -> tuple[Pool, Volume]:
        pool, vol = self._vol(ref)
        if vol.building:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"volume '{vol.name}' is still being allocated.", domain=_FROM)
        return pool, vol

    async def _refreshed(self, pool: Pool, vol: Volume) -> Volume:
        if vol.building:
            return vol
        fresh = await pool.backend.refresh_vol(pool, vol)
        fresh.extra = vol.extra
        if pool.volumes.get(vol.name) is vol:
            pool.volumes[vol.name] = fresh
        return fresh

    # ------------------------------------------- for drivers (api.StorageService)
    def pool_is_active(self: "StorageSubsystem", pool: str) -> bool:
        return self.pools.by_name(pool).active

    def resolve_volume(self: "StorageSubsystem", pool: str, name: str) -> StorageVolume:
        return _service_volume(*self._volume(pool, name))

    async def refresh_volume(self: "StorageSubsystem", pool: str, name: str) -> StorageVolume:
        found, vol = self._volume(pool, name)
        return _service_volume(found, await self._refreshed(found, vol))

    # ---------------------------------------------------------------- listing
    def storage_pool_num_of_volumes(self: "StorageSubsystem", ref) -> int:
        return len(self._active_pool(ref).volumes)

    def storage_pool_list_volumes(self: "StorageSubsystem", ref, maxnames: int) -> list[str]:
        return list(self._active_pool(ref).volumes)[:maxnames]

    def storage_pool_list_all_volumes(self: "StorageSubsystem", ref, need_results: int,
                                      flags: int) -> tuple:
        check_flags(flags, 0, "storagePoolListAllVolumes", _FROM)
        pool = self._active_pool(ref)
        if not need_results:
            return ([], len(pool.volumes))
        # the pool's name once: PoolDef.name reads the XML tree, and per volume
        # that was a third of the daemon's time listing 1,000 volumes
        name, vol_ref = pool.name, P.remote_nonnull_storage_vol
        vols = [vol_ref(name, v.name, v.key) for v in pool.volumes.values()]
        return (vols, len(vols))

    # ----------------------------------------------------------------- lookup
    def storage_vol_lookup_by_name(self: "StorageSubsystem", ref, name: str):
        pool = self._active_pool(ref)
        vol = pool.volumes.get(name)
        if vol is None:
            raise no_vol("name", name)
        return pool.vol_ref(vol)

    def _find(self: "StorageSubsystem", attr: str, value: str):
        for pool in self.pools:
            if not pool.active:
                continue
            for vol in pool.volumes.values():
                if getattr(vol, attr) == value:
                    return pool.vol_ref(vol)
        return None

    def storage_vol_lookup_by_key(self: "StorageSubsystem", key: str):
        found = self._find("key", key)
        if found is None:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with matching key {key}",
                           domain=_FROM)
        return found

    def storage_vol_lookup_by_path(self: "StorageSubsystem", path: str):
        found = self._find("path", path) or self._find("path", os.path.normpath(path))
        if found is None:
            raise no_vol("path", path)
        return found

    # ----------------------------------------------------------------- create
    def _new_volume(self: "StorageSubsystem", pool: Pool, xml: str, flags: int = 0
                    ) -> tuple[stxml.VolumeDef, Volume]:
        voldef = stxml.parse_volume(xml, pool.type,
                                    validate_schema=bool(flags & VOL_CREATE_VALIDATE))
        if voldef.name in pool.volumes:
            raise VirError(P.VIR_ERR_STORAGE_VOL_EXIST, domain=_FROM,
                           message=f"storage volume '{voldef.name}' exists already")
        path = pool.backend.volume_path(pool, voldef.name)
        fmt_elem = voldef.tree.find("target/format")
        fmt = fmt_elem.get("type") if fmt_elem is not None else "raw"
        vol = Volume(name=voldef.name, path=path, key=path, format=fmt,
                     type=VOL_DIR if fmt == "dir" else VOL_FILE,
                     capacity=voldef.capacity, allocation=voldef.allocation, building=True)
        return voldef, vol

    async def _backing(self: "StorageSubsystem", pool: Pool, voldef: stxml.VolumeDef,
                       vol: Volume) -> None:
        bs = voldef.tree.find("backingStore")
        if bs is None or not (bs.findtext("path") or "").strip():
            return
        if vol.format in ("raw", "none"):
            raise VirError(P.VIR_ERR_INVALID_ARG, "backing storage not supported for raw volumes",
                           domain=_FROM)
        path = bs.findtext("path").strip()
        if not await pool.io(os.access, path, os.R_OK):
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=_FROM, message=(
                f"inaccessible backing store volume {path}: No such file or directory"))
        fmt_elem = bs.find("format")
        fmt = fmt_elem.get("type") if fmt_elem is not None else await pool.io(probe_format, path)
        vol.backing = Volume(name=os.path.basename(path), path=path, key=path, format=fmt)

    async def _build(self: "StorageSubsystem", pool: Pool, vol: Volume, work) -> Volume:
        """Run a volume's creation with the volume listed as being built."""
        pool.volumes[vol.name] = vol
        pool.asyncjobs += 1
        try:
            await work()
            fresh = await pool.backend.refresh_vol(pool, vol)
            fresh.extra = vol.extra         # e.g. the secret it was encrypted with
        except BaseException:
            if pool.volumes.get(vol.name) is vol:
                del pool.volumes[vol.name]
            raise
        finally:
            pool.asyncjobs -= 1
        pool.volumes[vol.name] = fresh
        pool.allocation += fresh.allocation
        pool.available = max(0, pool.available - fresh.allocation)
        return fresh

    async def storage_vol_create_xml(self: "StorageSubsystem", ref, xml: str, flags: int):
        check_flags(flags, VOL_CREATE_PREALLOC_METADATA | VOL_CREATE_REFLINK | VOL_CREATE_VALIDATE,
                     "storageVolCreateXML", _FROM)
        pool = self._active_pool(ref)
        voldef, vol = self._new_volume(pool, xml, flags)
        await self._backing(pool, voldef, vol)
        if voldef.name in pool.volumes:     # created meanwhile
            raise VirError(P.VIR_ERR_STORAGE_VOL_EXIST, domain=_FROM,
                           message=f"storage volume '{voldef.name}' exists already")
        fresh = await self._build(pool, vol, lambda: pool.backend.create_vol(pool, voldef, vol,
                                                                             flags))
        return pool.vol_ref(fresh)

    async def storage_vol_create_xml_from(self: "StorageSubsystem", ref, xml: str, clone_ref,
                                          flags: int):
        check_flags(flags, VOL_CREATE_PREALLOC_METADATA | VOL_CREATE_REFLINK | VOL_CREATE_VALIDATE,
                     "storageVolCreateXMLFrom", _FROM)
        pool = self._active_pool(ref)
        src_pool = self.pools.by_name(clone_ref.pool)
        if not src_pool.active:
            raise src_pool.not_active()
        source = src_pool.volumes.get(clone_ref.name)
        if source is None:
            raise no_vol("name", clone_ref.name)
        if source.building:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"volume '{source.name}' is still being allocated.", domain=_FROM)
        voldef, vol = self._new_volume(pool, xml, flags)
        # the clone is at least as big as its source (storageVolCreateXMLFrom)
        vol.capacity = max(vol.capacity, source.capacity)
        await self._backing(pool, voldef, vol)
        if voldef.name in pool.volumes:
            raise VirError(P.VIR_ERR_STORAGE_VOL_EXIST, domain=_FROM,
                           message=f"storage volume '{voldef.name}' exists already")
        source.extra["in_use"] = in_use(source) + 1
        src_pool.asyncjobs += 1
        try:
            fresh = await self._build(pool, vol, lambda: pool.backend.create_vol_from(
                pool, voldef, vol, source, flags))
        finally:
            source.extra["in_use"] -= 1
            src_pool.asyncjobs -= 1
        return pool.vol_ref(fresh)

    # ------------------------------------------------------------- operations
    async def storage_vol_delete(self: "StorageSubsystem", ref, flags: int) -> None:
        check_flags(flags, DELETE_ZEROED | DELETE_WITH_SNAPSHOTS, "storageVolDelete", _FROM)
        pool, vol = self._ready_vol(ref)
        if in_use(vol):
            raise VirError(P.VIR_ERR_OPERATION_INVALID, domain=_FROM, message=(
                f"Requested operation is not valid: volume '{vol.name}' is still in use."))
        if flags & DELETE_ZEROED:
            await pool.backend.wipe_vol(pool, vol, WIPE_ALG_ZERO, 0)
        await pool.backend.delete_vol(pool, vol, flags)
        if pool.volumes.get(vol.name) is vol:
            del pool.volumes[vol.name]
        pool.allocation = max(0, pool.allocation - vol.allocation)
        pool.available += vol.allocation

    async def storage_vol_get_info(self: "StorageSubsystem", ref) -> tuple:
        pool, vol = self._vol(ref)
        vol = await self._refreshed(pool, vol)
        return (vol.type, vol.capacity, vol.allocation)

    async def storage_vol_get_info_flags(self: "StorageSubsystem", ref, flags: int) -> tuple:
        check_flags(flags, GET_PHYSICAL, "storageVolGetInfoFlags", _FROM)
        pool, vol = self._vol(ref)
        vol = await self._refreshed(pool, vol)
        return (vol.type, vol.capacity, vol.physical if flags & GET_PHYSICAL else vol.allocation)

    async def storage_vol_get_xml_desc(self: "StorageSubsystem", ref, flags: int) -> str:
        check_flags(flags, 0, "storageVolGetXMLDesc", _FROM)
        pool, vol = self._vol(ref)
        fresh = await self._refreshed(pool, vol)
        return volume_xml(fresh, luks.known_encryption(fresh, self.secrets()))

    def storage_vol_get_path(self: "StorageSubsystem", ref) -> str:
        return self._vol(ref)[1].path

    async def storage_vol_resize(self: "StorageSubsystem", ref, capacity: int, flags: int) -> None:
        check_flags(flags, RESIZE_ALLOCATE | RESIZE_DELTA | RESIZE_SHRINK, "storageVolResize",
                    _FROM)
        pool, vol = self._ready_vol(ref)
        vol = await self._refreshed(pool, vol)
        if flags & RESIZE_DELTA:
            new = vol.capacity - capacity if flags & RESIZE_SHRINK else vol.capacity + capacity
        else:
            new = capacity
        if new < vol.capacity and not flags & RESIZE_SHRINK:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Can't shrink capacity below current capacity "
                           "unless shrink flag explicitly specified", domain=_FROM)
        if flags & RESIZE_ALLOCATE and new < vol.allocation:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Can't shrink capacity below existing "
                           "allocation", domain=_FROM)
        if new < 0:
            raise VirError(P.VIR_ERR_INVALID_ARG, "can't shrink capacity below zero",
                           domain=_FROM)
        if flags & RESIZE_ALLOCATE and new - vol.allocation > pool.available:
            raise VirError(P.VIR_ERR_OPERATION_FAILED, "Not enough space left in storage pool",
                           domain=_FROM)
        await pool.backend.resize_vol(pool, vol, new, flags)
        fresh = await self._refreshed(pool, vol)
        pool.allocation += fresh.allocation - vol.allocation
        pool.available = max(0, pool.available - (fresh.allocation - vol.allocation))

    async def storage_vol_wipe(self: "StorageSubsystem", ref, flags: int) -> None:
        check_flags(flags, 0, "storageVolWipe", _FROM)
        await self._wipe(ref, WIPE_ALG_ZERO)

    async def storage_vol_wipe_pattern(self: "StorageSubsystem", ref, algorithm: int,
                                       flags: int) -> None:
        check_flags(flags, 0, "storageVolWipePattern", _FROM)
        await self._wipe(ref, algorithm)

    async def _wipe(self: "StorageSubsystem", ref, algorithm: int) -> None:
        pool, vol = self._ready_vol(ref)
        if in_use(vol):
            raise VirError(P.VIR_ERR_OPERATION_INVALID, domain=_FROM, message=(
                f"Requested operation is not valid: volume '{vol.name}' is still in use."))
        vol.extra["in_use"] = in_use(vol) + 1
        try:
            await pool.backend.wipe_vol(pool, vol, algorithm, 0)
        finally:
            vol.extra["in_use"] -= 1
        await self._refreshed(pool, vol)
