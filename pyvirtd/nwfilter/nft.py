"""Network filters enforced with nftables, in pyvirtd's own table ``bridge pyvirtd_nwfilter``.

Why the bridge family for everything: a guest NIC (QEMU tap, LXC veth) is a
port of a Linux bridge, and traffic between two guests on one bridge never
reaches the ip/inet hooks unless br_netfilter is loaded and configured; the
bridge hooks see every frame, keyed by the port's name (``iifname`` from the
guest, ``oifname`` to it), and the bridge family can match IPv4/IPv6/ARP
headers as well.  libvirt splits the same work between ebtables (layer 2:
mac, vlan, stp, arp, rarp, ip, ipv6) and iptables with physdev (layer 3:
tcp, udp, icmp, all, ...); here the two layers are two pairs of base chains
on the same hooks, so a frame must pass both as with libvirt::

    l2-from (prerouting, -300)  iifname "vnet0" jump I-vnet0   from the guest
    l2-to   (postrouting,-300)  oifname "vnet0" jump O-vnet0   to the guest
    l3-from (prerouting, -250)  iifname "vnet0" jump FI-vnet0
    l3-to   (postrouting,-250)  oifname "vnet0" jump FO-vnet0

I-vnet0 / O-vnet0 are the root chains: root rules and jumps into the
protocol chains (I-vnet0-ipv4-ip ...), entered for their ethertype, in
priority order.  Rules with direction 'out' filter what the guest sends,
'in' what it receives.  Layer-3 rules also get their companion in the
other direction with source and destination swapped (libvirt does the same
so that replies pass); this kernel has no connection tracking for bridged
frames (nf_conntrack_bridge), so statematch cannot narrow the companion to
ESTABLISHED replies and a rule's explicit ``state`` is refused.

``reject`` drops, and the daemon's log says so for each port it applies to:
nftables rejects in the bridge family only on kernels built with
CONFIG_NFT_BRIDGE_REJECT (not this project's test kernel: ``nft`` answers "No
such file or directory" for a bridge ``reject`` on any hook) and never on the
postrouting hook where the rules towards the guest live.  (The netdev
family's ingress hook can reject frames from a port on such kernels, its
egress hook cannot: a route for rules from the guest, not taken yet.)

The whole table is rebuilt in one nft transaction whenever a binding or a
filter it uses changes: atomic, and a failure leaves the previous rules.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from dataclasses import dataclass, field

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from . import model
from .model import BindingDef, FilterDef, FilterRef, Rule

FAMILY, TABLE = "bridge", "pyvirtd_nwfilter"
_FROM = P.VIR_FROM_NWFILTER

# entering a protocol chain from the root chain: the frames it is for
_CHAIN_MATCH = {"mac": "", "vlan": "ether type 0x8100", "stp": "ether daddr 01:80:c2:00:00:00",
                "arp": "ether type 0x0806", "rarp": "ether type 0x8035",
                "ipv4": "ether type 0x0800", "ipv6": "ether type 0x86dd"}
_VERDICT = {"accept": "accept", "drop": "drop", "reject": "drop", "return": "return",
            "continue": "continue"}
# ARP header fields as (bit offset from the link layer, bits): nft's own arp
# expressions imply ethertype ARP, and RARP frames need the same fields.
_ARP_FIELDS = {"hwtype": (112, 16), "protocoltype": (128, 16), "opcode": (160, 16),
               "arpsrcmacaddr": (176, 48), "arpsrcipaddr": (224, 32),
               "arpdstmacaddr": (256, 48), "arpdstipaddr": (304, 32)}
# STP BPDU fields after the 802.3 and LLC headers (14 + 3 bytes)
_STP_FIELDS = {"type": (160, 8), "flags": (168, 8), "root-priority": (176, 16),
               "root-address": (192, 48), "root-cost": (240, 32), "sender-priority": (272, 16),
               "sender-address": (288, 48), "port": (336, 16), "age": (352, 16),
               "max-age": (368, 16), "hello-time": (384, 16), "forward-delay": (400, 16)}
_L3_PROTO = {"tcp": 6, "udp": 17, "udplite": 136, "esp": 50, "ah": 51, "sctp": 132,
             "icmp": 1, "igmp": 2, "icmpv6": 58}
_PORT_PROTOS = ("tcp", "udp", "sctp")
_SWAP = {"srcipaddr": "dstipaddr", "srcipmask": "dstipmask", "srcipfrom": "dstipfrom",
         "srcipto": "dstipto", "srcportstart": "dstportstart", "srcportend": "dstportend"}
_SWAP.update({v: k for k, v in _SWAP.items()})
_IFNAME = re.compile(r"^[A-Za-z0-9_.+@-]{1,15}$")


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=_FROM)


def _unsupported(what: str) -> VirError:
    return _err(P.VIR_ERR_CONFIG_UNSUPPORTED,
                f"{what} is not supported by pyvirtd's nftables filter backend")


def check_portdev(name: str) -> None:
    """Port names go into nft scripts: refuse anything that is not a plain interface name."""
    if not _IFNAME.match(name):
        raise _err(P.VIR_ERR_INVALID_ARG, f"invalid port device name '{name}'")


def chain_id(text: str) -> str:
    """nft chain names take letters, digits, '_', '.', '-'; others are escaped as _XX."""
    return re.sub(r"[^A-Za-z0-9.-]", lambda m: f"_{ord(m.group()):02x}", text)


# ------------------------------------------------------------------ variables
class Unresolved(VirError):
    """A filter needs variables the binding has no values for (``names``)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(P.VIR_ERR_INTERNAL_ERROR,
                         "Cannot instantiate filter due to unresolvable variables or "
                         f"unavailable list elements: {', '.join(names)}", domain=_FROM)
        self.names = names


