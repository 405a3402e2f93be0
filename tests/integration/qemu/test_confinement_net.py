"""A confined guest on a pyvirtd network: the daemon makes the taps, QEMU only holds fds.

A privileged pyvirtd (qemu:///system, so its QEMUs run as pyvirtd-qemu in
their own mount namespace and cgroup) runs in a network namespace of its own
(test_guest_network.Lab) with an isolated network.  The tiny TCG guest boots
with a NIC on it and gets a DHCP lease; its QEMU has no /dev/net/tun to open
and no ``ifname=`` on its command line, only ``-netdev tap,fd=N``: the tap
was created and attached by the daemon.  A NIC hotplugged into the running
guest arrives the same way (``getfd``) and gets a lease too.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemon_helpers import guest_pid, needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml
from test_guest_network import ISOLATED, Lab, nic

pytestmark = [
    needs_qemu,
    pytest.mark.skipif(os.geteuid() != 0, reason="confinement needs a root daemon"),
    pytest.mark.skipif(not shutil.which("setpriv") or not shutil.which("useradd"),
                       reason="setpriv and useradd (util-linux, passwd) needed"),
]

MAC, MAC_HOTPLUG = "52:54:00:7a:00:01", "52:54:00:7a:00:02"


@pytest.fixture(scope="module")
def lab():
    subprocess.run([sys.executable, "-m", "pyvirtd.cli", "qemu-user"], check=True,
                   stdout=subprocess.DEVNULL)
    base = Path(tempfile.mkdtemp(prefix="pyvirtd-confine-net-", dir="/var/tmp"))
    base.chmod(0o755)
    lab = Lab(base)
    # no 'default' network for the privileged daemon: the config directory exists
    (lab.root / "lib" / "network").mkdir(parents=True)
    try:
        lab.uri = lab.start_daemon("--privileged")
        path = base / "iso1.xml"
        path.write_text(ISOLATED)
        ok(lab.uri, f"net-define {path}")
        ok(lab.uri, "net-start iso1")
        yield lab
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def test_confined_guest_gets_a_lease_through_a_tap_it_holds_by_fd(lab):
    xml = lab.root.parent / "cn1.xml"
    xml.write_text(tiny_xml("cn1", tiny_guest(), interfaces=nic("network", "iso1", MAC)))
    ok(lab.uri, f"define {xml}")
    ok(lab.uri, "start cn1 --paused")
    con = Console(lab.uri, "cn1")
    try:
        ok(lab.uri, "resume cn1")
        ip = con.wait(r"GUEST IP (10\.78\.0\.\d+)", timeout=90).group(1)
        con.wait(re.escape(PROMPT))
        con.run("dmesg -n 1", re.escape(PROMPT))
        assert ip in ok(lab.uri, "net-dhcp-leases iso1")
        pid = guest_pid(lab.root, "cn1")
        status = Path(f"/proc/{pid}/status").read_text()
        uid = str(pwd.getpwnam("pyvirtd-qemu").pw_uid)
        assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        # QEMU could not open a tap itself: no tun node, no ifname=, a tap fd
        assert "net" not in os.listdir(f"/proc/{pid}/root/dev")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert not [a for a in argv if "ifname=" in a], argv
        assert [a for a in argv if a.startswith("tap,fd=")], argv
        assert "/dev/net/tun" in _fd_targets(pid)
        taps = re.findall(r"(vnet\d+)\s+network\s+iso1", ok(lab.uri, "domiflist cn1"))
        bridge = re.search(r"Bridge:\s+(\S+)", ok(lab.uri, "net-info iso1")).group(1)
        assert len(taps) == 1 and lab.links()[taps[0]] == bridge

        # a NIC hotplugged into the confined guest: the same, through getfd
        ok(lab.uri, f"attach-interface cn1 network iso1 --model virtio --mac {MAC_HOTPLUG}")
        con.run("until [ -e /sys/class/net/eth1 ]; do sleep 0.2; done; ip link set eth1 up; "
                "udhcpc -i eth1 -s /etc/udhcpc.sh -n -q -t 10 -T 1 >/dev/null 2>&1; "
                "ip -4 -o addr show eth1", r"inet (10\.78\.0\.\d+)", timeout=60)
        assert len(re.findall(r"vnet\d+\s+network\s+iso1", ok(lab.uri, "domiflist cn1"))) == 2
        assert sum(t == "/dev/net/tun" for t in _fd_targets(pid)) == 2
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert not [a for a in argv if "ifname=" in a]
        con.run("ping -c 1 -W 3 -I eth1 10.78.0.1", r"1 packets received", timeout=30)
    finally:
        con.close()
        virsh(lab.uri, "destroy cn1; undefine cn1")
    wait_for(lambda: not set(taps) & set(lab.links()), timeout=10)


def test_ethernet_nic_tap_is_opened_by_the_daemon(lab):
    """<interface type='ethernet'> on a tap the admin made: QEMU, unprivileged, could
    not attach it (ifname=); the daemon opens it and QEMU gets the fd."""
    tap, br = "ctap0", "cbr0"
    lab.ns(lab.host, "ip", "link", "add", br, "type", "bridge")
    lab.ns(lab.host, "ip", "addr", "add", "10.81.0.1/24", "dev", br)
    lab.ns(lab.host, "ip", "link", "set", br, "up")
    lab.ns(lab.host, "ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
    lab.ns(lab.host, "ip", "link", "set", tap, "master", br)
    eth = (f"<interface type='ethernet'><mac address='52:54:00:7a:00:03'/>"
           f"<target dev='{tap}' managed='no'/><model type='virtio'/></interface>")
    xml = lab.root.parent / "cn2.xml"
    xml.write_text(tiny_xml("cn2", tiny_guest(),
                            interfaces=nic("network", "iso1", "52:54:00:7a:00:04") + eth))
    ok(lab.uri, f"define {xml}")
    ok(lab.uri, "start cn2 --paused")
    con = Console(lab.uri, "cn2")
    try:
        ok(lab.uri, "resume cn2")
        con.wait(r"GUEST IP (10\.78\.0\.\d+)", timeout=90)
        con.wait(re.escape(PROMPT))
        con.run("dmesg -n 1", re.escape(PROMPT))
        pid = guest_pid(lab.root, "cn2")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert not [a for a in argv if "ifname=" in a], argv
        assert len([a for a in argv if a.startswith("tap,fd=")]) == 2, argv
        assert "state UP" in lab.ns(lab.host, "ip", "link", "show", tap).stdout
        con.run("ip addr add 10.81.0.2/24 dev eth1 && ip link set eth1 up", re.escape(PROMPT))
        con.run("ping -c 2 -W 3 10.81.0.1", r"2 packets received", timeout=30)
    finally:
        con.close()
        virsh(lab.uri, "destroy cn2; undefine cn2")
    # the admin's tap outlives the guest
    wait_for(lambda: tap in lab.links(), timeout=10)
