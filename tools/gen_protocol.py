#!/usr/bin/env python3
"""Generate pyvirtd/rpc/_generated.py from the libvirt protocol facts (libvirt-rpc.json).

Usage: gen_protocol.py PROTOCOL_JSON OUTPUT_PY

The JSON (../shared/reference/libvirt-rpc.json) stays outside the project; only
the generated module is committed.  For every XDR struct and union the output
has a namedtuple type plus ``pack_NAME(value, out)`` / ``unpack_NAME(buf, off)``
functions.  Runs of fixed-size fields are folded into one precompiled
``struct.Struct`` so that a typical call body costs one or two C calls; limits
(string and list maxima) are checked on decode, where the input is untrusted.

Two more sections come from tools/libvirt_api.json (libvirt's public headers,
extracted by tools/gen_libvirt_api.py and committed so every machine generates
the same module):

- every C enum of the headers as a class: ``enum.IntFlag`` for flag sets,
  ``enum.IntEnum`` otherwise.  The class is named after the C typedef without
  its ``vir`` prefix and its members keep their full C names, so a constant is
  found by its libvirt name: virDomainState -> ``DomainState.VIR_DOMAIN_RUNNING``,
  virDomainXMLFlags -> ``DomainXMLFlags.VIR_DOMAIN_XML_SECURE``.
- each ``Procedure`` row (written with keyword fields) carries the libvirt
  function behind it (``api_name``: the exported symbol whose name matches the
  procedure's, ignoring case and underscores, or the one table of irregular
  names, API_NAME_IRREGULAR) and the error domain that function reports in
  (``error_domain``, from the header that declares it).
"""

from __future__ import annotations

import json
import keyword
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# XDR primitive type -> struct format character.  char/short are widened to
# 4 bytes by rpcgen (libvirt-rpc.md, section 2 "Gotcha").
PRIMITIVE_FORMATS = {
    "int": "i", "unsigned int": "I", "hyper": "q", "unsigned hyper": "Q",
    "float": "f", "double": "d", "bool": "i",
    "char": "i", "short": "i", "unsigned char": "I", "unsigned short": "I",
}
FORMAT_SIZES = {"i": 4, "I": 4, "q": 8, "Q": 8, "f": 4, "d": 8}
BYTE_ELEMENTS = {"char", "unsigned char"}
UNBOUNDED = 0xFFFFFFFF
LIBVIRT_API_JSON = Path(__file__).with_name("libvirt_api.json")

# Permissions that only look at state.  A procedure whose every ACL permission
# is one of these is allowed on a read-only connection; libvirt refuses all
# others with VIR_ERR_OPERATION_DENIED (virCheckReadOnlyGoto in src/libvirt-*.c).
READ_ONLY_PERMISSIONS = re.compile(r"^(getattr|read|search_\w+)$")

# A permission with a flag condition ("domain:read_secure:VIR_DOMAIN_XML_SECURE")
# applies only when the call sets that flag.  libvirt refuses a read-only
# connection on these flags alone, in the public API (virDomainGetXMLDesc "with
# secure flag", virDomainGetVcpusFlags with VCPU_GUEST); other flag conditions
# (VIR_DOMAIN_XML_MIGRATABLE) are left to the ACL and pass.  Their values come
# from the public headers (libvirt_api.json).
READ_ONLY_DENIED_FLAGS = (
    "VIR_DOMAIN_XML_SECURE", "VIR_DOMAIN_SNAPSHOT_XML_SECURE",
    "VIR_DOMAIN_CHECKPOINT_XML_SECURE", "VIR_DOMAIN_SAVE_IMAGE_XML_SECURE",
    "VIR_DOMAIN_VCPU_GUEST",
)


def header_constant(name: str) -> int:
    """The value of a C enum member of libvirt's public headers."""
    if not _HEADER_CONSTANTS:
        api = json.loads(LIBVIRT_API_JSON.read_text())
        for e in api["enums"].values():
            _HEADER_CONSTANTS.update(e["members"])
    return _HEADER_CONSTANTS[name]


_HEADER_CONSTANTS: dict[str, int] = {}


# ---------------------------------------------------------------- type model

@dataclass(frozen=True)
class Prim:
    fmt: str