class MissingVariables(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(", ".join(names))
        self.names = names


def bind_variables(rule: Rule, env: dict[str, list[str]]) -> list[dict[str, tuple[str, bool]]]:
    """The concrete attribute sets of ``rule`` for the variables in ``env``.

    A plain ``$X`` iterates over X's values on its own (combinations with
    other variables), ``$X[@n]`` iterates in step with every variable on
    iterator n, ``$X[i]`` takes element i.  Raises MissingVariables.
    """
    accesses = rule.variables()
    if not accesses:
        return [dict(rule.attrs)]
    missing = sorted({n for n, _it, idx in accesses
                      if n not in env or (idx is not None and idx >= len(env[n]))})
    if missing:
        raise MissingVariables(missing)
    groups: dict[str, list[str]] = {}
    for name, iterator, idx in accesses:
        if idx is None:
            key = f"@{iterator}" if iterator is not None else f"${name}"
            groups.setdefault(key, [])
            if name not in groups[key]:
                groups[key].append(name)
    keys = list(groups)
    ranges = [range(min(len(env[n]) for n in groups[k])) for k in keys]
    out = []
    for combo in itertools.product(*ranges):
        position = dict(zip(keys, combo))
        attrs = {}
        for attr, (value, neg) in rule.attrs.items():
            m = model._VAR_ACCESS.match(value)
            if m:
                name, at, num = m.groups()
                if num is not None and not at:
                    value = env[name][int(num)]
                else:
                    value = env[name][position[f"@{num}" if at else f"${name}"]]
            attrs[attr] = (value, neg)
        out.append(attrs)
    return out


def _checked(rule: Rule, attrs: dict[str, tuple[str, bool]]) -> dict[str, tuple[str, bool]]:
    """Values that came from variables, checked against their attribute's type."""
    kinds = dict(model.PROTOCOLS[rule.protocol]) if rule.protocol else {}
    out = {}
    for attr, (value, neg) in attrs.items():
        canon = model.canonical(kinds[attr], value)
        if canon is None:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"{attr} has illegal value {value}")
        out[attr] = (canon, neg)
    return out


