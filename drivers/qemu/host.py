"""QEMU driver connection: connection and host procedures (type, version, capabilities).

Capabilities come from caps.py's probe (made once at daemon start, cached on
disk); node facts (nodeinfo, free memory, CPU and memory stats) are every
local driver's: pyvirtd.driver.hypervisor.HostFacts.
"""

from __future__ import annotations

from typing import Any

from pyvirtd.cpubaseline import BASELINE_EXPAND_FEATURES, QEMU_FILTERED, cpu_baseline
from pyvirtd.cpucompare import cpu_compare
from pyvirtd.driver.hypervisor import HostFacts
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import capabilities

from . import caps_xml
from .driver import QemuDriverState
from .migration import FEATURES as MIGRATION_FEATURES


class HostMixin(HostFacts):
    driver: QemuDriverState

    def connect_get_type(self) -> str:
        return "QEMU"

    def connect_get_version(self) -> int:
        bc = self.driver.binary_caps()
        if bc is None:
            return 0
        major, minor, micro = bc.version
        return major * 1_000_000 + minor * 1_000 + micro

    def connect_supports_feature(self, feature: int) -> int:
        # among what libvirt's QEMU driver answers yes to, what pyvirtd really does
        # (of migration: version 3 with and without Params, migration.py)
        return int(feature in (P.VIR_DRV_FEATURE_TYPED_PARAM_STRING, P.VIR_DRV_FEATURE_XML_MIGRATABLE,
                               P.VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER)
                   or feature in MIGRATION_FEATURES)

    def connect_get_max_vcpus(self, type_: str | None) -> int:
        return 255 if type_ in (None, "", "qemu", "kvm") else 1

    def _caps(self) -> Any:
        if self.driver.caps is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "QEMU capabilities are not probed yet",
                           domain=P.VIR_FROM_QEMU)
        return self.driver.caps

    def connect_get_capabilities(self) -> str:
        return caps_xml.capabilities_xml(self._caps(), self.driver.ctx.host_uuid)

    def connect_get_domain_capabilities(self, emulatorbin: str | None, arch: str | None,
                                        machine: str | None, virttype: str | None,
                                        flags: int) -> str:
        return caps_xml.domain_capabilities_xml(self._caps(), emulatorbin, arch, machine,
                                               virttype)

    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple:
        # virCPUGetModels: the models of libvirt's CPU map for the arch, as qemu's driver answers
        models = capabilities.cpu_models(arch)
        return (models if need_results else [], len(models))

    def connect_compare_cpu(self, xml: str, flags: int) -> int:
        check_flags(flags, P.ConnectCompareCPUFlags.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE,
                    "qemuConnectCompareCPU", P.VIR_FROM_QEMU)
        host = self._caps().host_cpu
        return cpu_compare(host.model if host else None, host.vendor if host else None,
                           host.features if host else [], xml,
                           fail_incompatible=bool(flags & P.ConnectCompareCPUFlags
                                                  .VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE))

    def connect_compare_hypervisor_cpu(self, emulator: str | None, arch: str | None,
                                       machine: str | None, virttype: str | None,
                                       xml_cpu: str, flags: int) -> int:
        """A CPU against what QEMU offers as its host model (not the host's CPU)."""
        fail = P.ConnectCompareCPUFlags.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
        check_flags(flags, fail, "qemuConnectCompareHypervisorCPU", P.VIR_FROM_QEMU)
        hm = caps_xml.hypervisor_cpu(self._caps(), emulator, arch, virttype).host_model
        return cpu_compare(hm.model if hm else None, hm.vendor if hm else None,
                           hm.features if hm else [], xml_cpu,
                           fail_incompatible=bool(flags & fail),
                           host_disabled=hm.disabled if hm else [])

    def connect_baseline_hypervisor_cpu(self, emulator: str | None, arch: str | None,
                                        machine: str | None, virttype: str | None,
                                        xml_cpus: list[str], flags: int) -> str:
        """A baseline among the CPU models QEMU offers, within the features it can give."""
        check_flags(flags, BASELINE_EXPAND_FEATURES
                    | P.ConnectBaselineCPUFlags.VIR_CONNECT_BASELINE_CPU_MIGRATABLE,
                    "qemuConnectBaselineHypervisorCPU", P.VIR_FROM_QEMU)
        hv = caps_xml.hypervisor_cpu(self._caps(), emulator, arch, virttype)
        return cpu_baseline(xml_cpus, expand=bool(flags & BASELINE_EXPAND_FEATURES),
                            drop=QEMU_FILTERED, allowed=hv.models, within=hv.features or None,
                            forbid=True)

    def connect_baseline_cpu(self, xml_cpus: list[str], flags: int) -> str:
        check_flags(flags, BASELINE_EXPAND_FEATURES
                    | P.ConnectBaselineCPUFlags.VIR_CONNECT_BASELINE_CPU_MIGRATABLE,
                    "qemuConnectBaselineCPU", P.VIR_FROM_QEMU)
        return cpu_baseline(xml_cpus, expand=bool(flags & BASELINE_EXPAND_FEATURES),
                            drop=QEMU_FILTERED)
