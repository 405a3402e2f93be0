"""From a UML guest's domain definition to its kernel's command line.

`fill_defaults` is the driver's XML defaults hook: type and os type uml,
one vCPU, a pty console (target type uml) when there is none, and nothing
the driver cannot give a UML kernel (libvirt's UML driver took consoles,
serials, ubd disks and NICs; this one takes a hostfs root filesystem too;
NICs are nics.py's).  `kernel_argv` turns the live definition into argv.
"""

from __future__ import annotations

import os
import re
import shlex

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import nics

_FROM = P.VIR_FROM_UML
DEFAULT_KERNEL = "/usr/bin/linux.uml"
# Devices the definition may hold; anything else is refused at define.
DEVICES = ("console", "serial", "disk", "filesystem", "interface")
CHARDEV_TYPES = ("pty", "null")
UBD = re.compile(r"^ubd([a-h])$")


def unsupported(message: str) -> VirError:
    return VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, message, domain=_FROM)


def kernel_path(d: domxml.DomainDef) -> str:
    for e in d.os_extra:
        if e.tag == "kernel" and (e.text or "").strip():
            return e.text.strip()
    return DEFAULT_KERNEL


def _os_text(d: domxml.DomainDef, tag: str) -> str | None:
    for e in d.os_extra:
        if e.tag == tag:
            return (e.text or "").strip()
    return None


def fill_defaults(d: domxml.DomainDef) -> None:
    if d.type != "uml":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"could not find capabilities for domaintype={d.type} ",
                       domain=P.VIR_FROM_CAPABILITIES)
    if d.os_type != "uml":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"could not find capabilities for ostype={d.os_type} ",
                       domain=P.VIR_FROM_CAPABILITIES)
    if d.vcpus != 1:
        raise unsupported(f"a UML guest has one vCPU, not {d.vcpus}")
    domxml.fill_defaults(d, default_arch=os.uname().machine)
    d.boot = []
    if _os_text(d, "kernel") is None:
        kernel = etree.Element("kernel")
        kernel.text = DEFAULT_KERNEL
        d.os_extra.insert(0, kernel)
    for dev in d.devices:
        if dev.tag not in DEVICES:
            raise unsupported(f"unsupported device type '{dev.tag}' for a UML guest")
    if not d.devices_of("console"):
        d.devices.append(etree.Element("console", type="pty"))
    for tag in ("console", "serial"):
        for port, chr_ in enumerate(d.devices_of(tag)):
            if chr_.get("type") not in CHARDEV_TYPES:
                raise unsupported(f"unsupported {tag} type '{chr_.get('type')}' for a UML guest")
            target = chr_.find("target")
            if target is None:
                target = etree.SubElement(chr_, "target")
            if tag == "console":
                target.set("type", "uml")
            target.set("port", target.get("port") or str(port))
    seen = set()
    for disk in d.devices_of("disk"):
        target = disk.find("target")
        src = disk.find("source")
        dev = target.get("dev") if target is not None else None
        if disk.get("type", "file") not in ("file", "block") or disk.get("device", "disk") != "disk":
            raise unsupported(f"unsupported disk type '{disk.get('type')}/{disk.get('device')}' "
                              "for a UML guest: only file or block disks")
        if dev is None or not UBD.match(dev):
            raise unsupported(f"unsupported disk target '{dev}': UML disks are ubda to ubdh")
        if dev in seen:
            raise VirError(P.VIR_ERR_XML_ERROR, f"target '{dev}' duplicated for disk sources",
                           domain=P.VIR_FROM_DOMAIN)
        seen.add(dev)
        if src is None or not (src.get("file") or src.get("dev")):
            raise unsupported(f"disk {dev} has no source file")
        target.set("bus", "uml")
    roots = 0
    for fs in d.devices_of("filesystem"):
        target = fs.find("target")
        src = fs.find("source")
        if fs.get("type", "mount") != "mount" or target is None or target.get("dir") != "/" \
                or src is None or not src.get("dir"):
            raise unsupported("a UML guest takes one <filesystem type='mount'> with "
                              "<target dir='/'/>: its hostfs root")
        roots += 1
    if roots > 1:
        raise unsupported("a UML guest takes one <filesystem type='mount'> with <target dir='/'/>")
    nics.check(d)


def _source(elem: etree._Element) -> str:
    src = elem.find("source")
    return src.get("file") or src.get("dev") or src.get("dir")


def check_sources(d: domxml.DomainDef) -> None:
    """Before starting: the kernel, the disk images and the root directory exist."""
    kernel = kernel_path(d)
    if not os.access(kernel, os.X_OK):
        err = "No such file or directory" if not os.path.exists(kernel) else "Permission denied"
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"Cannot find UML kernel {kernel}: {err}",
                       domain=_FROM)
    for elem in d.devices_of("disk") + d.devices_of("filesystem"):
        path = _source(elem)
        if not os.path.exists(path):
            raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                           f"cannot access storage file '{path}': No such file or directory",
                           domain=_FROM)


def kernel_argv(d: domxml.DomainDef, *, umid: str, uml_dir: str, notify: str,
                xstate_workaround: bool, pty_fds: dict[str, int]) -> list[str]:
    """The UML kernel's argv for the live definition ``d``.

    ``pty_fds`` maps channel names (con0, ssl1) of pty consoles and serials to
    the master fd of a pty the daemon made; the kernel inherits it."""
    argv = [kernel_path(d), f"mem={d.memory}K", f"umid={umid}", f"uml_dir={uml_dir}",
            f"mconsole=notify:{notify}", "con=null", "ssl=null"]
    for tag, chan in (("console", "con"), ("serial", "ssl")):
        for chr_ in d.devices_of(tag):
            name = f"{chan}{chr_.find('target').get('port')}"
            fd = pty_fds.get(name)
            argv.append(f"{name}=fd:{fd},fd:{fd}" if fd is not None else f"{name}=null")
    for disk in d.devices_of("disk"):
        unit = ord(UBD.match(disk.find("target").get("dev")).group(1)) - ord("a")
        flags = "r" if disk.find("readonly") is not None else ""
        argv.append(f"ubd{unit}{flags}={_source(disk)}")
    argv += nics.kernel_args(d)
    for fs in d.devices_of("filesystem"):
        mode = "ro" if fs.find("readonly") is not None else "rw"
        argv += ["root=/dev/root", "rootfstype=hostfs", f"hostfs={_source(fs)}", mode]
    cmdline = _os_text(d, "cmdline")
    if cmdline:
        argv += shlex.split(cmdline)
    if xstate_workaround:
        # the guest's glibc must not use AVX: UML 6.1 keeps only the FXSAVE
        # registers of its processes here (launcher.py); init gets it as environment
        argv.append("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,"
                    "-AVX512DQ,-AVX2,-AVX,-EVEX")
    return argv
