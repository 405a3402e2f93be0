"""libvirt's x86 CPU map, read at the bit level, and the decoder that names CPU data.

The map is the set of files libvirt itself reads (/usr/share/libvirt/cpu_map,
from Debian's libvirt-daemon): vendors, features (each a CPUID leaf/register
mask or an MSR mask) and models (feature sets with vendor, signatures and
whether libvirt may use them to describe a host or a guest CPU).  CPU data is
a mapping from a register — ``("cpuid", leaf, subleaf, "eax")`` or
``("msr", index, "eax")`` — to its bits, so that "the features of a model"
and "what a host has" compare as libvirt compares them: by bits, with the
features named in the map's order.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

CPU_MAP_DIR = Path("/usr/share/libvirt/cpu_map")

Register = tuple  # ("cpuid", leaf, subleaf, reg) | ("msr", index, reg)
Data = dict       # Register -> int (the bits)

# the leaves whose sub-leaf matters; every other leaf ignores ECX (libvirt's map
# writes ecx_in only for those)
_REGS = ("eax", "ebx", "ecx", "edx")


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    vendor: str | None
    data: Data
    signatures: frozenset[tuple[int, int]]     # (family, model)
    decode_host: bool
    decode_guest: bool
    removed: tuple[str, ...] = ()              # features QEMU dropped: kept disabled


@dataclasses.dataclass(frozen=True)
class X86Map:
    vendors: dict[str, str]                    # name -> the 12-byte CPUID string
    features: list[tuple[str, Data]]           # in the map's order
    models: list[Model]                        # in index.xml's order
    qemu_names: dict[str, str] = dataclasses.field(default_factory=dict)  # QEMU's -> ours

    def feature(self, name: str) -> Data | None:
        for fname, data in self.features:
            if fname == name:
                return data
        return None

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)


def cpu_error(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_CPU)


def _feature_data(elem: etree._Element) -> Data:
    data: Data = {}
    for c in elem.findall("cpuid"):
        leaf = int(c.get("eax_in"), 16)
        sub = int(c.get("ecx_in", "0"), 16)
        for reg in _REGS:
            bits = int(c.get(reg, "0"), 16)
            if bits:
                key = ("cpuid", leaf, sub, reg)
                data[key] = data.get(key, 0) | bits
    for m in elem.findall("msr"):
        index = int(m.get("index"), 16)
        for reg in ("eax", "edx"):
            bits = int(m.get(reg, "0"), 16)
            if bits:
                key = ("msr", index, reg)
                data[key] = data.get(key, 0) | bits
    return data


def union(a: Data, b: Data) -> Data:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) | v
    return out


def subtract(a: Data, b: Data) -> Data:
    """The bits of ``a`` not in ``b`` (registers left empty are dropped)."""
    out = {}
    for k, v in a.items():
        rest = v & ~b.get(k, 0)
        if rest:
            out[k] = rest
    return out


def contains(data: Data, sub: Data) -> bool:
    return all(data.get(k, 0) & v == v for k, v in sub.items())


@functools.lru_cache(maxsize=1)
def x86_map() -> X86Map:
    """libvirt's x86 map; a missing or broken map is libvirt's internal error."""
    try:
        index = etree.parse(str(CPU_MAP_DIR / "index.xml")).getroot()
        arch = next(a for a in index.findall("arch") if a.get("name") == "x86")
        files = [inc.get("filename") for inc in arch.findall("include")]
        vendors: dict[str, str] = {}
        features: list[tuple[str, Data]] = []
        qemu_names: dict[str, str] = {}
        raw_models: list[etree._Element] = []
        for name in files:
            root = etree.parse(str(CPU_MAP_DIR / name)).getroot()
            for v in root.findall("vendor"):
                vendors[v.get("name")] = v.get("string")
            for f in root.findall("feature"):
                features.append((f.get("name"), _feature_data(f)))
                qemu_names[f.get("name")] = f.get("name")
                for alias in f.findall("alias"):
                    if alias.get("source") == "qemu":
                        qemu_names[alias.get("name")] = f.get("name")
            raw_models += root.findall("model")
    except (OSError, StopIteration, etree.XMLSyntaxError, TypeError, ValueError) as exc:
        raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, f"cannot load the CPU map: {exc}") from None

    by_name = dict(features)
    raw = {m.get("name"): m for m in raw_models}

    @functools.lru_cache(maxsize=None)
    def resolve(name: str) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
        m = raw[name]
        base = m.find("model")
        vendor, feats, removed = (resolve(base.get("name")) if base is not None
                                  else (None, (), ()))
        v = m.find("vendor")
        own = tuple(f.get("name") for f in m.findall("feature") if f.get("removed") != "yes")
        gone = tuple(f.get("name") for f in m.findall("feature") if f.get("removed") == "yes")
        return (v.get("name") if v is not None else vendor, feats + own, removed + gone)

    models = []
    for m in raw_models:
        vendor, names, removed = resolve(m.get("name"))
        data: Data = {}
        for f in names:
            data = union(data, by_name.get(f, {}))
        decode = m.find("decode")
        models.append(Model(
            name=m.get("name"), vendor=vendor, data=data,
            signatures=frozenset((int(s.get("family")), int(s.get("model")))
                                 for s in m.findall("signature")),
            decode_host=decode is None or decode.get("host") == "on",
            decode_guest=decode is None or decode.get("guest") == "on",
            removed=removed))
    return X86Map(vendors, features, models, qemu_names)


def features_in(data: Data, xmap: X86Map) -> list[str]:
    """The features ``data`` holds, in the map's order; each claims its bits,
    so a later feature named by the same bits is not listed twice."""
    names = []
    for name, fdata in xmap.features:
        if fdata and contains(data, fdata):
            data = subtract(data, fdata)
            names.append(name)
    return names


def feature_names(data: Data, xmap: X86Map) -> list[str]:
    """Every feature whose bits ``data`` holds, in the map's order (for messages)."""
    return [name for name, fdata in xmap.features if fdata and contains(data, fdata)]


