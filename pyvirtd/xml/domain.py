"""Domain XML: parse a <domain> document into a `DomainDef` and format it back.

The model keeps as typed fields what drivers read or change (name, uuid,
memory, vCPUs, OS type, lifecycle actions, title/description/metadata) and
keeps devices and other sub-trees as lxml elements, so a document round-trips
without this module knowing every device.  Phases follow libvirt's
(src/conf/domain_conf.c, domain_postparse.c): `parse` reads and validates what
it models, `fill_defaults` adds what libvirt adds after parsing, `format`
writes libvirt's layout (single-quoted attributes, two-space indentation,
fixed element order, devices sorted by kind).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import (element_lines, escape, format_uuid, fromstring, hardened_parser, new_uuid,
                         parse_uuid, schema)

_PARSER = hardened_parser(remove_comments=True)

OS_TYPES = ("hvm", "xen", "linux", "exe", "uml")
LIFECYCLE_ACTIONS = ("destroy", "restart", "preserve", "rename-restart",
                     "coredump-destroy", "coredump-restart")

# Scale of each memory unit libvirt accepts, in bytes (virScaleInteger).
_UNITS = {"b": 1, "bytes": 1,
          "kb": 10**3, "k": 2**10, "kib": 2**10,
          "mb": 10**6, "m": 2**20, "mib": 2**20,
          "gb": 10**9, "g": 2**30, "gib": 2**30,
          "tb": 10**12, "t": 2**40, "tib": 2**40,
          "pb": 10**15, "p": 2**50, "pib": 2**50,
          "eb": 10**18, "e": 2**60, "eib": 2**60}

# libvirt's output order of device kinds (virDomainDefFormatInternal).
DEVICE_ORDER = ("emulator", "disk", "controller", "lease", "filesystem", "interface",
                "smartcard", "serial", "parallel", "console", "channel", "input", "tpm",
                "graphics", "sound", "audio", "video", "hostdev", "redirdev", "redirfilter",
                "hub", "watchdog", "memballoon", "rng", "panic", "shmem", "memory", "iommu",
                "vsock", "crypto")

# Top-level elements kept verbatim, by where libvirt prints them relative to
# the modelled ones (virDomainDefFormatInternal).  Elements of no namespace
# that libvirt's schema does not know are dropped, as libvirt does.
_RAW_AFTER_UUID = ("genid",)
_RAW_BEFORE_VCPU = ("maxMemory", "blkiotune", "memtune", "memoryBacking")
_RAW_AFTER_VCPU = ("vcpus", "iothreads", "iothreadids", "defaultiothread", "cputune",
                   "numatune", "resource", "sysinfo", "bootloader", "bootloader_args")
_RAW_AFTER_OS = ("idmap", "features", "cpu")
_RAW_AFTER_LIFECYCLE = ("on_lockfailure", "pm", "perf")
_RAW_TAIL = ("seclabel", "keywrap", "launchSecurity")
# top-level elements that may repeat (the first is in raw, the others in raw_more)
_REPEATABLE = ("seclabel", "sysinfo")
# <os> children libvirt prints before the <boot> elements, in its order
_OS_BEFORE_BOOT = ("firmware", "loader", "nvram", "kernel", "initrd", "cmdline", "dtb",
                   "init", "initarg", "initenv", "initdir", "inituser", "initgroup")
# Namespaces whose top-level elements libvirt keeps (its XML namespace hooks):
# QEMU's command-line passthrough above all.
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
KEPT_NAMESPACES = {QEMU_NS: "qemu", "http://libvirt.org/schemas/domain/lxc/1.0": "lxc",
                   "http://libvirt.org/schemas/domain/bhyve/1.0": "bhyve",
                   "http://libvirt.org/schemas/domain/vmware/1.0": "vmware",
                   "http://libvirt.org/schemas/domain/xen/1.0": "xen"}


def _xml_err(detail: str) -> VirError:
    return VirError(P.VIR_ERR_XML_ERROR, detail, domain=P.VIR_FROM_DOMAIN)


@dataclass
class DomainDef:
    """One domain definition (a virDomainDef): the live or the persistent one."""
    name: str
    uuid: bytes
    type: str = "test"
    title: str | None = None
    description: str | None = None
    metadata: list = field(default_factory=list)        # children of <metadata>
    memory: int = 0                                     # KiB, the maximum
    current_memory: int = 0                             # KiB
    vcpus: int = 1                                      # maximum
    vcpus_current: int = 1
    vcpu_placement: str = "static"
    vcpu_cpuset: str | None = None                      # <vcpu cpuset=...>
    os_attrs: dict = field(default_factory=dict)        # <os firmware=...>
    os_type: str = "hvm"
    arch: str | None = None
    machine: str | None = None
    boot: list = field(default_factory=list)            # boot dev names
    os_extra: list = field(default_factory=list)        # other <os> children
    clock: etree._Element | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    devices: list = field(default_factory=list)         # device elements
    raw: dict = field(default_factory=dict)             # tag -> element, verbatim
    raw_more: list = field(default_factory=list)        # repeats of _REPEATABLE tags
    namespaced: list = field(default_factory=list)      # e.g. <qemu:commandline>, verbatim

    def copy(self) -> "DomainDef":
        return copy.deepcopy(self)

    @property
    def uuid_str(self) -> str:
        return format_uuid(self.uuid)

    def devices_of(self, tag: str) -> list:
        return [d for d in self.devices if d.tag == tag]


def _text(elem: etree._Element | None) -> str | None:
    if elem is None or elem.text is None:
        return None
    return elem.text.strip()


def parse_memory(elem: etree._Element, what: str, *, attr: str | None = None) -> int:
    """A scaled size element (or its attribute ``attr``, as in a NUMA cell) -> KiB,
    rounded up as libvirt does."""
    text = (elem.get(attr) or "").strip() if attr else (_text(elem) or "")
    unit = (elem.get("unit") or "KiB").lower()
    scale = _UNITS.get(unit)
    if scale is None:
        raise VirError(P.VIR_ERR_INVALID_ARG, f"unknown suffix '{elem.get('unit')}'",
                       domain=P.VIR_FROM_NONE)
    try:
        value = int(text, 10)
        if value < 0:
            raise ValueError
    except ValueError:
        raise _xml_err(f"Invalid value '{text}' for element or attribute '{what}'") from None
    return (value * scale + 1023) // 1024


def parse(text: str, *, validate_schema: bool = False) -> DomainDef:
    """Parse and validate a domain document; raises VirError with libvirt's wording.

    ``validate_schema`` (the VALIDATE flags of define and create) checks the
    document against schemas/domain.rng first, as libvirt does right after
    reading the root element."""
    try:
        root = fromstring(text, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise _syntax_error(text, exc) from None
    if root.tag != "domain":
        raise VirError(P.VIR_ERR_XML_ERROR, f"expecting root element of 'domain', not '{root.tag}'",
                       domain=P.VIR_FROM_XML)
    if validate_schema:
        schema.validate(root, "domain")
    return parse_element(root)


def _syntax_error(text: str, exc: etree.XMLSyntaxError) -> VirError:
    """libxml2's error as libvirt reports it: location, message, the line and a caret."""
    line_no = exc.lineno or 1
    lines = text.split("\n")
    col = (exc.position[1] if exc.position else 1) or 1
    # libvirt prints "(null)" when the error sits past the last line of input.
    if line_no > len(lines) or not lines[line_no - 1].strip():
        context, caret = "(null)", "^"
    else:
        context = lines[line_no - 1]
        caret = "-" * max(col - 1, 0) + "^"
    msg = exc.msg
    # lxml appends ", line N, column M"; libvirt shows libxml2's bare message.
    if ", line " in msg:
        msg = msg[:msg.rindex(", line ")]
    return VirError(P.VIR_ERR_XML_DETAIL, f"(domain_definition):{line_no}: {msg}\n{context}\n{caret}",
                    domain=P.VIR_FROM_DOMAIN, message=f"(domain_definition):{line_no}: {msg}\n{context}\n{caret}")


