"""What the ESX driver reads from a vSphere host, as plain records (run in worker threads).

Each function here is synchronous and talks SOAP: callers run it through
`vsphere.Session.call`.  Listings fetch every VM's few properties in one
PropertyCollector round trip (RetrievePropertiesEx over a container view),
not one request per property per VM.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl

from pyvirtd.driver import domains as ds

# vSphere power state -> libvirt domain state (esxVI_VirtualMachinePowerState_ConvertToLibvirt)
POWER_STATES = {
    "poweredOff": ds.SHUTOFF,
    "poweredOn": ds.RUNNING,
    "suspended": ds.PAUSED,
}

_LIST_PROPS = ["name", "config.uuid", "runtime.powerState"]


@dataclass(frozen=True)
class VmSummary:
    """A VM as listings and lookups see it."""
    moid: str           # the managed object id: "vm-9" (vCenter, vcsim) or "9" (ESX)
    name: str
    uuid: bytes         # config.uuid, the BIOS UUID libvirt reports
    power: str          # runtime.powerState

    @property
    def state(self) -> int:
        return POWER_STATES.get(self.power, ds.NOSTATE)

    @property
    def id(self) -> int:
        """libvirt's id: the number in the managed object id while powered on, else -1
        (esxUtil_ParseVirtualMachineIDString)."""
        if self.power == "poweredOff":
            return -1
        digits = self.moid.removeprefix("vm-")
        return int(digits) if digits.isdigit() else -1


def _uuid_bytes(text: str | None) -> bytes:
    try:
        return uuidlib.UUID(text or "").bytes
    except ValueError:
        return bytes(16)


def list_vms(content: Any) -> list[VmSummary]:
    """Every VM of the host (or vCenter) with name, UUID and power state."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                obj=view, skip=True,
                selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine, pathSet=_LIST_PROPS)])
        out = []
        pc = content.propertyCollector
        result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
        while result is not None:
            for obj in result.objects:
                props = {p.name: p.val for p in obj.propSet}
                out.append(VmSummary(obj.obj._moId, props.get("name", ""),
                                     _uuid_bytes(props.get("config.uuid")),
                                     str(props.get("runtime.powerState", ""))))
            result = pc.ContinueRetrievePropertiesEx(result.token) if result.token else None
        return out
    finally:
        view.Destroy()


def find_vm(content: Any, uuid: bytes) -> Any | None:
    """The VirtualMachine whose BIOS UUID is ``uuid``, or None."""
    return content.searchIndex.FindByUuid(None, str(uuidlib.UUID(bytes=uuid)), True, False)


def host_system(content: Any) -> Any:
    """The HostSystem libvirt's driver reports: the ESX host, or a vCenter's first host."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        hosts = list(view.view)
    finally:
        view.Destroy()
    if not hosts:
        raise LookupError("the vSphere endpoint has no host system")
    return hosts[0]


@dataclass(frozen=True)
class HostFacts:
    """What nodeinfo, hostname and capabilities need from the HostSystem."""
    hostname: str
    cpu_model: str
    memory_bytes: int
    cpu_hz: int
    packages: int
    cores: int
    threads: int
    numa_nodes: int
    uuid: str
    version: str        # about.version, "6.5.0"
    api_type: str       # "HostAgent" (ESX) or "VirtualCenter"


def host_facts(content: Any) -> HostFacts:
    h = host_system(content)
    hw = h.hardware
    dns = h.config.network.dnsConfig
    name = dns.hostName or ""
    if dns.domainName:
        name = f"{name}.{dns.domainName}"
    return HostFacts(name, h.summary.hardware.cpuModel or "", hw.memorySize, hw.cpuInfo.hz,
                     hw.cpuInfo.numCpuPackages, hw.cpuInfo.numCpuCores,
                     hw.cpuInfo.numCpuThreads, hw.numaInfo.numNodes if hw.numaInfo else 0,
                     hw.systemInfo.uuid or "", content.about.version, content.about.apiType)


def vm_power(vm: Any) -> str:
    return str(vm.runtime.powerState)


def run_task(si: Any, task: Any) -> None:
    """Wait for a vSphere task of session ``si``; its fault is raised as the fault
    (mapped by the caller).  ``si`` is explicit: pyvmomi's default is one global
    session, and the daemon holds one per client connection."""
    WaitForTask(task, si=si)
