"""Record the fuzzer's seed corpus: the frames real clients send for the traced actions.

    .venv/bin/python tests/fuzz/record_seeds.py [TRACES_JSON] [OUT_JSON]

The actions are those of ../shared/reference/client-traces.json (captured from
stock clients against libvirtd 9.0); this replays their virsh commands against
a throw-away pyvirtd through a recording proxy and keeps what each client sent
(client -> daemon only), frame by frame.  Actions that start guests,
networks or wait for time (start, console, event, destroy, net-start,
net-destroy) and those of other clients are left out.  Stream data frames are cut to a few hundred bytes so the corpus stays
small; the frames are facts of the protocol, and the corpus is committed to
tests/data/fuzz-seeds.json so the suite never needs ../shared.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pyvirtd.rpc import frame  # noqa: E402
from tests.conftest import start_daemon, stop_daemon  # noqa: E402

# start, console, event and destroy run guests or wait for time; net-start and
# net-destroy would make the fuzzer start networks (bridges, dnsmasq) on the host
SKIP = {"start", "console", "event", "destroy", "net-start", "net-destroy"}
MAX_BODY = 512        # stream data bodies are cut to this
# the traces' order, except that the volume transfers run while the pool exists
ORDER = {"vol-upload": 1, "vol-download": 1, "vol-delete": 2, "pool-destroy": 2,
         "pool-undefine": 2}


class RecordingProxy(threading.Thread):
    """A unix-socket proxy in front of the daemon that keeps what each client sends."""

    def __init__(self, listen: Path, target: Path) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(listen))
        self.server.listen(8)
        self.sent: list[bytearray] = []     # one per connection, in accept order

    def run(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            record = bytearray()
            self.sent.append(record)
            threading.Thread(target=self._pump, args=(client, record), daemon=True).start()

    def _pump(self, client: socket.socket, record: bytearray) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(str(self.target))
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    if key.fileobj is client:
                        record += data
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def frames_of(data: bytes) -> list[str]:
    """The client's bytes as hex frames, stream data cut to MAX_BODY."""
    reader = frame.FrameReader()
    reader.feed(data)
    out = []
    for pkt in reader.packets():
        h = pkt.header
        body = bytes(pkt.body)
        if h.type == frame.STREAM and len(body) > MAX_BODY:
            body = body[:MAX_BODY]
        out.append(frame.build_raw(h.prog, h.vers, h.proc, h.type, h.serial, h.status,
                                   body).hex())
    return out


def main() -> int:
    traces_path = Path(sys.argv[1] if len(sys.argv) > 1
                       else REPO.parent / "shared" / "reference" / "client-traces.json")
    out_path = Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "tests" / "data" / "fuzz-seeds.json")
    traces = json.loads(traces_path.read_text())
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        (tmp / "x.xml").write_text(
            "<domain type='qemu'><name>rpctrace-vm</name><memory unit='MiB'>64</memory>"
            "<os><type arch='x86_64'>hvm</type></os><devices><serial type='pty'/></devices>"
            "</domain>")
        (tmp / "net.xml").write_text(
            "<network><name>rpctrace-net</name><forward mode='nat'/>"
            "<bridge name='vrpctrace0'/><ip address='192.168.250.1' netmask='255.255.255.0'>"
            "<dhcp><range start='192.168.250.10' end='192.168.250.50'/></dhcp></ip></network>")
        with open(tmp / "src.img", "wb") as f:
            f.truncate(1024 * 1024)
            f.write(os.urandom(4096))
            f.seek(512 * 1024)
            f.write(os.urandom(4096))
        d = start_daemon(tmp / "pyvirtd")
        proxy = RecordingProxy(tmp / "proxy.sock", d.sock)
        proxy.start()
        uri = f"qemu+unix:///session?socket={tmp / 'proxy.sock'}"
        seeds = []
        try:
            def setup(*args: str) -> None:        # not recorded
                subprocess.run(["virsh", "-c", uri, *args], cwd=tmp, capture_output=True)

            (tmp / "pool").mkdir()
            for trace in sorted(traces, key=lambda t: ORDER.get(t["action"], 0)):
                if trace["client"] != "virsh" or trace["action"] in SKIP:
                    continue
                cmd = trace["cmd"].split("  (")[0]
                args = shlex.split(cmd)[3:]            # after "virsh -c qemu:///system"
                args = [str(tmp / "pool") if a == "DIR" else a for a in args]
                if trace["action"] == "vol-create-as":
                    setup("pool-start", "rpctrace-pool")
                if trace["action"] == "vol-upload":    # the traced 1 MiB volume
                    setup("vol-create-as", "rpctrace-pool", "up.raw", "1M")
                before = len(proxy.sent)
                r = subprocess.run(["virsh", "-c", uri, *args], cwd=tmp, capture_output=True,
                                   text=True, timeout=60)
                print(f"{trace['action']}: rc={r.returncode} {r.stderr.strip()[:100]}")
                for record in proxy.sent[before:]:
                    seeds.append({"action": trace["action"], "frames": frames_of(bytes(record))})
        finally:
            stop_daemon(d)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(seeds, indent=0) + "\n")
    print(f"{len(seeds)} seeds, {sum(len(s['frames']) for s in seeds)} frames -> {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
