"""The LXC driver end to end: virsh and python-libvirt against a pyvirtd running as root.

Each test gets a daemon inside a test-made network namespace (so the bridge a
container's veth joins is the test's, not the host's) and a busybox-static
tree as container root.  Teardown destroys every container through the
daemon, then kills any controller or container process left, removes their
cgroups, the namespace and the daemon, whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.console_helpers import console_expect

REPO = Path(__file__).resolve().parents[3]
BUSYBOX = "/bin/busybox"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(not shutil.which("virsh"), reason="virsh not installed"),
]


def _static_busybox() -> bool:
    try:
        out = subprocess.run(["file", "-L", BUSYBOX], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return os.path.exists(BUSYBOX)
    return "statically linked" in out


INIT = """#!/bin/sh
trap 'echo init-got-term; exit 0' TERM
echo init-up
while true; do /bin/sh -i </dev/console >/dev/console 2>&1; done &
while true; do wait; done
"""


def make_root(path: Path) -> Path:
    """A container root: busybox-static and its applets, an init that exits on SIGTERM."""
    for d in ("bin", "sbin", "etc", "tmp", "proc", "sys", "dev"):
        (path / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, path / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo", "sleep", "ping", "ip", "hostname", "dd", "mount"):
        (path / "bin" / applet).symlink_to("busybox")
    (path / "sbin/init").write_text(INIT)
    (path / "sbin/init").chmod(0o755)
    return path


def container_xml(name: str, root: Path, *, memory_mib: int = 64, extra: str = "") -> str:
    return f"""<domain type='lxc'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <os><type>exe</type><init>/sbin/init</init></os>
  <devices>
    <filesystem type='mount'><source dir='{root}'/><target dir='/'/></filesystem>
    {extra}
    <console type='pty'/>
  </devices>
</domain>
"""


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


class Lab:
    """A pyvirtd serving lxc:/// inside network namespace ``ns``, and its cleanup."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = f"pvlxc{os.getpid() % 10000}{uuidlib.uuid4().hex[:4]}"
        self.root_dir = tmp / "pyvirtd"
        self.proc: subprocess.Popen | None = None
        run("ip", "netns", "add", self.ns)
        self.ns_exec("ip", "link", "set", "lo", "up")

    def ns_exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.ns, *argv, check=check)

    @property
    def sock(self) -> Path:
        return self.root_dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"lxc+unix:///system?socket={self.sock}"

    def start_daemon(self) -> None:
        self.root_dir.mkdir(exist_ok=True)
        log = open(self.root_dir / "daemon.log", "ab")
        self.proc = subprocess.Popen(
            # nsenter, not ip netns exec: that one remounts /sys and hides the cgroups
            ["nsenter", f"--net=/run/netns/{self.ns}", sys.executable, "-m", "pyvirtd.cli",
             "--root", str(self.root_dir)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log())
            if self.sock.exists() and "ready" in self.log():
                return
            time.sleep(0.05)
        raise RuntimeError(f"pyvirtd did not start:\n{self.log()}")

    def log(self) -> str:
        path = self.root_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self) -> None:
        # nsenter execs, so the Popen pid is pyvirtd itself
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.sock.unlink(missing_ok=True)
        (self.root_dir / "run" / "libvirt-sock-ro").unlink(missing_ok=True)

    def virsh(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ, LC_ALL="C")
        p = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                           env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"virsh {args} failed: {p.stderr}\n{self.log()}")
        return p

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                out = self.virsh("list", "--name", check=False, timeout=20).stdout.split()
                for name in out:
                    self.virsh("destroy", name, check=False, timeout=20)
                # networks outlive the daemon (as libvirtd's do): their dnsmasq too
                nets = self.virsh("net-list", "--name", check=False, timeout=20).stdout.split()
                for name in nets:
                    self.virsh("net-destroy", name, check=False, timeout=20)
            except subprocess.TimeoutExpired:
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._kill_leftovers()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def _kill_leftovers(self) -> None:
        """Controllers and containers a failed test left behind, and their cgroups."""
        import json
        from pyvirtd.drivers.lxc import cgroup
        run_dir = self.root_dir / "run" / "lxc"
        for status in run_dir.glob("*.json") if run_dir.is_dir() else ():
            if status.name.endswith(".spec.json"):
                spec = json.loads(status.read_text())
                paths = spec.get("cgroup") or {}
                cgroup.kill_all(paths, signal.SIGKILL)
                try:
                    cgroup.remove(paths, timeout=5)
                except OSError:
                    pass


