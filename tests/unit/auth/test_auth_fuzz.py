"""Malformed handshakes, SASL steps and security-layer bytes give errors, never a crash.

Hypothesis drives the sans-IO pieces with arbitrary bytes for a bounded time:
the SCRAM server, the SASL security layer's decoder (with a stand-in for the
GSSAPI context) and the TLS channel's handshake (over a socketpair).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirtd.errors import VirError
from pyvirtd.transport import ChannelError

FUZZ = settings(max_examples=200, deadline=None, database=None)


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    pytest.importorskip("scramp")
    from pyvirtd.auth.sasl import ScramUsers
    u = ScramUsers(tmp_path_factory.mktemp("sasl") / "users.json")
    u.add("alice", "pw")
    return u


@FUZZ
@given(first=st.binary(max_size=300), final=st.binary(max_size=300))
def test_scram_garbage(users, first: bytes, final: bytes) -> None:
    from pyvirtd.auth.sasl import ScramMech
    mech = ScramMech(users)
    try:
        mech.step(first)
        mech.step(final)
    except VirError as err:
        assert "authentication failed" in err.message or err.message
    else:
        pytest.fail("garbage authenticated")


@FUZZ
@given(step=st.binary(max_size=200))
def test_scram_valid_first_then_garbage(users, step: bytes) -> None:
    from pyvirtd.auth.sasl import ScramMech
    mech = ScramMech(users)
    complete, out = mech.step(b"n,,n=alice,r=abcdefghijklmnop")
    assert not complete and out.startswith(b"r=abcdefghijklmnop")
    with pytest.raises(VirError):
        mech.step(step)


class FakeContext:
    """Stands in for a gssapi.SecurityContext: 'wrap' prefixes W, 'unwrap' checks it."""

    class _R:
        def __init__(self, message: bytes) -> None:
            self.message = message

    def wrap(self, data: bytes, encrypt: bool) -> "FakeContext._R":
        return self._R(b"W" + data)

    def unwrap(self, token: bytes) -> "FakeContext._R":
        if not token.startswith(b"W"):
            raise ValueError("bad token")
        return self._R(token[1:])

    def get_wrap_size_limit(self, size: int, encrypted: bool = True) -> int:
        return size - 1


class Pipe:
    """An inner channel fed from a list of chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.sent = bytearray()
        self.sock = None

    def recv(self, n: int) -> bytes:
        if not self.chunks:
            raise BlockingIOError
        return self.chunks.pop(0)

    def send(self, data) -> int:
        self.sent += bytes(data)
        return len(data)

    def close(self) -> None:
        pass


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_sasl_layer_decoder_garbage(chunks: list[bytes]) -> None:
    from pyvirtd.auth.sasl import SaslChannel
    ch = SaslChannel(Pipe(list(chunks) + [b""]), FakeContext(), True, 65536)
    try:
        for _ in range(20):
            if ch.recv(1000) == b"":
                break
    except (ChannelError, BlockingIOError):
        pass


@FUZZ
@given(payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=5),
       split=st.integers(1, 7))
def test_sasl_layer_round_trip(payloads: list[bytes], split: int) -> None:
    from pyvirtd.auth.sasl import SaslChannel
    ctx = FakeContext()
    stream = b"".join(struct.pack(">I", len(p) + 1) + b"W" + p for p in payloads)
    chunks = [stream[i:i + split] for i in range(0, len(stream), split)] + [b""]
    ch = SaslChannel(Pipe(chunks), ctx, True, 65536, preamble=b"clear")
    got = b""
    while True:
        data = ch.recv(100)
        if not data:
            break
        got += data
    assert got == b"".join(payloads)
    assert ch.send(memoryview(b"hello")) == 5
    assert bytes(ch.inner.sent) == b"clear" + struct.pack(">I", 6) + b"Whello"


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory):
    pytest.importorskip("cryptography")
    import ssl
    from pyvirtd import certs
    d = tmp_path_factory.mktemp("pki")
    certs.generate(certs.Layout.in_dir(d), ["localhost"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "servercert.pem", d / "serverkey.pem")
    ctx.load_verify_locations(d / "cacert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@settings(max_examples=60, deadline=None, database=None)
@given(hello=st.binary(max_size=600))
def test_tls_handshake_garbage(tls_context, hello: bytes) -> None:
    from pyvirtd.transport import TlsChannel

    async def main() -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.sendall(hello)
        b.shutdown(socket.SHUT_WR)
        ch = TlsChannel(a, tls_context)
        with trio.fail_after(5):
            # what Client.run() turns into a closed connection (ssl.SSLError is an OSError)
            with pytest.raises((ChannelError, OSError)):
                await ch.start()
        a.close()
        b.close()

    trio.run(main)
