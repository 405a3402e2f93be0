"""QEMU driver connection: connection and host procedures (type, version, capabilities, node).

Capabilities come from caps.py's probe (made once at daemon start, cached on
disk); node facts are read from the host's /proc and /sys on each call.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from .driver import QemuDriverState

# With no security driver, libvirt reports the model "none" with DOI "0".
SECURITY_MODEL, SECURITY_DOI = "none", "0"


def _meminfo_kib(key: str) -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_mhz() -> int:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]))
    except (OSError, ValueError):
        pass
    return 0


class HostMixin:
    driver: QemuDriverState

    def connect_get_type(self) -> str:
        return "QEMU"

    def connect_get_version(self) -> int:
        bc = self.driver.binary_caps()
        if bc is None:
            return 0
        major, minor, micro = bc.version
        return major * 1_000_000 + minor * 1_000 + micro

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_is_alive(self) -> int:
        return 1

    def connect_supports_feature(self, feature: int) -> int:
        # among what libvirt's QEMU driver answers yes to, what pyvirtd really does
        # (no migration yet, so none of the MIGRATION_* features)
        return int(feature in (P.VIR_DRV_FEATURE_TYPED_PARAM_STRING, P.VIR_DRV_FEATURE_XML_MIGRATABLE,
                               P.VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER))

    def connect_get_max_vcpus(self, type_: str | None) -> int:
        return 255 if type_ in (None, "", "qemu", "kvm") else 1

    def _caps(self) -> Any:
        if self.driver.caps is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "QEMU capabilities are not probed yet",
                           domain=P.VIR_FROM_QEMU)
        return self.driver.caps

    def connect_get_capabilities(self) -> str:
        return self._caps().capabilities_xml()

    def connect_get_domain_capabilities(self, emulatorbin: str | None, arch: str | None,
                                        machine: str | None, virttype: str | None,
                                        flags: int) -> str:
        return self._caps().domain_capabilities_xml(emulatorbin, arch, machine, virttype)

    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple:
        bc = self._caps().binary_for(arch)
        models = sorted({c.name for defs in (bc.cpu_defs.values() if bc else ()) for c in defs})
        return (models if need_results else [], len(models))

    def node_get_info(self) -> tuple:
        cpus = os.cpu_count() or 1
        return (os.uname().machine.encode(), _meminfo_kib("MemTotal"), cpus, _cpu_mhz(),
                1, 1, cpus, 1)

    def node_get_free_memory(self) -> int:
        return _meminfo_kib("MemAvailable") * 1024

    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]:
        if start_cell != 0 or maxcells < 1:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"start cell {start_cell} out of range (0-0)", domain=P.VIR_FROM_NONE)
        return [_meminfo_kib("MemFree") * 1024]

    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple:
        cpus = os.cpu_count() or 1
        cpumap = bytearray((cpus + 7) // 8)
        for cpu in range(cpus):
            cpumap[cpu // 8] |= 1 << (cpu % 8)
        return (bytes(cpumap) if need_map else b"", cpus if need_online else 0, cpus)

    def node_get_security_model(self) -> tuple:
        return (SECURITY_MODEL.encode() + b"\0", SECURITY_DOI.encode() + b"\0")
