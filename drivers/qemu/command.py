"""Building QEMU's command line from a domain definition (modern QEMU 7.2 syntax).

Contract (used by the driver)::

    argv = build_command(defn, binary="/usr/bin/qemu-system-x86_64",
                         monitor_path=".../NAME.monitor", pid_path=".../NAME.pid",
                         tap_fds={0: 23}, channel_dir=".../channel/target/domain-NAME",
                         machine_defaults={"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"},
                         resolve_volume=None, daemonize=True)

``defn`` is a ``pyvirtd.xml.domain.DomainDef`` that already went through the
QEMU defaults (``apply_defaults(defn, defaults.DEVICE_DEFAULTS)``; build_command
calls it on a copy itself, so a raw definition works too) — ``defn`` is never
modified.  The argv:

* starts paused (``-S``: the driver sends ``cont``) and keeps QEMU alive when
  the guest powers off (``-no-shutdown``: a SHUTDOWN event, then the driver decides);
* has the QMP monitor on the unix socket ``monitor_path``
  (``-chardev socket,...,server=on,wait=off`` + ``-mon ...,mode=control``);
  (or on the daemon's listening socket ``monitor_fd``: ``-chardev socket,fd=N``);
* daemonizes with ``-pidfile pid_path`` when ``daemonize`` (process.launch's contract);
* runs under QEMU's seccomp filter with ``-sandbox <sandbox>`` when given (confine.py);
* always holds ``-uuid <uuid>`` and ``-name guest=<name>,...``: either is a
  marker for process.is_running (``name_marker`` is accepted for compatibility
  and must be one of them);
* opens NICs of type network/bridge/direct from already-open tap fds:
  ``tap_fds[i]`` is the fd for the i-th <interface> (the caller passes it to the
  child with ``pass_fds``); type ethernet without an fd uses ``ifname=<target dev>``;
  type user uses QEMU's slirp;
* resolves <disk type='volume'> through ``resolve_volume(pool, volume)``, which
  returns a `VolumeSource` (the path, whether it is a block device, and a format
  used when the XML names none; raw otherwise);
* puts unix <channel>s without a path in ``channel_dir``/<target name>;
* <link state='down'> is not on the command line: the driver sends QMP
  ``set_link`` (name = the alias) before ``cont``, as libvirt does;
* VNC with autoport asks QEMU to pick a free display (``-vnc ADDR:0,to=99``):
  the driver reads the port back with QMP ``query-vnc``.

Device ids are libvirt's aliases (``virtio-disk0``, ``ide0-0-0``, ``net0``,
``serial0``, ``channel0``, ``video0``, ``balloon0``, ``rng0``, ``watchdog0``,
``usb``, ``pci.N``); ``assign_aliases(defn)`` writes them into a live
definition.  Disk i (0-based, document order) has the block nodes
``libvirt-{i+1}-storage`` / ``libvirt-{i+1}-format``.  Devices without a PCI
<address> are placed by QEMU.

:raises VirError: VIR_ERR_CONFIG_UNSUPPORTED for what QEMU (or this driver)
    cannot do, VIR_ERR_XML_ERROR for invalid definitions, VIR_ERR_INTERNAL_ERROR
    when the caller's inputs are missing (no tap fd for a bridged NIC, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml.devices import (Audio, Chardev, Controller, Disk, Graphics, Hub, Input, Interface,
                                 Iommu, Memballoon, Memory, Panic, Redirdev, Rng, Shmem, Sound,
                                 Tpm, Video, Vsock, Watchdog)
from pyvirtd.xml.devices.input import QEMU_DEVICES as INPUT_DEVICES
from pyvirtd.xml.devices.interface import MODELS as NIC_MODELS
from pyvirtd.xml.devices.video import PRIMARY as VIDEO_PRIMARY, SECONDARY as VIDEO_SECONDARY
from pyvirtd.xml.devices.watchdog import QEMU_ACTIONS
from pyvirtd.xml.platform import platform

from . import devices_extra, disksecrets, filesystems, memory, tpm as tpmmod
from .defaults import DEVICE_DEFAULTS
from .devprops import (SCSI_MODELS, ArgvBuilder, device_alias, disk_bus, error_policy_props,
                       opts, quote)
from .disksecrets import DiskSecrets
from .devprops import unsupported as _unsupported

# QEMU's VNC display N listens on TCP port 5900 + N.
VNC_PORT_BASE = 5900
# How far QEMU may look for a free VNC display with autoport (libvirt's
# remote_display_port_max is 65535; 100 displays is plenty for one host).
VNC_AUTOPORT_DISPLAYS = 99

_USB_MODELS = {"piix3-uhci": "piix3-usb-uhci", "piix4-uhci": "piix4-usb-uhci",
               "ehci": "usb-ehci", "ich9-ehci1": "ich9-usb-ehci1",
               "ich9-uhci1": "ich9-usb-uhci1", "ich9-uhci2": "ich9-usb-uhci2",
               "ich9-uhci3": "ich9-usb-uhci3", "vt82c686b-uhci": "vt82c686b-usb-uhci",
               "pci-ohci": "pci-ohci", "nec-xhci": "nec-usb-xhci", "qemu-xhci": "qemu-xhci"}
# <os><boot dev> -> which device gets the bootindex
_BOOT_DEV_MATCH = {"hd": lambda d: isinstance(d, Disk) and d.device == "disk",
                   "cdrom": lambda d: isinstance(d, Disk) and d.device == "cdrom",
                   "network": lambda d: isinstance(d, Interface),
                   "fd": lambda d: False}


@dataclass(frozen=True)
class VolumeSource:
    """What a <disk type='volume'> stands for once its pool resolved it."""
    path: str
    block: bool = False          # a block device (logical volume, iSCSI LUN): host_device
    format: str | None = None    # used when the disk's <driver> names none (then raw)


def _internal(detail: str) -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR, detail, domain=P.VIR_FROM_QEMU)


def _json(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- aliases ----------------------------------------------------------------

def assign_aliases(defn) -> None:
    """Write libvirt's <alias name=...> into every modelled device of a live definition."""
    q35 = devmod.is_q35(defn.machine)
    counters: dict[str, int] = {}
    out = []
    devs = devmod.parse_devices(defn)
    memory.assign_slots([d for d in devs if isinstance(d, Memory) and d.model == "dimm"])
    for dev in devs:
        if isinstance(dev, etree._Element):
            out.append(dev)
            continue
        if not isinstance(dev, (Graphics, Audio, Panic)):  # libvirt gives these no alias
            dev.alias = device_alias(dev, counters, q35)
        out.append(dev.to_element())
    defn.devices = out


