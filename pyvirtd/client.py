"""One client connection: read packets, dispatch them, write replies and events.

Each connection runs in its own nursery: a reader (the connection's main
task), a writer that drains the outbox, and, once the client asks for it,
a keepalive timer.  Calls whose handler is a coroutine run as child tasks, up
to ``max_client_requests`` at once, so a slow call never holds up the next
packet; a client that vanishes cancels only its own calls.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import trio

from pyvirtd.errors import ChannelError, PeerError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.transport import PlainChannel

if TYPE_CHECKING:
    from pyvirtd.daemon import Daemon, Server

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 * 1024
# Reads in a row that found data before the reader yields to other tasks.
FAIR_READS = 16
# Stop reading a client's requests while this many reply bytes wait to be
# sent: a client that does not read its replies only stalls itself.
OUTBOX_PAUSE = 4 * 1024 * 1024
# A client whose queued output (mostly events) passes this is dropped rather
# than letting it grow the daemon without bound.
OUTBOX_LIMIT = 64 * 1024 * 1024

# A client on a socket that requires authentication and has not completed it
# after this long is dropped, so a stalled SASL exchange costs only its slot
# for a bounded time (max_anonymous_clients bounds how many such slots exist).
AUTH_TIMEOUT = 60

KEEPALIVE_PROGRAM = 0x6B656570
KEEPALIVE_PING, KEEPALIVE_PONG = 1, 2

_client_ids = itertools.count(1)

# virClientTransport (include/libvirt/libvirt-admin.h), as virt-admin prints it
TRANSPORT_UNIX = P.ClientTransport.VIR_CLIENT_TRANS_UNIX
TRANSPORT_TCP = P.ClientTransport.VIR_CLIENT_TRANS_TCP
TRANSPORT_TLS = P.ClientTransport.VIR_CLIENT_TRANS_TLS


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a unix socket (SO_PEERCRED), for access control."""
    pid: int
    uid: int
    gid: int


def peer_identity(sock: socket.socket) -> PeerIdentity | None:
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return PeerIdentity(*struct.unpack("3i", raw))


