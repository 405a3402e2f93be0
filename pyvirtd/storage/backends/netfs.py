"""The ``netfs`` backend: an NFS export mounted by pyvirtd (libvirt's
storage_backend_fs.c, netfs part).

    <source><host name='HOST'/><dir path='/export'/><format type='nfs'/></source>

build makes the mount point only; start runs ``mount -t nfs HOST:/export
TARGET`` (format auto: mount guesses), stop ``umount TARGET``.  Volumes are
files, as in a ``dir`` pool.  find-storage-pool-sources asks ``showmount -e``.

A dead NFS server hangs mount, umount and every file-system call on the
target: they all run as child processes or on the pool's own threads
(`Pool.io`), so only calls on this pool stall; nothing reads the mount
point to list pools or volumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import tools
from pyvirtd.storage.backends.dir import DirBackend
from pyvirtd.storage.backends.fs import FsBackend, mounted_at
from pyvirtd.xml import format_libvirt, parse_definition

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool

_FROM = P.VIR_FROM_STORAGE
NETFS_FORMATS = ("auto", "nfs", "glusterfs", "cifs")


class NetfsBackend(FsBackend):
    type = "netfs"

    def _source(self, pool: "Pool") -> str:
        """HOST:/dir, as mount.nfs wants it."""
        tree = pool.definition.tree
        host = tree.find("source/host")
        if host is None or not host.get("name"):
            raise VirError(P.VIR_ERR_INVALID_ARG, "missing source host", domain=_FROM)
        directory = tree.find("source/dir")
        if directory is None or not directory.get("path"):
            raise VirError(P.VIR_ERR_INVALID_ARG, "missing source path", domain=_FROM)
        return f"{host.get('name')}:{directory.get('path')}"

    async def build(self, pool: "Pool", flags: int) -> None:
        await DirBackend.build(self, pool, flags)     # the mount point; nothing to format

    async def start(self, pool: "Pool") -> None:
        source, fmt, target = self._source(pool), self._format(pool), pool.target_path
        if fmt not in NETFS_FORMATS:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, domain=_FROM, message=(
                f"internal error: unknown network file system format {fmt}"))
        if await pool.io(mounted_at, target) is not None:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"Target '{target}' is already mounted", domain=_FROM)
        argv = ["mount"]
        if fmt != "auto":
            argv += ["-t", fmt]
        # libvirt mounts network file systems nodev,nosuid,noexec
        argv += ["-o", "nodev,nosuid,noexec", source, target]
        await tools.run(argv)

    async def find_sources(self, spec: str | None, flags: int) -> str:
        """virStorageBackendFileSystemNetFindPoolSources: the exports of a host."""
        check_flags(flags, 0, "virStorageBackendFileSystemNetFindPoolSources", _FROM)
        if not spec:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "hostname must be specified for netfs sources"))
        root = parse_definition(spec, "source", what="source specification", domain=_FROM)
        host = root.find("host")
        name = host.get("name") if host is not None else None
        if not name:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "hostname must be specified for netfs sources"))
        fmt = root.find("format")
        fmt_name = fmt.get("type") if fmt is not None else "nfs"
        proc = await tools.run(["showmount", "--no-headers", "--exports", name])
        out = etree.Element("sources")
        for line in proc.stdout.decode(errors="replace").splitlines():
            fields = line.split()
            if not fields or not fields[0].startswith("/"):
                continue
            src = etree.SubElement(out, "source")
            etree.SubElement(src, "host", name=name)
            etree.SubElement(src, "dir", path=fields[0])
            etree.SubElement(src, "format", type=fmt_name if fmt_name != "auto" else "nfs")
        return format_libvirt(out)