@dataclass(frozen=True)
class String:
    max: int


@dataclass(frozen=True)
class Opaque:
    size: int | None  # fixed size, or None for variable
    max: int = UNBOUNDED


@dataclass(frozen=True)
class ByteArray:
    """A char[] / char<> array: one 4-byte word per byte, exposed as ``bytes``."""
    size: int | None
    max: int = UNBOUNDED


@dataclass(frozen=True)
class Named:
    name: str


@dataclass(frozen=True)
class Optional_:
    inner: object


@dataclass(frozen=True)
class Array:
    inner: object
    size: int | None
    max: int = UNBOUNDED


class Model:
    """Resolves the JSON's type names (typedefs, enums, structs) to the nodes above."""

    def __init__(self, facts: dict) -> None:
        self.facts = facts
        self.enums = set(facts["enums"])
        self.structs = facts["structs"]
        self.unions = facts["unions"]
        self.typedefs = facts["typedefs"]

    def base(self, type_name: str):
        if type_name in PRIMITIVE_FORMATS:
            return Prim(PRIMITIVE_FORMATS[type_name])
        if type_name in self.enums:
            return Prim("i")
        if type_name in self.structs or type_name in self.unions:
            return Named(type_name)
        if type_name in self.typedefs:
            return self.field(self.typedefs[type_name])
        raise KeyError(f"unknown XDR type {type_name!r}")

    def field(self, f: dict):
        """Resolve a field or typedef declaration (type plus array/optional marks)."""
        t = f["type"]
        array = f.get("array")
        size = f.get("size_value")
        limit = f.get("max_value", UNBOUNDED)
        if t == "string":
            node = String(limit)
        elif t == "opaque":
            node = Opaque(size if array == "fixed" else None, limit)
        elif array and t in BYTE_ELEMENTS:
            node = ByteArray(size if array == "fixed" else None, limit)
        elif array:
            node = Array(self.base(t), size if array == "fixed" else None, limit)
        else:
            node = self.base(t)
        if f.get("optional"):
            node = Optional_(node)
        return node


def py_name(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) else name


# ------------------------------------------------------------ code emitter

