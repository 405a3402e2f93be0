"""The ``fs`` backend: a file system on a block device, mounted by pyvirtd
(libvirt's storage_backend_fs.c, fs part).

build makes the target directory and, with OVERWRITE or NO_OVERWRITE, the file
system (``mkfs -t FORMAT DEVICE``; NO_OVERWRITE first asks blkid whether the
device already holds something); start mounts the device on the target,
stop unmounts it.  Volumes are files, as in a ``dir`` pool.  ``netfs``
(NFS, later) differs only in how its source is named and mounted.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import tools
from pyvirtd.storage.backends.dir import BUILD_NO_OVERWRITE, BUILD_OVERWRITE, DirBackend

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool

_FROM = P.VIR_FROM_STORAGE


def _unescape_mount_field(field: str) -> str:
    """/proc/self/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounted_at(target: str) -> str | None:
    """The source mounted on ``target`` (the last mount wins), or None."""
    source = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2 and _unescape_mount_field(fields[1]) == target:
                source = _unescape_mount_field(fields[0])
    return source


class FsBackend(DirBackend):
    type = "fs"

    def _device(self, pool: "Pool") -> str:
        dev = pool.definition.tree.find("source/device")
        path = dev.get("path") if dev is not None else None
        if not path:
            raise VirError(P.VIR_ERR_INVALID_ARG, "missing source device", domain=_FROM)
        return path

    def _format(self, pool: "Pool") -> str:
        return pool.definition.tree.find("source/format").get("type", "auto")

    async def check(self, pool: "Pool") -> bool:
        return await pool.io(mounted_at, pool.target_path) is not None

    async def build(self, pool: "Pool", flags: int) -> None:
        await super().build(pool, flags)         # the mount point
        if not flags & (BUILD_OVERWRITE | BUILD_NO_OVERWRITE):
            return
        device, fmt = self._device(pool), self._format(pool)
        if fmt == "auto":
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, domain=_FROM, message=(
                "Operation not supported: cannot make file system of type 'auto': "
                "name a <format type='...'/> in the pool's source"))
        if flags & BUILD_NO_OVERWRITE:
            found = await tools.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device],
                                    check=False)
            if found.returncode == 0 and found.stdout.strip():
                existing = found.stdout.decode().strip()
                raise VirError(P.VIR_ERR_STORAGE_POOL_BUILT, domain=_FROM, message=(
                    f"Device '{device}' already formatted using '{existing}'"))
            if found.returncode not in (0, 2):     # 2: nothing found
                raise tools.tool_error(["blkid", device], found.returncode, found.stderr)
        if not await pool.io(os.path.exists, device):
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                f"Source device does not exist when formatting pool '{pool.name}'"))
        argv = ["mkfs", "-t", fmt]
        if fmt.startswith("ext"):
            argv.append("-F")        # a whole device holding no partition table is fine
        elif fmt == "xfs":
            argv.append("-f")
        await tools.run([*argv, device])

    async def start(self, pool: "Pool") -> None:
        device, fmt, target = self._device(pool), self._format(pool), pool.target_path
        current = await pool.io(mounted_at, target)
        if current is not None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"Target '{target}' is already mounted", domain=_FROM)
        if not await pool.io(os.path.exists, device):
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                f"Source device '{device}' does not exist"))
        argv = ["mount"]
        if fmt != "auto":
            argv += ["-t", fmt]
        await tools.run([*argv, device, target])

    async def stop(self, pool: "Pool") -> None:
        if await pool.io(mounted_at, pool.target_path) is None:
            return
        await tools.run(["umount", pool.target_path])
