"""The XML model of network filters (<filter>) and filter bindings (<filterbinding>).

A filter is a named list of entries, each a <rule> (action, direction,
priority, at most one protocol element such as <mac>, <arp>, <ip>, <tcp>)
or a <filterref> to another filter with <parameter>s.  Attribute values
are checked and canonicalised per type as libvirt's parser does
(src/conf/nwfilter_conf.c: MACs in lower case, masks as prefix lengths,
hex kept hex), or they name a variable: ``$IP``, ``$IP[2]`` (one element)
or ``$IP[@1]`` (iterate together with every other variable on iterator 1).
`format` writes libvirt's shape, so parse(format(x)) == x.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_libvirt, format_uuid, new_uuid, parse_definition, parse_uuid

_FROM = P.VIR_FROM_NWFILTER

ACTIONS = ("drop", "accept", "reject", "return", "continue")
DIRECTIONS = ("in", "out", "inout")
# src/conf/nwfilter_conf.h: rule and chain priorities lie in [-1000, 1000]; a
# rule's default is 500; a chain's default follows its prefix (else 0).
MIN_PRIORITY, MAX_PRIORITY, RULE_PRIORITY = -1000, 1000, 500
CHAIN_PRIORITIES = {"root": 0, "mac": -800, "vlan": -750, "ipv4": -700, "ipv6": -600,
                    "arp": -500, "rarp": -400}
CHAIN_PREFIXES = ("root", "mac", "vlan", "stp", "arp", "rarp", "ipv4", "ipv6")
MAX_CHAIN_SUFFIX = 10
_CHAIN_CHARS = re.compile(r"^[A-Za-z0-9_.:-]*$")
_VAR_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_VAR_VALUE = re.compile(r"^[A-Za-z0-9_.:]+$")
_VAR_ACCESS = re.compile(r"^\$([A-Za-z0-9_]+)(?:\[(@?)(\d+)\])?$")

ETHER_TYPES = {"arp": 0x0806, "rarp": 0x8035, "ipv4": 0x0800, "ipv6": 0x86DD, "vlan": 0x8100}
ARP_OPCODES = {"Request": 1, "Reply": 2, "Request_Reverse": 3, "Reply_Reverse": 4,
               "DRARP_Request": 5, "DRARP_Reply": 6, "DRARP_Error": 7, "InARP_Request": 8,
               "ARP_NAK": 9}
IP_PROTOCOLS = {"tcp": 6, "udp": 17, "udplite": 136, "esp": 50, "ah": 51, "icmp": 1,
                "igmp": 2, "sctp": 132, "icmpv6": 58}
STATES = ("NEW", "ESTABLISHED", "RELATED", "INVALID", "NONE")
TCP_FLAGS = ("SYN", "ACK", "URG", "PSH", "FIN", "RST", "ALL", "NONE")

# Attribute types (how a value is checked and written back).
MAC, MACMASK, IP4, IP4MASK, IP6, IP6MASK = "mac", "macmask", "ip4", "ip4mask", "ip6", "ip6mask"
U8, U16, U32, ETHERTYPE, ETHERTYPE_VLAN = "u8", "u16", "u32", "ethertype", "ethertype-vlan"
IPPROTO, OPCODE, BOOL, STATE, TCPFLAGS, TEXT = "ipproto", "opcode", "bool", "state", "tcpflags", "text"
DSCP, VLANID, CONNLIMIT, IPSET, IPSETFLAGS = "dscp", "vlanid", "connlimit", "ipset", "ipsetflags"

_MAC_COMMON = [("srcmacaddr", MAC), ("srcmacmask", MACMASK), ("dstmacaddr", MAC),
               ("dstmacmask", MACMASK)]
_PORTS = [("srcportstart", U16), ("srcportend", U16), ("dstportstart", U16), ("dstportend", U16)]
_COMMENT = [("comment", TEXT)]


def _l3_common(addr: str, mask: str) -> list[tuple[str, str]]:
    return [("srcmacaddr", MAC), ("srcipaddr", addr), ("srcipmask", mask), ("dstipaddr", addr),
            ("dstipmask", mask), ("srcipfrom", addr), ("srcipto", addr), ("dstipfrom", addr),
            ("dstipto", addr), ("dscp", DSCP), ("connlimit-above", CONNLIMIT), ("state", STATE),
            ("ipset", IPSET), ("ipsetflags", IPSETFLAGS)]


_STP = [("srcmacaddr", MAC), ("srcmacmask", MACMASK), ("type", U8), ("flags", U8)]
for _name, _kind in (("root-priority", U16), ("root-address", MAC), ("root-cost", U32),
                     ("sender-priority", U16), ("sender-address", MAC), ("port", U16),
                     ("age", U16), ("max-age", U16), ("hello-time", U16), ("forward-delay", U16)):
    if _kind == MAC:
        _STP += [(_name, MAC), (_name + "-mask", MACMASK)]
    else:
        _STP += [(_name, _kind), (_name + "-hi", _kind)]

_ARP = _MAC_COMMON + [("hwtype", U16), ("protocoltype", U16), ("opcode", OPCODE),
                      ("arpsrcmacaddr", MAC), ("arpdstmacaddr", MAC), ("arpsrcipaddr", IP4),
                      ("arpsrcipmask", IP4MASK), ("arpdstipaddr", IP4), ("arpdstipmask", IP4MASK),
                      ("gratuitous", BOOL)] + _COMMENT

# Each protocol element and its attributes, in the order libvirt writes them.
PROTOCOLS: dict[str, list[tuple[str, str]]] = {
    "mac": _MAC_COMMON + [("protocolid", ETHERTYPE)] + _COMMENT,
    "vlan": _MAC_COMMON + [("vlanid", VLANID), ("encap-protocol", ETHERTYPE_VLAN)] + _COMMENT,
    "stp": _STP + _COMMENT,
    "arp": _ARP,
    "rarp": _ARP,
    "ip": _MAC_COMMON + [("srcipaddr", IP4), ("srcipmask", IP4MASK), ("dstipaddr", IP4),
                         ("dstipmask", IP4MASK), ("protocol", IPPROTO)] + _PORTS
          + [("dscp", DSCP)] + _COMMENT,
    "ipv6": _MAC_COMMON + [("srcipaddr", IP6), ("srcipmask", IP6MASK), ("dstipaddr", IP6),
                           ("dstipmask", IP6MASK), ("protocol", IPPROTO)] + _PORTS
            + [("type", U8), ("typeend", U8), ("code", U8), ("codeend", U8)] + _COMMENT,
}
for _proto, _v6 in (("tcp", False), ("udp", False), ("udplite", False), ("esp", False),
                    ("ah", False), ("sctp", False), ("icmp", False), ("all", False),
                    ("igmp", False), ("tcp-ipv6", True), ("udp-ipv6", True),
                    ("udplite-ipv6", True), ("esp-ipv6", True), ("ah-ipv6", True),
                    ("sctp-ipv6", True), ("icmpv6", True), ("all-ipv6", True)):
    _attrs = _l3_common(IP6, IP6MASK) if _v6 else _l3_common(IP4, IP4MASK)
    _base = _proto.split("-")[0]
    if _base in ("tcp", "udp", "sctp"):
        _attrs += _PORTS
    if _base == "tcp":
        _attrs += [("option", U8)] + ([] if _v6 else [("flags", TCPFLAGS)])
    if _base in ("icmp", "icmpv6"):
        _attrs += [("type", U8), ("code", U8)]
    PROTOCOLS[_proto] = _attrs + _COMMENT

# Protocols that libvirt enforces at layer 2 (ebtables); the others at layer 3.
L2_PROTOCOLS = ("mac", "vlan", "stp", "arp", "rarp", "ip", "ipv6")


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=_FROM)


@dataclass
class Rule:
    action: str
    direction: str
    priority: int = RULE_PRIORITY
    statematch: bool = True
    protocol: str | None = None
    # attribute -> (canonical value, negated by match='no'), in PROTOCOLS order
    attrs: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def variables(self) -> list[tuple[str, str | None, int | None]]:
        """(name, iterator id or None, index or None) of each variable used."""
        out = []
        for value, _neg in self.attrs.values():
            m = _VAR_ACCESS.match(value)
            if m:
                name, at, num = m.groups()
                out.append((name, num if at else None, int(num) if num and not at else None))
        return out


@dataclass
class FilterRef:
    filter: str
    params: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class FilterDef:
    name: str
    uuid: bytes
    chain: str = "root"
    priority: int = 0
    entries: list[Rule | FilterRef] = field(default_factory=list)

    def refs(self) -> list[str]:
        return [e.filter for e in self.entries if isinstance(e, FilterRef)]


@dataclass
class BindingDef:
    owner_name: str
    owner_uuid: bytes
    portdev: str
    mac: str
    filter: str
    params: list[tuple[str, str]] = field(default_factory=list)
    linkdev: str | None = None


# ------------------------------------------------------------------ values
def _int(text: str, bits: int, *, hex_ok: bool = True) -> str | None:
    """libvirt's number types: decimal, or hex with 0x (kept in hex when written)."""
    try:
        if hex_ok and text.lower().startswith("0x"):
            value = int(text, 16)
            return f"0x{value:x}" if value < (1 << bits) else None
        value = int(text, 10)
    except ValueError:
        return None
    return str(value) if 0 <= value < (1 << bits) else None