def parse_element(root: etree._Element) -> DomainDef:
    virt_type = root.get("type")
    if not virt_type:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, "missing domain type attribute",
                       domain=P.VIR_FROM_DOMAIN)
    name = _text(root.find("name"))
    if not name:
        raise VirError(P.VIR_ERR_NO_NAME, message="missing name information",
                       domain=P.VIR_FROM_DOMAIN)
    check_name("domain", name)
    uuid_text = _text(root.find("uuid"))
    uuid = parse_uuid(uuid_text, domain=P.VIR_FROM_DOMAIN) if uuid_text else new_uuid()
    d = DomainDef(name=name, uuid=uuid, type=virt_type)
    d.title = _text(root.find("title"))
    if d.title is not None and "\n" in d.title:
        raise _xml_err("Domain title can't contain newlines")
    desc = root.find("description")
    d.description = desc.text if desc is not None else None
    meta = root.find("metadata")
    if meta is not None:
        d.metadata = [copy.deepcopy(c) for c in meta if isinstance(c.tag, str)]

    mem = root.find("memory")
    if mem is None:
        raise _xml_err("Memory size must be specified via <memory> or in the <numa> configuration")
    d.memory = parse_memory(mem, "./memory[1]")
    cur = root.find("currentMemory")
    d.current_memory = parse_memory(cur, "./currentMemory[1]") if cur is not None else d.memory
    if d.current_memory > d.memory:
        d.current_memory = d.memory

    vcpu = root.find("vcpu")
    if vcpu is not None:
        try:
            d.vcpus = int(_text(vcpu) or "1")
        except ValueError:
            raise _xml_err("maximum vcpus count must be an integer") from None
        current = vcpu.get("current")
        if current is not None:
            try:
                d.vcpus_current = int(current)
            except ValueError:
                raise _xml_err("current vcpus count must be an integer") from None
            if d.vcpus_current > d.vcpus:
                raise VirError(P.VIR_ERR_XML_ERROR,
                               f"maxvcpus must not be less than current vcpus ({d.vcpus} < {d.vcpus_current})",
                               domain=P.VIR_FROM_DOMAIN)
        else:
            d.vcpus_current = d.vcpus
        d.vcpu_placement = vcpu.get("placement") or "static"
        d.vcpu_cpuset = vcpu.get("cpuset")

    os_elem = root.find("os")
    type_elem = os_elem.find("type") if os_elem is not None else None
    os_type = _text(type_elem)
    if not os_type:
        raise _xml_err("an os <type> must be specified")
    if os_type not in OS_TYPES:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, f"unknown OS type '{os_type}'",
                       domain=P.VIR_FROM_DOMAIN)
    d.os_type = os_type
    d.os_attrs = dict(os_elem.attrib)
    d.arch = type_elem.get("arch")
    d.machine = type_elem.get("machine")
    for child in os_elem:
        if child.tag == "boot" and child.get("dev"):
            d.boot.append(child.get("dev"))
        elif child.tag != "type" and isinstance(child.tag, str):
            d.os_extra.append(copy.deepcopy(child))

    clock = root.find("clock")
    d.clock = copy.deepcopy(clock) if clock is not None else None
    for tag in ("on_poweroff", "on_reboot", "on_crash"):
        value = _text(root.find(tag))
        if value is not None:
            if value not in LIFECYCLE_ACTIONS:
                raise _xml_err(f"Invalid {tag} value: '{value}'")
            setattr(d, tag, value)

    devices = root.find("devices")
    if devices is not None:
        d.devices = [copy.deepcopy(c) for c in devices if isinstance(c.tag, str)]
    for tag in (_RAW_AFTER_UUID + _RAW_BEFORE_VCPU + _RAW_AFTER_VCPU + _RAW_AFTER_OS
                + _RAW_AFTER_LIFECYCLE + _RAW_TAIL):
        found = root.findall(tag)
        if found:
            d.raw[tag] = copy.deepcopy(found[0])
            if tag in _REPEATABLE:
                d.raw_more.extend(copy.deepcopy(e) for e in found[1:])
    d.namespaced = [copy.deepcopy(e) for e in root
                    if isinstance(e.tag, str) and etree.QName(e).namespace in KEPT_NAMESPACES]
    return d


