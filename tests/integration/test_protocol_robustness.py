"""The daemon under protocol abuse: broken frames, bad calls, vanishing clients, limits, signals.

Misbehaving peers are raw sockets driven by a tiny client below (packets
built with pyvirtd.rpc.frame and the generated codec); the well-behaved
client they must not disturb is python-libvirt or virsh.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import libvirt
import pytest

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame
from pyvirtd.rpc.xdr import decode
from tests.conftest import RunningDaemon, start_daemon, stop_daemon, virsh, wait_for

REMOTE = (P.REMOTE_PROGRAM, 1)
KEEPALIVE = P.KEEPALIVE_PROGRAM
PING, PONG = 1, 2
PROC = {p.name: p for p in P.PROCEDURES if p.program == "remote"}
QEMU_PROC = {p.name: p for p in P.PROCEDURES if p.program == "qemu"}
LIB_VERSION = 9_000_000

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)   # keep stderr quiet


# ------------------------------------------------------------ raw client

class RawClient:
    """A libvirt RPC client with no manners: sends exactly what a test says."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = frame.FrameReader()
        self.pending: list[frame.Packet] = []
        self.serial = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def call(self, name: str, *fields, serial: int | None = None, procs=PROC,
             prog: tuple[int, int] = REMOTE, proc: int | None = None) -> int:
        """Send one CALL; returns its serial."""
        p = procs[name] if name else None
        if serial is None:
            serial, self.serial = self.serial, self.serial + 1
        number = proc if proc is not None else p.number
        if p is not None and p.pack_args is not None:
            data = frame.build(*prog, number, frame.CALL, serial, frame.OK, p.pack_args, fields)
        else:
            data = frame.build(*prog, number, frame.CALL, serial, frame.OK)
        self.send(data)
        return serial

    def packet(self, timeout: float | None = None) -> frame.Packet:
        """The next packet from the daemon; raises EOFError when it closes."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("daemon closed the connection")
            self.reader.feed(data)
            self.pending += self.reader.packets()
        return self.pending.pop(0)

    def reply(self, serial: int, timeout: float = 5.0) -> frame.Packet:
        """The REPLY to ``serial``, skipping keepalive and event messages."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self.packet(max(0.01, deadline - time.monotonic()))
            if pkt.header.type == frame.REPLY and pkt.header.serial == serial:
                return pkt

    def result(self, name: str, *fields, procs=PROC):
        """Call and decode a successful reply (bare value when it has one field)."""
        pkt = self.reply(self.call(name, *fields, procs=procs))
        assert pkt.header.status == frame.OK, decode(P.unpack_remote_error, pkt.body)
        p = procs[name]
        if p.unpack_ret is None:
            return None
        value = decode(p.unpack_ret, pkt.body)
        return value[0] if p.ret_fields == 1 else value

    def error(self, pkt: frame.Packet):
        assert pkt.header.status == frame.ERROR, pkt
        return decode(P.unpack_remote_error, pkt.body)

    def open(self, uri: str = "test:///default") -> None:
        assert self.result("AUTH_LIST") == [0]
        self.result("CONNECT_OPEN", uri, 0)

    def closed_by_daemon(self, timeout: float = 5.0) -> bool:
        """True once the daemon closes the socket (reads EOF or a reset)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.packet(max(0.01, deadline - time.monotonic()))
        except (EOFError, ConnectionResetError):
            return True
        except socket.timeout:
            return False
        return False

    def close(self) -> None:
        self.sock.close()


def words(*values: int) -> bytes:
    return b"".join(struct.pack(">i" if v < 0 else ">I", v) for v in values)


def admin(d: RunningDaemon, commands: str) -> str:
    p = subprocess.run(["virt-admin", "-c", d.admin_uri, commands], capture_output=True,
                       text=True, timeout=30, env=dict(os.environ, LC_ALL="C"))
    assert p.returncode == 0, p.stderr
    return p.stdout


def nclients(d: RunningDaemon) -> int:
    out = admin(d, "srv-clients-info libvirtd")
    return int(next(line.split(":")[1] for line in out.splitlines()
                    if line.startswith("nclients ")))


def wait_for_no_clients(d: RunningDaemon, timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: nclients(d) == 0, timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(admin(d, "srv-clients-list libvirtd")) from None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One daemon for the tests that leave no state behind."""
    d = start_daemon(tmp_path_factory.mktemp("robust") / "pyvirtd")
    yield d
    assert stop_daemon(d) == 0, d.log()
    assert "Traceback" not in d.log()