# ------------------------------------------------------------------ matches
def _num(value: str) -> int:
    return int(value, 0)


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def _op(neg: bool) -> str:
    return "!= " if neg else ""


def _mac_match(field_: str, attrs: dict, addr: str, mask: str) -> list[str]:
    if addr not in attrs:
        return []
    value, neg = attrs[addr]
    if mask in attrs:
        bits = _mac_int(attrs[mask][0])
        masked = f"{_mac_int(value) & bits:012x}"
        masked = ":".join(masked[i:i + 2] for i in range(0, 12, 2))
        return [f"{field_} & {attrs[mask][0]} {'!=' if neg else '=='} {masked}"]
    return [f"{field_} {_op(neg)}{value}"]


def _raw(offset: int, bits: int, value: int, neg: bool, mask: int | None = None) -> str:
    if mask is not None:
        return f"@ll,{offset},{bits} & 0x{mask:x} {'!=' if neg else '=='} 0x{value & mask:x}"
    return f"@ll,{offset},{bits} {_op(neg)}0x{value:x}"


def _prefix_mask(length: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)


def _ip_match(field_: str, attrs: dict, addr: str, mask: str) -> list[str]:
    if addr not in attrs:
        return []
    value, neg = attrs[addr]
    if mask in attrs:
        net = ipaddress.ip_network(f"{value}/{attrs[mask][0]}", strict=False)
        return [f"{field_} {_op(neg)}{net}"]
    return [f"{field_} {_op(neg)}{value}"]


def _range(attrs: dict, start: str, end: str) -> tuple[str, bool] | None:
    if start not in attrs:
        return None
    value, neg = attrs[start]
    if end in attrs:
        return f"{_num(value)}-{_num(attrs[end][0])}", neg
    return str(_num(value)), neg


def _ports(proto: str, attrs: dict) -> list[str]:
    out = []
    for side in ("src", "dst"):
        rng = _range(attrs, f"{side}portstart", f"{side}portend")
        if rng:
            out.append(f"{proto} {side[0]}port {_op(rng[1])}{rng[0]}")
    return out


