"""An in-process server: a real Daemon and Client over a socketpair, in the test's trio run.

The daemon's per-connection code (pyvirtd/client.py: reader, writer,
keepalive, auth deadline, output back-pressure; pyvirtd/transport.py: the TLS
handshake deadline) runs unchanged on one end of a ``socket.socketpair()``;
the test drives the other end with `Peer`. Nothing is faked: the sockets are
real kernel sockets and the dispatcher is the daemon's own. What changes is
the clock: run under ``trio.testing.MockClock(autojump_threshold=0)``
(pytest-trio's ``autojump_clock`` fixture), time jumps straight to the next
deadline whenever every task waits, so a 60 s timeout takes no wall time and
happens at exactly 60.0 s of trio time. Both ends live in one process, so a
byte sent is readable at once; the clock never jumps over data in flight.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from pyvirtd.client import TRANSPORT_UNIX, Client
from pyvirtd.config import Config
from pyvirtd.daemon import Daemon
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode

REMOTE = (P.REMOTE_PROGRAM, 1)
PROC = {p.name: p for p in P.PROCEDURES if p.program == "remote"}
KEEPALIVE_PING, KEEPALIVE_PONG = 1, 2
PING_HEADER = frame.Header(P.KEEPALIVE_PROGRAM, 1, KEEPALIVE_PING, frame.MESSAGE, 0, frame.OK)


def make_daemon(root: Path, **config: Any) -> Daemon:
    """A daemon with ``config`` under ``root``; its listeners are never bound."""
    return Daemon(Config(**config), Paths.for_root(root), privileged=False)


class Peer:
    """The client's end of the socketpair: frames out, packets in, EOF observed."""

    def __init__(self, sock: trio.socket.SocketType, client: Client | None = None) -> None:
        self.sock = sock
        self.client = client           # the daemon's side, for white-box checks
        self.reader = frame.FrameReader()
        self.pending: list[frame.Packet] = []
        self.serial = 0
        self.sent = 0                  # bytes the kernel took from us

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = await self.sock.send(view)
            self.sent += n
            view = view[n:]

    async def call(self, name: str, *fields: Any) -> int:
        serial, self.serial = self.serial, self.serial + 1
        await self.send(call_frame(name, serial, *fields))
        return serial

    async def packet(self) -> frame.Packet | None:
        """The next packet, or None once the daemon has closed the connection."""
        while not self.pending:
            try:
                data = await self.sock.recv(256 * 1024)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.reader.feed(data)
            self.pending += self.reader.packets()
        return self.pending.pop(0)

    async def result(self, name: str, *fields: Any) -> Any:
        """Call and decode a successful reply, skipping keepalive messages."""
        serial = await self.call(name, *fields)
        while True:
            pkt = await self.packet()
            assert pkt is not None, f"connection closed before the reply to {name}"
            if pkt.header.type == frame.REPLY and pkt.header.serial == serial:
                break
        assert pkt.header.status == frame.OK, decode(P.unpack_remote_error, pkt.body)
        p = PROC[name]
        if p.unpack_ret is None:
            return None
        value = decode(p.unpack_ret, pkt.body)
        return value[0] if p.ret_fields == 1 else value

    async def pong(self) -> None:
        await self.send(frame.build_raw(P.KEEPALIVE_PROGRAM, 1, KEEPALIVE_PONG,
                                        frame.MESSAGE, 0, frame.OK))


def call_frame(name: str, serial: int, *fields: Any) -> bytes:
    p = PROC[name]
    if p.pack_args is not None:
        return bytes(frame.build(*REMOTE, p.number, frame.CALL, serial, frame.OK,
                                 p.pack_args, fields))
    return bytes(frame.build(*REMOTE, p.number, frame.CALL, serial, frame.OK))


async def dial(path: Path) -> Peer:
    """A peer connected to a unix socket the daemon listens on."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(str(path))
    return Peer(sock)


@asynccontextmanager
async def connected(daemon: Daemon, *, auth: int = 0, transport: int = TRANSPORT_UNIX,
                    channel: Any = None) -> AsyncIterator[Peer]:
    """Serve one client of ``daemon.libvirtd`` as its accept loop would; yield its peer.

    ``auth`` is the socket's REMOTE_AUTH_* (1: SASL, so the client starts
    unauthenticated); ``channel`` a transport channel built on the server
    end (see `socketpair`), e.g. a TlsChannel. Leaving the block closes the
    peer and waits until the daemon has let go of the client.
    """
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    if callable(channel):
        channel = channel(server_end)
    client = Client(daemon, daemon.libvirtd, server_end, readonly=False,
                    transport=transport, auth=auth, channel=channel)
    daemon.libvirtd.clients[client.id] = client
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        peer = Peer(trio.socket.from_stdlib_socket(client_end), client)
        try:
            yield peer
        finally:
            peer.sock.close()
