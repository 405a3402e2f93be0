"""One storage pool's state, and the files that keep pools across daemon restarts.

Files (as libvirtd's storage driver keeps them):

    STATE/storage/NAME.xml               the persistent definition
    STATE/storage/autostart/NAME.xml     a symlink to it when autostart is on
    RUN/storage/NAME.xml                 the live definition of an active pool
                                         (how a restarted daemon knows what ran)

Every file is written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves the old definition or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
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
class Pool:
    definition: stxml.PoolDef          # what is defined (persistent) or running (transient)
    backend: Backend
    persistent: bool = False
    active: bool = False
    autostart: bool = False
    new_def: stxml.PoolDef | None = None   # a redefinition while active, applied on stop
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
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

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


# --- files --------------------------------------------------------------------


def remove_quiet(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class PoolFiles:
    """Where pool definitions, autostart links and live states live."""

    def __init__(self, state_dir: Path, run_dir: Path) -> None:
        self.config_dir = Path(state_dir) / "storage"
        self.autostart_dir = self.config_dir / "autostart"
        self.status_dir = Path(run_dir) / "storage"

    def config(self, name: str) -> Path:
        return name_path(self.config_dir, name, ".xml")

    def autostart_link(self, name: str) -> Path:
        return name_path(self.autostart_dir, name, ".xml")

    def status(self, name: str) -> Path:
        return name_path(self.status_dir, name, ".xml")

    def save_config(self, pdef: stxml.PoolDef) -> None:
        write_atomic(self.config(pdef.name), stxml.format_pool(pdef))

    def remove_config(self, name: str) -> None:
        remove_quiet(self.config(name))
        remove_quiet(self.autostart_link(name))

    def set_autostart(self, name: str, on: bool) -> None:
        link = self.autostart_link(name)
        if on:
            self.autostart_dir.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(self.config(name))
        else:
            remove_quiet(link)

    def save_status(self, pdef: stxml.PoolDef) -> None:
        write_atomic(self.status(pdef.name), stxml.format_pool(pdef))

    def remove_status(self, name: str) -> None:
        remove_quiet(self.status(name))

    def load(self) -> tuple[list[tuple[stxml.PoolDef, bool]], list[stxml.PoolDef]]:
        """(persistent definitions with their autostart, live states)."""
        configs = [(pdef, self.autostart_link(pdef.name).exists())
                   for pdef in _read_all(self.config_dir)]
        return configs, _read_all(self.status_dir)


def _read_all(directory: Path) -> list[stxml.PoolDef]:
    import logging
    out = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.xml")):
        try:
            pdef = stxml.parse_pool(path.read_text())
        except (OSError, VirError) as exc:
            logging.getLogger(__name__).error("ignoring pool file %s: %s", path, exc)
            continue
        if pdef.name != path.stem:
            logging.getLogger(__name__).error("ignoring pool file %s: it defines '%s'",
                                              path, pdef.name)
            continue
        out.append(pdef)
    return out
