"""The ESX driver against the simulator's vCenter model (vcsim, a stand-in for vCenter):
VMs across several hosts and clusters, listed and read through pyvirtd."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from esx_helpers import endpoint_config, simulator_view, simulator_vms, write_credentials
from lxml import etree

from tests.conftest import start_daemon, stop_daemon
from tests.vcsim.server import start_vcsim


@pytest.fixture
def vcenter(tmp_path: Path):
    sim = start_vcsim(tmp_path / "vcsim", model="vpx")
    cred = write_credentials(tmp_path / "vc.yaml", sim.username, sim.password)
    d = start_daemon(tmp_path / "pyvirtd", config="esx_endpoints:\n"
                     + endpoint_config("vc", sim, cred, ca_file=sim.ca_file))
    yield sim, f"esx+unix:///vc?socket={d.sock}"
    stop_daemon(d)
    sim.stop()


def test_vcsim_vcenter_lists_every_vm_of_every_host(vcenter) -> None:
    sim, uri = vcenter
    si, content = simulator_view(sim)
    vms = simulator_vms(content)
    assert len(vms) > 2                       # several hosts, two VMs each
    assert content.about.apiType == "VirtualCenter"
    conn = libvirt.open(uri)
    try:
        listed = {d.name(): d for d in conn.listAllDomains()}
        assert set(listed) == set(vms)
        for name, vm in vms.items():
            assert listed[name].UUIDString() == vm.config.uuid
            assert listed[name].ID() == int(vm._moId.removeprefix("vm-"))
        name, vm = sorted(vms.items())[0]
        root = etree.fromstring(listed[name].XMLDesc(0))
        assert root.findtext("memory") == str(vm.config.hardware.memoryMB * 1024)
        disks = [e.get("file") for e in root.findall("devices/disk[@device='disk']/source")]
        assert disks and all(d.startswith("[LocalDS_0] ") for d in disks)
        assert conn.getInfo()[1] > 0          # nodeinfo from the first host
    finally:
        conn.close()