@dataclass
class Emitter:
    structs_used: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    def tmp(self, stem: str = "t") -> str:
        self.counter += 1
        return f"_{stem}{self.counter}"

    def struct_const(self, fmt: str) -> str:
        name = "_S_" + fmt
        self.structs_used[name] = ">" + fmt
        return name

    # ---- packing: append code that writes `expr` to `out`
    def pack(self, node, expr: str, ind: str) -> list[str]:
        if isinstance(node, Prim):
            return [f"{ind}out += {self.struct_const(node.fmt)}.pack({expr})"]
        if isinstance(node, String):
            t = self.tmp("b")
            return [f"{ind}{t} = {expr}.encode('utf-8', 'surrogateescape')",
                    f"{ind}out += _U32.pack(len({t})); out += {t}; out += PAD[len({t}) & 3]"]
        if isinstance(node, Opaque):
            if node.size is not None:
                pad = (-node.size) % 4
                t = self.tmp()
                # the common case (exactly the right length) appends without copying
                lines = [f"{ind}{t} = {expr}",
                         f"{ind}out += {t} if len({t}) == {node.size} "
                         f"else bytes({t})[:{node.size}].ljust({node.size}, b'\\0')"]
                if pad:
                    lines.append(f"{ind}out += {bytes(pad)!r}")
                return lines
            t = self.tmp("b")
            return [f"{ind}{t} = {expr}",
                    f"{ind}out += _U32.pack(len({t})); out += {t}; out += PAD[len({t}) & 3]"]
        if isinstance(node, ByteArray):
            t = self.tmp("b")
            if node.size is not None:
                return [f"{ind}{t} = bytes({expr})[:{node.size}].ljust({node.size}, b'\\0')",
                        f"{ind}out += struct.pack('>{node.size}I', *{t})"]
            return [f"{ind}{t} = bytes({expr})",
                    f"{ind}out += _U32.pack(len({t})); out += struct.pack('>%dI' % len({t}), *{t})"]
        if isinstance(node, Named):
            return [f"{ind}pack_{node.name}({expr}, out)"]
        if isinstance(node, Optional_):
            t = self.tmp()
            return ([f"{ind}{t} = {expr}",
                     f"{ind}if {t} is None:",
                     f"{ind}    out += b'\\0\\0\\0\\0'",
                     f"{ind}else:",
                     f"{ind}    out += b'\\0\\0\\0\\1'"]
                    + self.pack(node.inner, t, ind + "    "))
        if isinstance(node, Array):
            t = self.tmp()
            lines = [f"{ind}{t} = {expr}"]
            if node.size is None:
                lines.append(f"{ind}out += _U32.pack(len({t}))")
            if isinstance(node.inner, Prim):
                fmt = node.inner.fmt
                if node.size is None:
                    lines.append(f"{ind}out += struct.pack('>%d{fmt}' % len({t}), *{t})")
                else:
                    lines.append(f"{ind}out += struct.pack('>{node.size}{fmt}', *{t})")
                return lines
            e = self.tmp("e")
            lines.append(f"{ind}for {e} in {t}:")
            lines += self.pack(node.inner, e, ind + "    ")
            return lines
        raise TypeError(node)

    # ---- unpacking: code that sets `target` from `b` at offset `o`
    def unpack(self, node, target: str, ind: str, what: str) -> list[str]:
        if isinstance(node, Prim):
            s = self.struct_const(node.fmt)
            return [f"{ind}{target}, = {s}.unpack_from(b, o); o += {FORMAT_SIZES[node.fmt]}"]
        if isinstance(node, String):
            n, e = self.tmp("n"), self.tmp("end")
            return [f"{ind}{n}, = _U32.unpack_from(b, o); o += 4",
                    f"{ind}if {n} > {node.max}: raise XdrError('{what}: string of %d bytes exceeds {node.max}' % {n})",
                    f"{ind}{e} = o + {n}",
                    f"{ind}if {e} > len(b): raise XdrError('{what}: truncated string')",
                    f"{ind}{target} = str(b[o:{e}], 'utf-8'); o = {e} + (-{n} & 3)"]
        if isinstance(node, Opaque):
            if node.size is not None:
                return [f"{ind}if o + {node.size} > len(b): raise XdrError('{what}: truncated')",
                        f"{ind}{target} = bytes(b[o:o + {node.size}]); o += {node.size + (-node.size % 4)}"]
            n = self.tmp("n")
            return [f"{ind}{n}, = _U32.unpack_from(b, o); o += 4",
                    f"{ind}if {n} > {node.max}: raise XdrError('{what}: %d bytes exceed {node.max}' % {n})",
                    f"{ind}if o + {n} > len(b): raise XdrError('{what}: truncated')",
                    f"{ind}{target} = bytes(b[o:o + {n}]); o += {n} + (-{n} & 3)"]
        if isinstance(node, ByteArray):
            if node.size is not None:
                return [f"{ind}{target} = bytes(x & 0xFF for x in struct.unpack_from('>{node.size}i', b, o)); o += {4 * node.size}"]
            n = self.tmp("n")
            return [f"{ind}{n}, = _U32.unpack_from(b, o); o += 4",
                    f"{ind}if {n} > {node.max}: raise XdrError('{what}: %d bytes exceed {node.max}' % {n})",
                    f"{ind}{target} = bytes(x & 0xFF for x in struct.unpack_from('>%di' % {n}, b, o)); o += 4 * {n}"]
        if isinstance(node, Named):
            return [f"{ind}{target}, o = unpack_{node.name}(b, o)"]
        if isinstance(node, Optional_):
            flag = self.tmp("f")
            return ([f"{ind}{flag}, = _U32.unpack_from(b, o); o += 4",
                     f"{ind}if {flag} == 1:"]
                    + self.unpack(node.inner, target, ind + "    ", what)
                    + [f"{ind}elif {flag} == 0:",
                       f"{ind}    {target} = None",
                       f"{ind}else:",
                       f"{ind}    raise XdrError('{what}: bad optional flag %d' % {flag})"])
        if isinstance(node, Array):
            lines = []
            if node.size is None:
                n = self.tmp("n")
                lines += [f"{ind}{n}, = _U32.unpack_from(b, o); o += 4",
                          f"{ind}if {n} > {node.max}: raise XdrError('{what}: %d items exceed {node.max}' % {n})",
                          # every element takes at least 4 bytes: refuse counts the buffer cannot hold
                          f"{ind}if 4 * {n} > len(b) - o: raise XdrError('{what}: truncated list')"]
            else:
                n = str(node.size)
            if isinstance(node.inner, Prim):
                fmt = node.inner.fmt
                size = FORMAT_SIZES[fmt]
                lines += [f"{ind}{target} = list(struct.unpack_from('>%d{fmt}' % {n}, b, o)); o += {size} * {n}"]
                return lines
            e = self.tmp("e")
            lines += [f"{ind}{target} = []", f"{ind}for _ in range({n}):"]
            lines += self.unpack(node.inner, e, ind + "    ", what)
            lines += [f"{ind}    {target}.append({e})"]
            return lines
        raise TypeError(node)


