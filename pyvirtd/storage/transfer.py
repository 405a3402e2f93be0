"""STORAGE_VOL_UPLOAD and STORAGE_VOL_DOWNLOAD: a volume's bytes over an RPC stream.

The procedure opens the volume (so an error is the call's reply), marks it
in use and hands the copying to `Stream.run`.  Holes: with the SPARSE_STREAM
flag a download finds the file's holes with SEEK_DATA/SEEK_HOLE and sends
them as STREAM_HOLE packets, and an upload punches the holes it receives
(the bytes there read back as zeroes, whatever the volume held before).
All reads, writes and seeks run on the pool's threads, a few MiB per call.

An upload with a length takes exactly that many bytes: holes reaching past
it are cut at the length, and data past it fails the stream with libvirt's
"cannot write to stream: No space left on device" after the bytes up to the
length are written (virFDStreamWrite), so nothing lands past the length.
Holes from a client that did not open the upload as sparse are refused by
the stream itself (pyvirtd/stream.py).

An upload is confirmed once its data is written, not synced: libvirtd 9.0
neither fsyncs nor fdatasyncs an uploaded volume (strace of its storage
stream), and an fsync here cost 120-145 ms of a 0.4-0.7 s sparse 1 GiB
upload (256 MiB of data) on this machine's disk.  The kernel writes the
pages back as usual; a guest or a download reads them from the page cache.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING

import trio

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.frame import STREAM_CHUNK
from pyvirtd.storage.backends.dir import punch_hole, system_error
from pyvirtd.stream import Hole, Stream

if TYPE_CHECKING:
    from pyvirtd.storage.backends.base import Volume
    from pyvirtd.storage.pool import Pool
    from pyvirtd.storage.subsystem import StorageSubsystem

log = logging.getLogger(__name__)
_FROM = P.VIR_FROM_STORAGE

# VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM == VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM
SPARSE_STREAM = P.StorageVolUploadFlags.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM
# Bytes moved per thread call: many stream chunks, so the thread hand-off
# costs little next to the copying.
IO_BATCH = 16 * STREAM_CHUNK


def _data_size(fd: int) -> int:
    """The bytes a volume holds: a file's size, or a block device's (whose st_size is 0)."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return st.st_size


def _read_piece(fd: int, pos: int, end: int, sparse: bool) -> tuple[str, int | bytes]:
    """What lies at ``pos``: ("hole", length) or ("data", bytes) (sparse: no hole inside)."""
    limit = end - pos
    if sparse:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:      # ENXIO: nothing but hole up to the end
                raise
            data = end
        if data > pos:
            return "hole", min(data, end) - pos
        limit = min(limit, os.lseek(fd, pos, os.SEEK_HOLE) - pos)
    return "data", os.pread(fd, min(limit, IO_BATCH), pos)


class PastLength(Exception):
    """The client sent data beyond the upload's declared length."""


def _write(fd: int, pos: int, pieces: list[bytes | Hole], end: int | None) -> int:
    """Write data and punch holes from ``pos``; returns the new position.

    :raises PastLength: data goes past ``end``; what fits before it is written.
    """
    for piece in pieces:
        if isinstance(piece, Hole):
            length = piece.length if end is None else min(piece.length, end - pos)
            if length <= 0:
                continue
            size = os.fstat(fd).st_size
            punch_hole(fd, pos, max(0, min(pos + length, size) - pos))
            pos += length
            if pos > size:
                os.ftruncate(fd, pos)       # a trailing hole extends the file
        else:
            view = memoryview(piece)
            past = end is not None and pos + len(view) > end
            if past:
                view = view[:max(0, end - pos)]
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
            if past:
                raise PastLength()
    return pos