# -- the command line ---------------------------------------------------------

_Builder = ArgvBuilder     # the builder lives in devprops, shared with the device modules


def build_command(defn, *, binary: str, monitor_path: str, pid_path: str | None = None,
                  tap_fds: Mapping[int, int] | None = None, channel_dir: str | None = None,
                  machine_defaults: Mapping[str, str] | None = None,
                  resolve_volume: Callable[[str, str], VolumeSource] | None = None,
                  daemonize: bool = True, name_marker: str | None = None,
                  monitor_fd: int | None = None, sandbox: str | None = None,
                  disk_secrets: DiskSecrets | None = None,
                  vsock_fd: int | None = None, tpm_socket: str | None = None,
                  fs_sockets: Mapping[str, str] | None = None) -> list[str]:
    """The argv that starts ``defn`` paused under QEMU (see the module docstring).

    ``monitor_fd``: the monitor is this listening socket, bound by the daemon
    (``monitor_path`` names it then only for the caller); ``sandbox``: the
    ``-sandbox`` option (confine.SANDBOX), given when not None;
    ``disk_secrets``: the master key and passphrases of encrypted disks
    (disksecrets.prepare), which go to QEMU encrypted; ``vsock_fd``: the
    /dev/vhost-vsock fd bound to the guest's cid (devices_extra.open_vsock);
    ``tpm_socket``: the control socket of the guest's swtpm (tpm.start);
    ``fs_sockets``: virtiofs alias -> virtiofsd's socket (filesystems.start).

    :param machine_defaults: machine alias -> canonical name (from caps), also
        the key ``"default"`` for a definition without a machine.
    :raises VirError: see the module docstring.
    """
    defn = defn.copy()
    machine_defaults = machine_defaults or {}
    if defn.os_type != "hvm":
        raise _unsupported(f"OS type '{defn.os_type}' is not supported by QEMU")
    if defn.type not in ("kvm", "qemu"):
        raise _unsupported(f"domain type '{defn.type}' is not supported by the QEMU driver")
    machine = defn.machine or machine_defaults.get("default") or "pc"
    defn.machine = machine_defaults.get(machine, machine)
    devmod.apply_defaults(defn, DEVICE_DEFAULTS)
    devmod.validate_devices(defn)
    plat = platform(defn)
    b = _Builder(defn, plat, devmod.is_q35(defn.machine))
    if name_marker is not None and name_marker not in (defn.name, defn.uuid_str):
        raise _internal("the process marker must be the domain's name or uuid")

    b.add(binary, "-name", opts(None, ("guest", defn.name), ("debug-threads", "on")), "-S")
    if disk_secrets is not None:
        b.add("-object", _json(disksecrets.master_key_object(disk_secrets.master_key_path)))
    _machine(b)
    _cpu(b)
    if plat.os.loader_secure:
        b.add("-global", "driver=cfi.pflash01,property=secure,value=on")
    memory.size_args(b)
    b.add("-overcommit", "mem-lock=off")
    _smp(b)
    _iothreads(b)
    memory.numa_args(b)
    b.add("-uuid", defn.uuid_str)
    b.add("-no-user-config", "-nodefaults")
    where = ("fd", monitor_fd) if monitor_fd is not None else ("path", monitor_path)
    b.add("-chardev", opts("socket", ("id", "charmonitor"), where,
                           ("server", "on"), ("wait", "off")))
    b.add("-mon", "chardev=charmonitor,id=monitor,mode=control")
    _clock(b)
    # -no-reboot turns every reset (ours too) into a power-off, so libvirt uses
    # it only when no action needs QEMU to survive one (qemuProcessPrepareAllowReboot);
    # otherwise the driver stops a guest that resets itself with on_reboot=destroy
    if (defn.on_reboot == "destroy" and defn.on_poweroff == "destroy"
            and defn.on_crash in ("destroy", "coredump-destroy")):
        b.add("-no-reboot")
    b.add("-no-shutdown")
    _boot(b)
    devs = devmod.parse_devices(defn)
    for dev in devs:               # the IOMMU before the devices behind it
        if isinstance(dev, Iommu):
            b.add(*devices_extra.iommu_args(b, dev))
    _assign_bootindex(b, devs)
    _controllers(b, [d for d in devs if isinstance(d, Controller)])
    _disks(b, [d for d in devs if isinstance(d, Disk)], resolve_volume, disk_secrets)
    filesystems.filesystem_args(b, dict(fs_sockets or {}))
    memory.virtio_mem_args(b)
    _interfaces(b, [d for d in devs if isinstance(d, Interface)], tap_fds or {})
    _chardevs(b, [d for d in devs if isinstance(d, Chardev)], channel_dir)
    for dev in devs:
        if isinstance(dev, Input):
            _input(b, dev)
    for dev in devs:
        if isinstance(dev, Tpm):
            b.add(*tpmmod.qemu_args(dev, b.alias(dev), tpm_socket))
    _audio(b, [d for d in devs if isinstance(d, Audio)])
    _graphics(b, [d for d in devs if isinstance(d, Graphics)])
    for dev in devs:
        if isinstance(dev, Sound):
            _sound(b, dev)
    _video(b, [d for d in devs if isinstance(d, Video)])
    for dev in devs:
        if isinstance(dev, Hub):
            b.add(*devices_extra.hub_args(b, dev))
    devices_extra.smartcard_args(b, devs, lambda dev, chr_id: _chardev_backend(dev, chr_id, None))
    for dev in devs:
        if isinstance(dev, Redirdev):
            _redirdev(b, dev)
    for dev in devs:
        if isinstance(dev, Watchdog):
            _watchdog(b, dev)
        elif isinstance(dev, Memballoon) and dev.model != "none":
            b.add("-device", opts("virtio-balloon-pci", ("id", b.alias(dev)), *b.pci(dev),
                                  ("deflate-on-oom", dev.autodeflate)))
        elif isinstance(dev, Rng):
            alias = b.alias(dev)
            if dev.backend == "egd":
                egd = Chardev(kind="rng", type=dev.egd_type or "tcp", sources=dev.egd_sources)
                b.add("-chardev", _chardev_backend(egd, f"char{alias}", None))
                b.add("-object", opts("rng-egd", ("id", f"obj{alias}"),
                                      ("chardev", f"char{alias}")))
            else:
                b.add("-object", opts("rng-random", ("id", f"obj{alias}"),
                                      ("filename", dev.source)) if dev.backend == "random"
                      else opts("rng-builtin", ("id", f"obj{alias}")))
            period = dev.rate_period or (1000 if dev.rate_bytes else None)
            b.add("-device", opts("virtio-rng-pci", ("rng", f"obj{alias}"), ("id", alias),
                                  ("max-bytes", dev.rate_bytes),
                                  ("period", period if dev.rate_bytes else None), *b.pci(dev)))
    for dev in devs:
        if isinstance(dev, Panic):
            b.add(*devices_extra.panic_args(b, dev))
        elif isinstance(dev, Shmem):
            b.add(*devices_extra.shmem_args(b, dev))
        elif isinstance(dev, Vsock):
            b.add(*devices_extra.vsock_args(b, dev, vsock_fd))
    if plat.feature_on("vmcoreinfo"):    # where a crash kernel finds the guest's notes
        b.add("-device", "vmcoreinfo")
    if sandbox is not None:
        b.add("-sandbox", sandbox)
    if pid_path is not None:
        b.add("-pidfile", pid_path)
    if daemonize:
        b.add("-daemonize")
    b.add("-msg", "timestamp=on")
    b.add(*passthrough_args(defn))
    return b.argv


