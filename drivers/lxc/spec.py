"""From a container's domain definition to what its controller needs (a plain JSON "spec").

`fill_defaults` (the LXC driver's XML defaults hook) fills in libvirt's LXC
defaults and validates a parsed definition (lxcDomainDefPostParse,
virLXCDomainDefValidate): os type exe, init defaults
to /sbin/init, a console of type pty with target type lxc.  `build_spec`
turns the live definition into the controller's input, so the controller
never needs the XML model.  Errors use libvirt's codes and wording where
libvirt has them.
"""

from __future__ import annotations

import os
from typing import Any

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

_FROM = P.VIR_FROM_LXC


def fill_defaults(d: domxml.DomainDef) -> None:
    if d.type != "lxc":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"could not find capabilities for domaintype={d.type} ",
                       domain=P.VIR_FROM_CAPABILITIES)
    if d.os_type != "exe":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"could not find capabilities for ostype={d.os_type} ",
                       domain=P.VIR_FROM_CAPABILITIES)
    domxml.fill_defaults(d, default_arch=os.uname().machine)
    d.boot = []
    if not any(e.tag == "init" for e in d.os_extra):
        init = etree.Element("init")
        init.text = "/sbin/init"
        d.os_extra.insert(0, init)
    if not d.devices_of("console"):
        d.devices.append(etree.Element("console", type="pty"))
    for port, console in enumerate(d.devices_of("console")):
        if console.find("target") is None:
            etree.SubElement(console, "target", type="lxc", port=str(port))
    _root_filesystem(d)     # validates there is one
    for i, iface in enumerate(d.devices_of("interface")):
        if iface.get("type") not in ("bridge", "network", "ethernet", "direct"):
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"Unsupported network type {iface.get('type')}", domain=_FROM)


def _root_filesystem(d: domxml.DomainDef) -> etree._Element:
    for fs in d.devices_of("filesystem"):
        target = fs.find("target")
        if target is not None and target.get("dir") == "/":
            if fs.get("type", "mount") != "mount":
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                               f"Unsupported filesystem type {fs.get('type')} for the root",
                               domain=_FROM)
            return fs
    raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                   "No root filesystem: add <filesystem type='mount'> with <target dir='/'/>",
                   domain=_FROM)


def _kib(elem: etree._Element | None) -> int | None:
    if elem is None:
        return None
    return domxml.parse_memory(elem, elem.tag)


def limits(d: domxml.DomainDef) -> dict[str, int]:
    out: dict[str, int] = {"memory": d.memory}
    memtune = d.raw.get("memtune")
    if memtune is not None:
        for tag in ("hard_limit", "soft_limit", "swap_hard_limit"):
            value = _kib(memtune.find(tag))
            if value is not None:
                out[tag] = value
    cputune = d.raw.get("cputune")
    if cputune is not None:
        for tag in ("shares", "period", "quota"):
            elem = cputune.find(tag)
            if elem is not None and elem.text:
                out[tag] = int(elem.text.strip())
    return out


def init_argv(d: domxml.DomainDef) -> tuple[list[str], dict[str, str], str | None]:
    argv, env, initdir = [], {}, None
    for e in d.os_extra:
        text = (e.text or "").strip()
        if e.tag == "init":
            argv.insert(0, text)
        elif e.tag == "initarg":
            argv.append(text)
        elif e.tag == "initenv" and e.get("name"):
            env[e.get("name")] = e.text or ""
        elif e.tag == "initdir":
            initdir = text
    return argv, env, initdir


def idmap(d: domxml.DomainDef) -> dict[str, list] | None:
    elem = d.raw.get("idmap")
    if elem is None:
        return None
    out: dict[str, list] = {"uid": [], "gid": []}
    for kind in ("uid", "gid"):
        for m in elem.findall(kind):
            out[kind].append([int(m.get("start")), int(m.get("target")), int(m.get("count"))])
    return out


# Linux capability numbers (include/uapi/linux/capability.h) under the names
# libvirt's <features><capabilities> children use.
CAPABILITIES = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
    "kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9,
    "net_bind_service": 10, "net_broadcast": 11, "net_admin": 12, "net_raw": 13,
    "ipc_lock": 14, "ipc_owner": 15, "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18,
    "sys_ptrace": 19, "sys_pacct": 20, "sys_admin": 21, "sys_boot": 22, "sys_nice": 23,
    "sys_resource": 24, "sys_time": 25, "sys_tty_config": 26, "mknod": 27, "lease": 28,
    "audit_write": 29, "audit_control": 30, "setfcap": 31, "mac_override": 32,
    "mac_admin": 33, "syslog": 34, "wake_alarm": 35, "block_suspend": 36,
    "audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}