def _l2_matches(proto: str | None, attrs: dict) -> list[str]:
    """nft expressions for a layer-2 (ebtables-level) rule."""
    if proto is None:
        return []
    m: list[str] = []
    m += _mac_match("ether saddr", attrs, "srcmacaddr", "srcmacmask")
    m += _mac_match("ether daddr", attrs, "dstmacaddr", "dstmacmask")
    if proto == "mac":
        if "protocolid" in attrs:
            value, neg = attrs["protocolid"]
            number = model.ETHER_TYPES.get(value) or _num(value)
            m.append(f"ether type {_op(neg)}0x{number:04x}")
    elif proto == "vlan":
        m.append("ether type 0x8100")
        if "vlanid" in attrs:
            m.append(f"vlan id {_op(attrs['vlanid'][1])}{_num(attrs['vlanid'][0])}")
        if "encap-protocol" in attrs:
            value, neg = attrs["encap-protocol"]
            m.append(f"vlan type {_op(neg)}0x{model.ETHER_TYPES.get(value) or _num(value):04x}")
    elif proto == "stp":
        m.append("ether daddr 01:80:c2:00:00:00")
        for name, (offset, bits) in _STP_FIELDS.items():
            if name not in attrs:
                continue
            value, neg = attrs[name]
            if bits == 48:
                mask = attrs.get(name + "-mask")
                m.append(_raw(offset, bits, _mac_int(value), neg,
                              _mac_int(mask[0]) if mask else None))
            elif name + "-hi" in attrs:
                m.append(f"@ll,{offset},{bits} {_op(neg)}{_num(value)}-"
                         f"{_num(attrs[name + '-hi'][0])}")
            else:
                m.append(_raw(offset, bits, _num(value), neg))
    elif proto in ("arp", "rarp"):
        m.append("ether type 0x0806" if proto == "arp" else "ether type 0x8035")
        if "gratuitous" in attrs:
            raise _unsupported("<arp gratuitous>")
        for name, (offset, bits) in _ARP_FIELDS.items():
            if name not in attrs:
                continue
            value, neg = attrs[name]
            if name == "opcode":
                number = model.ARP_OPCODES.get(value) or _num(value)
                m.append(_raw(offset, bits, number, neg))
            elif bits == 48:
                m.append(_raw(offset, bits, _mac_int(value), neg))
            elif bits == 32:
                mask_attr = name.replace("addr", "mask")
                mask = (_prefix_mask(int(attrs[mask_attr][0]), 32) if mask_attr in attrs
                        else None)
                m.append(_raw(offset, bits, int(ipaddress.IPv4Address(value)), neg, mask))
            else:
                m.append(_raw(offset, bits, _num(value), neg))
    elif proto in ("ip", "ipv6"):
        fam = "ip" if proto == "ip" else "ip6"
        m.append("ether type 0x0800" if proto == "ip" else "ether type 0x86dd")
        m += _ip_match(f"{fam} saddr", attrs, "srcipaddr", "srcipmask")
        m += _ip_match(f"{fam} daddr", attrs, "dstipaddr", "dstipmask")
        l4 = None
        if "protocol" in attrs:
            value, neg = attrs["protocol"]
            number = model.IP_PROTOCOLS.get(value) or _num(value)
            m.append(f"meta l4proto {_op(neg)}{number}")
            l4 = {6: "tcp", 17: "udp", 132: "sctp"}.get(number) if not neg else None
        if any(p in attrs for p in ("srcportstart", "dstportstart")):
            m += _ports(l4 or "th", attrs)
        if "dscp" in attrs:
            m.append(f"{fam} dscp {_op(attrs['dscp'][1])}{_num(attrs['dscp'][0])}")
        for name, keyword in (("type", "type"), ("code", "code")):
            rng = _range(attrs, name, name + "end")
            if rng:
                m.append(f"icmpv6 {keyword} {_op(rng[1])}{rng[0]}")
    return m


def _l3_matches(proto: str, attrs: dict, swap: bool) -> list[str]:
    """nft expressions for a layer-3 (iptables-level) rule; ``swap`` for the companion."""
    if swap:
        attrs = {_SWAP.get(k, k): v for k, v in attrs.items() if k != "srcmacaddr"}
    v6 = proto.endswith("-ipv6") or proto == "icmpv6"
    base = proto.split("-")[0]
    fam = "ip6" if v6 else "ip"
    m = ["ether type 0x86dd" if v6 else "ether type 0x0800"]
    for name in ("state", "connlimit-above", "ipset", "option"):
        if name in attrs:
            raise _unsupported(f"<{proto} {name}>")
    m += _mac_match("ether saddr", attrs, "srcmacaddr", "none")
    m += _ip_match(f"{fam} saddr", attrs, "srcipaddr", "srcipmask")
    m += _ip_match(f"{fam} daddr", attrs, "dstipaddr", "dstipmask")
    for side in ("src", "dst"):
        if f"{side}ipfrom" in attrs:
            low, neg = attrs[f"{side}ipfrom"]
            high = attrs.get(f"{side}ipto", (low, neg))[0]
            m.append(f"{fam} {side[0]}addr {_op(neg)}{low}-{high}")
    if "dscp" in attrs:
        m.append(f"{fam} dscp {_op(attrs['dscp'][1])}{_num(attrs['dscp'][0])}")
    if base != "all":
        m.append(f"meta l4proto {_L3_PROTO[base]}")
    if base in _PORT_PROTOS:
        m += _ports(base, attrs)
    if base in ("icmp", "icmpv6"):
        for name in ("type", "code"):
            if name in attrs:
                m.append(f"{base} {name} {_op(attrs[name][1])}{_num(attrs[name][0])}")
    if "flags" in attrs:
        value, neg = attrs["flags"]
        mask, setting = (_tcp_flags(half) for half in value.split("/"))
        m.append(f"tcp flags & {mask} {'!=' if neg else '=='} {setting}")
    return m


