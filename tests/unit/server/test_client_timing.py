"""Keepalive, authentication deadlines and back-pressure, timed exactly on a mock clock.

The daemon's connection code runs in-process over a socketpair
(server_harness.py) under ``autojump_clock``: trio time jumps to the next
deadline whenever every task waits, so each timeout is asserted to the
instant it must fire, and the absence of a message is proven over as long a
stretch of (virtual) time as one likes, in no wall time. The real-daemon
tests (tests/integration/test_protocol_robustness.py, auth/test_tls.py) keep
proving the wiring, without timed assertions.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from pathlib import Path

import pytest
import trio

from pyvirtd import certs
from pyvirtd.client import AUTH_TIMEOUT, OUTBOX_PAUSE, RECEIVE_SIZE
from pyvirtd.remote import REMOTE_AUTH_SASL
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.transport import TLS_HANDSHAKE_TIMEOUT
from server_harness import PING_HEADER, Peer, call_frame, connected, dial, make_daemon

LIB_VERSION = 9_000_000


@pytest.fixture
def daemon(tmp_path: Path):
    return make_daemon(tmp_path / "d", keepalive_interval=5, keepalive_count=3)


async def ask_for_keepalive(peer: Peer) -> float:
    """The feature probe that starts the daemon's keepalive; returns when it was answered."""
    assert await peer.result("CONNECT_SUPPORTS_FEATURE", P.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE) == 1
    return trio.current_time()


# ------------------------------------------------------------------ keepalive

async def test_a_silent_client_gets_count_pings_then_is_dropped(autojump_clock, daemon) -> None:
    async with connected(daemon) as peer:
        t0 = await ask_for_keepalive(peer)
        arrivals = []
        while (pkt := await peer.packet()) is not None:
            assert pkt.header == PING_HEADER and len(pkt.body) == 0
            arrivals.append(trio.current_time() - t0)
        dropped_after = trio.current_time() - t0
    # one PING per interval of silence, keepalive_count of them; the drop
    # comes at interval * (count + 1)
    assert arrivals == [5.0, 10.0, 15.0]
    assert dropped_after == 5 * (3 + 1)
    assert daemon.libvirtd.clients == {}


async def test_a_client_that_answers_pings_is_kept(autojump_clock, daemon) -> None:
    async with connected(daemon) as peer:
        t0 = await ask_for_keepalive(peer)
        pings = []
        with trio.move_on_after(1000):
            while (pkt := await peer.packet()) is not None:
                assert pkt.header == PING_HEADER
                pings.append(trio.current_time() - t0)
                await peer.pong()
        # each PONG restarts the silence: a PING every interval, for ever
        assert pings == [5.0 * n for n in range(1, 200)]
        assert await peer.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION


async def test_any_traffic_restarts_the_silence(autojump_clock, daemon) -> None:
    async with connected(daemon) as peer:
        await ask_for_keepalive(peer)
        for _ in range(10):               # a call every 4 s: no PING is ever due
            await trio.sleep(4)
            assert await peer.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION
        t1 = trio.current_time()
        pkt = await peer.packet()
        assert pkt is not None and pkt.header == PING_HEADER
        assert trio.current_time() - t1 == 5.0


async def test_no_keepalive_without_the_feature_probe(autojump_clock, daemon) -> None:
    async with connected(daemon) as peer:
        assert await peer.result("AUTH_LIST") == [0]
        with trio.move_on_after(3600) as silence:
            await peer.packet()           # a PING would come after 5 s
        assert silence.cancelled_caught
        assert await peer.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION


async def test_keepalive_disabled_by_a_negative_interval(autojump_clock, tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "d", keepalive_interval=-1)
    async with connected(daemon) as peer:
        await ask_for_keepalive(peer)
        with trio.move_on_after(3600) as silence:
            await peer.packet()
        assert silence.cancelled_caught


# ------------------------------------------------------------ authentication

async def test_an_unauthenticated_client_is_dropped_after_the_auth_timeout(
        autojump_clock, daemon) -> None:
    async with connected(daemon, auth=REMOTE_AUTH_SASL) as peer:
        t0 = trio.current_time()
        await trio.sleep(AUTH_TIMEOUT - 1)
        # still served until the deadline: pre-auth calls are answered...
        assert await peer.result("AUTH_LIST") == [REMOTE_AUTH_SASL]
        assert daemon.libvirtd.anonymous() == 1
        assert await peer.packet() is None
        assert trio.current_time() - t0 == AUTH_TIMEOUT == 60
    assert daemon.libvirtd.clients == {}


