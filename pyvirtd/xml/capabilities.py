"""Host capabilities documents, and the CPU model lists drivers report."""

from __future__ import annotations

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

# x86 models of libvirt's CPU map (src/cpu_map/index.xml), in its order.
X86_MODELS = (
    "486 pentium pentium2 pentium3 pentiumpro coreduo n270 core2duo qemu32 kvm32 "
    "cpu64-rhel5 cpu64-rhel6 qemu64 kvm64 Conroe Penryn Nehalem Nehalem-IBRS Westmere "
    "Westmere-IBRS SandyBridge SandyBridge-IBRS IvyBridge IvyBridge-IBRS Haswell-noTSX "
    "Haswell-noTSX-IBRS Haswell Haswell-IBRS Broadwell-noTSX Broadwell-noTSX-IBRS Broadwell "
    "Broadwell-IBRS Skylake-Client Skylake-Client-IBRS Skylake-Client-noTSX-IBRS Skylake-Server "
    "Skylake-Server-IBRS Skylake-Server-noTSX-IBRS Cascadelake-Server Cascadelake-Server-noTSX "
    "Icelake-Client Icelake-Client-noTSX Icelake-Server Icelake-Server-noTSX Cooperlake "
    "Snowridge athlon phenom Opteron_G1 Opteron_G2 Opteron_G3 Opteron_G4 Opteron_G5 EPYC "
    "EPYC-IBPB EPYC-Rome EPYC-Milan Dhyana").split()

# Architectures libvirt knows but has no CPU model list for: "all models accepted".
_OTHER_ARCHES = ("armv6l", "armv7l", "armv7b", "aarch64", "s390", "s390x", "mips", "mipsel",
                 "mips64", "mips64el", "riscv32", "riscv64", "sparc", "sparc64", "alpha",
                 "cris", "lm32", "m68k", "microblaze", "microblazeel", "or32", "parisc",
                 "parisc64", "sh4", "sh4eb", "unicore32", "xtensa", "xtensaeb", "ppc", "ppcle",
                 "ppc64", "ppc64le", "ppcemb")


def cpu_models(arch: str) -> list[str]:
    if arch in ("x86_64", "i686"):
        return list(X86_MODELS)
    if arch in _OTHER_ARCHES:
        return []
    raise VirError(P.VIR_ERR_INVALID_ARG, f"cannot find architecture {arch}", domain=P.VIR_FROM_CPU)


def _test_cell(cell: int, memory: int, page_size: int) -> list[str]:
    lines = [f"        <cell id='{cell}'>",
             f"          <memory unit='KiB'>{memory}</memory>",
             f"          <pages unit='KiB' size='{page_size}'>{memory // page_size}</pages>",
             "          <pages unit='KiB' size='2048'>0</pages>",
             "          <pages unit='KiB' size='1048576'>0</pages>",
             "          <cpus num='8'>"]
    for core in range(8):
        cpu = cell * 8 + core
        lines.append(f"            <cpu id='{cpu}' socket_id='{cell}' die_id='0' core_id='{core}' "
                     f"siblings='{cpu}'/>")
    lines += ["          </cpus>", "        </cell>"]
    return lines


def _test_guest(os_type: str) -> list[str]:
    return ["  <guest>",
            f"    <os_type>{os_type}</os_type>",
            "    <arch name='i686'>",
            "      <wordsize>32</wordsize>",
            "      <emulator>/usr/bin/test-hv</emulator>",
            "      <domain type='test'/>",
            "    </arch>",
            "    <features>",
            "      <pae/>",
            "      <nonpae/>",
            "    </features>",
            "  </guest>",
            ""]


def test_driver_capabilities() -> str:
    """The capabilities of libvirt's test:///default (testBuildCapabilities)."""
    lines = ["<capabilities>", "",
             "  <host>",
             "    <cpu>",
             "      <arch>i686</arch>",
             "      <features>",
             "        <pae/>",
             "        <nonpae/>",
             "      </features>"]
    lines += [f"      <pages unit='KiB' size='{s}'/>" for s in (4, 8, 2048, 1048576)]
    lines += ["    </cpu>",
              "    <power_management/>",
              "    <iommu support='no'/>",
              "    <topology>",
              "      <cells num='2'>"]
    lines += _test_cell(0, 2097152, 4) + _test_cell(1, 4194304, 8)
    lines += ["      </cells>",
              "    </topology>",
              "    <secmodel>",
              "      <model>testSecurity</model>",
              "      <doi></doi>",
              "    </secmodel>",
              "  </host>",
              ""]
    lines += _test_guest("hvm") + _test_guest("xen")
    lines.append("</capabilities>")
    return "\n".join(lines) + "\n"