def fold_fields(model: Model, fields: list[dict]) -> list[tuple[list[int], object]]:
    """Group consecutive fixed-size primitive fields so each run is one struct call."""
    groups: list[tuple[list[int], object]] = []
    for i, f in enumerate(fields):
        node = model.field(f)
        if isinstance(node, Prim) and groups and isinstance(groups[-1][1], str):
            groups[-1][0].append(i)
            groups[-1] = (groups[-1][0], groups[-1][1] + node.fmt)
        elif isinstance(node, Prim):
            groups.append(([i], node.fmt))
        else:
            groups.append(([i], node))
    return groups


def gen_struct(model: Model, em: Emitter, name: str, s: dict) -> list[str]:
    fields = s["fields"]
    names = [py_name(f["name"]) for f in fields]
    out = [f"{name} = _nt({name!r}, {' '.join(names)!r})", ""]
    # pack
    out.append(f"def pack_{name}(v, out):")
    body = []
    for idx, node in fold_fields(model, fields):
        if isinstance(node, str):
            args = ", ".join(f"v[{i}]" for i in idx)
            body.append(f"    out += {em.struct_const(node)}.pack({args})")
        else:
            body += em.pack(node, f"v[{idx[0]}]", "    ")
    out += body or ["    pass"]
    out.append("")
    # unpack
    out.append(f"def unpack_{name}(b, o):")
    body = []
    for idx, node in fold_fields(model, fields):
        if isinstance(node, str):
            targets = ", ".join(f"f{i}" for i in idx)
            size = sum(FORMAT_SIZES[c] for c in node)
            comma = "," if len(idx) == 1 else ""
            body.append(f"    {targets}{comma} = {em.struct_const(node)}.unpack_from(b, o); o += {size}")
        else:
            body += em.unpack(node, f"f{idx[0]}", "    ", f"{name}.{fields[idx[0]]['name']}")
    values = ", ".join(f"f{i}" for i in range(len(fields)))
    body.append(f"    return _new({name}, ({values}{',' if len(fields) == 1 else ''})), o")
    out += body
    out.append("")
    return out


def gen_union(model: Model, em: Emitter, name: str, u: dict) -> list[str]:
    disc = model.base(u["discriminant"]["type"])
    assert isinstance(disc, Prim)
    dfmt = em.struct_const(disc.fmt)
    out = [f"{name} = _nt({name!r}, 'type value')", ""]
    out.append(f"def pack_{name}(v, out):")
    out.append(f"    d = v[0]; out += {dfmt}.pack(d)")
    kw = "if"
    for arm in u["arms"]:
        cond = " or ".join(f"d == {c}" for c in arm["case_values"])
        out.append(f"    {kw} {cond}:")
        out += em.pack(model.field(arm), "v[1]", "        ") if arm.get("type") != "void" else ["        pass"]
        kw = "elif"
    out.append("    else:")
    out.append(f"        raise XdrError('{name}: bad discriminant %r' % (d,))")
    out.append("")
    out.append(f"def unpack_{name}(b, o):")
    out.append(f"    d, = {dfmt}.unpack_from(b, o); o += 4")
    kw = "if"
    for arm in u["arms"]:
        cond = " or ".join(f"d == {c}" for c in arm["case_values"])
        out.append(f"    {kw} {cond}:")
        if arm.get("type") == "void":
            out.append("        val = None")
        else:
            out += em.unpack(model.field(arm), "val", "        ", f"{name}.{arm['name']}")
        kw = "elif"
    out.append("    else:")
    out.append(f"        raise XdrError('{name}: bad discriminant %d' % d)")
    out.append(f"    return _new({name}, (d, val)), o")
    out.append("")
    return out


