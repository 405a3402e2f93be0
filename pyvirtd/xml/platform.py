"""Typed views of a domain's platform: <os> extras, <features>, <cpu>, <clock>, <iothreads>.

``DomainDef`` keeps these as lxml elements (``os_extra``, ``raw['features']``,
``raw['cpu']``, ``clock``, ``raw['iothreads']``) so every driver round-trips them;
``platform(defn)`` reads them into the types below and refuses values libvirt
refuses (VIR_ERR_XML_ERROR / VIR_ERR_CONFIG_UNSUPPORTED naming the element).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.xml.devices._base import enum_attr, int_attr, unsupported, xml_error, yesno_attr

BOOT_DEVS = ("fd", "cdrom", "hd", "network")
CPU_MODES = ("custom", "host-model", "host-passthrough", "maximum")
CPU_MATCH = ("minimum", "exact", "strict")
FEATURE_POLICIES = ("force", "require", "optional", "disable", "forbid")
CLOCK_OFFSETS = ("utc", "localtime", "variable", "timezone", "absolute")
TIMER_NAMES = ("platform", "pit", "rtc", "hpet", "tsc", "kvmclock", "hypervclock", "armvtimer")
TICK_POLICIES = ("delay", "catchup", "merge", "discard")
# Features libvirt knows (virDomainFeature); pyvirtd's QEMU driver honours the first group.
FEATURES_HONOURED = ("acpi", "apic", "pae", "vmport", "smm", "hap")
FEATURES_KNOWN = FEATURES_HONOURED + (
    "viridian", "privnet", "hyperv", "kvm", "pvspinlock", "capabilities", "pmu", "gic",
    "ioapic", "hpt", "htm", "nested-hv", "msrs", "ccf-assist", "xen", "cfpc", "sbbc", "ibs",
    "tcg", "async-teardown", "vmcoreinfo")


@dataclass
class OsConfig:
    loader: str | None = None
    loader_readonly: bool | None = None
    loader_type: str | None = None        # rom / pflash
    loader_secure: bool | None = None     # secure='yes': pflash writable only in SMM
    nvram: str | None = None
    nvram_template: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    dtb: str | None = None
    boot_menu: bool | None = None
    boot_menu_timeout: int | None = None
    bios_reboot_timeout: int | None = None
    bios_useserial: bool | None = None     # <bios useserial='yes'>: SeaBIOS on the serial port
    smbios_mode: str | None = None


@dataclass
class CpuFeature:
    name: str
    policy: str = "require"


@dataclass
class CpuConfig:
    mode: str = "custom"
    match: str | None = None
    check: str | None = None
    model: str | None = None
    fallback: str | None = None
    vendor: str | None = None
    sockets: int | None = None
    dies: int | None = None
    cores: int | None = None
    threads: int | None = None
    features: list[CpuFeature] = field(default_factory=list)
    migratable: bool | None = None


@dataclass
class Timer:
    name: str
    present: bool | None = None
    tickpolicy: str | None = None


@dataclass
class ClockConfig:
    offset: str = "utc"
    adjustment: str | None = None
    timezone: str | None = None
    timers: list[Timer] = field(default_factory=list)


@dataclass
class Platform:
    os: OsConfig
    features: dict[str, etree._Element]   # name -> element (state='on'/'off' or children)
    cpu: CpuConfig | None
    clock: ClockConfig
    iothreads: int = 0

    def feature_on(self, name: str) -> bool | None:
        """True when present (and not state='off'), False when state='off', None when absent."""
        elem = self.features.get(name)
        if elem is None:
            return None
        return elem.get("state", "on") != "off"


def platform(defn) -> Platform:
    """Read the platform parts of ``defn``; VirError on invalid values."""
    return Platform(os=_parse_os(defn), features=_parse_features(defn.raw.get("features")),
                    cpu=_parse_cpu(defn.raw.get("cpu")), clock=_parse_clock(defn.clock),
                    iothreads=_parse_iothreads(defn.raw.get("iothreads")))


def _parse_os(defn) -> OsConfig:
    o = OsConfig()
    for dev in defn.boot:
        if dev not in BOOT_DEVS:
            raise xml_error(f"unknown boot device '{dev}'")
    for elem in defn.os_extra:
        text = (elem.text or "").strip() or None
        if elem.tag == "loader":
            o.loader = text
            o.loader_readonly = yesno_attr(elem, "readonly")
            o.loader_type = enum_attr(elem, "type", ("rom", "pflash"), what="loader type")
            o.loader_secure = yesno_attr(elem, "secure")
        elif elem.tag == "nvram":
            o.nvram, o.nvram_template = text, elem.get("template")
        elif elem.tag in ("kernel", "initrd", "cmdline", "dtb"):
            setattr(o, elem.tag, elem.text if elem.tag == "cmdline" else text)
        elif elem.tag == "bootmenu":
            o.boot_menu = yesno_attr(elem, "enable")
            o.boot_menu_timeout = int_attr(elem, "timeout")
        elif elem.tag == "bios":
            o.bios_reboot_timeout = int_attr(elem, "rebootTimeout", minimum=-1)
            o.bios_useserial = yesno_attr(elem, "useserial")
        elif elem.tag == "smbios":
            o.smbios_mode = enum_attr(elem, "mode", ("emulate", "host", "sysinfo"),
                                      what="smbios mode")
        elif elem.tag in ("init", "initarg", "initenv", "initdir", "inituser", "initgroup",
                          "idmap"):
            raise unsupported(f"<os><{elem.tag}> is not supported for hvm guests")
    if o.nvram and o.loader_type != "pflash":
        raise xml_error("nvram requires a pflash loader (<loader type='pflash'>)")
    if o.initrd and not o.kernel:
        raise xml_error("initrd requires a kernel (<kernel>)")
    return o


def _parse_features(elem: etree._Element | None) -> dict:
    feats: dict[str, etree._Element] = {}
    if elem is None:
        return feats
    for child in elem:
        if not isinstance(child.tag, str):
            continue
        if child.tag not in FEATURES_KNOWN:
            raise xml_error(f"unexpected feature '{child.tag}'")
        if child.get("state") is not None:
            enum_attr(child, "state", ("on", "off"), what=f"value for attribute state of "
                      f"feature '{child.tag}'")
        feats[child.tag] = child
    return feats


def _parse_cpu(elem: etree._Element | None) -> CpuConfig | None:
    if elem is None:
        return None
    c = CpuConfig(mode=enum_attr(elem, "mode", CPU_MODES, what="cpu mode", default="custom"),
                  match=enum_attr(elem, "match", CPU_MATCH, what="cpu match"),
                  check=enum_attr(elem, "check", ("none", "partial", "full"), what="cpu check"))
    c.migratable = yesno_attr(elem, "migratable", onoff=True)
    model = elem.find("model")
    if model is not None:
        c.model = (model.text or "").strip() or None
        c.fallback = enum_attr(model, "fallback", ("allow", "forbid"), what="fallback")
    vendor = elem.find("vendor")
    if vendor is not None:
        c.vendor = (vendor.text or "").strip()
    topo = elem.find("topology")
    if topo is not None:
        for key in ("sockets", "dies", "cores", "threads"):
            setattr(c, key, int_attr(topo, key, minimum=1))
        if None in (c.sockets, c.cores, c.threads):
            raise xml_error("Missing 'sockets', 'cores' or 'threads' attribute in CPU topology")
    for feat in elem.findall("feature"):
        name = feat.get("name")
        if not name:
            raise xml_error("Missing CPU feature name")
        policy = enum_attr(feat, "policy", FEATURE_POLICIES, what="CPU feature policy",
                           default="require")
        c.features.append(CpuFeature(name, policy))
    if c.mode == "custom" and c.model is None and c.features:
        raise xml_error("Non-empty feature list specified without CPU model")
    return c


def _parse_clock(elem: etree._Element | None) -> ClockConfig:
    if elem is None:
        return ClockConfig()
    c = ClockConfig(offset=enum_attr(elem, "offset", CLOCK_OFFSETS, what="clock offset",
                                     default="utc"))
    c.adjustment = elem.get("adjustment")
    c.timezone = elem.get("timezone")
    for t in elem.findall("timer"):
        if t.get("name") is None:
            raise xml_error("missing timer name")
        c.timers.append(Timer(enum_attr(t, "name", TIMER_NAMES, what="timer name"),
                              yesno_attr(t, "present"),
                              enum_attr(t, "tickpolicy", TICK_POLICIES, what="timer tickpolicy")))
    if c.offset == "timezone" and not c.timezone:
        raise xml_error("missing timezone for clock offset 'timezone'")
    return c


def _parse_iothreads(elem: etree._Element | None) -> int:
    if elem is None:
        return 0
    try:
        return int((elem.text or "").strip())
    except ValueError:
        raise xml_error("invalid iothreads count") from None


# -- libvirt's post-parse of <cpu> for QEMU x86 guests --------------------------

DEFAULT_CPU_MODEL = "qemu64"      # QEMU's default x86 CPU (query-machines default-cpu-type)


def _set_attrs_in_order(elem: etree._Element, order: tuple[str, ...], values: dict) -> None:
    """Rewrite ``elem``'s attributes: ``order`` first (those with a value), then the rest."""
    attrs = dict(elem.attrib)
    attrs.update({k: v for k, v in values.items() if v is not None})
    elem.attrib.clear()
    for key in order:
        if key in attrs:
            elem.set(key, attrs.pop(key))
    for key, value in attrs.items():
        elem.set(key, value)


