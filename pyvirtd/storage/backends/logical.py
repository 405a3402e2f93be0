"""The ``logical`` backend: an LVM volume group (libvirt's storage_backend_logical.c).

    build    blank the first MiB of each source device, pvcreate it, then
             vgcreate SOURCE-NAME DEVICES (pvremove again if that fails)
    start    the VG must exist with (one of) the source devices: vgchange -aly
    refresh  lvs/vgs with --reportformat json: volumes are the active LVs
             (thin pools themselves skipped, as libvirt does), sizes in bytes
    stop     vgchange -aln;  delete: vgremove -f, pvremove each device
    volumes  lvcreate (a sparse snapshot volume when allocation < capacity),
             lvremove, lvresize; wipe writes zeroes (not on sparse volumes)
    sources  pvs: one <source> per VG with its PVs

Volumes are block devices at TARGET/NAME (TARGET is /dev/VG), keyed by the LV's
UUID.  Every tool runs as a child process (never on the event loop) and a
failure carries the tool's own words, as virCommandRun reports it.
"""

from __future__ import annotations

import json
import os
import stat as stmod
from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.names import check_name, name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import tools
from pyvirtd.storage.backends.base import VOL_BLOCK, Backend, PoolScan, Volume
from pyvirtd.storage.backends.dir import (BUILD_NO_OVERWRITE, BUILD_OVERWRITE, RESIZE_SHRINK,
                                          WIPE_ALG_LAST, WIPE_ALG_ZERO, system_error)
from pyvirtd.xml import format_libvirt

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool
    from pyvirtd.xml.storage import VolumeDef

_FROM = P.VIR_FROM_STORAGE
MiB = 1024 * 1024
LV_FIELDS = "lv_name,origin,lv_uuid,lv_size,lv_attr,data_percent,pool_lv"


