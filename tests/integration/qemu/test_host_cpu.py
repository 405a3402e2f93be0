"""The host CPU in `virsh capabilities`, side by side with Debian's libvirtd 9.0.

nova reads the host CPU from the capabilities and feeds it back into
baselineCPU/compareCPU, which only know libvirt's model and feature names.
pyvirtd decodes CPUID with libvirt's CPU map (pyvirtd.cpumap) and must name
this machine's CPU exactly as libvirtd does.  libvirtd runs unprivileged here
(as root it would become the host's system daemon), so it cannot read the
IA32_ARCH_CAPABILITIES MSR nor ask KVM for the TSC rate: the MSR features and
the <counter> pyvirtd reports as root are compared with what CPUID says is
there instead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from daemon_helpers import needs_qemu, qemu_uri, start_daemon, stop_daemon

from bench.daemons import start_libvirtd
from pyvirtd import cpumap

pytestmark = needs_qemu

# features libvirt's map defines by the IA32_ARCH_CAPABILITIES MSR
MSR_FEATURES = {name for name, data in cpumap.x86_map().features
                if any(k[0] == "msr" for k in data)}


def _host_cpu(caps_xml: str) -> etree._Element:
    return etree.fromstring(caps_xml.encode()).find("host/cpu")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """pyvirtd's and libvirtd's capabilities of this host."""
    d = start_daemon(tmp_path_factory.mktemp("hostcpu") / "pyvirtd")
    lv_root = Path(tempfile.mkdtemp(prefix="pyvirtd-hostcpu-"))
    lv_root.chmod(0o755)
    lv = start_libvirtd(lv_root / "libvirtd")
    try:
        if isinstance(lv, str):
            pytest.fail(f"libvirtd did not start: {lv}")
        py_conn = libvirt.open(qemu_uri(d))
        lv_conn = libvirt.open(lv.session_uri)
        try:
            yield py_conn, lv_conn
        finally:
            py_conn.close()
            lv_conn.close()
    finally:
        if not isinstance(lv, str):
            lv.stop()
        shutil.rmtree(lv_root, ignore_errors=True)
        stop_daemon(d)


def test_host_cpu_named_as_libvirtd_names_it(both):
    py_conn, lv_conn = both
    ours, theirs = _host_cpu(py_conn.getCapabilities()), _host_cpu(lv_conn.getCapabilities())
    for tag in ("arch", "model", "vendor"):
        assert ours.findtext(tag) == theirs.findtext(tag), tag
    for tag in ("microcode", "signature", "topology", "maxphysaddr"):
        a, b = ours.find(tag), theirs.find(tag)
        assert (a is None) == (b is None), tag
        if a is not None:
            assert dict(a.attrib) == dict(b.attrib), tag
    ours_f = [f.get("name") for f in ours.findall("feature")]
    theirs_f = [f.get("name") for f in theirs.findall("feature")]
    assert theirs_f, "libvirtd listed no host CPU features"
    # the same features in the same (CPU map) order; what only root can read comes last
    assert [f for f in ours_f if f not in MSR_FEATURES] == theirs_f
    extra = [f for f in ours_f if f in MSR_FEATURES]
    if extra:
        assert "arch-capabilities" in theirs_f     # the MSR is only read when CPUID has it
    counter = ours.find("counter")
    if counter is not None:
        assert counter.get("name") == "tsc" and int(counter.get("frequency")) > 0
        assert "invtsc" in theirs_f                # libvirt reports a TSC rate only then


def test_nova_baselines_the_host_cpu(both):
    """nova's init_host: baselineCPU(host CPU, EXPAND_FEATURES) answers as libvirt does
    (its in-process test driver runs the same CPU code as libvirtd)."""
    py_conn, _ = both
    cpu = etree.tostring(_host_cpu(py_conn.getCapabilities()), encoding="unicode")
    flags = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    reference = libvirt.open("test:///default")
    try:
        want = reference.baselineCPU([cpu], flags)
    finally:
        reference.close()
    got = py_conn.baselineCPU([cpu], flags)
    assert got == want
    assert "<model fallback='forbid'>" in got


def _compare(conn, xml: str, flags: int):
    try:
        return conn.compareCPU(xml, flags)
    except libvirt.libvirtError as e:
        return ("error", e.get_error_code(), e.get_error_domain(), e.get_error_message())


def _without_msr(answer):
    """An answer with the MSR features only pyvirtd (as root) can see taken out."""
    if isinstance(answer, tuple) and ": " in answer[3]:
        head, _, names = answer[3].rpartition(": ")
        kept = [n for n in names.split(", ") if n not in MSR_FEATURES]
        return answer[:3] + (f"{head}: {', '.join(kept)}",)
    return answer


def test_compare_cpu_as_libvirtd(both):
    """virsh cpu-compare / compareCPU: each host's own CPU is identical to itself, and
    models, policies, vendors and strict matching give libvirtd's answers."""
    py_conn, lv_conn = both
    fail = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
    libvirt.registerErrorHandler(lambda *_: None, None)
    for conn in (py_conn, lv_conn):
        own = _host_cpu(conn.getCapabilities())
        for tag in ("pages", "counter", "topology", "microcode", "signature", "maxphysaddr"):
            for e in own.findall(tag):
                own.remove(e)
        host_xml = etree.tostring(own, encoding="unicode")
        assert conn.compareCPU(host_xml, 0) == libvirt.VIR_CPU_COMPARE_IDENTICAL
    host = _host_cpu(lv_conn.getCapabilities())
    model, vendor = host.findtext("model"), host.findtext("vendor")
    other_vendor = "AMD" if vendor == "Intel" else "Intel"
    cases = [
        f"<cpu><model>{model}</model></cpu>",
        f"<cpu match='strict'><model>{model}</model></cpu>",
        f"<cpu match='minimum'><model>{model}</model><feature policy='forbid' name='vme'/></cpu>",
        f"<cpu><model>{model}</model><feature policy='require' name='svm'/></cpu>",
        f"<cpu><model>{model}</model><feature policy='optional' name='svm'/></cpu>",
        f"<cpu><model>{model}</model><feature policy='disable' name='sse2'/></cpu>",
        f"<cpu><model>{model}</model><vendor>{other_vendor}</vendor></cpu>",
        "<cpu><model>qemu64</model></cpu>",
        "<cpu><model>NoSuchModel</model></cpu>",
        "<cpu><model>qemu64</model><feature name='no-such-feature'/></cpu>",
        "<cpu><feature name='sse2'/></cpu>",
        "<cpu><arch>x86_64</arch><model>qemu64</model><feature name='svm'/></cpu>",
        "<cpu><arch>aarch64</arch><model>qemu64</model></cpu>",
        "<domain/>",
        "<domain><cpu><model>qemu64</model></cpu></domain>",
        "<cpu><model>qemu64",
    ]
    seen = set()
    for xml in cases:
        for flags in (0, fail):
            want = _without_msr(_compare(lv_conn, xml, flags))
            assert _without_msr(_compare(py_conn, xml, flags)) == want, (xml, flags)
            seen.add(want[1] if isinstance(want, tuple) else want)
    # superset, incompatible, CPU_INCOMPATIBLE errors and XML errors were all compared
    assert {libvirt.VIR_CPU_COMPARE_SUPERSET, libvirt.VIR_CPU_COMPARE_INCOMPATIBLE,
            libvirt.VIR_ERR_CPU_INCOMPATIBLE, libvirt.VIR_ERR_XML_ERROR} <= seen
