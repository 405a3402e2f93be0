"""An asynchronous libvirt RPC client (trio): the daemon talking to another daemon.

Peer-to-peer migration (drivers/qemu/migration.py) has the source daemon call
the destination daemon itself, as libvirtd does with its remote driver.  This
module is that client, on the same generated codec the server uses: calls of
the ``remote`` program by procedure name, their replies decoded into the
generated named tuples, a ``remote_error`` reply raised as the peer's
`VirError` (its code, domain and message, so the user reads the destination's
own words).

    async with await PeerConnection.open("qemu+unix:///session?socket=/run/x") as peer:
        supported = await peer.call("CONNECT_SUPPORTS_FEATURE", feature)

One call at a time (a lock; migration needs no more).  Events and keepalive
pings are never asked for, so none arrive; a stray MESSAGE packet is skipped.

This first slice speaks to unix sockets with no authentication (``+unix`` and
the local default socket); TCP, TLS and SASL are to come (issue 17).
"""

from __future__ import annotations

import itertools
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode

_CALLS = {p.name: p for p in P.PROCEDURES if p.program == "remote" and p.kind == "call"}
AUTH_NONE = 0
RECEIVE_SIZE = 256 * 1024


def _unsupported(uri: str, why: str) -> VirError:
    return VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, f"cannot connect to '{uri}': {why}",
                    domain=P.VIR_FROM_REMOTE)


def split_uri(uri: str) -> tuple[str, str]:
    """(unix socket path, the name the peer's CONNECT_OPEN gets) for a libvirt URI."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if transport not in ("", "unix") or (transport == "" and parts.netloc):
        raise _unsupported(uri, f"transport '{transport or 'tls'}' is not supported yet")
    if parts.netloc and parts.hostname not in ("localhost", None):
        raise _unsupported(uri, "a unix socket URI names no host")
    query = parse_qs(parts.query)
    socket_path = (query.get("socket") or [None])[0]
    if socket_path is None:
        if os.geteuid() == 0 and parts.path != "/session":
            socket_path = "/run/libvirt/libvirt-sock"
        else:
            runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
            socket_path = f"{runtime}/libvirt/libvirt-sock"
    name = f"{driver}://{parts.path or '/'}"
    return socket_path, name


class PeerConnection:
    """One open connection to a libvirt daemon (its ``remote`` program)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = frame.FrameReader()
        self._pending: list[frame.Packet] = []
        self._serials = itertools.count(1)
        self._lock = trio.Lock()

    @classmethod
    async def open(cls, uri: str) -> "PeerConnection":
        """Connect to the daemon ``uri`` names and open its hypervisor connection."""
        path, name = split_uri(uri)
        try:
            stream = await trio.open_unix_socket(path)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_RPC,
                           message=f"Failed to connect socket to '{path}': "
                           f"{exc.strerror}") from None
        peer = cls(stream)
        try:
            auth = await peer.call("AUTH_LIST")
            if AUTH_NONE not in auth.types:
                raise _unsupported(uri, "the peer requires authentication")
            await peer.call("CONNECT_OPEN", name, 0)
        except BaseException:
            await peer.aclose()
            raise
        return peer

    async def __aenter__(self) -> "PeerConnection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def call(self, name: str, *args: Any) -> Any:
        """Call procedure ``name`` (REMOTE_PROC_ without the prefix) with its arguments
        in protocol order; its decoded reply (None for procedures without one)."""
        proc = _CALLS[name]
        async with self._lock:
            serial = next(self._serials)
            data = frame.build(proc.prog, P.REMOTE_PROTOCOL_VERSION, proc.number, frame.CALL,
                               serial, frame.OK, proc.pack_args,
                               tuple(args) if proc.pack_args is not None else None)
            await self._stream.send_all(data)
            packet = await self._reply(serial)
        if packet.header.status == frame.ERROR:
            err = decode(P.unpack_remote_error, packet.body)
            raise VirError(err.code, err.str2, domain=err.domain, message=err.message)
        if proc.unpack_ret is None:
            return None
        return decode(proc.unpack_ret, packet.body)

    async def _reply(self, serial: int) -> frame.Packet:
        while True:
            while self._pending:
                packet = self._pending.pop(0)
                if packet.header.type == frame.REPLY and packet.header.serial == serial:
                    return packet
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise VirError(P.VIR_ERR_RPC, "End of file while reading data: "
                               "the peer closed the connection", domain=P.VIR_FROM_RPC)
            self._reader.feed(data)
            self._pending.extend(self._reader.packets())

    async def aclose(self) -> None:
        """CONNECT_CLOSE if the connection still works, then close the socket."""
        try:
            with trio.move_on_after(5):
                if not self._lock.locked():
                    await self.call("CONNECT_CLOSE")
        except (VirError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        await self._stream.aclose()