def method_name(program: str, short_name: str) -> str:
    """Handler name of a procedure: DOMAIN_GET_INFO -> domain_get_info.

    The qemu and lxc programs reuse names that could meet remote's, so their
    methods carry the program: QEMU DOMAIN_MONITOR_COMMAND -> qemu_domain_monitor_command.
    """
    name = short_name.lower()
    return f"{program}_{name}" if program in ("qemu", "lxc") else name


def read_only_access(acl: tuple[str, ...]) -> tuple[bool, int]:
    """(allowed on a read-only connection, flags that still forbid it there).

    ACL entries are "object:permission" or "object:permission:CONDITION".  A
    condition that is a set of flags ("F1|F2") makes a non-read-only permission
    matter only when the call sets one of those flags; negated ("!F") and
    parameter conditions ("::source:VALUE") count as unconditional, to be safe.
    """
    allowed, deny_flags = True, 0
    for entry in acl:
        parts = entry.split(":", 2)
        if len(parts) < 2 or READ_ONLY_PERMISSIONS.match(parts[1]):
            continue
        cond = parts[2] if len(parts) == 3 else ""
        if cond and re.fullmatch(r"[A-Z0-9_]+(\|[A-Z0-9_]+)*", cond):
            for flag in cond.split("|"):
                if flag in READ_ONLY_DENIED_FLAGS:
                    deny_flags |= header_constant(flag)
        else:
            allowed = False
    return allowed, deny_flags


def gen_procedures(facts: dict, api: dict) -> list[str]:
    """The PROCEDURES table: one ``Procedure(...)`` row per procedure, keyword fields."""
    structs = facts["structs"]
    out = ["PROCEDURES = ("]
    for p in facts["procedures"]:
        ann = p["annotations"]
        acl = tuple(ann.get("acl", ()))
        readonly, readonly_deny_flags = read_only_access(acl)
        fds = p.get("fd_passing") or {}
        ret_fields = len(structs[p["ret"]]["fields"]) if p["ret"] else 0

        def fn(kind: str, struct_name: str | None) -> str:
            return f"{kind}_{struct_name}" if struct_name else "None"

        function = api_name(p, api["functions"])
        fields = [
            ("program", repr(p["program"])), ("prog", str(p["program_number"])),
            ("number", str(p["number"])), ("name", repr(p["short_name"])),
            ("method", repr(method_name(p["program"], p["short_name"]))),
            ("api_name", repr(function)),
            ("error_domain", error_domain(p, function, api["functions"])),
            ("kind", repr(p["kind"])),
            ("unpack_args", fn("unpack", p["args"])), ("pack_args", fn("pack", p["args"])),
            ("pack_ret", fn("pack", p["ret"])), ("unpack_ret", fn("unpack", p["ret"])),
            ("ret_fields", str(ret_fields)),
            ("pack_msg", fn("pack", p["msg"])), ("unpack_msg", fn("unpack", p["msg"])),
            ("high_priority", str(p.get("priority") == "high")),
            ("readonly_ok", str(readonly)), ("acl", repr(acl)),
            ("aclfilter", repr(tuple(ann.get("aclfilter", ())))),
            ("stream", repr(p.get("stream"))),
            ("fds_in", str(bool(fds.get("fds_in")))), ("fds_out", str(bool(fds.get("fds_out")))),
        ]
        if readonly_deny_flags:
            fields.append(("readonly_deny_flags", str(readonly_deny_flags)))
        out.append("    Procedure(" + ", ".join(f"{k}={v}" for k, v in fields) + "),")
    out.append(")")
    return out


