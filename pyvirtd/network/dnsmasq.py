"""One dnsmasq per network: its configuration, its process, its leases.

Files of network NAME, all under the runtime directory ``DIR``
(``run_dir/network``):

    NAME.conf        the generated configuration (dnsmasq --conf-file)
    NAME.hostsfile   static DHCP hosts "mac,ip,name" (re-read on SIGHUP)
    NAME.addnhosts   DNS host entries "ip name..." (re-read on SIGHUP)
    NAME.leases      dnsmasq's own lease file, read for net-dhcp-leases
    NAME.pid         dnsmasq's pid file

dnsmasq daemonises itself, so it outlives a pyvirtd restart; a new pyvirtd
finds it again through the pid file (checked against /proc/PID/cmdline).
Leases come from dnsmasq's lease file rather than libvirt's leaseshelper:
"expiry mac ip hostname client-id" lines, one per lease.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P

BINARY = "dnsmasq"


def binary() -> str:
    """dnsmasq's path, or libvirt's error when it is missing."""
    path = shutil.which(BINARY) or shutil.which(BINARY, path="/usr/sbin:/sbin")
    if path is None:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"Cannot check dnsmasq binary {BINARY}: No such file or directory",
                       domain=P.VIR_FROM_NETWORK)
    return path


@dataclass
class Files:
    dir: Path
    name: str

    def path(self, ext: str) -> Path:
        return name_path(self.dir, self.name, f".{ext}")

    @property
    def conf(self) -> Path:
        return self.path("conf")

    @property
    def pid(self) -> Path:
        return self.path("pid")

    @property
    def leases(self) -> Path:
        return self.path("leases")



def needs_dnsmasq(tree) -> bool:
    """Whether a managed network runs dnsmasq: DNS enabled, or any DHCP."""
    dns = tree.find("dns")
    if dns is None or dns.get("enable", "yes") != "no":
        return True
    return any(ip.find("dhcp") is not None for ip in tree.findall("ip"))


def write_config(files: Files, tree, bridge: str) -> None:
    """Write NAME.conf, NAME.hostsfile and NAME.addnhosts from a live definition."""
    lines = ["##WARNING:  THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE",
             "##OVERWRITTEN AND LOST.  Changes to this configuration should be made using:",
             "##    virsh net-edit " + files.name,
             "strict-order",
             f"pid-file={files.pid}",
             "except-interface=lo",
             "bind-dynamic",
             f"interface={bridge}",
             "user=root"]
    dns = tree.find("dns")
    dom = tree.find("domain")
    if dns is not None and dns.get("enable") == "no":
        lines.append("port=0")
    if dom is not None and dom.get("name"):
        name = dom.get("name")
        if dom.get("localOnly") == "yes":
            lines.append(f"local=/{name}/")
        lines += [f"domain={name}", "expand-hosts"]
    forwarders = [] if dns is None else dns.findall("forwarder")
    for fw in forwarders:
        if fw.get("domain") and fw.get("addr"):
            lines.append(f"server=/{fw.get('domain')}/{fw.get('addr')}")
        elif fw.get("domain"):
            lines.append(f"server=/{fw.get('domain')}/")
        elif fw.get("addr"):
            lines.append(f"server={fw.get('addr')}")
    if any(fw.get("addr") and not fw.get("domain") for fw in forwarders):
        lines.append("no-resolv")
    hosts = []
    leases = 0
    ipv6 = False
    for ip in tree.findall("ip"):
        dhcp = ip.find("dhcp")
        iface = ip_interface(ip)
        ipv6 |= iface.version == 6
        if dhcp is None:
            if iface.version == 6:   # router advertisements only: SLAAC
                lines.append(f"dhcp-range={iface.network.network_address},ra-only")
            continue
        for rng in dhcp.findall("range"):
            start, end = rng.get("start"), rng.get("end")
            lease = rng.find("lease")
            extra = ""
            if lease is not None:
                unit = {"seconds": "", "minutes": "m", "hours": "h"}.get(lease.get("unit", "minutes"), "m")
                extra = ",infinite" if lease.get("expiry") == "0" else f",{lease.get('expiry')}{unit}"
            if iface.version == 4:
                lines.append(f"dhcp-range={start},{end},{iface.network.netmask}{extra}")
            else:
                lines.append(f"dhcp-range={start},{end},{iface.network.prefixlen}{extra}")
            leases += int(ipaddress.ip_address(end)) - int(ipaddress.ip_address(start)) + 1
        for host in dhcp.findall("host"):
            fields = [host.get("mac") or (f"id:{host.get('id')}" if host.get("id") else None),
                      f"[{host.get('ip')}]" if iface.version == 6 and host.get("ip") else host.get("ip"),
                      host.get("name")]
            hosts.append(",".join(f for f in fields if f))
            if not dhcp.findall("range"):
                lines.append(f"dhcp-range={host.get('ip')},static")
    if leases or hosts:
        lines += ["dhcp-no-override", "dhcp-authoritative",
                  f"dhcp-lease-max={max(leases, 1)}",
                  f"dhcp-leasefile={files.leases}"]
    lines.append(f"dhcp-hostsfile={files.path('hostsfile')}")
    lines.append(f"addn-hosts={files.path('addnhosts')}")
    if ipv6:   # dnsmasq sends the router advertisements (libvirt's radvd replacement)
        lines.append("enable-ra")
    files.dir.mkdir(parents=True, exist_ok=True)
    write_atomic(files.path("hostsfile"), "".join(h + "\n" for h in hosts), 0o644, sync=False)
    addn = []
    for host in [] if dns is None else dns.findall("host"):
        names = [h.text for h in host.findall("hostname") if h.text]
        if host.get("ip") and names:
            addn.append(f"{host.get('ip')}\t{' '.join(names)}")
    write_atomic(files.path("addnhosts"), "".join(a + "\n" for a in addn), 0o644, sync=False)
    write_atomic(files.conf, "\n".join(lines) + "\n", 0o644, sync=False)


def ip_interface(ip) -> ipaddress._BaseAddress:
    address = ip.get("address")
    prefix = ip.get("prefix")
    if prefix is None and ip.get("netmask"):
        return ipaddress.ip_interface(f"{address}/{ip.get('netmask')}")
    if prefix is None:
        version = ipaddress.ip_address(address).version
        if version == 6:
            prefix = "64"
        else:   # classful default, as libvirt's virSocketAddrDefaultNetmask
            first = int(address.split(".")[0])
            prefix = "8" if first < 128 else "16" if first < 192 else "24"
    return ipaddress.ip_interface(f"{address}/{prefix}")


def running_pid(files: Files) -> int | None:
    """The pid of this network's dnsmasq, if it runs."""
    try:
        pid = int(files.pid.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if not cmdline or not cmdline[0].endswith(b"dnsmasq"):
        return None
    if f"--conf-file={files.conf}".encode() not in cmdline:
        return None
    return pid


async def start(files: Files) -> int:
    """Start dnsmasq with NAME.conf (it daemonises); its pid."""
    exe = binary()
    files.leases.touch(exist_ok=True)
    res = await trio.run_process([exe, f"--conf-file={files.conf}"], capture_stdout=True,
                                 capture_stderr=True, check=False)
    if res.returncode:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"Child process ({exe} --conf-file={files.conf}) unexpected exit status "
                       f"{res.returncode}: {res.stderr.decode(errors='replace').strip()}",
                       domain=P.VIR_FROM_NETWORK)
    for _ in range(100):
        pid = running_pid(files)
        if pid:
            return pid
        await trio.sleep(0.01)
    raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"dnsmasq of network {files.name} did not start",
                   domain=P.VIR_FROM_NETWORK)


def reload(files: Files) -> bool:
    """Make a running dnsmasq re-read its hosts files (SIGHUP)."""
    pid = running_pid(files)
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


async def stop(files: Files) -> None:
    pid = running_pid(files)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or running_pid(files) is None:
                break
            await trio.sleep(0.01)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    files.pid.unlink(missing_ok=True)


def remove_files(files: Files) -> None:
    for ext in ("conf", "hostsfile", "addnhosts", "pid"):
        files.path(ext).unlink(missing_ok=True)


@dataclass
class Lease:
    expiry: int
    mac: str
    ip: str
    hostname: str | None
    clientid: str | None


def read_leases(files: Files) -> list[Lease]:
    try:
        text = files.leases.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "duid":
            continue
        host = None if parts[3] == "*" else parts[3]
        client = None if len(parts) < 5 or parts[4] == "*" else parts[4]
        try:
            out.append(Lease(int(parts[0]), parts[1], parts[2], host, client))
        except ValueError:
            continue
    return out
