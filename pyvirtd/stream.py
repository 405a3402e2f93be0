"""RPC streams: the data channel that follows a stream procedure's reply.

A stream procedure (DOMAIN_OPEN_CONSOLE, STORAGE_VOL_UPLOAD/DOWNLOAD, ...) is
a normal call and reply; after the reply, STREAM packets carrying the call's
serial flow one or both ways (libvirt-rpc.md section 8):

- data: STREAM / CONTINUE with raw bytes (at most STREAM_CHUNK per packet);
- holes (sparse streams): STREAM_HOLE / CONTINUE with {hyper length; unsigned flags},
  accepted from the client only on a stream opened as sparse (`Stream.sparse`),
  with a positive length and no flags; anything else fails the stream with
  libvirt's error ("Unexpected stream hole", daemonStreamHandleHole);
- end of data from the daemon: an empty STREAM / CONTINUE;
- finish: the side that is done sends an empty STREAM / OK, and the daemon
  answers (or confirms) with an empty STREAM / OK;
- abort: STREAM / ERROR.  From the daemon it carries a remote_error; from the
  client its body is empty, and the daemon stops the work and confirms with an
  empty STREAM / OK, as libvirtd's daemonStreamHandleAbort does (any other
  status is refused with "stream aborted with unexpected status N").

The dispatcher creates a `Stream` before calling the driver method, which
receives it as its first argument and hands the work over with
`Stream.run()`; that work starts only once the call's reply is on its way, and
is cancelled if the client aborts the stream or goes away.
"""

from __future__ import annotations

import collections
import logging
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame

if TYPE_CHECKING:
    from pyvirtd.client import Client

log = logging.getLogger(__name__)

# Stop reading the client while this much uploaded data waits for the driver.
RECEIVE_QUEUE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Hole:
    """A run of zeroes the peer did not send (sparse streams)."""
    length: int


class StreamAborted(Exception):
    """The client aborted the stream (STREAM / ERROR)."""


_EOF = object()
_HOLE = struct.Struct(">qI")   # virNetStreamHole {hyper length; unsigned flags}


@dataclass(frozen=True)
class _Refused:
    """Queued in place of a packet the client should not have sent (see Stream._refuse)."""
    error: VirError


