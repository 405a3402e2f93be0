"""Network section of `make bench`: net-start + net-destroy of an isolated network with DHCP.

pyvirtd runs as root inside a network namespace the section makes (`ip netns exec`),
so the bridge, its address, the firewall rules and dnsmasq all live there and
nothing touches the host's network.  Measured with python-libvirt: network.create()
(bridge + address + rules + dnsmasq) and network.destroy(), N times each.

libvirtd is not measured: in session mode, as the unprivileged bench user, its
network driver cannot create a bridge ("error creating bridge interface ...:
Operation not permitted"), and a root libvirtd would be the system daemon (it
would take /run/libvirt and /etc/libvirt, and Debian's libvirt 9.0 also wants
iptables and a libvirt-dnsmasq user, neither installed here).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from daemons import Daemon, kill_marked, start_pyvirtd
from report import row

NET_XML = """<network>
  <name>bench-isolated</name>
  <bridge name='vbrbench0'/>
  <ip address='192.168.250.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.250.10' end='192.168.250.100'/></dhcp>
  </ip>
</network>
"""

LIBVIRTD_REASON = ("session libvirtd (unprivileged) cannot create a bridge; "
                   "a root libvirtd would be the host's system daemon")


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
    if with_libvirtd:
        res["skipped"]["libvirtd (network)"] = LIBVIRTD_REASON
    n = 3 if quick else 10
    base = tmp / "network"
    base.mkdir()
    ns = f"pyvirtd-bench-{os.getpid()}"
    d: Daemon | None = None
    conn = net = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        d = start_pyvirtd(base / "pyvirtd", wrap=["ip", "netns", "exec", ns])
        conn = libvirt.open(d.session_uri)
        net = conn.networkDefineXML(NET_XML)
        net.create()            # warm-up
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
        data = res["data"]["pyvirtd"] = {
            "start_ms": statistics.median(starts) * 1000,
            "destroy_ms": statistics.median(destroys) * 1000,
            "total_ms": statistics.median([a + b for a, b in zip(starts, destroys)]) * 1000}
        log(f"  pyvirtd  net-start p50 {data['start_ms']:.1f} ms, net-destroy p50 "
            f"{data['destroy_ms']:.1f} ms (n={n}, in netns {ns})")
    finally:
        if net is not None:
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError:
                pass
        if conn is not None:
            conn.close()
        if d is not None:
            d.stop()
        kill_marked(str(base), b"dnsmasq")
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    lv = "n/a" if with_libvirtd else "not run"
    py = res["data"].get("pyvirtd", {})
    res["rows"] += [row("net-start isolated+DHCP, ms (median)", py.get("start_ms"), lv),
                    row("net-destroy, ms (median)", py.get("destroy_ms"), lv),
                    row("net-start + net-destroy, ms (median)", py.get("total_ms"), lv)]
    return res
