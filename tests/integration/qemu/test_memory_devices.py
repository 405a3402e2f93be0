"""<memory model='dimm'> with <maxMemory slots=...> and NUMA cells: QEMU gets the NUMA
nodes and the DIMMs (QMP query-memory-devices, HMP info numa), the definition
shows libvirt's total and slots, and what libvirt refuses at define is refused."""

from __future__ import annotations

import json

import pytest

from daemon_helpers import KVM_OK, module_daemon, needs_qemu, ok, qemu_uri, virsh

pytestmark = needs_qemu

daemon = module_daemon("qemu-memdev")

GUEST = """<domain type='{virt}'>
  <name>{name}</name>
  {max_memory}
  <memory unit='MiB'>128</memory>
  <vcpu>2</vcpu>
  <cpu>{numa}</cpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>{devices}</devices>
</domain>
"""
NUMA = ("<numa><cell id='0' cpus='0' memory='64' unit='MiB'/>"
        "<cell id='1' cpus='1' memory='64' unit='MiB'/></numa>")
MAX = "<maxMemory slots='4' unit='MiB'>1024</maxMemory>"
VMEM = ("<memory model='virtio-mem'><target><size unit='MiB'>{size}</size><node>0</node>"
        "<block unit='KiB'>{block}</block><requested unit='KiB'>{requested}</requested>"
        "</target></memory>")
DIMM = ("<memory model='dimm'><target><size unit='MiB'>{size}</size><node>{node}</node>"
        "</target></memory>")


def _write(tmp_path, name: str, *, max_memory: str = MAX, numa: str = NUMA,
           devices: str = "") -> str:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(GUEST.format(virt="kvm" if KVM_OK else "qemu", name=name,
                                max_memory=max_memory, numa=numa, devices=devices))
    return str(xml)


def _memory_devices(uri: str, name: str) -> list[tuple[str, int, int, int]]:
    out = ok(uri, f"qemu-monitor-command {name} '{{\"execute\":\"query-memory-devices\"}}'")
    return [(d["data"]["id"], d["data"]["size"], d["data"]["node"], d["data"]["slot"])
            for d in json.loads(out)["return"]]


def test_dimms_in_numa_nodes_run(daemon, tmp_path):
    uri = qemu_uri(daemon)
    name = "dk-dimm"
    ok(uri, "define " + _write(tmp_path, name, devices=DIMM.format(size=128, node=1)
                               + DIMM.format(size=256, node=0)))
    try:
        inactive = ok(uri, f"dumpxml --inactive {name}")
        assert "<memory unit='KiB'>524288</memory>" in inactive      # 2 x 64 MiB + the DIMMs
        assert "<address type='dimm' slot='0'/>" in inactive
        assert "<address type='dimm' slot='1'/>" in inactive
        ok(uri, f"start {name}")
        assert _memory_devices(uri, name) == [("dimm0", 128 << 20, 1, 0),
                                              ("dimm1", 256 << 20, 0, 1)]
        numa = ok(uri, f"qemu-monitor-command {name} --hmp 'info numa'")
        assert "2 nodes" in numa
        assert "node 0 size: 320 MB" in numa and "node 1 size: 192 MB" in numa
        live = ok(uri, f"dumpxml {name}")
        assert "<alias name='dimm0'/>" in live and "<alias name='dimm1'/>" in live
    finally:
        virsh(uri, f"destroy {name}; undefine {name}")