class Stream:
    """One stream of one client, identified by the serial of its opening call."""

    def __init__(self, client: "Client", header: frame.Header, direction: str) -> None:
        self.client = client
        self.header = header
        # 'read': the daemon produces data (console, download); the client's
        # finish ends the work.  'write': the client produces (upload); its
        # finish is end-of-data, confirmed once the work has consumed it.
        self.direction = direction
        self._queue: collections.deque[Any] = collections.deque()
        self._queued_bytes = 0
        self._arrived = trio.lowlevel.ParkingLot()
        self._consumed = trio.lowlevel.ParkingLot()
        self._work: tuple[Callable[..., Awaitable[Any]], tuple] | None = None
        self._scope: trio.CancelScope | None = None
        self._running = False
        self.aborted = False
        self.closed = False
        self.client_finished = False
        # the client may send holes (set by the procedure: *_SPARSE_STREAM flags)
        self.sparse = False
        self._refused = False

    # ----------------------------------------------------------- to the client
    def _packet(self, typ: int, status: int, body: bytes = b"") -> bytes:
        h = self.header
        return frame.build_raw(h.prog, h.vers, h.proc, typ, h.serial, status, body)

    def send(self, data: bytes | memoryview) -> None:
        """Queue data for the client, cut into packets of libvirt's chunk size."""
        if self.closed:
            return
        view = memoryview(data)
        h = self.header
        send = self.client.send
        for start in range(0, len(view), frame.STREAM_CHUNK):
            piece = view[start:start + frame.STREAM_CHUNK]
            send(frame.head(h.prog, h.vers, h.proc, frame.STREAM, h.serial, frame.CONTINUE,
                            len(piece)))
            send(piece)   # appended to the outbox as it is: one copy, not three

    def send_hole(self, length: int) -> None:
        if not self.closed:
            self.client.send(self._packet(frame.STREAM_HOLE, frame.CONTINUE,
                                          _HOLE.pack(length, 0)))

    async def drain(self) -> None:
        """Wait while the client has a lot of unread output (flow control for readers)."""
        await self.client.wait_writable()

    def finish(self) -> None:
        """The daemon has no more data: send end-of-data; the client then finishes."""
        if not self.closed:
            self.client.send(self._packet(frame.STREAM, frame.CONTINUE))

    def abort(self, err: VirError) -> None:
        """Fail the stream with an error the client will report."""
        if self.closed:
            return
        h = self.header
        self.client.send(frame.build(h.prog, h.vers, h.proc, frame.STREAM, h.serial, frame.ERROR,
                                     P.pack_remote_error, err.remote_error()))
        self._close()

    # --------------------------------------------------------- from the client
    async def receive(self) -> bytes | Hole | None:
        """The next data or hole the client sent; None once it finished.

        :raises StreamAborted: the client aborted the stream, or it is closed.
        """
        while not self._queue:
            if self.aborted or self.closed:
                raise StreamAborted()
            await self._arrived.park()
        item = self._queue.popleft()
        if item is _EOF:
            return None
        if isinstance(item, _Refused):
            raise item.error
        if isinstance(item, bytes):
            self._queued_bytes -= len(item)
            self._consumed.unpark_all()
        return item

    def matches(self, h: frame.Header) -> bool:
        """Whether a packet with this header belongs to this stream's call."""
        own = self.header
        return h.prog == own.prog and h.vers == own.vers and h.proc == own.proc

    def packet(self, packet: frame.Packet) -> None:
        """Handle a STREAM / STREAM_HOLE packet of this stream (called by the dispatcher)."""
        h = packet.header
        if self._refused:
            return        # the stream is failing: the client hears why next
        if h.type == frame.STREAM_HOLE:
            hole = self._hole(packet.body)
            if isinstance(hole, VirError):
                self._refuse(hole)
                return
            self._queue.append(hole)
        elif h.status == frame.CONTINUE:
            data = packet.body.obj   # the bytes FrameReader copied the body into
            if data:
                self._queue.append(data)
                self._queued_bytes += len(data)
        elif h.status == frame.OK:
            self.client_finished = True
            self._queue.append(_EOF)
            if not self._running:
                self.confirm()
            elif self.direction == "read" and self._scope is not None:
                self._scope.cancel()   # confirmed when the work unwinds
        elif h.status == frame.ERROR:
            # the client aborted: stop the work and confirm, as libvirtd does
            self._stop()
            self.client.send(self._packet(frame.STREAM, frame.OK))
            self._close()
            return
        else:
            self._refuse(VirError(P.VIR_ERR_RPC,
                                  f"stream aborted with unexpected status {h.status}",
                                  domain=P.VIR_FROM_STREAMS))
            return
        self._arrived.unpark_all()

    def _hole(self, body: memoryview) -> Hole | VirError:
        """The client's hole, or the error that refuses it (virFDStreamSendHole's checks)."""
        if not self.sparse:
            return VirError(P.VIR_ERR_RPC, "Unexpected stream hole", domain=P.VIR_FROM_STREAMS)
        if len(body) != _HOLE.size:
            return VirError(P.VIR_ERR_RPC, "Unable to decode message payload",
                            domain=P.VIR_FROM_STREAMS)
        length, flags = _HOLE.unpack_from(body)
        if flags:
            return VirError(P.VIR_ERR_INVALID_ARG,
                            f"unsupported flags (0x{flags:x}) in function virStreamSendHole",
                            domain=P.VIR_FROM_STREAMS)
        if length <= 0:
            return VirError(P.VIR_ERR_INVALID_ARG,
                            "length in virStreamSendHole must be greater than zero",
                            domain=P.VIR_FROM_STREAMS)
        return Hole(length)

    def _stop(self) -> None:
        """Cancel the work: the client broke off the stream."""
        self.aborted = True
        if self._scope is not None:
            self._scope.cancel()

    def _refuse(self, err: VirError) -> None:
        """The client broke the stream's rules: fail the stream with ``err``.

        On an upload the data the client sent before still lands first, as
        libvirtd handles a stream's packets in order: the error is queued and
        raised by `receive()` where the bad packet would have been, and the
        work's failure reports it.  Later packets are dropped.
        """
        log.info("client %d: stream %d refused: %s", self.client.id, self.header.serial,
                 err.message)
        self._refused = True
        if self.direction == "write":
            self._queue.append(_Refused(err))
            self._arrived.unpark_all()
        else:
            self._stop()
            self.abort(err)

    @property
    def backlog(self) -> int:
        return self._queued_bytes

    async def wait_consumed(self) -> None:
        """Block the client's reader while too much uploaded data is queued."""
        while self._queued_bytes > RECEIVE_QUEUE_BYTES and not self.closed:
            await self._consumed.park()

    def confirm(self) -> None:
        """Answer the client's finish with STREAM / OK and close the stream."""
        if not self.closed:
            self.client.send(self._packet(frame.STREAM, frame.OK))
            self._close()

    # --------------------------------------------------------------- the work
    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Do ``await fn(*args)`` once the reply has been sent.

        When it returns, a stream the client has finished is confirmed; an
        exception aborts the stream with its error.
        """
        self._work = (fn, args)

    def start(self) -> None:
        """Called by the dispatcher after queueing the reply."""
        if self._work is None:
            return
        self._running = True
        self.client.spawn_background(self._run_work)

    async def _run_work(self) -> None:
        assert self._work is not None
        fn, args = self._work
        with trio.CancelScope() as scope:
            self._scope = scope
            try:
                await fn(*args)
            except StreamAborted:
                pass
            except VirError as err:
                self.abort(err)
            except Exception as exc:
                log.exception("stream work failed")
                self.abort(VirError(P.VIR_ERR_INTERNAL_ERROR, str(exc)))
        self._running = False
        if not self.closed and self.client_finished:
            self.confirm()

    def discard(self) -> None:
        """The opening call failed: the stream never existed for the client."""
        self._close()

    def _close(self) -> None:
        self.closed = True
        self.client.program_state.get("streams", {}).pop(self.header.serial, None)
        # nothing will read what is still queued: free it, and wake a reader
        # waiting for room (wait_consumed) and any receive()
        self._queue.clear()
        self._queued_bytes = 0
        self._consumed.unpark_all()
        self._arrived.unpark_all()
