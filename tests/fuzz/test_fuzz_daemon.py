"""Property-based fuzzing of the decoder and the dispatcher through a real daemon's sockets.

The seeds are the frames stock clients send for the traced actions
(tests/data/fuzz-seeds.json, recorded by tests/fuzz/record_seeds.py from
the actions of client-traces.json).  Hypothesis mutates them: inside a
frame that stays well framed (a header field, a body word such as a count
or a string length set to a huge, negative or boundary value, a body cut
short), so the dispatcher and the decoders see it; and blindly (bit flips,
such words anywhere including the length words, truncation, splicing with
another seed, frames dropped or repeated, junk inserted).  Each mutant is sent to the read-write
or the read-only socket of one daemon, and then:

- the daemon is still running,
- its resident memory stays bounded (VmRSS under RSS_LIMIT_MIB),
- a second connection, opened before the fuzzing, still answers a
  CONNECT_GET_VERSION, and so does a new one (waited for with a generous
  liveness bound, LIVENESS_S, not a speed assertion).

`make test` runs a few dozen examples, derandomized; `make fuzz` runs
PYVIRTD_FUZZ_EXAMPLES of them (default there: 2000) with fresh randomness.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import libvirt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirtd.rpc import frame
from tests.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.test_protocol_robustness import RawClient

REPO = Path(__file__).resolve().parents[2]
_CORPUS = json.loads((REPO / "tests" / "data" / "fuzz-seeds.json").read_text())
SEEDS = [[bytes.fromhex(f) for f in s["frames"]] for s in _CORPUS]
# the seeds that open streams carry the most state (streams, holes, finish):
# drawn six times as often as the others
SEED_CHOICES = [i for i, s in enumerate(_CORPUS)
                for _ in range(6 if s["action"] in ("vol-upload", "vol-download") else 1)]
EXAMPLES = int(os.environ.get("PYVIRTD_FUZZ_EXAMPLES", "0"))
RSS_LIMIT_MIB = 400
LIVENESS_S = 10.0

# 32-bit values that break decoders: sizes at and past the protocol's limits,
# sign boundaries, zero and one
WORDS = [0, 1, 2, 3, 0x7F, 0xFF, 0xFFFF, 0x10000, 0x3FFFFF, 0x400000, 0x400001,
         frame.MESSAGE_MAX - 1, frame.MESSAGE_MAX, frame.MESSAGE_MAX + 1, 0x7FFFFFFE, 0x7FFFFFFF,
         0x80000000, 0x80000001, 0xFFFFFFFE, 0xFFFFFFFF, 28, 27, 24, 32]

POS = st.integers(0, 1 << 20)
# header fields by their word index after the length word: prog, vers, proc, type, serial, status
HEADER_VALUES = st.one_of(st.integers(0, 8), st.sampled_from(WORDS))
MUTATION = st.one_of(
    # structure-aware: the frame stays well framed, so the dispatcher gets it
    st.tuples(st.just("body_cut"), POS, POS),
    st.tuples(st.just("body_word"), POS, POS, st.sampled_from(WORDS)),
    st.tuples(st.just("header"), POS, st.integers(0, 5), HEADER_VALUES),
    # blind: bytes anywhere, framing included
    st.tuples(st.just("flip"), POS, st.integers(0, 7)),
    st.tuples(st.just("word"), POS, st.sampled_from(WORDS)),
    st.tuples(st.just("truncate"), POS),
    st.tuples(st.just("splice"), st.integers(0, len(SEEDS) - 1), POS, POS),
    st.tuples(st.just("insert"), POS, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("repeat"), POS, st.integers(1, 50)),
    st.tuples(st.just("drop"), POS),
)


def reframe(head: bytes, body: bytes) -> bytes:
    """A frame from its header (24 bytes) and a body, with the length word that fits."""
    return (frame.LENGTH_SIZE + len(head) + len(body)).to_bytes(4, "big") + head + body


def mutate(frames: list[bytes], mutations: list[tuple]) -> bytes:
    """Apply frame-level mutations (well framed ones, repeat, drop, splice), then byte-level ones."""
    frames = list(frames)
    H = frame.LENGTH_SIZE + frame.HEADER_SIZE
    for m in mutations:
        if m[0] in ("body_cut", "body_word", "header") and frames:
            i = m[1] % len(frames)
            head, body = bytearray(frames[i][4:H]), bytearray(frames[i][H:])
            if m[0] == "body_cut":
                del body[m[2] % (len(body) + 1):]
            elif m[0] == "body_word" and len(body) >= 4:
                at = (m[2] % (len(body) - 3)) & ~3
                body[at:at + 4] = m[3].to_bytes(4, "big")
            elif m[0] == "header":
                head[4 * m[2]:4 * m[2] + 4] = (m[3] & 0xFFFFFFFF).to_bytes(4, "big")
            frames[i] = reframe(bytes(head), bytes(body))
        elif m[0] == "repeat" and frames:
            i = m[1] % len(frames)
            frames[i:i + 1] = [frames[i]] * m[2]
        elif m[0] == "drop" and frames:
            del frames[m[1] % len(frames)]
        elif m[0] == "splice":
            other = SEEDS[m[1]]
            if other:
                cut = m[2] % (len(frames) + 1)
                frames = frames[:cut] + other[m[3] % len(other):]
    data = bytearray(b"".join(frames))
    for m in mutations:
        if not data:
            break
        if m[0] == "flip":
            data[m[1] % len(data)] ^= 1 << m[2]
        elif m[0] == "word" and len(data) >= 4:
            at = (m[1] % (len(data) - 3)) & ~3       # XDR words are 4-aligned
            data[at:at + 4] = m[2].to_bytes(4, "big")
        elif m[0] == "truncate":
            del data[m[1] % len(data):]
        elif m[0] == "insert":
            at = m[1] % (len(data) + 1)
            data[at:at] = m[2]
    return bytes(data)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def send_and_drain(path: Path, data: bytes) -> None:
    """Send ``data`` as one client, then read until the daemon closes or LIVENESS_S passes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(LIVENESS_S)
    try:
        s.connect(str(path))
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return            # the daemon dropped us while we wrote: fine
        deadline = time.monotonic() + LIVENESS_S
        while time.monotonic() < deadline:
            try:
                if not s.recv(1 << 16):
                    return
            except socket.timeout:
                return
            except OSError:
                return
    finally:
        s.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A daemon with the objects the seeds name (a started dir pool and its volume)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    d = start_daemon(tmp / "pyvirtd")
    conn = libvirt.open(d.uri("qemu:///session"))
    watcher = RawClient(d.sock, timeout=LIVENESS_S)
    watcher.open("qemu:///session")
    try:
        yield d, conn, watcher, tmp
    finally:
        try:
            cleanup(conn)
        finally:
            conn.close()
            watcher.close()
            assert stop_daemon(d) == 0, d.log()[-3000:]
    bugs = tracebacks(d.log())
    assert not bugs, "\n\n".join(bugs[:5])


