"""CPU baseline (virConnectBaselineCPU) from libvirt's own x86 CPU map.

Shared by every driver that answers CONNECT_BASELINE_CPU (test, qemu): the
computation does not depend on the hypervisor, only on the CPU definitions
given and on /usr/share/libvirt/cpu_map, the files libvirt itself reads.
"""

from __future__ import annotations

from pyvirtd import cpumap
from pyvirtd.cpumap import cpu_error
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import parse_definition

BASELINE_EXPAND_FEATURES = P.ConnectBaselineCPUFlags.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES


# features libvirt's QEMU driver never hands to QEMU, so its baselines drop them
# (virQEMUCapsCPUFilterFeatures)
QEMU_FILTERED = frozenset({"cmt", "mbm_total", "mbm_local", "osxsave", "ospke"})


def cpu_baseline(xml_cpus: list[str], *, expand: bool,
                 drop: frozenset[str] = frozenset(),
                 allowed: dict[str, list[str]] | None = None,
                 within: cpumap.Data | None = None, forbid: bool = False) -> str:
    """A baseline of host CPU definitions, as libvirt's x86 CPU driver computes it.

    Each CPU is its model's features plus the features it lists (a policy
    attribute is ignored: these are host CPUs); the baseline is what all of
    them have, named again by libvirt's guest decoding (pyvirtd.cpumap).  The
    model all CPUs name, if they name one, is kept (fallback='forbid');
    otherwise the closest model is chosen (fallback='allow').  The vendor is
    written only when every CPU names it.  ``drop``: features a driver filters
    out of the result before expanding it.  For a hypervisor's baseline,
    ``allowed`` are its CPU models (with the features that block each) and
    ``within`` the features it knows at all; libvirt's QEMU driver then always
    writes fallback='forbid' (``forbid``).
    """
    if not xml_cpus:
        raise cpu_error(P.VIR_ERR_INVALID_ARG, "no CPUs given")
    xmap = cpumap.x86_map()
    cpus = []
    for text in xml_cpus:
        root = parse_definition(text, "cpu", what="CPU_definition", domain=P.VIR_FROM_CPU)
        if root.get("mode") is not None:
            raise cpu_error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                            "Attribute mode is only allowed for guest CPU")
        arch = root.findtext("arch")
        if not arch:
            raise cpu_error(P.VIR_ERR_XML_ERROR, "Missing CPU architecture")
        model = root.findtext("model")
        if not model:
            raise cpu_error(P.VIR_ERR_XML_ERROR, "Missing CPU model name")
        cpus.append((arch, model, root.findtext("vendor"),
                     [f.get("name") for f in root.findall("feature")]))
    if cpus[0][0] not in ("x86_64", "i686"):
        raise cpu_error(P.VIR_ERR_OPERATION_UNSUPPORTED,
                        f"CPU baseline for architecture '{cpus[0][0]}' is not implemented")
    vendor: str | None = None
    data: cpumap.Data | None = None
    for i, (_, name, v, feats) in enumerate(cpus):
        model = xmap.model(name)
        if model is None:
            raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU model {name}")
        if v is not None and v not in xmap.vendors:
            raise cpu_error(P.VIR_ERR_OPERATION_FAILED, f"Unknown CPU vendor {v}")
        if i > 0 and v and model.vendor and v != model.vendor:   # (the first CPU is not checked)
            raise cpu_error(P.VIR_ERR_OPERATION_FAILED,
                            f"CPU vendor {model.vendor} of model {name} differs from vendor {v}")
        named = v if v or i == 0 else model.vendor
        if named:
            if vendor is None:
                vendor = named
            elif vendor != named:
                raise cpu_error(P.VIR_ERR_OPERATION_FAILED, "CPU vendors do not match")
        one = model.data
        for f in feats:
            fdata = xmap.feature(f)
            if fdata is None:
                raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU feature {f}")
            one = cpumap.union(one, fdata)
        data = one if data is None else {k: v & one[k] for k, v in data.items() if v & one.get(k, 0)}
    if within is not None and data:
        data = {k: v & within[k] for k, v in data.items() if v & within.get(k, 0)}
    if not data:
        raise cpu_error(P.VIR_ERR_OPERATION_FAILED, "CPUs are incompatible")
    names = {c[1] for c in cpus}
    preferred = cpus[0][1] if len(names) == 1 else None
    decoded = cpumap.decode_guest(data, vendor, preferred, xmap, allowed=allowed)
    lines = ["<cpu mode='custom' match='exact'>",
             f"  <model fallback='{'forbid' if forbid or decoded.model == preferred else 'allow'}'>"
             f"{decoded.model}</model>"]
    if all(c[2] for c in cpus):
        lines.append(f"  <vendor>{cpus[0][2]}</vendor>")
    policies = {f: "require" for f in decoded.features if f not in drop}
    policies.update((f, "disable") for f in decoded.disabled if f not in drop)
    if expand:
        model = xmap.model(decoded.model)
        policies = {**{f: "require" for f in cpumap.features_in(model.data, xmap)}, **policies}
        order = sorted(policies)
    else:
        order = list(policies)
    lines += [f"  <feature policy='{policies[f]}' name='{f}'/>" for f in order]
    lines.append("</cpu>")
    return "\n".join(lines) + "\n"