def vendor_of(data: Data, xmap: X86Map) -> str | None:
    """The vendor whose CPUID leaf 0 string the data carries."""
    leaf0 = [data.get(("cpuid", 0, 0, r), 0) for r in ("ebx", "edx", "ecx")]
    text = b"".join(v.to_bytes(4, "little") for v in leaf0).decode("latin-1")
    return next((name for name, s in xmap.vendors.items() if s == text), None)


def signature_of(data: Data) -> tuple[int, int, int]:
    """(family, model, stepping) from CPUID leaf 1, as the CPU manuals define them."""
    eax = data.get(("cpuid", 1, 0, "eax"), 0)
    family = ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF)
    model = ((eax >> 4) & 0xF) + ((eax >> 12) & 0xF0)
    return family, model, eax & 0xF


@dataclasses.dataclass
class Decoded:
    model: str
    vendor: str | None
    features: list[str]                  # beyond the model, in the map's order
    disabled: list[str]                  # the model's features the data lacks


def decode_host(data: Data, xmap: X86Map | None = None) -> Decoded:
    """Name a host's CPU data as libvirt does for the host CPU it reports.

    The newest usable model wins: one meant for host CPUs, of the host's
    vendor, none of whose features the host lacks; a model whose signature
    matches the host's family/model beats one that does not, and otherwise
    the model needing fewer extra features wins (ties go to the newer one).
    Broken TSX on early Haswell parts does not count as present.
    """
    xmap = xmap or x86_map()
    vendor = vendor_of(data, xmap)
    family, model_no, stepping = signature_of(data)
    if vendor == "Intel" and family == 6 and (model_no in (60, 69, 70)
                                              or model_no == 63 and stepping < 4):
        for name in ("hle", "rtm"):
            data = subtract(data, xmap.feature(name) or {})
    best: tuple[Model, list[str]] | None = None
    for cand in reversed(xmap.models):
        if not cand.decode_host or vendor and cand.vendor and cand.vendor != vendor:
            continue
        if features_in(subtract(cand.data, data), xmap):
            continue                                   # the host lacks some of it
        extra = features_in(subtract(data, cand.data), xmap)
        if best is None:
            best = (cand, extra)
            continue
        cur, cur_extra = best
        sig = (family, model_no)
        if sig in cur.signatures and sig not in cand.signatures:
            continue
        if sig in cand.signatures and sig not in cur.signatures or len(extra) < len(cur_extra):
            best = (cand, extra)
    if best is None:
        raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, "Cannot find suitable CPU model for given data")
    return Decoded(best[0].name, vendor, best[1], [])