# -- defaults ---------------------------------------------------------------

def random_mac(prefix: str = "52:54:00") -> str:
    return prefix + "".join(f":{random.randrange(256):02x}" for _ in range(3))


def fill_defaults(d: DomainDef, *, default_arch: str, ifname_prefix: str | None = None) -> None:
    """What libvirt adds after parsing: arch, boot device, MACs, consoles, video."""
    if d.arch is None:
        d.arch = default_arch
    # Per-device <boot order> replaces <os><boot dev> (virDomainDefParseBootOptions).
    device_boot = any(dev.find("boot") is not None for dev in d.devices)
    if not d.boot and d.os_type == "hvm" and not device_boot:
        d.boot = ["hd"]
    if d.clock is None:
        d.clock = etree.Element("clock", offset="utc")
    for n, iface in enumerate(d.devices_of("interface")):
        if iface.find("mac") is None:
            iface.insert(0, etree.Element("mac", address=random_mac()))
        if ifname_prefix and iface.find("target") is None:
            target = etree.Element("target", dev=f"{ifname_prefix}{n}")
            src = iface.find("source")
            if src is not None:
                src.addnext(target)
            else:
                iface.find("mac").addnext(target)
    _controller_indexes(d)
    _console_defaults(d)
    for gfx in d.devices_of("graphics"):
        if gfx.get("type") in ("vnc", "spice") and gfx.get("port") == "-1" and not gfx.get("autoport"):
            gfx.set("autoport", "yes")
        if gfx.get("type") == "vnc" and gfx.find("listen") is None:
            listen = etree.SubElement(gfx, "listen", type="address")
            if gfx.get("listen"):
                listen.set("address", gfx.get("listen"))
    if d.devices_of("graphics") and not d.devices_of("video"):
        video = etree.Element("video")
        etree.SubElement(video, "model", type="cirrus", vram="16384", heads="1", primary="yes")
        d.devices.append(video)
    for video in d.devices_of("video"):
        model = video.find("model")
        if model is not None and model.get("heads") is None and model.get("type") == "cirrus":
            model.set("vram", model.get("vram") or "16384")
            model.set("heads", "1")
            model.set("primary", "yes")