def passthrough_args(defn) -> list[str]:
    """The <qemu:commandline><qemu:arg value=...> of ``defn``, which libvirt appends
    to QEMU's argv as they are, after its own."""
    args = []
    for elem in defn.namespaced:
        if elem.tag == f"{{{domxml.QEMU_NS}}}commandline":
            args += [a.get("value", "") for a in elem.iter(f"{{{domxml.QEMU_NS}}}arg")]
    return args


def _machine(b: _Builder) -> None:
    plat, defn = b.plat, b.defn
    pairs: list[tuple[str, object]] = [("usb", "off"), ("dump-guest-core", "off")]
    if plat.feature_on("acpi") is not True:
        pairs.append(("acpi", "off"))
    if plat.feature_on("vmport") is not None:
        pairs.append(("vmport", "on" if plat.feature_on("vmport") else "off"))
    if memory.machine_backend(defn):
        pairs.append(("memory-backend", memory.machine_backend(defn)))
    if plat.feature_on("smm") is not None:
        pairs.append(("smm", "on" if plat.feature_on("smm") else "off"))
    ioapic = plat.features.get("ioapic")
    if ioapic is not None and ioapic.get("driver") == "qemu":
        pairs.append(("kernel_irqchip", "split"))
    for timer in plat.clock.timers:
        if timer.name == "hpet" and timer.present is not None:
            pairs.append(("hpet", "on" if timer.present else "off"))
    o = plat.os
    if o.bios_useserial:
        # no graphics for the firmware: SeaBIOS then prints to the serial port
        pairs.append(("graphics", "off"))
    if o.loader and o.loader_type == "pflash":
        b.add("-blockdev", _json({"driver": "file", "filename": o.loader,
                                  "node-name": "libvirt-pflash0-storage",
                                  "auto-read-only": True, "discard": "unmap"}))
        b.add("-blockdev", _json({"node-name": "libvirt-pflash0-format",
                                  "read-only": bool(o.loader_readonly), "driver": "raw",
                                  "file": "libvirt-pflash0-storage"}))
        pairs.append(("pflash0", "libvirt-pflash0-format"))
        if o.nvram:
            b.add("-blockdev", _json({"driver": "file", "filename": o.nvram,
                                      "node-name": "libvirt-pflash1-storage",
                                      "auto-read-only": True, "discard": "unmap"}))
            b.add("-blockdev", _json({"node-name": "libvirt-pflash1-format", "read-only": False,
                                      "driver": "raw", "file": "libvirt-pflash1-storage"}))
            pairs.append(("pflash1", "libvirt-pflash1-format"))
    b.add("-machine", opts(defn.machine, *pairs))
    b.add("-accel", "kvm" if defn.type == "kvm" else "tcg")
    if o.loader and o.loader_type != "pflash":
        b.add("-bios", o.loader)
    if o.kernel:
        b.add("-kernel", o.kernel)
    if o.initrd:
        b.add("-initrd", o.initrd)
    if o.cmdline:
        b.add("-append", o.cmdline)
    if o.dtb:
        b.add("-dtb", o.dtb)


