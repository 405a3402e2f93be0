"""One storage pool's state, and the files that keep pools across daemon restarts.

Files (as libvirtd's storage driver keeps them):

    STATE/storage/NAME.xml               the persistent definition
    STATE/storage/autostart/NAME.xml     a symlink to it when autostart is on
    RUN/storage/NAME.xml                 the live definition of an active pool
                                         (how a restarted daemon knows what ran)

Every file is written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves the old definition or the new one; the layout
and the writing are `pyvirtd.driver.store`'s, shared with networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from pyvirtd.driver.objects import STORAGE_POOL, DefinedObject
from pyvirtd.driver.store import ObjectStore
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.storage.backends.base import Backend, Volume
from pyvirtd.xml import storage as stxml

T = TypeVar("T")

# Threads one pool may occupy at once.  A pool whose storage hangs (a dead NFS
# server, a stuck device) blocks at most this many threads, in its own
# limiter, so trio's shared thread pool and every other pool stay usable.
POOL_THREADS = 4

# virStoragePoolState
POOL_INACTIVE, POOL_BUILDING, POOL_RUNNING, POOL_DEGRADED, POOL_INACCESSIBLE = range(5)


@dataclass(eq=False)
class Pool(DefinedObject):
    """One pool (definition, new_def, active, persistent, autostart: `DefinedObject`)."""
    definition: stxml.PoolDef
    new_def: stxml.PoolDef | None = None
    backend: Backend = field(kw_only=True)
    volumes: dict[str, Volume] = field(default_factory=dict)
    # sizes and target permissions found by the last refresh
    capacity: int = 0
    allocation: int = 0
    available: int = 0
    perms: tuple[int, int, int] | None = None
    # Lifecycle operations (build, start, refresh, stop, delete) of one pool
    # are serialised; nothing else ever waits for this lock.
    lock: trio.Lock = field(default_factory=trio.Lock)
    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(POOL_THREADS))
    asyncjobs: int = 0                  # volume builds and streams in flight
    starting: bool = False

    @property
    def type(self) -> str:
        return self.definition.type

    @property
    def target_path(self) -> str:
        return self.definition.target_path

    def ref(self) -> P.remote_nonnull_storage_pool:
        return P.remote_nonnull_storage_pool(self.name, self.uuid)

    def vol_ref(self, vol: Volume) -> P.remote_nonnull_storage_vol:
        return P.remote_nonnull_storage_vol(self.name, vol.name, vol.key)

    def target_perms(self) -> tuple[int | None, int | None, int | None]:
        """<target><permissions> of the definition: (mode, owner, group), None when unset."""
        perms = self.definition.tree.find("target/permissions")
        if perms is None:
            return None, None, None

        def num(tag: str, base: int) -> int | None:
            text = (perms.findtext(tag) or "").strip()
            return int(text, base) if text and text != "-1" else None
        return num("mode", 8), num("owner", 10), num("group", 10)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file-system work on one of this pool's threads.

        A cancelled caller (its client went away) stops waiting at once; the
        thread finishes, or stays stuck, on its own.
        """
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter,
                                             abandon_on_cancel=True)

    def not_active(self) -> VirError:
        return VirError(P.VIR_ERR_OPERATION_INVALID, f"storage pool '{self.name}' is not active",
                        domain=P.VIR_FROM_STORAGE)

    def xml(self, inactive: bool = False) -> str:
        """The pool's XML: the definition with its sizes and target permissions."""
        pdef = (self.new_def if inactive and self.new_def is not None else self.definition).copy()
        pdef.set_sizes(self.capacity, self.allocation, self.available)
        if self.perms is not None and self.active and pdef.tree.find("target") is not None:
            set_target_perms(pdef, self.perms)
        return stxml.format_pool(pdef)


def set_target_perms(pdef: stxml.PoolDef, perms: tuple[int, int, int]) -> None:
    from lxml import etree
    target = pdef.tree.find("target")
    elem = target.find("permissions")
    if elem is None:
        elem = etree.SubElement(target, "permissions")
    mode, owner, group = perms
    for tag, value in (("mode", f"{mode:04o}"), ("owner", str(owner)), ("group", str(group))):
        sub = elem.find(tag)
        if sub is None:
            sub = etree.SubElement(elem, tag)
        sub.text = value
    stxml._sort(elem, stxml.PERM_CHILDREN)
    stxml._sort(target, stxml.TARGET_CHILDREN)


# --- the list and the files -------------------------------------------------

# virConnectListAllStoragePoolsFlags: the six state filters, then one bit per pool type
LIST_ALL = STORAGE_POOL.list_flags


def pool_store(state_dir: Path | str, run_dir: Path | str) -> ObjectStore:
    """Where pool definitions, autostart links and live states live (see the module doc)."""
    return ObjectStore(Path(state_dir) / "storage", Path(run_dir) / "storage",
                       parse=stxml.parse_pool, format=stxml.format_pool, what="pool",
                       error_domain=P.VIR_FROM_STORAGE)
