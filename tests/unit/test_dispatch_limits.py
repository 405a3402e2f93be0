"""The dispatcher's bounds on what a call may make the daemon build (issue 11)."""

from __future__ import annotations

import pytest

from pyvirtd.dispatch import Dispatcher, check_arg_limits
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode

PROC = {p.name: p for p in P.PROCEDURES if p.program == "remote"}


class Recorder:
    """Stands in for a connection: keeps what the dispatcher sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def test_a_reply_over_the_message_limit_becomes_an_error() -> None:
    proc = PROC["DOMAIN_GET_XML_DESC"]
    header = frame.Header(P.REMOTE_PROGRAM, 1, proc.number, frame.CALL, 7, frame.OK)
    out = Recorder()
    Dispatcher._reply(out, header, proc, "x" * (frame.MESSAGE_MAX + 1))
    (data,) = out.sent
    assert len(data) < 4096
    reader = frame.FrameReader()
    reader.feed(data)
    (pkt,) = reader.packets()
    assert (pkt.header.serial, pkt.header.status) == (7, frame.ERROR)
    err = decode(P.unpack_remote_error, pkt.body)
    assert (err.code, err.message) == (P.VIR_ERR_RPC, "Unable to encode message payload")


def test_a_reply_at_the_limit_is_sent() -> None:
    proc = PROC["DOMAIN_GET_XML_DESC"]
    header = frame.Header(P.REMOTE_PROGRAM, 1, proc.number, frame.CALL, 8, frame.OK)
    out = Recorder()
    body = frame.MESSAGE_MAX - frame.HEADER_SIZE - 4       # the string's length word
    Dispatcher._reply(out, header, proc, "x" * body)
    assert len(out.sent[0]) == frame.LENGTH_SIZE + frame.MESSAGE_MAX


def _args(name: str, **fields):
    return decode(PROC[name].unpack_args, bytes(4096), exact=False)._replace(**fields)


def test_products_lists_and_negatives() -> None:
    limits = P.ARG_LIMITS[("remote", PROC["NODE_GET_FREE_PAGES"].number)]
    check_arg_limits(_args("NODE_GET_FREE_PAGES", pages=[4, 2048], cellCount=512), limits)
    with pytest.raises(VirError, match="the result won't fit"):
        check_arg_limits(_args("NODE_GET_FREE_PAGES", pages=[4, 2048], cellCount=513), limits)
    limits = P.ARG_LIMITS[("remote", PROC["DOMAIN_GET_VCPUS"].number)]
    check_arg_limits(_args("DOMAIN_GET_VCPUS", maxinfo=16384, maplen=512), limits)
    with pytest.raises(VirError) as exc:
        check_arg_limits(_args("DOMAIN_GET_VCPUS", maxinfo=16384, maplen=513), limits)
    assert exc.value.code == P.VIR_ERR_INTERNAL_ERROR
    with pytest.raises(VirError) as exc:
        check_arg_limits(_args("DOMAIN_GET_VCPUS", maxinfo=-1, maplen=0), limits)
    assert exc.value.code == P.VIR_ERR_INVALID_ARG


def test_every_list_and_parameter_count_has_a_limit() -> None:
    """The generator found a bound for each client-chosen count of the protocol."""
    # these functions size their reply themselves; the daemon never reads nparams
    server_sized = {"NETWORK_PORT_GET_PARAMETERS", "NODE_GET_SEV_INFO"}
    for proc in PROC.values():
        if proc.unpack_args is None or proc.name in server_sized:
            continue
        fields = decode(proc.unpack_args, bytes(4096), exact=False)._fields
        counts = [f for f in fields if f.startswith("max") or f in ("nparams", "maplen", "ncpumaps")]
        bounded = {f for lim in P.ARG_LIMITS.get(("remote", proc.number), ()) for f in lim.fields}
        assert set(counts) <= bounded, (proc.name, counts, bounded)
