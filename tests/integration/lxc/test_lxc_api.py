"""The rest of the LXC domain API end to end, against real containers (test_lxc.py's Lab):
reboot, setmem/setmaxmem, send-process-signal, blkiotune, schedinfo --config.

Container names here start with ``api`` (other LXC test modules use others).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import libvirt
import pytest

from tests.conftest import wait_for
from tests.integration.lxc.test_lxc import container_xml, lab, make_root  # noqa: F401 (fixture)

# init: counts its boots, reboots on SIGHUP, notes SIGUSR1, and starts a child
# that notes SIGUSR2 and tells its pid (inside the container)
INIT = """#!/bin/sh
trap 'reboot -f' HUP
trap 'echo init-usr1 > /tmp/usr1' USR1
echo boot >> /tmp/boots
sh -c 'trap "echo child-usr2 > /tmp/usr2; exit 0" USR2; echo $$ > /tmp/child.pid
       while true; do sleep 1000 & wait $!; done' &
while true; do sleep 1000 & wait $!; done
"""


def api_root(path: Path) -> Path:
    root = make_root(path)
    (root / "bin/reboot").symlink_to("busybox")
    (root / "sbin/init").write_text(INIT)
    return root


def define(lab, tmp_path: Path, name: str, *, extra: str = "", memory_mib: int = 64) -> Path:
    root = api_root(tmp_path / f"root-{name}")
    xml = tmp_path / f"{name}.xml"
    xml.write_text(container_xml(name, root, memory_mib=memory_mib, extra=extra))
    lab.virsh("define", str(xml))
    return root


class Events:
    """Domain events of one python-libvirt connection, gathered by a thread."""

    def __init__(self, uri: str, event_id: int) -> None:
        libvirt.virEventRegisterDefaultImpl()
        self.conn = libvirt.open(uri)
        self.seen: list[tuple] = []
        self._stop = threading.Event()
        self.cb = self.conn.domainEventRegisterAny(
            None, event_id, lambda _c, dom, *args: self.seen.append((dom.name(), *args[:-1])),
            None)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            libvirt.virEventRunDefaultImpl()

    def close(self) -> None:
        self._stop.set()
        try:
            self.conn.domainEventDeregisterAny(self.cb)
        except libvirt.libvirtError:
            pass
        self.conn.close()


def test_reboot_restarts_init_with_a_reboot_event(lab, tmp_path):
    root = define(lab, tmp_path, "apireboot")
    lab.virsh("start", "apireboot")
    wait_for(lambda: (root / "tmp/boots").exists(), what="first boot")
    old_id = lab.virsh("domid", "apireboot").stdout.strip()
    events = Events(lab.uri, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT)
    try:
        p = lab.virsh("reboot", "apireboot", "--mode", "initctl", check=False)
        assert p.returncode != 0 and "Container does not provide an initctl pipe" in p.stderr
        lab.virsh("reboot", "apireboot")
        # init's reboot(2) ends the pid namespace; the driver starts it again
        wait_for(lambda: (root / "tmp/boots").read_text().count("boot") == 2, what="second boot")
        wait_for(lambda: events.seen, what="REBOOT event")
        assert events.seen == [("apireboot",)]
    finally:
        events.close()
    assert lab.virsh("domstate", "--reason", "apireboot").stdout.strip() == "running (booted)"
    new_id = lab.virsh("domid", "apireboot").stdout.strip()
    assert new_id != old_id
    # the new run is controllable as the first one was
    p = lab.virsh("lxc-enter-namespace", "apireboot", "/bin/sh", "-c", "echo in-new-run")
    assert p.stdout.strip() == "in-new-run"
    lab.virsh("reboot", "apireboot", "--mode", "signal")
    wait_for(lambda: (root / "tmp/boots").read_text().count("boot") == 3, what="third boot")
    lab.virsh("destroy", "apireboot")
    assert lab.virsh("domstate", "--reason", "apireboot").stdout.strip() == "shut off (destroyed)"
    p = lab.virsh("reboot", "apireboot", check=False)
    assert p.returncode != 0 and "domain is not running" in p.stderr


def test_setmem_moves_the_cgroup_limit_and_setmaxmem_the_config(lab, tmp_path):
    define(lab, tmp_path, "apimem", memory_mib=128)
    # shut off: --current is the config
    lab.virsh("setmem", "apimem", "100M", "--config")
    lab.virsh("setmaxmem", "apimem", "96M")
    xml = lab.virsh("dumpxml", "apimem").stdout
    assert "<memory unit='KiB'>98304</memory>" in xml
    assert "<currentMemory unit='KiB'>98304</currentMemory>" in xml     # capped by the maximum
    lab.virsh("start", "apimem")
    p = lab.virsh("setmaxmem", "apimem", "200M", check=False)
    assert p.returncode != 0 and "Cannot resize the max memory on an active domain" in p.stderr
    p = lab.virsh("setmem", "apimem", "200M", check=False)
    assert p.returncode != 0 and "Cannot set memory higher than max memory" in p.stderr
    lab.virsh("setmem", "apimem", "32M", "--live")
    assert "hard_limit     : 32768" in lab.virsh("memtune", "apimem").stdout
    assert "<currentMemory unit='KiB'>32768</currentMemory>" in lab.virsh("dumpxml",
                                                                          "apimem").stdout
    # the limit holds inside: 48 MiB in one buffer is more than the container may have
    p = lab.virsh("lxc-enter-namespace", "apimem", "/bin/sh", "-c",
                  "echo 1000 > /proc/self/oom_score_adj; "
                  "dd if=/dev/zero of=/dev/null bs=48M count=1; echo rc=$?")
    assert "rc=137" in p.stdout, p.stdout + p.stderr
    # the config was not touched by --live; --config while running changes only it
    lab.virsh("setmaxmem", "apimem", "80M", "--config")
    inactive = lab.virsh("dumpxml", "--inactive", "apimem").stdout
    assert "<memory unit='KiB'>81920</memory>" in inactive
    assert "<memory unit='KiB'>98304</memory>" in lab.virsh("dumpxml", "apimem").stdout
    lab.virsh("destroy", "apimem")
    assert "<memory unit='KiB'>81920</memory>" in lab.virsh("dumpxml", "apimem").stdout


def test_send_process_signal_by_pid_inside_the_container(lab, tmp_path):
    root = define(lab, tmp_path, "apisig")
    lab.virsh("start", "apisig")
    wait_for(lambda: (root / "tmp/child.pid").exists(), what="child started")
    lab.virsh("send-process-signal", "apisig", "1", "sigusr1")
    wait_for(lambda: (root / "tmp/usr1").exists(), what="init got SIGUSR1")
    child = (root / "tmp/child.pid").read_text().strip()
    assert child != "1"
    lab.virsh("send-process-signal", "apisig", child, "usr2")
    wait_for(lambda: (root / "tmp/usr2").exists(), what="child got SIGUSR2")
    p = lab.virsh("send-process-signal", "apisig", "4000000", "usr2", check=False)
    assert p.returncode != 0 and "No such process" in p.stderr, p.stderr
    conn = libvirt.open(lab.uri)
    try:
        with pytest.raises(libvirt.libvirtError, match="signum value 70 is out of range"):
            conn.lookupByName("apisig").sendProcessSignal(1, 70)
    finally:
        conn.close()
    lab.virsh("destroy", "apisig")


def _block_device() -> tuple[str, str]:
    """A block device of this host: its /dev path and major:minor."""
    for sys_dev in sorted(Path("/sys/block").iterdir()):
        path = Path("/dev", sys_dev.name)
        if path.is_block_device():
            return str(path), (sys_dev / "dev").read_text().strip()
    pytest.skip("no block device on this host")


def _disk_of(path: Path) -> str | None:
    """The /dev path of the whole disk that holds ``path`` (None on a filesystem without one)."""
    st = path.stat()
    sys_dev = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not sys_dev.exists():
        return None
    sys_dev = sys_dev.resolve()
    if (sys_dev / "partition").exists():
        sys_dev = sys_dev.parent
    dev = Path("/dev", sys_dev.name)
    return str(dev) if dev.is_block_device() else None


def test_blkiotune_live_throttle_and_config(lab, tmp_path):
    dev, numbers = _block_device()
    define(lab, tmp_path, "apiblk")
    lab.virsh("blkiotune", "apiblk", "--device-read-bytes-sec", f"{dev},1048576",
              "--weight", "500", "--config")
    out = lab.virsh("blkiotune", "apiblk", "--config").stdout
    assert "weight         : 500" in out
    assert f"device_read_bytes_sec: {dev},1048576" in out
    lab.virsh("start", "apiblk")
    lab.virsh("blkiotune", "apiblk", "--device-write-iops-sec", f"{dev},200", "--live")
    # in the container's own blkio cgroup
    conn = libvirt.open(lab.uri)
    try:
        pid = conn.lookupByName("apiblk").ID()
    finally:
        conn.close()
    cg = next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
              if line.split(":")[1] == "blkio")
    throttle = Path("/sys/fs/cgroup/blkio", cg.lstrip("/"), "blkio.throttle.write_iops_device")
    assert f"{numbers} 200" in throttle.read_text()
    live = lab.virsh("dumpxml", "apiblk").stdout
    assert "<write_iops_sec>200</write_iops_sec>" in live
    p = lab.virsh("blkiotune", "apiblk", "--device-read-iops-sec", "/dev/null,5", check=False)
    assert p.returncode != 0 and "Path '/dev/null' must be a block device" in p.stderr
    if not Path(throttle.parent, "blkio.weight").exists() and \
            not Path(throttle.parent, "blkio.bfq.weight").exists():
        # no bfq/cfq scheduler on this host: libvirt's refusal, live only
        p = lab.virsh("blkiotune", "apiblk", "--weight", "300", check=False)
        assert p.returncode != 0 and "blkio weight is valid only for bfq or cfq" in p.stderr
    lab.virsh("destroy", "apiblk")


def test_schedinfo_config_and_live(lab, tmp_path):
    define(lab, tmp_path, "apisched")
    lab.virsh("schedinfo", "apisched", "--config", "cpu_shares=512")
    assert "cpu_shares     : 512" in lab.virsh("schedinfo", "apisched", "--config").stdout
    lab.virsh("start", "apisched")
    assert "cpu_shares     : 512" in lab.virsh("schedinfo", "apisched").stdout
    lab.virsh("schedinfo", "apisched", "--live", "cpu_shares=300")
    assert "cpu_shares     : 300" in lab.virsh("schedinfo", "apisched").stdout
    assert "cpu_shares     : 512" in lab.virsh("schedinfo", "apisched", "--config").stdout
    lab.virsh("destroy", "apisched")


DHCP_NET = """<network><name>{name}</name><bridge name='{bridge}' stp='off'/>
  <ip address='10.{n}.0.1' netmask='255.255.255.0'>
    <dhcp><range start='10.{n}.0.10' end='10.{n}.0.20'/></dhcp>
  </ip></network>"""


def test_net_update_on_an_lxc_connection(lab, tmp_path):
    """virsh net-update through lxc:// reaches the right section: the connection
    tells the client that NETWORK_UPDATE's arguments come in their documented order."""
    net = tmp_path / "n.xml"
    net.write_text(DHCP_NET.format(name="apiupd", bridge="pvapiupd0", n=96))
    lab.virsh("net-define", str(net))
    lab.virsh("net-update", "apiupd", "add", "ip-dhcp-host",
              "<host mac='52:54:00:00:00:01' name='h1' ip='10.96.0.11'/>", "--config")
    assert "<host mac='52:54:00:00:00:01' name='h1' ip='10.96.0.11'/>" in \
        lab.virsh("net-dumpxml", "apiupd").stdout
    lab.virsh("net-start", "apiupd")
    lab.virsh("net-update", "apiupd", "delete", "ip-dhcp-host",
              "<host mac='52:54:00:00:00:01' name='h1' ip='10.96.0.11'/>", "--live", "--config")
    assert "52:54:00:00:00:01" not in lab.virsh("net-dumpxml", "apiupd").stdout
    lab.virsh("net-destroy", "apiupd")
    lab.virsh("net-undefine", "apiupd")