def _mac(text: str) -> str | None:
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9A-Fa-f]{1,2}", p) for p in parts):
        return None
    return ":".join(f"{int(p, 16):02x}" for p in parts)


def _mask_bits(raw: bytes) -> bool:
    bits = "".join(f"{b:08b}" for b in raw)
    return "01" not in bits


def _ipmask(text: str, version: int) -> str | None:
    width = 32 if version == 4 else 128
    if text.isdigit():
        return text if int(text) <= width else None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version != version or not _mask_bits(addr.packed):
        return None
    return str(bin(int(addr)).count("1"))


def canonical(kind: str, text: str) -> str | None:
    """The value libvirt writes back for ``text`` of type ``kind``; None if invalid."""
    if kind == MAC:
        return _mac(text)
    if kind == MACMASK:
        mac = _mac(text)
        return mac if mac and _mask_bits(bytes(int(p, 16) for p in mac.split(":"))) else None
    if kind in (IP4, IP6):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            return None
        return str(addr) if addr.version == (4 if kind == IP4 else 6) else None
    if kind in (IP4MASK, IP6MASK):
        return _ipmask(text, 4 if kind == IP4MASK else 6)
    if kind in (U8, U16, U32):
        return _int(text, {U8: 8, U16: 16, U32: 32}[kind])
    if kind == DSCP:
        value = _int(text, 8)
        return value if value is not None and int(value, 0) <= 63 else None
    if kind == VLANID:
        value = _int(text, 16)
        return value if value is not None and int(value, 0) <= 4095 else None
    if kind == CONNLIMIT:
        return _int(text, 16, hex_ok=False)
    if kind in (ETHERTYPE, ETHERTYPE_VLAN):
        for name in ETHER_TYPES:
            if text.lower() == name:
                return name
        value = _int(text, 16)
        if value is None or int(value, 0) < (0x600 if kind == ETHERTYPE else 0x3C):
            return None
        for name, number in ETHER_TYPES.items():
            if int(value, 0) == number:
                return name
        return value
    if kind == IPPROTO:
        if text.lower() in IP_PROTOCOLS:
            return text.lower()
        value = _int(text, 8)
        if value is None:
            return None
        for name, number in IP_PROTOCOLS.items():
            if int(value, 0) == number:
                return name
        return value
    if kind == OPCODE:
        for name in ARP_OPCODES:
            if text.lower() == name.lower():
                return name
        value = _int(text, 16)
        if value is None:
            return None
        for name, number in ARP_OPCODES.items():
            if int(value, 0) == number:
                return name
        return value
    if kind == BOOL:
        return "true" if text in ("true", "1", "yes") else "false"
    if kind == STATE:
        words = text.upper().split(",")
        if not text or any(w not in STATES for w in words) or ("NONE" in words and len(words) > 1):
            return None
        return ",".join(w for w in STATES if w in words)
    if kind == TCPFLAGS:
        halves = text.upper().split("/")
        if len(halves) != 2:
            return None
        out = []
        for half in halves:
            words = half.split(",")
            if any(w not in TCP_FLAGS for w in words):
                return None
            out.append(",".join(w for w in TCP_FLAGS if w in words))
        return "/".join(out)
    if kind == TEXT:
        return text[:256]
    if kind == IPSET:
        return text if re.fullmatch(r"[A-Za-z0-9_.:+\-]{1,31}", text) else None
    if kind == IPSETFLAGS:
        words = text.split(",")
        return text if 1 <= len(words) <= 6 and all(w in ("src", "dst") for w in words) else None
    raise AssertionError(kind)


