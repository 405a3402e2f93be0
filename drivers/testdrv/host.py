"""Connection and host procedures: type, version, hostname, node information.

The numbers are those libvirt's test driver reports for test:///default
(src/test/test_driver.c keeps them as constants: two NUMA cells of 8 CPUs,
a fixed CPU-stats sample, a fixed sysinfo); the developers' notes in
notes/testdriver/host.txt record them as virsh prints them.
"""

from __future__ import annotations

import socket

from pyvirtd.cpubaseline import BASELINE_EXPAND_FEATURES, cpu_baseline
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import capabilities

from .state import TestState

# virConnectGetVersion of the test driver: 2 ("Running hypervisor: TEST 0.0.2").
HYPERVISOR_VERSION = 2
MAX_VCPUS = 32

SECURITY_MODEL = "testSecurity"
SECURITY_DOI = ""

SYSINFO = """<sysinfo type='smbios'>
  <bios>
    <entry name='vendor'>LENOVO</entry>
    <entry name='version'>G4ETA1WW (2.61 )</entry>
    <entry name='date'>05/07/2014</entry>
    <entry name='release'>2.61</entry>
  </bios>
</sysinfo>
"""

# Fixed sample of NODE_GET_CPU_STATS, in ns.
CPU_STATS = (("user", 9797400000), ("kernel", 34678723400000), ("idle", 87264900000),
             ("iowait", 763600000))

# Free memory per NUMA cell, in bytes (testNodeGetCellsFreeMemory).
CELL_FREE = (2097152, 4194304)
FREE_MEMORY = 3145728  # bytes (testNodeGetFreeMemory)


class HostMixin:
    state: TestState
    uri: str

    def connect_get_type(self) -> str:
        return "TEST"

    def connect_get_version(self) -> int:
        return HYPERVISOR_VERSION

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_get_max_vcpus(self, type_: str | None) -> int:
        return MAX_VCPUS

    def connect_get_sysinfo(self, flags: int) -> str:
        check_flags(flags, 0, "testConnectGetSysinfo", P.VIR_FROM_TEST)
        return SYSINFO

    def connect_get_capabilities(self) -> str:
        return capabilities.test_driver_capabilities()

    def node_get_info(self) -> tuple:
        n = self.state.node
        return (n.model.encode(), n.memory, n.cpus, n.mhz, n.nodes, n.sockets, n.cores, n.threads)

    def node_get_security_model(self) -> tuple:
        return (SECURITY_MODEL.encode() + b"\0", SECURITY_DOI.encode() + b"\0")

    def node_get_free_memory(self) -> int:
        return FREE_MEMORY

    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]:
        if start_cell < 0 or start_cell >= len(CELL_FREE) or maxcells < 0:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Range exceeds available cells",
                           domain=P.VIR_FROM_TEST)
        return list(CELL_FREE[start_cell:start_cell + maxcells])

    def node_get_cpu_stats(self, cpu_num: int, nparams: int, flags: int) -> tuple:
        if nparams == 0:
            return ([], len(CPU_STATS))
        params = [P.remote_node_get_cpu_stats(name, v) for name, v in CPU_STATS[:nparams]]
        return (params, len(params))

    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple:
        size = self.state.cpu_map_size
        cpumap = bytearray((size + 7) // 8)
        for cpu in self.state.cpu_online:
            cpumap[cpu // 8] |= 1 << (cpu % 8)
        return (bytes(cpumap) if need_map else b"",
                len(self.state.cpu_online) if need_online else 0, size)

    def node_get_free_pages(self, pages: list[int], start_cell: int, cell_count: int,
                            flags: int) -> list[int]:
        if start_cell < 0 or start_cell + cell_count > len(CELL_FREE):
            raise VirError(P.VIR_ERR_INVALID_ARG, "Range exceeds available cells",
                           domain=P.VIR_FROM_TEST)
        # testNodeGetFreePages makes up a count per page-size slot: 19, 45, 97, 201, ...
        return [19 + 26 * (2 ** i - 1) for _ in range(cell_count) for i in range(len(pages))]

    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple:
        models = capabilities.cpu_models(arch)
        return (models if need_results else [], len(models))

    def connect_baseline_cpu(self, xml_cpus: list[str], flags: int) -> str:
        check_flags(flags, BASELINE_EXPAND_FEATURES, "testConnectBaselineCPU", P.VIR_FROM_TEST)
        return cpu_baseline(xml_cpus, expand=bool(flags & BASELINE_EXPAND_FEATURES))