def _tcp_flags(words: str) -> str:
    names = ["syn", "ack", "urg", "psh", "fin", "rst"]
    chosen = set(names) if "ALL" in words.split(",") else \
        {w.lower() for w in words.split(",") if w not in ("NONE", "")}
    picked = [n for n in names if n in chosen]
    return f"({'|'.join(picked)})" if picked else "0x0"


# ------------------------------------------------------------------ instantiation
@dataclass
class Chains:
    """The rules of one binding: chain name -> [(priority, seq, nft rule text)]."""
    root: dict[str, list] = field(default_factory=lambda: {"I": [], "O": []})
    sub: dict[tuple[str, str], list] = field(default_factory=dict)   # (I|O, chain) -> rules
    sub_priority: dict[str, int] = field(default_factory=dict)       # chain -> priority
    l3: dict[str, list] = field(default_factory=lambda: {"FI": [], "FO": []})
    seq: itertools.count = field(default_factory=itertools.count)
    used: set[str] = field(default_factory=set)                      # filters instantiated
    rejects: int = 0                                                 # reject rules (drop)


def instantiate(binding: BindingDef, filters: dict[str, FilterDef],
                learned_ip: list[str] | None = None) -> Chains:
    """Expand the binding's filter tree into chains, as libvirt's instantiation does.

    The binding's parameters override those a <filterref> inside a filter
    passes down.  ``MAC`` defaults to the binding's MAC, ``IP`` to
    ``learned_ip``.  Raises VirError: a missing filter ("referenced filter
    'X' is missing"), variables without values.
    """
    env: dict[str, list[str]] = {}
    for name, value in binding.params:
        env.setdefault(name, []).append(value)
    env.setdefault("MAC", [binding.mac])
    if learned_ip:
        env.setdefault("IP", list(learned_ip))
    chains = Chains()
    _expand(binding.filter, env, filters, chains, [])
    return chains


def _expand(name: str, env: dict[str, list[str]], filters: dict[str, FilterDef],
            chains: Chains, stack: list[str]) -> None:
    fdef = filters.get(name)
    if fdef is None:
        raise _err(P.VIR_ERR_INTERNAL_ERROR, f"referenced filter '{name}' is missing")
    if name in stack:
        raise _err(P.VIR_ERR_OPERATION_FAILED, "filter would introduce a loop")
    chains.used.add(name)
    for entry in fdef.entries:
        if isinstance(entry, FilterRef):
            inner: dict[str, list[str]] = {}
            for pname, value in entry.params:
                inner.setdefault(pname, []).append(value)
            inner.update(env)
            _expand(entry.filter, inner, filters, chains, [*stack, name])
            continue
        try:
            bound = bind_variables(entry, env)
        except MissingVariables as exc:
            raise Unresolved(exc.names) from None
        for attrs in bound:
            _place(fdef, entry, _checked(entry, attrs), chains)


def learning_chains(from_guest: list[str], to_guest: list[str]) -> Chains:
    """The chains of a port whose address is being learned (rules from learn.py)."""
    chains = Chains()
    for side, rules in (("I", from_guest), ("O", to_guest)):
        chains.root[side] = [(0, next(chains.seq), text) for text in rules]
    return chains


