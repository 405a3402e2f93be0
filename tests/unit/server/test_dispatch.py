"""The dispatcher (pyvirtd/dispatch.py) in-process: routing, refusals and their wording.

Runs the daemon's own connection and dispatch code over a socketpair
(server_harness.py); the test driver answers what reaches a driver.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode
from server_harness import PROC, REMOTE, Peer, call_frame, connected, make_daemon


@pytest.fixture
def daemon(tmp_path: Path):
    return make_daemon(tmp_path / "d")


async def reply(peer: Peer, serial: int) -> frame.Packet:
    while True:
        pkt = await peer.packet()
        assert pkt is not None, "connection closed"
        if pkt.header.type == frame.REPLY and pkt.header.serial == serial:
            return pkt


async def error(peer: Peer, data: bytes, serial: int):
    await peer.send(data)
    pkt = await reply(peer, serial)
    assert pkt.header.status == frame.ERROR
    return decode(P.unpack_remote_error, pkt.body)


async def open_test(peer: Peer) -> None:
    assert await peer.result("AUTH_LIST") == [0]
    await peer.result("CONNECT_OPEN", "test:///default", 0)


async def test_unknown_program_and_procedure(daemon) -> None:
    async with connected(daemon) as peer:
        err = await error(peer, bytes(frame.build(0x1234, 1, 1, frame.CALL, 7, frame.OK)), 7)
        assert (err.code, err.domain) == (P.VIR_ERR_RPC, P.VIR_FROM_RPC)
        assert err.message == f"Cannot find program {0x1234} version 1"
        err = await error(peer, bytes(frame.build(*REMOTE, 9999, frame.CALL, 8, frame.OK)), 8)
        assert err.message == "unknown procedure: 9999"
        # the connection goes on
        assert await peer.result("CONNECT_SUPPORTS_FEATURE", P.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE)


async def test_undecodable_body_is_an_rpc_error(daemon) -> None:
    async with connected(daemon) as peer:
        await open_test(peer)
        proc = PROC["DOMAIN_LOOKUP_BY_NAME"]
        data = bytes(frame.build(*REMOTE, proc.number, frame.CALL, 40, frame.OK))  # no body
        err = await error(peer, data, 40)
        assert (err.code, err.message) == (P.VIR_ERR_RPC, "Unable to decode message payload")


async def test_driver_call_before_open_and_unsupported_calls(daemon) -> None:
    async with connected(daemon) as peer:
        err = await error(peer, call_frame("CONNECT_GET_HOSTNAME", 50), 50)
        assert err.code == P.VIR_ERR_INTERNAL_ERROR
        await open_test(peer)
        # a procedure the test driver lacks: named by its libvirt function and error domain
        err = await error(peer, call_frame("CONNECT_NUM_OF_NWFILTERS", 51), 51)
        assert (err.code, err.domain) == (P.VIR_ERR_NO_SUPPORT, P.VIR_FROM_NWFILTER)
        assert err.message == ("this function is not supported by the connection driver: "
                               "virConnectNumOfNWFilters")


async def test_read_only_connection_refuses_writes_by_api_name(daemon) -> None:
    async with connected(daemon) as peer:
        peer.client.readonly = True
        await open_test(peer)
        err = await error(peer, call_frame("DOMAIN_DEFINE_XML", 60, "<domain/>"), 60)
        assert (err.code, err.domain) == (P.VIR_ERR_OPERATION_DENIED, P.VIR_FROM_NONE)
        assert err.message == "operation forbidden: read only access prevents virDomainDefineXML"
        dom = await peer.result("DOMAIN_LOOKUP_BY_NAME", "test")
        # a read that asks for secrets is a write as far as the read-only socket goes
        err = await error(peer, call_frame("DOMAIN_GET_XML_DESC", 61, dom, 1), 61)
        assert err.code == P.VIR_ERR_OPERATION_DENIED
        assert "<name>test</name>" in await peer.result("DOMAIN_GET_XML_DESC", dom, 0)


async def test_replies_keep_the_serials_of_pipelined_calls(daemon) -> None:
    async with connected(daemon) as peer:
        await open_test(peer)
        await peer.send(b"".join(call_frame("CONNECT_GET_HOSTNAME", s) for s in (100, 101, 102)))
        serials = [(await reply(peer, s)).header.serial for s in (100, 101, 102)]
        assert serials == [100, 101, 102]
