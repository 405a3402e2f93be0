"""The host's SMBIOS description (virsh sysinfo), as libvirt reads it on x86: from dmidecode.

libvirt runs ``dmidecode -q -t 0,1,2,3,4,11,17`` once when a driver starts
(virSysinfoReadDMI) and prints what it found as ``<sysinfo type='smbios'>``
with bios, system, baseBoard, chassis, processor, memory_device and
oemStrings parts (virSysinfoFormat).  A host without SMBIOS tables (many
virtual machines, containers) or without dmidecode has none, and
virConnectGetSysinfo then fails with VIR_ERR_CONFIG_UNSUPPORTED "Host SMBIOS
information is not available".  `read_host` is blocking (it runs a process):
call it from a worker thread.
"""

from __future__ import annotations

import shutil
import subprocess
from xml.sax.saxutils import escape

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

DMIDECODE_ARGS = ("-q", "-t", "0,1,2,3,4,11,17")

# dmidecode section title -> (libvirt element, [(dmidecode key, entry name), ...])
SECTIONS = {
    "BIOS Information": ("bios", [("Vendor", "vendor"), ("Version", "version"),
                                  ("Release Date", "date"), ("BIOS Revision", "release")]),
    "System Information": ("system", [("Manufacturer", "manufacturer"),
                                      ("Product Name", "product"), ("Version", "version"),
                                      ("Serial Number", "serial"), ("UUID", "uuid"),
                                      ("SKU Number", "sku"), ("Family", "family")]),
    "Base Board Information": ("baseBoard", [("Manufacturer", "manufacturer"),
                                             ("Product Name", "product"), ("Version", "version"),
                                             ("Serial Number", "serial"), ("Asset Tag", "asset"),
                                             ("Location In Chassis", "location")]),
    "Chassis Information": ("chassis", [("Manufacturer", "manufacturer"), ("Version", "version"),
                                        ("Serial Number", "serial"), ("Asset Tag", "asset"),
                                        ("SKU Number", "sku")]),
    "Processor Information": ("processor", [
        ("Socket Designation", "socket_destination"), ("Type", "type"), ("Family", "family"),
        ("Manufacturer", "manufacturer"), ("Signature", "signature"), ("Version", "version"),
        ("External Clock", "external_clock"), ("Max Speed", "max_speed"), ("Status", "status"),
        ("Serial Number", "serial_number"), ("Part Number", "part_number")]),
    "Memory Device": ("memory_device", [
        ("Size", "size"), ("Form Factor", "form_factor"), ("Locator", "locator"),
        ("Bank Locator", "bank_locator"), ("Type", "type"), ("Type Detail", "type_detail"),
        ("Speed", "speed"), ("Manufacturer", "manufacturer"), ("Serial Number", "serial_number"),
        ("Part Number", "part_number")]),
}
# the order libvirt prints the single parts and the repeated ones in
ORDER = ("bios", "system", "baseBoard", "chassis", "processor", "memory_device")


def not_available(error_domain: int) -> VirError:
    """The asking driver's refusal (libvirt's wording) when the host has no SMBIOS."""
    return VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, "Host SMBIOS information is not available",
                    domain=error_domain)


def parse_dmidecode(text: str) -> str | None:
    """libvirt's <sysinfo> from ``dmidecode -q`` output; None when it names nothing."""
    parts: list[tuple[str, dict[str, str]]] = []
    oem: list[str] = []
    current: tuple[str, dict[str, str]] | None = None
    in_oem = False
    for line in text.splitlines():
        if not line.strip():
            current, in_oem = None, False
            continue
        if not line.startswith("\t"):
            title = line.strip()
            in_oem = title == "OEM Strings"
            current = (title, {}) if title in SECTIONS else None
            if current is not None:
                parts.append(current)
            continue
        if line.startswith("\t\t") or ":" not in line:
            continue        # a list under a key (characteristics, flags)
        key, value = (s.strip() for s in line.strip().split(":", 1))
        if in_oem and key.startswith("String "):
            oem.append(value)
        elif current is not None and value:
            current[1].setdefault(key, value)
    body = []
    for element in ORDER:
        for title, values in parts:
            tag, keys = SECTIONS[title]
            if tag != element:
                continue
            if tag == "memory_device" and values.get("Size", "").startswith("No Module"):
                continue
            entries = [f"    <entry name='{name}'>{escape(values[key])}</entry>"
                       for key, name in keys if key in values]
            if entries:
                body.append(f"  <{tag}>\n" + "\n".join(entries) + f"\n  </{tag}>")
    if oem:
        body.append("  <oemStrings>\n" + "\n".join(f"    <entry>{escape(s)}</entry>" for s in oem)
                    + "\n  </oemStrings>")
    if not body:
        return None
    return "<sysinfo type='smbios'>\n" + "\n".join(body) + "\n</sysinfo>\n"


def read_host() -> str | None:
    """The host's <sysinfo>, or None without dmidecode or SMBIOS tables (blocking)."""
    exe = shutil.which("dmidecode")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *DMIDECODE_ARGS], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return parse_dmidecode(proc.stdout)