def _place(fdef: FilterDef, rule: Rule, attrs: dict, chains: Chains) -> None:
    verdict = _VERDICT[rule.action]
    chains.rejects += rule.action == "reject"
    seq = next(chains.seq)
    if rule.protocol is not None and rule.protocol not in model.L2_PROTOCOLS:
        sides = {"out": [("FI", False), ("FO", True)], "in": [("FO", False), ("FI", True)],
                 "inout": [("FO", False), ("FI", True)]}[rule.direction]
        for side, swap in sides:
            if swap and rule.protocol in ("icmp", "icmpv6") and \
                    ("type" in attrs or "code" in attrs):
                continue    # a reply has another ICMP type: nothing to mirror statelessly
            text = " ".join([*_l3_matches(rule.protocol, attrs, swap), verdict])
            chains.l3[side].append((rule.priority, seq, text))
        return
    text = " ".join([*_l2_matches(rule.protocol, attrs), verdict])
    sides = {"out": ["I"], "in": ["O"], "inout": ["I", "O"]}[rule.direction]
    for side in sides:
        if fdef.chain == "root":
            chains.root[side].append((rule.priority, seq, text))
        else:
            chains.sub_priority.setdefault(fdef.chain, fdef.priority)
            chains.sub.setdefault((side, fdef.chain), []).append((rule.priority, seq, text))


def binding_script(dev: str, chains: Chains) -> list[str]:
    """nft commands (after the table and base chains exist) for one binding."""
    t = f"{FAMILY} {TABLE}"
    d = chain_id(dev)
    lines = []
    for side, base, hook_if in (("I", "l2-from", "iifname"), ("O", "l2-to", "oifname")):
        root = f"{side}-{d}"
        lines.append(f"add chain {t} {root}")
        entries = [(prio, 1, seq, rule) for prio, seq, rule in chains.root[side]]
        for chain, prio in chains.sub_priority.items():
            rules = sorted(chains.sub.get((side, chain), []))
            if not rules:
                continue
            sub = f"{root}-{chain_id(chain)}"
            lines.append(f"add chain {t} {sub}")
            lines += [f"add rule {t} {sub} {text}" for _p, _s, text in rules]
            match = _CHAIN_MATCH[model.chain_prefix(chain)]
            entries.append((prio, 0, -1, f"{match} jump {sub}".strip()))
        lines += [f"add rule {t} {root} {text}" for *_k, text in sorted(entries)]
        lines.append(f'add rule {t} {base} {hook_if} "{dev}" jump {root}')
    for side, base, hook_if in (("FI", "l3-from", "iifname"), ("FO", "l3-to", "oifname")):
        rules = sorted(chains.l3[side])
        if not rules:
            continue
        name = f"{side}-{d}"
        lines.append(f"add chain {t} {name}")
        lines += [f"add rule {t} {name} {text}" for _p, _s, text in rules]
        lines.append(f'add rule {t} {base} {hook_if} "{dev}" jump {name}')
    return lines


def table_script(per_binding: dict[str, Chains]) -> str:
    """The nft transaction that replaces pyvirtd's filter table by these bindings' rules."""
    t = f"{FAMILY} {TABLE}"
    lines = [f"add table {t}", f"delete table {t}"]
    if per_binding:
        lines.append(f"add table {t}")
        for name, hook, prio in (("l2-from", "prerouting", -300), ("l2-to", "postrouting", -300),
                                 ("l3-from", "prerouting", -250), ("l3-to", "postrouting", -250)):
            lines.append(f"add chain {t} {name} {{ type filter hook {hook} priority {prio}; "
                         f"policy accept; }}")
        for dev in sorted(per_binding):
            lines += binding_script(dev, per_binding[dev])
    return "\n".join(lines) + "\n"


async def apply(script: str) -> None:
    """Run an nft transaction (all or nothing)."""
    try:
        res = await trio.run_process(["nft", "-f", "-"], stdin=script.encode(),
                                     capture_stdout=True, capture_stderr=True, check=False)
    except FileNotFoundError:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       "Cannot find 'nft' in path: No such file or directory",
                       domain=P.VIR_FROM_FIREWALL) from None
    if res.returncode:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"Failed to apply firewall rules nft -f -: "
                       f"{res.stderr.decode(errors='replace').strip()}",
                       domain=P.VIR_FROM_FIREWALL)