_CPU_ON = ("force", "require")
_CPU_OFF = ("disable", "forbid")


def _cpu(b: _Builder) -> None:
    cpu = b.plat.cpu
    if cpu is None:
        return
    if cpu.mode == "host-passthrough" or cpu.mode == "host-model":
        if b.defn.type != "kvm":
            raise _unsupported(f"CPU mode '{cpu.mode}' for x86_64 qemu domain on x86_64 host is "
                               "not supported by hypervisor")
        name = "host"
    elif cpu.mode == "maximum":
        name = "max"
    elif cpu.model:
        name = cpu.model
    else:
        return                 # topology only
    feats = [(f.name, "on" if f.policy in _CPU_ON else "off")
             for f in cpu.features if f.policy != "optional"]
    if cpu.migratable is not None and name == "host":
        feats.insert(0, ("migratable", "on" if cpu.migratable else "off"))
    b.add("-cpu", opts(name, *feats))


def _smp(b: _Builder) -> None:
    d, cpu = b.defn, b.plat.cpu
    pairs: list[tuple[str, object]] = [("maxcpus", d.vcpus)]
    if cpu is not None and cpu.sockets:
        if cpu.sockets * (cpu.dies or 1) * cpu.cores * cpu.threads != d.vcpus:
            raise VirError(P.VIR_ERR_XML_ERROR,
                           "Maximum CPUs greater than topology limit", domain=P.VIR_FROM_DOMAIN)
        pairs += [("sockets", cpu.sockets), ("dies", cpu.dies or 1), ("cores", cpu.cores),
                  ("threads", cpu.threads)]
    else:
        pairs += [("sockets", d.vcpus), ("cores", 1), ("threads", 1)]
    b.add("-smp", opts(str(d.vcpus_current), *pairs))


def _iothreads(b: _Builder) -> None:
    for n in range(1, b.plat.iothreads + 1):
        b.add("-object", opts("iothread", ("id", f"iothread{n}")))


def _clock(b: _Builder) -> None:
    clock = b.plat.clock
    base = {"utc": "utc", "localtime": "localtime"}.get(clock.offset)
    if base is None:
        if clock.offset == "variable" and clock.adjustment not in (None, "0", "reset"):
            raise _unsupported("clock offset 'variable' with an adjustment is not supported")
        if clock.offset == "absolute":
            raise _unsupported("clock offset 'absolute' is not supported")
        base = "utc" if clock.offset != "timezone" else "localtime"
    pairs: list[tuple[str, object]] = [("base", base)]
    for timer in clock.timers:
        if timer.name == "rtc" and timer.tickpolicy == "catchup":
            pairs.append(("driftfix", "slew"))
    b.add("-rtc", opts(None, *pairs))
    for timer in clock.timers:
        if timer.name == "pit" and timer.tickpolicy == "delay":
            b.add("-global", "kvm-pit.lost_tick_policy=delay")
        elif timer.name == "pit" and timer.tickpolicy == "discard":
            b.add("-global", "kvm-pit.lost_tick_policy=discard")