@pytest.fixture
def lab(tmp_path: Path):
    if not _static_busybox():
        pytest.skip("busybox-static not installed (make deps)")
    lab = Lab(tmp_path)
    try:
        lab.start_daemon()
        yield lab
    finally:
        lab.close()


def test_container_lifecycle_console_enter_memory_limit(lab, tmp_path):
    import libvirt

    root = make_root(tmp_path / "root1")
    xml = tmp_path / "c1.xml"
    xml.write_text(container_xml("c1", root, memory_mib=64))
    lab.virsh("define", str(xml))
    lab.virsh("start", "c1")
    assert lab.virsh("domstate", "--reason", "c1").stdout.strip() == "running (booted)"
    assert "c1" in lab.virsh("list", "--name").stdout.split()

    conn = libvirt.open(lab.uri)
    try:
        dom = conn.lookupByName("c1")
        assert dom.OSType() == "exe"
        out = console_expect(conn, dom, b"echo hello-$((6*7)); hostname\n", b"hello-42")
        assert b"hello-42" in out, out
        # the file written inside shows up in the root on the host
        p = lab.virsh("lxc-enter-namespace", "c1", "/bin/sh", "-c",
                      "echo written-inside > /tmp/marker; hostname")
        assert p.stdout.strip() == "c1"
        assert (root / "tmp/marker").read_text() == "written-inside\n"
        # 100 MiB in one buffer in a 64 MiB container: the OOM killer ends it.  dd
        # volunteers (oom_score_adj 1000), else the kernel may pick the container's
        # init or the entering virsh instead, and the test would be about luck
        p = lab.virsh("lxc-enter-namespace", "c1", "/bin/sh", "-c",
                      "echo 1000 > /proc/self/oom_score_adj; "
                      "dd if=/dev/zero of=/dev/null bs=100M count=1; echo rc=$?")
        assert "rc=137" in p.stdout, p.stdout + p.stderr
        assert "hard_limit     : 65536" in lab.virsh("memtune", "c1").stdout
        assert "state.state=1" in lab.virsh("domstats", "c1").stdout
        # shutdown signals init, whose trap ends it
        lab.virsh("shutdown", "c1")
        deadline = time.monotonic() + 10
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    finally:
        conn.close()
    lab.virsh("start", "c1")
    lab.virsh("destroy", "c1")
    assert lab.virsh("domstate", "--reason", "c1").stdout.strip() == "shut off (destroyed)"
    lab.virsh("undefine", "c1")
    assert "c1" not in lab.virsh("list", "--all", "--name").stdout.split()
    assert not list((lab.root_dir / "run" / "lxc").glob("c1.*"))


def test_veth_on_bridge_pings_host_side(lab, tmp_path):
    lab.ns_exec("ip", "link", "add", "br0", "type", "bridge")
    lab.ns_exec("ip", "addr", "add", "10.99.0.1/24", "dev", "br0")
    lab.ns_exec("ip", "link", "set", "br0", "up")
    root = make_root(tmp_path / "root2")
    iface = ("<interface type='bridge'><source bridge='br0'/>"
             "<ip address='10.99.0.2' prefix='24'/><guest dev='eth0'/></interface>")
    xml = tmp_path / "c2.xml"
    xml.write_text(container_xml("c2", root, extra=iface))
    lab.virsh("create", str(xml))
    dumped = lab.virsh("dumpxml", "c2").stdout
    assert "<target dev='veth" in dumped
    p = lab.virsh("lxc-enter-namespace", "c2", "/bin/sh", "-c",
                  "ip -o addr show eth0; ping -c 2 -W 2 10.99.0.1")
    assert "10.99.0.2/24" in p.stdout
    assert "2 packets received" in p.stdout, p.stdout
    lab.virsh("destroy", "c2")
    # a transient container is gone, and so is its veth
    assert "c2" not in lab.virsh("list", "--all", "--name").stdout.split()
    assert "veth" not in lab.ns_exec("ip", "-o", "link").stdout


