"""Network section of `make bench`: net-start + net-destroy of an isolated network with DHCP.

Each daemon runs as root inside a network namespace of its own that the
section makes, so the bridge, its address, the firewall rules and dnsmasq all
live there and nothing touches the host's network.  pyvirtd runs as
`pyvirtd --root DIR`; Debian's libvirtd runs as the system daemon fenced off
in a private mount namespace as well (daemons.start_system_libvirtd), since
only a root libvirtd may create bridges.  Measured with python-libvirt:
network.create() (bridge + address + rules + dnsmasq) and network.destroy(),
N times each (qemu:///session on pyvirtd --root, qemu:///system on libvirtd).

libvirt 9.0 writes its rules with iptables (Debian's iptables-nft); pyvirtd
writes one nftables table.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from daemons import Daemon, kill_netns, start_pyvirtd, start_system_libvirtd
from report import row

NET_XML = """<network>
  <name>bench-isolated</name>
  <bridge name='vbrbench0'/>
  <ip address='192.168.250.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.250.10' end='192.168.250.100'/></dhcp>
  </ip>
</network>
"""


def _measure(uri: str, n: int) -> dict:
    """Median start/destroy times of NET_XML over N rounds, after one warm-up."""
    import libvirt
    conn = libvirt.open(uri)
    net = None
    try:
        net = conn.networkDefineXML(NET_XML)
        net.create()
        net.destroy()
        starts, destroys = [], []
        for _ in range(n):
            t = time.perf_counter()
            net.create()
            t1 = time.perf_counter()
            net.destroy()
            t2 = time.perf_counter()
            starts.append(t1 - t)
            destroys.append(t2 - t1)
        return {"start_ms": statistics.median(starts) * 1000,
                "destroy_ms": statistics.median(destroys) * 1000,
                "total_ms": statistics.median([a + b for a, b in zip(starts, destroys)]) * 1000}
    finally:
        if net is not None:
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError:
                pass
        conn.close()


def _one(name: str, base: Path, n: int, res: dict, log) -> None:
    """Start daemon NAME in a fresh network namespace, measure, tear everything down."""
    ns = f"pyvirtd-bench-{name}-{os.getpid()}"
    d: Daemon | str | None = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        if name == "pyvirtd":
            d = start_pyvirtd(base / name, wrap=["ip", "netns", "exec", ns])
        else:
            d = start_system_libvirtd(base / name, ns)
        if isinstance(d, str):
            res["skipped"][f"{name} (network)"] = d
            return
        uri = d.session_uri if name == "pyvirtd" else d.system_uri
        data = res["data"][name] = _measure(uri, n)
        log(f"  {name:8} net-start p50 {data['start_ms']:.1f} ms, net-destroy p50 "
            f"{data['destroy_ms']:.1f} ms (n={n}, in netns {ns})")
    finally:
        if isinstance(d, Daemon):
            d.stop()
        kill_netns(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def run(tmp: Path, quick: bool, with_libvirtd: bool, log=print) -> dict:
    """The network section; returns {"rows": [...], "skipped": {...}, "data": {...}}."""
    import libvirt
    libvirt.registerErrorHandler(lambda *_: None, None)
    res: dict = {"rows": [], "skipped": {}, "data": {}}
    if os.geteuid() != 0:
        res["skipped"]["network"] = "needs root (a network namespace, a bridge)"
        return res
    for tool in ("ip", "dnsmasq"):
        if not shutil.which(tool):
            res["skipped"]["network"] = f"{tool} is not installed"
            return res
    n = 3 if quick else 10
    base = tmp / "network"
    base.mkdir()
    _one("pyvirtd", base, n, res, log)
    if with_libvirtd:
        _one("libvirtd", base, n, res, log)
    py, lv = res["data"].get("pyvirtd", {}), res["data"].get("libvirtd", {})
    missing = "n/a" if with_libvirtd else "not run"
    res["rows"] += [row("net-start isolated+DHCP, ms (median)", py.get("start_ms"),
                        lv.get("start_ms", missing)),
                    row("net-destroy, ms (median)", py.get("destroy_ms"),
                        lv.get("destroy_ms", missing)),
                    row("net-start + net-destroy, ms (median)", py.get("total_ms"),
                        lv.get("total_ms", missing), max_ratio=1)]
    return res