# ------------------------------------------------------------------ parsing
def _parse_rule(elem: etree._Element) -> Rule:
    action, direction = elem.get("action"), elem.get("direction")
    if action is None:
        raise _err(P.VIR_ERR_INTERNAL_ERROR, "rule node requires action attribute")
    if action not in ACTIONS:
        raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, "unknown rule action attribute value")
    if direction is None:
        raise _err(P.VIR_ERR_INTERNAL_ERROR, "rule node requires direction attribute")
    if direction not in DIRECTIONS:
        raise _err(P.VIR_ERR_CONFIG_UNSUPPORTED, "unknown rule direction attribute value")
    rule = Rule(action, direction)
    prio = elem.get("priority")
    # libvirt ignores a priority it cannot read or that is out of range
    if prio is not None and re.fullmatch(r"[+-]?\d+", prio.strip()) \
            and MIN_PRIORITY <= int(prio) <= MAX_PRIORITY:
        rule.priority = int(prio)
    state = elem.get("statematch")
    if state is not None and (state == "0" or state.lower() == "false"):
        rule.statematch = False
    for child in elem:
        if not isinstance(child.tag, str) or child.tag not in PROTOCOLS:
            continue
        if rule.protocol is None:
            rule.protocol = child.tag
        elif child.tag != rule.protocol:
            continue    # libvirt reads only elements of the rule's first protocol
        _parse_details(child, rule)
    _validate_rule(rule)
    return rule


