"""PCI addresses for a QEMU x86 guest's devices, as libvirt assigns them.

libvirt gives every PCI device an <address type='pci'> when a QEMU guest is
defined (qemuDomainAssignPCIAddresses), so the guest's layout is stable and
shows in its XML.  On the pc machine everything sits on bus 0:

* slot 0 is the host bridge, slot 1 the PIIX3 (ISA bridge at .0, IDE at .1,
  the piix3-uhci USB controller at .2, power management at .3);
* slot 2 is kept for the primary video device, when there is one;
* the rest get the lowest free slot from 3 up, kind by kind in libvirt's
  order: PCI bridges, NICs, sound cards, controllers, virtio disks, the
  balloon, RNGs, watchdogs, other video devices, virtio input devices.

A USB2 controller set (an EHCI and its UHCI companions, one index) shares a
slot: the EHCI at function 7, the companions at 0, 1, 2.  Addresses given in
the XML are kept and their slots skipped.

On q35 (`assign_q35`) the root complex holds the primary video (00:01.0), the
ICH9 sound card (00:1b.0), the SATA controller (00:1f.2) and the
pcie-root-ports (00:02.0 up, eight functions a slot); every other PCI Express
device sits alone behind a root port, and conventional PCI devices go to a
pcie-to-pci-bridge (slots from 1).  Root ports and the bridge are added as
needed, with the indexes libvirt gives them (a counting pass in device order,
where a new bridge brings its own new root port), plus one spare for hotplug
when the definition named no root ports.
"""

from __future__ import annotations


from pyvirtd.xml.devices._base import Address
from pyvirtd.xml.devices.controller import Controller
from pyvirtd.xml.devices.disk import Disk
from pyvirtd.xml.devices.input import Input
from pyvirtd.xml.devices.interface import Interface
from pyvirtd.xml.devices.memballoon import Memballoon
from pyvirtd.xml.devices.rng import Rng
from pyvirtd.xml.devices.sound import Sound
from pyvirtd.xml.devices.video import Video
from pyvirtd.xml.devices.watchdog import Watchdog

SLOTS = range(32)
PIIX3_SLOT, VIDEO_SLOT = 1, 2
# NIC models that are not PCI devices
_NON_PCI_NICS = ("ne2k_isa", "usb-net", "spapr-vlan", "smc91c111", "lan9118")
_NON_PCI_SOUNDS = ("sb16", "pcspk", "usb")
# function of each member of a USB2 controller set
_USB2_FUNCTIONS = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}


def pci_address(slot: int, function: int = 0, *, multifunction: bool = False) -> Address:
    attrs = {"domain": "0x0000", "bus": "0x00", "slot": f"0x{slot:02x}",
             "function": f"0x{function:x}"}
    if multifunction:
        attrs["multifunction"] = "on"
    return Address("pci", attrs)