@pytest.fixture
def good(shared: RunningDaemon):
    """A well-behaved python-libvirt connection that must keep working."""
    conn = libvirt.open(shared.uri())
    assert conn.getLibVersion() == LIB_VERSION
    yield conn
    assert conn.getLibVersion() == LIB_VERSION
    conn.close()


# ------------------------------------------------------------ broken frames

BROKEN_STREAMS = {
    # "GET " read as a length is 0x47455420: far over 32 MiB
    "http-garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversize-length": words(P.VIR_NET_MESSAGE_MAX + 5) + bytes(24),
    "length-below-header": words(27) + words(*REMOTE, 66, 0, 0, 0),
    "length-zero": bytes(64),
}


@pytest.mark.parametrize("name", BROKEN_STREAMS)
def test_broken_frame_closes_only_that_connection(shared, good, name: str) -> None:
    bad = RawClient(shared.sock)
    bad.send(BROKEN_STREAMS[name])
    assert bad.closed_by_daemon()
    bad.close()
    assert good.getHostname()
    assert libvirt.open(shared.uri()).getLibVersion() == LIB_VERSION


def test_truncated_frame_then_close(shared, good) -> None:
    bad = RawClient(shared.sock)
    bad.open()
    whole = frame.build(*REMOTE, PROC["CONNECT_GET_HOSTNAME"].number, frame.CALL, 9, frame.OK)
    bad.send(whole[:17])
    # while the daemon waits for the rest, others are served
    assert good.getLibVersion() == LIB_VERSION
    bad.close()
    assert libvirt.open(shared.uri()).getLibVersion() == LIB_VERSION


def test_oversize_length_is_refused_before_the_body(shared, good) -> None:
    bad = RawClient(shared.sock)
    bad.open()
    bad.send(words(P.VIR_NET_MESSAGE_MAX + 5))    # only the length word: no 32 MiB needed
    assert bad.closed_by_daemon()
    assert good.getLibVersion() == LIB_VERSION


# ------------------------------------------------------------ bad calls

def test_unknown_program_gets_an_rpc_error_echoing_the_call(shared) -> None:
    c = RawClient(shared.sock)
    c.send(frame.build(0x12345678, 3, 42, frame.CALL, 77, frame.OK))
    pkt = c.packet()
    assert pkt.header == frame.Header(0x12345678, 3, 42, frame.REPLY, 77, frame.ERROR)
    err = c.error(pkt)
    assert err.code == P.VIR_ERR_RPC and err.domain == P.VIR_FROM_RPC
    assert err.message == "Cannot find program 305419896 version 3"
    # non-call packets to an unknown program are dropped silently; the connection lives on
    c.send(frame.build(0x12345678, 3, 42, frame.MESSAGE, 78, frame.OK))
    assert c.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION
    c.close()


def test_unknown_procedure(shared) -> None:
    c = RawClient(shared.sock)
    serial = c.call("", proc=9999, serial=5)
    pkt = c.reply(serial)
    assert pkt.header[:3] == (*REMOTE, 9999) and pkt.header.status == frame.ERROR
    err = c.error(pkt)
    assert (err.code, err.message) == (P.VIR_ERR_RPC, "unknown procedure: 9999")
    # an event procedure number is not callable either
    pkt = c.reply(c.call("", proc=PROC["DOMAIN_EVENT_LIFECYCLE"].number))
    assert c.error(pkt).message == f"unknown procedure: {PROC['DOMAIN_EVENT_LIFECYCLE'].number}"
    assert c.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION


@pytest.mark.parametrize("body", [b"", b"\0\0", words(10, 0)], ids=["empty", "short", "trailing"])
def test_undecodable_body_is_answered_and_the_connection_keeps_working(shared, body) -> None:
    c = RawClient(shared.sock)
    number = PROC["CONNECT_SUPPORTS_FEATURE"].number
    c.send(frame.build_raw(*REMOTE, number, frame.CALL, 3, frame.OK, body))
    err = c.error(c.reply(3))
    assert (err.code, err.message) == (P.VIR_ERR_RPC, "Unable to decode message payload")
    assert c.result("CONNECT_SUPPORTS_FEATURE", P.VIR_DRV_FEATURE_REMOTE_CLOSE_CALLBACK) == 1
    c.close()


