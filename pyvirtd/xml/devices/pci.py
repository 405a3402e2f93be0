"""PCI addresses for a QEMU x86 guest's devices, as libvirt assigns them.

libvirt gives every PCI device an <address type='pci'> when a QEMU guest is
defined (qemuDomainAssignPCIAddresses), so the guest's layout is stable and
shows in its XML.  The topology is a set of buses, one per PCI controller
(its index is the bus number), each with the slots its model offers and the
kind of device it takes:

* conventional PCI endpoints go to a hot-pluggable conventional slot: the pc
  machine's pci-root (slots 1-31), a pci-bridge or a pcie-to-pci-bridge
  (slots 1-31), lowest bus first;
* on q35, PCI Express endpoints sit alone at slot 0 behind a pcie-root-port
  or a pcie-switch-downstream-port; the root ports themselves are packed
  eight functions to a slot of pcie-root (or of a pcie-expander-bus);
* bridges may also use slots that are not hot-pluggable (a dmi-to-pci-bridge,
  a pci-expander-bus), switch downstream ports go to their upstream port, and
  expander buses and dmi-to-pci-bridges to the root bus.

Fixed places come first: on pc the PIIX3 (slot 1: IDE at .1, the piix3-uhci
USB controller at .2) and the primary video at slot 2; on q35 the primary
video at 00:01.0, the ICH9 sound card at 00:1b.0, a dmi-to-pci-bridge at
00:1e.0 and the SATA controller at 00:1f.2.  A USB2 controller set (an EHCI
and its UHCI companions, one index) shares a slot: the EHCI at function 7,
the companions at 0, 1, 2.  Addresses given in the XML are kept.

When the devices do not fit, the topology grows as libvirt's does: a dry run
in device order adds a pcie-root-port for each PCI Express device that finds
no free port, a pcie-to-pci-bridge (behind a new root port) for the first
conventional device on q35 that finds no slot, and a pci-bridge for each
further conventional bus needed (on pc, every time).  The new controllers
get the next free indexes in the order the dry run needed them; when the
definition named no root ports and some were added, one more is added for
hotplug.  The dry run counts slot 2 of pc as the video device's even when
there is none, and the slots of the new bridges only once it is over, so, as
with libvirt, a guest whose devices fill every slot but that a new bridge
needs is refused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.devices._base import Address
from pyvirtd.xml.devices.controller import Controller
from pyvirtd.xml.devices.disk import Disk
from pyvirtd.xml.devices.input import Input
from pyvirtd.xml.devices.interface import Interface
from pyvirtd.xml.devices.memballoon import Memballoon
from pyvirtd.xml.devices.misc import Filesystem, Memory, Panic, Shmem, Vsock
from pyvirtd.xml.devices.rng import Rng
from pyvirtd.xml.devices.sound import Sound
from pyvirtd.xml.devices.video import Video
from pyvirtd.xml.devices.watchdog import Watchdog

PIIX3_SLOT, VIDEO_SLOT = 1, 2
ICH9_SOUND_SLOT, DMI_BRIDGE_SLOT, LPC_SLOT = 0x1B, 0x1E, 0x1F
MAX_INDEX = 255          # a PCI controller index is a bus number
# NIC models that are not PCI devices
_NON_PCI_NICS = ("ne2k_isa", "usb-net", "spapr-vlan", "smc91c111", "lan9118")
_NON_PCI_SOUNDS = ("sb16", "pcspk", "usb")
# function of each member of a USB2 controller set
_USB2_FUNCTIONS = {"ich9-ehci1": 7, "ich9-uhci1": 0, "ich9-uhci2": 1, "ich9-uhci3": 2}
_PCIE_NICS = ("virtio", "virtio-transitional", "virtio-non-transitional", "e1000e", "igb",
              "vmxnet3")
_PCIE_USB = ("qemu-xhci", "nec-xhci")

# What each bus model offers: its slot range and the kinds of device it takes.
# Kinds: "pci" a conventional endpoint (needs hotplug), "bridge" a conventional
# slot for a controller, "pcie" a PCI Express device alone on a port,
# "root-port", "integrated" (a device of the root complex), "downstream".
_BUS_SLOTS = {"pci-root": range(1, 32), "pcie-root": range(1, 32), "pci-bridge": range(1, 32),
              "pcie-to-pci-bridge": range(1, 32), "dmi-to-pci-bridge": range(0, 32),
              "pci-expander-bus": range(0, 32), "pcie-expander-bus": range(0, 32),
              "pcie-switch-upstream-port": range(0, 32), "pcie-root-port": range(0, 1),
              "pcie-switch-downstream-port": range(0, 1)}
_BUS_TAKES = {"pci-root": ("pci", "bridge", "pci-root"), "pci-bridge": ("pci", "bridge"),
              "pcie-to-pci-bridge": ("pci", "bridge"), "dmi-to-pci-bridge": ("bridge",),
              "pci-expander-bus": ("bridge",), "pcie-root": ("root-port", "integrated"),
              "pcie-expander-bus": ("root-port",), "pcie-root-port": ("pcie",),
              "pcie-switch-downstream-port": ("pcie",),
              "pcie-switch-upstream-port": ("downstream",)}
# what a PCI controller itself plugs into
_CONTROLLER_NEEDS = {"pci-bridge": "bridge", "pcie-root-port": "root-port",
                     "pcie-to-pci-bridge": "pcie", "dmi-to-pci-bridge": "integrated",
                     "pcie-expander-bus": "integrated", "pci-expander-bus": "pci-root",
                     "pcie-switch-upstream-port": "pcie",
                     "pcie-switch-downstream-port": "downstream"}


def pci_address(slot: int, function: int = 0, *, bus: int = 0,
                multifunction: bool = False) -> Address:
    attrs = {"domain": "0x0000", "bus": f"0x{bus:02x}", "slot": f"0x{slot:02x}",
             "function": f"0x{function:x}"}
    if multifunction:
        attrs["multifunction"] = "on"
    return Address("pci", attrs)


def _no_slot_for(model: str) -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR,
                    f"a PCI slot is needed to connect a PCI controller model='{model}', but "
                    "none is available, and it cannot be automatically added",
                    domain=P.VIR_FROM_QEMU)


def _no_more_slots() -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR, "No more available PCI slots",
                    domain=P.VIR_FROM_QEMU)


@dataclass
class _Topology:
    """The guest's buses and which (slot, function) of each is taken."""
    q35: bool
    models: dict[int, str] = field(default_factory=dict)         # bus index -> model
    used: dict[int, set[tuple[int, int]]] = field(default_factory=dict)
    port_slots: set[tuple[int, int]] = field(default_factory=set)  # (bus, slot) of root ports

    def add_bus(self, index: int, model: str) -> None:
        self.models[index] = model
        self.used.setdefault(index, set())

    def take(self, bus: int, slot: int, function: int = 0, *, root_port: bool = False) -> None:
        self.used.setdefault(bus, set()).add((slot, function))
        if root_port:
            self.port_slots.add((bus, slot))

    def slot_busy(self, bus: int, slot: int) -> bool:
        return any(s == slot for s, _ in self.used.get(bus, ()))

    def find(self, need: str) -> tuple[int, int, int] | None:
        """The first free place for a device of kind ``need``, lowest bus first."""
        for bus in sorted(self.models):
            model = self.models[bus]
            if need not in _BUS_TAKES.get(model, ()):
                continue
            for slot in _BUS_SLOTS[model]:
                if need == "root-port" and (bus, slot) in self.port_slots:
                    free = [f for f in range(8) if (slot, f) not in self.used[bus]]
                    if free:
                        return bus, slot, free[0]
                elif not self.slot_busy(bus, slot):
                    return bus, slot, 0
        return None

    def new_index(self) -> int:
        idx = next((i for i in range(1, MAX_INDEX + 1) if i not in self.models), None)
        if idx is None:
            raise _no_more_slots()
        return idx