# What libvirt's LXC driver takes from every container unless the definition says
# otherwise (lxcContainerDropCapabilities; sys_boot stays, since a reboot(2) in a
# pid namespace only ends that namespace's init).
DEFAULT_DROPPED = ("sys_module", "sys_time", "audit_control", "mac_admin")


def _last_capability() -> int:
    try:
        return int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def dropped_capabilities(d: domxml.DomainDef) -> list[int]:
    """The capabilities init loses before exec: libvirt's policy, then per-capability states.

    ``<features><capabilities policy='default|allow|deny'>`` with children
    ``<sys_time state='on'/>``: ``deny`` drops everything not turned on (also
    capabilities newer than this table, up to the kernel's last), ``allow``
    keeps everything not turned off, ``default`` drops DEFAULT_DROPPED unless
    turned on, and anything turned off.
    """
    features = d.raw.get("features")
    elem = features.find("capabilities") if features is not None else None
    policy = elem.get("policy", "default") if elem is not None else "default"
    states = {c.tag: c.get("state") for c in elem} if elem is not None else {}
    unknown = sorted(set(states) - set(CAPABILITIES))
    if unknown:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, f"unknown capability '{unknown[0]}'",
                       domain=_FROM)
    drop = []
    if policy == "deny":
        known = set(CAPABILITIES.values())
        drop = [n for n in range(_last_capability() + 1) if n not in known]
    for name, number in CAPABILITIES.items():
        state = states.get(name)
        if state == "off":
            drop.append(number)
        elif state != "on" and (policy == "deny" or
                                policy == "default" and name in DEFAULT_DROPPED):
            drop.append(number)
    return drop


def check_sources(d: domxml.DomainDef) -> None:
    """Sources that must exist on the host before anything starts."""
    for fs in d.devices_of("filesystem"):
        if fs.get("type", "mount") != "mount":
            continue
        src = fs.find("source")
        path = src.get("dir") if src is not None else None
        if not path:
            raise VirError(P.VIR_ERR_XML_ERROR, "missing source for filesystem",
                           domain=P.VIR_FROM_DOMAIN)
        if not os.path.isdir(path):
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"Failed to access '{path}': No such file or directory", domain=_FROM)


def build_spec(d: domxml.DomainDef, *, interfaces: list[dict], cgroup: dict[str, str],
               socket: str, exit_file: str) -> dict[str, Any]:
    root = _root_filesystem(d)
    mounts = []
    for fs in d.devices_of("filesystem"):
        if fs is root:
            continue
        target = fs.find("target").get("dir")
        kind = fs.get("type", "mount")
        readonly = fs.find("readonly") is not None
        if kind == "mount":
            mounts.append({"type": "bind", "source": fs.find("source").get("dir"),
                           "target": target, "readonly": readonly})
        elif kind == "ram":
            usage = fs.find("source").get("usage") if fs.find("source") is not None else None
            unit = fs.find("source").get("units", "KiB") if usage else "KiB"
            size = 65536
            if usage:
                scaled = etree.Element("usage", unit=unit)
                scaled.text = usage
                size = domxml.parse_memory(scaled, "usage")
            mounts.append({"type": "ram", "target": target, "usage_kib": size})
        else:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"Unexpected filesystem type {kind}", domain=_FROM)
    argv, env, initdir = init_argv(d)
    return {"name": d.name, "uuid": d.uuid_str, "hostname": d.name,
            "root": {"source": root.find("source").get("dir"),
                     "readonly": root.find("readonly") is not None},
            "mounts": mounts, "init": argv, "env": env, "initdir": initdir,
            "limits": limits(d), "cgroup": cgroup, "interfaces": interfaces,
            "idmap": idmap(d), "drop_caps": dropped_capabilities(d),
            "socket": socket, "exit_file": exit_file}


def interface_config(iface: etree._Element, index: int) -> dict[str, Any]:
    """The container side of one <interface>: guest name, MAC, addresses, routes."""
    guest = iface.find("guest")
    cfg: dict[str, Any] = {"guest": guest.get("dev") if guest is not None and guest.get("dev")
                           else f"eth{index}",
                           "mac": iface.find("mac").get("address"), "ips": [], "routes": []}
    for ip in iface.findall("ip"):
        cfg["ips"].append(f"{ip.get('address')}/{ip.get('prefix') or 24}")
    for route in iface.findall("route"):
        cfg["routes"].append({"dest": f"{route.get('address')}/{route.get('prefix') or 0}",
                              "gateway": route.get("gateway")})
    return cfg