def test_domhostname_and_domifaddr_from_the_dhcp_lease(lab, tmp_path):
    net = tmp_path / "n.xml"
    net.write_text(DHCP_NET.format(name="apidhcp", bridge="pvapidhcp0", n=95))
    lab.virsh("net-define", str(net))
    lab.virsh("net-start", "apidhcp")
    iface = ("<interface type='network'><source network='apidhcp'/>"
             "<mac address='52:54:00:95:00:02'/><guest dev='eth0'/></interface>")
    root = define(lab, tmp_path, "apihost", extra=iface)
    lab.virsh("start", "apihost")
    p = lab.virsh("domhostname", "apihost", check=False)
    assert p.returncode != 0 and "no hostname found for domain apihost" in p.stderr
    (root / "bin/udhcpc").symlink_to("busybox")
    (root / "bin/true").symlink_to("busybox")
    p = lab.virsh("lxc-enter-namespace", "apihost", "/bin/udhcpc", "-i", "eth0", "-q", "-n",
                  "-s", "/bin/true", "-x", "hostname:api-leased", timeout=60)
    assert lab.virsh("domhostname", "apihost").stdout.strip() == "api-leased"
    out = lab.virsh("domifaddr", "apihost").stdout
    assert "52:54:00:95:00:02" in out and "10.95.0." in out, out
    p = lab.virsh("domifaddr", "apihost", "--source", "agent", check=False)
    assert p.returncode != 0 and "Unknown IP address data source 1" in p.stderr
    # the NIC holds a port of the network, as a QEMU guest's does, kept across a
    # daemon restart and given back when the container stops
    port = lab.virsh("net-port-list", "apidhcp", "--uuid").stdout.split()
    assert len(port) == 1, port
    assert f"portid='{port[0]}'" in lab.virsh("dumpxml", "apihost").stdout
    assert "<name>apihost</name>" in lab.virsh("net-port-dumpxml", "apidhcp", port[0]).stdout
    lab.kill9()
    lab.start_daemon()
    assert lab.virsh("net-port-list", "apidhcp", "--uuid").stdout.split() == port
    lab.virsh("destroy", "apihost")
    assert lab.virsh("net-port-list", "apidhcp", "--uuid").stdout.split() == []
    lab.virsh("net-destroy", "apidhcp")


