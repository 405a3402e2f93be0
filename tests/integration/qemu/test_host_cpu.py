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
