"""CPU baseline (virConnectBaselineCPU) from libvirt's own x86 CPU map.

Shared by every driver that answers CONNECT_BASELINE_CPU (test, qemu): the
computation does not depend on the hypervisor, only on the CPU definitions
given and on /usr/share/libvirt/cpu_map, the files libvirt itself reads.
"""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import parse_definition

BASELINE_EXPAND_FEATURES = P.ConnectBaselineCPUFlags.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
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