def test_metadata_live_and_config_with_events(lab, tmp_path):
    ns = "http://example.org/pyvirtd-lxc/1"
    define(lab, tmp_path, "apimeta")
    lab.virsh("desc", "apimeta", "--title", "--new-desc", "Config title")
    lab.virsh("start", "apimeta")
    assert lab.virsh("desc", "apimeta", "--title").stdout.strip() == "Config title"
    events = Events(lab.uri, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE)
    try:
        lab.virsh("desc", "apimeta", "--live", "--new-desc", "only while it runs")
        lab.virsh("metadata", "apimeta", ns, "--key", "app", "--set", "<item n='1'/>",
                  "--live", "--config")
        wait_for(lambda: len(events.seen) == 2, what="two METADATA_CHANGE events")
    finally:
        events.close()
    assert events.seen == [("apimeta", libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None),
                           ("apimeta", libvirt.VIR_DOMAIN_METADATA_ELEMENT, ns)]
    assert lab.virsh("desc", "apimeta").stdout.strip() == "only while it runs"
    p = lab.virsh("desc", "apimeta", "--config", check=False)
    assert "No description for domain" in p.stdout + p.stderr
    assert lab.virsh("metadata", "apimeta", ns, "--config").stdout.strip() == "<item n=\"1\"/>"
    # the live metadata survives the daemon's restart (runtime status)
    lab.kill9()
    lab.start_daemon()
    assert lab.virsh("desc", "apimeta").stdout.strip() == "only while it runs"
    p = lab.virsh("metadata", "apimeta", ns, "--live", "--config", check=False)
    assert p.returncode != 0 and "mutually exclusive" in p.stderr
    lab.virsh("destroy", "apimeta")
    # the live description went with the run; the config's element stays
    p = lab.virsh("desc", "apimeta", check=False)
    assert "No description for domain" in p.stdout + p.stderr
    assert "<item n=\"1\"/>" in lab.virsh("metadata", "apimeta", ns).stdout


