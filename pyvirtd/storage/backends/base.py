"""The storage backend interface: what one pool type does with real storage.

A backend is stateless; every call gets the `Pool` it works on (its
definition, its thread limiter, its volumes).  The subsystem
(pyvirtd/storage/subsystem.py) owns pool state, locking, persistence and
events; a backend only touches storage.  Blocking work never runs on the
event loop: file-system calls go through ``pool.io(fn, ...)`` (a thread of
that pool's own limiter, so a dead NFS server or a stuck device can only use
up that pool's threads) and tools through `pyvirtd.storage.tools.run`.

Every method has a default that says "not supported", as libvirt answers for
a backend lacking the callback, so a backend implements only what it does:

    pool lifecycle   check, build, start, refresh, stop, delete
    volumes          create_vol, create_vol_from, refresh_vol, delete_vol,
                     resize_vol, wipe_vol
    data             open_vol (for upload and download streams)
    discovery        find_sources

Backends: ``dir`` and ``fs`` (tested on the host), ``logical``
(vgcreate/vgchange/lvs --reportformat json/lvcreate/lvremove/lvresize;
volumes are block devices, so `open_vol` is the default), ``netfs`` (the
``fs`` backend with mount.nfs and ``find_sources`` via showmount) and
``iscsi`` (iscsiadm login/logout in start/stop, LUNs as volumes that cannot
be created: ``create_vol`` stays unsupported); those three are tested in
the lab VM (tests/lab/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool
    from pyvirtd.xml.encryption import Encryption
    from pyvirtd.xml.storage import VolumeDef

# virStorageVolType
VOL_FILE = P.StorageVolType.VIR_STORAGE_VOL_FILE
VOL_BLOCK = P.StorageVolType.VIR_STORAGE_VOL_BLOCK
VOL_DIR = P.StorageVolType.VIR_STORAGE_VOL_DIR
VOL_NETWORK = P.StorageVolType.VIR_STORAGE_VOL_NETWORK
VOL_NETDIR = P.StorageVolType.VIR_STORAGE_VOL_NETDIR
VOL_PLOOP = P.StorageVolType.VIR_STORAGE_VOL_PLOOP
VOL_TYPE_NAMES = ("file", "block", "dir", "network", "netdir", "ploop")


@dataclass
class Volume:
    """What a refresh found out about one volume (the runtime truth, not a definition)."""
    name: str
    path: str
    key: str
    type: int = VOL_FILE
    format: str = "raw"
    capacity: int = 0
    allocation: int = 0
    physical: int = 0
    mode: int = 0o600
    owner: int = 0
    group: int = 0
    # (atime, mtime, ctime) as (seconds, nanoseconds)
    times: tuple[tuple[int, int], ...] = ()
    backing: "Volume | None" = None
    encryption: "Encryption | None" = None     # how the image is encrypted (refresh finds it)
    building: bool = False          # being created: not usable yet
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolScan:
    """A refresh's result: the pool's sizes, its target's permissions and its volumes."""
    capacity: int
    allocation: int
    available: int
    volumes: list[Volume]
    target_perms: tuple[int, int, int] | None = None    # mode, owner, group


def no_support(detail: str) -> VirError:
    return VirError(P.VIR_ERR_NO_SUPPORT, detail, domain=P.VIR_FROM_STORAGE)


class Backend:
    """Defaults: everything unsupported except what every pool can do trivially."""

    #: the pool type this backend serves (<pool type='...'>)
    type: str = ""

    # ------------------------------------------------------------ pool lifecycle
    async def check(self, pool: "Pool") -> bool:
        """Is the pool's storage available right now (daemon start: was it left running)?"""
        return False

    async def build(self, pool: "Pool", flags: int) -> None:
        """Prepare the storage (mkdir, mkfs, vgcreate); the pool is inactive."""
        raise no_support("pool build")

    async def start(self, pool: "Pool") -> None:
        """Make the storage available (mount, vgchange -ay, iscsi login)."""

    async def refresh(self, pool: "Pool") -> PoolScan:
        """Find the sizes and the volumes; called after start and on pool-refresh."""
        raise no_support("pool refresh")

    async def stop(self, pool: "Pool") -> None:
        """Undo start (umount, vgchange -an, iscsi logout)."""

    async def delete(self, pool: "Pool", flags: int) -> None:
        """Destroy the storage itself (rmdir, vgremove); the pool is inactive."""
        raise no_support("pool deletion")

    # ------------------------------------------------------------------- volumes
    def volume_path(self, pool: "Pool", name: str) -> str:
        """Where a new volume of this name goes (its path and key)."""
        raise no_support("storage pool does not support volume creation")

    async def create_vol(self, pool: "Pool", voldef: "VolumeDef", vol: Volume,
                         flags: int) -> None:
        raise no_support("storage pool does not support volume creation")

    async def create_vol_from(self, pool: "Pool", voldef: "VolumeDef", vol: Volume,
                              source: Volume, flags: int) -> None:
        raise no_support("storage pool does not support volume creation")

    async def refresh_vol(self, pool: "Pool", vol: Volume) -> Volume:
        """The volume's current sizes and format (a new Volume)."""
        return vol

    async def delete_vol(self, pool: "Pool", vol: Volume, flags: int) -> None:
        raise no_support("storage pool does not support vol deletion")

    async def resize_vol(self, pool: "Pool", vol: Volume, capacity: int, flags: int) -> None:
        raise no_support("storage pool does not support changing of volume capacity")

    async def wipe_vol(self, pool: "Pool", vol: Volume, algorithm: int, flags: int) -> None:
        raise no_support("storage pool does not support volume wiping")

    def open_vol(self, vol: Volume, writing: bool) -> int:
        """A file descriptor on the volume's data (called in a pool thread)."""
        import os
        return os.open(vol.path, (os.O_WRONLY if writing else os.O_RDONLY) | os.O_CLOEXEC)

    # ----------------------------------------------------------------- discovery
    async def find_sources(self, spec: str | None, flags: int) -> str:
        raise no_support(f"pool type '{self.type}' does not support source discovery")
