"""The QEMU driver's device defaults: its part of the shared device post-parse.

pyvirtd.xml.devices.apply_defaults does what libvirt does for every driver;
what libvirt's QEMU driver adds (qemuDomainDeviceDefPostParse and
qemuDomainAssignAddresses) is here, as a DeviceDefaults hook:

* a file, block or volume disk gets ``<driver name='qemu'>``, and a file or
  block one the raw format when it names none;
* an <encryption> gets engine='qemu', and the old qcow one is refused;
* a NIC without a model gets rtl8139 (QEMU's default on x86);
* USB devices get ports on bus 0, and PCI devices slots (pc: one bus;
  q35: root ports and bridges, pyvirtd/xml/devices/pci.py).
"""

from __future__ import annotations

from pyvirtd.xml.devices import DeviceDefaults, Disk, Interface, assign_usb_ports
from pyvirtd.xml.devices.pci import assign_pc, assign_q35

from . import disksecrets

# QEMU's NIC when the XML names none (qemuDomainDefaultNetModel on x86)
DEFAULT_NIC_MODEL = "rtl8139"


class QemuDeviceDefaults(DeviceDefaults):
    def device(self, dev, ctx: dict) -> None:
        if isinstance(dev, Disk) and dev.type in ("file", "block", "volume"):
            dev.driver_name = dev.driver_name or "qemu"
            if dev.format is None and dev.type != "volume":
                dev.format = "raw"
            disksecrets.check(dev)
            disksecrets.set_engine(dev)
        elif isinstance(dev, Interface) and dev.model is None:
            dev.model = DEFAULT_NIC_MODEL

    def addresses(self, devs: list, add_controller, ctx: dict) -> None:
        assign_usb_ports(devs)
        (assign_q35 if ctx["q35"] else assign_pc)(devs, add_controller)


DEVICE_DEFAULTS = QemuDeviceDefaults()