async def test_a_client_that_authenticated_in_time_stays(autojump_clock, daemon) -> None:
    async with connected(daemon, auth=REMOTE_AUTH_SASL) as peer:
        await trio.sleep(AUTH_TIMEOUT / 2)
        peer.client.set_authenticated()   # what the final SASL step does
        with trio.move_on_after(3600) as silence:
            await peer.packet()
        assert silence.cancelled_caught
        assert await peer.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION


async def test_a_stalled_tls_handshake_is_dropped_after_its_deadline(
        autojump_clock, tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "d")
    certs.generate(certs.Layout.in_dir(tmp_path / "d" / "etc" / "pki"), ["localhost"])
    daemon._ensure_tls()
    async with connected(daemon, transport=2, channel=daemon.tls.channel) as peer:
        t0 = trio.current_time()
        await peer.send(b"\x16\x03\x01")     # half a ClientHello record header, then nothing
        assert await peer.packet() is None
        assert trio.current_time() - t0 == TLS_HANDSHAKE_TIMEOUT == 15
    assert daemon.libvirtd.clients == {}


# ------------------------------------------------------------- back-pressure

# NODE_GET_INFO replies are 188 bytes: this many come to ~11 MB, well past
# OUTBOX_PAUSE (4 MiB) plus the replies to one read's worth of calls.
CALLS = 60_000
CALL, REPLY = 28, 28 + 160


def unread(sock) -> int:
    """Bytes waiting in a socket's receive queue (SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def progress(peer: Peer) -> tuple[int, int]:
    """(calls the daemon has read, reply bytes it holds that the kernel does not)."""
    consumed = (peer.sent - unread(peer.client.sock)) // CALL
    return consumed, consumed * REPLY - unread(peer.sock)


async def test_a_client_that_never_reads_only_stalls_itself(autojump_clock, daemon) -> None:
    calls = b"".join(call_frame("NODE_GET_INFO", s) for s in range(2, CALLS + 2))
    async with connected(daemon) as greedy, connected(daemon) as good:
        for p in (greedy, good):
            assert await p.result("AUTH_LIST") == [0]
            await p.result("CONNECT_OPEN", "test:///default", 0)
        greedy.sent = 0                   # count the calls below only
        async with trio.open_nursery() as nursery:
            nursery.start_soon(greedy.send, calls)
            await trio.testing.wait_all_tasks_blocked()
            # the daemon stopped reading the greedy client: most of its calls
            # wait in the socket, and the replies the daemon holds in memory
            # stay under the pause threshold plus those to one read of calls
            consumed, held = progress(greedy)
            assert consumed < CALLS // 2
            assert held <= OUTBOX_PAUSE + RECEIVE_SIZE // CALL * REPLY
            # ...and everyone else is served meanwhile
            for _ in range(5):
                assert await good.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION
                assert (await good.result("NODE_GET_INFO")).cpus > 0
            assert progress(greedy) == (consumed, held)       # nothing moved for it
            # once it reads, it gets every reply, in order
            serials = []
            while len(serials) < CALLS:
                pkt = await greedy.packet()
                assert pkt is not None and pkt.header.status == frame.OK
                serials.append(pkt.header.serial)
            assert serials == list(range(2, CALLS + 2))


async def test_at_max_clients_the_next_client_waits_in_the_backlog(
        autojump_clock, tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "d", max_clients=2, max_anonymous_clients=2)
    daemon.add_unix_listener(tmp_path / "sock", daemon.libvirtd, readonly=False, mode=0o700)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(daemon._accept_loop, daemon.listeners[0], nursery)
        first, second = await dial(tmp_path / "sock"), await dial(tmp_path / "sock")
        for p in (first, second):
            assert await p.result("AUTH_LIST") == [0]
        third = await dial(tmp_path / "sock")            # connect() succeeds: the backlog
        serial = await third.call("CONNECT_GET_LIB_VERSION")
        with trio.move_on_after(3600) as waiting:
            await third.packet()
        assert waiting.cancelled_caught and len(daemon.libvirtd.clients) == 2
        t0 = trio.current_time()
        first.sock.close()                               # a slot frees: served at once
        pkt = await third.packet()
        assert pkt is not None and pkt.header.serial == serial and pkt.header.status == frame.OK
        assert trio.current_time() == t0
        nursery.cancel_scope.cancel()
    daemon.close_listeners()