def assign_pc(devs: list) -> None:
    """Give every PCI device of a pc guest without an address one, in place."""
    used = {PIIX3_SLOT, 0}
    if any(isinstance(v, Video) and v.model not in ("none", "ramfb") for v in devs):
        used.add(VIDEO_SLOT)
    for dev in devs:
        a = getattr(dev, "address", None)
        if a is not None and a.type == "pci" and a.int("bus") == 0:
            used.add(a.int("slot"))

    def next_slot() -> int:
        slot = next(s for s in SLOTS if s not in used)
        used.add(slot)
        return slot

    def place(dev) -> None:
        if dev.address is None:
            dev.address = pci_address(next_slot())

    of = lambda kind: [d for d in devs if isinstance(d, kind)]  # noqa: E731
    controllers = of(Controller)
    for c in controllers:                                 # the PIIX3's own functions
        if c.address is None and c.index == 0 and (c.type, c.model) in (
                ("usb", "piix3-uhci"), ("ide", None), ("ide", "piix3")):
            c.address = pci_address(PIIX3_SLOT, 2 if c.type == "usb" else 1)
    videos = [v for v in of(Video) if v.model not in ("none", "ramfb")]
    if videos and videos[0].address is None:
        videos[0].address = pci_address(VIDEO_SLOT)
    for c in controllers:
        if c.type == "pci" and c.index > 0:
            place(c)
    for nic in of(Interface):
        if nic.type != "hostdev" and (nic.model or "rtl8139") not in _NON_PCI_NICS:
            place(nic)
    for sound in of(Sound):
        if sound.model not in _NON_PCI_SOUNDS:
            place(sound)
    usb2_slots: dict[int, int] = {}
    for c in controllers:
        if c.address is not None or c.type in ("pci", "ide", "fdc", "ccid", "isa", "xenbus"):
            continue
        if c.type == "usb" and c.model == "none":
            continue
        if c.type == "usb" and c.model in _USB2_FUNCTIONS:
            slot = usb2_slots.get(c.index)
            if slot is None:
                slot = usb2_slots[c.index] = next_slot()
            fn = _USB2_FUNCTIONS[c.model]
            c.address = pci_address(slot, fn, multifunction=fn == 0)
            continue
        place(c)
    for disk in of(Disk):
        if disk.bus == "virtio":
            place(disk)
    for balloon in of(Memballoon):
        if balloon.model == "virtio":
            place(balloon)
    for rng in of(Rng):
        place(rng)
    for dog in of(Watchdog):
        if dog.model == "i6300esb":
            place(dog)
    for video in videos[1:]:
        place(video)
    for inp in of(Input):
        if inp.bus == "virtio":
            place(inp)



# -- q35 ------------------------------------------------------------------------

ICH9_SOUND_SLOT, LPC_SLOT, ROOT_PORT_SLOT = 0x1B, 0x1F, 2
_PCIE_NICS = ("virtio", "virtio-transitional", "virtio-non-transitional", "e1000e", "igb",
              "vmxnet3")
_PCIE_USB = ("qemu-xhci", "nec-xhci")


def _q35_kind(dev) -> str | None:
    """'pcie' (behind a root port), 'pci' (on the PCI bridge) or None (not placed here)."""
    if isinstance(dev, Interface):
        if dev.type == "hostdev" or (dev.model or "virtio") in _NON_PCI_NICS:
            return None
        return "pcie" if (dev.model or "virtio") in _PCIE_NICS else "pci"
    if isinstance(dev, Sound):
        return None if dev.model in _NON_PCI_SOUNDS or dev.model == "ich9" else "pci"
    if isinstance(dev, Controller):
        if dev.type in ("pci", "ide", "fdc", "ccid", "isa", "xenbus"):
            return None
        if dev.type == "sata" and dev.index == 0:
            return None
        if dev.type == "usb":
            if dev.model == "none":
                return None
            return "pcie" if dev.model in _PCIE_USB else "pci"
        if dev.type == "scsi":
            return "pcie" if (dev.model or "").startswith("virtio") else "pci"
        return "pcie"                      # virtio-serial, extra AHCI
    if isinstance(dev, Disk):
        return "pcie" if dev.bus == "virtio" else None
    if isinstance(dev, Memballoon):
        return "pcie" if dev.model == "virtio" else None
    if isinstance(dev, Rng):
        return "pcie"
    if isinstance(dev, Watchdog):
        return "pci" if dev.model == "i6300esb" else None
    if isinstance(dev, Video):
        return "pcie" if dev.model == "virtio" else "pci"
    if isinstance(dev, Input):
        return "pcie" if dev.bus == "virtio" else None
    return None


def _q35_order(devs: list) -> list:
    """The devices to place, in libvirt's order (the primary video excluded)."""
    of = lambda kind: [d for d in devs if isinstance(d, kind)]  # noqa: E731
    videos = [v for v in of(Video) if v.model not in ("none", "ramfb")]
    ordered = [*of(Interface), *of(Sound), *of(Controller), *of(Disk), *of(Memballoon),
               *of(Rng), *of(Watchdog), *videos[1:], *of(Input)]
    return [d for d in ordered if d.address is None and _q35_kind(d) is not None]


