"""Byte channels under a client connection: plain socket, TLS, SASL security layer.

A `Client` reads and writes through a channel with the non-blocking socket's
own contract, so its fast path is the same code for every kind:

- ``recv(n)`` returns up to ``n`` bytes, ``b""`` at end of stream, or raises
  `BlockingIOError` when nothing can be had without waiting;
- ``send(data)`` returns how many bytes it took, or raises `BlockingIOError`;
- ``buffered`` is true while the channel holds output it could not hand to
  the socket yet, and ``flush()`` pushes it on (raising `BlockingIOError`);
- the caller waits on ``sock`` (the raw socket) with trio's
  ``wait_readable``/``wait_writable`` when a call raised `BlockingIOError`.

`PlainChannel` exposes the socket's bound ``recv``/``send`` themselves, so the
unix path costs nothing over plain socket calls. `TlsChannel` runs an
`ssl.SSLObject` over two `ssl.MemoryBIO`s fed from the same raw socket, so the
event loop never blocks inside OpenSSL. `SaslChannel` (pyvirtd/auth/sasl.py)
wraps another channel for the SASL security layer.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Callable

import trio

from pyvirtd.errors import ChannelError

log = logging.getLogger(__name__)

# Raw bytes read from the socket at once under TLS; TLS records are <= 16 KiB.
RAW_RECEIVE = 256 * 1024
# The most plaintext one TLS record carries (RFC 8446 §5.1).
TLS_RECORD_MAX = 16 * 1024
# Plaintext handed to SSLObject.write() at once: a few records, so a large
# reply does not sit encrypted in memory long before the socket takes it.
TLS_WRITE_CHUNK = 64 * 1024
# A client that has not finished the TLS handshake (and sent nothing more)
# after this long is dropped; it only ever held its own connection slot.
TLS_HANDSHAKE_TIMEOUT = 15.0

# libvirt's confirmation byte after a successful handshake and access check
# (src/rpc/virnetserverclient.c, virNetServerClientCheckAccess).
TLS_CONFIRM = b"\x01"


class PlainChannel:
    """The socket itself: recv and send are the socket's bound methods."""

    buffered = False
    kind = "plain"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv: Callable[[int], bytes] = sock.recv
        self.send: Callable[[memoryview], int] = sock.send

    def flush(self) -> None:
        pass

    async def start(self) -> None:
        """Nothing to negotiate on a plain socket."""

    def close(self) -> None:
        self.sock.close()


class TlsChannel:
    """TLS over a raw non-blocking socket, through memory BIOs.

    ``start()`` performs the handshake (bounded by `TLS_HANDSHAKE_TIMEOUT`),
    calls ``check(peer_cert)`` (DN allow-list) and sends the confirmation
    byte; a refused peer gets no byte and the socket is closed, as libvirtd does.
    """

    kind = "tls"

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 check: Callable[[dict | None, bytes | None], None] | None = None) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=True)
        self._check = check
        self._pending = bytearray()       # ciphertext the socket has not taken yet
        self._eof = False
        self.peer_dn: str | None = None
        self.key_bits = 0

    # ------------------------------------------------------------ handshake
    async def start(self) -> None:
        with trio.fail_after(TLS_HANDSHAKE_TIMEOUT):
            while True:
                try:
                    self._ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await self._drain()
                    await self._fill()
            cert = self._ssl.getpeercert()
            der = self._ssl.getpeercert(binary_form=True)
            if self._check is not None:
                self._check(cert, der)
            if der is not None:       # for virt-admin client-info (tls_x509_dname)
                from cryptography import x509
                from pyvirtd.certs import libvirt_dn
                self.peer_dn = libvirt_dn(x509.load_der_x509_certificate(der).subject)
            cipher = self._ssl.cipher()
            self.key_bits = cipher[2] if cipher else 0
            self._ssl.write(TLS_CONFIRM)
            await self._drain()

    async def _fill(self) -> None:
        """Feed the incoming BIO with whatever the socket has, waiting if needed."""
        while True:
            try:
                data = self.sock.recv(RAW_RECEIVE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            if not data:
                raise ChannelError("connection closed during the TLS handshake")
            self._in.write(data)
            return

    async def _drain(self) -> None:
        self._collect()
        while self._pending:
            try:
                self.flush()
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    # ------------------------------------------------------------ data path
    def _collect(self) -> None:
        if self._out.pending:
            self._pending += self._out.read()

    @property
    def buffered(self) -> bool:
        return bool(self._pending) or bool(self._out.pending)

    def flush(self) -> None:
        """Push queued ciphertext to the socket; BlockingIOError if it is full."""
        if not self._pending:         # the common case: straight from the BIO
            if not self._out.pending:
                return
            data = self._out.read()
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            self._pending += memoryview(data)[n:]
            raise BlockingIOError
        self._collect()
        while self._pending:
            n = self.sock.send(self._pending)
            del self._pending[:n]

    def recv(self, n: int) -> bytes:
        # SSLObject.read(n) allocates n bytes up front and returns at most one
        # record (<= 16 KiB) anyway, so ask for a record's worth
        n = min(n, TLS_RECORD_MAX)
        while True:
            try:
                return self._ssl.read(n)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""        # close_notify, or (as virsh does) none before EOF
            except ssl.SSLError as exc:
                raise ChannelError(f"TLS: {exc}") from None
            if self._eof:
                return b""
            data = self.sock.recv(RAW_RECEIVE)   # BlockingIOError: nothing buffered anywhere
            if not data:
                self._eof = True
                self._in.write_eof()
                continue
            self._in.write(data)

    def send(self, data: memoryview) -> int:
        if self._pending:
            self.flush()          # raises BlockingIOError while the socket is full
        try:
            n = self._ssl.write(data[:TLS_WRITE_CHUNK])
        except ssl.SSLError as exc:
            raise ChannelError(f"TLS: {exc}") from None
        try:
            self.flush()
        except BlockingIOError:
            pass                  # kept in _pending; `buffered` tells the writer
        return n

    def close(self) -> None:
        self.sock.close()