def test_rename_a_shut_off_container(lab, tmp_path):
    define(lab, tmp_path, "apiren")
    lab.virsh("autostart", "apiren")
    lab.virsh("start", "apiren")
    p = lab.virsh("domrename", "apiren", "apiren2", check=False)
    assert p.returncode != 0 and "cannot rename active domain" in p.stderr
    lab.virsh("destroy", "apiren")
    define(lab, tmp_path, "apiother")
    p = lab.virsh("domrename", "apiren", "apiother", check=False)
    assert p.returncode != 0 and "domain with name 'apiother' already exists" in p.stderr
    lab.virsh("domrename", "apiren", "apiren2")
    names = lab.virsh("list", "--all", "--name").stdout.split()
    assert "apiren2" in names and "apiren" not in names
    cfg = lab.root_dir / "lib" / "lxc"
    assert (cfg / "apiren2.xml").exists() and not (cfg / "apiren.xml").exists()
    assert (cfg / "autostart" / "apiren2.xml").is_symlink()
    assert not (cfg / "autostart" / "apiren.xml").exists()
    # the autostart link moved with it: a restarted daemon starts it under its new name
    lab.kill9()
    lab.start_daemon()
    wait_for(lambda: lab.virsh("domstate", "apiren2").stdout.strip() == "running",
             what="apiren2 autostarted")
    assert "apiren2" in lab.virsh("dumpxml", "apiren2").stdout
    lab.virsh("destroy", "apiren2")