def _parse_details(elem: etree._Element, rule: Rule) -> None:
    negated = elem.get("match") == "no"
    for name, kind in PROTOCOLS[rule.protocol]:
        text = elem.get(name)
        if text is None:
            continue
        if text.startswith("$"):
            if not _VAR_ACCESS.match(text):
                raise _err(P.VIR_ERR_INVALID_ARG, f"Malformatted variable '{text[1:]}'")
            value = text
        else:
            value = canonical(kind, text)
        if value is None:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"{name} has illegal value {text}")
        rule.attrs[name] = (value, negated)
    rule.attrs = {n: rule.attrs[n] for n, _k in PROTOCOLS[rule.protocol] if n in rule.attrs}


def _validate_rule(rule: Rule) -> None:
    """libvirt's virNWFilterRuleValidate: ports need a protocol that has ports."""
    if rule.protocol not in ("ip", "ipv6"):
        return
    if not any(p in rule.attrs for p, _k in _PORTS):
        return
    proto = rule.attrs.get("protocol", ("", False))[0]
    if proto not in ("tcp", "udp", "sctp", "6", "17", "33", "132") and not proto.startswith("$"):
        name = "IP" if rule.protocol == "ip" else "IPv6"
        raise _err(P.VIR_ERR_INTERNAL_ERROR,
                   f"{name} rule with port specification requires protocol specification "
                   f"with protocol to be either one of tcp(6), udp(17), dccp(33), or sctp(132)")


