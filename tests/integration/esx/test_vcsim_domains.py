"""The ESX driver through pyvirtd against govmomi's simulator (vcsim: the stand-in for an ESX
host, which cannot run here), with stock virsh and python-libvirt.

Every expectation is read from the simulator itself through pyvmomi, so the
tests check the mapping, not vcsim's current inventory.
"""

from __future__ import annotations

import uuid

import libvirt
import pytest
from esx_helpers import EsxSetup, simulator_view, simulator_vms
from lxml import etree

from tests.conftest import virsh, wait_for
from tests.integration.qemu.daemon_helpers import EventCollector

VIR_FROM_ESX = 28


def ok(uri: str, commands: str) -> str:
    r = virsh(uri, commands)
    assert r.rc == 0, f"virsh {commands!r} failed: {r.err}"
    return r.out


def moid_number(vm) -> int:
    return int(vm._moId.removeprefix("vm-"))


def test_vcsim_uri_form_reaches_the_daemon(esx: EsxSetup) -> None:
    """esx+unix:///NAME?socket=... goes to pyvirtd (the client's own ESX driver
    declines a transport), which names the endpoint in its URI and type."""
    out = ok(esx.uri, "uri; version")
    assert out.splitlines()[0] == esx.uri
    assert "Using API: ESX 9.0.0" in out
    assert "Running hypervisor: ESX 6.5.0" in out     # the simulator's about.version
    conn = libvirt.open(esx.uri)
    try:
        assert conn.getType() == "ESX"
        assert conn.getVersion() == 6005000
    finally:
        conn.close()
    # the only endpoint configured: the path may leave it out
    rows = ok(f"esx+unix:///?socket={esx.daemon.sock}", "list --name").split()
    assert sorted(rows) == ["ha-host_VM0", "ha-host_VM1"]


def test_vcsim_list_and_lookups_match_the_simulator(esx: EsxSetup) -> None:
    _, content = simulator_view(esx.sim)
    vms = simulator_vms(content)
    assert len(vms) == 2
    rows = [line.split() for line in ok(esx.uri, "list --all").splitlines()[2:] if line]
    assert sorted(rows) == sorted([str(moid_number(vm)), name, "running"]
                                  for name, vm in vms.items())
    assert all(vm.runtime.powerState == "poweredOn" for vm in vms.values())
    conn = libvirt.open(esx.uri)
    try:
        listed = {d.name(): d for d in conn.listAllDomains()}
        assert set(listed) == set(vms)
        for name, vm in vms.items():
            d = listed[name]
            assert d.UUIDString() == vm.config.uuid
            assert d.ID() == moid_number(vm)
            assert conn.lookupByUUIDString(vm.config.uuid).name() == name
            assert conn.lookupByID(moid_number(vm)).name() == name
            assert conn.lookupByName(name).UUIDString() == vm.config.uuid
        assert sorted(conn.listDomainsID()) == sorted(moid_number(v) for v in vms.values())
        assert conn.listDefinedDomains() == []
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByName("no-such-vm")
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert err.value.get_error_domain() == VIR_FROM_ESX
        assert "no domain with matching name 'no-such-vm'" in str(err.value)
    finally:
        conn.close()


def test_vcsim_dominfo_and_power_states(esx: EsxSetup) -> None:
    """dominfo from the VM's config; poweredOn/suspended/poweredOff as running/paused/shut off."""
    _, content = simulator_view(esx.sim)
    name, vm = sorted(simulator_vms(content).items())[0]
    info = ok(esx.uri, f"dominfo {name}")
    assert f"UUID:           {vm.config.uuid}" in info
    assert f"CPU(s):         {vm.config.hardware.numCPU}" in info
    assert f"Max memory:     {vm.config.hardware.memoryMB * 1024} KiB" in info
    assert "State:          running" in info
    assert "Persistent:     yes" in info
    out = ok(esx.uri, f"suspend {name}; domstate {name} --reason; resume {name}; domstate {name}; "
                      f"destroy {name}; domstate {name}; domid {name}; start {name}; "
                      f"domstate {name}")
    states = [line for line in out.splitlines() if line and not line.startswith("Domain")]
    assert states == ["paused (unknown)", "running", "shut off", "-", "running"]
    # the simulator agrees
    assert simulator_vms(content)[name].runtime.powerState == "poweredOn"


