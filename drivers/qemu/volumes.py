"""<disk type='volume'>: what a guest's volume disks stand for, asked of the storage subsystem.

libvirt translates such a disk when the guest starts
(virDomainDiskTranslateSourcePool, which qemuProcessPrepareDomainStorage
calls for each disk, the last one first) through the public storage API:
look the pool up by name, insist that it is active, look the volume up by
name, then ask for its info and path.  The same steps here, on the daemon's
storage service (``ctx.services.storage``), give the same errors:

    unknown pool        VIR_ERR_NO_STORAGE_POOL   (from the storage driver)
    inactive pool       VIR_ERR_CONFIG_UNSUPPORTED "storage pool 'P' containing
                        volume 'V' is not active"  (from the domain config)
    unknown volume      VIR_ERR_NO_STORAGE_VOL    (from the storage driver)
    mode='...' outside an iscsi pool               VIR_ERR_XML_ERROR

File and directory volumes become files, block volumes (logical, iSCSI
LUNs) block devices.  The format is NOT the volume's: libvirt leaves it
unset, and the QEMU driver, which never probes formats, opens the disk as
raw unless <driver type=...> names one (libvirtd 9.0 shows
``<driver name='qemu' type='raw'/>`` in the live XML of a disk on a qcow2
volume).  The volume's info is refreshed on its pool's own threads, so a
pool whose storage hangs stalls only the start that needs it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.storage.backends.base import VOL_BLOCK, VOL_DIR, VOL_FILE, VOL_TYPE_NAMES
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml

from .command import VolumeSource

if TYPE_CHECKING:
    from .guest import QemuState

log = logging.getLogger(__name__)

# Pool types whose volumes a disk can use by path (the first case of
# virDomainStorageSourceTranslateSourcePool), and iSCSI, whose default mode
# ('host') uses the LUN's block device on the host.
_PATH_POOLS = ("dir", "fs", "netfs", "logical", "disk", "scsi", "zfs", "vstorage")
_ISCSI_POOLS = ("iscsi",)


def volume_disks(defn: domxml.DomainDef) -> list[devmod.Disk]:
    """The volume disks that name a volume (an empty cdrom of that type has nothing to resolve)."""
    return [d for d in devmod.parse_devices(defn)
            if isinstance(d, devmod.Disk) and d.type == "volume" and d.pool]


async def resolve_disk(state: QemuState, disk: devmod.Disk) -> VolumeSource:
    """The storage behind one volume disk (virDomainDiskTranslateSourcePool).

    :raises VirError: see the module docstring.
    """
    storage = state.ctx.services.storage
    if not storage.pool_is_active(disk.pool):
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"storage pool '{disk.pool}' containing volume '{disk.volume}' "
                       "is not active", domain=P.VIR_FROM_DOMAIN)
    vol = storage.resolve_volume(disk.pool, disk.volume)
    pool_type = vol.pool_type
    mode = (disk.source_extra or {}).get("mode")
    if mode is not None and pool_type not in _ISCSI_POOLS:
        raise VirError(P.VIR_ERR_XML_ERROR, "disk source mode is only valid when storage pool "
                       "is of iscsi type", domain=P.VIR_FROM_DOMAIN)
    if pool_type in _ISCSI_POOLS:
        if mode not in (None, "host"):   # 'direct': QEMU's own iSCSI initiator
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"disk source mode '{mode}' is not supported", domain=P.VIR_FROM_QEMU)
        return VolumeSource(vol.path, block=True)
    if pool_type not in _PATH_POOLS:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"using '{pool_type}' pools for backing 'volume' disks isn't yet "
                       "supported", domain=P.VIR_FROM_DOMAIN)
    # refreshed from storage, on the pool's threads, as libvirt asks for the info
    vol = await storage.refresh_volume(disk.pool, disk.volume)
    if vol.type in (VOL_FILE, VOL_DIR):
        return VolumeSource(vol.path, block=False)
    if vol.type == VOL_BLOCK:
        return VolumeSource(vol.path, block=True)
    raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=P.VIR_FROM_DOMAIN, message=(
        f"internal error: unexpected storage volume type '{VOL_TYPE_NAMES[vol.type]}' "
        f"for storage pool type '{pool_type}'"))


async def resolve_all(state: QemuState,
                      defn: domxml.DomainDef) -> dict[tuple[str, str], VolumeSource]:
    """Every volume disk of ``defn``, last disk first as libvirt goes (so the
    first error is the one libvirtd reports), keyed by (pool, volume)."""
    found: dict[tuple[str, str], VolumeSource] = {}
    for disk in reversed(volume_disks(defn)):
        key = (disk.pool, disk.volume)
        if key not in found:
            found[key] = await resolve_disk(state, disk)
    return found


def set_live_formats(live: domxml.DomainDef) -> None:
    """Volume disks without a format run as raw, and their live XML says so (as libvirtd's)."""
    for elem in live.devices_of("disk"):
        if elem.get("type") != "volume" or elem.find("source") is None:
            continue
        drv = elem.find("driver")
        if drv is None:
            drv = etree.Element("driver", name="qemu")
            elem.insert(0, drv)
        if not drv.get("type"):
            drv.set("type", "raw")


def paths_by_target(defn: domxml.DomainDef,
                    sources: dict[tuple[str, str], VolumeSource]) -> dict[str, str]:
    """Disk target -> host path, for what needs the real file (block info, stats)."""
    return {d.target: sources[(d.pool, d.volume)].path for d in volume_disks(defn)
            if (d.pool, d.volume) in sources}


async def paths_after_restart(state: QemuState, defn: domxml.DomainDef) -> dict[str, str]:
    """The paths again for a guest a restarted daemon reattached to (qemuProcessReconnect
    translates its volume disks once more); a volume that is gone is only logged."""
    out: dict[str, str] = {}
    for disk in volume_disks(defn):
        try:
            out[disk.target] = (await resolve_disk(state, disk)).path
        except VirError as exc:
            log.warning("%s: disk %s: %s", defn.name, disk.target, exc)
    return out
