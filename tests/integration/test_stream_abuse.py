"""Streams under abuse: uploads past their length, bad holes, aborts (issue #11, defect 7).

A real daemon serves qemu:///session; python-libvirt uploads and downloads
volumes, and where python-libvirt refuses to send the malformed packet itself
(a hole on a non-sparse stream), a raw socket client built on pyvirtd's own
codec sends it.  libvirtd 9.0 is the reference for every answer:
virFDStreamWrite refuses data past the declared length with ENOSPC,
virFDStreamSendHole wants a positive length, daemonStreamHandleHole refuses
holes on streams not opened as sparse, daemonStreamHandleAbort confirms an
abort with an empty STREAM / OK.
"""

from __future__ import annotations

import time
from importlib.metadata import entry_points
from pathlib import Path

import libvirt
import pytest

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode
from tests.conftest import RunningDaemon, start_daemon, stop_daemon
from tests.integration.test_protocol_robustness import PROC, REMOTE, RawClient

QEMU_DRIVER = any(ep.name == "qemu" for ep in entry_points(group="pyvirtd.drivers"))
pytestmark = pytest.mark.skipif(not QEMU_DRIVER, reason="storage is served through "
                                "qemu:///session connections")
KiB = 1024
SPARSE = libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("streams") / "pyvirtd")
    yield d
    assert stop_daemon(d) == 0, d.log()
    assert "Traceback" not in d.log()


@pytest.fixture
def pool(daemon: RunningDaemon, tmp_path: Path):
    conn = libvirt.open(daemon.uri("qemu:///session"))
    p = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{tmp_path.name}</name>"
        f"<target><path>{tmp_path / 'pool'}</path></target></pool>",
        libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
    yield conn, p, tmp_path / "pool"
    p.destroy()
    conn.close()


def new_volume(p, name: str, size: int = 64 * KiB):
    return p.createXML(f"<volume><name>{name}</name><capacity>{size}</capacity>"
                       f"<allocation>{size}</allocation></volume>", 0)