def _usb2_key(dev) -> int | None:
    """The index of the USB2 controller set ``dev`` belongs to, if any."""
    if isinstance(dev, Controller) and dev.type == "usb" and dev.model in _USB2_FUNCTIONS:
        return dev.index
    return None


def _endpoint_kind(dev, q35: bool) -> str | None:
    """What a non-PCI-controller device plugs into: 'pci', 'pcie' or None (not a PCI device)."""
    if isinstance(dev, Interface):
        if dev.type == "hostdev" or (dev.model or ("virtio" if q35 else "rtl8139")) \
                in _NON_PCI_NICS:
            return None
        return "pcie" if q35 and (dev.model or "virtio") in _PCIE_NICS else "pci"
    if isinstance(dev, Sound):
        return None if dev.model in _NON_PCI_SOUNDS or (q35 and dev.model == "ich9") else "pci"
    if isinstance(dev, Controller):
        if dev.type in ("pci", "ide", "fdc", "ccid", "isa", "xenbus"):
            return None
        if dev.type == "usb":
            if dev.model == "none":
                return None
            return "pcie" if q35 and dev.model in _PCIE_USB else "pci"
        if q35 and dev.type == "sata" and dev.index == 0:
            return None
        if dev.type == "scsi":
            return "pcie" if q35 and (dev.model or "").startswith("virtio") else "pci"
        return "pcie" if q35 else "pci"            # virtio-serial, extra AHCI
    if isinstance(dev, Disk):
        return ("pcie" if q35 else "pci") if dev.bus == "virtio" else None
    if isinstance(dev, Memballoon):
        return ("pcie" if q35 else "pci") if dev.model == "virtio" else None
    if isinstance(dev, Rng):
        return "pcie" if q35 else "pci"
    if isinstance(dev, Watchdog):
        return "pci" if dev.model == "i6300esb" else None
    if isinstance(dev, Video):
        if dev.model in ("none", "ramfb"):
            return None
        return "pcie" if q35 and dev.model == "virtio" else "pci"
    if isinstance(dev, Input):
        return ("pcie" if q35 else "pci") if dev.bus == "virtio" else None
    if isinstance(dev, (Vsock, Filesystem)):     # virtio-9p-pci, vhost-user-fs-pci
        return "pcie" if q35 else "pci"
    if isinstance(dev, Shmem):                     # ivshmem is conventional PCI
        return "pci"
    if isinstance(dev, Memory):
        return ("pcie" if q35 else "pci") if dev.model == "virtio-mem" else None
    if isinstance(dev, Panic):
        return "pci" if dev.model == "pvpanic" else None
    return None


