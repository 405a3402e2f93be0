"""Capabilities, domain capabilities and the host CPU, side by side with Debian's libvirtd 9.0.

nova reads the host CPU from the capabilities and feeds it back into
baselineCPU/compareCPU, which only know libvirt's model and feature names;
virt-manager and virt-install read the host-model CPU, the CPU models and the
firmware images from domcapabilities.  pyvirtd decodes CPUID and QEMU's host
model with libvirt's CPU map (pyvirtd.cpumap) and must print what libvirtd
prints on this machine.  libvirtd runs as the fenced root system daemon
(daemon_helpers.fenced_libvirtd), with the same privileges as pyvirtd here:
both read the IA32_ARCH_CAPABILITIES MSR and KVM's TSC rate.
"""

from __future__ import annotations

import re

import libvirt
import pytest
from lxml import etree

from daemon_helpers import (fenced_libvirtd, needs_qemu, needs_root_libvirtd, qemu_uri,
                            start_daemon, stop_daemon)

pytestmark = [needs_qemu, *needs_root_libvirtd]


def _host_cpu(caps_xml: str) -> etree._Element:
    return etree.fromstring(caps_xml.encode()).find("host/cpu")


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """python-libvirt connections to pyvirtd and to libvirtd."""
    base = tmp_path_factory.mktemp("hostcpu")
    d = start_daemon(base / "pyvirtd")
    try:
        with fenced_libvirtd(base, "cpu") as lv_uri:
            libvirt.registerErrorHandler(lambda *_: None, None)
            py_conn, lv_conn = libvirt.open(qemu_uri(d)), libvirt.open(lv_uri)
            try:
                yield py_conn, lv_conn
            finally:
                py_conn.close()
                lv_conn.close()
    finally:
        stop_daemon(d)


def _normalised_caps(xml: str) -> str:
    """Capabilities without the host UUID, and machines in one order (libvirt
    lists them in hash-table order)."""
    xml = re.sub(r"<uuid>[^<]*</uuid>", "<uuid/>", xml)
    lines, out, run = xml.splitlines(), [], []
    for line in lines + [""]:
        if line.strip().startswith("<machine"):
            run.append(line)
            continue
        out += sorted(run) + [line]
        run = []
    return "\n".join(out)


def test_capabilities_as_libvirtd(both):
    """The whole capabilities document: host CPU (model, features, signature,
    microcode, TSC counter, maxphysaddr), topology, caches, security models,
    guests and machines."""
    py_conn, lv_conn = both
    ours, theirs = py_conn.getCapabilities(), lv_conn.getCapabilities()
    assert _host_cpu(theirs).findtext("model"), "libvirtd named no host CPU model"
    assert _normalised_caps(ours) == _normalised_caps(theirs)


@pytest.mark.parametrize("virttype", ["kvm", "qemu"])
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_domain_capabilities_as_libvirtd(both, virttype, machine):
    """domcapabilities: host-model CPU (QEMU's host model named with libvirt's
    map, blockers disabled), CPU models in QEMU's order, UEFI images per machine
    from the firmware descriptors, devices and features."""
    py_conn, lv_conn = both
    args = ("/usr/bin/qemu-system-x86_64", "x86_64", machine, virttype, 0)
    theirs = lv_conn.getDomainCapabilities(*args)
    assert "<mode name='host-model' supported='yes'>" in theirs
    assert py_conn.getDomainCapabilities(*args) == theirs


def test_nova_baselines_the_host_cpu(both):
    """nova's init_host: baselineCPU(host CPU, EXPAND_FEATURES) answers as libvirt does."""
    py_conn, lv_conn = both
    cpu = etree.tostring(_host_cpu(py_conn.getCapabilities()), encoding="unicode")
    flags = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    got = py_conn.baselineCPU([cpu], flags)
    assert got == lv_conn.baselineCPU([cpu], flags)
    assert "<model fallback='forbid'>" in got


def _compare(conn, xml: str, flags: int):
    try:
        return conn.compareCPU(xml, flags)
    except libvirt.libvirtError as e:
        return ("error", e.get_error_code(), e.get_error_domain(), e.get_error_message())