def wait_until_deletable(vol, timeout: float = 10.0) -> None:
    """The stream's work releases the volume as it unwinds: wait for that, then delete."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            vol.delete(0)
            return
        except libvirt.libvirtError as err:
            if "still in use" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# --------------------------------------------------------- declared length

def test_upload_past_its_length_fails_and_writes_nothing_past_it(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "past")
    st = conn.newStream(0)
    vol.upload(st, 1000, 3000, 0)          # 3000 bytes from offset 1000
    with pytest.raises(libvirt.libvirtError) as info:
        st.send(b"a" * 2500)
        st.send(b"b" * 2500)               # 2000 past the length
        st.finish()
    assert info.value.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR
    assert info.value.get_error_domain() == libvirt.VIR_FROM_STREAMS
    assert str(info.value) == "cannot write to stream: No space left on device"
    data = (target / "past").read_bytes()
    assert data == bytes(1000) + b"a" * 2500 + b"b" * 500 + bytes(64 * KiB - 4000)
    assert conn.getLibVersion() > 0        # the connection keeps working
    wait_until_deletable(vol)


def test_upload_of_exactly_its_length_succeeds(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "exact")
    st = conn.newStream(0)
    vol.upload(st, 0, 4000, 0)
    st.send(b"c" * 1000)
    st.send(b"d" * 3000)
    st.finish()
    assert (target / "exact").read_bytes()[:4001] == b"c" * 1000 + b"d" * 3000 + b"\0"
    wait_until_deletable(vol)


def test_sparse_upload_hole_past_the_length_is_cut_at_the_length(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "holepast")
    (target / "holepast").write_bytes(b"z" * 64 * KiB)
    st = conn.newStream(0)
    vol.upload(st, 0, 8 * KiB, SPARSE)
    st.send(b"e" * KiB)
    st.sendHole(1 << 40)                   # cut at 8 KiB: not an error, as in libvirt
    st.finish()
    data = (target / "holepast").read_bytes()
    assert len(data) == 64 * KiB           # the file did not grow to a terabyte
    assert data == b"e" * KiB + bytes(7 * KiB) + b"z" * 56 * KiB
    wait_until_deletable(vol)


# ------------------------------------------------------------------- holes

def test_negative_and_zero_holes_are_refused(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "neg")
    (target / "neg").write_bytes(b"y" * 64 * KiB)
    for length in (-4096, 0):
        st = conn.newStream(0)
        vol.upload(st, 0, 0, SPARSE)
        st.send(b"f" * 100)
        with pytest.raises(libvirt.libvirtError) as info:
            st.sendHole(length)
            st.send(b"g" * 100)
            st.finish()
        assert info.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
        assert "length in virStreamSendHole must be greater than zero" in str(info.value)
    # nothing moved backwards or got punched: only the first data arrived
    assert (target / "neg").read_bytes() == b"f" * 100 + b"y" * (64 * KiB - 100)
    assert conn.getLibVersion() > 0
    wait_until_deletable(vol)


def stream_error(raw: RawClient, serial: int) -> tuple:
    """The STREAM / ERROR that ends stream ``serial``, decoded."""
    deadline = time.monotonic() + 10
    while True:
        pkt = raw.packet(max(0.01, deadline - time.monotonic()))
        if pkt.header.serial == serial and pkt.header.type == frame.STREAM:
            assert pkt.header.status == frame.ERROR, pkt
            return decode(P.unpack_remote_error, pkt.body)


def raw_upload(daemon: RunningDaemon, path: Path, flags: int) -> tuple[RawClient, int]:
    """A raw client that has opened an upload of the volume at ``path``; returns it and the serial."""
    raw = RawClient(daemon.sock, timeout=10)
    raw.open("qemu:///session")
    vol = raw.result("STORAGE_VOL_LOOKUP_BY_PATH", str(path))
    serial = raw.call("STORAGE_VOL_UPLOAD", vol, 0, 0, flags)
    assert raw.reply(serial).header.status == frame.OK
    return raw, serial


def send_hole(raw: RawClient, serial: int, length: int, flags: int = 0) -> None:
    body = length.to_bytes(8, "big", signed=True) + flags.to_bytes(4, "big")
    raw.send(frame.build_raw(*REMOTE, PROC["STORAGE_VOL_UPLOAD"].number, frame.STREAM_HOLE,
                             serial, frame.CONTINUE, body))


def test_hole_on_a_stream_not_opened_sparse_is_refused(daemon, pool) -> None:
    # python-libvirt will not send it ("Skipping is not supported with this stream")
    conn, p, target = pool
    vol = new_volume(p, "dense")
    (target / "dense").write_bytes(b"x" * 64 * KiB)
    raw, serial = raw_upload(daemon, target / "dense", 0)
    send_hole(raw, serial, 16 * KiB)
    err = stream_error(raw, serial)
    assert err[0] == P.VIR_ERR_RPC and err[1] == P.VIR_FROM_STREAMS
    assert err[2] == "Unexpected stream hole"
    assert (target / "dense").read_bytes() == b"x" * 64 * KiB      # nothing punched
    assert raw.result("CONNECT_GET_VERSION") > 0      # the connection keeps working
    raw.close()
    wait_until_deletable(vol)


@pytest.mark.parametrize("body", [b"", b"\0" * 8, b"\0" * 20], ids=["empty", "short", "long"])
def test_malformed_hole_is_refused(daemon, pool, body: bytes) -> None:
    conn, p, target = pool
    vol = new_volume(p, "malformed")
    raw, serial = raw_upload(daemon, target / "malformed", SPARSE)
    raw.send(frame.build_raw(*REMOTE, PROC["STORAGE_VOL_UPLOAD"].number, frame.STREAM_HOLE,
                             serial, frame.CONTINUE, body))
    err = stream_error(raw, serial)
    assert err[0] == P.VIR_ERR_RPC and err[2] == "Unable to decode message payload"
    assert raw.result("CONNECT_GET_VERSION") > 0
    raw.close()
    wait_until_deletable(vol)


def test_hole_with_flags_is_refused(daemon, pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "holeflags")
    raw, serial = raw_upload(daemon, target / "holeflags", SPARSE)
    send_hole(raw, serial, 4096, flags=1)
    err = stream_error(raw, serial)
    assert err[0] == P.VIR_ERR_INVALID_ARG
    assert "unsupported flags (0x1)" in err[2]
    raw.close()
    wait_until_deletable(vol)


def test_unknown_stream_status_is_refused(daemon, pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "status")
    raw, serial = raw_upload(daemon, target / "status", 0)
    raw.send(frame.build_raw(*REMOTE, PROC["STORAGE_VOL_UPLOAD"].number, frame.STREAM,
                             serial, 7))
    err = stream_error(raw, serial)
    assert err[0] == P.VIR_ERR_RPC and err[2] == "stream aborted with unexpected status 7"
    raw.close()
    wait_until_deletable(vol)


# ------------------------------------------------------------------- abort

def test_abort_of_an_upload_is_confirmed(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "abortup")
    st = conn.newStream(0)
    vol.upload(st, 0, 0, 0)
    st.send(b"h" * 5000)
    assert st.abort() == 0                 # no error: libvirtd answers an abort with OK
    wait_until_deletable(vol)              # and the volume is released
    assert conn.getLibVersion() > 0


def test_abort_of_a_download_is_confirmed(pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "abortdown", size=8 * 1024 * KiB)
    (target / "abortdown").write_bytes(b"k" * 8 * 1024 * KiB)
    st = conn.newStream(0)
    vol.download(st, 0, 0, 0)
    assert st.recv(64 * KiB)[:1] == b"k"
    assert st.abort() == 0
    wait_until_deletable(vol)
    assert conn.getLibVersion() > 0


def test_raw_abort_is_answered_with_an_empty_ok(daemon, pool) -> None:
    conn, p, target = pool
    vol = new_volume(p, "rawabort")
    raw, serial = raw_upload(daemon, target / "rawabort", 0)
    raw.send(frame.build_raw(*REMOTE, PROC["STORAGE_VOL_UPLOAD"].number, frame.STREAM,
                             serial, frame.ERROR))
    deadline = time.monotonic() + 10
    while True:
        pkt = raw.packet(max(0.01, deadline - time.monotonic()))
        if pkt.header.serial == serial:
            break
    assert (pkt.header.type, pkt.header.status, bytes(pkt.body)) == (frame.STREAM, frame.OK, b"")
    assert raw.result("CONNECT_GET_VERSION") > 0
    raw.close()
    wait_until_deletable(vol)