def test_driver_call_before_connect_open(shared) -> None:
    c = RawClient(shared.sock)
    assert c.result("AUTH_LIST") == [0]
    assert c.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION   # the daemon's own: fine
    err = c.error(c.reply(c.call("NODE_GET_INFO")))
    assert err.code == P.VIR_ERR_INTERNAL_ERROR
    assert err.message == "internal error: connection not open"
    c.open()
    assert c.result("NODE_GET_INFO").cpus > 0
    c.close()


def test_second_connect_open_fails(shared) -> None:
    c = RawClient(shared.sock)
    c.open()
    err = c.error(c.reply(c.call("CONNECT_OPEN", "test:///default", 0)))
    assert err.code == P.VIR_ERR_INTERNAL_ERROR
    assert err.message == "internal error: connection already open"
    assert c.result("CONNECT_GET_HOSTNAME")          # the first connection is intact
    c.close()


def test_unimplemented_procedure_is_no_support(shared) -> None:
    c = RawClient(shared.sock)
    c.open()
    # the test driver has no QEMU monitor
    serial = c.call("DOMAIN_MONITOR_COMMAND", P.remote_nonnull_domain("test", bytes(16), 1),
                    "{}", 0, procs=QEMU_PROC, prog=(P.QEMU_PROGRAM, 1))
    err = c.error(c.reply(serial))
    assert err.code == P.VIR_ERR_NO_SUPPORT
    assert err.message == ("this function is not supported by the connection driver: "
                           "virDomainQemuMonitorCommand")
    assert err.domain == P.VIR_FROM_DOMAIN
    # libvirt's own spelling of the function, capitals included, and its file's error domain
    err = c.error(c.reply(c.call("CONNECT_NUM_OF_NWFILTERS")))
    assert (err.code, err.domain, err.message) == (
        P.VIR_ERR_NO_SUPPORT, P.VIR_FROM_NWFILTER,
        "this function is not supported by the connection driver: virConnectNumOfNWFilters")
    assert c.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION
    c.close()


def test_calls_are_answered_in_pipelined_order_with_their_serials(shared) -> None:
    c = RawClient(shared.sock)
    c.open()
    data = b"".join(frame.build(*REMOTE, PROC["CONNECT_GET_LIB_VERSION"].number, frame.CALL,
                                s, frame.OK) for s in range(100, 140))
    c.send(data)
    serials = sorted(c.packet().header.serial for _ in range(40))
    assert serials == list(range(100, 140))
    c.close()


def test_daemon_answers_ping_with_pong(shared) -> None:
    c = RawClient(shared.sock)
    c.send(frame.build_raw(KEEPALIVE, 1, PING, frame.MESSAGE, 0, frame.OK))
    c.sock.settimeout(5)
    raw = b""
    while len(raw) < 28:
        raw += c.sock.recv(28 - len(raw))
    assert raw == words(28, KEEPALIVE, 1, PONG, frame.MESSAGE, 0, frame.OK)
    c.close()


def test_a_client_that_never_reads_only_stalls_itself(shared, good) -> None:
    # 30000 NODE_GET_INFO replies are 5.6 MB: past the daemon's 4 MiB outbox
    # pause, so it stops reading this client until the client reads
    n = 30000
    c = RawClient(shared.sock, timeout=30)
    c.open()
    calls = b"".join(frame.build(*REMOTE, PROC["NODE_GET_INFO"].number, frame.CALL, s, frame.OK)
                     for s in range(n))
    sender = threading.Thread(target=c.send, args=(calls,))
    sender.start()
    # while it sends (the pause itself is timed in tests/unit/server), others are served
    for _ in range(5):
        assert good.getLibVersion() == LIB_VERSION
    got = 0
    while got < n:
        pkt = c.packet()
        assert pkt.header.status == frame.OK and len(pkt.body) == 160
        got += 1
    sender.join()
    c.close()


# ------------------------------------------------------------ many vanishing clients

def _vanish_after_call(path: Path) -> None:
    c = RawClient(path)
    c.send(frame.build(*REMOTE, PROC["AUTH_LIST"].number, frame.CALL, 0, frame.OK)
           + frame.build(*REMOTE, PROC["CONNECT_OPEN"].number, frame.CALL, 1, frame.OK,
                         PROC["CONNECT_OPEN"].pack_args, ("test:///default", 0))
           + frame.build(*REMOTE, PROC["NODE_GET_INFO"].number, frame.CALL, 2, frame.OK))
    # RST instead of FIN: the daemon's writes may fail with ECONNRESET or EPIPE
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def _vanish_mid_frame(path: Path) -> None:
    c = RawClient(path)
    c.send(frame.build(*REMOTE, PROC["CONNECT_OPEN"].number, frame.CALL, 0, frame.OK,
                       PROC["CONNECT_OPEN"].pack_args, ("test:///default", 0))[:30])
    c.close()