def _boot(b: _Builder) -> None:
    o = b.plat.os
    pairs: list[tuple[str, object]] = []
    if o.boot_menu is not None:
        pairs.append(("menu", "on" if o.boot_menu else "off"))
        if o.boot_menu and o.boot_menu_timeout is not None:
            pairs.append(("splash-time", o.boot_menu_timeout))
    if o.bios_reboot_timeout is not None:
        pairs.append(("reboot-timeout", o.bios_reboot_timeout))
    pairs.append(("strict", "on"))
    b.add("-boot", opts(None, *pairs))


def _assign_bootindex(b: _Builder, devs: list) -> None:
    """<os><boot dev> in order -> bootindex of the first matching device (libvirt
    translates them the same way; QEMU's -boot order= only covers the BIOS)."""
    if any(getattr(d, "boot", None) is not None for d in devs):
        return
    order = 1
    for dev_name in b.defn.boot:
        match = next((d for d in devs if _BOOT_DEV_MATCH[dev_name](d)
                      and getattr(d, "boot", None) is None), None)
        if match is not None:
            match.boot = order
            order += 1


# -- devices ------------------------------------------------------------------

def _controllers(b: _Builder, conts: list[Controller]) -> None:
    for c in sorted(conts, key=lambda c: (c.type != "pci", c.index)):
        b.controllers.setdefault((c.type, c.index), c)
        alias = b.alias(c)
        if c.type == "pci":
            if c.index == 0:
                continue           # the machine's own root bus
            driver = c.model_name or c.model
            extra: list[tuple[str, object]] = []
            tgt = c.target or {}
            if c.model == "pcie-root-port":
                extra = [("port", tgt.get("port")), ("chassis", tgt.get("chassis", c.index))]
            elif c.model in ("pci-bridge", "pcie-to-pci-bridge"):
                extra = [("chassis_nr", tgt.get("chassisNr", c.index))] \
                    if c.model == "pci-bridge" else []
            elif c.model not in ("dmi-to-pci-bridge", "pcie-switch-upstream-port",
                                 "pcie-switch-downstream-port"):
                raise _unsupported(f"PCI controller model '{c.model}' is not supported")
            b.add("-device", opts(driver, *extra, ("id", alias), *b.pci(c)))
        elif c.type == "usb":
            if c.model == "none":
                continue
            pairs: list[tuple[str, object]] = []
            master = next((x for x in c.extra if getattr(x, "tag", None) == "master"), None)
            if master is None and c.model and c.model.startswith("ich9-uhci") \
                    and b.controllers.get(("usb", c.index)) is not c:
                master = etree.Element("master", startport=str(2 * (int(c.model[-1]) - 1)))
            if master is not None:
                # a companion of the EHCI controller with its index: it joins that
                # controller's bus and has no id of its own (libvirt's
                # qemuBuildUSBControllerDevProps); its live alias is the master's
                b.add("-device", opts(_USB_MODELS[c.model], ("masterbus", f"{alias}.0"),
                                      ("firstport", int(master.get("startport", "0"))),
                                      *b.pci(c)))
                continue
            if c.model in ("qemu-xhci", "nec-xhci") and c.ports:
                pairs = [("p2", c.ports), ("p3", c.ports)]
            b.add("-device", opts(_USB_MODELS[c.model], *pairs, ("id", alias), *b.pci(c)))
        elif c.type == "sata":
            if c.index == 0 and b.q35:
                continue           # q35's built-in AHCI, id "ide"
            b.add("-device", opts("ahci", ("id", alias), *b.pci(c)))
        elif c.type == "ide":
            if c.index == 0 and not b.q35:
                continue           # the PIIX3 IDE of the pc machine
            raise _unsupported("only a single IDE controller is supported for this machine type")
        elif c.type == "scsi":
            b.add("-device", opts(SCSI_MODELS[c.model or "lsilogic"], ("id", alias), *b.pci(c)))
        elif c.type == "virtio-serial":
            b.add("-device", opts("virtio-serial-pci", ("id", alias),
                                  ("max_ports", c.ports), ("vectors", c.vectors), *b.pci(c)))


_CACHE = {  # libvirt cache mode -> (cache.direct, cache.no-flush, write-cache on the device)
    "none": (True, False, True), "writeback": (False, False, True),
    "writethrough": (False, False, False), "directsync": (True, False, False),
    "unsafe": (False, True, True), "default": (None, None, None),
}