class Client:
    """State of one connected client and the tasks that serve it."""

    def __init__(self, daemon: "Daemon", server: "Server", sock: socket.socket,
                 *, readonly: bool, transport: int, auth: int, channel: Any = None) -> None:
        self.id = next(_client_ids)
        self.daemon = daemon
        self.server = server
        self.sock = sock          # non-blocking; the raw socket trio waits on
        # the byte channel read and written directly (see _reader): the plain
        # socket's own methods, or TLS / the SASL layer (pyvirtd/transport.py)
        self.channel = channel if channel is not None else PlainChannel(sock)
        self._next_channel: Callable[[Any, bytes], Any] | None = None
        self.readonly = readonly
        self.transport = transport
        self.auth = auth                      # REMOTE_AUTH_* configured on the socket
        # REMOTE_AUTH_NONE needs no steps, but a TLS client counts as anonymous
        # until its handshake and certificate check have passed (run())
        self.authenticated = auth == 0 and self.channel.kind != "tls"
        self.identity = peer_identity(sock)
        self.connected_at = int(time.time())
        self.conn: Any = None                 # the driver connection after CONNECT_OPEN
        self.program_state: dict[str, Any] = {}   # per-program extras (events, admin)
        self.close_callback = False
        self.max_requests = server.max_client_requests
        self._outbox = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._sending = False
        self._drained = trio.lowlevel.ParkingLot()
        self._slots = trio.lowlevel.ParkingLot()
        self.in_flight = 0
        self._pending: collections.deque[tuple[Any, tuple]] = collections.deque()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        # keepalive: started by CONNECT_SUPPORTS_FEATURE(PROGRAM_KEEPALIVE)
        self.keepalive_interval = server.keepalive_interval
        self.keepalive_count = server.keepalive_count
        self._keepalive_started = False
        self._last_rx = trio.current_time()
        self._pings_unanswered = 0

    # ---------------------------------------------------------------- output
    def send(self, data: bytes | bytearray) -> None:
        """Queue bytes for the client; never blocks."""
        if self._closing:
            return
        self._outbox += data
        if len(self._outbox) > OUTBOX_LIMIT:
            log.warning("client %d: %d bytes unread, dropping it", self.id, len(self._outbox))
            self.close()
            return
        if not self._sending:
            self._writer_lot.unpark_all()

    send_event = send

    async def _flush(self) -> None:
        """Send everything queued; the caller must have checked ``not self._sending``.

        The reader calls this itself after each batch of packets, which saves a
        task switch per call on the common path; the writer task covers output
        produced elsewhere (coroutine calls, events, keepalive).
        """
        self._sending = True
        sock, channel = self.sock, self.channel
        try:
            while self._outbox:
                data, self._outbox = self._outbox, bytearray()
                view = memoryview(data)
                send = channel.send
                while view:
                    try:
                        view = view[send(view):]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
            while channel.buffered:      # TLS records the socket has not taken yet
                try:
                    channel.flush()
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
        finally:
            self._sending = False
        self._drained.unpark_all()

    async def _writer(self) -> None:
        try:
            while True:
                if (not self._outbox and not self.channel.buffered) or self._sending:
                    await self._writer_lot.park()
                    continue
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ChannelError):
            self.close()  # the peer is gone: stop reading too

    # ---------------------------------------------------------------- input
    async def run(self) -> None:
        """Serve the client until it disconnects, breaks the protocol or is closed.

        Whatever goes wrong here ends this client only; it never reaches the
        daemon's accept loop.
        """
        try:
            try:
                await self.channel.start()   # TLS handshake; nothing on a plain socket
            except (ChannelError, trio.TooSlowError, OSError) as exc:
                log.warning("client %d: refused during the handshake: %s", self.id,
                         str(exc) or "timed out")
                return
            if self.channel.kind == "tls" and self.auth == 0:
                self.set_authenticated()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                if not self.authenticated:
                    nursery.start_soon(self._auth_deadline)
                try:
                    await self._reader()
                except PeerError as exc:
                    log.warning("client %d: %s, closing", self.id, exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
                # let queued replies reach a client that is still listening
                with trio.move_on_after(1):
                    while self._outbox and not self._closing:
                        await self._drained.park()
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("client %d: unexpected failure, closing it", self.id)
        finally:
            self._closing = True
            self.daemon.client_gone(self)
            self.channel.close()

    async def _reader(self) -> None:
        """Read and dispatch packets until EOF.

        The socket is read directly and trio is only asked to wait when it
        would block: a trio stream costs a scheduler pass per call, which is
        most of a round trip (bench/README figures).  Every FAIR_READS reads in
        a row that did not block, the loop yields so a flooding client cannot
        starve the others.
        """
        reader = frame.FrameReader()
        dispatch = self.server.dispatcher.dispatch
        sock, channel = self.sock, self.channel
        recv = channel.recv
        streak = 0
        while True:
            if self._next_channel is not None:   # the SASL layer takes over
                channel = self._apply_channel()
                recv = channel.recv
            try:
                data = recv(RECEIVE_SIZE)
            except BlockingIOError:
                streak = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            if not data:
                return
            streak += 1
            if streak >= FAIR_READS:
                streak = 0
                await trio.lowlevel.checkpoint()
            self._last_rx = trio.current_time()
            self._pings_unanswered = 0
            reader.feed(data)
            for packet in reader.packets():
                if packet.header.prog == KEEPALIVE_PROGRAM:
                    self._keepalive_packet(packet)
                    continue
                await dispatch(self, packet)
            if reader.error is not None:
                raise reader.error
            if self._outbox and not self._sending:
                await self._flush()
            await self.wait_writable()

    # ------------------------------------------------------- concurrent calls
    async def start_call(self, high_priority: bool, call: Any, *args: Any) -> None:
        """Run a coroutine-handled call as a child task.

        At most ``max_requests`` normal calls run at once; the next ones wait
        in a queue of the same length, and only when that is full does the
        reader stop reading.  High-priority calls (like keepalive, handled by
        the reader itself) start at once, so they never wait behind slow ones.
        """
        assert self._nursery is not None
        if high_priority or self.in_flight < self.max_requests:
            self._spawn(call, args)
            return
        while len(self._pending) >= self.max_requests:
            await self._slots.park()
        self._pending.append((call, args))

    def spawn_background(self, fn: Any, *args: Any) -> None:
        """Run work that belongs to this client (stream relays); it ends with the client."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def wait_writable(self) -> None:
        """Wait while too much output is queued for this client (producers' flow control)."""
        while len(self._outbox) > OUTBOX_PAUSE and not self._closing:
            await self._drained.park()

    async def send_fds(self, data: bytes | bytearray, fds: list[int]) -> None:
        """Send one packet, then file descriptors, nothing in between (REPLY_WITH_FDS).

        Each fd goes in its own sendmsg() with one dummy byte and an
        SCM_RIGHTS message (libvirt's virSocketSendFD); the peer reads them
        right after the packet that announced them, so the outbox is drained
        first and other output waits until the last fd is sent.  Unix sockets
        only; the caller keeps (and closes) its fds.
        """
        while self._sending:
            await self._drained.park()
        self._sending = True
        sock = self.sock
        try:
            pending, self._outbox = self._outbox + data, bytearray()
            view = memoryview(pending)
            while view:
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
            for fd in fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
                while True:
                    try:
                        sock.sendmsg([b"\0"], rights)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
        finally:
            self._sending = False
            self._drained.unpark_all()
            if self._outbox:
                self._writer_lot.unpark_all()

    def _spawn(self, call: Any, args: tuple) -> None:
        self.in_flight += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._run_call, call, args)

    async def _run_call(self, call: Any, args: tuple) -> None:
        try:
            await call(*args)
        finally:
            self.in_flight -= 1
            if self._pending and self.in_flight < self.max_requests:
                self._spawn(*self._pending.popleft())
                self._slots.unpark()

    # -------------------------------------------------------------- keepalive
    def _keepalive_packet(self, packet: frame.Packet) -> None:
        h = packet.header
        if h.type != frame.MESSAGE:
            return
        if h.proc == KEEPALIVE_PING:
            self.send(frame.build_raw(KEEPALIVE_PROGRAM, 1, KEEPALIVE_PONG,
                                      frame.MESSAGE, 0, frame.OK))

    def start_keepalive(self) -> None:
        """Start pinging a silent client (after it said it understands keepalive)."""
        if self._keepalive_started or self.keepalive_interval <= 0 or self._nursery is None:
            return
        self._keepalive_started = True
        self._nursery.start_soon(self._keepalive)

    async def _keepalive(self) -> None:
        interval, count = self.keepalive_interval, self.keepalive_count
        while True:
            await trio.sleep_until(self._last_rx + interval * (self._pings_unanswered + 1))
            idle = trio.current_time() - self._last_rx
            if idle < interval * (self._pings_unanswered + 1):
                continue
            if self._pings_unanswered >= count:
                log.warning("client %d: no keepalive response, closing", self.id)
                self.close()
                return
            self._pings_unanswered += 1
            self.send(frame.build_raw(KEEPALIVE_PROGRAM, 1, KEEPALIVE_PING,
                                      frame.MESSAGE, 0, frame.OK))

    # -------------------------------------------------------- authentication
    def set_authenticated(self) -> None:
        """The client passed its auth step; frees an anonymous-client slot."""
        self.authenticated = True
        self.server.slot_freed.unpark_all()

    def switch_channel(self, make: Callable[[Any, bytes], Any]) -> None:
        """Put a layer over the byte channel (the SASL security layer) after this reply.

        Called by the handler of the final SASL step, before its reply is
        queued. The reader applies it before its next read: by then the
        reply is queued, and it still goes out as it is, because
        ``make(old_channel, queued_bytes)`` gets those bytes to send ahead of
        everything it encodes. The peer sends encoded data only after it has
        that reply, so nothing it sent can have been read too early.
        """
        self._next_channel = make

    def _apply_channel(self) -> Any:
        make, self._next_channel = self._next_channel, None
        queued, self._outbox = bytes(self._outbox), bytearray()
        self.channel = make(self.channel, queued)
        self._writer_lot.unpark_all()
        return self.channel

    async def _auth_deadline(self) -> None:
        await trio.sleep(AUTH_TIMEOUT)
        if not self.authenticated:
            log.warning("client %d: not authenticated after %d s, closing", self.id, AUTH_TIMEOUT)
            self.close()

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Disconnect the client (admin close, keepalive timeout, overflow)."""
        if self._closing:
            return
        self._closing = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