def test_virtio_mem_runs(daemon, tmp_path):
    uri = qemu_uri(daemon)
    name = "dk-vmem"
    ok(uri, "define " + _write(tmp_path, name, devices=VMEM.format(size=256, block=2048,
                                                                    requested=131072)))
    try:
        assert "<memory unit='KiB'>393216</memory>" in ok(uri, f"dumpxml --inactive {name}")
        ok(uri, f"start {name}")
        out = ok(uri, f"qemu-monitor-command {name} '{{\"execute\":\"query-memory-devices\"}}'")
        [dev] = json.loads(out)["return"]
        assert dev["type"] == "virtio-mem"
        data = dev["data"]
        assert (data["id"], data["max-size"], data["block-size"], data["requested-size"],
                data["node"]) == ("virtiomem0", 256 << 20, 2 << 20, 128 << 20, 0)
        assert "<alias name='virtiomem0'/>" in ok(uri, f"dumpxml {name}")
    finally:
        virsh(uri, f"destroy {name}; undefine {name}")


def test_dimm_hotplug(daemon, tmp_path):
    uri = qemu_uri(daemon)
    name = "dk-dimm-hot"
    ok(uri, "define " + _write(tmp_path, name, devices=DIMM.format(size=128, node=0)))
    dimm = tmp_path / "dimm.xml"
    dimm.write_text(DIMM.format(size=256, node=1))
    try:
        ok(uri, f"start {name}")
        ok(uri, f"attach-device {name} {dimm} --live")
        assert _memory_devices(uri, name) == [("dimm0", 128 << 20, 0, 0),
                                              ("dimm1", 256 << 20, 1, 1)]
        live = ok(uri, f"dumpxml {name}")
        assert "<memory unit='KiB'>524288</memory>" in live  # cells 2x64, DIMMs 128 + 256 MiB
        assert "<alias name='dimm1'/>" in live and "<address type='dimm' slot='1'/>" in live
        # the persistent definition is unchanged; --config adds it there
        assert "<memory unit='KiB'>262144</memory>" in ok(uri, f"dumpxml --inactive {name}")
        ok(uri, f"attach-device {name} {dimm} --config")
        inactive = ok(uri, f"dumpxml --inactive {name}")
        assert "<memory unit='KiB'>524288</memory>" in inactive
        assert "<address type='dimm' slot='1'/>" in inactive
        big = tmp_path / "big.xml"
        big.write_text(DIMM.format(size=768, node=0))      # 512 MiB + 768 > 1 GiB
        r = virsh(uri, f"attach-device {name} {big} --live")
        assert r.rc != 0 and "would exceed domain's maxMemory config size" in r.err
    finally:
        virsh(uri, f"destroy {name}; undefine {name}")


@pytest.mark.parametrize("max_memory, numa, devices, message", [
    ("", NUMA, DIMM.format(size=128, node=0),
     "cannot use/hotplug a memory device when domain 'maxMemory' is not defined"),
    (MAX, "", "", "At least one numa node has to be configured when enabling memory hotplug"),
    ("<maxMemory slots='1' unit='MiB'>1024</maxMemory>", NUMA,
     DIMM.format(size=128, node=0) * 2, "failed to find an empty memory slot"),
    ("<maxMemory slots='1' unit='MiB'>1024</maxMemory>", NUMA,
     DIMM.format(size=128, node=0) + VMEM.format(size=128, block=2048, requested=0),
     "memory device count '2' exceeds slots count '1'"),
    (MAX, NUMA, DIMM.format(size=1024, node=0),
     "maximum memory size must be equal or greater than the actual memory size"),
    (MAX, NUMA, DIMM.format(size=128, node=2),
     "can't add memory backend for guest node '2' as the guest has only '2' NUMA nodes "
     "configured"),
    (MAX, NUMA, VMEM.format(size=128, block=3000, requested=0),
     "block size must be a power of two"),
    (MAX, NUMA, VMEM.format(size=128, block=2048, requested=3000),
     "requested size must be an integer multiple of block size"),
])
def test_memory_hotplug_configurations_libvirt_refuses(daemon, tmp_path, max_memory, numa,
                                                       devices, message):
    uri = qemu_uri(daemon)
    r = virsh(uri, "define " + _write(tmp_path, "dk-dimm-bad", max_memory=max_memory,
                                      numa=numa, devices=devices))
    assert r.rc != 0 and message in r.err, r
