"""vCPU hotplug and unplug on pyvirtd's QEMU driver (virsh setvcpus --live), seen from the guest.

The tiny TCG guest boots with one vCPU of three (``<vcpu current='1'>3</vcpu>``).
`virsh setvcpus --live` plugs CPU devices; the guest's kernel sees them
arrive in /sys/devices/system/cpu/present (ACPI CPU hotplug).  A hotplugged
CPU is not brought online by the kernel itself (distributions leave that to
a udev rule, which the busybox guest has not), so the test onlines it as
such a rule would and reads /sys/devices/system/cpu/online.  Unplugging
goes through the guest: it offlines and ejects the CPU, and QEMU's
DEVICE_DELETED ends the call.  QEMU's own view (query-hotpluggable-cpus) is
checked too.
"""

from __future__ import annotations

import json
import re

import pytest

from daemon_helpers import module_daemon, module_uri, needs_qemu, ok, virsh, wait_for
from guest_helpers import Console, tiny_guest, tiny_xml

pytestmark = needs_qemu

daemon = module_daemon("qemu-domapi-vcpus")
uri = module_uri
NAME = "dvcpu"


@pytest.fixture(scope="module")
def console(daemon, uri, tmp_path_factory):
    guest = tiny_guest()
    xml = tmp_path_factory.mktemp("dvcpu") / "dvcpu.xml"
    xml.write_text(tiny_xml(NAME, guest).replace("<vcpu>1</vcpu>",
                                                 "<vcpu placement='static' current='1'>3</vcpu>"))
    ok(uri, f"define {xml}; start {NAME} --paused")
    con = Console(uri, NAME)
    try:
        ok(uri, f"resume {NAME}")
        con.wait("GUEST READY", timeout=120)
        con.run("echo ok-$((2+2))", "ok-4")
        yield con
    finally:
        con.close()
        virsh(uri, f"destroy {NAME}; undefine {NAME}")


def guest_file(console: Console, path: str) -> str:
    """The content of a one-line file in the guest, read at the shell."""
    m = console.run(f'echo "F""=[$(cat {path})]"', r"F=\[([^\]]*)\]")
    return m.group(1)


def qemu_plugged(uri: str) -> int:
    out = ok(uri, f"""qemu-monitor-command {NAME} '{{"execute":"query-hotpluggable-cpus"}}'""")
    return sum(1 for s in json.loads(out)["return"] if s.get("qom-path"))


def counts(uri: str) -> dict[str, int]:
    return counts_of(uri, NAME)


def counts_of(uri: str, name: str) -> dict[str, int]:
    out = ok(uri, f"vcpucount {name}")
    return {f"{a} {b}": int(n) for a, b, n in re.findall(r"^(\w+)\s+(\w+)\s+(\d+)$", out, re.M)}


def test_hotplug_and_unplug_seen_from_the_guest(console, uri):
    assert guest_file(console, "/sys/devices/system/cpu/online") == "0"
    assert counts(uri) == {"maximum config": 3, "maximum live": 3,
                           "current config": 1, "current live": 1}
    ok(uri, f"setvcpus {NAME} 3 --live")
    assert qemu_plugged(uri) == 3
    assert counts(uri)["current live"] == 3 and counts(uri)["current config"] == 1
    assert "current='3'" not in ok(uri, f"dumpxml {NAME} --inactive")
    assert re.search(r"<vcpu placement='static'>3</vcpu>", ok(uri, f"dumpxml {NAME}"))
    wait_for(lambda: guest_file(console, "/sys/devices/system/cpu/present") == "0-2",
             timeout=60, interval=0.5)
    # what a udev rule does on the CPU's "add" event
    console.run("for c in 1 2; do echo 1 > /sys/devices/system/cpu/cpu$c/online; done; "
                "echo onlined", "onlined")
    wait_for(lambda: guest_file(console, "/sys/devices/system/cpu/online") == "0-2",
             timeout=60, interval=0.5)

    ok(uri, f"setvcpus {NAME} 2 --live")     # returns once the guest gave it back
    assert qemu_plugged(uri) == 2
    assert counts(uri)["current live"] == 2
    assert guest_file(console, "/sys/devices/system/cpu/present") == "0-1"
    assert guest_file(console, "/sys/devices/system/cpu/online") == "0-1"


def test_setvcpus_refusals(console, uri):
    r = virsh(uri, f"setvcpus {NAME} 4 --live")
    assert r.rc != 0 and "greater than max allowable number of virtual CPUs" in r.err
    r = virsh(uri, f"setvcpus {NAME} 2 --live --config --maximum")
    assert r.rc != 0 and "maximum vcpu count of a live domain can't be modified" in r.err
    ok(uri, f"setvcpus {NAME} 1 --live")
    assert counts(uri)["current live"] == 1


def test_vcpus_qemu_started_with_cannot_be_unplugged(uri, tmp_path):
    """As libvirt's (hotpluggable='no'): only CPU devices plugged later can go."""
    from daemon_helpers import guest_xml

    xml = tmp_path / "dvcpu-fw.xml"
    xml.write_text(guest_xml("dvcpu-fw").replace("<vcpu>1</vcpu>", "<vcpu current='2'>3</vcpu>"))
    ok(uri, f"create {xml}")
    try:
        r = virsh(uri, "setvcpus dvcpu-fw 1 --live")
        assert r.rc != 0 and "unsupported configuration: vcpu '1' can't be unplugged" in r.err
        assert counts_of(uri, "dvcpu-fw")["current live"] == 2
    finally:
        virsh(uri, "destroy dvcpu-fw")


def test_config_and_max_vcpus(console, uri):
    import libvirt

    ok(uri, f"setvcpus {NAME} 2 --config")
    assert counts(uri)["current config"] == 2
    ok(uri, f"setvcpus {NAME} 4 --config --maximum")
    assert counts(uri)["maximum config"] == 4 and counts(uri)["maximum live"] == 3
    r = virsh(uri, f"setvcpus {NAME} 5 --config")
    assert r.rc != 0 and "greater than max allowable number of virtual CPUs" in r.err
    conn = libvirt.open(uri)
    try:
        assert conn.lookupByName(NAME).maxVcpus() == 3
    finally:
        conn.close()
    ok(uri, f"setvcpus {NAME} 3 --config --maximum; setvcpus {NAME} 1 --config")