def _controller_indexes(d: DomainDef) -> None:
    """Controllers without an index get one: a USB companion (ich9-uhciN) that of
    the ich9-ehci1 before it, any other the lowest index unused by its type."""
    used: dict[str, set[int]] = {}
    for cont in d.devices_of("controller"):
        if (idx := cont.get("index")) is not None and idx.isdigit():
            used.setdefault(cont.get("type"), set()).add(int(idx))
    ehci = None
    for cont in d.devices_of("controller"):
        kind, model = cont.get("type"), cont.get("model") or ""
        if cont.get("index") is None:
            if kind == "usb" and model.startswith("ich9-uhci") and ehci is not None:
                idx = int(ehci.get("index"))
            else:
                taken = used.setdefault(kind, set())
                idx = next(i for i in range(len(taken) + 1) if i not in taken)
                taken.add(idx)
            attrs = list(cont.attrib.items())
            cont.attrib.clear()
            for name, value in attrs[:1] + [("index", str(idx))] + attrs[1:]:
                cont.set(name, value)
        if kind == "usb" and model == "ich9-ehci1":
            ehci = cont


def _console_defaults(d: DomainDef) -> None:
    """An hvm console with no serial port becomes serial port 0 plus its console alias."""
    consoles = d.devices_of("console")
    if not consoles or d.os_type != "hvm":
        return
    first = consoles[0]
    target = first.find("target")
    if target is None:
        target = etree.SubElement(first, "target")
    if target.get("type") in (None, "serial"):
        target.set("type", "serial")
        if target.get("port") is None:
            target.set("port", "0")
        if not d.devices_of("serial"):
            serial = copy.deepcopy(first)
            serial.tag = "serial"
            st = serial.find("target")
            del st.attrib["type"]
            d.devices.append(serial)


# -- formatting -------------------------------------------------------------

def _raw_lines(d: DomainDef, tag: str, out: list) -> None:
    """A verbatim top-level element and its repeats."""
    if tag in d.raw:
        element_lines(d.raw[tag], 1, out)
        for more in d.raw_more:
            if more.tag == tag:
                element_lines(more, 1, out)