def _endpoints(devs: list, q35: bool) -> list:
    """Devices to place, in libvirt's order (the primary video is placed apart)."""
    of = lambda kind: [d for d in devs if isinstance(d, kind)]  # noqa: E731
    videos = [v for v in of(Video) if v.model not in ("none", "ramfb")]
    ordered = [*of(Filesystem), *of(Interface), *of(Sound), *of(Controller), *of(Disk), *of(Memballoon),
               *of(Rng), *of(Watchdog), *videos[1:], *of(Shmem), *of(Input), *of(Vsock),
               *of(Panic), *of(Memory)]
    return [d for d in ordered if d.address is None and _endpoint_kind(d, q35) is not None]


def _pci_controllers(devs: list) -> list[Controller]:
    return sorted((c for c in devs if isinstance(c, Controller) and c.type == "pci"
                   and c.index is not None and c.index > 0), key=lambda c: c.index)


def _topology(devs: list, q35: bool) -> _Topology:
    """The buses the definition has and the places its addresses and fixed devices take."""
    topo = _Topology(q35)
    topo.add_bus(0, "pcie-root" if q35 else "pci-root")
    for c in _pci_controllers(devs):
        if c.model in _BUS_SLOTS:
            topo.add_bus(c.index, c.model)
    topo.take(0, 0)                                       # the host bridge
    topo.take(0, LPC_SLOT if q35 else PIIX3_SLOT)         # the ISA bridge and its functions
    for dev in devs:
        a = getattr(dev, "address", None)
        if a is not None and a.type == "pci":
            port = isinstance(dev, Controller) and dev.model == "pcie-root-port"
            topo.take(a.int("bus"), a.int("slot"), a.int("function"), root_port=port)
    return topo


def _fixed_places(devs: list, topo: _Topology, q35: bool) -> None:
    """The devices libvirt puts at fixed places on the root bus."""
    videos = [v for v in devs if isinstance(v, Video) and v.model not in ("none", "ramfb")]
    if videos and videos[0].address is None:
        slot = 1 if q35 else VIDEO_SLOT
        if not topo.slot_busy(0, slot):
            videos[0].address = pci_address(slot)
            topo.take(0, slot)
    for c in (d for d in devs if isinstance(d, Controller) and d.address is None):
        if not q35 and c.index == 0 and (c.type, c.model) in (
                ("usb", "piix3-uhci"), ("ide", None), ("ide", "piix3")):
            c.address = pci_address(PIIX3_SLOT, 2 if c.type == "usb" else 1)
        elif q35 and c.type == "sata" and c.index == 0:
            c.address = pci_address(LPC_SLOT, 2)
        elif q35 and c.model == "dmi-to-pci-bridge" and not topo.slot_busy(0, DMI_BRIDGE_SLOT):
            c.address = pci_address(DMI_BRIDGE_SLOT)
            topo.take(0, DMI_BRIDGE_SLOT)
    for snd in devs:
        if q35 and isinstance(snd, Sound) and snd.model == "ich9" and snd.address is None \
                and not topo.slot_busy(0, ICH9_SOUND_SLOT):
            snd.address = pci_address(ICH9_SOUND_SLOT)
            topo.take(0, ICH9_SOUND_SLOT)


def _grow(topo: _Topology, need: str, added: list[str]) -> bool:
    """Add the bus a device of kind ``need`` lacks (dry run); False if none can help."""
    if need == "pcie" and topo.q35:
        added.append("pcie-root-port")
    elif need == "pci" and topo.q35 and "pcie-to-pci-bridge" not in topo.models.values():
        added.append("pcie-root-port")
        port = topo.new_index()
        topo.add_bus(port, "pcie-root-port")
        topo.take(port, 0)                        # by the new bridge
        added.append("pcie-to-pci-bridge")
    elif need == "pci":
        added.append("pci-bridge")
    else:
        return False
    topo.add_bus(topo.new_index(), added[-1])
    return True