def _disks(b: _Builder, disks: list[Disk],
           resolve_volume: Callable[[str, str], VolumeSource] | None,
           disk_secrets: DiskSecrets | None) -> None:
    for n, disk in enumerate(disks, start=1):
        alias = b.alias(disk)
        path = disk.path
        if disk.type == "volume":
            if resolve_volume is None:
                raise _unsupported(f"disk '{disk.target}': storage volumes need a resolver")
            resolved = resolve_volume(disk.pool, disk.volume)
            path, block = resolved.path, resolved.block
            disk.format = disk.format or resolved.format
        else:
            block = disk.type == "block"
        direct, no_flush, write_cache = _CACHE.get(disk.cache or "default")
        node = None
        if path is not None:
            storage: dict = {"driver": "host_device" if block else "file",
                             "filename": path, "node-name": f"libvirt-{n}-storage"}
            if direct is not None:
                storage["cache"] = {"direct": direct, "no-flush": no_flush}
            if disk.io in ("native", "threads", "io_uring"):
                storage["aio"] = disk.io
            storage.update({"auto-read-only": True, "discard": "unmap"})
            secret = None
            if disksecrets.disk_encryption(disk) is not None:   # its secret object first
                secret = _secret_object(b, disk, f"libvirt-{n}-format", disk_secrets)
            b.add("-blockdev", _json(storage))
            fmt: dict = {"node-name": f"libvirt-{n}-format", "read-only": disk.readonly}
            if direct is not None:
                fmt["cache"] = {"direct": direct, "no-flush": no_flush}
            if disk.discard == "unmap":
                fmt["discard"] = "unmap"
            zeroes = disk.driver_extra.get("detect_zeroes")
            if zeroes in ("on", "unmap"):     # unmap needs discard=unmap, else it means on
                fmt["detect-zeroes"] = "unmap" if zeroes == "unmap" and \
                    disk.discard == "unmap" else "on"
            fmt.update({"driver": disk.format or "raw", "file": f"libvirt-{n}-storage"})
            if secret is not None:
                disksecrets.encrypt_format_node(fmt, secret)
            b.add("-blockdev", _json(fmt))
            node = f"libvirt-{n}-format"
        elif disk.device != "cdrom":
            raise VirError(P.VIR_ERR_XML_ERROR, f"disk '{disk.target}' has no source",
                           domain=P.VIR_FROM_DOMAIN)
        pairs = disk_bus(b, disk)
        pairs += [("drive", node), ("id", alias), ("bootindex", disk.boot)]
        if disk.shareable:       # several guests write it: QEMU must not lock it
            pairs.append(("share-rw", "on"))
        if write_cache is not None and disk.device == "disk":
            pairs.append(("write-cache", "on" if write_cache else "off"))
        pairs += error_policy_props(disk)
        b.add("-device", opts(pairs[0][1], *pairs[1:]))


def _secret_object(b: _Builder, disk: Disk, node: str, disk_secrets: DiskSecrets | None) -> str:
    """The secret object an encrypted disk's format node ``node`` opens its image with."""
    value = disk_secrets.passphrases.get(disk.target) if disk_secrets is not None else None
    if value is None:
        raise _internal(f"disk '{disk.target}' is encrypted but its secret was not given")
    alias = disksecrets.secret_alias(node)
    b.add("-object", _json(disksecrets.secret_object(alias, value, disk_secrets.master_key)))
    return alias


def _interfaces(b: _Builder, ifaces: list[Interface], tap_fds: Mapping[int, int]) -> None:
    for i, iface in enumerate(ifaces):
        alias = b.alias(iface)
        netdev = f"host{alias}"
        if iface.type == "user":
            b.add("-netdev", opts("user", ("id", netdev)))
        elif i in tap_fds:
            b.add("-netdev", opts("tap", ("fd", tap_fds[i]), ("id", netdev)))
        elif iface.type == "ethernet" and iface.target_dev:
            b.add("-netdev", opts("tap", ("ifname", iface.target_dev), ("script", "no"),
                                  ("downscript", "no"), ("id", netdev)))
        else:
            raise _internal(f"no tap device for interface {i} (type '{iface.type}')")
        model = NIC_MODELS[iface.model or "rtl8139"]
        pairs: list[tuple[str, object]] = [("netdev", netdev), ("id", alias), ("mac", iface.mac)]
        if iface.mtu is not None and model.startswith("virtio"):
            pairs.append(("host_mtu", iface.mtu))
        pairs.append(("bootindex", iface.boot))
        if model == "usb-net":
            pairs.insert(0, ("bus", "usb.0"))
        b.add("-device", opts(model, *pairs, *b.pci(iface)))