def format(d: DomainDef, *, dom_id: int | None = None, secure: bool = True) -> str:
    """The document libvirt prints for this definition (id only when running)."""
    out: list[str] = []
    id_attr = f" id='{dom_id}'" if dom_id is not None and dom_id >= 0 else ""
    ns_decls = ""
    for uri in dict.fromkeys(etree.QName(e).namespace for e in d.namespaced):
        ns_decls += f" xmlns:{KEPT_NAMESPACES[uri]}='{escape(uri)}'"
    out.append(f"<domain type='{escape(d.type)}'{id_attr}{ns_decls}>")
    out.append(f"  <name>{escape(d.name)}</name>")
    out.append(f"  <uuid>{d.uuid_str}</uuid>")
    for tag in _RAW_AFTER_UUID:
        _raw_lines(d, tag, out)
    if d.title is not None:
        out.append(f"  <title>{escape(d.title)}</title>")
    if d.description is not None:
        out.append(f"  <description>{escape(d.description)}</description>")
    if d.metadata:
        out.append("  <metadata>")
        for elem in d.metadata:
            # libvirt keeps metadata as libxml2 nodes and dumps them with
            # libxml2's own serialiser: double quotes, namespace declarations kept.
            text = _libxml_dump(elem)
            out.extend("    " + line for line in text.split("\n"))
        out.append("  </metadata>")
    for tag in _RAW_BEFORE_VCPU:
        if tag == "memoryBacking":
            continue
        if tag in d.raw:
            element_lines(d.raw[tag], 1, out)
        if tag == "maxMemory":
            out.append(f"  <memory unit='KiB'>{d.memory}</memory>")
            out.append(f"  <currentMemory unit='KiB'>{d.current_memory}</currentMemory>")
    if "memoryBacking" in d.raw:
        element_lines(d.raw["memoryBacking"], 1, out)
    cpuset = f" cpuset='{escape(d.vcpu_cpuset)}'" if d.vcpu_cpuset is not None else ""
    current = f" current='{d.vcpus_current}'" if d.vcpus_current != d.vcpus else ""
    out.append(f"  <vcpu placement='{escape(d.vcpu_placement)}'{cpuset}{current}>{d.vcpus}</vcpu>")
    for tag in _RAW_AFTER_VCPU:
        _raw_lines(d, tag, out)
    os_attrs = "".join(f" {k}='{escape(v)}'" for k, v in d.os_attrs.items())
    out.append(f"  <os{os_attrs}>")
    attrs = "".join(f" {k}='{escape(v)}'" for k, v in (("arch", d.arch), ("machine", d.machine)) if v)
    out.append(f"    <type{attrs}>{d.os_type}</type>")
    for tag in _OS_BEFORE_BOOT:
        for elem in d.os_extra:
            if elem.tag == tag:
                element_lines(elem, 2, out)
    for dev in d.boot:
        out.append(f"    <boot dev='{escape(dev)}'/>")
    for elem in d.os_extra:
        if elem.tag not in _OS_BEFORE_BOOT:
            element_lines(elem, 2, out)
    out.append("  </os>")
    for tag in _RAW_AFTER_OS:
        _raw_lines(d, tag, out)
    if d.clock is not None:
        element_lines(d.clock, 1, out)
    out.append(f"  <on_poweroff>{d.on_poweroff}</on_poweroff>")
    out.append(f"  <on_reboot>{d.on_reboot}</on_reboot>")
    out.append(f"  <on_crash>{d.on_crash}</on_crash>")
    for tag in _RAW_AFTER_LIFECYCLE:
        _raw_lines(d, tag, out)
    out.append("  <devices>")
    for dev in sorted_devices(d.devices):
        element_lines(dev, 2, out)
    out.append("  </devices>")
    for tag in _RAW_TAIL:        # seclabels too: libvirt hides no label without SECURE
        _raw_lines(d, tag, out)
    for elem in d.namespaced:
        element_lines(elem, 1, out, prefixes=KEPT_NAMESPACES)
    out.append("</domain>")
    return "\n".join(out) + "\n"


def sorted_devices(devices: list) -> list:
    rank = {tag: i for i, tag in enumerate(DEVICE_ORDER)}
    return sorted(devices, key=lambda e: rank.get(e.tag, len(rank)))


