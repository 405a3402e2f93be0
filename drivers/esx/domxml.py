"""A vSphere VM's configuration as libvirt domain XML (dumpxml), the way libvirt's ESX driver maps it.

libvirt's own ESX driver reads the VM's .vmx file and maps it with its VMX
parser (src/vmx/vmx.c); pyvirtd reads the same facts from the VM's
``config`` (VirtualMachineConfigInfo) through the API and maps them to the
same elements:

* ``<domain type='vmware'>``, name, BIOS UUID, memory and vCPUs; os type
  ``hvm``, arch ``x86_64`` for a 64-bit guest id (``...64Guest``), else
  ``i686``;
* a virtual disk or ISO on a datastore as ``[datastore] dir/file.vmdk``,
  its target named as libvirt names VMX devices: SCSI ``sd`` + (controller
  * 15 + unit, unit 7 being the controller's own), IDE ``hd`` + (bus * 2 +
  unit), SATA ``sd`` + (controller * 30 + unit), with a drive address;
* SCSI controllers with libvirt's model names (``vmpvscsi``, ``lsilogic``,
  ``lsisas1068``, ``buslogic``); IDE and SATA controllers only when a disk
  sits on them;
* a NIC on a port group as ``<interface type='bridge'>`` with its MAC, the
  port group's name as the bridge and libvirt's model name (``e1000``,
  ``e1000e``, ``vmxnet3``, ``vmxnet2``, ``vmxnet``, ``vlance``);
* the SVGA card as ``<video>`` model ``vmvga`` with its VRAM.

Devices libvirt's VMX mapping has no element for (keyboard, mouse, VMCI,
PCI and SIO controllers) are left out, as there.  The document goes through
pyvirtd's one XML model (pyvirtd.xml.domain) so it prints as every other
driver's does.
"""

from __future__ import annotations

import string
from typing import Any

from lxml import etree
from pyVmomi import vim

from pyvirtd.xml import domain as domxml

_SCSI_MODELS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.ParaVirtualSCSIController, "vmpvscsi"),
    (vim.vm.device.VirtualLsiLogicSASController, "lsisas1068"),
    (vim.vm.device.VirtualLsiLogicController, "lsilogic"),
    (vim.vm.device.VirtualBusLogicController, "buslogic"),
)

_NIC_MODELS: tuple[tuple[type, str], ...] = (
    (vim.vm.device.VirtualE1000e, "e1000e"),
    (vim.vm.device.VirtualE1000, "e1000"),
    (vim.vm.device.VirtualVmxnet3, "vmxnet3"),
    (vim.vm.device.VirtualVmxnet2, "vmxnet2"),
    (vim.vm.device.VirtualVmxnet, "vmxnet"),
    (vim.vm.device.VirtualPCNet32, "vlance"),
)


def disk_name(prefix: str, index: int) -> str:
    """libvirt's disk naming (virIndexToDiskName): 0 -> sda, 25 -> sdz, 26 -> sdaa."""
    letters = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = string.ascii_lowercase[rem] + letters
    return prefix + letters


def _first(table: tuple[tuple[type, str], ...], dev: Any) -> str | None:
    return next((name for cls, name in table if isinstance(dev, cls)), None)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    e = etree.SubElement(parent, tag, **attrs)
    if text is not None:
        e.text = text
    return e


def _disk_target(ctrl: Any, unit: int) -> tuple[str, str, int, int] | None:
    """(dev, bus, controller index, address bus) of a disk on ``ctrl``, or None."""
    if isinstance(ctrl, vim.vm.device.VirtualSCSIController):
        idx = ctrl.busNumber * 15 + (unit if unit < 7 else unit - 1)
        return disk_name("sd", idx), "scsi", ctrl.busNumber, 0
    if isinstance(ctrl, vim.vm.device.VirtualIDEController):
        return disk_name("hd", ctrl.busNumber * 2 + unit), "ide", 0, ctrl.busNumber
    if isinstance(ctrl, vim.vm.device.VirtualAHCIController):
        return disk_name("sd", ctrl.busNumber * 30 + unit), "sata", ctrl.busNumber, 0
    return None


def _disk(devices: etree._Element, dev: Any, ctrl: Any, used: set) -> None:
    target = _disk_target(ctrl, dev.unitNumber or 0)
    if target is None:
        return
    name, bus, ctrl_index, addr_bus = target
    backing = dev.backing
    is_cd = isinstance(dev, vim.vm.device.VirtualCdrom)
    file_name = getattr(backing, "fileName", None)
    if is_cd and not isinstance(backing, vim.vm.device.VirtualCdrom.IsoBackingInfo):
        disk = _sub(devices, "disk", type="block", device="cdrom")
        if getattr(backing, "deviceName", None):
            _sub(disk, "source", dev=backing.deviceName)
    else:
        disk = _sub(devices, "disk", type="file", device="cdrom" if is_cd else "disk")
        if file_name:
            _sub(disk, "source", file=file_name)
    _sub(disk, "target", dev=name, bus=bus)
    _sub(disk, "address", type="drive", controller=str(ctrl_index), bus=str(addr_bus),
         target="0", unit=str(dev.unitNumber or 0))
    used.add((bus, ctrl_index))


def config_to_xml(config: Any, dom_id: int = -1) -> str:
    """The domain XML of a VM whose ``config`` (VirtualMachineConfigInfo) is given."""
    hw = config.hardware
    root = etree.Element("domain", type="vmware")
    _sub(root, "name", config.name)
    _sub(root, "uuid", config.uuid)
    if config.annotation:
        _sub(root, "description", config.annotation)
    mem = str(hw.memoryMB * 1024)
    _sub(root, "memory", mem, unit="KiB")
    limit = config.memoryAllocation.limit if config.memoryAllocation else None
    cur = str(limit * 1024) if limit is not None and 0 <= limit < hw.memoryMB else mem
    _sub(root, "currentMemory", cur, unit="KiB")
    _sub(root, "vcpu", str(hw.numCPU), placement="static")
    os_elem = _sub(root, "os")
    arch = "x86_64" if "64" in (config.guestId or "") else "i686"
    _sub(os_elem, "type", "hvm", arch=arch)
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")

    by_key = {d.key: d for d in hw.device}
    used: set[tuple[str, int]] = set()
    for dev in hw.device:
        if isinstance(dev, (vim.vm.device.VirtualDisk, vim.vm.device.VirtualCdrom)):
            ctrl = by_key.get(dev.controllerKey)
            if ctrl is not None:
                _disk(devices, dev, ctrl, used)
    for dev in hw.device:
        model = _first(_SCSI_MODELS, dev)
        if model is not None:
            _sub(devices, "controller", type="scsi", index=str(dev.busNumber), model=model)
    for bus, index in sorted(used):
        if bus != "scsi":
            _sub(devices, "controller", type=bus, index=str(index))
    for dev in hw.device:
        model = _first(_NIC_MODELS, dev)
        if model is None:
            continue
        nic = _sub(devices, "interface", type="bridge")
        if dev.macAddress:
            _sub(nic, "mac", address=dev.macAddress)
        backing = dev.backing
        if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            _sub(nic, "source", bridge=backing.deviceName)
        _sub(nic, "model", type=model)
    for dev in hw.device:
        if isinstance(dev, vim.vm.device.VirtualVideoCard):
            video = _sub(devices, "video")
            _sub(video, "model", type="vmvga", vram=str(dev.videoRamSizeInKB or 4096),
                 primary="yes")
    text = etree.tostring(root, encoding="unicode")
    d = domxml.parse(text)
    return domxml.format(d, dom_id=dom_id if dom_id > 0 else None)