def assign_q35(devs: list, add_controller) -> None:
    """Give every PCI device of a q35 guest without an address one, adding
    pcie-root-ports and a pcie-to-pci-bridge as needed, in place.

    ``add_controller(type, index, model)`` appends a controller to the
    definition and returns it.
    """
    conts = [d for d in devs if isinstance(d, Controller)]
    ports = sorted((c for c in conts if c.type == "pci" and c.model == "pcie-root-port"),
                   key=lambda c: c.index)
    bridges = [c for c in conts if c.type == "pci" and c.model == "pcie-to-pci-bridge"]
    used_index = {c.index for c in conts if c.type == "pci"}
    user_ports = bool(ports)

    def new_index() -> int:
        idx = next(i for i in range(1, 256) if i not in used_index)
        used_index.add(idx)
        return idx

    # pass 1: how many root ports, and whether a bridge (libvirt's counting pass)
    taken = {c.address.int("bus") for c in devs
             if getattr(c, "address", None) is not None and c.address.type == "pci"}
    free = [c.index for c in ports if c.index not in taken]
    for dev in _q35_order(devs):
        kind = _q35_kind(dev)
        if kind == "pci" and not bridges:
            port = add_controller("pci", new_index(), "pcie-root-port")
            ports.append(port)
            bridges.append(add_controller("pci", new_index(), "pcie-to-pci-bridge"))
        elif kind == "pcie":
            if free:
                free.pop(0)
            else:
                ports.append(add_controller("pci", new_index(), "pcie-root-port"))
    if not user_ports and ports:
        ports.append(add_controller("pci", new_index(), "pcie-root-port"))  # for hotplug

    # pass 2: addresses.  The root complex first ...
    used_root = {(a.int("slot"), a.int("function")) for d in devs
                 if (a := getattr(d, "address", None)) is not None and a.type == "pci"
                 and a.int("bus") == 0}
    videos = [v for v in devs if isinstance(v, Video) and v.model not in ("none", "ramfb")]
    if videos and videos[0].address is None and (1, 0) not in used_root:
        videos[0].address = pci_address(1)
        used_root.add((1, 0))
    for c in conts:
        if c.type == "sata" and c.index == 0 and c.address is None:
            c.address = pci_address(LPC_SLOT, 2)
    for snd in devs:
        if isinstance(snd, Sound) and snd.model == "ich9" and snd.address is None \
                and (ICH9_SOUND_SLOT, 0) not in used_root:
            snd.address = pci_address(ICH9_SOUND_SLOT)
            used_root.add((ICH9_SOUND_SLOT, 0))
    # ... then the root ports, eight to a slot from 00:02.0, in index order
    ports.sort(key=lambda c: c.index)
    spots = ((slot, fn) for slot in range(ROOT_PORT_SLOT, LPC_SLOT) for fn in range(8)
             if (slot, fn) not in used_root)
    placed = []
    for port in ports:
        if port.address is None:
            slot, fn = next(spots)
            port.address = pci_address(slot, fn)
            placed.append(port)
    for port in placed:
        slot = port.address.int("slot")
        if port.address.int("function") == 0 and \
                sum(p.address.int("slot") == slot for p in placed) > 1:
            port.address.attrs["multifunction"] = "on"
    # ... then the devices behind them: the bridge first (it is a PCI controller)
    busy = {a.int("bus") for d in devs
            if (a := getattr(d, "address", None)) is not None and a.type == "pci"}
    open_ports = [p.index for p in ports if p.index not in busy]

    def behind_root_port(dev) -> None:
        if open_ports:
            dev.address = Address("pci", {"domain": "0x0000", "bus": f"0x{open_ports.pop(0):02x}",
                                          "slot": "0x00", "function": "0x0"})

    for bridge in bridges:
        if bridge.address is None:
            behind_root_port(bridge)
    bridge_slots = iter(range(1, 32))
    for dev in _q35_order(devs):
        if _q35_kind(dev) == "pcie":
            behind_root_port(dev)
        elif bridges:
            dev.address = Address("pci", {"domain": "0x0000",
                                          "bus": f"0x{bridges[0].index:02x}",
                                          "slot": f"0x{next(bridge_slots):02x}",
                                          "function": "0x0"})