def _libxml_dump(elem: etree._Element) -> str:
    elem = copy.deepcopy(elem)
    elem.tail = None
    etree.indent(elem, space="  ")
    return etree.tostring(elem, encoding="unicode")


# -- metadata (virDomainSetMetadata / virDomainGetMetadata) -------------------

METADATA_DESCRIPTION = P.DomainMetadataType.VIR_DOMAIN_METADATA_DESCRIPTION
METADATA_TITLE = P.DomainMetadataType.VIR_DOMAIN_METADATA_TITLE
METADATA_ELEMENT = P.DomainMetadataType.VIR_DOMAIN_METADATA_ELEMENT


def _no_metadata() -> VirError:
    return VirError(P.VIR_ERR_NO_DOMAIN_METADATA, "Requested metadata element is not present",
                    domain=P.VIR_FROM_DOMAIN)


def get_metadata(d: DomainDef, kind: int, uri: str | None) -> str:
    if kind == METADATA_DESCRIPTION:
        if d.description is None:
            raise _no_metadata()
        return d.description
    if kind == METADATA_TITLE:
        if d.title is None:
            raise _no_metadata()
        return d.title
    if kind == METADATA_ELEMENT:
        if not uri:
            raise VirError(P.VIR_ERR_INVALID_ARG, "uri", domain=P.VIR_FROM_DOMAIN)
        for elem in d.metadata:
            if etree.QName(elem).namespace == uri:
                bare = _strip_namespace(elem, uri)
                return _libxml_dump(bare)
        raise _no_metadata()
    raise VirError(P.VIR_ERR_INVALID_ARG, "unknown metadata type '%d'" % kind,
                   domain=P.VIR_FROM_DOMAIN)


def _strip_namespace(elem: etree._Element, uri: str) -> etree._Element:
    """The element as the client gave it: without the namespace libvirt put on it."""
    def strip(e: etree._Element) -> etree._Element:
        q = etree.QName(e)
        new = etree.Element(q.localname if q.namespace == uri else e.tag,
                            {k: v for k, v in e.attrib.items()})
        new.text = e.text
        for child in e:
            if isinstance(child.tag, str):
                c = strip(child)
                c.tail = child.tail
                new.append(c)
        return new
    return strip(elem)


def set_metadata(d: DomainDef, kind: int, metadata: str | None, key: str | None,
                 uri: str | None) -> None:
    if kind == METADATA_DESCRIPTION:
        d.description = metadata if metadata else None
    elif kind == METADATA_TITLE:
        if metadata and "\n" in metadata:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Domain title can't contain newlines",
                           domain=P.VIR_FROM_DOMAIN)
        d.title = metadata if metadata else None
    elif kind == METADATA_ELEMENT:
        if not uri:
            raise VirError(P.VIR_ERR_INVALID_ARG, "uri", domain=P.VIR_FROM_DOMAIN)
        d.metadata = [e for e in d.metadata if etree.QName(e).namespace != uri]
        if metadata:
            if not key:
                raise VirError(P.VIR_ERR_INVALID_ARG, "key", domain=P.VIR_FROM_DOMAIN)
            try:
                given = fromstring(metadata, _PARSER)
            except etree.XMLSyntaxError:
                raise VirError(P.VIR_ERR_XML_ERROR, "(metadata_xml)", domain=P.VIR_FROM_XML) from None
            d.metadata.append(_with_namespace(given, key, uri))
    else:
        raise VirError(P.VIR_ERR_INVALID_ARG, "unknown metadata type '%d'" % kind,
                       domain=P.VIR_FROM_DOMAIN)


def _with_namespace(elem: etree._Element, prefix: str, uri: str) -> etree._Element:
    def put(e: etree._Element, nsmap: dict | None) -> etree._Element:
        q = etree.QName(e)
        tag = e.tag if q.namespace else f"{{{uri}}}{q.localname}"
        new = etree.Element(tag, dict(e.attrib), nsmap=nsmap)
        new.text = e.text
        for child in e:
            if isinstance(child.tag, str):
                c = put(child, None)
                c.tail = child.tail
                new.append(c)
        return new
    return put(elem, {prefix: uri})