def fill_cpu_defaults(cpu: etree._Element | None, virt_type: str) -> etree._Element:
    """The <cpu> libvirt 9.0's QEMU driver stores for ``cpu`` (None: no <cpu> given).

    No model: QEMU's default model, written as libvirt does (check none, fallback
    forbid; qemuDomainDefSetDefaultCPU).  A custom model: match exact, fallback
    allow, check partial under KVM and none under TCG, which cannot check.
    host-model: check partial; host-passthrough: check none, migratable on;
    maximum: check none.  <topology> gets dies='1' and NUMA cells their id
    and a size in KiB.  What the user wrote is kept.
    """
    cpu = copy.deepcopy(cpu) if cpu is not None else etree.Element("cpu")
    mode = cpu.get("mode", "custom")
    model = cpu.find("model")
    if mode == "custom" and (model is None or not (model.text or "").strip()):
        if model is None:
            model = etree.Element("model")
            cpu.insert(0, model)
        model.text = DEFAULT_CPU_MODEL
        _set_attrs_in_order(model, ("fallback",), {"fallback": "forbid"})
        _set_attrs_in_order(cpu, ("mode", "match", "check"),
                            {"mode": "custom", "match": cpu.get("match", "exact"),
                             "check": cpu.get("check", "none")})
    elif mode == "custom":
        _set_attrs_in_order(model, ("fallback",), {"fallback": model.get("fallback", "allow")})
        check = "partial" if virt_type == "kvm" else "none"
        _set_attrs_in_order(cpu, ("mode", "match", "check"),
                            {"mode": "custom", "match": cpu.get("match", "exact"),
                             "check": cpu.get("check", check)})
    elif mode == "host-passthrough":
        _set_attrs_in_order(cpu, ("mode", "check", "migratable"),
                            {"check": cpu.get("check", "none"),
                             "migratable": cpu.get("migratable", "on")})
    else:
        _set_attrs_in_order(cpu, ("mode", "match", "check"), {
            "check": cpu.get("check", "partial" if mode == "host-model" else "none")})
    topo = cpu.find("topology")
    if topo is not None and topo.get("dies") is None:
        _set_attrs_in_order(topo, ("sockets", "dies", "clusters", "cores", "threads"),
                            {"dies": "1"})
    numa = cpu.find("numa")
    for n, cell in enumerate(numa.findall("cell") if numa is not None else ()):
        values = {"id": cell.get("id", str(n))}
        if cell.get("memory") is not None:
            from pyvirtd.xml.domain import parse_memory
            values["memory"] = str(parse_memory(cell, "./cpu/numa/cell/@memory", attr="memory"))
            values["unit"] = "KiB"
        _set_attrs_in_order(cell, ("id", "cpus", "memory", "unit"), values)
    return cpu
