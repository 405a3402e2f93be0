"""FrameReader and frame.build against hand-written wire bytes.

Every fixture is spelled out one 4-byte word per line, in the order the wire
carries them: length, prog, vers, proc, type, serial, status, then the body.
"""

from __future__ import annotations

import struct

import pytest

from pyvirtd.errors import ProtocolError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame


def words(*values: int) -> bytes:
    """Big-endian 32-bit words (negative values as two's complement)."""
    return b"".join(struct.pack(">i" if v < 0 else ">I", v) for v in values)


# CONNECT_GET_LIB_VERSION call, serial 7, empty body: 28 bytes.
LIB_VERSION_CALL = words(
    28,           # length, counting itself
    0x20008086,   # prog: remote
    1,            # vers
    157,          # proc: CONNECT_GET_LIB_VERSION
    0,            # type: CALL
    7,            # serial
    0,            # status: OK
)

# its reply: body is `unsigned hyper lib_ver` = 9000000, so 36 bytes.
LIB_VERSION_REPLY = words(
    36,           # length
    0x20008086,   # prog: remote
    1,            # vers
    157,          # proc: CONNECT_GET_LIB_VERSION
    1,            # type: REPLY
    7,            # serial (echoed)
    0,            # status: OK
    0, 9000000,   # body: hyper lib_ver, high word then low word
)

# keepalive PING: program "keep", MESSAGE, serial 0, no body (trace: 28 bytes).
PING = words(
    28,           # length
    0x6B656570,   # prog: keepalive ("keep")
    1,            # vers
    1,            # proc: PING
    2,            # type: MESSAGE
    0,            # serial
    0,            # status: OK
)

# CONNECT_SUPPORTS_FEATURE(PROGRAM_KEEPALIVE) call: body `int feature`, 32 bytes.
FEATURE_CALL = words(
    32,           # length
    0x20008086,   # prog: remote
    1,            # vers
    60,           # proc: CONNECT_SUPPORTS_FEATURE
    0,            # type: CALL
    1,            # serial
    0,            # status
    10,           # body: feature = VIR_DRV_FEATURE_PROGRAM_KEEPALIVE
)

# DOMAIN_CREATE_WITH_FILES call with 2 fds: the fd count follows the header,
# then the args {remote_nonnull_domain dom; unsigned flags}; after the packet
# come 2 dummy bytes, one per fd (virSocketSendFD).
WITH_FDS_CALL = words(
    64,           # length: 28 + 4 (nfds) + 32 (args)
    0x20008086,   # prog: remote
    1,            # vers
    310,          # proc: DOMAIN_CREATE_WITH_FILES
    4,            # type: CALL_WITH_FDS
    3,            # serial
    0,            # status
    2,            # fd count
    4, 0x74657374,  # dom.name: length 4, "test"
    0x01020304, 0x05060708, 0x090A0B0C, 0x0D0E0F10,  # dom.uuid: 16 raw bytes
    -1,           # dom.id: inactive
    0,            # flags
) + b"\0\0"       # the two dummy bytes that carried the fds


def test_fixture_lengths_are_their_first_word() -> None:
    for fixture in (LIB_VERSION_CALL, LIB_VERSION_REPLY, PING, FEATURE_CALL):
        assert struct.unpack(">I", fixture[:4])[0] == len(fixture)
    assert struct.unpack(">I", WITH_FDS_CALL[:4])[0] == len(WITH_FDS_CALL) - 2


def test_one_packet() -> None:
    r = frame.FrameReader()
    r.feed(FEATURE_CALL)
    (pkt,) = r.packets()
    assert pkt.header == frame.Header(0x20008086, 1, 60, frame.CALL, 1, frame.OK)
    assert bytes(pkt.body) == words(10)
    assert pkt.nfds == 0
    assert r.buffered == 0


def test_split_delivery_one_byte_at_a_time() -> None:
    r = frame.FrameReader()
    data = LIB_VERSION_REPLY + FEATURE_CALL
    got = []
    for i in range(len(data)):
        r.feed(data[i:i + 1])
        got += r.packets()
        if i < len(LIB_VERSION_REPLY) - 1:
            assert got == []
    assert [p.header.proc for p in got] == [157, 60]
    assert bytes(got[0].body) == words(0, 9000000)
    assert got[0].header.type == frame.REPLY
    assert bytes(got[1].body) == words(10)
    assert r.buffered == 0


def test_several_packets_in_one_chunk_and_a_partial_tail() -> None:
    r = frame.FrameReader()
    r.feed(LIB_VERSION_CALL + PING + FEATURE_CALL + LIB_VERSION_CALL[:10])
    pkts = r.packets()
    assert [(p.header.prog, p.header.proc, p.header.type) for p in pkts] == [
        (0x20008086, 157, frame.CALL),
        (0x6B656570, 1, frame.MESSAGE),
        (0x20008086, 60, frame.CALL),
    ]
    assert r.buffered == 10       # the partial packet stays buffered
    r.feed(LIB_VERSION_CALL[10:])
    (last,) = r.packets()
    assert last.header.serial == 7 and bytes(last.body) == b""


@pytest.mark.parametrize("length", [0, 3, 4, 27])
def test_length_shorter_than_a_header_is_a_protocol_error(length: int) -> None:
    r = frame.FrameReader()
    r.feed(words(length) + LIB_VERSION_CALL[4:])
    with pytest.raises(ProtocolError, match="shorter than a header"):
        r.packets()


def test_length_over_32_mib_is_a_protocol_error_before_the_body_arrives() -> None:
    r = frame.FrameReader()
    # VIR_NET_MESSAGE_MAX (32 MiB) excludes the length word: 32 MiB + 4 is the largest
    too_big = P.VIR_NET_MESSAGE_MAX + 4 + 1
    r.feed(words(too_big))
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        r.packets()