def test_veth_on_a_virtual_network(lab, tmp_path):
    """<interface type='network'>: the network service plugs the veth into the network's
    bridge; an inactive network refuses the start."""
    net = tmp_path / "lxcnet.xml"
    net.write_text("<network><name>lxcnet</name><bridge name='pvlxcbr0' stp='on' delay='0'/>"
                   "<ip address='10.98.0.1' netmask='255.255.255.0'/></network>")
    lab.virsh("net-define", str(net))
    root = make_root(tmp_path / "root4")
    iface = ("<interface type='network'><source network='lxcnet'/>"
             "<ip address='10.98.0.2' prefix='24'/><guest dev='eth0'/></interface>")
    xml = tmp_path / "c4.xml"
    xml.write_text(container_xml("c4", root, extra=iface))
    lab.virsh("define", str(xml))
    p = lab.virsh("start", "c4", check=False)
    assert p.returncode != 0 and "network 'lxcnet' is not active" in p.stderr
    lab.virsh("net-start", "lxcnet")
    lab.virsh("start", "c4")
    veth = lab.virsh("domiflist", "c4").stdout.strip().splitlines()[-1].split()[0]
    assert veth.startswith("veth")
    assert "master pvlxcbr0" in lab.ns_exec("ip", "-o", "link", "show", veth).stdout
    # a bridge with STP forwards from a new port only after its listening and learning
    wait_for(lambda: "state forwarding" in lab.ns_exec("bridge", "link", "show", "dev", veth).stdout,
             what=f"{veth} forwarding on pvlxcbr0")
    p = lab.virsh("lxc-enter-namespace", "c4", "/bin/sh", "-c", "ping -c 2 -W 2 10.98.0.1")
    assert "2 packets received" in p.stdout, p.stdout
    lab.virsh("destroy", "c4")
    assert "veth" not in lab.ns_exec("ip", "-o", "link").stdout
    lab.virsh("undefine", "c4")


def test_kill9_restart_keeps_container_running_and_controllable(lab, tmp_path):
    root = make_root(tmp_path / "root3")
    xml = tmp_path / "c3.xml"
    xml.write_text(container_xml("c3", root))
    lab.virsh("define", str(xml))
    lab.virsh("start", "c3")
    dom_id = lab.virsh("domid", "c3").stdout.strip()
    lab.kill9()
    lab.start_daemon()
    assert lab.virsh("domstate", "--reason", "c3").stdout.strip() == "running (booted)"
    assert lab.virsh("domid", "c3").stdout.strip() == dom_id
    p = lab.virsh("lxc-enter-namespace", "c3", "/bin/sh", "-c", "echo still-here")
    assert p.stdout.strip() == "still-here"
    lab.virsh("destroy", "c3")
    assert lab.virsh("domstate", "--reason", "c3").stdout.strip() == "shut off (destroyed)"
    lab.virsh("undefine", "c3")


