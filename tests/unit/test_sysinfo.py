"""pyvirtd.sysinfo: libvirt's <sysinfo> from dmidecode's output.

This host has no SMBIOS tables, so the input is dmidecode 3.4's output on a
QEMU 7.2 pc guest (SeaBIOS), as `dmidecode -q -t 0,1,2,3,4,11,17` prints it.
"""

from __future__ import annotations

from lxml import etree

from pyvirtd import sysinfo

QEMU_GUEST = """BIOS Information
\tVendor: SeaBIOS
\tVersion: 1.16.2-debian-1.16.2-1
\tRelease Date: 04/01/2014
\tAddress: 0xE8000
\tRuntime Size: 96 kB
\tROM Size: 64 kB
\tCharacteristics:
\t\tBIOS characteristics not supported
\t\tTargeted content distribution is supported
\tBIOS Revision: 0.0

System Information
\tManufacturer: QEMU
\tProduct Name: Standard PC (i440FX + PIIX, 1996)
\tVersion: pc-i440fx-7.2
\tSerial Number: Not Specified
\tUUID: 8c4e9d2a-5f0b-4d1e-9a39-3b0c3f1e2d10
\tWake-up Type: Power Switch
\tSKU Number: Not Specified
\tFamily: Not Specified

Chassis Information
\tManufacturer: QEMU
\tType: Other
\tLock: Not Present
\tVersion: pc-i440fx-7.2
\tSerial Number: Not Specified
\tAsset Tag: Not Specified

Processor Information
\tSocket Designation: CPU 0
\tType: Central Processor
\tFamily: Other
\tManufacturer: QEMU
\tID: 63 06 00 00 FF FB 8B 0F
\tVersion: pc-i440fx-7.2
\tExternal Clock: Unknown
\tMax Speed: 2000 MHz
\tStatus: Populated, Enabled

OEM Strings
\tString 1: io.systemd.credential:a=b
\tString 2: second & last

Memory Device
\tTotal Width: Unknown
\tSize: 1 GB
\tForm Factor: DIMM
\tLocator: DIMM 0
\tType: RAM
\tType Detail: Other
\tSpeed: Unknown
\tManufacturer: QEMU

Memory Device
\tSize: No Module Installed
\tLocator: DIMM 1
"""


def test_sections_and_entries_in_libvirts_order():
    xml = sysinfo.parse_dmidecode(QEMU_GUEST)
    root = etree.fromstring(xml)
    assert root.get("type") == "smbios"
    assert [c.tag for c in root] == ["bios", "system", "chassis", "processor", "memory_device",
                                     "oemStrings"]
    bios = {e.get("name"): e.text for e in root.find("bios")}
    assert bios == {"vendor": "SeaBIOS", "version": "1.16.2-debian-1.16.2-1",
                    "date": "04/01/2014", "release": "0.0"}
    system = {e.get("name"): e.text for e in root.find("system")}
    assert system["uuid"] == "8c4e9d2a-5f0b-4d1e-9a39-3b0c3f1e2d10"
    assert system["product"] == "Standard PC (i440FX + PIIX, 1996)"
    proc = {e.get("name"): e.text for e in root.find("processor")}
    assert proc["socket_destination"] == "CPU 0" and proc["max_speed"] == "2000 MHz"
    # an empty slot is no memory device
    assert len(root.findall("memory_device")) == 1
    assert [e.text for e in root.find("oemStrings")] == ["io.systemd.credential:a=b",
                                                         "second & last"]


def test_no_tables_means_none():
    assert sysinfo.parse_dmidecode("") is None
    assert sysinfo.parse_dmidecode("# No SMBIOS nor DMI entry point found, sorry.\n") is None