def _chardev_backend(dev: Chardev, chardev_id: str, channel_dir: str | None) -> str:
    src = dev.sources[0] if dev.sources else {}
    if dev.type == "pty":
        return opts("pty", ("id", chardev_id))
    if dev.type == "null":
        return opts("null", ("id", chardev_id))
    if dev.type == "spicevmc":
        return opts("spicevmc", ("id", chardev_id), ("name", "vdagent"))
    if dev.type == "vc":
        return opts("vc", ("id", chardev_id))
    if dev.type == "pipe":
        return opts("pipe", ("id", chardev_id), ("path", src["path"]))
    if dev.type == "dev":          # a host tty, or a host parallel port for <parallel>
        return opts("parport" if dev.kind == "parallel" else "tty", ("id", chardev_id),
                    ("path", src["path"]))
    if dev.type == "spiceport":
        return opts("spiceport", ("id", chardev_id), ("name", src.get("channel")))
    if dev.type == "qemu-vdagent":
        return opts("qemu-vdagent", ("id", chardev_id), ("name", "vdagent"))
    if dev.type == "file":
        return opts("file", ("id", chardev_id), ("path", src["path"]),
                    ("append", {"on": "on", "off": "off"}.get(src.get("append"))))
    if dev.type == "unix":
        path = src.get("path")
        if path is None:
            if channel_dir is None or not dev.target_name:
                raise _internal(f"no path for unix {dev.kind} {chardev_id}")
            path = f"{channel_dir.rstrip('/')}/{dev.target_name}"
        server = src.get("mode", "bind") == "bind"
        return opts("socket", ("id", chardev_id), ("path", path),
                    *((("server", "on"), ("wait", "off")) if server else ()))
    if dev.type == "tcp":
        server = src.get("mode", "bind") == "bind"
        return opts("socket", ("id", chardev_id), ("host", src.get("host") or "127.0.0.1"),
                    ("port", src["service"]),
                    *((("server", "on"), ("wait", "off")) if server else ()),
                    ("telnet", "on" if dev.protocol == "telnet" else None))
    if dev.type == "udp":
        host = next((s for s in dev.sources if s.get("mode", "connect") == "connect"), {})
        local = next((s for s in dev.sources if s.get("mode") == "bind"), {})
        return opts("udp", ("id", chardev_id), ("host", host.get("host") or "127.0.0.1"),
                    ("port", host.get("service")), ("localaddr", local.get("host")),
                    ("localport", local.get("service")))
    raise _unsupported(f"character device type '{dev.type}' is not supported")


def _chardevs(b: _Builder, chrs: list[Chardev], channel_dir: str | None) -> None:
    for dev in chrs:
        if dev.kind == "console" and dev.target_type == "serial":
            continue               # an alias of serial port 0, no device of its own
        alias = b.alias(dev)
        chardev_id = f"char{alias}"
        backend = _chardev_backend(dev, chardev_id, channel_dir)
        if dev.kind == "serial":
            driver = {"isa-serial": "isa-serial", "pci-serial": "pci-serial",
                      "usb-serial": "usb-serial"}.get(dev.target_model or dev.target_type)
            if driver is None:
                raise _unsupported(f"serial target type '{dev.target_type}' is not supported")
            b.add("-chardev", backend)
            extra = [("index", dev.target_port)] if driver == "isa-serial" else []
            b.add("-device", opts(driver, ("chardev", chardev_id), ("id", alias), *extra,
                                  *b.pci(dev)))
        elif dev.kind == "parallel":
            b.add("-chardev", backend)
            b.add("-device", opts("isa-parallel", ("chardev", chardev_id), ("id", alias)))
        elif dev.kind == "console":
            if dev.target_type != "virtio":
                raise _unsupported(f"console target type '{dev.target_type}' is not supported")
            b.add("-chardev", backend)
            b.add("-device", opts("virtconsole", ("chardev", chardev_id), ("id", alias)))
        else:                      # virtio channel
            a = dev.address
            ctl = a.int("controller") if a is not None else 0
            b.add("-chardev", backend)
            b.add("-device", opts("virtserialport", ("bus", f"virtio-serial{ctl}.0"),
                                  ("nr", a.int("port") if a is not None else None),
                                  ("chardev", chardev_id), ("id", alias),
                                  ("name", dev.target_name)))


def _input(b: _Builder, dev: Input) -> None:
    driver = INPUT_DEVICES.get((dev.type, dev.bus))
    alias = b.alias(dev)
    if driver is None:
        return                     # ps2 mouse / keyboard: part of the PC
    pairs = b.usb(dev) if dev.bus == "usb" else b.pci(dev)
    b.add("-device", opts(driver, ("id", alias), *pairs))


def _graphics(b: _Builder, gfx: list[Graphics]) -> None:
    if not gfx:
        b.add("-display", "none")
        return
    for g in gfx:
        addr = g.listen_address or "127.0.0.1"
        if g.type == "vnc":
            if any(l.get("type") == "socket" for l in g.listens):
                sock = next(l.get("socket") for l in g.listens if l.get("type") == "socket")
                spec = f"unix:{sock}"
                pairs: list[tuple[str, object]] = []
            elif g.autoport or g.port in (None, -1):
                spec = f"{_host(addr)}:0"
                pairs = [("to", VNC_AUTOPORT_DISPLAYS)]
            else:
                if g.port < VNC_PORT_BASE:
                    raise _unsupported(f"VNC port {g.port} is below {VNC_PORT_BASE}")
                spec = f"{_host(addr)}:{g.port - VNC_PORT_BASE}"
                pairs = []
            if g.passwd is not None:
                pairs.append(("password", "on"))   # set through QMP set_password
            if b.audiodev is not None:
                pairs.append(("audiodev", b.audiodev))
            b.add("-vnc", ",".join([quote(spec), *(f"{k}={quote(v)}" for k, v in pairs)]))
        else:
            pairs = [("port", g.port if g.port and g.port > 0 else None),
                     ("tls-port", g.tls_port if g.tls_port and g.tls_port > 0 else None),
                     ("addr", addr), ("disable-ticketing", "on" if g.passwd is None else None)]
            for elem in g.extra:          # <image compression=.../> and its kin
                if getattr(elem, "tag", None) in _SPICE_TUNING and elem.get("compression"):
                    pairs.append((_SPICE_TUNING[elem.tag], elem.get("compression")))
            pairs.append(("seamless-migration", "on"))
            if g.port in (None, -1):
                raise _internal("spice autoport needs a port chosen by the driver")
            b.add("-spice", opts(None, *pairs))