class TransferProcedures:

    def _stream_vol(self: "StorageSubsystem", ref) -> tuple["Pool", "Volume"]:
        pool, vol = self._ready_vol(ref)
        return pool, vol

    async def _open(self, pool: "Pool", vol: "Volume", writing: bool) -> int:
        def open_() -> int:
            try:
                return pool.backend.open_vol(vol, writing)
            except OSError as e:
                raise system_error(e, f"Unable to open '{vol.path}'") from None
        return await pool.io(open_)

    async def storage_vol_upload(self: "StorageSubsystem", stream: Stream, ref, offset: int,
                                 length: int, flags: int) -> None:
        check_flags(flags, SPARSE_STREAM, "storageVolUpload", _FROM)
        pool, vol = self._stream_vol(ref)
        fd = await self._open(pool, vol, writing=True)
        self._hold(pool, vol)
        stream.sparse = bool(flags & SPARSE_STREAM)
        stream.run(self._upload, stream, pool, vol, fd, offset,
                   offset + length if length else None)

    async def storage_vol_download(self: "StorageSubsystem", stream: Stream, ref, offset: int,
                                   length: int, flags: int) -> None:
        check_flags(flags, SPARSE_STREAM, "storageVolDownload", _FROM)
        pool, vol = self._stream_vol(ref)
        fd = await self._open(pool, vol, writing=False)
        self._hold(pool, vol)
        stream.run(self._download, stream, pool, vol, fd, offset, length,
                   bool(flags & SPARSE_STREAM))

    @staticmethod
    def _hold(pool: "Pool", vol: "Volume") -> None:
        vol.extra["in_use"] = vol.extra.get("in_use", 0) + 1
        pool.asyncjobs += 1

    async def _release(self: "StorageSubsystem", pool: "Pool", vol: "Volume", fd: int,
                       refresh: bool) -> None:
        with trio.CancelScope(shield=True):
            vol.extra["in_use"] -= 1
            pool.asyncjobs -= 1
            await pool.io(os.close, fd)
            if refresh and pool.active:
                try:
                    await self._refreshed(pool, vol)
                except VirError:
                    pass

    async def _upload(self: "StorageSubsystem", stream: Stream, pool: "Pool", vol: "Volume",
                      fd: int, pos: int, end: int | None) -> None:
        done = False
        try:
            while not done:
                item = await stream.receive()
                if item is None:
                    break
                pieces: list[bytes | Hole] = [item]
                batched = len(item) if isinstance(item, bytes) else 0
                # take what is already queued, up to a batch, in the same thread call
                while stream.backlog and batched < IO_BATCH:
                    more = await stream.receive()
                    if more is None:
                        done = True
                        break
                    pieces.append(more)
                    if isinstance(more, bytes):
                        batched += len(more)
                try:
                    pos = await pool.io(_write, fd, pos, pieces, end)
                except PastLength:
                    raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_STREAMS,
                                   message="cannot write to stream: "
                                   + os.strerror(errno.ENOSPC)) from None
                except OSError as e:
                    raise system_error(e, f"Unable to write to '{vol.path}'") from None
        except BaseException:
            log.warning("upload to volume '%s' of pool '%s' did not complete: the volume "
                        "holds partial data", vol.name, pool.name)
            raise
        finally:
            await self._release(pool, vol, fd, refresh=True)

    async def _download(self: "StorageSubsystem", stream: Stream, pool: "Pool", vol: "Volume",
                        fd: int, pos: int, length: int, sparse: bool) -> None:
        try:
            size = await pool.io(_data_size, fd)
            end = min(size, pos + length) if length else size
            while pos < end and not stream.closed:
                try:
                    kind, value = await pool.io(_read_piece, fd, pos, end, sparse)
                except OSError as e:
                    raise system_error(e, f"Unable to read from '{vol.path}'") from None
                if kind == "hole":
                    stream.send_hole(value)
                    pos += value
                else:
                    if not value:           # the file shrank under us
                        break
                    stream.send(value)
                    pos += len(value)
                await stream.drain()
            stream.finish()
        finally:
            await self._release(pool, vol, fd, refresh=False)
