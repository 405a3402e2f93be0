"""virConnectCompareCPU: a CPU definition against the host CPU, as libvirt's x86 code.

The host is its model's features plus the features it lists (pyvirtd.hostcpu
names it).  A CPU with an <arch> is a host CPU (every feature required);
otherwise a guest CPU, whose features carry policies: forbidden features the
host has, or required ones it lacks, make it incompatible; a host with
features the CPU does not mention is a superset, which a strict match refuses.
"""

from __future__ import annotations

from lxml import etree

from pyvirtd import cpumap
from pyvirtd.cpumap import cpu_error
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import parse_definition

INCOMPATIBLE, IDENTICAL, SUPERSET = 0, 1, 2
POLICIES = ("force", "require", "optional", "disable", "forbid")


class Incompatible(Exception):
    """Why the CPUs do not match (libvirt's message)."""


def _guest_features(root: etree._Element, is_host: bool) -> list[tuple[str, str]]:
    out = []
    for f in root.findall("feature"):
        name = f.get("name")
        if not name:
            raise cpu_error(P.VIR_ERR_XML_ERROR, "missing CPU feature name")
        policy = "require" if is_host else f.get("policy", "require")
        if policy not in POLICIES:
            raise cpu_error(P.VIR_ERR_XML_ERROR, f"Invalid CPU feature policy '{policy}'")
        out.append((name, policy))
    return out


def _data_for(model: str | None, features: list[tuple[str, str]], policy: str,
              xmap: cpumap.X86Map) -> cpumap.Data:
    """libvirt's x86ModelFromCPU(cpu, policy): the model's features count as required."""
    data: cpumap.Data = {}
    if model and policy == "require":
        m = xmap.model(model)
        if m is None:
            raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU model {model}")
        data = dict(m.data)
    for name, pol in features:
        if pol != policy:
            continue
        fdata = xmap.feature(name)
        if fdata is None:
            raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"Unknown CPU feature {name}")
        data = cpumap.union(data, fdata)
    return data


def _compute(host_model: str | None, host_vendor: str | None, host_features: list[str],
             xml: str, xmap: cpumap.X86Map, host_disabled: list[str]) -> int:
    root = parse_definition(xml, None, what="CPU_definition", domain=P.VIR_FROM_CPU)
    if root.tag != "cpu":
        raise cpu_error(P.VIR_ERR_XML_ERROR, "XML does not contain expected 'cpu' element")
    if not host_model:
        raise Incompatible("unknown host CPU")
    is_host = root.find("arch") is not None
    if is_host and root.get("match") is not None:
        raise cpu_error(P.VIR_ERR_XML_ERROR, "'arch' element cannot be used inside "
                                             "'cpu' element with 'match' attribute'")
    model = root.findtext("model")
    features = _guest_features(root, is_host)
    if not is_host and not model and features and root.get("mode", "custom") == "custom":
        raise cpu_error(P.VIR_ERR_XML_ERROR, "Non-empty feature list specified without CPU model")
    arch = root.findtext("arch")
    if arch and arch not in ("i686", "x86_64"):
        raise Incompatible(f"CPU arch {arch} does not match host arch")
    vendor = root.findtext("vendor")
    if vendor and vendor != host_vendor:
        raise Incompatible(f"host CPU vendor does not match required CPU vendor {vendor}")
    host = _data_for(host_model, [(f, "require") for f in host_features], "require", xmap)
    host = cpumap.subtract(host, _data_for(None, [(f, "disable") for f in host_disabled],
                                           "disable", xmap))
    by = {pol: _data_for(model, features, pol, xmap) for pol in POLICIES}
    forbidden = {k: v & host.get(k, 0) for k, v in by["forbid"].items() if v & host.get(k, 0)}
    if forbidden:
        names = ", ".join(cpumap.feature_names(forbidden, xmap))
        raise Incompatible(f"Host CPU provides forbidden features: {names}")
    required = by["require"]
    for pol in ("force", "optional", "disable"):
        required = cpumap.subtract(required, by[pol])
    missing = cpumap.subtract(required, host)
    if missing:
        names = ", ".join(cpumap.feature_names(missing, xmap))
        raise Incompatible(f"Host CPU does not provide required features: {names}")
    diff = host
    for pol in ("optional", "disable", "force"):
        diff = cpumap.subtract(diff, by[pol])
    diff = cpumap.subtract(diff, required)
    if not diff:
        return IDENTICAL
    if not is_host and root.get("match", "exact") == "strict":
        names = ", ".join(cpumap.feature_names(diff, xmap))
        raise Incompatible(f"Host CPU does not strictly match guest CPU: Extra features: {names}")
    return SUPERSET


def cpu_compare(host_model: str | None, host_vendor: str | None, host_features: list[str],
                xml: str, *, fail_incompatible: bool, host_disabled: list[str] = ()) -> int:
    """0 incompatible, 1 identical, 2 superset; with ``fail_incompatible`` an
    incompatible CPU is VIR_ERR_CPU_INCOMPATIBLE with libvirt's reason.  The host
    is its model's features plus ``host_features`` less ``host_disabled`` (a
    hypervisor's host model has some)."""
    xmap = cpumap.x86_map()
    try:
        return _compute(host_model, host_vendor, host_features, xml, xmap, list(host_disabled))
    except Incompatible as why:
        if fail_incompatible:
            raise VirError(P.VIR_ERR_CPU_INCOMPATIBLE, str(why), domain=P.VIR_FROM_CPU) from None
        return INCOMPATIBLE
