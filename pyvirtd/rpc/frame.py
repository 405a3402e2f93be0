"""libvirt RPC framing, sans I/O: bytes in, packets out, and packets back to bytes.

Every packet is a 4-byte big-endian length (counting itself), a 24-byte header
and a body (src/rpc/virnetprotocol.x).  Nothing here touches a socket, so the
server, the tests and a fuzzer all drive the same code.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, NamedTuple

from pyvirtd.errors import ProtocolError

# src/rpc/virnetprotocol.x: VIR_NET_MESSAGE_MAX, the largest packet not counting
# the length word.  A bigger claimed length closes the connection.
MESSAGE_MAX = 33554432
HEADER_SIZE = 24
LENGTH_SIZE = 4
# src/rpc/virnetprotocol.x: VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX; stream data is
# sent in chunks of this size so that old peers accept it.
STREAM_CHUNK = 262120
NUM_FDS_MAX = 32

# header types (virNetMessageType) and statuses (virNetMessageStatus)
CALL, REPLY, MESSAGE, STREAM, CALL_WITH_FDS, REPLY_WITH_FDS, STREAM_HOLE = range(7)
OK, ERROR, CONTINUE = range(3)

# length, prog, vers, proc, type, serial, status
_PACKET_HEAD = struct.Struct(">IIIiiIi")
_U32 = struct.Struct(">I")


class Header(NamedTuple):
    prog: int
    vers: int
    proc: int
    type: int
    serial: int
    status: int


class Packet(NamedTuple):
    header: Header
    body: memoryview      # the payload after the header (and after the fd count)
    nfds: int = 0         # file descriptors announced by a *_WITH_FDS packet


class FrameReader:
    """Splits a byte stream into packets.

    ``feed()`` appends received bytes; ``packets()`` yields every complete
    packet.  Consumed bytes are dropped in one slice per ``packets()`` call so
    the cost stays linear in the bytes received, however the peer fragments
    its writes.
    """

    def __init__(self, max_packet: int = MESSAGE_MAX) -> None:
        self._buf = bytearray()
        self._max = max_packet
        # File descriptors travel after their packet, each with one dummy data
        # byte (virSocketSendFD).  Read without recvmsg, those bytes show up
        # in the stream and must be skipped to stay in frame.
        self._skip = 0
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def packets(self) -> list[Packet]:
        """Every complete packet buffered so far.

        A malformed packet raises ProtocolError, but only after the good
        packets before it have been handed out (the next call raises), so a
        valid call that shares a read with garbage is still answered, as
        libvirtd answers it.
        """
        if self._error is not None:
            raise self._error
        out: list[Packet] = []
        try:
            self._parse(out)
        except ProtocolError as exc:
            if not out:
                raise
            self._error = exc
        return out

    def _parse(self, out: list[Packet]) -> None:
        buf = self._buf
        end = len(buf)
        pos = 0
        while True:
            if self._skip:
                n = min(self._skip, end - pos)
                pos += n
                self._skip -= n
            if end - pos < LENGTH_SIZE:
                break
            (length,) = _U32.unpack_from(buf, pos)
            if length < LENGTH_SIZE + HEADER_SIZE:
                raise ProtocolError(f"packet length {length} is shorter than a header")
            if length - LENGTH_SIZE > self._max:
                raise ProtocolError(f"packet length {length} exceeds the maximum {self._max}")
            if end - pos < length:
                break
            _, prog, vers, proc, typ, serial, status = _PACKET_HEAD.unpack_from(buf, pos)
            body_start = pos + LENGTH_SIZE + HEADER_SIZE
            nfds = 0
            if typ == CALL_WITH_FDS or typ == REPLY_WITH_FDS:
                if length < LENGTH_SIZE + HEADER_SIZE + 4:
                    raise ProtocolError("packet with fds lacks its fd count")
                (nfds,) = _U32.unpack_from(buf, body_start)
                if nfds > NUM_FDS_MAX:
                    raise ProtocolError(f"{nfds} file descriptors exceed {NUM_FDS_MAX}")
                body_start += 4
            # copy the body out (once: a bytearray slice would copy twice); the
            # buffer is compacted below, so no view of it may outlive this loop
            with memoryview(buf) as whole:
                body = memoryview(whole[body_start:pos + length].tobytes())
            out.append(Packet(Header(prog, vers, proc, typ, serial, status), body, nfds))
            pos += length
            self._skip = nfds
        if pos:
            del buf[:pos]

    @property
    def error(self) -> ProtocolError | None:
        """The protocol error found after the packets last returned, if any."""
        return self._error


def build(prog: int, vers: int, proc: int, typ: int, serial: int, status: int,
          pack: Callable[[Any, bytearray], None] | None = None, value: Any = None,
          nfds: int | None = None) -> bytearray:
    """Encode one packet; ``pack(value, out)`` appends the body (XDR or raw)."""
    out = bytearray(LENGTH_SIZE + HEADER_SIZE)
    if nfds is not None:
        out += _U32.pack(nfds)
    if pack is not None:
        pack(value, out)
    _PACKET_HEAD.pack_into(out, 0, len(out), prog, vers, proc, typ, serial, status)
    return out


def head(prog: int, vers: int, proc: int, typ: int, serial: int, status: int,
         body_len: int) -> bytes:
    """The length word and header of a packet whose body of ``body_len`` bytes follows.

    Lets large raw bodies (stream data) be queued as they are, without being
    copied into one packet first.
    """
    return _PACKET_HEAD.pack(LENGTH_SIZE + HEADER_SIZE + body_len,
                             prog, vers, proc, typ, serial, status)


def build_raw(prog: int, vers: int, proc: int, typ: int, serial: int, status: int,
              body: bytes = b"") -> bytes:
    """Encode one packet whose body is already bytes (stream data, empty bodies)."""
    return _PACKET_HEAD.pack(LENGTH_SIZE + HEADER_SIZE + len(body),
                             prog, vers, proc, typ, serial, status) + body