def test_errors_bad_xml_and_missing_root(lab, tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='lxc'><name>x</name>")
    p = lab.virsh("define", str(bad), check=False)
    assert p.returncode != 0 and "Premature end of data in tag domain" in p.stderr
    hvm = tmp_path / "hvm.xml"
    hvm.write_text(container_xml("x", tmp_path).replace("<type>exe</type>", "<type>hvm</type>"))
    p = lab.virsh("define", str(hvm), check=False)
    assert p.returncode != 0 and "ostype=hvm" in p.stderr
    noroot = tmp_path / "noroot.xml"
    noroot.write_text(container_xml("nr", tmp_path / "does-not-exist"))
    lab.virsh("define", str(noroot))
    p = lab.virsh("start", "nr", check=False)
    assert p.returncode != 0
    assert f"Failed to access '{tmp_path / 'does-not-exist'}'" in p.stderr
    assert lab.virsh("domstate", "nr").stdout.strip() == "shut off"
    lab.virsh("undefine", "nr")


def _tick(lab, name: str) -> str:
    """The counter the container's ticker last wrote (read from inside)."""
    return lab.virsh("lxc-enter-namespace", name, "/bin/cat", "/tmp/tick").stdout.strip()


def test_suspend_resume_freezes_the_container_and_survives_restart(lab, tmp_path):
    import libvirt

    root = make_root(tmp_path / "root5")
    (root / "sbin/init").write_text(
        "#!/bin/sh\ni=0\nwhile true; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.05; done\n")
    xml = tmp_path / "c5.xml"
    xml.write_text(container_xml("c5", root))
    lab.virsh("define", str(xml))
    lab.virsh("start", "c5")
    libvirt.virEventRegisterDefaultImpl()     # before the connection opens
    conn = libvirt.open(lab.uri)
    events: list[tuple[int, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            libvirt.virEventRunDefaultImpl()

    cb = conn.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
        lambda _c, _d, event, detail, _o: events.append((event, detail)), None)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        lab.virsh("suspend", "c5")
        assert lab.virsh("domstate", "--reason", "c5").stdout.strip() == "paused (user)"
        frozen = (root / "tmp/tick").read_text()
        time.sleep(0.5)
        assert (root / "tmp/tick").read_text() == frozen    # the ticker stands still
        # suspending a paused container is no error; resuming a running one is
        lab.virsh("suspend", "c5")
        # the daemon's restart keeps the container paused
        lab.kill9()
        lab.start_daemon()
        assert lab.virsh("domstate", "--reason", "c5").stdout.strip() == "paused (user)"
        conn.close()
        conn = libvirt.open(lab.uri)
        cb = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            lambda _c, _d, event, detail, _o: events.append((event, detail)), None)
        lab.virsh("resume", "c5")
        assert lab.virsh("domstate", "--reason", "c5").stdout.strip() == "running (unpaused)"
        deadline = time.monotonic() + 10
        while (root / "tmp/tick").read_text() == frozen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (root / "tmp/tick").read_text() != frozen
        p = lab.virsh("resume", "c5", check=False)
        assert p.returncode != 0 and "domain is already running" in p.stderr, p.stderr
        # a paused container is destroyed at once (SIGKILL is not held back by the freezer)
        lab.virsh("suspend", "c5")
        lab.virsh("destroy", "c5", timeout=20)
        assert lab.virsh("domstate", "--reason", "c5").stdout.strip() == "shut off (destroyed)"
        p = lab.virsh("suspend", "c5", check=False)
        assert p.returncode != 0 and "domain is not running" in p.stderr, p.stderr
        deadline = time.monotonic() + 10
        while len(events) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        try:
            conn.domainEventDeregisterAny(cb)
        except libvirt.libvirtError:
            pass
        conn.close()
    # the second suspend was a no-op: no event for it
    E = libvirt
    assert events == [(E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
                      (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED),
                      (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
                      (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED)], events


def test_host_facts_are_the_hosts(lab):
    """lxc:/// answers the host procedures every local driver shares
    (pyvirtd.driver.hypervisor.HostFacts), from this host's /proc and /sys."""
    from pyvirtd import hostinfo

    info = lab.virsh("nodeinfo").stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    # (not the frequency nor free memory: they change from one read to the next)
    model, _mem, cpus, _mhz, _nodes, sockets, cores, threads = hostinfo.node_info()
    assert fields["CPU model"].strip() == model.decode()
    assert int(fields["CPU(s)"]) == cpus
    assert (int(fields["CPU socket(s)"]), int(fields["Core(s) per socket"]),
            int(fields["Thread(s) per core"])) == (sockets, cores, threads)
    assert "user:" in lab.virsh("nodecpustats").stdout
    assert "total  :" in lab.virsh("nodememstats").stdout
    assert "KiB" in lab.virsh("freecell").stdout