def test_ethernet_interface_is_a_named_veth_without_bridge(lab, tmp_path):
    iface = ("<interface type='ethernet'><target dev='pvapieth0'/>"
             "<ip address='10.94.0.2' prefix='24'/><guest dev='eth0'/></interface>")
    define(lab, tmp_path, "apieth", extra=iface)
    lab.virsh("start", "apieth")
    link = lab.ns_exec("ip", "-o", "link", "show", "pvapieth0").stdout
    assert "master" not in link, link
    assert "UP" in link.split("<", 1)[1].split(">")[0].split(","), link
    assert "<target dev='pvapieth0'/>" in lab.virsh("dumpxml", "apieth").stdout
    # the host end is the host's to address: then host and container talk over it
    lab.ns_exec("ip", "addr", "add", "10.94.0.1/24", "dev", "pvapieth0")
    p = lab.virsh("lxc-enter-namespace", "apieth", "/bin/sh", "-c",
                  "ip -o addr show eth0; ping -c 2 -W 2 10.94.0.1")
    assert "10.94.0.2/24" in p.stdout and "2 packets received" in p.stdout, p.stdout
    # a second container cannot take the same host name
    define(lab, tmp_path, "apieth2", extra=iface)
    p = lab.virsh("start", "apieth2", check=False)
    assert p.returncode != 0 and "File exists" in p.stderr, p.stderr
    lab.virsh("destroy", "apieth")
    assert lab.ns_exec("ip", "link", "show", "pvapieth0", check=False).returncode != 0
    # <script> is QEMU's, not a container's
    script = tmp_path / "script.xml"
    script.write_text(container_xml("apiscript", tmp_path / "root-apieth", extra=(
        "<interface type='ethernet'><script path='/bin/true'/></interface>")))
    lab.virsh("define", str(script))
    p = lab.virsh("start", "apiscript", check=False)
    assert p.returncode != 0 and "scripts are not supported on LXC network interfaces" in p.stderr


