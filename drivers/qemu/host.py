"""QEMU driver connection: connection and host procedures (type, version, capabilities, node).

Capabilities come from caps.py's probe (made once at daemon start, cached on
disk); node facts are read from the host's /proc and /sys on each call.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pyvirtd import hostinfo
from pyvirtd.cpubaseline import BASELINE_EXPAND_FEATURES, cpu_baseline
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import capabilities

from .driver import QemuDriverState

# With no security driver, libvirt reports the model "none" with DOI "0".
SECURITY_MODEL, SECURITY_DOI = "none", "0"


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
        return self._caps().capabilities_xml(self.driver.ctx.host_uuid)

    def connect_get_domain_capabilities(self, emulatorbin: str | None, arch: str | None,
                                        machine: str | None, virttype: str | None,
                                        flags: int) -> str:
        return self._caps().domain_capabilities_xml(emulatorbin, arch, machine, virttype)

    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple:
        # virCPUGetModels: the models of libvirt's CPU map for the arch, as qemu's driver answers
        models = capabilities.cpu_models(arch)
        return (models if need_results else [], len(models))

    def connect_baseline_cpu(self, xml_cpus: list[str], flags: int) -> str:
        check_flags(flags, BASELINE_EXPAND_FEATURES
                    | P.ConnectBaselineCPUFlags.VIR_CONNECT_BASELINE_CPU_MIGRATABLE,
                    "qemuConnectBaselineCPU", P.VIR_FROM_QEMU)
        return cpu_baseline(xml_cpus, expand=bool(flags & BASELINE_EXPAND_FEATURES))

    # -- the host (read from /proc and /sys on every call, see pyvirtd/hostinfo.py)
    def node_get_info(self) -> tuple:
        return hostinfo.node_info()

    def node_get_free_memory(self) -> int:
        return hostinfo.free_memory()

    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]:
        return hostinfo.cells_free_memory(start_cell, maxcells)

    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple:
        size, online = hostinfo.cpu_map()
        return (hostinfo.cpumap_bytes(online, size) if need_map else b"",
                len(online) if need_online else 0, size)

    def node_get_cpu_stats(self, cpu_num: int, nparams: int, flags: int) -> tuple:
        stats = hostinfo.cpu_stats(cpu_num)
        if nparams == 0:
            return ([], len(stats))
        return ([P.remote_node_get_cpu_stats(k, v) for k, v in stats[:nparams]],
                min(nparams, len(stats)))

    def node_get_memory_stats(self, nparams: int, cell_num: int, flags: int) -> tuple:
        stats = hostinfo.memory_stats(cell_num)
        if nparams == 0:
            return ([], len(stats))
        return ([P.remote_node_get_memory_stats(k, v) for k, v in stats[:nparams]],
                min(nparams, len(stats)))

    def node_get_free_pages(self, pages: list[int], start_cell: int, cell_count: int,
                            flags: int) -> list[int]:
        """Free pages per cell and page size (KiB): base pages from MemFree, huge pages
        from sysfs (virNumaGetPageInfo)."""
        cells = hostinfo.numa_nodes() or [0]
        if start_cell < 0 or start_cell + cell_count - 1 > max(cells):
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"start_cell {start_cell} out of range (0-{max(cells)})",
                           domain=P.VIR_FROM_NONE)
        base = os.sysconf("SC_PAGE_SIZE") // 1024
        out = []
        for cell in range(start_cell, start_cell + cell_count):
            node = Path(f"/sys/devices/system/node/node{cell}")
            mem = hostinfo.meminfo(node / "meminfo") if node.exists() else hostinfo.meminfo()
            for size in pages:
                if size == base:
                    out.append(mem.get("MemFree", 0) // base)
                    continue
                hp = (node if node.exists() else Path("/sys/kernel/mm")) / "hugepages" / \
                    f"hugepages-{size}kB" / "free_hugepages"
                try:
                    out.append(int(hp.read_text()))
                except (OSError, ValueError):
                    raise VirError(P.VIR_ERR_INVALID_ARG,
                                   f"page size {size} is not available on node {cell}",
                                   domain=P.VIR_FROM_NONE) from None
        return out

    def node_get_security_model(self) -> tuple:
        return (SECURITY_MODEL.encode() + b"\0", SECURITY_DOI.encode() + b"\0")
