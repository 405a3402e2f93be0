"""Typed models of domain devices, one module per kind, and the device defaults pass.

``DomainDef.devices`` stays a list of lxml elements (every driver shares it and
unknown devices round-trip).  A driver that needs types calls::

    devs = parse_devices(defn)                  # [Disk | Controller | ... | lxml element]
    apply_defaults(defn, defaults)              # libvirt's device post-parse, in place;
                                                # ``defaults`` (a DeviceDefaults) is the
                                                # driver's part (drivers/qemu/defaults.py)
    validate_devices(defn)                      # VirError on what QEMU cannot do

Each model: ``Model.parse(elem)``, ``m.fill_defaults(ctx)``, ``m.validate()``,
``m.to_element()``; ``Model.parse(m.to_element()) == m``.
"""

from __future__ import annotations

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import fromstring, hardened_parser
from pyvirtd.xml.devices._base import Address, NotRunnable, not_runnable, xml_error
from pyvirtd.xml.devices.audio import Audio
from pyvirtd.xml.devices.chardev import GUEST_AGENT, Chardev, virtio_serial_address
from pyvirtd.xml.devices.controller import Controller
from pyvirtd.xml.devices.disk import Disk
from pyvirtd.xml.devices.graphics import Graphics
from pyvirtd.xml.devices.input import Input
from pyvirtd.xml.devices.interface import Interface
from pyvirtd.xml.devices.memballoon import Memballoon
from pyvirtd.xml.devices.misc import (Filesystem, Hub, Iommu, Memory, Panic, Shmem, Smartcard,
                                      Tpm, Vsock)
from pyvirtd.xml.devices.redirdev import Redirdev
from pyvirtd.xml.devices.rng import Rng
from pyvirtd.xml.devices.sound import Sound
from pyvirtd.xml.devices.video import Video
from pyvirtd.xml.devices.watchdog import Watchdog

# element tag -> model class
MODELS = {"disk": Disk, "controller": Controller, "interface": Interface, "serial": Chardev,
          "console": Chardev, "channel": Chardev, "input": Input, "graphics": Graphics,
          "video": Video, "memballoon": Memballoon, "rng": Rng, "watchdog": Watchdog,
          "sound": Sound, "redirdev": Redirdev, "audio": Audio, "parallel": Chardev,
          "panic": Panic, "vsock": Vsock, "iommu": Iommu, "hub": Hub, "shmem": Shmem,
          "tpm": Tpm, "memory": Memory, "filesystem": Filesystem, "smartcard": Smartcard}

Device = (Disk | Controller | Interface | Chardev | Input | Graphics | Video | Memballoon | Rng
          | Watchdog | Sound | Redirdev | Audio | Panic | Vsock | Iommu | Hub | Shmem
          | Tpm | Memory | Filesystem | Smartcard)

__all__ = ["Address", "Audio", "Chardev", "Controller", "Device", "DeviceDefaults", "Disk",
           "Filesystem", "Graphics", "Hub", "Input", "Interface", "Iommu", "MODELS",
           "Memballoon", "Memory", "Panic", "Redirdev", "Rng", "Shmem", "Smartcard", "Sound", "Tpm", "Video",
           "Vsock", "Watchdog", "apply_defaults", "assign_usb_ports", "free_slots", "is_q35",
           "parse_device", "parse_devices", "validate_devices"]


def parse_device(elem: etree._Element):
    """One device element -> its model, or the element itself for kinds not modelled."""
    model = MODELS.get(elem.tag)
    return model.parse(elem) if model is not None else elem


def parse_devices(defn) -> list:
    return [parse_device(e) for e in defn.devices]


def is_q35(machine: str | None) -> bool:
    return bool(machine) and ("q35" in machine)


_DEVICE_PARSER = hardened_parser()


