"""Guest and host statistics on pyvirtd's QEMU driver, through virsh and python-libvirt.

One running firmware-only guest (KVM when usable) with two vCPUs, a qcow2
disk and, when a tap can be made here, an ethernet interface on a tap the
test owns; the numbers are checked against what the host itself says
(/proc, /sys) and against QEMU's own counters.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from daemon_helpers import (KVM_OK, guest_pid, kill_guests, needs_qemu, ok, qemu_uri, start_daemon,
                            stop_daemon, virsh, wait_for)

pytestmark = needs_qemu

TAP = "pvstats0"
GUEST = """<domain type='{virt}'>
  <name>st</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {net}
    <serial type='pty'/>
    <console type='pty'/>
  </devices>
</domain>
"""


def _make_tap() -> bool:
    r = subprocess.run(["ip", "tuntap", "add", "dev", TAP, "mode", "tap"], capture_output=True)
    if r.returncode != 0:
        return False
    subprocess.run(["ip", "link", "set", TAP, "up"], capture_output=True)
    return True


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats") / "pyvirtd"
    d = start_daemon(root)
    disk = root.parent / "st.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    tap = _make_tap()
    net = (f"<interface type='ethernet'><mac address='52:54:00:aa:bb:01'/>"
           f"<target dev='{TAP}' managed='no'/><model type='e1000'/></interface>" if tap else "")
    xml = root.parent / "st.xml"
    xml.write_text(GUEST.format(virt="kvm" if KVM_OK else "qemu", disk=disk, net=net))
    uri = qemu_uri(d)
    try:
        ok(uri, f"define {xml}")
        ok(uri, "start st")
        yield uri, d, tap
    finally:
        stop_daemon(d)
        kill_guests(root)
        if tap:   # deletable once the killed QEMU has let go of it
            deadline = time.monotonic() + 10
            while subprocess.run(["ip", "tuntap", "del", "dev", TAP, "mode", "tap"],
                                 capture_output=True).returncode and time.monotonic() < deadline:
                time.sleep(0.05)


def _stat_ticks(path: str) -> tuple[int, int]:
    f = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])


def test_dominfo_cpu_time_is_qemus(guest):
    uri, d, _ = guest
    pid = guest_pid(d.root, "st")

    def cpu_seconds() -> float:
        return sum(_stat_ticks(f"/proc/{pid}/stat")) / os.sysconf("SC_CLK_TCK")
    # the guest runs on: the daemon's reading lies between one taken before and
    # one after (give or take virsh's rounding to 0.1 s and /proc's clock tick)
    before = cpu_seconds()
    out = ok(uri, "dominfo st")
    after = cpu_seconds()
    got = float(re.search(r"CPU time:\s+([\d.]+)s", out).group(1))
    slack = 0.05 + 1 / os.sysconf("SC_CLK_TCK")
    assert before - slack <= got <= after + slack, (before, got, after)
    assert re.search(r"CPU\(s\):\s+2", out)


def test_vcpuinfo_threads_from_qmp(guest):
    import libvirt

    uri, d, _ = guest
    pid = guest_pid(d.root, "st")
    conn = libvirt.open(uri)
    try:
        info, maps = conn.lookupByName("st").vcpus()
    finally:
        conn.close()
    assert [v[0] for v in info] == [0, 1]
    assert all(v[1] == libvirt.VIR_VCPU_RUNNING for v in info)
    # vCPU 0 runs the firmware: its thread has used CPU time, reported in ns
    assert info[0][2] > 0
    assert all(v[3] in range(os.cpu_count()) for v in info)
    assert all(len(m) == os.cpu_count() and any(m) for m in maps)
    # the threads are QEMU's own "CPU n/KVM" (or TCG) threads
    names = {Path(f"/proc/{pid}/task/{t}/comm").read_text().strip()
             for t in os.listdir(f"/proc/{pid}/task")}
    assert any(n.startswith("CPU 0/") for n in names)
    out = ok(uri, "vcpuinfo st")
    assert out.count("State:          running") == 2
    assert "CPU Affinity:   " + "y" * os.cpu_count() in out


def test_vcpucount(guest):
    uri, _, _ = guest
    out = ok(uri, "vcpucount st")
    assert re.search(r"maximum\s+live\s+2", out) and re.search(r"current\s+config\s+2", out)
    r = virsh(uri, "vcpucount st --guest")
    assert r.rc != 0 and "QEMU guest agent is not configured" in r.err


def test_dommemstat(guest):
    uri, d, _ = guest
    out = ok(uri, "dommemstat st")
    assert "actual 65536" in out
    rss = int(re.search(r"rss (\d+)", out).group(1))
    pid = guest_pid(d.root, "st")
    status = Path(f"/proc/{pid}/status").read_text()
    real = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    assert abs(rss - real) < real // 4 + 4096


def test_block_stats_and_info(guest):
    uri, _, _ = guest
    out = ok(uri, "domblkstat st vda")
    assert re.search(r"vda rd_req \d+", out) and "vda flush_total_times" in out
    assert re.search(r"rd_req \d+", ok(uri, "domblkstat st"))      # every disk summed
    info = ok(uri, "domblkinfo st vda")
    assert re.search(r"Capacity:\s+67108864", info)
    r = virsh(uri, "domblkstat st vdz")
    assert r.rc != 0 and "invalid path: vdz" in r.err


def test_interface_stats(guest):
    uri, _, tap = guest
    if not tap:
        pytest.skip("cannot create a tap device here")
    out = ok(uri, f"domifstat st {TAP}")
    sysfs = Path(f"/sys/class/net/{TAP}/statistics")
    # type ethernet keeps the host's view (virDomainNetTypeSharesHostView)
    assert re.search(rf"{TAP} tx_bytes (\d+)", out)
    rx = int(re.search(rf"{TAP} rx_bytes (\d+)", out).group(1))
    assert abs(rx - int((sysfs / "rx_bytes").read_text())) < 4096
    assert "52:54:00:aa:bb:01 rx_bytes" in ok(uri, "domifstat st 52:54:00:aa:bb:01")   # by MAC too
    r = virsh(uri, "domifstat st nosuch0")
    assert r.rc != 0 and "'nosuch0' is not a known interface" in r.err


def test_domstats_groups(guest):
    uri, _, tap = guest
    out = ok(uri, "domstats st")
    keys = [line.strip().split("=")[0] for line in out.splitlines() if "=" in line]
    # libvirt's group order, and what each group has for a running guest
    for prefix in ("state.state", "cpu.time", "balloon.current", "vcpu.current", "net.count",
                   "block.count"):
        assert prefix in keys, (prefix, out)
    assert keys.index("state.state") < keys.index("cpu.time") < keys.index("balloon.current") \
        < keys.index("vcpu.current") < keys.index("net.count") < keys.index("block.count")
    for key in ("vcpu.0.state", "vcpu.0.time", "vcpu.1.time", "block.0.name", "block.0.rd.reqs",
                "block.0.capacity", "balloon.maximum"):
        assert key in keys
    assert "block.0.name=vda" in out
    if tap:
        assert f"net.0.name={TAP}" in out and "net.0.rx.bytes" in keys
    r = virsh(uri, "domstats --perf --enforce st")
    assert r.rc != 0 and "not supported by this daemon" in r.err


def test_all_domain_stats_like_virt_manager(guest):
    """virt-manager polls getAllDomainStats(state|cpu-total|balloon); cpu.time grows."""
    import libvirt

    uri, _, _ = guest
    conn = libvirt.open(uri)
    try:
        stats = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL \
            | libvirt.VIR_DOMAIN_STATS_BALLOON
        first = dict(conn.getAllDomainStats(stats))
        rec = next(s for dom, s in first.items() if dom.name() == "st")
        assert rec["state.state"] == libvirt.VIR_DOMAIN_RUNNING
        assert set(rec) >= {"cpu.time", "cpu.user", "cpu.system", "balloon.current",
                            "balloon.maximum"}
        # a later poll sees the guest's CPU time grown
        wait_for(lambda: {d.name(): s for d, s in conn.getAllDomainStats(stats)}["st"]["cpu.time"]
                 > rec["cpu.time"], timeout=30, interval=0.1)
        # virDomainListGetStats: the given domains only
        dom = conn.lookupByName("st")
        listed = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_VCPU)
        assert [d.name() for d, _ in listed] == ["st"]
        assert listed[0][1]["vcpu.maximum"] == 2
        assert "state.state" not in listed[0][1]
        # the info nova reads
        state, maxmem, mem, ncpu, cputime = dom.info()
        assert (state, maxmem, ncpu) == (libvirt.VIR_DOMAIN_RUNNING, 65536, 2) and cputime > 0
        assert dom.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_MAXIMUM) == 2
    finally:
        conn.close()


def test_host_facts(guest):
    import libvirt

    uri, _, _ = guest
    out = ok(uri, "nodeinfo")
    assert re.search(rf"CPU\(s\):\s+{os.cpu_count()}\n", out)
    total = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    assert re.search(rf"Memory size:\s+{total} KiB", out)
    cpu = ok(uri, "nodecpustats")
    assert all(k in cpu for k in ("user:", "system:", "idle:", "iowait:"))
    mem = ok(uri, "nodememstats")
    assert re.search(rf"total\s*:\s+{total} KiB", mem)
    assert f"CPUs online:    {os.cpu_count()}" in ok(uri, "nodecpumap")
    assert "Total:" in ok(uri, "freecell")
    models = ok(uri, "cpu-models x86_64").split()
    assert "qemu64" in models and "Skylake-Client" in models
    conn = libvirt.open(uri)
    try:
        assert conn.getFreeMemory() > 0
        cpus, cpumap, online = conn.getCPUMap()
        assert cpus >= os.cpu_count() and sum(cpumap) == online == os.cpu_count()
        base = conn.baselineCPU(["<cpu><arch>x86_64</arch><model>Haswell</model>"
                                 "<vendor>Intel</vendor></cpu>"] * 2)
        assert "<model fallback='forbid'>Haswell</model>" in base
    finally:
        conn.close()


def test_host_node_devices(guest):
    """A minimal node device view of the host from sysfs (what virt-manager and nova list)."""
    uri, _, _ = guest
    names = ok(uri, "nodedev-list").split()
    assert "computer" in names
    nets = sorted(i for i in os.listdir("/sys/class/net") if i != "lo")
    listed = ok(uri, "nodedev-list --cap net").split()
    assert sorted(n.split("_")[1] for n in listed) == sorted(nets)
    pci = sorted(os.listdir("/sys/bus/pci/devices")) if os.path.isdir("/sys/bus/pci/devices") else []
    assert len(ok(uri, "nodedev-list --cap pci").split()) == len(pci)
    if nets:
        xml = ok(uri, f"nodedev-dumpxml {listed[0]}")
        mac = Path(f"/sys/class/net/{nets[0]}/address").read_text().strip()
        assert f"<interface>{nets[0]}</interface>" in xml and f"<address>{mac}</address>" in xml
    if pci:
        dom, bus, rest = pci[0].split(":")
        xml = ok(uri, f"nodedev-dumpxml pci_{dom}_{bus}_{rest.replace('.', '_')}")
        vendor = Path(f"/sys/bus/pci/devices/{pci[0]}/vendor").read_text().strip()
        assert f"<vendor id='{vendor}'/>" in xml
    r = virsh(uri, "nodedev-dumpxml nosuch")
    assert r.rc != 0 and "no node device with matching name 'nosuch'" in r.err
