"""Connection and host procedures: type, version, hostname, node information.

The numbers are those libvirt's test driver reports for test:///default
(src/test/test_driver.c keeps them as constants: two NUMA cells of 8 CPUs,
a fixed CPU-stats sample, a fixed sysinfo); the developers' notes in
notes/testdriver/host.txt record them as virsh prints them.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import capabilities, parse_definition

from .state import TestState

# virConnectGetVersion of the test driver: 2 ("Running hypervisor: TEST 0.0.2").
HYPERVISOR_VERSION = 2
MAX_VCPUS = 32

SECURITY_MODEL = "testSecurity"
SECURITY_DOI = ""

SYSINFO = """<sysinfo type='smbios'>
  <bios>
    <entry name='vendor'>LENOVO</entry>
    <entry name='version'>G4ETA1WW (2.61 )</entry>
    <entry name='date'>05/07/2014</entry>
    <entry name='release'>2.61</entry>
  </bios>
</sysinfo>
"""

# Fixed sample of NODE_GET_CPU_STATS, in ns.
CPU_STATS = (("user", 9797400000), ("kernel", 34678723400000), ("idle", 87264900000),
             ("iowait", 763600000))

# Free memory per NUMA cell, in bytes (testNodeGetCellsFreeMemory).
CELL_FREE = (2097152, 4194304)
FREE_MEMORY = 3145728  # bytes (testNodeGetFreeMemory)


class HostMixin:
    state: TestState
    uri: str

    def connect_get_type(self) -> str:
        return "TEST"

    def connect_get_version(self) -> int:
        return HYPERVISOR_VERSION

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_get_max_vcpus(self, type_: str | None) -> int:
        return MAX_VCPUS

    def connect_get_sysinfo(self, flags: int) -> str:
        if flags:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=P.VIR_FROM_TEST,
                           message=f"unsupported flags (0x{flags:x}) in function testConnectGetSysinfo")
        return SYSINFO

    def connect_get_capabilities(self) -> str:
        return capabilities.test_driver_capabilities()

    def node_get_info(self) -> tuple:
        n = self.state.node
        return (n.model.encode(), n.memory, n.cpus, n.mhz, n.nodes, n.sockets, n.cores, n.threads)

    def node_get_security_model(self) -> tuple:
        return (SECURITY_MODEL.encode() + b"\0", SECURITY_DOI.encode() + b"\0")

    def node_get_free_memory(self) -> int:
        return FREE_MEMORY

    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]:
        if start_cell < 0 or start_cell >= len(CELL_FREE) or maxcells < 0:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Range exceeds available cells",
                           domain=P.VIR_FROM_TEST)
        return list(CELL_FREE[start_cell:start_cell + maxcells])

    def node_get_cpu_stats(self, cpu_num: int, nparams: int, flags: int) -> tuple:
        if nparams == 0:
            return ([], len(CPU_STATS))
        params = [P.remote_node_get_cpu_stats(name, v) for name, v in CPU_STATS[:nparams]]
        return (params, len(params))

    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple:
        size = self.state.cpu_map_size
        cpumap = bytearray((size + 7) // 8)
        for cpu in self.state.cpu_online:
            cpumap[cpu // 8] |= 1 << (cpu % 8)
        return (bytes(cpumap) if need_map else b"",
                len(self.state.cpu_online) if need_online else 0, size)

    def node_get_free_pages(self, pages: list[int], start_cell: int, cell_count: int,
                            flags: int) -> list[int]:
        if start_cell < 0 or start_cell + cell_count > len(CELL_FREE):
            raise VirError(P.VIR_ERR_INVALID_ARG, "Range exceeds available cells",
                           domain=P.VIR_FROM_TEST)
        # testNodeGetFreePages makes up a count per page-size slot: 19, 45, 97, 201, ...
        return [19 + 26 * (2 ** i - 1) for _ in range(cell_count) for i in range(len(pages))]

    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple:
        models = capabilities.cpu_models(arch)
        return (models if need_results else [], len(models))

    def connect_baseline_cpu(self, xml_cpus: list[str], flags: int) -> str:
        if flags & ~BASELINE_EXPAND_FEATURES:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=P.VIR_FROM_TEST,
                           message=f"unsupported flags (0x{flags & ~BASELINE_EXPAND_FEATURES:x}) "
                                   "in function testConnectBaselineCPU")
        return cpu_baseline(xml_cpus, expand=bool(flags & BASELINE_EXPAND_FEATURES))


# -- CPU baseline (virCPUBaseline on host CPU definitions) -------------------

BASELINE_EXPAND_FEATURES = 1
CPU_MAP_DIR = Path("/usr/share/libvirt/cpu_map")


def _cpu_error(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_CPU)


@functools.lru_cache(maxsize=1)
def _x86_map() -> tuple[list[str], dict[str, tuple[str | None, set[str]]]]:
    """libvirt's x86 CPU map (the files libvirt itself reads): feature names in
    map order, and per model its vendor and full (inherited) feature set."""
    try:
        features = [f.get("name") for f in
                    etree.parse(str(CPU_MAP_DIR / "x86_features.xml")).getroot().iter("feature")]
        raw = {}
        for path in sorted(CPU_MAP_DIR.glob("x86_*.xml")):
            for m in etree.parse(str(path)).getroot().findall("model"):
                raw[m.get("name")] = m
    except (OSError, etree.XMLSyntaxError) as exc:
        raise _cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"cannot load the CPU map: {exc}") from None

    def resolve(name: str) -> tuple[str | None, set[str]]:
        m = raw[name]
        base = m.find("model")
        vendor, feats = resolve(base.get("name")) if base is not None else (None, set())
        v = m.find("vendor")
        return (v.get("name") if v is not None else vendor,
                feats | {f.get("name") for f in m.findall("feature")})

    return features, {name: resolve(name) for name in raw}


def cpu_baseline(xml_cpus: list[str], *, expand: bool) -> str:
    """A baseline of host CPU definitions, as libvirt's x86 CPU driver computes it.

    Implemented: the input checks and errors, and baselines whose result is the
    model the CPUs name (one x86 model, its own vendor or none, known features;
    the result's features are those all CPUs require beyond the model).  libvirt
    re-decodes CPUID data into the best matching model, which can pick another
    model (a -noTSX model comes back as its TSX twin, a vendor mismatch falls back
    to kvm64, most AMD models get monitor disabled...): those inputs are answered
    VIR_ERR_OPERATION_UNSUPPORTED rather than wrongly.
    """
    if not xml_cpus:
        raise _cpu_error(P.VIR_ERR_INVALID_ARG, "no CPUs given")
    cpus = []
    for text in xml_cpus:
        root = parse_definition(text, "cpu", what="CPU_definition", domain=P.VIR_FROM_CPU)
        if root.get("mode") is not None:
            raise _cpu_error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                             "Attribute mode is only allowed for guest CPU")
        arch = root.findtext("arch")
        if not arch:
            raise _cpu_error(P.VIR_ERR_XML_ERROR, "Missing CPU architecture")
        model = root.findtext("model")
        if not model:
            raise _cpu_error(P.VIR_ERR_XML_ERROR, "Missing CPU model name")
        feats = {f.get("name") for f in root.findall("feature")
                 if f.get("policy") in (None, "require", "force")}
        cpus.append((arch, model, root.findtext("vendor"), feats))
    arch, model, vendor, _ = cpus[0]
    if arch not in ("x86_64", "i686"):
        raise _cpu_error(P.VIR_ERR_OPERATION_UNSUPPORTED,
                         f"CPU baseline for architecture '{arch}' is not implemented")
    map_features, models = _x86_map()
    for _, name, v, feats in cpus:
        if name not in models:
            raise _cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU model {name}")
        if v is not None and v not in ("Intel", "AMD", "Hygon"):
            raise _cpu_error(P.VIR_ERR_OPERATION_FAILED, f"Unknown CPU vendor {v}")
        unknown = sorted(feats - set(map_features))
        if unknown:
            raise _cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU feature {unknown[0]}")
    model_vendor, model_feats = models[model]
    if (any(c[1] != model or c[2] != vendor for c in cpus) or "noTSX" in model
            or model.startswith("cpu64-") or vendor and model_vendor and vendor != model_vendor
            or model_vendor in ("AMD", "Hygon") and "monitor" in model_feats):
        raise _cpu_error(P.VIR_ERR_OPERATION_UNSUPPORTED,
                         "this CPU baseline needs libvirt's CPU model decoding, "
                         "which is not implemented")
    extra = set.intersection(*(c[3] for c in cpus)) - model_feats
    lines = ["<cpu mode='custom' match='exact'>",
             f"  <model fallback='forbid'>{model}</model>"]
    if vendor:
        lines.append(f"  <vendor>{vendor}</vendor>")
    names = sorted(model_feats | extra) if expand else [f for f in map_features if f in extra]
    lines += [f"  <feature policy='require' name='{f}'/>" for f in names]
    lines.append("</cpu>")
    return "\n".join(lines) + "\n"