def parse_device_xml(xml: str) -> etree._Element:
    """The element of a client's device XML (attach-device and its kin), with
    libvirt's syntax error for a document that does not parse."""
    try:
        return fromstring(xml, _DEVICE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise VirError(P.VIR_ERR_XML_DETAIL, f"(device_definition):{exc.lineno or 1}: {exc.msg}",
                       domain=P.VIR_FROM_DOMAIN) from None


def device_ctx(defn) -> dict:
    """What a model's fill_defaults and validate may ask about the guest: its
    machine, and its <ioapic driver> (an IOMMU's interrupt remapping needs 'qemu')."""
    features = defn.raw.get("features")
    ioapic = features.find("ioapic") if features is not None else None
    return {"q35": is_q35(defn.machine), "machine": defn.machine,
            "ioapic": ioapic.get("driver") if ioapic is not None else None}


class DeviceDefaults:
    """A hypervisor's part of the device post-parse (libvirt's per-driver
    devicesPostParseCallback, then its address assignment).

    `apply_defaults` calls it; this base adds nothing, so a hypervisor's
    values never become ``if hypervisor == ...`` branches here.  A driver
    subclasses it (drivers/qemu/defaults.py).
    """

    def device(self, dev: "Device", ctx: dict) -> None:
        """After the model's own fill_defaults: this hypervisor's default values."""

    def addresses(self, devs: list, add_controller, ctx: dict) -> None:
        """Put the devices on the guest's buses (USB ports, PCI slots); may add controllers."""


def apply_defaults(defn, defaults: DeviceDefaults) -> None:
    """libvirt's device post-parse for an x86 guest, in place on ``defn.devices``.

    Per device: the model's fill_defaults (disk bus/address, MACs, serial
    targets, ...), then the hypervisor's (``defaults.device``: disk driver,
    NIC model, ...).  Implicit devices, kept modest: the PCI root
    (pci-root / pcie-root), USB controller 0, the q35 SATA controller, an IDE
    controller for IDE disks, SCSI and virtio-serial controllers the devices
    need, a ps2 mouse and keyboard, a virtio memballoon, the serial console
    alias and its serial port, a video device when there is graphics, an
    audio backend.  Then ``defaults.addresses`` (QEMU: USB ports, PCI slots).
    """
    ctx = device_ctx(defn)
    devs = parse_devices(defn)
    conts = [d for d in devs if isinstance(d, Controller)]

    def has_controller(kind: str, index: int | None = None) -> bool:
        return any(c.type == kind and (index is None or c.index == index) for c in conts)

    def add_controller(kind: str, index: int, model: str | None = None) -> Controller:
        c = Controller(type=kind, index=index, model=model)
        conts.append(c)
        devs.append(c)
        return c

    _order_disks(devs)
    _assign_controller_indexes(conts)
    for dev in devs:
        if not isinstance(dev, etree._Element) and not isinstance(dev, Controller):
            dev.fill_defaults(ctx)
            defaults.device(dev, ctx)
    disks = [d for d in devs if isinstance(d, Disk)]
    # in libvirt's order: the USB controller, q35's SATA, then the PCI root
    if not has_controller("usb", 0):
        add_controller("usb", 0)
    if ctx["q35"] and not has_controller("sata", 0):
        add_controller("sata", 0)
    if not has_controller("pci", 0):
        add_controller("pci", 0)
    for bus, kind in (("scsi", "scsi"), ("ide", "ide"), ("sata", "sata")):   # libvirt's order
        if kind == "ide" and ctx["q35"]:
            continue
        for disk in disks:
            if disk.bus == bus and disk.address is not None and disk.address.type == "drive":
                idx = disk.address.int("controller")
                if not has_controller(kind, idx):
                    add_controller(kind, idx)
    _virtio_serial_defaults(devs, conts, add_controller)
    _ccid_defaults(devs, has_controller, add_controller)
    _console_defaults(devs)
    if not any(isinstance(d, Input) and d.bus == "ps2" and d.type == "mouse" for d in devs):
        devs.append(Input(type="mouse", bus="ps2"))
    if not any(isinstance(d, Input) and d.bus == "ps2" and d.type == "keyboard" for d in devs):
        devs.append(Input(type="keyboard", bus="ps2"))
    if not any(isinstance(d, Memballoon) for d in devs):
        devs.append(Memballoon(model="virtio"))
    if any(isinstance(d, Graphics) for d in devs) and not any(isinstance(d, Video) for d in devs):
        devs.append(Video(model="default"))
    _audio_defaults(devs)
    for dev in devs:
        if isinstance(dev, (Controller, Input, Memballoon, Video)):
            dev.fill_defaults(ctx)
    primary = [d for d in devs if isinstance(d, Video) and d.model != "none"]
    if primary and not any(v.primary for v in primary):
        primary[0].primary = True
    defaults.addresses(devs, add_controller, ctx)
    _root_port_defaults(conts)              # port numbers follow the addresses
    for c in conts:
        c.fill_defaults(ctx)
    defn.devices = [d if isinstance(d, etree._Element) else d.to_element() for d in devs]


def assign_usb_ports(devs: list) -> None:
    """USB devices without an address get the next port of USB bus 0, in libvirt's
    order (hubs, then virDomainUSBDeviceDefForeach: disks, CCID controllers, inputs,
    sound cards, redirected devices), after the ports the XML already names."""
    has_usb = any(isinstance(c, Controller) and c.type == "usb" and c.model != "none"
                  for c in devs)
    if not has_usb:
        return
    wanted = [*[d for d in devs if isinstance(d, Hub)],      # hubs first, as libvirt
              *[d for d in devs if isinstance(d, Disk) and d.bus == "usb"],
              *[c for c in devs if isinstance(c, Controller) and c.type == "ccid"],
              *[d for d in devs if isinstance(d, Input) and d.bus == "usb"],
              *[d for d in devs if isinstance(d, Sound) and d.model == "usb"],
              *[d for d in devs if isinstance(d, Redirdev)]]
    taken = {d.address.attrs.get("port") for d in wanted
             if d.address is not None and d.address.type == "usb"}
    port = 1
    for dev in wanted:
        if dev.address is not None:
            continue
        while str(port) in taken:
            port += 1
        dev.address = Address("usb", {"bus": "0", "port": str(port)})
        taken.add(str(port))


def _order_disks(devs: list) -> None:
    """Disks in libvirt's order (virDomainDiskInsert, as each is parsed): each goes
    after the last disk on its bus with a lower index, or before the first with
    a higher one; a disk on a bus of its own goes last.  The bus is the one the
    XML names (a disk without one shares the "unknown" bus with the others,
    as in libvirt, whose post-parse picks buses later).  The other devices keep
    their places."""
    slots = [i for i, d in enumerate(devs) if isinstance(d, Disk)]
    ordered: list = []
    for disk in (devs[i] for i in slots):
        at = -1
        for n in range(len(ordered) - 1, -1, -1):
            other = ordered[n]
            if other.bus == disk.bus and other.index > disk.index:
                at = n
            elif other.bus == disk.bus and at == -1:
                at = n + 1
        ordered.insert(len(ordered) if at == -1 else at, disk)
    for i, disk in zip(slots, ordered):
        devs[i] = disk


def _audio_defaults(devs: list) -> None:
    """A guest gets an audio backend (id 1) when it names none, display or not:
    SPICE's own with SPICE graphics, else the silent one
    (qemuDomainDefAddDefaultAudioBackend with qemu.conf's defaults).  Sound cards
    without an <audio id> play to the first backend; libvirt does not write
    that id into the XML."""
    if not any(isinstance(d, Audio) for d in devs):
        spice = any(isinstance(g, Graphics) and g.type == "spice" for g in devs)
        devs.append(Audio(id=1, type="spice" if spice else "none"))


def _assign_controller_indexes(conts: list) -> None:
    used: dict[str, set[int]] = {}
    for c in conts:
        if c.index is not None:
            used.setdefault(c.type, set()).add(c.index)
    for c in conts:
        if c.index is None:
            taken = used.setdefault(c.type, set())
            c.index = next(i for i in range(len(taken) + 1) if i not in taken)
            taken.add(c.index)


def _virtio_serial_defaults(devs: list, conts: list, add_controller) -> None:
    """Virtio channels and consoles get a virtio-serial port (from 1) on controller 0."""
    virtio = [d for d in devs if isinstance(d, Chardev) and d.target_type == "virtio"
              and d.kind in ("channel", "console")]
    if not virtio:
        return
    if not any(c.type == "virtio-serial" for c in conts):
        add_controller("virtio-serial", 0)
    used = {d.address.int("port") for d in virtio if d.address is not None}
    port = 1
    for dev in virtio:
        if dev.kind == "channel" and dev.address is None:
            while port in used:
                port += 1
            dev.address = virtio_serial_address(port)
            used.add(port)


def _ccid_defaults(devs: list, has_controller, add_controller) -> None:
    """Smartcards sit in the slots of CCID controller 0, added when missing."""
    cards = [d for d in devs if isinstance(d, Smartcard)]
    if not cards:
        return
    if not has_controller("ccid", 0):
        add_controller("ccid", 0)
    for card, slot in free_slots(cards):
        card.address = Address("ccid", {"controller": "0", "slot": str(slot)})


def free_slots(devs: list):
    """(device, slot) for each device without an address: the lowest slot numbers
    the others' addresses leave free, in order."""
    used = {d.address.int("slot") for d in devs if d.address is not None}
    slot = 0
    for dev in devs:
        if dev.address is None:
            while slot in used:
                slot += 1
            used.add(slot)
            yield dev, slot


def _root_port_defaults(conts: list) -> None:
    """pcie-root-ports and switch downstream ports get chassis = index and port
    numbers from 0x10 up, in index order (libvirt derives the port from the
    slot/function it puts the port at: 0x10 is 00:02.0, 0x11 is 00:02.1, ...)."""
    ports = sorted((c for c in conts if c.type == "pci" and c.model in (
        "pcie-root-port", "pcie-switch-downstream-port")), key=lambda c: c.index)
    used = {int(c.target["port"], 0) for c in ports if c.target and "port" in c.target}
    nxt = 0x10
    for c in ports:
        given = dict(c.target or {})
        a = c.address
        if "port" not in given and a is not None and a.type == "pci":
            given["port"] = f"0x{a.int('slot') * 8 + a.int('function'):x}"
        if "port" not in given:
            while nxt in used:
                nxt += 1
            given["port"] = f"0x{nxt:x}"
            used.add(nxt)
        c.target = {"chassis": given.pop("chassis", str(c.index)), "port": given.pop("port"),
                    **given}


def _console_defaults(devs: list) -> None:
    """A serial console is an alias of serial port 0: create the port if missing,
    and a guest with serial ports but no console gets one on port 0
    (virDomainDefAddConsoleCompat)."""
    consoles = [d for d in devs if isinstance(d, Chardev) and d.kind == "console"]
    serials = [d for d in devs if isinstance(d, Chardev) and d.kind == "serial"]
    for i, serial in enumerate(serials):
        if serial.target_port is None:
            serial.target_port = i
    parallels = [d for d in devs if isinstance(d, Chardev) and d.kind == "parallel"]
    for i, port in enumerate(parallels):
        if port.target_port is None:
            port.target_port = i
    if serials and not consoles:
        port0 = next((s for s in serials if s.target_port == 0), None)
        if port0 is not None:
            console = Chardev(kind="console", type=port0.type,
                              sources=[dict(s) for s in port0.sources], protocol=port0.protocol,
                              target_type="serial", target_port=0)
            devs.append(console)
            consoles.append(console)
    if consoles and consoles[0].target_type == "serial" and not serials:
        first = consoles[0]
        serial = Chardev(kind="serial", type=first.type, sources=[dict(s) for s in first.sources],
                         protocol=first.protocol, target_port=first.target_port or 0)
        serial.fill_defaults({})
        devs.append(serial)
    elif consoles and consoles[0].target_type == "serial" and serials:
        first, port0 = consoles[0], serials[0]
        # the console mirrors serial port 0 (virDomainDefAddConsoleCompat)
        first.type, first.sources = port0.type, [dict(s) for s in port0.sources]
        first.protocol, first.target_port = port0.protocol, port0.target_port


def validate_devices(defn, *, starting: bool = True) -> None:
    """What QEMU cannot do: unsupported kinds and values, duplicate targets, boot orders.

    With ``starting`` False (at define), what libvirt's schema allows but this
    driver cannot run yet (device kinds it does not model, other disk, interface,
    chardev or graphics types: NotRunnable) is accepted, to fail at start.
    """
    ctx = device_ctx(defn)
    seen_targets: set[str] = set()
    orders: set[int] = set()
    for dev in parse_devices(defn):
        if isinstance(dev, etree._Element):
            if dev.tag == "emulator" or not starting:
                continue
            raise not_runnable(f"device <{dev.tag}> is not supported by the QEMU driver")
        try:
            if isinstance(dev, (Watchdog, Iommu)):
                dev.validate(ctx)
            else:
                dev.validate()
        except NotRunnable:
            if starting:
                raise
        if isinstance(dev, Disk):
            if dev.target in seen_targets:
                raise xml_error(f"target '{dev.target}' duplicated for disk sources")
            seen_targets.add(dev.target)
        boot = getattr(dev, "boot", None)
        if boot is not None:
            if defn.boot:
                raise xml_error("per-device boot elements cannot be used together with "
                                "os/boot elements")
            if boot in orders:
                raise xml_error(f"boot order '{boot}' used for more than one device")
            orders.add(boot)
