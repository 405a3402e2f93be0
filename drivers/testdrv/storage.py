"""Test driver: storage pools and volumes.

Nothing touches the disk.  Like libvirt's test driver every pool reports
100 GiB of capacity; its allocation is the sum of its volumes' allocations.
A volume lives at ``<pool target path>/<name>``, which is also its key.
Building and deleting a pool only check its state.  Resize, wipe, upload
and download are not implemented by the reference either, so those methods
are absent (VIR_ERR_NO_SUPPORT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.driver.objects import DefinedObject
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_libvirt, parse_definition
from pyvirtd.xml import storage as stxml

from .state import TEST_POOL, TestState

# The test driver's fixed pool size (src/test/test_driver.c defaultPoolCap).
POOL_CAPACITY = 100 * 1024 ** 3

# virStoragePoolState.
POOL_INACTIVE = P.StoragePoolState.VIR_STORAGE_POOL_INACTIVE
POOL_RUNNING = P.StoragePoolState.VIR_STORAGE_POOL_RUNNING
VOL_FILE = 0
POOL_DEFINE_VALIDATE = 1
VOL_CREATE_VALIDATE = 4
# virConnectListAllStoragePoolsFlags: the six state filters, then one bit per type.
LIST_ALL_POOLS = TEST_POOL.list_flags

# virStoragePoolEventLifecycleType.
EV_DEFINED, EV_UNDEFINED, EV_STARTED, EV_STOPPED, EV_CREATED, EV_DELETED = range(6)

# What find-storage-pool-sources reports for logical pools (test_driver.c).
_LOGICAL_SOURCES = (("/dev/sda20", "testvg1"), ("/dev/sda21", "testvg2"))


@dataclass(eq=False)
class Pool(DefinedObject):
    definition: stxml.PoolDef
    new_def: stxml.PoolDef | None = None
    volumes: dict[str, stxml.VolumeDef] = field(default_factory=dict)

    def ref(self) -> P.remote_nonnull_storage_pool:
        return P.remote_nonnull_storage_pool(self.name, self.uuid)

    def vol_ref(self, vol: stxml.VolumeDef) -> P.remote_nonnull_storage_vol:
        return P.remote_nonnull_storage_vol(self.name, vol.name, vol.key)

    @property
    def allocation(self) -> int:
        return sum(v.allocation for v in self.volumes.values())

    def refresh_sizes(self) -> None:
        alloc = self.allocation
        self.definition.set_sizes(POOL_CAPACITY, alloc, POOL_CAPACITY - alloc)

    def not_active(self) -> VirError:
        return VirError(P.VIR_ERR_OPERATION_INVALID, f"storage pool '{self.name}' is not active",
                        domain=P.VIR_FROM_TEST)

    def is_active_error(self) -> VirError:
        return VirError(P.VIR_ERR_OPERATION_INVALID, f"storage pool '{self.name}' is active",
                        domain=P.VIR_FROM_TEST)


def load_pools(state: TestState, elements: list[etree._Element]) -> None:
    """Pools of a node file start active; their <volume> children become volumes."""
    for elem in elements:
        vols = elem.findall("volume")
        for v in vols:
            elem.remove(v)
        pool = Pool(stxml.pool_from_element(elem), active=True)
        for v in vols:
            vol = stxml.volume_from_element(v, pool.definition.type)
            vol.place(f"{pool.definition.target_path}/{vol.name}")
            pool.volumes[vol.name] = vol
        pool.refresh_sizes()
        state.pools.add(pool)


class StorageMixin:
    state: TestState

    # --- helpers --------------------------------------------------------------

    def _pool(self, ref) -> Pool:
        return self.state.pools.by_ref(ref)

    def _active_pool(self, ref) -> Pool:
        pool = self._pool(ref)
        if not pool.active:
            raise pool.not_active()
        return pool

    def _vol(self, ref) -> tuple[Pool, stxml.VolumeDef]:
        pool = self.state.pools.by_name(ref.pool)
        if not pool.active:
            raise pool.not_active()
        vol = pool.volumes.get(ref.name)
        if vol is None:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL,
                           f"no storage vol with matching name '{ref.name}'",
                           domain=P.VIR_FROM_TEST)
        return pool, vol

    def _emit_pool(self, pool: Pool, event: int) -> None:
        self.state.events.emit("storage", P.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, pool.ref(),
                               event, 0)

    # --- listing --------------------------------------------------------------

    def connect_num_of_storage_pools(self) -> int:
        return self.state.pools.count(active=True)

    def connect_list_storage_pools(self, maxnames: int) -> list[str]:
        return self.state.pools.list_names(True, maxnames)

    def connect_num_of_defined_storage_pools(self) -> int:
        return self.state.pools.count(active=False)

    def connect_list_defined_storage_pools(self, maxnames: int) -> list[str]:
        return self.state.pools.list_names(False, maxnames)

    def connect_list_all_storage_pools(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL_POOLS, "testConnectListAllStoragePools", P.VIR_FROM_TEST)
        pools = [p.ref() for p in self.state.pools.list_all(flags)]
        return (pools if need_results else [], len(pools))

    def connect_find_storage_pool_sources(self, pool_type: str, src_spec: str | None,
                                          flags: int) -> str:
        check_flags(flags, 0, "testConnectFindStoragePoolSources", P.VIR_FROM_TEST)
        sources = etree.Element("sources")
        if pool_type == "logical":
            for path, name in _LOGICAL_SOURCES:
                src = etree.SubElement(sources, "source")
                etree.SubElement(src, "device", path=path)
                etree.SubElement(src, "name").text = name
                etree.SubElement(src, "format", type="lvm2")
        elif pool_type == "netfs":
            host = None
            if src_spec:
                spec = parse_definition(src_spec, None, what="storage_source_specification", domain=P.VIR_FROM_TEST)
                host = spec.find("host")
            if host is None or not host.get("name"):
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               "hostname must be specified for netfs sources",
                               domain=P.VIR_FROM_TEST)
            src = etree.SubElement(sources, "source")
            etree.SubElement(src, "host", name=host.get("name"))
            etree.SubElement(src, "dir", path="/somedir")
            etree.SubElement(src, "format", type="auto")
        else:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"unknown storage pool type {pool_type}",
                           domain=P.VIR_FROM_TEST)
        return format_libvirt(sources)

    # --- lookup ---------------------------------------------------------------

    def storage_pool_lookup_by_name(self, name: str) -> P.remote_nonnull_storage_pool:
        return self.state.pools.by_name(name).ref()

    def storage_pool_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_storage_pool:
        return self.state.pools.by_uuid(uuid).ref()

    def storage_pool_lookup_by_volume(self, vol) -> P.remote_nonnull_storage_pool:
        return self.storage_pool_lookup_by_name(vol.pool)

    def storage_pool_lookup_by_target_path(self, path: str) -> P.remote_nonnull_storage_pool:
        for pool in self.state.pools:
            if pool.definition.target_path == path:
                return pool.ref()
        raise VirError(P.VIR_ERR_NO_STORAGE_POOL,
                       f"no storage pool with matching target path '{path}'",
                       domain=P.VIR_FROM_TEST)

    # --- pool definition ------------------------------------------------------

    def _add_pool(self, pooldef: stxml.PoolDef, live: bool) -> Pool:
        """Add or replace a pool (virStoragePoolObjListAdd); created ones run."""
        same = self.state.pools.get(pooldef.name)
        redefined_running = not live and same is not None and same.active
        pool = self.state.pools.assign(pooldef, live=live, make=Pool)
        if live:
            pool.active = True
        if not redefined_running:       # a running pool's next definition waits unsized
            pool.refresh_sizes()
        return pool

    def storage_pool_define_xml(self, xml: str, flags: int) -> P.remote_nonnull_storage_pool:
        check_flags(flags, POOL_DEFINE_VALIDATE, "testStoragePoolDefineXML", P.VIR_FROM_TEST)
        pool = self._add_pool(stxml.parse_pool(
            xml, validate_schema=bool(flags & POOL_DEFINE_VALIDATE)), live=False)
        self._emit_pool(pool, EV_DEFINED)
        return pool.ref()

    def storage_pool_create_xml(self, xml: str, flags: int) -> P.remote_nonnull_storage_pool:
        check_flags(flags, 0, "testStoragePoolCreateXML", P.VIR_FROM_TEST)
        pool = self._add_pool(stxml.parse_pool(xml), live=True)
        self._emit_pool(pool, EV_STARTED)
        return pool.ref()

    def storage_pool_undefine(self, ref) -> None:
        pool = self._pool(ref)
        if pool.active:
            raise pool.is_active_error()
        self.state.pools.remove(pool)
        self._emit_pool(pool, EV_UNDEFINED)

    def storage_pool_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "testStoragePoolGetXMLDesc", P.VIR_FROM_TEST)
        return stxml.format_pool(self._pool(ref).definition)

    # --- pool lifecycle -------------------------------------------------------

    def storage_pool_build(self, ref, flags: int) -> None:
        pool = self._pool(ref)
        if pool.active:
            raise pool.is_active_error()

    def storage_pool_create(self, ref, flags: int) -> None:
        check_flags(flags, 0, "testStoragePoolCreate", P.VIR_FROM_TEST)
        pool = self._pool(ref)
        if pool.active:
            raise pool.is_active_error()
        pool.active = True
        pool.refresh_sizes()
        self._emit_pool(pool, EV_STARTED)

    def storage_pool_destroy(self, ref) -> None:
        pool = self._pool(ref)
        if not pool.active:
            raise pool.not_active()
        self.state.pools.stopped(pool)
        self._emit_pool(pool, EV_STOPPED)

    def storage_pool_delete(self, ref, flags: int) -> None:
        pool = self._pool(ref)
        if pool.active:
            raise pool.is_active_error()
        self._emit_pool(pool, EV_DELETED)

    def storage_pool_refresh(self, ref, flags: int) -> None:
        check_flags(flags, 0, "testStoragePoolRefresh", P.VIR_FROM_TEST)
        pool = self._active_pool(ref)
        self.state.events.emit("storage", P.VIR_STORAGE_POOL_EVENT_ID_REFRESH, pool.ref())

    def storage_pool_get_info(self, ref) -> tuple:
        pool = self._pool(ref)
        alloc = pool.allocation
        if not pool.active:
            return (POOL_INACTIVE, POOL_CAPACITY, alloc, POOL_CAPACITY - alloc)
        return (POOL_RUNNING, POOL_CAPACITY, alloc, POOL_CAPACITY - alloc)

    def storage_pool_is_active(self, ref) -> int:
        return int(self._pool(ref).active)

    def storage_pool_is_persistent(self, ref) -> int:
        return int(self._pool(ref).persistent)

    def storage_pool_get_autostart(self, ref) -> int:
        return int(self._pool(ref).autostart)

    def storage_pool_set_autostart(self, ref, autostart: int) -> None:
        pool = self._pool(ref)
        self.state.pools.check_autostart(pool)
        pool.autostart = bool(autostart)

    # --- volumes of a pool ----------------------------------------------------

    def storage_pool_num_of_volumes(self, ref) -> int:
        return len(self._active_pool(ref).volumes)

    def storage_pool_list_volumes(self, ref, maxnames: int) -> list[str]:
        return list(self._active_pool(ref).volumes)[:maxnames]

    def storage_pool_list_all_volumes(self, ref, need_results: int, flags: int) -> tuple:
        check_flags(flags, 0, "testStoragePoolListAllVolumes", P.VIR_FROM_TEST)
        pool = self._pool(ref)
        if not pool.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "storage pool is not active",
                           domain=P.VIR_FROM_TEST)
        vols = [pool.vol_ref(v) for v in pool.volumes.values()]
        return (vols if need_results else [], len(vols))

    def _new_volume(self, pool: Pool, xml: str, validate_schema: bool = False) -> stxml.VolumeDef:
        vol = stxml.parse_volume(xml, pool.definition.type, validate_schema=validate_schema)
        if vol.name in pool.volumes:
            raise VirError(P.VIR_ERR_OPERATION_FAILED, "storage vol already exists",
                           domain=P.VIR_FROM_TEST)
        if vol.allocation > POOL_CAPACITY - pool.allocation:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"Not enough free space in pool for volume '{vol.name}'",
                           domain=P.VIR_FROM_TEST)
        vol.place(f"{pool.definition.target_path}/{vol.name}")
        return vol

    def _add_volume(self, pool: Pool, vol: stxml.VolumeDef) -> P.remote_nonnull_storage_vol:
        pool.volumes[vol.name] = vol
        pool.refresh_sizes()
        return pool.vol_ref(vol)

    def storage_vol_create_xml(self, ref, xml: str, flags: int) -> P.remote_nonnull_storage_vol:
        check_flags(flags, VOL_CREATE_VALIDATE, "testStorageVolCreateXML", P.VIR_FROM_TEST)
        pool = self._active_pool(ref)
        return self._add_volume(pool, self._new_volume(
            pool, xml, validate_schema=bool(flags & VOL_CREATE_VALIDATE)))

    def storage_vol_create_xml_from(self, ref, xml: str, clone_ref, flags: int
                                    ) -> P.remote_nonnull_storage_vol:
        check_flags(flags, 0, "testStorageVolCreateXMLFrom", P.VIR_FROM_TEST)
        pool = self._active_pool(ref)
        vol = self._new_volume(pool, xml)
        src_pool = self.state.pools.get(clone_ref.pool)
        if src_pool is None or clone_ref.name not in src_pool.volumes:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL,
                           f"no storage vol with matching name '{clone_ref.name}'",
                           domain=P.VIR_FROM_TEST)
        return self._add_volume(pool, vol)

    # --- volume lookup --------------------------------------------------------

    def storage_vol_lookup_by_name(self, ref, name: str) -> P.remote_nonnull_storage_vol:
        pool = self._active_pool(ref)
        vol = pool.volumes.get(name)
        if vol is None:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL,
                           f"no storage vol with matching name '{name}'", domain=P.VIR_FROM_TEST)
        return pool.vol_ref(vol)

    def _find_vol(self, attr: str, value: str, what: str) -> P.remote_nonnull_storage_vol:
        for pool in self.state.pools.values():
            if not pool.active:
                continue
            for vol in pool.volumes.values():
                if getattr(vol, attr) == value:
                    return pool.vol_ref(vol)
        raise VirError(P.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with matching {what} '{value}'",
                       domain=P.VIR_FROM_TEST)

    def storage_vol_lookup_by_key(self, key: str) -> P.remote_nonnull_storage_vol:
        return self._find_vol("key", key, "key")

    def storage_vol_lookup_by_path(self, path: str) -> P.remote_nonnull_storage_vol:
        return self._find_vol("path", path, "path")

    # --- volume operations ----------------------------------------------------

    def storage_vol_get_info(self, ref) -> tuple:
        _, vol = self._vol(ref)
        return (VOL_FILE, vol.capacity, vol.allocation)

    def storage_vol_get_info_flags(self, ref, flags: int) -> tuple:
        check_flags(flags, 0, "testStorageVolGetInfoFlags", P.VIR_FROM_TEST)
        return self.storage_vol_get_info(ref)

    def storage_vol_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "testStorageVolGetXMLDesc", P.VIR_FROM_TEST)
        _, vol = self._vol(ref)
        return stxml.format_volume(vol)

    def storage_vol_get_path(self, ref) -> str:
        _, vol = self._vol(ref)
        return vol.path

    def storage_vol_delete(self, ref, flags: int) -> None:
        check_flags(flags, 0, "testStorageVolDelete", P.VIR_FROM_TEST)
        pool, vol = self._vol(ref)
        del pool.volumes[vol.name]
        pool.refresh_sizes()
