"""The ``dir`` backend: a directory of image files (libvirt's storage_backend_fs.c, dir part).

Also the base of every file-backed pool (``fs`` here, ``netfs`` later): the
volume code lives here once.  Raw volumes are created as libvirt creates them
(ftruncate to the capacity, then the allocation written for real), every
other format with ``qemu-img create``; a refresh probes each file's header
and asks ``qemu-img info`` only about files that are not raw, so listing a
pool of a thousand raw images costs a thousand stat() calls, not a thousand
processes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stmod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pyvirtd.errors import VirError
from pyvirtd.names import check_name, name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import luks, tools
from pyvirtd.storage.backends.base import (VOL_DIR, VOL_FILE, Backend, PoolScan, Volume,
                                           no_support)

if TYPE_CHECKING:
    from pyvirtd.storage.pool import Pool
    from pyvirtd.xml.encryption import Encryption
    from pyvirtd.xml.storage import VolumeDef

_FROM = P.VIR_FROM_STORAGE

# src/storage/storage_util.h: VIR_STORAGE_DEFAULT_POOL_PERM_MODE / _VOL_PERM_MODE
DEFAULT_POOL_MODE = 0o711
DEFAULT_VOL_MODE = 0o600

# virStorageVolCreateFlags / virStorageVolResizeFlags / virStoragePoolBuildFlags
VOL_CREATE_PREALLOC_METADATA = P.StorageVolCreateFlags.VIR_STORAGE_VOL_CREATE_PREALLOC_METADATA
VOL_CREATE_REFLINK = P.StorageVolCreateFlags.VIR_STORAGE_VOL_CREATE_REFLINK
RESIZE_ALLOCATE = P.StorageVolResizeFlags.VIR_STORAGE_VOL_RESIZE_ALLOCATE
RESIZE_DELTA = P.StorageVolResizeFlags.VIR_STORAGE_VOL_RESIZE_DELTA
RESIZE_SHRINK = P.StorageVolResizeFlags.VIR_STORAGE_VOL_RESIZE_SHRINK
BUILD_NEW = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_NEW
BUILD_REPAIR = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_REPAIR
BUILD_RESIZE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_RESIZE
BUILD_NO_OVERWRITE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
BUILD_OVERWRITE = P.StoragePoolBuildFlags.VIR_STORAGE_POOL_BUILD_OVERWRITE
WIPE_ALG_ZERO = P.StorageVolWipeAlgorithm.VIR_STORAGE_VOL_WIPE_ALG_ZERO
WIPE_ALG_LAST = P.StorageVolWipeAlgorithm.VIR_STORAGE_VOL_WIPE_ALG_LAST
# scrub(1)'s names for virStorageVolWipeAlgorithm 1..9 (storage_util.c)
_SCRUB = {1: "nnsa", 2: "dod", 3: "bsi", 4: "gutmann", 5: "schneier", 6: "pfitzner7",
          7: "pfitzner33", 8: "random"}

# Header magics of the image formats qemu-img understands; anything else is raw
# (virStorageFileProbeFormat trusts the same few bytes).
_MAGICS = ((0, b"QFI\xfb", "qcow2"), (0, b"QED\x00", "qed"), (0, b"KDMV", "vmdk"),
           (0, b"conectix", "vpc"), (64, b"\x7f\x10\xda\xbe", "vdi"), (0, b"WithoutFreSpacExt", "ploop"),
           (0, b"OOOM", "cow"), (0, b"LUKS\xba\xbe", "luks"))
_PROBE_BYTES = 512

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2


def system_error(err: OSError, what: str) -> VirError:
    """virReportSystemError: the message, then strerror (no code prefix)."""
    return VirError(P.VIR_ERR_SYSTEM_ERROR, domain=_FROM,
                    message=f"{what}: {os.strerror(err.errno or 0)}")


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of a file without changing its size (reads give zeroes)."""
    if length > 0 and _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                      offset, length) != 0:
        e = ctypes.get_errno()
        if e != errno.EOPNOTSUPP:
            raise OSError(e, os.strerror(e))
        os.pwrite(fd, bytes(length), offset)   # a file system without holes


