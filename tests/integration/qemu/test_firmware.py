"""`<os firmware='efi'>`: firmware autoselection, side by side with Debian's libvirtd 9.0.

Both daemons read the same QEMU firmware descriptors (Debian's ovmf package)
and get the same definitions; what they keep at define, write into the live
XML at start (loader, NVRAM and its template, secure boot, SMM) and refuse
(at define or at start, code and message) must be the same.  libvirtd runs as
the fenced root system daemon (bench/daemons.start_system_libvirtd).  Guests
on q35 with secure-boot firmware need SMM, which this machine's KVM lacks, so
they run under TCG (type='qemu') on both daemons.
"""

from __future__ import annotations

import re
from pathlib import Path

import libvirt
import pytest

from daemon_helpers import (KVM_OK, fenced_libvirtd, kill_guests, needs_qemu, needs_root_libvirtd,
                            qemu_uri, start_daemon, stop_daemon)

pytestmark = [
    needs_qemu, *needs_root_libvirtd,
    pytest.mark.skipif(not Path("/usr/share/qemu/firmware").is_dir(),
                       reason="no QEMU firmware descriptors (Debian's ovmf package)"),
]

KVM = "kvm" if KVM_OK else "qemu"


def guest(name: str, *, machine: str = "pc", virt: str = KVM, firmware: str = "efi",
          os_extra: str = "", features: str = "<acpi/>") -> str:
    return (f"<domain type='{virt}'><name>{name}</name><memory unit='MiB'>64</memory>"
            f"<vcpu>1</vcpu><os firmware='{firmware}'><type arch='x86_64' machine='{machine}'>"
            f"hvm</type>{os_extra}</os><features>{features}</features>"
            "<devices><serial type='pty'/></devices></domain>")


CASES = {
    "pc": guest("fwpc"),
    "q35 secure by default": guest("fwq35", machine="q35", virt="qemu"),
    "q35 without secure boot": guest(
        "fwq35nosb", machine="q35", os_extra="<firmware><feature enabled='no' "
        "name='secure-boot'/></firmware>"),
    "secure boot, no keys": guest(
        "fwq35sb", machine="q35", virt="qemu", os_extra="<firmware><feature enabled='yes' "
        "name='secure-boot'/><feature enabled='no' name='enrolled-keys'/></firmware>"),
    "own nvram path": guest("fwnv", os_extra="<nvram>{nvram}</nvram>"),
    "secure boot on pc": guest(
        "fwpcsb", os_extra="<firmware><feature enabled='yes' name='secure-boot'/></firmware>"),
    "smm off": guest("fwsmm", machine="q35", virt="qemu", features="<acpi/><smm state='off'/>"),
    "bios": guest("fwbios", firmware="bios"),
    "loader type": guest("fwlt", os_extra="<loader type='rom'/>"),
    "loader path": guest("fwlp", os_extra="<loader>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"),
    "loader secure": guest("fwls", os_extra="<loader secure='no'/>"),
    "nvram template": guest("fwnt", os_extra="<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>"),
    "unknown feature": guest("fwuf", os_extra="<firmware><feature enabled='yes' name='x'/></firmware>"),
    "unknown firmware": guest("fwuk", firmware="coreboot"),
}


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    base = tmp_path_factory.mktemp("fwpeer")
    py = start_daemon(base / "pyvirtd")
    try:
        with fenced_libvirtd(base, "fw") as lv_uri:
            libvirt.registerErrorHandler(lambda *_: None, None)
            conns = (libvirt.open(lv_uri), libvirt.open(qemu_uri(py)))
            try:
                yield conns, base
            finally:
                for c in conns:
                    c.close()
    finally:
        kill_guests(py)
        stop_daemon(py)


def _os(xml: str) -> str:
    """The <os> element and whether SMM is on, NVRAM directories left out."""
    part = xml[xml.index("<os"):xml.index("</os>")]
    part = re.sub(r">[^<]*/([^/<]+_VARS\.fd)<", r">\1<", part)
    return part + ("\nsmm on" if "<smm state='on'/>" in xml else "")


def _run(conn: libvirt.virConnect, xml: str) -> list:
    """define, inactive <os>, start, live <os> and NVRAM, destroy, undefine."""
    out: list = []
    try:
        dom = conn.defineXML(xml)
    except libvirt.libvirtError as e:
        return ["define", e.get_error_code(), e.get_error_domain(), e.get_error_message()]
    try:
        out.append(_os(dom.XMLDesc(0)))
        try:
            dom.create()
        except libvirt.libvirtError as e:
            return out + ["start", e.get_error_code(), e.get_error_message()]
        live = dom.XMLDesc(0)
        out.append(_os(live))
        dom.destroy()
        out.append(_os(dom.XMLDesc(0)))
        return out
    finally:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


@pytest.mark.parametrize("case", list(CASES))
def test_firmware_as_libvirtd(daemons, case):
    (lv, py), base = daemons
    results = []
    for conn, who in ((lv, "lv"), (py, "py")):
        nvram = base / who / f"{case.replace(' ', '-')}_VARS.fd"
        nvram.parent.mkdir(exist_ok=True)
        results.append(_run(conn, CASES[case].replace("{nvram}", str(nvram))))
    assert results[1] == results[0]


def test_nvram_made_from_the_template(daemons):
    """The first start copies the firmware's variable store for the guest (private
    to it), later starts keep what the guest wrote there."""
    (_, py), base = daemons
    dom = py.defineXML(guest("fwkeep"))
    try:
        dom.create()
        live = dom.XMLDesc(0)
        nvram = Path(re.search(r"<nvram template='([^']+)'>([^<]+)</nvram>", live).group(2))
        template = Path(re.search(r"<nvram template='([^']+)'>", live).group(1))
        assert nvram.read_bytes() == template.read_bytes()
        assert nvram.stat().st_mode & 0o077 == 0
        dom.destroy()
        nvram.write_bytes(b"\x01" * nvram.stat().st_size)        # what the guest stored
        dom.create()
        assert nvram.read_bytes() == b"\x01" * len(template.read_bytes())
        dom.destroy()
    finally:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