def test_200_vanishing_clients_do_not_disturb_a_good_one(shared) -> None:
    good = libvirt.open(shared.uri())
    errors: list[BaseException] = []
    start = threading.Barrier(201)

    def run(fn) -> None:
        try:
            start.wait(10)
            fn(shared.sock)
        except BaseException as exc:   # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(_vanish_after_call if i % 2 else _vanish_mid_frame,))
               for i in range(200)]
    for t in threads:
        t.start()
    start.wait(10)
    answers = 0
    while any(t.is_alive() for t in threads) or answers < 20:
        assert good.getLibVersion() == LIB_VERSION
        assert good.getInfo()[2] > 0
        answers += 1
    for t in threads:
        t.join()
    assert errors == []
    good.close()
    wait_for_no_clients(shared)


# ------------------------------------------------------------ keepalive

KEEPALIVE_CONFIG = "keepalive_interval: 1\nkeepalive_count: 2\n"


@pytest.fixture(scope="module")
def keepalive_daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("keepalive") / "pyvirtd", config=KEEPALIVE_CONFIG)
    yield d
    stop_daemon(d)


def test_keepalive_drops_a_silent_client_and_keeps_a_responsive_one(keepalive_daemon) -> None:
    """The wiring, over the daemon's real socket; the exact timing is proven on a
    mock clock in tests/unit/server/test_client_timing.py."""
    silent, polite = RawClient(keepalive_daemon.sock), RawClient(keepalive_daemon.sock)
    for c in (silent, polite):
        assert c.result("CONNECT_SUPPORTS_FEATURE", P.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE) == 1
    silent_gone = threading.Event()
    outcome: dict[str, object] = {}

    def answer_pings() -> None:
        # answer every PING until the silent client has been dropped, and at
        # least keepalive_count + 1 of them: more than the silent one survived
        pongs = 0
        try:
            while not silent_gone.is_set() or pongs < 3:
                try:
                    pkt = polite.packet(0.2)
                except socket.timeout:
                    continue
                if pkt.header[:4] == (KEEPALIVE, 1, PING, frame.MESSAGE):
                    polite.send(frame.build_raw(KEEPALIVE, 1, PONG, frame.MESSAGE, 0, frame.OK))
                    pongs += 1
            outcome["pongs"] = pongs
        except BaseException as exc:
            outcome["error"] = exc

    helper = threading.Thread(target=answer_pings)
    helper.start()
    pings = []
    try:
        while True:
            pkt = silent.packet(10)
            pings.append(pkt)
    except (EOFError, ConnectionResetError):
        silent_gone.set()
    finally:
        silent_gone.set()
        helper.join()
    # keepalive_count PINGs, then the drop
    assert [p.header for p in pings] == [frame.Header(KEEPALIVE, 1, PING, frame.MESSAGE, 0, frame.OK)] * 2
    assert all(len(p.body) == 0 for p in pings)
    assert "error" not in outcome, outcome
    assert outcome["pongs"] >= 3
    assert polite.result("CONNECT_GET_LIB_VERSION") == LIB_VERSION
    polite.close()


# ------------------------------------------------------------ read-only socket

DOMAIN_XML = "<domain type='test'><name>ro-test</name><memory>1024</memory>" \
             "<os><type>hvm</type></os></domain>"


def test_read_only_socket(shared, tmp_path: Path) -> None:
    ro = shared.uri(readonly=True)
    xml = tmp_path / "ro.xml"
    xml.write_text(DOMAIN_XML)
    r = virsh(ro, f"define {xml}")
    assert r.rc == 1
    assert "operation forbidden: read only access prevents virDomainDefineXML" in r.err
    r = virsh(ro, "nodeinfo")
    assert r.rc == 0 and "CPU(s):" in r.out
    # reading a domain's XML is fine, unless it asks for secrets (libvirt:
    # virDomainGetXMLDesc refuses VIR_DOMAIN_XML_SECURE on read-only connections)
    r = virsh(ro, "dumpxml test")
    assert r.rc == 0 and "<name>test</name>" in r.out, r.err
    r = virsh(ro, "dumpxml --security-info test")
    assert r.rc == 1 and "operation forbidden" in r.err
    conn = libvirt.open(ro)
    assert conn.getInfo()[2] > 0
    with pytest.raises(libvirt.libvirtError) as exc:
        conn.defineXML(DOMAIN_XML)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED == 29
    dom = conn.lookupByName("test")
    assert "<name>test</name>" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    with pytest.raises(libvirt.libvirtError) as exc:
        dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_DENIED
    del dom, exc            # a live virDomain keeps its connection open past close()
    conn.close()


