"""Writing the daemon's own files so a crash never leaves half of one.

Each file has one temporary name, ``.NAME.tmp`` beside it (`temp_path`), so a
daemon killed in the middle of a write leaves at most one leftover per file,
and the next daemon removes them all before it loads anything
(`remove_leftovers`, called once at start-up).  Writers of the same file in
one daemon take turns (a lock per file, striped); two daemons never share a
state directory (the pid file guards that).
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# How deep below a state directory the daemon writes files (e.g.
# lib/network/ports/NET/UUID.xml); the sweep looks no deeper.
SWEEP_DEPTH = 4
# Writers of one path serialise on one of these; two paths may share a lock,
# which costs only a little waiting (writes are small and short).
_LOCKS = [threading.Lock() for _ in range(64)]


def temp_path(path: Path) -> Path:
    """The one temporary name of ``path`` while it is being replaced."""
    return path.with_name(f".{path.name}{TEMP_SUFFIX}")


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > 1 + len(TEMP_SUFFIX)


def _lock(path: Path) -> threading.Lock:
    return _LOCKS[zlib.crc32(os.fsencode(path)) % len(_LOCKS)]


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: the old content or the new, never a mix.

    The data goes to ``temp_path(path)``, which is renamed over ``path``.
    With ``sync`` (state that must survive a power cut: definitions, runtime
    status, credentials) the file and then its directory are flushed to disk;
    runtime files that are rebuilt at start do without.  Blocking: call it
    from a thread when the disk may be slow.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    payload = memoryview(data.encode() if isinstance(data, str) else data)
    with _lock(path):
        # O_NOFOLLOW: a link planted under the temporary name is not followed;
        # O_TRUNC: a leftover of a killed daemon is simply reused
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        try:
            os.fchmod(fd, mode)
            view = payload
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, path)
    if sync:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_leftovers(directories: Iterable[Path]) -> list[Path]:
    """Remove the temporaries a killed daemon left below ``directories``; returns them.

    Called at start-up, before anything writes: a ``.NAME.tmp`` there is
    always a write that never finished (its ``NAME`` holds the previous
    content, or never existed).  Symbolic links are not followed.
    """
    removed: list[Path] = []
    seen: set[Path] = set()
    for top in directories:
        if top in seen or not top.is_dir():
            continue
        seen.add(top)
        for dirpath, dirs, names in os.walk(top):
            if len(Path(dirpath).relative_to(top).parts) >= SWEEP_DEPTH:
                dirs.clear()
            for name in names:
                if not _is_temp_name(name):
                    continue
                leftover = Path(dirpath) / name
                try:
                    if leftover.is_symlink() or not leftover.is_file():
                        continue
                    leftover.unlink()
                except OSError as exc:
                    log.warning("cannot remove the leftover temporary %s: %s", leftover, exc)
                    continue
                removed.append(leftover)
    if removed:
        log.info("removed %d temporary files left by an interrupted daemon", len(removed))
    return removed
