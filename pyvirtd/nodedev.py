"""Host node devices (virsh nodedev-list / nodedev-dumpxml) for qemu:// and lxc:// connections.

A small, read-only view of the real host built from sysfs on each call, in
the shape libvirt's udev node device driver gives (src/node_device/
node_device_udev.c, node_device_conf.c):

  computer                     capability 'system' (DMI product/hardware/firmware
                               when /sys/class/dmi/id exists)
  pci_DDDD_BB_SS_F             every /sys/bus/pci/devices entry: capability 'pci'
                               (domain, bus, slot, function, product, vendor, iommuGroup)
  net_IFNAME_MAC               every /sys/class/net interface but lo: capability 'net'
                               (interface, address, link state/speed, 80203), parent
                               its PCI device when it has one, else computer

Nothing can be created, destroyed, detached or defined here (those procedures
stay unsupported).  Devices are not watched, so no node device events are
ever emitted; registering for them works (the daemon's event bus does that).
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.nodedev import CAP_FLAGS

SYS = Path("/sys")
# every VIR_CONNECT_LIST_NODE_DEVICES_CAP_* bit (SYSTEM = 1 << 0 ... VPD = 1 << 21)
LIST_ALL_CAPS = (P.ConnectListAllNodeDeviceFlags.VIR_CONNECT_LIST_NODE_DEVICES_CAP_VPD << 1) - 1
# active/inactive filters: all host devices are active, so they keep everything
LIST_STATES = (P.ConnectListAllNodeDeviceFlags.VIR_CONNECT_LIST_NODE_DEVICES_INACTIVE
               | P.ConnectListAllNodeDeviceFlags.VIR_CONNECT_LIST_NODE_DEVICES_ACTIVE)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def pci_name(addr: str) -> str:
    """'0000:00:1f.2' -> 'pci_0000_00_1f_2'."""
    return "pci_" + addr.replace(":", "_").replace(".", "_")


class _Dev:
    def __init__(self, name: str, caps: list[str], xml: str, parent: str | None) -> None:
        self.name, self.caps, self.xml, self.parent = name, caps, xml, parent


def _computer() -> _Dev:
    dmi = SYS / "class" / "dmi" / "id"
    lines = ["<device>", "  <name>computer</name>", "  <capability type='system'>"]
    if dmi.is_dir():
        def item(tag: str, fname: str, indent: str) -> None:
            value = _read(dmi / fname)
            if value:
                lines.append(f"{indent}<{tag}>{escape(value)}</{tag}>")

        item("product", "product_name", "    ")
        lines.append("    <hardware>")
        item("vendor", "sys_vendor", "      ")
        item("version", "product_version", "      ")
        item("serial", "product_serial", "      ")
        item("uuid", "product_uuid", "      ")
        lines += ["    </hardware>", "    <firmware>"]
        item("vendor", "bios_vendor", "      ")
        item("version", "bios_version", "      ")
        item("release_date", "bios_date", "      ")
        lines.append("    </firmware>")
    lines += ["  </capability>", "</device>", ""]
    return _Dev("computer", ["system"], "\n".join(lines), None)


def _pci(addr: str) -> _Dev | None:
    base = SYS / "bus" / "pci" / "devices" / addr
    try:
        dom, bus, rest = addr.split(":")
        slot, func = rest.split(".")
    except ValueError:
        return None
    name = pci_name(addr)
    parent_addr = base.resolve().parent.name
    parent = pci_name(parent_addr) if (SYS / "bus" / "pci" / "devices" / parent_addr).exists() \
        else "computer"
    driver = base / "driver"
    lines = ["<device>", f"  <name>{name}</name>", f"  <path>{base.resolve()}</path>",
             f"  <parent>{parent}</parent>"]
    if driver.exists():
        lines += ["  <driver>", f"    <name>{os.path.basename(os.readlink(driver))}</name>",
                  "  </driver>"]
    lines += ["  <capability type='pci'>",
              f"    <class>{_read(base / 'class') or '0x000000'}</class>",
              f"    <domain>{int(dom, 16)}</domain>", f"    <bus>{int(bus, 16)}</bus>",
              f"    <slot>{int(slot, 16)}</slot>", f"    <function>{int(func, 16)}</function>",
              f"    <product id='{_read(base / 'device') or '0x0000'}'/>",
              f"    <vendor id='{_read(base / 'vendor') or '0x0000'}'/>"]
    group = base / "iommu_group"
    if group.exists():
        lines += [f"    <iommuGroup number='{os.path.basename(os.readlink(group))}'>",
                  f"      <address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' "
                  f"function='0x{func}'/>", "    </iommuGroup>"]
    lines += ["  </capability>", "</device>", ""]
    return _Dev(name, ["pci"], "\n".join(lines), parent)


def _net(ifname: str) -> _Dev | None:
    base = SYS / "class" / "net" / ifname
    mac = _read(base / "address") or "00:00:00:00:00:00"
    name = f"net_{ifname}_{mac.replace(':', '_')}"
    device = base / "device"
    parent = "computer"
    if device.exists():
        for node in (device.resolve(), *device.resolve().parents):   # virtio0 -> its PCI device
            if (SYS / "bus" / "pci" / "devices" / node.name).exists():
                parent = pci_name(node.name)
                break
    state = _read(base / "operstate") or "unknown"
    speed = _read(base / "speed")
    link = f"    <link speed='{speed}' state='{state}'/>" if speed and speed.isdigit() \
        and int(speed) > 0 else f"    <link state='{state}'/>"
    lines = ["<device>", f"  <name>{name}</name>", f"  <path>{base.resolve()}</path>",
             f"  <parent>{parent}</parent>", "  <capability type='net'>",
             f"    <interface>{escape(ifname)}</interface>", f"    <address>{mac}</address>",
             link, "    <capability type='80203'/>", "  </capability>", "</device>", ""]
    return _Dev(name, ["net"], "\n".join(lines), parent)


def host_devices() -> list[_Dev]:
    devs = [_computer()]
    pci_dir = SYS / "bus" / "pci" / "devices"
    if pci_dir.is_dir():
        devs += [d for d in (_pci(a) for a in sorted(os.listdir(pci_dir))) if d is not None]
    net_dir = SYS / "class" / "net"
    if net_dir.is_dir():
        devs += [d for d in (_net(i) for i in sorted(os.listdir(net_dir)) if i != "lo")
                 if d is not None]
    return devs


class NodeDeviceSubsystem:
    """The host's node devices, for every hypervisor connection (procedures by name)."""

    def __init__(self, ctx: object = None) -> None:
        self.ctx = ctx

    @staticmethod
    def _with_cap(cap: str | None) -> list[_Dev]:
        return [d for d in host_devices() if cap is None or cap in d.caps]

    @staticmethod
    def _dev(name: str) -> _Dev:
        for d in host_devices():
            if d.name == name:
                return d
        raise VirError(P.VIR_ERR_NO_NODE_DEVICE, f"no node device with matching name '{name}'",
                       domain=P.VIR_FROM_NODEDEV)

    def node_num_of_devices(self, cap: str | None, flags: int) -> int:
        check_flags(flags, 0, "nodeNumOfDevices", P.VIR_FROM_NODEDEV)
        return len(self._with_cap(cap))

    def node_list_devices(self, cap: str | None, maxnames: int, flags: int) -> list[str]:
        check_flags(flags, 0, "nodeListDevices", P.VIR_FROM_NODEDEV)
        return [d.name for d in self._with_cap(cap)][:maxnames]

    def connect_list_all_node_devices(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, LIST_ALL_CAPS | LIST_STATES, "nodeConnectListAllNodeDevices",
                    P.VIR_FROM_NODEDEV)
        wanted = [cap for cap, bit in CAP_FLAGS.items() if flags & bit]
        devs = [P.remote_nonnull_node_device(d.name) for d in host_devices()
                if not wanted or any(c in d.caps for c in wanted)]
        if flags & (1 << 30) and not flags & (1 << 31):     # INACTIVE only
            devs = []
        return (devs if need_results else [], len(devs))

    def node_device_lookup_by_name(self, name: str) -> object:
        return P.remote_nonnull_node_device(self._dev(name).name)

    def node_device_get_xml_desc(self, name: str, flags: int) -> str:
        check_flags(flags, 0, "nodeDeviceGetXMLDesc", P.VIR_FROM_NODEDEV)
        return self._dev(name).xml

    def node_device_get_parent(self, name: str) -> str | None:
        return self._dev(name).parent

    def node_device_num_of_caps(self, name: str) -> int:
        return len(self._dev(name).caps)

    def node_device_list_caps(self, name: str, maxnames: int) -> list[str]:
        return self._dev(name).caps[:maxnames]

    def node_device_is_active(self, name: str) -> int:
        self._dev(name)
        return 1

    def node_device_is_persistent(self, name: str) -> int:
        self._dev(name)
        return 0
