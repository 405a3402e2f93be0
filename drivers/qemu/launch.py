"""Glue between a domain definition and a QEMU run: defaults, argv, runtime facts.

`new_definition` is what DOMAIN_DEFINE_XML / DOMAIN_CREATE_XML do with the
client's document before storing it (libvirt's parse + post-parse for the
QEMU driver: arch, emulator, canonical machine type, implicit devices).
`build_argv` hands a live definition to command.py; `apply_runtime_info`
writes what only the running QEMU knows (device aliases, pty paths, the VNC
port) into the live definition that `dumpxml` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml

from .command import VolumeSource, assign_aliases, build_command

if TYPE_CHECKING:
    from .driver import QemuDriverState

VIRT_TYPES = ("qemu", "kvm")
HOST_ARCH = "x86_64"
# qemu.conf's vnc_listen default, which command.py uses too
DEFAULT_LISTEN = "127.0.0.1"


def emulator_of(d: domxml.DomainDef) -> str | None:
    for dev in d.devices_of("emulator"):
        if dev.text and dev.text.strip():
            return dev.text.strip()
    return None


def new_definition(state: "QemuDriverState", xml: str) -> domxml.DomainDef:
    """Parse a client's domain XML and fill in what libvirt's QEMU driver adds."""
    d = domxml.parse(xml)
    if d.type not in VIRT_TYPES:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"Emulator '{emulator_of(d) or state.emulator}' does not support "
                       f"virt type '{d.type}'", domain=P.VIR_FROM_QEMU)
    if d.os_type != "hvm":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"Emulator '{emulator_of(d) or state.emulator}' does not support "
                       f"os type '{d.os_type}'", domain=P.VIR_FROM_QEMU)
    domxml.fill_defaults(d, default_arch=HOST_ARCH)
    if emulator_of(d) is None:
        elem = etree.Element("emulator")
        elem.text = state.emulator
        d.devices.insert(0, elem)
    d.machine = state.canonical_machine(d.machine)
    devmod.apply_defaults(d, hypervisor="qemu")
    devmod.validate_devices(d)
    return d


def build_argv(state: "QemuDriverState", live: domxml.DomainDef, *, monitor_path: str,
               pid_path: str, tap_fds: dict[int, int] | None = None,
               volumes: Mapping[tuple[str, str], VolumeSource] | None = None) -> list[str]:
    """The argv of ``live``; ``volumes`` holds its volume disks, resolved beforehand
    (volumes.resolve_all) because resolving waits for storage and argv building must not."""
    return build_command(live, binary=emulator_of(live) or state.emulator,
                         monitor_path=monitor_path, pid_path=pid_path, tap_fds=tap_fds,
                         machine_defaults=state.machine_defaults(),
                         resolve_volume=lambda pool, vol: (volumes or {})[(pool, vol)],
                         name_marker=live.uuid_str)


def apply_runtime_info(live: domxml.DomainDef, ptys: dict[str, str], vnc_port: int | None = None) -> None:
    """Aliases, pty paths and the VNC port of a freshly started guest, into its live XML."""
    assign_aliases(live)
    serial_ptys: dict[str, str] = {}
    for dev in live.devices:
        if dev.tag not in ("serial", "console", "channel", "parallel") or dev.get("type") != "pty":
            continue
        target = dev.find("target")
        alias = dev.find("alias")
        if dev.tag == "console" and (target is None or target.get("type") in (None, "serial")):
            port = target.get("port", "0") if target is not None else "0"
            path = serial_ptys.get(port) or ptys.get(f"charserial{port}")
        else:
            path = ptys.get(f"char{alias.get('name')}") if alias is not None else None
            if dev.tag == "serial" and path and target is not None:
                serial_ptys[target.get("port", "0")] = path
        if not path:
            continue
        _set_source_path(dev, path)
        if dev.tag == "console":
            dev.set("tty", path)
    for gfx in live.devices_of("graphics"):
        if gfx.get("type") != "vnc":
            continue
        if vnc_port is not None and gfx.get("autoport") == "yes":
            gfx.set("port", str(vnc_port))
        # the address QEMU was given (qemuProcessGraphicsSetupListen): libvirt's
        # default vnc_listen when the definition named none
        listen = gfx.find("listen")
        if listen is None:
            listen = etree.SubElement(gfx, "listen", type="address")
        if listen.get("type") == "address" and not listen.get("address"):
            listen.set("address", gfx.get("listen") or DEFAULT_LISTEN)
        if listen.get("type") == "address" and not gfx.get("listen"):
            gfx.set("listen", listen.get("address"))


def _set_source_path(dev: Any, path: str) -> None:
    src = dev.find("source")
    if src is None:
        src = etree.Element("source")
        dev.insert(0, src)
    src.set("path", path)


def console_device(live: domxml.DomainDef, dev_name: str | None) -> Any:
    """The character device DOMAIN_OPEN_CONSOLE means (qemuDomainOpenConsole)."""
    candidates = live.devices_of("console") + live.devices_of("serial") + live.devices_of("channel")
    if dev_name is None:
        found = (live.devices_of("console") or live.devices_of("serial") or [None])[0]
    else:
        found = None
        for dev in candidates:
            alias = dev.find("alias")
            if alias is not None and alias.get("name") == dev_name:
                found = dev
                break
    if found is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"cannot find character device {dev_name or '<null>'}",
                       domain=P.VIR_FROM_QEMU)
    return found