# Sizes a client chooses and the daemon allocates by (libvirt checks them in
# src/remote/remote_daemon_dispatch.c before it allocates).  Most follow from
# the names: a ``max*`` count or ``nparams`` is bounded by the first array of
# the reply it fills.  These are the ones the names do not give: products of
# two fields, and bounds taken from another array.  (fields, limit constant,
# message); a list-valued field counts by its length.
EXTRA_ARG_LIMITS = {
    "DOMAIN_GET_VCPUS": [(("maxinfo", "maplen"), "REMOTE_CPUMAPS_MAX",
                          "maxinfo * maplen > REMOTE_CPUMAPS_MAX")],
    "DOMAIN_GET_VCPU_PIN_INFO": [(("ncpumaps",), "REMOTE_VCPUINFO_MAX",
                                  "ncpumaps > REMOTE_VCPUINFO_MAX"),
                                 (("ncpumaps", "maplen"), "REMOTE_CPUMAPS_MAX",
                                  "maxinfo * maplen > REMOTE_CPUMAPS_MAX")],
    "DOMAIN_GET_EMULATOR_PIN_INFO": [(("maplen",), "REMOTE_CPUMAPS_MAX",
                                      "maplen > REMOTE_CPUMAPS_MAX")],
    "DOMAIN_GET_CPU_STATS": [(("ncpus",), "REMOTE_DOMAIN_GET_CPU_STATS_NCPUS_MAX",
                              "ncpus too large"),
                             (("nparams", "ncpus"), "REMOTE_DOMAIN_GET_CPU_STATS_MAX",
                              "nparams * ncpus too large")],
    "NODE_GET_FREE_PAGES": [(("pages", "cellCount"), "REMOTE_NODE_MAX_CELLS",
                             "the result won't fit")],
    "DOMAIN_BLOCK_PEEK": [(("size",), "REMOTE_DOMAIN_BLOCK_PEEK_BUFFER_MAX",
                           "size > maximum buffer size")],
    "DOMAIN_MEMORY_PEEK": [(("size",), "REMOTE_DOMAIN_MEMORY_PEEK_BUFFER_MAX",
                            "size > maximum buffer size")],
}
COUNT_FIELD = re.compile(r"^(max[A-Za-z]*|nparams)$")
# Calls whose libvirt function allocates the parameter list itself
# (virTypedParameterPtr *params): the daemon never reads their ``nparams``, and
# libvirt's client sends whatever its stack held there, so it is not bounded.
SERVER_SIZED = {"NETWORK_PORT_GET_PARAMETERS", "NODE_GET_SEV_INFO"}


def arg_limits(facts: dict, p: dict) -> list[tuple[tuple[str, ...], int, str, str]]:
    """The bounds on one call's client-chosen sizes: (fields, limit, error code, message).

    libvirt's generated dispatchers answer VIR_ERR_RPC ("maxnames >
    REMOTE_DOMAIN_LIST_MAX"); its hand-written ones VIR_ERR_INTERNAL_ERROR
    ("nparams too large"), so the code follows the procedure's @generate.
    """
    if p["kind"] != "call" or not p["args"] or not p["ret"]:
        return []
    structs, consts = facts["structs"], facts["constants"]
    generated = p["annotations"].get("generate") in ("both", "server")
    code = "VIR_ERR_RPC" if generated else "VIR_ERR_INTERNAL_ERROR"
    arrays = [f for f in structs[p["ret"]]["fields"] if f.get("array") == "variable"]
    out = []
    for f in structs[p["args"]]["fields"]:
        if "array" in f or f["type"] not in ("int", "unsigned int") or not arrays:
            continue
        name = f["name"]
        if not COUNT_FIELD.match(name) or p["short_name"] in SERVER_SIZED:
            continue
        limit = arrays[0]["max"]
        message = "nparams too large" if name == "nparams" else f"{name} > {limit}"
        out.append(((name,), consts[limit]["value"], code, message))
    for fields, limit, message in EXTRA_ARG_LIMITS.get(p["short_name"], ()):
        out.append((fields, consts[limit]["value"], "VIR_ERR_INTERNAL_ERROR", message))
    return out


def gen_arg_limits(facts: dict) -> list[str]:
    out = ["# Client-chosen sizes, checked before a handler runs: (program, procedure) ->",
           "# ArgLimit(fields, limit, code, message); see tools/gen_protocol.py arg_limits().",
           "ARG_LIMITS = {"]
    for p in facts["procedures"]:
        limits = arg_limits(facts, p)
        if limits:
            items = ", ".join(f"ArgLimit({fields!r}, {limit}, {code}, {message!r})"
                              for fields, limit, code, message in limits)
            out.append(f"    ({p['program']!r}, {p['number']}): ({items},),")
    out.append("}")
    return out


