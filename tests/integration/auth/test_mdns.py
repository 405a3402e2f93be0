"""mDNS: pyvirtd advertises _libvirt._tcp in one network namespace, a browser in another finds it.

Two namespaces joined by a veth pair (test-environment.md: the host's lo has
no multicast); nothing leaves them. The browser then connects virsh to the
address and port it found, over plain TCP (auth_tcp: none, test only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auth_helpers import free_port, need_commands, need_module, run
from tests.conftest import REPO

BROWSER = r"""
import sys, time
from zeroconf import IPVersion, ServiceBrowser, Zeroconf
found = {}
class Listener:
    def add_service(self, zc, type_, name):
        found[name] = zc.get_service_info(type_, name, timeout=3000)
    update_service = remove_service = lambda *a: None
zc = Zeroconf(ip_version=IPVersion.V4Only)
ServiceBrowser(zc, "_libvirt._tcp.local.", Listener())
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline and not any(found.values()):
    time.sleep(0.05)
for name, info in found.items():
    if info:
        print(name, info.port, ",".join(info.parsed_addresses()))
zc.close()
"""


def sh(*argv: str) -> None:
    r = run(list(argv))
    assert r.returncode == 0, (argv, r.stderr)


@pytest.fixture
def namespaces():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    need_commands("ip", package="iproute2")
    need_module("zeroconf", "zeroconf")
    tag = f"{os.getpid() % 100000}"
    a, b = f"pvmdA{tag}", f"pvmdB{tag}"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", f"vA{tag}", "type", "veth", "peer", "name", f"vB{tag}")
        for ns, dev, addr in ((a, f"vA{tag}", "10.231.0.1/24"), (b, f"vB{tag}", "10.231.0.2/24")):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up", "multicast", "on")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        yield a, b
    finally:
        run(["ip", "netns", "del", a])
        run(["ip", "netns", "del", b])


def test_browser_in_other_namespace_finds_daemon(namespaces, tmp_path: Path) -> None:
    a, b = namespaces
    port = free_port()
    name = f"pyvirtd-test-{os.getpid()}"
    root = tmp_path / "d"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "pyvirtd.yaml").write_text(
        f"listen_tls: false\nlisten_tcp: true\ntcp_port: '{port}'\n"
        "listen_addr: 10.231.0.1\nauth_tcp: none\n"
        f"mdns_adv: true\nmdns_name: {name}\n")
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-m", "pyvirtd.cli",
                               "--root", str(root), "--listen"], cwd=REPO,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        r = run(["ip", "netns", "exec", b, sys.executable, "-c", BROWSER, "20"], timeout=40)
        found = [line.split() for line in r.stdout.splitlines()]
        assert [f"{name}._libvirt._tcp.local.", str(port), "10.231.0.1"] in found, \
            (r.stdout, r.stderr, (tmp_path / "daemon.log").read_text())
        # what the browser found is a working libvirt endpoint
        v = run(["ip", "netns", "exec", b, "virsh", "-c",
                 f"test+tcp://10.231.0.1:{port}/default", "list --name"])
        assert v.returncode == 0 and v.stdout.split() == ["test"], v.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