def test_vcsim_power_operations_emit_lifecycle_events(esx: EsxSetup) -> None:
    events = EventCollector(esx.uri)
    conn = libvirt.open(esx.uri)
    try:
        dom = sorted(conn.listAllDomains(), key=lambda d: d.name())[1]
        name = dom.name()
        dom.suspend()
        events.wait((name, libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                     libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED))
        assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, 0]
        dom.resume()
        events.wait((name, libvirt.VIR_DOMAIN_EVENT_RESUMED,
                     libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED))
        dom.destroy()
        events.wait((name, libvirt.VIR_DOMAIN_EVENT_STOPPED,
                     libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED))
        assert dom.isActive() == 0
        assert conn.listDefinedDomains() == [name]
        dom.create()
        events.wait((name, libvirt.VIR_DOMAIN_EVENT_STARTED,
                     libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED))
        assert dom.isActive() == 1
        dom.reset(0)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        # govmomi 0.24's simulator has no RebootGuest: its MethodNotFound fault
        # arrives as "not supported" with the host's text
        with pytest.raises(libvirt.libvirtError) as err:
            dom.reboot(0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert "does not implement: RebootGuest" in str(err.value)
        dom.shutdown()          # the simulator's guest tools power it off
        wait_for(lambda: dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF, what="shutdown")
    finally:
        conn.close()
        events.close()


def test_vcsim_wrong_power_state_is_operation_invalid(esx: EsxSetup) -> None:
    _, content = simulator_view(esx.sim)
    name = sorted(simulator_vms(content))[0]
    r = virsh(esx.uri, f"resume {name}")
    assert r.rc != 0
    assert "Requested operation is not valid: Domain is not suspended" in r.err
    r = virsh(esx.uri, f"destroy {name}; destroy {name}")
    assert "Domain is not powered on" in r.err
    ok(esx.uri, f"start {name}")
    conn = libvirt.open(esx.uri)        # virsh's start checks isActive itself; the API does not
    try:
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByName(name).create()
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
        assert "Domain is not powered off" in str(err.value)
    finally:
        conn.close()


def test_vcsim_dumpxml_maps_the_vm_config(esx: EsxSetup) -> None:
    """Memory, vCPUs, disks as [datastore] path.vmdk on their controller, NICs with MACs
    on their port group: the elements libvirt's VMX mapping prints."""
    from pyVmomi import vim

    _, content = simulator_view(esx.sim)
    name, vm = sorted(simulator_vms(content).items())[0]
    xml = ok(esx.uri, f"dumpxml {name}")
    root = etree.fromstring(xml)
    assert root.get("type") == "vmware"
    assert root.get("id") == str(moid_number(vm))
    assert root.findtext("name") == name
    assert root.findtext("uuid") == vm.config.uuid
    assert root.findtext("memory") == str(vm.config.hardware.memoryMB * 1024)
    assert root.findtext("vcpu") == str(vm.config.hardware.numCPU)
    assert root.find("os/type").text == "hvm"
    disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    sources = [e.get("file") for e in root.findall("devices/disk[@device='disk']/source")]
    assert sources == [d.backing.fileName for d in disks]
    assert all(s.startswith("[LocalDS_0] ") and s.endswith(".vmdk") for s in sources)
    disk = root.find("devices/disk[@device='disk']")
    assert disk.find("target").attrib == {"dev": "sda", "bus": "scsi"}
    assert root.find("devices/controller[@type='scsi']").get("model") == "vmpvscsi"
    nics = [d for d in vm.config.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    ifaces = root.findall("devices/interface")
    assert [i.find("mac").get("address") for i in ifaces] == [n.macAddress for n in nics]
    assert [i.find("source").get("bridge") for i in ifaces] == \
        [n.backing.deviceName for n in nics]
    assert [i.find("model").get("type") for i in ifaces] == ["e1000"]
    assert root.find("devices/video/model").get("type") == "vmvga"
    inactive = etree.fromstring(ok(esx.uri, f"dumpxml {name} --inactive"))
    assert inactive.get("id") is None


def test_vcsim_host_facts(esx: EsxSetup) -> None:
    """nodeinfo, hostname and capabilities from the simulator's HostSystem."""
    _, content = simulator_view(esx.sim)
    from pyVmomi import vim

    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    host = view.view[0]
    conn = libvirt.open(esx.uri)
    try:
        model, mem_mib, cpus, mhz, nodes, sockets, cores, threads = conn.getInfo()
        cpu = host.hardware.cpuInfo
        assert model == "Intel Core i7-3615QM CPU @ 2.30"   # (R), (TM) dropped, 31 chars
        assert host.summary.hardware.cpuModel.startswith("Intel(R) Core(TM) i7-3615QM")
        assert mem_mib == host.hardware.memorySize // (1024 * 1024)
        assert (cpus, mhz, sockets) == (cpu.numCpuCores, cpu.hz // 1_000_000,
                                        cpu.numCpuPackages)
        assert cores == cpu.numCpuCores // cpu.numCpuPackages
        assert threads == cpu.numCpuThreads // cpu.numCpuCores
        assert nodes == host.hardware.numaInfo.numNodes
        dns = host.config.network.dnsConfig
        assert conn.getHostname() == f"{dns.hostName}.{dns.domainName}"
        caps = etree.fromstring(conn.getCapabilities())
        assert caps.findtext("host/uuid") == host.hardware.systemInfo.uuid
        assert sorted(g.find("arch").get("name") for g in caps.findall("guest")) == \
            ["i686", "x86_64"]
        assert {e.get("type") for e in caps.iter("domain")} == {"vmware"}
    finally:
        conn.close()


def test_vcsim_one_session_per_connection(esx: EsxSetup) -> None:
    """Opening a client connection logs in to the host; closing it logs out."""
    _, content = simulator_view(esx.sim)

    def sessions() -> set[str]:
        return {s.key for s in content.sessionManager.sessionList}

    before = sessions()
    conn = libvirt.open(esx.uri)
    conn.listAllDomains()
    during = sessions()
    assert len(during - before) == 1
    conn2 = libvirt.open(esx.uri)
    assert len(sessions() - before) == 2
    conn2.close()
    conn.close()
    wait_for(lambda: sessions() == before, what="both sessions logged out")


def test_vcsim_uuid_lookup_of_a_vanished_vm(esx: EsxSetup) -> None:
    conn = libvirt.open(esx.uri)
    try:
        missing = uuid.uuid4()
        with pytest.raises(libvirt.libvirtError) as err:
            conn.lookupByUUID(missing.bytes)
        assert err.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert str(missing) in str(err.value)
    finally:
        conn.close()