# ------------------------------------------------ libvirt API names and enums

# Procedures whose libvirt function is not spelt like the procedure.  Every
# other procedure's function is the exported symbol that equals "vir" (admin:
# "virAdm") plus its name, ignoring case and underscores (DOMAIN_GET_XML_DESC ->
# virDomainGetXMLDesc); tests/unit/test_api_names.py checks the result against
# the symbols libvirt.so really exports.
API_NAME_IRREGULAR = {
    ("remote", "CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY"): "virConnectDomainEventRegisterAny",
    ("remote", "CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY"): "virConnectDomainEventDeregisterAny",
    ("qemu", "DOMAIN_MONITOR_COMMAND"): "virDomainQemuMonitorCommand",
    ("qemu", "DOMAIN_MONITOR_COMMAND_WITH_FILES"): "virDomainQemuMonitorCommandWithFiles",
    ("qemu", "DOMAIN_ATTACH"): "virDomainQemuAttach",
    ("qemu", "DOMAIN_AGENT_COMMAND"): "virDomainQemuAgentCommand",
    ("qemu", "CONNECT_DOMAIN_MONITOR_EVENT_REGISTER"): "virConnectDomainQemuMonitorEventRegister",
    ("qemu", "CONNECT_DOMAIN_MONITOR_EVENT_DEREGISTER"):
        "virConnectDomainQemuMonitorEventDeregister",
    ("lxc", "DOMAIN_OPEN_NAMESPACE"): "virDomainLxcOpenNamespace",
}

# Calls between two daemons (migration) and the feature probe are libvirt's
# internal functions (libvirt_internal.h), exported only as private symbols:
# they are not in the public headers, but are spelt by plain capitalisation.
INTERNAL_API_PREFIXES = ("DOMAIN_MIGRATE_", "CONNECT_SUPPORTS_FEATURE")

# The error domain (VIR_FROM_THIS) of the libvirt source file that implements
# the functions of each public header; a call a driver lacks is refused there.
HEADER_ERROR_DOMAINS = {
    "libvirt-host": "VIR_FROM_DOMAIN", "libvirt-domain": "VIR_FROM_DOMAIN",
    "libvirt-qemu": "VIR_FROM_DOMAIN", "libvirt-lxc": "VIR_FROM_DOMAIN",
    "libvirt-domain-snapshot": "VIR_FROM_DOMAIN_SNAPSHOT",
    "libvirt-domain-checkpoint": "VIR_FROM_DOMAIN_CHECKPOINT",
    "libvirt-network": "VIR_FROM_NETWORK", "libvirt-storage": "VIR_FROM_STORAGE",
    "libvirt-secret": "VIR_FROM_SECRET", "libvirt-interface": "VIR_FROM_INTERFACE",
    "libvirt-nodedev": "VIR_FROM_NODEDEV", "libvirt-nwfilter": "VIR_FROM_NWFILTER",
    "libvirt-stream": "VIR_FROM_STREAMS", "libvirt-event": "VIR_FROM_EVENT",
    "libvirt-admin": "VIR_FROM_ADMIN",
}


def api_name(proc: dict, functions: dict[str, str]) -> str | None:
    """The libvirt function a call procedure serves, or None (events, authentication).

    ``functions`` are the public functions of the headers (libvirt_api.json).
    """
    if proc["kind"] != "call":
        return None
    short = proc["short_name"]
    irregular = API_NAME_IRREGULAR.get((proc["program"], short))
    if irregular is not None:
        return irregular
    prefix = "virAdm" if proc["program"] == "admin" else "vir"
    key = (prefix + short.replace("_", "")).lower()
    for function in functions:
        if function.lower() == key:
            return function
    if proc["program"] == "remote" and short.startswith(INTERNAL_API_PREFIXES):
        return prefix + "".join(word.capitalize() for word in short.split("_"))
    if short.startswith("AUTH_"):
        return None   # the daemon's own handshake: no libvirt function behind it
    raise ValueError(f"{proc['name']}: no libvirt function found; add it to API_NAME_IRREGULAR")