def test_largest_allowed_length_just_waits_for_more_data() -> None:
    r = frame.FrameReader()
    r.feed(words(P.VIR_NET_MESSAGE_MAX + 4) + LIB_VERSION_CALL[4:])
    assert r.packets() == []


def test_call_with_fds_count_and_dummy_bytes_are_skipped() -> None:
    r = frame.FrameReader()
    # the dummy bytes are followed by an ordinary packet, which must stay in frame
    data = WITH_FDS_CALL + FEATURE_CALL
    got = []
    for i in range(len(data)):          # even when split byte by byte
        r.feed(data[i:i + 1])
        got += r.packets()
    assert len(got) == 2
    fds, nxt = got
    assert fds.header.type == frame.CALL_WITH_FDS and fds.header.proc == 310
    assert fds.nfds == 2
    args = P.unpack_remote_domain_create_with_files_args(fds.body, 0)[0]
    assert args.dom.name == "test" and args.dom.id == -1 and args.flags == 0
    assert args.dom.uuid == bytes(range(1, 17))
    assert nxt.header.proc == 60 and bytes(nxt.body) == words(10)


def test_too_many_fds_is_a_protocol_error() -> None:
    r = frame.FrameReader()
    r.feed(words(32, 0x20008086, 1, 310, 4, 3, 0, 33))   # fd count 33 > 32
    with pytest.raises(ProtocolError):
        r.packets()


def test_with_fds_packet_without_its_count_is_a_protocol_error() -> None:
    r = frame.FrameReader()
    r.feed(words(28, 0x20008086, 1, 310, 4, 3, 0))
    with pytest.raises(ProtocolError, match="fd count"):
        r.packets()


def test_max_packet_is_configurable() -> None:
    r = frame.FrameReader(max_packet=100)
    r.feed(words(105))
    with pytest.raises(ProtocolError):
        r.packets()


# ------------------------------------------------------------------ build

def test_build_keepalive_ping_is_exactly_28_bytes() -> None:
    out = frame.build(0x6B656570, 1, 1, frame.MESSAGE, 0, frame.OK)
    assert bytes(out) == PING
    assert len(out) == 28
    assert frame.build_raw(0x6B656570, 1, 1, frame.MESSAGE, 0, frame.OK) == PING


def test_build_call_with_body() -> None:
    out = frame.build(0x20008086, 1, 60, frame.CALL, 1, frame.OK,
                      P.pack_remote_connect_supports_feature_args,
                      P.remote_connect_supports_feature_args(10))
    assert bytes(out) == FEATURE_CALL


def test_build_lib_version_reply() -> None:
    out = frame.build(0x20008086, 1, 157, frame.REPLY, 7, frame.OK,
                      P.pack_remote_connect_get_lib_version_ret,
                      P.remote_connect_get_lib_version_ret(9000000))
    assert bytes(out) == LIB_VERSION_REPLY


def test_build_node_get_info_reply_is_188_bytes() -> None:
    value = P.remote_node_get_info_ret(b"i686", 3145728, 16, 1400, 2, 2, 2, 2)
    out = frame.build(0x20008086, 1, 6, frame.REPLY, 4, frame.OK,
                      P.pack_remote_node_get_info_ret, value)
    expected = words(
        188,          # length: 28 + 160 body
        0x20008086,   # prog: remote
        1,            # vers
        6,            # proc: NODE_GET_INFO
        1,            # type: REPLY
        4,            # serial
        0,            # status: OK
        # model: char[32], every char widened to a 4-byte int (128 bytes)
        ord("i"), ord("6"), ord("8"), ord("6"), *([0] * 28),
        0, 3145728,   # memory: unsigned hyper (KiB)
        16,           # cpus
        1400,         # mhz
        2,            # nodes
        2,            # sockets
        2,            # cores
        2,            # threads
    )
    assert len(expected) == 188
    assert bytes(out) == expected
    r = frame.FrameReader()
    r.feed(out)
    (pkt,) = r.packets()
    assert len(pkt.body) == 160
    decoded = P.unpack_remote_node_get_info_ret(pkt.body, 0)[0]
    assert decoded.model == b"i686" + bytes(28)
    assert decoded[1:] == value[1:]


def test_build_with_fd_count() -> None:
    args = P.remote_domain_create_with_files_args(
        P.remote_nonnull_domain("test", bytes(range(1, 17)), -1), 0)
    out = frame.build(0x20008086, 1, 310, frame.CALL_WITH_FDS, 3, frame.OK,
                      P.pack_remote_domain_create_with_files_args, args, nfds=2)
    assert bytes(out) == WITH_FDS_CALL[:-2]


def test_build_error_reply_round_trips_through_the_reader() -> None:
    err = P.remote_error(39, 7, "unknown procedure: 9999", 2, None,
                         "%s", "unknown procedure: 9999", None, -1, -1, None)
    out = frame.build(0x20008086, 1, 9999, frame.REPLY, 5, frame.ERROR,
                      P.pack_remote_error, err)
    r = frame.FrameReader()
    r.feed(out)
    (pkt,) = r.packets()
    assert pkt.header == frame.Header(0x20008086, 1, 9999, frame.REPLY, 5, frame.ERROR)
    assert P.unpack_remote_error(pkt.body, 0) == (err, len(pkt.body))


def test_good_packet_before_garbage_is_still_delivered() -> None:
    """libvirtd answers a valid call that shares a read with garbage; so do we."""
    r = frame.FrameReader()
    r.feed(FEATURE_CALL + words(3) + b"junk")
    (pkt,) = r.packets()
    assert pkt.header.proc == 60
    assert isinstance(r.error, ProtocolError)
    with pytest.raises(ProtocolError, match="shorter than a header"):
        r.packets()