def probe_format(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(_PROBE_BYTES)
    except OSError:
        return "raw"
    return format_of(head)


def format_of(head: bytes) -> str:
    """The image format the first bytes of a file announce (raw when none)."""
    for offset, magic, fmt in _MAGICS:
        if head[offset:offset + len(magic)] == magic:
            if fmt == "qcow2" and head[4:8] == b"\x00\x00\x00\x01":
                return "qcow"
            return fmt
    return "raw"


def _exists(path: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, f"volume target path '{path}' already exists",
                    domain=_FROM)


def stat_volume(name: str, path: str) -> tuple[Volume, str] | None:
    """A volume from stat() and a header probe; None for what is not a volume
    (fifos, sockets, dangling links: libvirt skips them too).  Returns the
    probed format alongside, since a non-raw one still needs qemu-img."""
    try:
        # O_NONBLOCK: a fifo must never stall a refresh (storage_util.c opens so too)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # the header from the same open file: one open per volume, not two
        # (a refresh of a pool with 1,000 volumes opens each once)
        head = _read_head(fd) if stmod.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    if stmod.S_ISDIR(st.st_mode):
        vtype, fmt = VOL_DIR, "dir"
    elif stmod.S_ISREG(st.st_mode):
        vtype, fmt = VOL_FILE, format_of(head)
    else:
        return None
    vol = Volume(name=name, path=path, key=path, type=vtype, format=fmt,
                 capacity=st.st_size, allocation=st.st_blocks * 512, physical=st.st_size,
                 mode=stmod.S_IMODE(st.st_mode), owner=st.st_uid, group=st.st_gid,
                 times=tuple(divmod(ns, 10 ** 9) for ns in (st.st_atime_ns, st.st_mtime_ns,
                                                            st.st_ctime_ns)))
    return vol, fmt


def _read_head(fd: int) -> bytes:
    try:
        return os.pread(fd, _PROBE_BYTES, 0)
    except OSError:
        return b""          # unreadable: probed as raw, as probe_format does


def _scan(path: str) -> tuple[os.statvfs_result, os.stat_result, list[tuple[Volume, str]]]:
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        raise system_error(e, f"cannot open directory '{path}'") from None
    st = os.stat(path)
    found = []
    for name in names:
        v = stat_volume(name, os.path.join(path, name))
        if v is not None:
            found.append(v)
    return os.statvfs(path), st, found


async def describe(pool: "Pool", vol: Volume, fmt: str) -> Volume:
    """Fill in what only qemu-img knows (virtual size, backing file) for non-raw images."""
    if vol.type != VOL_FILE or fmt == "raw":
        return vol
    try:
        info = await tools.qemu_img_info(vol.path)
    except VirError:
        return vol          # unreadable header: report it as the file it is
    vol.format = info.get("format", fmt)
    vol.capacity = int(info.get("virtual-size", vol.capacity))
    vol.encryption = luks.probed(info)
    if vol.format == "luks":        # a LUKS container: libvirt's raw volume, encrypted
        vol.format = "raw"
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing:
        if not os.path.isabs(backing):
            backing = os.path.join(os.path.dirname(vol.path), backing)
        found = await pool.io(stat_volume, os.path.basename(backing), backing)
        bvol = found[0] if found else Volume(name="", path=backing, key=backing)
        bvol.format = info.get("backing-filename-format") or (found[1] if found else "raw")
        vol.backing = bvol
    return vol


class DirBackend(Backend):
    type = "dir"
    #: the daemon's secret subsystem, when it has one (LUKS volumes; set by the subsystem)
    secrets: Callable[[], Any] = staticmethod(lambda: None)
    #: where qemu-img's passphrase files are kept while it runs (set by the subsystem)
    secret_dir: Path = Path("/nonexistent")

    # ------------------------------------------------------------ pool lifecycle
    async def check(self, pool: "Pool") -> bool:
        return await pool.io(os.path.isdir, pool.target_path)

    async def build(self, pool: "Pool", flags: int) -> None:
        if flags & BUILD_OVERWRITE and flags & BUILD_NO_OVERWRITE:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=_FROM, message=(
                "Flags 'VIR_STORAGE_POOL_BUILD_OVERWRITE' and "
                "'VIR_STORAGE_POOL_BUILD_NO_OVERWRITE' are mutually exclusive"))
        await pool.io(self._mkdir, pool)

    @staticmethod
    def _mkdir(pool: "Pool") -> None:
        path = pool.target_path
        mode, owner, group = pool.target_perms()
        try:
            os.makedirs(os.path.dirname(path) or "/", 0o755, exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
            os.chmod(path, DEFAULT_POOL_MODE if mode is None else mode)
            if owner is not None or group is not None:
                os.chown(path, -1 if owner is None else owner, -1 if group is None else group)
        except OSError as e:
            raise system_error(e, f"cannot create path '{path}'") from None

    async def refresh(self, pool: "Pool") -> PoolScan:
        vfs, st, found = await pool.io(_scan, pool.target_path)
        vols = [await describe(pool, v, fmt) for v, fmt in found]
        capacity = vfs.f_frsize * vfs.f_blocks
        available = vfs.f_frsize * vfs.f_bfree
        return PoolScan(capacity, capacity - available, available, vols,
                        (stmod.S_IMODE(st.st_mode), st.st_uid, st.st_gid))

    async def delete(self, pool: "Pool", flags: int) -> None:
        def rmdir(path: str) -> None:
            try:
                os.rmdir(path)
            except OSError as e:
                raise system_error(e, f"failed to remove pool '{path}'") from None
        await pool.io(rmdir, pool.target_path)

    # ------------------------------------------------------------------- volumes
    def volume_path(self, pool: "Pool", name: str) -> str:
        # Volumes of a directory pool are not recursive: no escape to ../ or a subdir
        check_name("volume", name)
        if name in (".", ".."):     # the pool's directory or its parent: always there
            raise _exists(os.path.join(pool.target_path, name))
        return str(name_path(pool.target_path, name))

    async def _check_new(self, pool: "Pool", vol: Volume) -> None:
        if await pool.io(os.path.lexists, vol.path):
            raise _exists(vol.path)

    async def create_vol(self, pool: "Pool", voldef: "VolumeDef", vol: Volume,
                         flags: int) -> None:
        await self._check_new(pool, vol)
        fmt = vol.format
        if fmt == "dir":
            await pool.io(self._create_dir, vol)
        elif fmt in ("raw", "none") and vol.backing is None and voldef.encryption is None:
            await pool.io(self._create_raw, vol, voldef)
        else:
            await self._qemu_img_create(pool, vol, voldef, flags)
        await pool.io(self._apply_perms, vol, voldef)

    @staticmethod
    def _create_dir(vol: Volume) -> None:
        try:
            os.mkdir(vol.path, 0o755)
        except OSError as e:
            raise system_error(e, f"cannot create path '{vol.path}'") from None

    @staticmethod
    def _create_raw(vol: Volume, voldef: "VolumeDef") -> None:
        """storage_util.c createRawFile: ftruncate to the capacity, then really
        allocate the requested allocation (posix_fallocate)."""
        try:
            fd = os.open(vol.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         DEFAULT_VOL_MODE)
        except OSError as e:
            raise system_error(e, f"cannot create path '{vol.path}'") from None
        try:
            try:
                os.ftruncate(fd, vol.capacity)
            except OSError as e:
                raise system_error(e, f"cannot extend file '{vol.path}'") from None
            alloc = min(voldef.allocation, vol.capacity)
            if alloc:
                try:
                    os.posix_fallocate(fd, 0, alloc)
                except OSError as e:
                    raise system_error(e, f"cannot fill file '{vol.path}'") from None
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(vol.path)
            raise
        os.close(fd)

    async def _qemu_img_create(self, pool: "Pool", vol: Volume, voldef: "VolumeDef",
                               flags: int) -> None:
        opts = self._create_options(vol, voldef, flags)
        enc = voldef.encryption
        value = self._passphrase_for_new(vol, enc) if enc is not None else None
        argv = [tools.QEMU_IMG, "create", "-f", luks.output_format(vol.format) if enc else vol.format]
        async with self._secret_files(value) as secret_args:
            if enc is not None:
                argv += secret_args
                opts = luks.create_options(vol.format, enc, _NEW_SECRET) + opts
            if opts:
                argv += ["-o", ",".join(opts)]
            # libvirt passes the capacity in KiB, rounded up
            argv += [vol.path, f"{(vol.capacity + 1023) // 1024}K"]
            try:
                await tools.run(argv)
            except BaseException:
                await pool.io(_unlink_quiet, vol.path)
                raise
        if enc is not None:     # shown in its XML until the pool is refreshed (as libvirt)
            vol.extra["encryption"] = enc

    def _passphrase_for_new(self, vol: Volume, enc: "Encryption") -> bytes:
        luks.check_creatable(vol.format, enc)
        return enc.passphrase(self.secrets())

    def _secret_files(self, value: bytes | None, alias: str = "") -> Any:
        """``--object`` arguments for a passphrase kept in a private file meanwhile."""
        return luks.secret_args(self.secret_dir, value, alias or _NEW_SECRET)

    @staticmethod
    def _create_options(vol: Volume, voldef: "VolumeDef", flags: int) -> list[str]:
        opts = []
        if vol.format == "qcow2":
            opts.append(f"compat={voldef.tree.findtext('target/compat') or '1.1'}")
        if flags & VOL_CREATE_PREALLOC_METADATA:
            if vol.format != "qcow2":
                raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, domain=_FROM, message=(
                    "metadata preallocation only available with qcow2"))
            if vol.backing is not None:
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, domain=_FROM, message=(
                    "metadata preallocation conflicts with backing store"))
            opts.append("preallocation=metadata")
        if vol.backing is not None:
            # qemu-img needs commas doubled inside an option value
            opts.append(f"backing_file={vol.backing.path.replace(',', ',,')}")
            opts.append(f"backing_fmt={vol.backing.format}")
        return opts

    @staticmethod
    def _apply_perms(vol: Volume, voldef: "VolumeDef") -> None:
        perms = voldef.tree.find("target/permissions")
        mode = DEFAULT_VOL_MODE if vol.format != "dir" else 0o755
        owner = group = -1
        if perms is not None:
            if perms.findtext("mode"):
                mode = int(perms.findtext("mode"), 8)
            owner = int(perms.findtext("owner") or -1)
            group = int(perms.findtext("group") or -1)
        try:
            os.chmod(vol.path, mode)
            if owner != -1 or group != -1:
                os.chown(vol.path, owner, group)
        except OSError as e:
            raise system_error(e, f"cannot set mode/owner of '{vol.path}'") from None

    async def create_vol_from(self, pool: "Pool", voldef: "VolumeDef", vol: Volume,
                              source: Volume, flags: int) -> None:
        await self._check_new(pool, vol)
        if vol.format == "dir" or source.format == "dir":
            raise no_support("cloning a directory volume")
        # an encrypted source is decrypted with its own secret, the copy
        # encrypted with the new volume's (storageBackendCreateQemuImg)
        secrets = self.secrets()
        src_enc = luks.known_encryption(source, secrets)
        src_value = src_enc.passphrase(secrets) if src_enc is not None else None
        enc = voldef.encryption
        value = self._passphrase_for_new(vol, enc) if enc is not None else None
        # qemu-img convert keeps holes (it skips zeroed clusters): a sparse
        # source stays sparse in the clone, as libvirt's copy does.
        async with self._secret_files(src_value, _SOURCE_SECRET) as src_args, \
                self._secret_files(value) as new_args:
            argv = [tools.QEMU_IMG, "convert", "-U", *src_args, *new_args]
            if src_value is not None:
                argv += ["--image-opts"]
                src_arg = luks.image_opts(source.path, source.format, _SOURCE_SECRET)
            else:
                argv += ["-f", source.format]
                src_arg = source.path
            argv += ["-O", luks.output_format(vol.format) if enc else vol.format]
            opts = self._create_options(vol, voldef, flags) if vol.format != "raw" else []
            if enc is not None:
                opts = luks.create_options(vol.format, enc, _NEW_SECRET) + opts
            if opts:
                argv += ["-o", ",".join(opts)]
            argv += [src_arg, vol.path]
            try:
                await tools.run(argv)
                if vol.capacity > source.capacity:
                    await self._qemu_img_resize(vol, vol.capacity, 0, new_args)
            except BaseException:
                await pool.io(_unlink_quiet, vol.path)
                raise
        if enc is not None:
            vol.extra["encryption"] = enc
        await pool.io(self._apply_perms, vol, voldef)

    @staticmethod
    async def _qemu_img_resize(vol: Volume, capacity: int, flags: int,
                               secret_args: list[str]) -> None:
        """qemu-img resize; an encrypted image is opened with the secret of ``secret_args``."""
        argv = [tools.QEMU_IMG, "resize"]
        if flags & RESIZE_SHRINK:
            argv.append("--shrink")
        if secret_args:
            argv += [*secret_args, "--image-opts",
                     luks.image_opts(vol.path, vol.format, _NEW_SECRET)]
        else:
            argv += ["-f", vol.format, vol.path]
        await tools.run([*argv, str(capacity)])

    async def refresh_vol(self, pool: "Pool", vol: Volume) -> Volume:
        found = await pool.io(stat_volume, vol.name, vol.path)
        if found is None:
            raise VirError(P.VIR_ERR_NO_STORAGE_VOL,
                           f"no storage vol with matching name '{vol.name}'", domain=_FROM)
        return await describe(pool, *found)

    async def delete_vol(self, pool: "Pool", vol: Volume, flags: int) -> None:
        def remove() -> None:
            try:
                if vol.type == VOL_DIR:
                    os.rmdir(vol.path)
                else:
                    os.unlink(vol.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise system_error(e, f"cannot unlink file '{vol.path}'") from None
        await pool.io(remove)

    async def resize_vol(self, pool: "Pool", vol: Volume, capacity: int, flags: int) -> None:
        if vol.format == "raw" and vol.encryption is None:
            await pool.io(self._resize_raw, vol, capacity, flags)
            return
        if flags & RESIZE_ALLOCATE:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, domain=_FROM, message=(
                "preallocate is only supported for raw type volume"))
        # an encrypted image grows through qemu-img with its secret (the LUKS
        # header stays in front of the payload); a plain one needs none
        secrets = self.secrets()
        enc = luks.known_encryption(vol, secrets)
        value = enc.passphrase(secrets) if enc is not None else None
        async with self._secret_files(value) as secret_args:
            await self._qemu_img_resize(vol, capacity, flags, secret_args)

    @staticmethod
    def _resize_raw(vol: Volume, capacity: int, flags: int) -> None:
        try:
            fd = os.open(vol.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise system_error(e, f"Unable to open '{vol.path}'") from None
        try:
            if flags & RESIZE_ALLOCATE and capacity > vol.capacity:
                os.posix_fallocate(fd, vol.capacity, capacity - vol.capacity)
            os.ftruncate(fd, capacity)
        except OSError as e:
            raise system_error(e, f"Failed to truncate file '{vol.path}'") from None
        finally:
            os.close(fd)

    async def wipe_vol(self, pool: "Pool", vol: Volume, algorithm: int, flags: int) -> None:
        if algorithm < 0 or algorithm >= WIPE_ALG_LAST:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"wiping algorithm {algorithm} not supported",
                           domain=_FROM)
        if vol.type == VOL_DIR:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, domain=_FROM, message=(
                f"cannot wipe directory volume '{vol.name}'"))
        if algorithm != WIPE_ALG_ZERO:
            await tools.run(["scrub", "-f", "-p", _SCRUB.get(algorithm, "random"), vol.path])
            return
        await pool.io(self._zero, vol)

    @staticmethod
    def _zero(vol: Volume) -> None:
        """storage_util.c: a regular file is zeroed by deallocating all of it."""
        try:
            fd = os.open(vol.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise system_error(e, f"Failed to open storage volume with path '{vol.path}'") from None
        try:
            size = os.fstat(fd).st_size
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as e:
            raise system_error(e, f"Failed to truncate volume with path '{vol.path}'") from None
        finally:
            os.close(fd)


# the ids of qemu-img's secret objects: the new volume's passphrase, a clone source's
_NEW_SECRET, _SOURCE_SECRET = "encrypt0", "srcencrypt0"


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