def decode_guest(data: Data, vendor: str | None, preferred: str | None,
                 xmap: X86Map | None = None, *, allowed: dict[str, list[str]] | None = None,
                 signature: tuple[int, int] | None = None, penalise: bool = True) -> Decoded:
    """Name guest CPU data (a baseline, a hypervisor's host model) as libvirt does.

    Models not meant for guest definitions (the -noTSX twins) are skipped, and
    with ``allowed`` (the hypervisor's models and the features that block each,
    in our names) so are the models it lacks; a model may lack some of the data
    (its extra features are then disabled, as are its blockers and the
    features QEMU removed from it).  ``preferred`` wins outright; else a model
    whose signature is the CPU's (family, model), else the cheapest: each
    listed feature costs one, disabled ones (``penalise``, as libvirt 9.0's
    baseline weighs them) more the more of them there are; ties go to the
    newer model.  libvirt 9.0 names a hypervisor's host model by the plain
    count (``penalise=False``): measured against libvirtd, both ways.
    """
    xmap = xmap or x86_map()
    best: tuple[Decoded, Model] | None = None
    for cand in reversed(xmap.models):
        if not cand.decode_guest or vendor and cand.vendor and cand.vendor != vendor:
            continue
        if allowed is not None and cand.name not in allowed:
            continue
        extra = subtract(data, cand.data)
        missing = subtract(cand.data, data)
        for blocker in (allowed or {}).get(cand.name, []):
            bdata = xmap.feature(blocker)
            if bdata and not contains(extra, bdata):
                missing = union(missing, bdata)
        required = features_in(extra, xmap)
        disabled = features_in(missing, xmap)
        disabled += [f for f in cand.removed if f not in required and f not in disabled]
        this = Decoded(cand.name, vendor, required, disabled)
        if cand.name == preferred:
            return this
        if best is None:
            best = (this, cand)
            continue
        if signature:
            cur_sig, cand_sig = signature in best[1].signatures, signature in cand.signatures
            if cur_sig and not cand_sig:
                continue
            if cand_sig and not cur_sig:
                best = (this, cand)
                continue
        if _guest_cost(this, penalise) < _guest_cost(best[0], penalise):
            best = (this, cand)
    if best is None:
        raise cpu_error(P.VIR_ERR_INTERNAL_ERROR, "Cannot find suitable CPU model for given data")
    return best[0]


def qemu_model_data(props: dict, xmap: X86Map | None = None
                    ) -> tuple[Data, str | None, tuple[int, int] | None]:
    """CPU data from QEMU's static expansion of a model (query-cpu-model-expansion):
    its enabled features in our names (others ignored), its vendor and signature."""
    xmap = xmap or x86_map()
    data: Data = {}
    for name, on in props.items():
        ours = xmap.qemu_names.get(name)
        if on is True and ours:
            data = union(data, xmap.feature(ours) or {})
    vendor = next((n for n, text in xmap.vendors.items() if text == props.get("vendor")), None)
    family, model = props.get("family"), props.get("model")
    signature = (family, model) if isinstance(family, int) and isinstance(model, int) else None
    return data, vendor, signature


def _guest_cost(d: Decoded, penalise: bool = True) -> tuple[int, int]:
    """libvirt's ranking of guest CPU candidates: an enabled feature costs 1,
    the n-th disabled one n + 1 (or 1 without ``penalise``); fewer disabled
    breaks a tie."""
    disabled = sum(range(2, 2 + len(d.disabled))) if penalise else len(d.disabled)
    return len(d.features) + disabled, disabled
