"""kill -9 while definitions are written leaves no temporaries behind (issue #11, defect 8).

A python-libvirt client defines and undefines domains, networks and storage
pools of qemu:///session in a loop while the daemon is killed with SIGKILL
again and again.  Every definition is written through one temporary name per
file (``.NAME.tmp``); after the last restart none may be left, and every
definition file must still parse.
"""

from __future__ import annotations

import random
import re
import signal
import threading
from importlib.metadata import entry_points
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.conftest import RunningDaemon, start_daemon, stop_daemon, wait_for

QEMU_DRIVER = any(ep.name == "qemu" for ep in entry_points(group="pyvirtd.drivers"))
pytestmark = pytest.mark.skipif(not QEMU_DRIVER, reason="definitions are written by the "
                                "qemu:///session drivers and subsystems")
KILLS = 12      # each restart costs a second or two of Python start-up
# a temporary of write_atomic: ours (.NAME.tmp) or the random names it used to use
TEMPORARY = re.compile(r"^\.(.+)\.(tmp|[a-z0-9_]{8})$")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def definitions(i: int, tmp: Path) -> list[tuple[str, str]]:
    """(kind, XML) of the objects the client churns through in round ``i``.

    Each name keeps its UUID, so defining it again updates the definition.
    """
    name = f"churn{i % 3}"
    uuid = f"<uuid>6b1d0c3e-0000-4000-8000-00000000000{i % 3}</uuid>"
    return [
        ("domain", f"<domain type='qemu'><name>{name}</name>{uuid}"
                   f"<memory unit='MiB'>{32 + i % 7}</memory>"
                   f"<os><type arch='x86_64'>hvm</type></os></domain>"),
        ("network", f"<network><name>{name}</name>{uuid}"
                    f"<bridge name='vchurn{i % 3}'/></network>"),
        ("pool", f"<pool type='dir'><name>{name}</name>{uuid}"
                 f"<target><path>{tmp / name}</path></target></pool>"),
    ]


class Churner(threading.Thread):
    """Defines and undefines objects as fast as the daemon answers, reconnecting after each kill."""

    def __init__(self, uri: str, tmp: Path) -> None:
        super().__init__(daemon=True)
        self.uri, self.tmp = uri, tmp
        self.done = 0             # calls answered successfully
        self.errors = 0           # calls refused by a daemon that kept running
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError:
                self.stopping.wait(0.02)     # the daemon is being restarted
                continue
            try:
                while not self.stopping.is_set():
                    for kind, xml in definitions(i, self.tmp):
                        define = {"domain": conn.defineXML, "network": conn.networkDefineXML,
                                  "pool": conn.storagePoolDefineXML}[kind]
                        try:
                            obj = define(xml)
                            self.done += 1
                            if i % 2:
                                obj.undefine()
                                self.done += 1
                        except libvirt.libvirtError:
                            if conn.isAlive() != 1:
                                raise
                            self.errors += 1
                    i += 1
            except libvirt.libvirtError:
                pass
            finally:
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file() and TEMPORARY.match(p.name)
            and not p.name.startswith(".libvirt")]


def test_kill9_while_defining_leaves_no_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "pyvirtd"
    rnd = random.Random(11)
    d: RunningDaemon = start_daemon(root)
    churner = Churner(d.uri("qemu:///session"), tmp_path)
    churner.start()
    try:
        for _ in range(KILLS):
            # let the client get a few calls through, then kill wherever it is
            target = churner.done + rnd.randint(1, 6)
            wait_for(lambda: churner.done >= target, timeout=30, interval=0.005)
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            left = temporaries(root)
            # at most one temporary per file, under the one predictable name
            assert all(p.name.endswith(".tmp") for p in left), left
            d = start_daemon(root)
    finally:
        churner.stopping.set()
        churner.join(30)
    stop_daemon(d)
    assert churner.errors == 0

    planted = root / "lib" / "qemu" / ".planted.xml.tmp"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text("<domain")          # what a kill halfway through a write leaves
    d = start_daemon(root)
    try:
        assert temporaries(root) == []
        assert "Traceback" not in d.log()
        xml_files = list((root / "lib").rglob("*.xml")) + list((root / "run").rglob("*.xml"))
        assert xml_files
        for path in xml_files:
            etree.parse(str(path))           # every definition and status file is whole
        conn = libvirt.open(d.uri("qemu:///session"))
        try:
            conn.listAllDomains(0)
            conn.listAllNetworks(0)
            conn.listAllStoragePools(0)
        finally:
            conn.close()
    finally:
        stop_daemon(d)
