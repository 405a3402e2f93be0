"""Per-call cost of pyvirtd's pure-Python path, in process, without sockets.

    .venv/bin/python bench/micro.py

Times each stage a call goes through in the daemon, on the real objects
(Daemon, Dispatcher, test driver), with a stand-in client that only collects
replies:
  frame:      FrameReader.feed() + packets() of one request
  dispatch:   Dispatcher.dispatch() of that packet (checks, decode, handler,
              encode, Client.send), driven without an event loop
  build:      frame.build() of the reply alone (included in dispatch)
  trio I/O:   SocketStream.send_all() + receive_some() of one small packet on a
              socketpair inside trio (no blocking: data is always there), vs.
              the bare socket.send() + recv() syscalls
  trio switch: one park/unpark hand-off between two tasks (what a separate
              writer task costs per reply)
Figures are medians of several runs, in µs per call.
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from pyvirtd.config import Config  # noqa: E402
from pyvirtd.daemon import Daemon  # noqa: E402
from pyvirtd.paths import Paths  # noqa: E402
from pyvirtd.rpc import _generated as P  # noqa: E402
from pyvirtd.rpc import frame  # noqa: E402

REMOTE = P.PROGRAMS["remote"]


def per_call_us(fn, n: int, runs: int = 7) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(n)
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)


class FakeClient:
    """What Dispatcher.dispatch touches on a client."""

    def __init__(self, server) -> None:
        self.id = 1
        self.server = server
        self.authenticated = True
        self.readonly = False
        self.conn = None
        self.identity = None
        self.program_state: dict = {}
        self.close_callback = False
        self.out: list = []
        self.transport = 2
        self.auth = 0

    def send(self, data) -> None:
        self.out.append(data)

    send_event = send

    def start_keepalive(self) -> None:
        pass


def request(proc_name: str, serial: int = 1, args=None) -> bytes:
    proc = next(p for p in P.PROCEDURES if p.program == "remote" and p.name == proc_name)
    pack = proc.pack_args
    return bytes(frame.build(REMOTE[0], REMOTE[1], proc.number, frame.CALL, serial, frame.OK,
                             pack, args))


def run_sync(coro) -> None:
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("dispatch suspended: not the synchronous path")


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="pyvirtd-micro-"))
    daemon = Daemon(Config(), Paths.for_root(tmp), privileged=False)
    server = daemon.libvirtd
    dispatcher = server.dispatcher
    client = FakeClient(server)
    rd = frame.FrameReader()
    rd.feed(request("CONNECT_OPEN", 1, P.remote_connect_open_args("test:///default", 0)))
    run_sync(dispatcher.dispatch(client, rd.packets()[0]))
    assert client.conn is not None, client.out
    results: dict[str, float] = {}

    def stage(label, fn, n):
        results[label] = per_call_us(fn, n)
        print(f"  {results[label]:7.2f} µs  {label}", flush=True)

    for name, args in (("CONNECT_GET_VERSION", None),
                       ("DOMAIN_GET_XML_DESC", None)):
        if args is None and name == "DOMAIN_GET_XML_DESC":
            try:
                dom = client.conn.domain_lookup_by_name("test")
            except Exception as exc:
                print(f"{name}: skipped ({exc})")
                continue
            args = P.remote_domain_get_xml_desc_args(dom, 0)
        pkt = request(name, 7, args)
        reader = frame.FrameReader()
        reader.feed(pkt)
        packet = reader.packets()[0]
        dispatch = dispatcher.dispatch
        out = client.out
        print(f"{name} ({len(pkt)} bytes in):")

        def f_frame(n, reader=reader, pkt=pkt):
            for _ in range(n):
                reader.feed(pkt)
                reader.packets()
        stage(f"{name}: frame (feed + packets)", f_frame, 20000)

        def f_dispatch(n, packet=packet):
            for _ in range(n):
                run_sync(dispatch(client, packet))
            out.clear()
        stage(f"{name}: dispatch (check, decode, handler, encode, send)", f_dispatch, 5000)
        reply_len = len(client.out[-1]) if client.out else None
        run_sync(dispatch(client, packet))
        reply_len = len(out[-1])
        out.clear()
        proc = dispatcher.programs[REMOTE].procedures[packet.header.proc]
        h = packet.header
        value = None
        if name == "CONNECT_GET_VERSION":
            value = (client.conn.connect_get_version(),)
        else:
            value = (client.conn.domain_get_xml_desc(*args),)

        def f_build(n, proc=proc, h=h, value=value):
            for _ in range(n):
                frame.build(h.prog, h.vers, h.proc, frame.REPLY, h.serial, frame.OK,
                            proc.pack_ret, value)
        stage(f"{name}: frame.build of the {reply_len}-byte reply", f_build, 20000)
        fn, _, takes_client = dispatcher.programs[REMOTE].resolve(client, proc)

        def f_handler(n, fn=fn, args=args or ()):
            conn = client.conn
            for _ in range(n):
                fn(conn, *args)
        stage(f"{name}: driver handler alone", f_handler, 5000)

    print("socket layer (one 28-byte request + 32-byte reply):")
    req = request("CONNECT_GET_VERSION")
    rep = bytes(32)

    def f_raw(n):
        a, b = socket.socketpair()
        for _ in range(n):
            a.send(req)
            b.recv(262144)
            b.send(rep)
            a.recv(262144)
        a.close()
        b.close()
    stage("raw socket: 2x send + 2x recv syscalls (no wakeups)", f_raw, 20000)

    def f_trio(n):
        async def go():
            a, b = trio.socket.socketpair()
            sa, sb = trio.SocketStream(a), trio.SocketStream(b)
            for _ in range(n):
                await sa.send_all(req)
                await sb.receive_some(262144)
                await sb.send_all(rep)
                await sa.receive_some(262144)
        trio.run(go)
    stage("trio SocketStream: 2x send_all + 2x receive_some (no waits)", f_trio, 10000)

    def f_checkpoint(n):
        async def go():
            for _ in range(n):
                await trio.lowlevel.checkpoint()
        trio.run(go)
    stage("trio checkpoint (one scheduler pass, epoll_wait(0) included)", f_checkpoint, 20000)

    def f_raw_trio(n):
        async def go():
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            for _ in range(n):
                a.send(req)
                b.recv(262144)
                b.send(rep)
                a.recv(262144)
                await trio.lowlevel.checkpoint()
        trio.run(go)
    stage("same 4 syscalls on a raw non-blocking socket + one trio checkpoint", f_raw_trio, 10000)

    def f_switch(n):
        async def go():
            lot = trio.lowlevel.ParkingLot()
            back = trio.lowlevel.ParkingLot()
            done = False

            async def other():
                while not done:
                    await lot.park()
                    back.unpark()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                while not lot.statistics().tasks_waiting:   # trio shuffles run order
                    await trio.sleep(0)
                for _ in range(n):
                    lot.unpark()
                    await back.park()
                done = True
                lot.unpark()
        trio.run(go)
    stage("trio task hand-off: unpark + park, there and back", f_switch, 10000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
