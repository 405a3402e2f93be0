"""virConnectBaselineCPU as libvirt computes it, checked against libvirt itself.

python-libvirt's in-process test:///default runs libvirt's own x86 CPU code
(the same as libvirtd's): every case below is sent to it and to pyvirtd over
RPC, with and without EXPAND_FEATURES, and the answers (XML or error code,
domain and message) must be identical.  The cases cover what libvirt's
decoding does beyond "the model all CPUs name": models meant only for host
CPUs (the -noTSX twins), features QEMU removed from a model (monitor on
AMD models), vendor rules and the fallback attribute.
"""

from __future__ import annotations

import libvirt
import pytest


def cpu(model: str | None, vendor: str | None = None, *features: str,
        arch: str = "x86_64") -> str:
    parts = [f"<arch>{arch}</arch>" if arch else ""]
    if model:
        parts.append(f"<model>{model}</model>")
    if vendor:
        parts.append(f"<vendor>{vendor}</vendor>")
    parts += [f if f.startswith("<") else f"<feature name='{f}'/>" for f in features]
    return "<cpu>" + "".join(parts) + "</cpu>"


CASES = {
    "one model": [cpu("Broadwell-noTSX", "Intel")],
    "two Intel generations": [cpu("Haswell", "Intel", "vmx"),
                              cpu("Broadwell", "Intel", "vmx", "pcid")],
    "three models, no vendor": [cpu("Westmere"), cpu("SandyBridge-IBRS"), cpu("Penryn", None, "aes")],
    "vendors differ": [cpu("EPYC", "AMD"), cpu("Skylake-Client", "Intel")],
    "policy ignored": [cpu("Haswell", None, "<feature policy='disable' name='avx2'/>",
                           "<feature policy='require' name='vmx'/>")],
    "noTSX twin": [cpu("Skylake-Server-IBRS", "Intel"), cpu("Cascadelake-Server-noTSX", "Intel")],
    "AMD, one vendor": [cpu("EPYC-Rome", "AMD"), cpu("EPYC")],
    "removed feature": [cpu("Opteron_G3")],
    "removed feature, vendor": [cpu("Opteron_G3", "AMD")],
    "removed feature, asked for": [cpu("Opteron_G3", None, "monitor")],
    "Intel and AMD models": [cpu("Nehalem"), cpu("Opteron_G3")],
    "disabled and missing TSX": [cpu("Skylake-Client", None, "<feature policy='disable' name='hle'/>"),
                                 cpu("Skylake-Client-noTSX-IBRS")],
    "newer and older": [cpu("Icelake-Server", "Intel"), cpu("Haswell-noTSX", "Intel", "avx512f")],
    "unknown model": [cpu("NoSuchCPU")],
    "unknown feature": [cpu("Haswell", None, "no-such-feature")],
    "unknown vendor": [cpu("Haswell", "Acme")],
    "vendor of another model": [cpu("Haswell", "AMD")],
    "vendor of another model, second": [cpu("Haswell", "Intel"), cpu("Broadwell", "AMD")],
    "no model": [cpu(None, None, "sse2")],
    "no arch": [cpu("Haswell", arch="")],
    "guest CPU": ["<cpu mode='custom'><arch>x86_64</arch><model>Haswell</model></cpu>"],
    "not XML": ["<cpu><arch>x86_64"],
}


def answer(conn: libvirt.virConnect, cpus: list[str], flags: int):
    try:
        return conn.baselineCPU(cpus, flags)
    except libvirt.libvirtError as e:
        return ("error", e.get_error_code(), e.get_error_domain(), e.get_error_message())


@pytest.fixture(scope="module")
def conns(shared_daemon):
    libvirt.registerErrorHandler(lambda *_: None, None)
    reference = libvirt.open("test:///default")
    ours = libvirt.open(shared_daemon.uri())
    yield reference, ours
    ours.close()
    reference.close()


@pytest.mark.parametrize("flags", [0, libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES],
                         ids=["plain", "expand"])
@pytest.mark.parametrize("case", list(CASES))
def test_baseline_as_libvirt(conns, case, flags):
    reference, ours = conns
    want = answer(reference, CASES[case], flags)
    assert answer(ours, CASES[case], flags) == want


def test_cases_cover_what_they_claim(conns):
    """The cases exercise libvirt's decoding, not only the easy path."""
    reference, _ = conns
    expand = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
    twin = answer(reference, CASES["noTSX twin"], 0)
    assert ">Skylake-Server-IBRS<" in twin and "policy='disable' name='hle'" in twin
    assert "policy='disable' name='monitor'" in answer(reference, CASES["removed feature"], 0)
    assert "fallback='allow'" in answer(reference, CASES["three models, no vendor"], 0)
    assert answer(reference, CASES["vendors differ"], 0)[1] == libvirt.VIR_ERR_OPERATION_FAILED
    assert answer(reference, CASES["one model"], expand).count("<feature") > 20