def test_compare_cpu_as_libvirtd(both):
    """virsh cpu-compare / compareCPU: the host's own CPU is identical to itself, and
    models, policies, vendors and strict matching give libvirtd's answers."""
    py_conn, lv_conn = both
    fail = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
    own = _host_cpu(py_conn.getCapabilities())
    for tag in ("pages", "counter", "topology", "microcode", "signature", "maxphysaddr"):
        for e in own.findall(tag):
            own.remove(e)
    host = own.findtext("model")
    other_vendor = "AMD" if own.findtext("vendor") == "Intel" else "Intel"
    cases = [
        etree.tostring(own, encoding="unicode"),
        f"<cpu><model>{host}</model></cpu>",
        f"<cpu match='strict'><model>{host}</model></cpu>",
        f"<cpu match='minimum'><model>{host}</model><feature policy='forbid' name='vme'/></cpu>",
        f"<cpu><model>{host}</model><feature policy='require' name='svm'/></cpu>",
        f"<cpu><model>{host}</model><feature policy='optional' name='svm'/></cpu>",
        f"<cpu><model>{host}</model><feature policy='disable' name='sse2'/></cpu>",
        f"<cpu><model>{host}</model><vendor>{other_vendor}</vendor></cpu>",
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
            want = _compare(lv_conn, xml, flags)
            assert _compare(py_conn, xml, flags) == want, (xml, flags)
            seen.add(want[1] if isinstance(want, tuple) else want)
    # identical, superset, incompatible, CPU_INCOMPATIBLE errors and XML errors all compared
    assert {libvirt.VIR_CPU_COMPARE_IDENTICAL, libvirt.VIR_CPU_COMPARE_SUPERSET,
            libvirt.VIR_CPU_COMPARE_INCOMPATIBLE, libvirt.VIR_ERR_CPU_INCOMPATIBLE,
            libvirt.VIR_ERR_XML_ERROR} <= seen


HV_CPUS = [
    "<cpu><arch>x86_64</arch><model>qemu64</model></cpu>",
    "<cpu><arch>x86_64</arch><model>Haswell</model><vendor>Intel</vendor></cpu>",
    "<cpu><arch>x86_64</arch><model>pentium3</model><feature name='sse2'/></cpu>",
    "<cpu><arch>x86_64</arch><model>EPYC</model><vendor>AMD</vendor></cpu>",
]


@pytest.mark.parametrize("virttype", ["kvm", "qemu"])
def test_hypervisor_cpu_calls_as_libvirtd(both, virttype):
    """compareHypervisorCPU (against QEMU's host model, not the host's CPU) and
    baselineHypervisorCPU (among QEMU's models, within what it can give)."""
    py_conn, lv_conn = both
    emulator, arch, machine = "/usr/bin/qemu-system-x86_64", "x86_64", "pc"
    guest_cpus = HV_CPUS + [
        "<cpu mode='host-model'/>",
        "<cpu><model>pentium3</model></cpu>",
        "<cpu><model>kvm64</model><feature policy='require' name='pni'/></cpu>",
        "<cpu><model>Skylake-Client</model></cpu>",
    ]
    fail = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
    seen = set()
    for xml in guest_cpus:
        for flags in (0, fail):
            def compare(conn):
                try:
                    return conn.compareHypervisorCPU(emulator, arch, machine, virttype, xml, flags)
                except libvirt.libvirtError as e:
                    return ("error", e.get_error_code(), e.get_error_message())
            want = compare(lv_conn)
            assert compare(py_conn) == want, (virttype, xml, flags)
            seen.add(want if isinstance(want, int) else want[1])
    assert len(seen) >= 2        # more than one kind of answer was compared
    expand = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    for cpus in ([HV_CPUS[0]], [HV_CPUS[1]], HV_CPUS[:3], [HV_CPUS[2], HV_CPUS[3]]):
        for flags in (0, expand):
            def baseline(conn):
                try:
                    return conn.baselineHypervisorCPU(emulator, arch, machine, virttype, cpus,
                                                      flags)
                except libvirt.libvirtError as e:
                    return ("error", e.get_error_code(), e.get_error_message())
            assert baseline(py_conn) == baseline(lv_conn), (virttype, cpus, flags)