_SPICE_TUNING = {"image": "image-compression", "jpeg": "jpeg-wan-compression",
                 "zlib": "zlib-glz-wan-compression", "playback": "playback-compression"}
_AUDIO_DRIVERS = {"none": "none", "spice": "spice", "file": "wav", "alsa": "alsa", "oss": "oss",
                  "pulseaudio": "pa", "sdl": "sdl", "jack": "jack", "dbus": "dbus"}


def _audio(b: _Builder, audios: list[Audio]) -> None:
    """-audiodev per <audio> (apply_defaults adds one to every guest); displays and
    sound cards play to the first one."""
    for a in audios:
        b.add("-audiodev", _json({"id": f"audio{a.id}", "driver": _AUDIO_DRIVERS[a.type],
                                  **({"path": a.path} if a.type == "file" and a.path else {})}))
    b.audiodev = f"audio{audios[0].id}" if audios else None


# libvirt's sound model -> QEMU's device (HDA controllers get codec devices)
_SOUND_DEVICES = {"ich6": "intel-hda", "ich7": "intel-hda", "ich9": "ich9-intel-hda",
                  "ac97": "AC97", "es1370": "ES1370", "sb16": "sb16", "usb": "usb-audio"}
_HDA_CODECS = {"duplex": "hda-duplex", "micro": "hda-micro", "output": "hda-output"}


def _sound(b: _Builder, dev: Sound) -> None:
    alias = b.alias(dev)
    audiodev = f"audio{dev.audio_id}" if dev.audio_id is not None else b.audiodev
    hda = dev.model in ("ich6", "ich7", "ich9")
    pairs: list[tuple[str, object]] = [("id", alias)]
    if not hda:
        pairs.append(("audiodev", audiodev))
    where = b.usb(dev) if dev.model == "usb" else b.pci(dev)
    b.add("-device", opts(_SOUND_DEVICES[dev.model], *pairs, *where))
    if not hda:
        return
    for cad, codec in enumerate(dev.codecs or ["duplex"]):
        b.add("-device", opts(_HDA_CODECS[codec], ("id", f"{alias}-codec{cad}"),
                              ("bus", f"{alias}.0"), ("cad", cad), ("audiodev", audiodev)))


def _redirdev(b: _Builder, dev: Redirdev) -> None:
    alias = b.alias(dev)
    if dev.type == "spicevmc":
        backend = opts("spicevmc", ("id", f"char{alias}"), ("name", "usbredir"))
    else:
        src = dev.sources[0] if dev.sources else {}
        backend = opts("socket", ("id", f"char{alias}"), ("host", src.get("host") or "127.0.0.1"),
                       ("port", src.get("service")))
    b.add("-chardev", backend)
    b.add("-device", opts("usb-redir", ("chardev", f"char{alias}"), ("id", alias),
                          *b.usb(dev)))


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def _video(b: _Builder, videos: list[Video]) -> None:
    primary_done = False
    for v in videos:
        if v.model == "none":
            continue
        alias = b.alias(v)
        if not primary_done:
            driver = VIDEO_PRIMARY.get(v.model)
            primary_done = True
        else:
            driver = VIDEO_SECONDARY.get(v.model)
        if driver is None:
            raise _unsupported(f"video type '{v.model}' is only valid as primary video device"
                               if v.model in VIDEO_PRIMARY else f"video type '{v.model}' is "
                               "not supported")
        pairs: list[tuple[str, object]] = [("id", alias)]
        if v.model in ("vga", "cirrus", "vmvga", "bochs") and v.vram and driver != "ramfb":
            pairs.append(("vgamem_mb" if v.model != "bochs" else "vgamem",
                          v.vram // 1024 if v.model != "bochs" else v.vram * 1024))
        elif v.model == "qxl":
            pairs += [("ram_size", (v.ram or 65536) * 1024), ("vram_size", (v.vram or 65536) * 1024),
                      ("vgamem_mb", (v.vgamem or 16384) // 1024), ("max_outputs", v.heads or 1)]
        elif v.model == "virtio" and v.heads:
            pairs.append(("max_outputs", v.heads))
        b.add("-device", opts(driver, *pairs, *b.pci(v)))


def _watchdog(b: _Builder, dev: Watchdog) -> None:
    alias = b.alias(dev)
    if dev.model == "i6300esb":
        b.add("-device", opts("i6300esb", ("id", alias), *b.pci(dev)))
    elif dev.model == "ib700":
        b.add("-device", opts("ib700", ("id", alias)))
    elif dev.model == "itco":
        b.add("-global", "ICH9-LPC.noreboot=off")
    b.add("-watchdog-action", QEMU_ACTIONS[dev.action or "reset"])