# ------------------------------------------------------------ vanishing event listener

EVENT_CLIENT = textwrap.dedent("""
    import sys, threading, time, libvirt
    libvirt.virEventRegisterDefaultImpl()
    def loop():
        while True:
            libvirt.virEventRunDefaultImpl()
    threading.Thread(target=loop, daemon=True).start()
    conn = libvirt.open(sys.argv[1])
    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                lambda *a: print("event", flush=True), None)
    conn.registerCloseCallback(lambda *a: None, None)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_client_killed_with_event_callbacks_leaves_nothing_behind(shared) -> None:
    wait_for_no_clients(shared)     # earlier tests' connections may still be closing
    proc = subprocess.Popen([sys.executable, "-c", EVENT_CLIENT, shared.uri()],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert nclients(shared) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for_no_clients(shared)
    # events still flow to a living client after the dead one is gone
    conn = libvirt.open(shared.uri())
    assert conn.getLibVersion() == LIB_VERSION
    conn.close()
    wait_for_no_clients(shared)


# ------------------------------------------------------------ max_clients

def test_max_clients_makes_the_next_client_wait(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "pyvirtd", config="max_clients: 3\nmax_anonymous_clients: 3\n")
    try:
        first = [RawClient(d.sock) for _ in range(3)]
        for c in first:
            assert c.result("AUTH_LIST") == [0]
        fourth = RawClient(d.sock)             # sits in the listen backlog
        serial = fourth.call("CONNECT_GET_LIB_VERSION")
        # not accepted while three are connected (that it waits is proven on a
        # mock clock in tests/unit/server/test_client_timing.py)
        assert nclients(d) == 3
        first[0].close()
        pkt = fourth.reply(serial, timeout=5.0)
        assert pkt.header.status == frame.OK
        for c in first[1:] + [fourth]:
            c.close()
    finally:
        assert stop_daemon(d) == 0


# ------------------------------------------------------------ signals

def test_sigterm_exits_zero_and_removes_the_sockets(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "pyvirtd")
    conn = libvirt.open(d.uri())           # a connected client does not block shutdown
    socks = [d.sock, d.sock_ro, d.sock_admin]
    assert all(s.exists() for s in socks)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0, d.log()
    assert [s for s in socks if s.exists()] == []
    with pytest.raises(libvirt.libvirtError):
        conn.getLibVersion()


def test_stopping_daemon_leaves_a_newer_daemons_socket(tmp_path: Path) -> None:
    """A daemon that stops removes only its own socket files (inode check).

    A newer daemon bound at the same path is simulated by a socket of the
    test's: it replaces the old daemon's file, as a new daemon's rename does.
    """
    d = start_daemon(tmp_path / "pyvirtd")
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        d.sock.unlink()
        newer.bind(str(d.sock))
        newer.listen(1)
        assert stop_daemon(d) == 0, d.log()
        assert d.sock.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(d.sock))       # still the newer socket, and it listens
        # the sockets the old daemon still owned are gone
        assert not d.sock_ro.exists() and not d.sock_admin.exists()
    finally:
        newer.close()


def test_sighup_reloads_and_keeps_running(tmp_path: Path) -> None:
    d = start_daemon(tmp_path / "pyvirtd", config="max_clients: 50\n")
    try:
        conn = libvirt.open(d.uri())
        assert "nclients_max        : 50" in admin(d, "srv-clients-info libvirtd")
        (d.root / "test-config.yaml").write_text("max_clients: 70\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "nclients_max        : 70" in admin(d, "srv-clients-info libvirtd"),
                 what=d.log())
        assert d.proc.poll() is None
        assert conn.getLibVersion() == LIB_VERSION       # existing clients stay
        # a broken file is refused and the daemon keeps the old settings
        (d.root / "test-config.yaml").write_text("max_clients: [\n")
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload failed, keeping the old configuration" in d.log()
                 or d.proc.poll() is not None)
        assert d.proc.poll() is None
        assert "nclients_max        : 70" in admin(d, "srv-clients-info libvirtd")
        conn.close()
    finally:
        assert stop_daemon(d) == 0
