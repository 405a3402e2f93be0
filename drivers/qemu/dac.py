"""DAC labelling: a confined guest's files belong to the QEMU user while it runs.

libvirt's DAC security driver (src/security/security_dac.c) in our words:
at start every file QEMU opens by path (disk images, kernel, initrd,
firmware, NVRAM, file chardevs, the channel socket directory) is handed to
the QEMU user and group; when the guest stops each goes back to the owner
it had.  The original owner and mode are remembered in an extended
attribute of the file itself, with a reference count, so that two guests
sharing a read-only image, or a daemon restarted meanwhile, restore it
exactly once and correctly:

    trusted.pyvirtd.security.dac      "UID:GID:MODE" before the first guest took it
    trusted.pyvirtd.security.ref_dac  how many running guests hold it

(``trusted.*`` needs CAP_SYS_ADMIN, so a guest's QEMU can neither read nor
forge them.)  Where the file system has no xattrs the original owner goes
into the guest's runtime status instead (`Label.orig`).

A read-write file is chowned to uid:gid.  A read-only one keeps its owner;
only its group becomes the QEMU group, with group read and no group write,
so QEMU can read it and the kernel refuses it any write.  Files no guest
holds keep their owner (often root, mode 0600): the kernel then refuses
any guest that tries to open them, whatever it asks QEMU to do.

All of this is blocking file I/O: callers use ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from typing import Iterable, Mapping

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml.platform import platform

log = logging.getLogger(__name__)

XATTR_OWNER = "trusted.pyvirtd.security.dac"
XATTR_REFS = "trusted.pyvirtd.security.ref_dac"

_NO_XATTR = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM)


@dataclass
class Label:
    """One file labelled for a guest: what its runtime status remembers."""
    path: str
    readonly: bool = False
    orig: str | None = None     # "UID:GID:MODE" when the file system keeps no xattr


@dataclass(frozen=True)
class Wanted:
    """A file a guest needs: its path, and whether QEMU only reads it."""
    path: str
    readonly: bool
    create: bool = False        # a chardev file QEMU would create: create it first


def guest_files(live: domxml.DomainDef, volume_paths: Mapping[tuple[str, str], str],
                channel_dir: str | None = None) -> list[Wanted]:
    """Every host file QEMU opens by path for ``live`` (virSecurityDACSetAllLabel).

    ``volume_paths`` maps (pool, volume) of its volume disks to their paths.
    """
    out: list[Wanted] = []
    o = platform(live).os
    for path in (o.kernel, o.initrd, o.dtb):
        if path:
            out.append(Wanted(path, True))
    if o.loader:
        out.append(Wanted(o.loader, o.loader_type != "pflash" or bool(o.loader_readonly)))
    if o.nvram:
        out.append(Wanted(o.nvram, False))
    for dev in devmod.parse_devices(live):
        if isinstance(dev, devmod.Disk):
            path = disk_path(dev, volume_paths)
            if path:
                out.append(Wanted(path, dev.readonly or dev.device in ("cdrom", "floppy")))
        elif isinstance(dev, devmod.Chardev) and dev.type == "file":
            for src in dev.sources:
                if src.get("path"):
                    out.append(Wanted(src["path"], False, create=True))
    if channel_dir:
        out.append(Wanted(channel_dir, False))
    seen: set[str] = set()
    return [w for w in out if not (w.path in seen or seen.add(w.path))]


def disk_path(disk: "devmod.Disk", volume_paths: Mapping[tuple[str, str], str]) -> str | None:
    if disk.type == "volume":
        return volume_paths.get((disk.pool or "", disk.volume or ""))
    if disk.type in ("file", "block"):
        return disk.path
    return None


def _get(path: str, name: str) -> str | None:
    try:
        return os.getxattr(path, name).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA or exc.errno in _NO_XATTR:
            return None
        raise


def label(want: Wanted, uid: int, gid: int, remember: bool = True) -> Label:
    """Hand ``want.path`` to uid:gid (see the module docstring); raises OSError."""
    path = want.path
    if want.create and not os.path.exists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    st = os.stat(path)
    orig = f"{st.st_uid}:{st.st_gid}:{stat.S_IMODE(st.st_mode):o}"
    result = Label(path, want.readonly)
    if remember:
        refs = _get(path, XATTR_REFS)
        if refs is not None and _get(path, XATTR_OWNER) is not None:
            # another guest holds it already: share its label
            os.setxattr(path, XATTR_REFS, str(int(refs) + 1).encode())
            return result
        try:
            os.setxattr(path, XATTR_OWNER, orig.encode())
            os.setxattr(path, XATTR_REFS, b"1")
        except OSError as exc:
            if exc.errno not in _NO_XATTR:
                raise
            result.orig = orig
    else:
        result.orig = orig
    if want.readonly:
        os.chown(path, -1, gid)
        os.chmod(path, (stat.S_IMODE(st.st_mode) | stat.S_IRGRP) & ~stat.S_IWGRP)
    else:
        os.chown(path, uid, gid)
    return result


def restore(lab: Label) -> None:
    """Give ``lab.path`` back to its owner once no guest holds it; never raises."""
    path = lab.path
    try:
        refs = _get(path, XATTR_REFS)
        orig = _get(path, XATTR_OWNER)
        if refs is not None and int(refs) > 1:
            os.setxattr(path, XATTR_REFS, str(int(refs) - 1).encode())
            return
        for name in (XATTR_REFS, XATTR_OWNER):
            try:
                os.removexattr(path, name)
            except OSError:
                pass
        orig = orig or lab.orig
        if orig is None:
            log.warning("%s: its original owner is unknown; left as it is", path)
            return
        uid, gid, mode = orig.split(":")
        os.chown(path, int(uid), int(gid))
        os.chmod(path, int(mode, 8))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot restore its owner: %s", path, exc)


def label_all(wanted: Iterable[Wanted], uid: int, gid: int, remember: bool = True) -> list[Label]:
    """Label every file, or none: on failure the ones done are restored and VirError raised."""
    done: list[Label] = []
    for want in wanted:
        try:
            done.append(label(want, uid, gid, remember))
        except OSError as exc:
            restore_all(done)
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"unable to set user and group to '{uid}:{gid}' on '{want.path}': "
                           f"{exc.strerror or exc}", domain=P.VIR_FROM_SECURITY) from None
    return done


def restore_all(labels: Iterable[Label]) -> None:
    for lab in reversed(list(labels)):
        restore(lab)