def parse_params(elem: etree._Element) -> list[tuple[str, str]]:
    """The <parameter name= value=/> children of a <filterref> (a name may repeat: a list)."""
    out = []
    for param in elem.findall("parameter"):
        name, value = param.get("name"), param.get("value")
        if name is None or value is None or not _VAR_NAME.match(name) \
                or not _VAR_VALUE.match(value):
            raise _err(P.VIR_ERR_INVALID_ARG,
                       f"invalid filter parameter name '{name}' or value '{value}'")
        out.append((name, value))
    return out


def _parse_filterref(elem: etree._Element) -> FilterRef:
    name = elem.get("filter")
    if not name:
        # libvirt's wording (virNWFilterIncludeParse reuses the rule's message)
        raise _err(P.VIR_ERR_INTERNAL_ERROR, "rule node requires action attribute")
    return FilterRef(name, parse_params(elem))


def parse(text: str, *, validate_schema: bool = False) -> FilterDef:
    """Parse a <filter> (libvirt's errors: VIR_ERR_XML_*, _INVALID_ARG, _INTERNAL_ERROR)."""
    root = parse_definition(text, None, what="nwfilter_definition", domain=_FROM)
    if root.tag != "filter":
        raise _err(P.VIR_ERR_XML_ERROR, "unknown root element for nw filter")
    if validate_schema:
        from pyvirtd.xml import schema
        schema.validate(root, "nwfilter")
    return from_element(root)