def _plan(devs: list, q35: bool) -> tuple[list[tuple[list, str]], list[tuple[list, str]]]:
    """What to place, in order: the PCI controllers, then the endpoints; each unit
    a list of devices sharing a slot, and what they need."""
    controllers: list[tuple[list, str]] = []
    for c in _pci_controllers(devs):
        need = _CONTROLLER_NEEDS.get(c.model or "")
        if c.address is None and need is not None and (q35 or need in ("bridge", "pci-root")):
            controllers.append(([c], need))
    units: list[tuple[list, str]] = []
    usb2: dict[int, list] = {}
    for dev in _endpoints(devs, q35):
        key = _usb2_key(dev)
        if key is not None:
            if key not in usb2:
                usb2[key] = []
                units.append((usb2[key], "pci"))
            usb2[key].append(dev)
        else:
            units.append(([dev], _endpoint_kind(dev, q35)))
    return controllers, units


def _keep_video_slot(topo: _Topology) -> None:
    """On pc, the dry run counts slot 2 as the video device's even when there is
    none, so that one added later still finds room (the real pass may use it)."""
    if not topo.q35 and not topo.slot_busy(0, VIDEO_SLOT):
        topo.take(0, VIDEO_SLOT)


def assign(devs: list, add_controller, *, q35: bool) -> None:
    """Give every PCI device of a pc or q35 guest without an address one, in place,
    adding the controllers the topology lacks.

    ``add_controller(type, index, model)`` appends a controller to the
    definition and returns it.  Raises VirError (libvirt's internal error)
    when a device or a new bridge finds no slot and none can be added.
    """
    topo = _topology(devs, q35)
    _fixed_places(devs, topo, q35)
    had_ports = any(isinstance(c, Controller) and c.model == "pcie-root-port" for c in devs)

    # the dry run: which controllers the devices need, in the order they need them
    dry = copy.deepcopy(topo)
    added: list[str] = []
    controllers, units = _plan(devs, q35)
    _keep_video_slot(dry)
    for members, need in controllers + units:
        spot = dry.find(need)
        if spot is None and _grow(dry, need, added):
            spot = dry.find(need)
        if spot is not None:
            dry.take(*spot, root_port=need == "root-port")
    # each new pci-bridge needs a slot of its own, which the dry run has not
    # counted: take them now, and refuse when one finds none (libvirt cannot
    # add a bridge for a bridge either)
    n = 0
    while n < len(added):
        if added[n] == "pci-bridge":
            spot = dry.find("pci")
            if spot is None:
                raise _no_slot_for("pci-bridge")
            dry.take(*spot)
        n += 1
    if q35 and not had_ports and "pcie-root-port" in added:
        added.append("pcie-root-port")                 # a free one, for hotplug
    for model in added:
        idx = topo.new_index()
        add_controller("pci", idx, model)       # appends it to devs
        topo.add_bus(idx, model)

    # the real pass: PCI controllers by index, then the endpoints
    placed_ports = []
    controllers, units = _plan(devs, q35)
    for members, need in controllers + units:
        spot = topo.find(need)
        if spot is None:
            first = members[0]
            if isinstance(first, Controller) and first.type == "pci":
                raise _no_slot_for(first.model)
            raise _no_more_slots()
        bus, slot, function = spot
        if len(members) > 1 or _usb2_key(members[0]) is not None:
            for dev in members:
                fn = _USB2_FUNCTIONS[dev.model]
                dev.address = pci_address(slot, fn, bus=bus, multifunction=fn == 0)
                topo.take(bus, slot, fn)
            continue
        members[0].address = pci_address(slot, function, bus=bus)
        topo.take(bus, slot, function, root_port=need == "root-port")
        if need == "root-port":
            placed_ports.append(members[0])
    _mark_multifunction(placed_ports)


def _mark_multifunction(ports: list[Controller]) -> None:
    """Root ports placed together in one slot: function 0 says multifunction='on'."""
    for port in ports:
        a = port.address
        if a.int("function") == 0 and "multifunction" not in a.attrs and sum(
                p.address.int("bus") == a.int("bus") and p.address.int("slot") == a.int("slot")
                for p in ports) > 1:
            a.attrs["multifunction"] = "on"


def assign_pc(devs: list, add_controller) -> None:
    assign(devs, add_controller, q35=False)


def assign_q35(devs: list, add_controller) -> None:
    assign(devs, add_controller, q35=True)
