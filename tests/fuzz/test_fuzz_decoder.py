"""The decoder in process: FrameReader and the generated unpack functions under mutated seeds.

Faster than the daemon fuzzer (no sockets), so it runs many more examples:
whatever bytes arrive, in whatever pieces, the frame reader hands out
packets or raises ProtocolError, and every call body either decodes or
raises XdrError; nothing else escapes, and nothing is allocated from a
length the peer chose before it is checked (a body's claimed size is
bounded by the frame it arrived in).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyvirtd.errors import ProtocolError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import XdrError, decode
from tests.fuzz.test_fuzz_daemon import EXAMPLES, MUTATION, SEEDS, mutate, settings

PROCS = {(p.prog, p.number): p for p in P.PROCEDURES}
DECODER = settings(max_examples=(EXAMPLES * 5) or 300, deadline=None, database=None,
                   derandomize=not EXAMPLES)


@DECODER
@given(seed=st.integers(0, len(SEEDS) - 1), mutations=st.lists(MUTATION, max_size=8),
       cuts=st.lists(st.integers(1, 4096), max_size=8))
def test_mutated_frames_decode_or_fail_cleanly(seed: int, mutations: list,
                                               cuts: list[int]) -> None:
    data = mutate(SEEDS[seed], mutations)
    reader = frame.FrameReader()
    packets: list[frame.Packet] = []
    pos = 0
    try:
        for n in [*cuts, len(data)]:       # the bytes arrive in arbitrary pieces
            reader.feed(data[pos:pos + n])
            pos += n
            packets += reader.packets()
    except ProtocolError:
        pass
    for pkt in packets:
        h = pkt.header
        assert len(pkt.body) <= frame.MESSAGE_MAX
        proc = PROCS.get((h.prog, h.proc))
        if proc is None or h.type not in (frame.CALL, frame.CALL_WITH_FDS):
            continue
        if proc.unpack_args is not None:
            try:
                decode(proc.unpack_args, pkt.body)
            except XdrError:
                pass