def _div_up(n: int, d: int) -> int:
    return -(-n // d)


def _report(stdout: bytes, kind: str) -> list[dict[str, str]]:
    """The rows of an LVM JSON report (`--reportformat json`)."""
    data = json.loads(stdout or b"{}")
    rows: list[dict[str, str]] = []
    for report in data.get("report", []):
        rows.extend(report.get(kind, []))
    return rows


async def pv_sources() -> dict[str, list[str]]:
    """{vg name: [pv paths]} from pvs (vgscan first, as libvirt does)."""
    await tools.run(["vgscan"], check=False)
    proc = await tools.run(["pvs", "--reportformat", "json", "-o", "pv_name,vg_name"])
    found: dict[str, list[str]] = {}
    for row in _report(proc.stdout, "pv"):
        if row.get("vg_name"):
            found.setdefault(row["vg_name"], []).append(row["pv_name"])
    return found


def _zero_head(path: str, length: int) -> None:
    """virStorageBackendZeroPartitionTable: blank the first bytes of a device."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise system_error(e, f"Unable to open {path}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, bytes(min(length, size)))
        os.fsync(fd)
    except OSError as e:
        raise system_error(e, f"Unable to write to {path}") from None
    finally:
        os.close(fd)


def _zero_block(path: str) -> None:
    """Write zeroes over a whole block device (virStorageBackendVolWipeLocal, zero)."""
    chunk = bytes(4 * MiB)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise system_error(e, f"Failed to open storage volume with path '{path}'") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        done = 0
        while done < size:
            done += os.write(fd, chunk[:min(len(chunk), size - done)])
        os.fsync(fd)
    except OSError as e:
        raise system_error(e, f"Failed to write to storage volume with path '{path}'") from None
    finally:
        os.close(fd)


def _node_perms(path: str) -> tuple[int, int, int, tuple] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    times = tuple(divmod(ns, 10 ** 9) for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns))
    return stmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid, times


class LogicalBackend(Backend):
    type = "logical"

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _vg(pool: "Pool") -> str:
        return pool.definition.tree.findtext("source/name") or pool.name

    @staticmethod
    def _devices(pool: "Pool") -> list[str]:
        return [d.get("path") for d in pool.definition.tree.findall("source/device")
                if d.get("path")]

    async def _match_source(self, pool: "Pool") -> None:
        """virStorageBackendLogicalMatchPoolSource, raising libvirt's errors."""
        vg = self._vg(pool)
        sources = await pv_sources()
        if vg not in sources:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"cannot find logical volume group name '{vg}'", domain=_FROM)
        devices = self._devices(pool)
        if devices and not set(devices) & set(sources[vg]):
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, domain=_FROM, detail=(
                f"cannot find any matching source devices for logical volume group '{vg}'"))

    # ------------------------------------------------------------ pool lifecycle
    async def check(self, pool: "Pool") -> bool:
        try:
            await self._match_source(pool)
        except VirError:
            return False
        return True

    async def build(self, pool: "Pool", flags: int) -> None:
        if flags & BUILD_OVERWRITE and flags & BUILD_NO_OVERWRITE:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive"))
        done: list[str] = []
        try:
            for path in self._devices(pool):
                if not flags & BUILD_OVERWRITE:
                    await self._check_empty(pool, path)
                await pool.io(_zero_head, path, MiB)
                await tools.run(["pvcreate", path])
                done.append(path)
            await tools.run(["vgcreate", self._vg(pool), *done])
        except BaseException:
            for path in done:
                await tools.run(["pvremove", path], check=False)
            raise

    @staticmethod
    async def _check_empty(pool: "Pool", path: str) -> None:
        """virStorageBackendDeviceIsEmpty: a device holding a file system or a PV
        is not overwritten without VIR_STORAGE_POOL_BUILD_OVERWRITE."""
        if not await pool.io(os.path.exists, path):
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                f"Source device does not exist when formatting pool '{pool.name}'"))
        found = await tools.run(["blkid", "-p", "-o", "value", "-s", "TYPE", path], check=False)
        existing = found.stdout.decode().strip() if found.returncode == 0 else ""
        if not existing:
            return
        if existing == "LVM2_member":
            raise VirError(P.VIR_ERR_STORAGE_POOL_BUILT, domain=_FROM, message=(
                f"Device '{path}' already formatted using 'LVM2_member'"))
        raise VirError(P.VIR_ERR_OPERATION_FAILED, domain=_FROM, detail=(
            f"Format of device '{path}' does not match the expected format 'LVM2_member', "
            "forced overwrite is necessary"))

    async def start(self, pool: "Pool") -> None:
        await self._match_source(pool)
        await tools.run(["vgchange", "-aly", self._vg(pool)])

    async def refresh(self, pool: "Pool") -> PoolScan:
        await tools.run(["udevadm", "settle"], check=False)     # virWaitForDevices
        vg = self._vg(pool)
        lvs = await tools.run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", LV_FIELDS, vg])
        vgs = await tools.run(["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", "vg_size,vg_free", vg])
        rows = _report(vgs.stdout, "vg")
        if not rows:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"cannot parse vgs output for '{vg}'",
                           domain=_FROM)
        capacity, available = int(rows[0]["vg_size"]), int(rows[0]["vg_free"])
        volumes = [v for row in _report(lvs.stdout, "lv")
                   if (v := await self._volume(pool, row)) is not None]
        return PoolScan(capacity, capacity - available, available, volumes)

    async def _volume(self, pool: "Pool", row: dict[str, str]) -> Volume | None:
        """virStorageBackendLogicalMakeVol: one LV of the lvs report, or None to skip."""
        attrs = row.get("lv_attr", "")
        if len(attrs) < 5 or attrs[4] != "a" or attrs[0] == "t":
            return None     # inactive, or a thin pool (no /dev node)
        path = f"{pool.target_path}/{row['lv_name']}"
        size = int(row["lv_size"])
        allocation = size
        sparse = attrs[0] in ("s", "V")
        if sparse and row.get("data_percent"):
            allocation = int(size * float(row["data_percent"]) / 100)
        vol = Volume(name=row["lv_name"], path=path, key=row["lv_uuid"], type=VOL_BLOCK,
                     format="", capacity=size, allocation=allocation, physical=size)
        vol.extra["sparse"] = sparse
        origin = row.get("origin", "")
        if origin and not origin.startswith("["):
            bpath = f"{pool.target_path}/{origin}"
            vol.backing = Volume(name=origin, path=bpath, key=bpath, type=VOL_BLOCK,
                                 format="lvm2")
        perms = await pool.io(_node_perms, path)
        if perms is not None:
            vol.mode, vol.owner, vol.group, vol.times = perms
        return vol

    async def stop(self, pool: "Pool") -> None:
        await tools.run(["vgchange", "-aln", self._vg(pool)])

    async def delete(self, pool: "Pool", flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendLogicalDeletePool", _FROM)
        await tools.run(["vgremove", "-f", self._vg(pool)])
        for path in self._devices(pool):
            await tools.run(["pvremove", path], check=False)

    # ------------------------------------------------------------------- volumes
    def volume_path(self, pool: "Pool", name: str) -> str:
        return str(name_path(pool.target_path, check_name("volume", name)))

    async def create_vol(self, pool: "Pool", voldef: "VolumeDef", vol: Volume,
                         flags: int) -> None:
        check_flags(flags, 0, "virStorageBackendLogicalCreateVol", _FROM)
        vol.type, vol.format = VOL_BLOCK, ""
        argv = ["lvcreate", "--name", vol.name, "-L"]
        if vol.capacity != vol.allocation:
            argv += [f"{_div_up(vol.allocation or 1, 1024)}K", "--type", "snapshot",
                     "--virtualsize"]
        argv.append(f"{_div_up(vol.capacity, 1024)}K")
        if vol.backing is not None:
            argv += ["-s", vol.backing.path]
        else:
            argv.append(self._vg(pool))
        argv.append("--yes")
        await tools.run(argv)
        try:
            await tools.run(["udevadm", "settle"], check=False)
            mode, owner, group = _vol_perms(voldef)
            await pool.io(_set_perms, vol.path, mode, owner, group)
        except BaseException:
            await tools.run(["lvremove", "-f", vol.path], check=False)
            raise

    async def refresh_vol(self, pool: "Pool", vol: Volume) -> Volume:
        lvs = await tools.run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", LV_FIELDS, f"{self._vg(pool)}/{vol.name}"], check=False)
        rows = _report(lvs.stdout, "lv") if lvs.returncode == 0 else []
        fresh = await self._volume(pool, rows[0]) if rows else None
        if fresh is None:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL, domain=_FROM,
                           message=f"no storage vol with matching path '{vol.path}'")
        return fresh

    async def delete_vol(self, pool: "Pool", vol: Volume, flags: int) -> None:
        await tools.run(["udevadm", "settle"], check=False)
        removed = await tools.run(["lvremove", "-f", vol.path], check=False)
        if removed.returncode != 0:
            await tools.run(["lvchange", "-aln", vol.path])
            await tools.run(["lvremove", "-f", vol.path])

    async def resize_vol(self, pool: "Pool", vol: Volume, capacity: int, flags: int) -> None:
        argv = ["lvresize", "-L", f"{_div_up(capacity, 1024)}K"]
        if flags & RESIZE_SHRINK:
            argv.append("--force")
        await tools.run([*argv, vol.path])

    async def wipe_vol(self, pool: "Pool", vol: Volume, algorithm: int, flags: int) -> None:
        if algorithm < 0 or algorithm >= WIPE_ALG_LAST:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"wiping algorithm {algorithm} not supported",
                           domain=_FROM)
        if vol.extra.get("sparse"):
            raise VirError(P.VIR_ERR_NO_SUPPORT, domain=_FROM, detail=(
                f"logical volume '{vol.path}' is sparse, volume wipe not supported"))
        if algorithm != WIPE_ALG_ZERO:
            from pyvirtd.storage.backends.dir import _SCRUB
            await tools.run(["scrub", "-f", "-p", _SCRUB.get(algorithm, "random"), vol.path])
            return
        await pool.io(_zero_block, vol.path)

    # ----------------------------------------------------------------- discovery
    async def find_sources(self, spec: str | None, flags: int) -> str:
        check_flags(flags, 0, "virStorageBackendLogicalFindPoolSources", _FROM)
        root = etree.Element("sources")
        for vg, pvs in (await pv_sources()).items():
            src = etree.SubElement(root, "source")
            for pv in pvs:
                etree.SubElement(src, "device", path=pv)
            etree.SubElement(src, "name").text = vg
            etree.SubElement(src, "format", type="lvm2")
        return format_libvirt(root)


def _vol_perms(voldef: "VolumeDef") -> tuple[int | None, int | None, int | None]:
    perms = voldef.tree.find("target/permissions")

    def num(tag: str, base: int) -> int | None:
        text = (perms.findtext(tag) or "").strip() if perms is not None else ""
        return int(text, base) if text and text != "-1" else None
    return num("mode", 8), num("owner", 10), num("group", 10)


def _set_perms(path: str, mode: int | None, owner: int | None, group: int | None) -> None:
    from pyvirtd.storage.backends.dir import DEFAULT_VOL_MODE
    try:
        if os.geteuid() == 0:
            os.chown(path, -1 if owner is None else owner, -1 if group is None else group)
        os.chmod(path, DEFAULT_VOL_MODE if mode is None else mode)
    except OSError as e:
        raise system_error(e, f"cannot set file mode '{path}'") from None