def error_domain(proc: dict, function: str | None, functions: dict[str, str]) -> str:
    """The VIR_FROM_* a refusal of this procedure carries, as a generated constant name."""
    header = functions.get(function or "")
    if header is not None:
        return HEADER_ERROR_DOMAINS[header]
    if proc["program"] == "admin":
        return "VIR_FROM_ADMIN"
    if function is not None:       # the internal migration calls live in libvirt-domain.c
        return "VIR_FROM_DOMAIN"
    return "VIR_FROM_NONE"


def gen_libvirt_enums(api: dict) -> list[str]:
    """Every C enum of libvirt's public headers as an IntFlag/IntEnum class."""
    out = [f"# ---- C enums of libvirt {api['libvirt_version']}'s public headers "
           "(tools/libvirt_api.json)", ""]
    for typedef, e in api["enums"].items():
        base = "_enum.IntFlag" if e["flags"] else "_enum.IntEnum"
        out.append(f"class {typedef.removeprefix('vir')}({base}):")
        out.append(f"    \"\"\"{typedef} (include/libvirt/{e['header']}.h).\"\"\"")
        out += [f"    {name} = {value}" for name, value in e["members"]]
        out += ["", ""]
    return out


def gen_constants(facts: dict) -> list[str]:
    out = ["# ---- constants (XDR constants, enums, and the C enums clients see)"]
    seen: set[str] = set()

    def const(name: str, value: int) -> None:
        if name not in seen:
            seen.add(name)
            out.append(f"{name} = {value}")

    for name, c in sorted(facts["constants"].items()):
        const(name, c["value"])
    for name, c in sorted(facts["external_constants"].items()):
        const(name, c["value"])
    for enum in facts["enums"].values():
        for v in enum["values"]:
            const(v["name"], v["value"])
    for enum in facts["c_enums"].values():
        for v in enum["values"]:
            const(v["name"], v["value"])
    out.append("")
    out.append("# Event ids -> (callback procedure, legacy procedure) per object kind.")
    out.append("EVENT_PROCEDURES = {")
    for kind, events in facts["event_ids"].items():
        items = ", ".join(
            f"{e['event_id']}: ({e['callback_procedure']!r}, {e.get('legacy_procedure')!r})"
            for e in events)
        out.append(f"    {kind!r}: {{{items}}},")
    out.append("}")
    out.append("")
    out.append("PROGRAMS = {")
    for name, prog in facts["programs"].items():
        out.append(f"    {name!r}: ({prog['program']}, {prog['version']}),")
    out.append("}")
    return out


def generate(facts: dict, api: dict) -> str:
    model = Model(facts)
    em = Emitter()
    body: list[str] = []
    for item in facts["definition_order"]:
        kind, name = item["kind"], item["name"]
        if kind == "struct":
            body += gen_struct(model, em, name, facts["structs"][name])
        elif kind == "union":
            body += gen_union(model, em, name, facts["unions"][name])
    header = [
        f'"""libvirt {facts["libvirt_version"]} wire protocol: types, codecs and procedure table.',
        "",
        "Code generated by tools/gen_protocol.py from libvirt-rpc.json. DO NOT EDIT.",
        "Regenerate with `make gen`.",
        '"""',
        "# fmt: off",
        "# ruff: noqa",
        "import enum as _enum",
        "import struct",
        "from collections import namedtuple as _nt",
        "",
        "from pyvirtd.rpc.xdr import PAD, U32 as _U32, XdrError",
        "from pyvirtd.rpc.procedure import ArgLimit, Procedure",
        "",
        "_new = tuple.__new__",
        "",
    ]
    header += [f"{n} = struct.Struct({f!r})" for n, f in sorted(em.structs_used.items())]
    header.append("")
    return "\n".join(header + gen_constants(facts) + [""] + gen_libvirt_enums(api) + body
                     + gen_procedures(facts, api) + [""] + gen_arg_limits(facts)) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    facts = json.loads(Path(argv[1]).read_text())
    api = json.loads(LIBVIRT_API_JSON.read_text())
    Path(argv[2]).write_text(generate(facts, api))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