def test_cpu_interface_and_block_counters(lab, tmp_path):
    lab.ns_exec("ip", "link", "add", "pvapibr0", "type", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.93.0.1/24", "dev", "pvapibr0")
    lab.ns_exec("ip", "link", "set", "pvapibr0", "up")
    iface = ("<interface type='bridge'><source bridge='pvapibr0'/>"
             "<mac address='52:54:00:93:00:02'/>"
             "<ip address='10.93.0.2' prefix='24'/><guest dev='eth0'/></interface>")
    define(lab, tmp_path, "apistats", extra=iface)
    p = lab.virsh("cpu-stats", "apistats", "--total", check=False)
    assert p.returncode != 0 and "domain is not running" in p.stderr
    lab.virsh("start", "apistats")
    # the kernel counts a group's block I/O only on a device with a throttle rule
    disk = _disk_of(tmp_path)
    if disk is not None:
        lab.virsh("blkiotune", "apistats", "--device-write-bytes-sec", f"{disk},1000000000")
    # some CPU, network and disk I/O inside (O_DIRECT: the container's own writes)
    lab.virsh("lxc-enter-namespace", "apistats", "/bin/sh", "-c",
              "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; "
              "ping -c 3 -W 2 10.93.0.1 >/dev/null; "
              "dd if=/dev/zero of=/tmp/blk bs=64k count=16 oflag=direct 2>/dev/null")
    total = lab.virsh("cpu-stats", "apistats", "--total").stdout
    fields = dict(line.split()[:2] for line in total.splitlines()[1:] if line.strip())
    assert set(fields) == {"cpu_time", "user_time", "system_time"}, total
    assert float(fields["cpu_time"]) > 0
    per_cpu = lab.virsh("cpu-stats", "apistats", "--start", "0", "--count", "1").stdout
    assert per_cpu.startswith("CPU0:") and "cpu_time" in per_cpu, per_cpu
    veth = lab.virsh("domiflist", "apistats").stdout.strip().splitlines()[-1].split()[0]
    stats = dict(line.split()[1:3] for line in
                 lab.virsh("domifstat", "apistats", veth).stdout.splitlines() if line.strip())
    # the guest's view: its three pings went out (tx), their replies came in (rx)
    assert int(stats["tx_packets"]) >= 3 and int(stats["rx_packets"]) >= 3, stats
    assert lab.virsh("domifstat", "apistats", "52:54:00:93:00:02").returncode == 0
    p = lab.virsh("domifstat", "apistats", "nosuchdev", check=False)
    assert p.returncode != 0 and "'nosuchdev' is not a known interface" in p.stderr
    blk = dict(line.split() for line in
               lab.virsh("domblkstat", "apistats").stdout.splitlines() if line.strip())
    assert set(blk) == {"rd_req", "rd_bytes", "wr_req", "wr_bytes"}, blk
    if disk is not None:
        assert int(blk["wr_bytes"]) >= 16 * 65536 and int(blk["wr_req"]) >= 1, blk
    p = lab.virsh("domblkstat", "apistats", "vda", check=False)
    assert p.returncode != 0 and "invalid path: vda" in p.stderr
    lab.virsh("destroy", "apistats")


def test_sysinfo_is_the_hosts_smbios(lab):
    p = lab.virsh("sysinfo", check=False)
    if Path("/sys/firmware/dmi/tables").exists():
        assert p.returncode == 0 and p.stdout.startswith("<sysinfo type='smbios'>"), p.stderr
    else:
        # as libvirtd 9.0 answers on this host (no SMBIOS tables)
        assert p.returncode != 0
        assert "unsupported configuration: Host SMBIOS information is not available" in p.stderr


def test_nic_hotplug_live_and_config(lab, tmp_path):
    lab.ns_exec("ip", "link", "add", "pvapihp0", "type", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.92.0.1/24", "dev", "pvapihp0")
    lab.ns_exec("ip", "link", "set", "pvapihp0", "up")
    define(lab, tmp_path, "apinic")
    lab.virsh("start", "apinic")
    nic = tmp_path / "nic.xml"
    nic.write_text("<interface type='bridge'><source bridge='pvapihp0'/>"
                   "<mac address='52:54:00:92:00:02'/>"
                   "<ip address='10.92.0.2' prefix='24'/><guest dev='eth1'/></interface>")
    lab.virsh("attach-device", "apinic", str(nic))
    veth = lab.virsh("domiflist", "apinic").stdout.strip().splitlines()[-1].split()[0]
    assert "master pvapihp0" in lab.ns_exec("ip", "-o", "link", "show", veth).stdout
    p = lab.virsh("lxc-enter-namespace", "apinic", "/bin/sh", "-c",
                  "ip -o addr show eth1; ping -c 2 -W 2 10.92.0.1")
    assert "10.92.0.2/24" in p.stdout and "2 packets received" in p.stdout, p.stdout
    p = lab.virsh("attach-device", "apinic", str(nic), check=False)
    assert p.returncode != 0 and "52:54:00:92:00:02" in p.stderr
    # --live only: the config has no such NIC
    assert "52:54:00:92:00:02" not in lab.virsh("dumpxml", "--inactive", "apinic").stdout
    lab.virsh("detach-device", "apinic", str(nic))
    assert lab.ns_exec("ip", "link", "show", veth, check=False).returncode != 0
    p = lab.virsh("lxc-enter-namespace", "apinic", "/bin/sh", "-c", "ip -o link")
    assert "eth1" not in p.stdout
    assert "52:54:00:92:00:02" not in lab.virsh("dumpxml", "apinic").stdout
    p = lab.virsh("detach-device", "apinic", str(nic), check=False)
    assert p.returncode != 0 and "no device matching MAC address 52:54:00:92:00:02" in p.stderr
    # --config: the next start has it
    lab.virsh("attach-device", "apinic", str(nic), "--config")
    assert "52:54:00:92:00:02" not in lab.virsh("dumpxml", "apinic").stdout
    lab.virsh("destroy", "apinic")
    lab.virsh("start", "apinic")
    p = lab.virsh("lxc-enter-namespace", "apinic", "/bin/sh", "-c", "ping -c 1 -W 2 10.92.0.1")
    assert "1 packets received" in p.stdout, p.stdout
    lab.virsh("detach-device", "apinic", str(nic), "--config")
    lab.virsh("destroy", "apinic")
    assert "52:54:00:92:00:02" not in lab.virsh("dumpxml", "apinic").stdout


def test_filesystem_hotplug_binds_a_host_directory(lab, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello").write_text("from-the-host\n")
    define(lab, tmp_path, "apifs")
    lab.virsh("start", "apifs")
    fs = tmp_path / "fs.xml"
    fs.write_text(f"<filesystem type='mount'><source dir='{shared}'/>"
                  "<target dir='/mnt/shared'/><readonly/></filesystem>")
    lab.virsh("attach-device", "apifs", str(fs))
    p = lab.virsh("lxc-enter-namespace", "apifs", "/bin/sh", "-c",
                  "cat /mnt/shared/hello; echo x > /mnt/shared/new; echo rc=$?")
    assert "from-the-host" in p.stdout and "rc=1" in p.stdout, p.stdout + p.stderr
    assert not (shared / "new").exists()
    assert "<target dir='/mnt/shared'/>" in lab.virsh("dumpxml", "apifs").stdout
    p = lab.virsh("attach-device", "apifs", str(fs), check=False)
    assert p.returncode != 0 and "target /mnt/shared already exists" in p.stderr
    # the host does not see the container's mount
    assert not os.path.ismount(tmp_path / "root-apifs" / "mnt" / "shared")
    lab.virsh("detach-device", "apifs", str(fs))
    p = lab.virsh("lxc-enter-namespace", "apifs", "/bin/sh", "-c", "ls /mnt/shared | wc -l")
    assert p.stdout.strip() == "0", p.stdout
    missing = tmp_path / "missing.xml"
    missing.write_text(f"<filesystem type='mount'><source dir='{tmp_path}/nope'/>"
                       "<target dir='/mnt/nope'/></filesystem>")
    p = lab.virsh("attach-device", "apifs", str(missing), check=False)
    assert p.returncode != 0 and f"Failed to access '{tmp_path}/nope'" in p.stderr
    # a writable one, and one added to the config for the next start
    fs.write_text(f"<filesystem type='mount'><source dir='{shared}'/>"
                  "<target dir='/mnt/rw'/></filesystem>")
    lab.virsh("attach-device", "apifs", str(fs), "--live", "--config")
    lab.virsh("lxc-enter-namespace", "apifs", "/bin/sh", "-c", "echo inside > /mnt/rw/new")
    assert (shared / "new").read_text() == "inside\n"
    lab.virsh("destroy", "apifs")
    lab.virsh("start", "apifs")
    p = lab.virsh("lxc-enter-namespace", "apifs", "/bin/cat", "/mnt/rw/hello")
    assert p.stdout.strip() == "from-the-host"
    lab.virsh("destroy", "apifs")


def test_direct_interface_is_a_macvlan_moved_into_the_container(lab, tmp_path):
    # a parent device of the lab's own, and a bridge-mode macvlan of the host's on it
    lab.ns_exec("ip", "link", "add", "pvapiv0", "type", "veth", "peer", "name", "pvapiv1")
    lab.ns_exec("ip", "link", "set", "pvapiv0", "up")
    lab.ns_exec("ip", "link", "set", "pvapiv1", "up")      # a carrier for the parent
    lab.ns_exec("ip", "link", "add", "pvapimv0", "link", "pvapiv0", "type", "macvlan",
                "mode", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.91.0.1/24", "dev", "pvapimv0")
    lab.ns_exec("ip", "link", "set", "pvapimv0", "up")
    iface = ("<interface type='direct'><source dev='pvapiv0' mode='bridge'/>"
             "<mac address='52:54:00:91:00:02'/>"
             "<ip address='10.91.0.2' prefix='24'/><guest dev='eth0'/></interface>")
    define(lab, tmp_path, "apidirect", extra=iface)
    lab.virsh("start", "apidirect")
    assert "<target dev='macvlan0'/>" in lab.virsh("dumpxml", "apidirect").stdout
    p = lab.virsh("lxc-enter-namespace", "apidirect", "/bin/sh", "-c",
                  "ip -o link show eth0; ping -c 2 -W 2 10.91.0.1")
    assert "52:54:00:91:00:02" in p.stdout and "2 packets received" in p.stdout, p.stdout
    # it left the host's namespace
    assert lab.ns_exec("ip", "link", "show", "macvlan0", check=False).returncode != 0
    # one more, attached live; a macvlan cannot come back out (libvirt refuses too)
    nic = tmp_path / "direct.xml"
    nic.write_text("<interface type='direct'><source dev='pvapiv0' mode='bridge'/>"
                   "<mac address='52:54:00:91:00:03'/><guest dev='eth1'/></interface>")
    lab.virsh("attach-device", "apidirect", str(nic))
    p = lab.virsh("lxc-enter-namespace", "apidirect", "/bin/sh", "-c", "ip -o link show eth1")
    assert "52:54:00:91:00:03" in p.stdout, p.stdout
    p = lab.virsh("detach-device", "apidirect", str(nic), check=False)
    assert p.returncode != 0 and "Only bridged veth devices can be detached" in p.stderr
    lab.virsh("destroy", "apidirect")
    bad = tmp_path / "bad.xml"
    bad.write_text(container_xml("apinodev", tmp_path / "root-apidirect", extra=(
        "<interface type='direct'><source dev='pvapinone' mode='vepa'/></interface>")))
    lab.virsh("define", str(bad))
    p = lab.virsh("start", "apinodev", check=False)
    assert p.returncode != 0 and "pvapinone" in p.stderr, p.stderr


INITCTL_INIT = """#!/bin/sh
trap 'echo got-term > /tmp/term' TERM
mkdir -p /run
mkfifo /run/initctl
(n=0; while true; do n=$((n+1)); dd if=/run/initctl of=/tmp/req.$n bs=384 count=1 2>/dev/null
 done) &
echo ready > /tmp/ready
while true; do sleep 1000 & wait $!; done
"""


def _initreq(path: Path) -> tuple[int, int, int]:
    import struct
    data = path.read_bytes()
    assert len(data) == 384, len(data)
    magic, cmd, runlevel = struct.unpack("=iii", data[:12])
    return magic, cmd, runlevel


def test_shutdown_and_reboot_through_the_initctl_fifo(lab, tmp_path):
    root = define(lab, tmp_path, "apiinitctl")
    for applet in ("mkfifo", "mkdir"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin/init").write_text(INITCTL_INIT)
    lab.virsh("start", "apiinitctl")
    wait_for(lambda: (root / "tmp/ready").exists(), what="init's FIFO")
    lab.virsh("shutdown", "apiinitctl")
    wait_for(lambda: (root / "tmp/req.1").exists() and (root / "tmp/req.1").stat().st_size == 384,
             what="the shutdown request")
    # sysvinit's request: INIT_MAGIC, INIT_CMD_RUNLVL, runlevel '0'
    assert _initreq(root / "tmp/req.1") == (0x03091969, 1, ord("0"))
    assert not (root / "tmp/term").exists()       # the FIFO took it: no SIGTERM
    lab.virsh("reboot", "apiinitctl", "--mode", "initctl")
    wait_for(lambda: (root / "tmp/req.2").exists() and (root / "tmp/req.2").stat().st_size == 384,
             what="the reboot request")
    assert _initreq(root / "tmp/req.2") == (0x03091969, 1, ord("6"))
    # --mode signal skips the FIFO
    lab.virsh("shutdown", "apiinitctl", "--mode", "signal")
    wait_for(lambda: (root / "tmp/term").exists(), what="SIGTERM to init")
    assert not (root / "tmp/req.3").exists()
    # a FIFO that is a symlink out of the container resolves inside it, never on the host
    outside = tmp_path / "host-file"
    outside.write_text("untouched")
    (root / "run/initctl").unlink()
    (root / "run/initctl").symlink_to(outside)
    p = lab.virsh("shutdown", "apiinitctl", "--mode", "initctl", check=False)
    assert p.returncode != 0 and "does not provide an initctl pipe" in p.stderr, p.stderr
    assert outside.read_text() == "untouched"
    lab.virsh("destroy", "apiinitctl")


def test_vcpucount_of_live_and_config_definitions(lab, tmp_path):
    root = api_root(tmp_path / "root-apivcpu")
    xml = tmp_path / "apivcpu.xml"
    xml.write_text(container_xml("apivcpu", root).replace(
        "<memory unit='MiB'>", "<vcpu current='2'>4</vcpu><memory unit='MiB'>"))
    lab.virsh("define", str(xml))
    out = lab.virsh("vcpucount", "apivcpu").stdout
    assert "maximum      config         4" in out and "current      config         2" in out, out
    p = lab.virsh("vcpucount", "apivcpu", "--live", check=False)
    assert p.returncode != 0 and "domain is not running" in p.stderr
    lab.virsh("start", "apivcpu")
    assert lab.virsh("vcpucount", "apivcpu", "--maximum", "--live").stdout.strip() == "4"
    assert lab.virsh("vcpucount", "apivcpu", "--current", "--live").stdout.strip() == "2"
    lab.virsh("destroy", "apivcpu")
