"""Glue between a domain definition and a QEMU run: defaults, argv, runtime facts.

`fill_defaults` is the QEMU driver's XML defaults hook: what DOMAIN_DEFINE_XML /
DOMAIN_CREATE_XML do with the client's parsed document before storing it
(libvirt's post-parse for the QEMU driver: arch, emulator, canonical machine
type, implicit devices).
`build_argv` completes a live definition with what libvirt decides at start
(`prepare_live`: unix channel paths, SPICE ports) and hands it to
command.py; `apply_runtime_info`
writes what only the running QEMU knows (device aliases, pty paths, the VNC
port) into the live definition that `dumpxml` shows.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml.platform import fill_cpu_defaults

from . import filesystems, firmware, memory
from .command import VolumeSource, assign_aliases, build_command
from .confine import SANDBOX
from .defaults import DEVICE_DEFAULTS
from .disksecrets import DiskSecrets

if TYPE_CHECKING:
    from .guest import QemuState

VIRT_TYPES = ("qemu", "kvm")
HOST_ARCH = "x86_64"
# qemu.conf's vnc_listen default, which command.py uses too
DEFAULT_LISTEN = "127.0.0.1"
GENERATED_IFNAMES = ("vnet", "macvtap", "macvlan")
# qemu.conf's remote_display_port_min/max: where autoport SPICE displays go
DISPLAY_PORTS = range(5900, 65536)


def emulator_of(d: domxml.DomainDef) -> str | None:
    for dev in d.devices_of("emulator"):
        if dev.text and dev.text.strip():
            return dev.text.strip()
    return None


def fill_defaults(state: "QemuState", d: domxml.DomainDef) -> None:
    """Check a client's parsed domain XML and fill in what libvirt's QEMU driver adds."""
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
    for iface in d.devices_of("interface"):
        # names of the kind the driver generates are not kept (libvirt's
        # VIR_NET_GENERATED_*_PREFIX): the tap gets a fresh one at start
        target = iface.find("target")
        if target is not None and (target.get("dev") or "").startswith(GENERATED_IFNAMES):
            iface.remove(target)
    firmware.check_definition(d)
    if d.arch == HOST_ARCH:
        d.raw["cpu"] = fill_cpu_defaults(d.raw.get("cpu"), d.type)
    devmod.apply_defaults(d, DEVICE_DEFAULTS)
    memory.fill_defaults(d)
    devmod.validate_devices(d, starting=False)     # what cannot run yet fails at start
    memory.validate_hotplug(d)
    filesystems.validate(d)


def build_argv(state: "QemuState", live: domxml.DomainDef, *, monitor_path: str,
               pid_path: str, tap_fds: dict[int, int] | None = None,
               volumes: Mapping[tuple[str, str], VolumeSource] | None = None,
               monitor_fd: int | None = None,
               disk_secrets: DiskSecrets | None = None, vsock_fd: int | None = None,
               tpm_socket: str | None = None,
               fs_sockets: dict[str, str] | None = None) -> list[str]:
    """The argv of ``live``; ``volumes`` holds its volume disks, resolved beforehand
    (volumes.resolve_all) because resolving waits for storage and argv building must not.

    With ``monitor_fd`` (the daemon's listening monitor socket) QEMU neither
    daemonizes nor writes a pidfile: daemonize.py does both (confine.py).
    """
    prepare_live(state, live)
    own_start = monitor_fd is not None
    return build_command(live, binary=emulator_of(live) or state.emulator,
                         monitor_path=monitor_path, pid_path=None if own_start else pid_path,
                         tap_fds=tap_fds, machine_defaults=state.machine_defaults(),
                         resolve_volume=lambda pool, vol: (volumes or {})[(pool, vol)],
                         name_marker=live.uuid_str, daemonize=not own_start,
                         monitor_fd=monitor_fd, vsock_fd=vsock_fd, tpm_socket=tpm_socket,
                         fs_sockets=fs_sockets,
                         sandbox=SANDBOX if state.confinement.sandbox else None,
                         disk_secrets=disk_secrets)


def channel_dir(state: "QemuState", live: domxml.DomainDef) -> Path:
    """Where the unix channels of ``live`` that name no path get their sockets."""
    return name_path(state.store.run_dir / "channel", f"domain-{live.name[:20]}")


def prepare_live(state: "QemuState", live: domxml.DomainDef) -> None:
    """What libvirt writes into a live definition before QEMU starts
    (qemuProcessPrepareDomain): a socket path for each unix channel that names
    none, under the run directory, and a free port for each SPICE display with
    autoport (QEMU, unlike for VNC, cannot pick one itself)."""
    chan_dir = channel_dir(state, live)
    for dev in live.devices_of("channel"):
        src, tgt = dev.find("source"), dev.find("target")
        if dev.get("type") != "unix" or tgt is None or not tgt.get("name"):
            continue
        if src is None:
            src = etree.SubElement(dev, "source", mode="bind")
        if not src.get("path"):
            chan_dir.mkdir(parents=True, exist_ok=True)
            src.set("path", str(name_path(chan_dir, tgt.get("name"))))
    taken = _display_ports_in_use(state)
    for gfx in live.devices_of("graphics"):
        if gfx.get("type") == "spice" and gfx.get("autoport", "yes") == "yes" \
                and gfx.get("port") in (None, "-1", "0"):
            port = _free_port(gfx.get("listen") or DEFAULT_LISTEN, taken)
            gfx.set("port", str(port))
            taken.add(port)


def _display_ports_in_use(state: "QemuState") -> set[int]:
    taken = set()
    for dom in state.domains.values():
        if not dom.active:
            continue
        for gfx in dom.definition.devices_of("graphics"):
            for attr in ("port", "tlsPort"):
                if (gfx.get(attr) or "").isdigit():
                    taken.add(int(gfx.get(attr)))
    return taken


def _free_port(addr: str, taken: set[int]) -> int:
    """The lowest display port nobody listens on (virPortAllocatorAcquire)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for port in DISPLAY_PORTS:
        if port in taken:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    continue
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"Unable to find an unused port for SPICE: {exc}",
                               domain=P.VIR_FROM_QEMU) from None
            return port
    raise VirError(P.VIR_ERR_INTERNAL_ERROR, "Unable to find an unused port in range "
                   "'display' (5900-65535)", domain=P.VIR_FROM_QEMU)


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
        if gfx.get("type") not in ("vnc", "spice"):
            continue
        if gfx.get("type") == "vnc" and vnc_port is not None and gfx.get("autoport") == "yes":
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
