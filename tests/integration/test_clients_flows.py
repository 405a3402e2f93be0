"""Whole client flows against pyvirtd and against libvirt's own test driver.

Each flow runs once against the reference (test:///default or a node file,
in-process, so fresh per process) and once against a fresh pyvirtd, and the
results must agree after normalising only what legitimately differs (clock
derived numbers, generated UUIDs):

- bulk domain statistics (virConnectGetAllDomainStats, virDomainListGetStats,
  virsh domstats), which virt-manager polls with stats=11;
- nova's host initialisation, replayed call by call from client-traces.md;
- virt-install: --print-xml, --dry-run and a real diskless --import;
- test:///PATH.xml node files, loaded afresh by every connection.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import virsh

REFERENCE = "test:///default"
HAVE_VIRSH = shutil.which("virsh") is not None
SYSTEM_PYTHON = "/usr/bin/python3"
VIRTINST_DIR = Path("/usr/share/virt-manager")

libvirt = pytest.importorskip("libvirt")


def run_script(script: str, uri: str, *args: str, python: str = sys.executable,
               env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a python script in its own process (a fresh in-process test:///default)."""
    p = subprocess.run([python, "-c", script, uri, *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr
    return p


def last_json(p: subprocess.CompletedProcess):
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- bulk domain statistics ------------------------------------------------

STATS_SCRIPT = textwrap.dedent('''
    import json, sys, libvirt
    libvirt.registerErrorHandler(lambda *a: None, None)
    c = libvirt.open(sys.argv[1])
    out = []
    def call(label, fn):
        try:
            res = fn()
            # the order of a whole listing is hash-table order in libvirt: sort it
            rows = [[d.name(), sorted(s.items())] for d, s in res]
            out.append([label, "ok", sorted(rows) if label.startswith("all") else rows])
        except libvirt.libvirtError as e:
            out.append([label, "err", e.get_error_code(), e.get_error_domain(), e.get_error_message()])
    x = ("<domain type='test'><name>NAME</name><memory>524288</memory><vcpu>2</vcpu>"
         "<iothreads>2</iothreads><os><type>hvm</type></os></domain>")
    inactive = c.defineXML(x.replace("NAME", "inactive"))
    running = c.defineXML(x.replace("NAME", "running"))
    running.create()
    transient = c.createXML(x.replace("NAME", "transient"), 0)
    c.lookupByName("test").suspend()
    for stats in (0, 1, 2, 11, 128, 129, 0x7ff, 0x10000):
        call(f"all stats={stats:#x}", lambda: c.getAllDomainStats(stats, 0))
    for flags in (1, 2, 3, 4, 8, 16, 32, 64, 128, 16 | 32, 0x20000000, 0x40000000, 0x80000000,
                  0x100, 0x400, 0x10000000):
        call(f"all flags={flags:#x}", lambda: c.getAllDomainStats(0, flags))
    for stats in (1, 2, 4, 129, 0x10000, 0x7ff):
        call(f"all enforce stats={stats:#x}", lambda: c.getAllDomainStats(stats, 0x80000000))
    call("list", lambda: c.domainListGetStats([running, inactive, transient], 0, 0))
    call("list active", lambda: c.domainListGetStats([running, inactive, transient], 1, 1))
    call("list duplicates", lambda: c.domainListGetStats([running, running], 0, 0))
    call("list empty", lambda: c.domainListGetStats([], 0, 0))
    call("list enforce", lambda: c.domainListGetStats([running], 8, 0x80000000))
    inactive.undefine()
    call("list vanished", lambda: c.domainListGetStats([inactive, running], 1, 0))
    call("list only vanished", lambda: c.domainListGetStats([inactive], 1, 0))
    call("all: virt-manager poll", lambda: c.getAllDomainStats(11, 0))
    print(json.dumps(out))
''')


def test_all_domain_stats_match_reference(daemon) -> None:
    want = last_json(run_script(STATS_SCRIPT, REFERENCE))
    got = last_json(run_script(STATS_SCRIPT, daemon.uri()))
    assert [row[0] for row in got] == [row[0] for row in want]
    for w, g in zip(want, got):
        assert g == w, w[0]


DOMSTATS_SCENARIOS = {
    "default": "domstats",
    "groups": "domstats --state --cpu-total --balloon --vcpu --interface --block --perf "
              "--iothread --memory --dirtyrate --vm",
    "raw": "domstats --raw test",
    "by name": "domstats test; domstats --state test",
    "filters": "domstats --list-active; domstats --list-inactive; domstats --list-persistent; "
               "domstats --list-transient; domstats --list-running; domstats --list-paused; "
               "domstats --list-shutoff; domstats --list-other",
    "paused": "suspend test; domstats --list-paused; domstats --state",
    "shut off": "destroy test; domstats; domstats --list-shutoff --state",
    "enforce ok": "domstats --enforce --state; domstats --enforce --iothread",
    "enforce unsupported": "domstats --enforce --cpu-total",
    "enforce by name": "domstats test --enforce --balloon",
    "backing nowait": "domstats --backing --nowait",
    "unknown domain": "domstats nosuch",
    "listing flags with names": "domstats test --list-active",
}


def _norm_virsh(text: str, uri: str) -> str:
    return text.replace(uri, "URI")


@pytest.mark.skipif(not HAVE_VIRSH, reason="virsh not installed")
@pytest.mark.parametrize("name", sorted(DOMSTATS_SCENARIOS))
def test_virsh_domstats_matches_reference(name: str, daemon) -> None:
    cmds = DOMSTATS_SCENARIOS[name]
    want = virsh(REFERENCE, cmds)
    got = virsh(daemon.uri(), cmds)
    assert (got.rc, _norm_virsh(got.out, daemon.uri()), _norm_virsh(got.err, daemon.uri())) == \
        (want.rc, _norm_virsh(want.out, REFERENCE), _norm_virsh(want.err, REFERENCE))


# --- nova's host initialisation --------------------------------------------

# The calls of the nova-host-init trace (client-traces.md), in its order, with
# nova's arguments where the test driver can answer them.  getLibVersion
# precedes every use of the connection, as nova's _test_connection() does.
NOVA_SCRIPT = textwrap.dedent('''
    import json, sys, libvirt
    libvirt.registerErrorHandler(lambda *a: None, None)
    libvirt.virEventRegisterDefaultImpl()
    uri = sys.argv[1]
    out = []
    def step(label, fn):
        try:
            out.append([label, "ok", fn()])
        except libvirt.libvirtError as e:
            out.append([label, "err", e.get_error_code(), e.get_error_domain(),
                        e.get_error_message()])
    c = libvirt.open(uri)
    for ev in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
               libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED):
        step(f"domainEventRegisterAny({ev})",
             lambda: c.domainEventRegisterAny(None, ev, lambda *a: None, None) >= 0)
    step("registerCloseCallback", lambda: c.registerCloseCallback(lambda *a: None, None))
    def nova(label, fn):
        step("getLibVersion", c.getLibVersion)
        step(label, fn)
    nova("getVersion", c.getVersion)
    nova("getType", c.getType)
    nova("getCapabilities", c.getCapabilities)
    # nova baselines the host CPU of the capabilities (no model on the test driver) ...
    host_cpu = "<cpu><arch>i686</arch><feature name='pae'/><feature name='nonpae'/></cpu>"
    nova("baselineCPU(host)", lambda: c.baselineCPU(
        [host_cpu], libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES))
    # ... and, on a real host, a CPU with a model
    model_cpu = ("<cpu><arch>x86_64</arch><model>Broadwell</model><vendor>Intel</vendor>"
                 "<feature name='vmx'/></cpu>")
    nova("baselineCPU(model)", lambda: c.baselineCPU(
        [model_cpu], libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES))
    nova("baselineCPU(model, no expand)", lambda: c.baselineCPU([model_cpu], 0))
    for virt_type, arch, machine in (("kvm", "x86_64", None), ("qemu", "x86_64", None),
                                     ("qemu", "x86_64", "q35"), ("qemu", "i686", None)):
        nova(f"getDomainCapabilities({virt_type},{arch},{machine})",
             lambda: c.getDomainCapabilities(None, arch, machine, virt_type, 0))
    nova("getHostname", c.getHostname)
    nova("getCPUModelNames", lambda: c.getCPUModelNames("x86_64"))
    nova("getCPUMap", c.getCPUMap)
    nova("secretLookupByUsage", lambda: c.secretLookupByUsage(
        libvirt.VIR_SECRET_USAGE_TYPE_CEPH, "client.nova").UUIDString())
    nova("getInfo", c.getInfo)
    nova("listAllDomains(1)", lambda: [d.name() for d in c.listAllDomains(1)])
    for d in c.listAllDomains(1):
        step(f"{d.name()}.info", d.info)
        step("getCPUMap", c.getCPUMap)
        step(f"{d.name()}.info", d.info)
        step(f"{d.name()}.vcpus", d.vcpus)
        step(f"{d.name()}.XMLDesc", lambda: d.XMLDesc(0))
    nova("getCPUStats(-1)", lambda: c.getCPUStats(-1))
    nova("getFreePages", lambda: {str(k): {str(p): n for p, n in v.items()}
                                  for k, v in c.getFreePages([4, 2048, 1048576], 0, 1).items()})
    nova("listAllDevices(131090)", lambda: [x.name() for x in c.listAllDevices(131090)])
    for x in c.listAllDevices(131090):
        step(f"{x.name()}.XMLDesc", lambda: x.XMLDesc(0))
    nova("nodeDeviceLookupByName(computer)", lambda: c.nodeDeviceLookupByName("computer").name())
    nova("nodeDeviceLookupByName(nosuch)", lambda: c.nodeDeviceLookupByName("nosuch").name())
    nova("numOfDevices", lambda: c.numOfDevices(None, 0))
    nova("numOfDevices(pci)", lambda: c.numOfDevices("pci", 0))
    print(json.dumps(out))
''')

# Steps whose value is derived from the clock: (label suffix, normaliser).
_TIME_STEPS = {
    ".info": lambda v: v[:4] + ["TIME"],
    ".vcpus": lambda v: [[[n, st, "TIME", cpu] for n, st, _, cpu in v[0]], v[1]],
}


def _normalise_nova(rows: list) -> list:
    out = []
    for row in rows:
        label = row[0]
        if row[1] == "ok":
            for suffix, fix in _TIME_STEPS.items():
                if label.endswith(suffix):
                    row = [label, "ok", fix(row[2])]
            if label == "getHostname":
                row = [label, "ok", "HOST"]
        out.append(row)
    return out


def test_nova_host_init_matches_reference(daemon) -> None:
    want = _normalise_nova(last_json(run_script(NOVA_SCRIPT, REFERENCE)))
    got = _normalise_nova(last_json(run_script(NOVA_SCRIPT, daemon.uri())))
    assert [r[0] for r in got] == [r[0] for r in want]
    wanted = {}
    for w, g in zip(want, got):
        label = w[0]
        if label == "secretLookupByUsage":
            # In-process test:/// has no secret driver (VIR_ERR_NO_SUPPORT from
            # VIR_FROM_SECRET); through libvirtd the daemon's secret driver answers,
            # which is what nova sees and branches on: VIR_ERR_NO_SECRET.
            assert w == [label, "err", libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_FROM_SECRET,
                         "this function is not supported by the connection driver: "
                         "virSecretLookupByUsage"]
            assert g == [label, "err", libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_FROM_SECRET,
                         "Secret not found: no secret with matching usage 'client.nova'"]
            continue
        if label == "getFreePages":
            # testNodeGetFreePages fills the counts but returns 0, so in-process
            # python-libvirt builds an empty dict; over RPC the counts arrive (the
            # numbers virsh freepages prints for test:///default: 19, 45, 97).
            assert w == [label, "ok", {}]
            assert g == [label, "ok", {"0": {"4": 19, "2048": 45, "1048576": 97}}]
            continue
        wanted[label] = w
        assert g == w, label
    # what the test driver is known to answer, so that agreeing on nothing cannot pass
    assert wanted["getDomainCapabilities(kvm,x86_64,None)"][1:3] == ["err", libvirt.VIR_ERR_NO_SUPPORT]
    assert wanted["baselineCPU(host)"][1:3] == ["err", libvirt.VIR_ERR_XML_ERROR]
    assert wanted["baselineCPU(model)"][1] == "ok"
    assert wanted["nodeDeviceLookupByName(nosuch)"][2] == libvirt.VIR_ERR_NO_NODE_DEVICE


# --- virt-install --------------------------------------------------------------

VIRT_INSTALL_ARGS = ["--name", "t1", "--memory", "64", "--vcpus", "1", "--disk", "none",
                     "--import", "--osinfo", "generic", "--network", "none", "--graphics",
                     "none", "--noautoconsole", "--virt-type", "test"]

# virt-install run inside one python process together with a look at the
# result, since test:///default lives only as long as that process.
VIRT_INSTALL_IN_PROCESS = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, "/usr/share/virt-manager")
    from virtinst import virtinstall
    import libvirt
    uri = sys.argv[1]
    sys.argv = ["virt-install", "--connect", uri] + sys.argv[2:]
    rc = 0
    try:
        virtinstall.runcli()
    except SystemExit as e:
        rc = e.code or 0
    sys.stdout.flush()
    c = libvirt.open(uri)
    doms = {d.name(): [d.isActive(), d.isPersistent(), d.XMLDesc(0)] for d in c.listAllDomains(0)}
    print()
    print(json.dumps([rc, doms]))
''')

needs_virt_install = pytest.mark.skipif(
    shutil.which("virt-install") is None or not VIRTINST_DIR.is_dir()
    or not Path(SYSTEM_PYTHON).exists(), reason="virt-install (Debian virtinst) not installed")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")


def _norm_vi(text: str) -> str:
    text = _UUID.sub("UUID", text)
    return _MAC.sub("MAC", text)


def _vi_env(tmp_path: Path) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), LC_ALL="C", LANG="C")
    env.pop("LIBVIRT_DEFAULT_URI", None)
    return env


def _virt_install(uri: str, extra: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["virt-install", "--connect", uri, *VIRT_INSTALL_ARGS, *extra],
                          capture_output=True, text=True, timeout=180, env=env)


@needs_virt_install
@pytest.mark.parametrize("mode", ["--print-xml", "--dry-run"])
def test_virt_install_without_creating_matches_reference(mode: str, daemon, tmp_path: Path) -> None:
    env = _vi_env(tmp_path)
    want = _virt_install(REFERENCE, [mode], env)
    got = _virt_install(daemon.uri(), [mode], env)
    assert want.returncode == 0, want.stderr
    assert (got.returncode, _norm_vi(got.stdout), _norm_vi(got.stderr)) == \
        (want.returncode, _norm_vi(want.stdout), _norm_vi(want.stderr))
    # nothing was created
    conn = libvirt.open(daemon.uri())
    try:
        assert [d.name() for d in conn.listAllDomains(0)] == ["test"]
    finally:
        conn.close()


@needs_virt_install
def test_virt_install_import_matches_reference(daemon, tmp_path: Path) -> None:
    env = _vi_env(tmp_path)
    ref = run_script(VIRT_INSTALL_IN_PROCESS, REFERENCE, *VIRT_INSTALL_ARGS, python=SYSTEM_PYTHON,
                     env=env, timeout=180)
    ref_rc, ref_doms = last_json(ref)
    assert ref_rc == 0 and "t1" in ref_doms, ref.stderr

    got = _virt_install(daemon.uri(), [], env)
    assert got.returncode == 0, got.stderr
    assert "Domain creation completed." in got.stdout
    assert _norm_vi(got.stderr) == _norm_vi(ref.stderr)
    conn = libvirt.open(daemon.uri())
    try:
        doms = {d.name(): [d.isActive(), d.isPersistent(), d.XMLDesc(0)]
                for d in conn.listAllDomains(0)}
    finally:
        conn.close()
    assert sorted(doms) == sorted(ref_doms)
    active, persistent, xml = doms["t1"]
    assert (active, persistent) == (1, 1) == tuple(ref_doms["t1"][:2])
    assert _norm_vi(xml) == _norm_vi(ref_doms["t1"][2])


# --- test:///PATH.xml node files ----------------------------------------------

NODE_XML = """<node>
  <cpu>
    <mhz>2400</mhz>
    <model>x86_64</model>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>4</cores>
    <threads>2</threads>
    <active>8</active>
  </cpu>
  <memory>4194304</memory>
  <domain type='test'>
    <name>filedom</name>
    <uuid>12345678-1234-1234-1234-123456789abc</uuid>
    <memory>131072</memory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
  </domain>
  <network>
    <name>filenet</name>
    <uuid>87654321-1234-1234-1234-123456789abc</uuid>
    <bridge name='virbr5'/>
    <ip address='192.168.150.1' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.150.2' end='192.168.150.254'/>
      </dhcp>
    </ip>
  </network>
</node>
"""

NODE_FILE_SCENARIOS = [
    "list --all; net-list --all; nodeinfo",
    "dominfo filedom; net-info filenet; dumpxml filedom; net-dumpxml filenet",
    "domstats; list --name",
    # changes stay within the connection: the next invocation starts afresh
    "destroy filedom; net-destroy filenet; list --all; net-list --all",
    "list --all; net-list --all",
]

_CPU_TIME = re.compile(r"(CPU time:\s+)[0-9.]+s")


@pytest.mark.skipif(not HAVE_VIRSH, reason="virsh not installed")
def test_node_file_uri_matches_reference(daemon, tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    ref_uri = f"test://{node}"
    our_uri = daemon.uri(ref_uri)
    for cmds in NODE_FILE_SCENARIOS:
        want = virsh(ref_uri, cmds)
        got = virsh(our_uri, cmds)
        norm = lambda s, uri: _CPU_TIME.sub(r"\1T", s.replace(uri, "URI"))  # noqa: E731
        assert want.rc == 0, want.err
        assert (got.rc, norm(got.out, our_uri), norm(got.err, our_uri)) == \
            (want.rc, norm(want.out, ref_uri), norm(want.err, ref_uri)), cmds


@pytest.mark.skipif(not HAVE_VIRSH, reason="virsh not installed")
@pytest.mark.xfail(reason="pyvirtd/xml/network.py writes a childless <ip> as '<ip .../>'; libvirt "
                          "always writes '<ip ...>' and '</ip>' on two lines (networks owner)",
                   strict=False)
def test_node_file_network_without_dhcp(daemon, tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(re.sub(r"<ip (.*?)>.*?</ip>", r"<ip \1/>", NODE_XML, flags=re.S))
    want = virsh(f"test://{node}", "net-dumpxml filenet")
    got = virsh(daemon.uri(f"test://{node}"), "net-dumpxml filenet")
    assert (got.rc, got.out, got.err) == (want.rc, want.out, want.err)


def test_node_file_state_is_per_connection(daemon, tmp_path: Path) -> None:
    """Two connections to one node file do not share objects (libvirt loads it per open)."""
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    uri = daemon.uri(f"test://{node}")
    a, b = libvirt.open(uri), libvirt.open(uri)
    try:
        a.lookupByName("filedom").destroy()
        assert a.lookupByName("filedom").isActive() == 0
        assert b.lookupByName("filedom").isActive() == 1
        assert [d.name() for d in b.listAllDomains(0)] == ["filedom"]
        assert b.getInfo()[:4] == ["x86_64", 4096, 8, 2400]
    finally:
        a.close()
        b.close()