def tracebacks(log: str) -> list[str]:
    """Every logged traceback, each from its log line to the exception line."""
    out, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:     # exception groups indent it
            end = i + 1
            while end < len(lines) and (lines[end][:1] in (" ", "|", "+", "")):
                end += 1
            out.append("\n".join(lines[max(0, i - 1):end + 1]))
    return out


def cleanup(conn) -> None:
    """Stop whatever a mutant started (guests, networks) so nothing outlives the test."""
    for dom in conn.listAllDomains(0):
        if dom.isActive():
            dom.destroy()
    for net in conn.listAllNetworks(0):
        if net.isActive():
            net.destroy()


def ensure_pool(conn, tmp: Path) -> None:
    """The seeds' pool and volume, back if a mutant destroyed them."""
    try:
        pool = conn.storagePoolLookupByName("rpctrace-pool")
    except libvirt.libvirtError:
        (tmp / "pool").mkdir(exist_ok=True)
        pool = conn.storagePoolDefineXML(
            f"<pool type='dir'><name>rpctrace-pool</name>"
            f"<target><path>{tmp / 'pool'}</path></target></pool>", 0)
    if not pool.isActive():
        pool.create(0)
    try:
        pool.storageVolLookupByName("up.raw")
    except libvirt.libvirtError:
        pool.createXML("<volume><name>up.raw</name><capacity>1048576</capacity></volume>", 0)


def answers(client: RawClient) -> bool:
    """CONNECT_GET_VERSION answered OK within the liveness bound."""
    pkt = client.reply(client.call("CONNECT_GET_VERSION"), timeout=LIVENESS_S)
    return pkt.header.status == frame.OK


def check_alive(d: RunningDaemon, watcher: RawClient) -> None:
    assert d.proc.poll() is None, d.log()[-5000:]
    assert answers(watcher)                                   # the old connection answers
    fresh = RawClient(d.sock, timeout=LIVENESS_S)             # and a new one
    try:
        fresh.open("test:///default")
        assert answers(fresh)
    finally:
        fresh.close()
    rss = rss_mib(d.proc.pid)
    assert rss < RSS_LIMIT_MIB, f"daemon RSS {rss:.0f} MiB"


if EXAMPLES:     # make fuzz: many examples, new randomness each run
    FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
else:            # make test: a bounded, repeatable run
    FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(seed=st.sampled_from(SEED_CHOICES), mutations=st.lists(MUTATION, max_size=6),
       readonly=st.booleans())
def test_mutated_client_frames(target, seed: int, mutations: list, readonly: bool) -> None:
    d, conn, watcher, tmp = target
    ensure_pool(conn, tmp)
    send_and_drain(d.sock_ro if readonly else d.sock, mutate(SEEDS[seed], mutations))
    check_alive(d, watcher)


def test_seeds_replay_cleanly(target) -> None:
    """Every seed unmutated: the daemon answers, nothing breaks (checks the corpus itself)."""
    d, conn, watcher, tmp = target
    for frames in SEEDS:
        ensure_pool(conn, tmp)
        send_and_drain(d.sock, b"".join(frames))
    check_alive(d, watcher)