def from_element(root: etree._Element) -> FilterDef:
    name = root.get("name")
    if not name:
        raise _err(P.VIR_ERR_INTERNAL_ERROR, "filter has no name")
    check_name("nwfilter", name)
    priority = None
    prio_text = root.get("priority")
    if prio_text is not None:
        if not re.fullmatch(r"\s*[+-]?\d+\s*", prio_text):
            raise _err(P.VIR_ERR_INVALID_ARG, f"Could not parse chain priority '{prio_text}'")
        priority = int(prio_text)
        if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise _err(P.VIR_ERR_INVALID_ARG, f"Priority '{priority}' is outside valid range "
                                              f"of [{MIN_PRIORITY},{MAX_PRIORITY}]")
    chain = root.get("chain")
    if chain is None:
        chain, default = "root", 0
    else:
        prefix = allowed_chain(chain)
        default = CHAIN_PRIORITIES.get(prefix, (MIN_PRIORITY + MAX_PRIORITY) // 2)
    uuid_text = root.findtext("uuid")
    uuid = new_uuid() if uuid_text is None else parse_uuid(uuid_text, domain=_FROM)
    fdef = FilterDef(name, uuid, chain, default if priority is None or root.get("chain") is None
                     else priority)
    for child in root:
        if child.tag == "rule":
            fdef.entries.append(_parse_rule(child))
        elif child.tag == "filterref":
            fdef.entries.append(_parse_filterref(child))
    return fdef


def allowed_chain(chain: str) -> str:
    """The prefix that makes ``chain`` a valid chain name (virNWFilterIsAllowedChain)."""
    if len(chain) > MAX_CHAIN_SUFFIX:
        raise _err(P.VIR_ERR_INVALID_ARG,
                   f"Name of chain is longer than {MAX_CHAIN_SUFFIX} characters")
    if not _CHAIN_CHARS.match(chain):
        raise _err(P.VIR_ERR_INVALID_ARG, "Chain name contains invalid characters")
    if chain == "root":
        return "root"
    for prefix in CHAIN_PREFIXES[1:]:
        if chain.startswith(prefix):
            return prefix
    raise _err(P.VIR_ERR_INVALID_ARG,
               f"Invalid chain name '{chain}'. Please use a chain name called 'root' or any of "
               f"the following prefixes: {', '.join(CHAIN_PREFIXES[1:])}")


def chain_prefix(chain: str) -> str:
    return "root" if chain == "root" else next(p for p in CHAIN_PREFIXES[1:]
                                               if chain.startswith(p))


# ------------------------------------------------------------------ formatting
def _rule_element(rule: Rule) -> etree._Element:
    elem = etree.Element("rule", action=rule.action, direction=rule.direction,
                         priority=str(rule.priority))
    if not rule.statematch:
        elem.set("statematch", "false")
    if rule.protocol is None:
        return elem
    current = None
    current_neg = None
    for name, (value, neg) in rule.attrs.items():
        if current is None or neg != current_neg:
            current = etree.SubElement(elem, rule.protocol)
            if neg:
                current.set("match", "no")
            current_neg = neg
        current.set(name, value)
    if current is None:
        etree.SubElement(elem, rule.protocol)
    return elem


def _ref_element(tag: str, name: str, params: list[tuple[str, str]]) -> etree._Element:
    elem = etree.Element(tag, filter=name)
    for pname, value in params:
        etree.SubElement(elem, "parameter", name=pname, value=value)
    return elem


def to_element(fdef: FilterDef) -> etree._Element:
    root = etree.Element("filter", name=fdef.name, chain=fdef.chain)
    if fdef.priority != 0:
        root.set("priority", str(fdef.priority))
    etree.SubElement(root, "uuid").text = format_uuid(fdef.uuid)
    for entry in fdef.entries:
        if isinstance(entry, Rule):
            root.append(_rule_element(entry))
        else:
            root.append(_ref_element("filterref", entry.filter, entry.params))
    return root


def format(fdef: FilterDef) -> str:
    return format_libvirt(to_element(fdef))


def copy_def(fdef: FilterDef) -> FilterDef:
    return copy.deepcopy(fdef)


# ------------------------------------------------------------------ bindings
def parse_binding(text: str, *, validate_schema: bool = False) -> BindingDef:
    """Parse a <filterbinding> (virNWFilterBindingDefParseXML's checks)."""
    root = parse_definition(text, "filterbinding", what="nwfilterbinding", domain=_FROM)
    if validate_schema:
        from pyvirtd.xml import schema
        schema.validate(root, "nwfilterbinding")

    def need(value: str | None, what: str) -> str:
        if not value:
            raise _err(P.VIR_ERR_XML_ERROR, f"filter binding has no {what}")
        return value

    owner_name = need(root.findtext("owner/name"), "owner name")
    owner_uuid = parse_uuid(need(root.findtext("owner/uuid"), "owner UUID"), domain=_FROM)
    portdev = need(root.find("portdev").get("name") if root.find("portdev") is not None
                   else None, "port dev name")
    linkdev = root.find("linkdev").get("name") if root.find("linkdev") is not None else None
    mac_text = need(root.find("mac").get("address") if root.find("mac") is not None
                    else None, "MAC address")
    mac = _mac(mac_text)
    if mac is None:
        raise _err(P.VIR_ERR_XML_ERROR, f"malformed MAC address '{mac_text}'")
    ref = root.find("filterref")
    name = need(ref.get("filter") if ref is not None else None, "filter reference")
    return BindingDef(owner_name, owner_uuid, portdev, mac, name, parse_params(ref), linkdev)


def format_binding(b: BindingDef) -> str:
    root = etree.Element("filterbinding")
    owner = etree.SubElement(root, "owner")
    etree.SubElement(owner, "name").text = b.owner_name
    etree.SubElement(owner, "uuid").text = format_uuid(b.owner_uuid)
    etree.SubElement(root, "portdev", name=b.portdev)
    if b.linkdev:
        etree.SubElement(root, "linkdev", name=b.linkdev)
    etree.SubElement(root, "mac", address=b.mac)
    root.append(_ref_element("filterref", b.filter, b.params))
    return format_libvirt(root)
