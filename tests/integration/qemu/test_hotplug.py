"""Device hotplug on a guest that really boots: disks and NICs in and out, seen by the guest.

The guest is the tiny one of tests/guest/build.py (TCG, q35) with six
pcie-root-ports: its USB and SCSI controllers and balloon take three at
definition (libvirt's address assignment), the other three take hotplugged
PCI devices (as libvirt, pyvirtd never plugs into pcie.0).  pyvirtd runs inside a
network namespace this module makes (test_guest_network's Lab), so the
bridge a hotplugged NIC joins is the test's own.  The guest's kernel must
see what is plugged: the tests read /sys over the serial console.

Events are checked as two separate python-libvirt connections receive
them (every registered client must get each one).
"""

from __future__ import annotations

import os
import re

import pytest

from daemon_helpers import guest_pid, needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, EventLog, tiny_guest, tiny_xml
from test_guest_network import Lab

pytestmark = [needs_qemu,
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]

EXTRA = """<controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='pci' index='2' model='pcie-root-port'/>
    <controller type='pci' index='3' model='pcie-root-port'/>
    <controller type='pci' index='4' model='pcie-root-port'/>
    <controller type='pci' index='5' model='pcie-root-port'/>
    <controller type='pci' index='6' model='pcie-root-port'/>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk>"""
BRIDGE = "brhp"
TRAY_OPEN, TRAY_CLOSE = 0, 1
MAC = "52:54:00:5a:00:01"


def device_events(uri: str) -> EventLog:
    import libvirt

    return EventLog(uri, {"added": libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
                          "removed": libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                          "failed": libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                          "tray": libvirt.VIR_DOMAIN_EVENT_ID_TRAY_CHANGE})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("hotplug"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def uri(lab):
    uri = lab.start_daemon()
    lab.ns(lab.host, "ip", "link", "add", BRIDGE, "type", "bridge")
    lab.ns(lab.host, "ip", "link", "set", BRIDGE, "up")
    return uri


@pytest.fixture(scope="module")
def events(uri):
    evs = [device_events(uri), device_events(uri)]
    try:
        yield evs
    finally:
        for ev in evs:
            ev.close()


@pytest.fixture(scope="module")
def guest(uri, lab, events):
    path = lab.root.parent / "hp1.xml"
    path.write_text(tiny_xml("hp1", tiny_guest(), interfaces=EXTRA))
    ok(uri, f"define {path}")
    ok(uri, "start hp1 --paused")
    con = Console(uri, "hp1")
    ok(uri, "resume hp1")
    con.wait("GUEST READY", timeout=90)
    con.wait(re.escape(PROMPT))
    # kernel messages about plugged devices would land in the middle of the
    # tests' own output lines on this console
    con.run("dmesg -n 1", re.escape(PROMPT))
    try:
        yield con
    finally:
        con.close()
        virsh(uri, "destroy hp1; undefine hp1")


def image(lab, name: str, size_mib: int = 8) -> str:
    path = lab.root.parent / name
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    return str(path)


def sys_block(con: Console) -> dict[str, str]:
    """The guest's block devices and their sizes in sectors (its own names: the first
    virtio disk it sees is vda, whatever the target in the XML says)."""
    m = con.run("echo BLK:$(for b in /sys/block/*; do echo ${b##*/}=$(cat $b/size); done):END",
                r"BLK:([^:\n]*):END")
    return dict(item.split("=", 1) for item in m.group(1).split() if "=" in item)


def new_disks(con: Console, before: dict[str, str]) -> list[str]:
    """Block devices the guest has now and did not have in ``before``, with the size
    of our 8 MiB test images (16384 sectors)."""
    return [name for name, size in sys_block(con).items()
            if name not in before and size == "16384"]


def wait_guest(con: Console, predicate, timeout: float = 30.0) -> None:
    wait_for(lambda: predicate(), timeout=timeout, interval=0.5)


def wait_new_disk(con: Console, before: dict[str, str]) -> str:
    """The one disk the guest has gained since ``before`` (see new_disks)."""
    found: list[str] = []
    wait_guest(con, lambda: len(found.__setitem__(slice(None), new_disks(con, before)) or found)
               == 1)
    return found[0]


def qemu_files(lab, name: str) -> set[str]:
    """The files the guest's QEMU holds open: a detached disk's image must be gone."""
    pid = guest_pid(lab.root, name)
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def both(events, expected) -> None:
    for ev in events:
        ev.wait(expected)


# -- disks --------------------------------------------------------------------------

def test_virtio_disk_attach_and_detach_live(uri, lab, guest, events):
    img = image(lab, "vdb.img")
    before = sys_block(guest)
    assert "Disk attached successfully" in ok(uri, f"attach-disk hp1 {img} vdb --targetbus virtio")
    both(events, ("hp1", "added", "virtio-disk1"))
    assert wait_new_disk(guest, before).startswith("vd")
    live = ok(uri, "dumpxml hp1")
    disk = re.search(r"<disk type='file' device='disk'>.*?</disk>",
                     live[live.index(img) - 200:], re.S).group(0)
    assert "<alias name='virtio-disk1'/>" in disk
    assert re.search(r"<address type='pci' domain='0x0000' bus='0x0[456]'", disk)
    assert img not in ok(uri, "dumpxml hp1 --inactive")     # --current on a running guest: live only
    assert "vdb" in ok(uri, "domblklist hp1")
    assert img in qemu_files(lab, "hp1")

    # the same target again is refused, with libvirt's words
    r = virsh(uri, f"attach-disk hp1 {img} vdb --targetbus virtio")
    assert r.rc != 0 and "target vdb already exists" in r.err

    assert "Disk detached successfully" in ok(uri, "detach-disk hp1 vdb")
    both(events, ("hp1", "removed", "virtio-disk1"))
    wait_guest(guest, lambda: not new_disks(guest, before))
    assert img not in ok(uri, "dumpxml hp1")
    assert img not in qemu_files(lab, "hp1")          # blockdev-del closed the image


def test_scsi_disk_attach_and_detach_live(uri, lab, guest, events):
    img = image(lab, "sda.img")
    before = sys_block(guest)
    ok(uri, f"attach-disk hp1 {img} sda --targetbus scsi")
    both(events, ("hp1", "added", "scsi0-0-0-0"))
    assert wait_new_disk(guest, before).startswith("sd")
    ok(uri, "detach-disk hp1 sda")
    both(events, ("hp1", "removed", "scsi0-0-0-0"))     # no guest ack needed on SCSI
    wait_guest(guest, lambda: not new_disks(guest, before))


def test_scsi_disk_brings_its_controller(uri, lab, guest, events):
    """A SCSI disk for a controller the guest lacks: the controller is hotplugged first,
    with the default model (lsilogic), as libvirt does; it stays after the disk goes."""
    guest.run("load-on-demand", "MODULES LOADED")         # sym53c8xx for the LSI controller
    img = image(lab, "sdh.img")
    before = sys_block(guest)
    ok(uri, f"attach-disk hp1 {img} sdh --targetbus scsi")     # unit 7: controller 1
    both(events, ("hp1", "added", "scsi1-0-0-0"))
    assert wait_new_disk(guest, before).startswith("sd")
    live = ok(uri, "dumpxml hp1")
    assert re.search(r"<controller type='scsi' index='1' model='lsilogic'>\s*"
                     r"<alias name='scsi1'/>\s*<address type='pci'", live)
    ok(uri, "detach-disk hp1 sdh")
    both(events, ("hp1", "removed", "scsi1-0-0-0"))
    # (an LSI HBA has no way to tell the guest a disk left, unlike virtio-scsi: the
    # guest's view is not checked here, QEMU's is)
    assert img not in qemu_files(lab, "hp1")
    assert "<alias name='scsi1'/>" in ok(uri, "dumpxml hp1")


def test_usb_disk_attach_and_detach_live(uri, lab, guest, events):
    guest.run("load-on-demand", "MODULES LOADED")         # xhci_pci + usb_storage
    img = image(lab, "sdc.img")
    before = sys_block(guest)
    ok(uri, f"attach-disk hp1 {img} sdc --targetbus usb")
    both(events, ("hp1", "added", "usb-disk2"))
    wait_new_disk(guest, before)
    ok(uri, "detach-disk hp1 sdc")
    both(events, ("hp1", "removed", "usb-disk2"))
    wait_guest(guest, lambda: not new_disks(guest, before))


def test_config_only_and_errors(uri, lab, guest):
    import libvirt

    img = image(lab, "vdc.img")
    ok(uri, f"attach-disk hp1 {img} vdc --config")
    assert img in ok(uri, "dumpxml hp1 --inactive")
    assert img not in ok(uri, "dumpxml hp1")
    r = virsh(uri, f"attach-disk hp1 {img} vdc --config")
    assert r.rc != 0 and "target vdc already exists" in r.err
    ok(uri, "detach-disk hp1 vdc --config")
    assert img not in ok(uri, "dumpxml hp1 --inactive")

    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("hp1")
        xml = f"<disk type='file'><source file='{img}'/><target dev='vdz'/></disk>"
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_DEVICE_MISSING
        assert "disk vdz not found" in str(exc.value)
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert "no target device vdz" in str(exc.value)
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.attachDeviceFlags("<watchdog model='i6300esb'/>", libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED
        assert "live attach of device 'watchdog' is not supported" in str(exc.value)
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.detachDeviceAlias("nosuch0", libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_DEVICE_MISSING
    finally:
        conn.close()


def test_persistent_volume_disk(uri, lab, guest, events):
    """--persistent (live and config) with a disk from a storage pool (type='volume')."""
    pool = lab.root.parent / "hppool"
    pool.mkdir(exist_ok=True)
    ok(uri, f"pool-create-as hppool dir --target {pool}")
    try:
        ok(uri, "vol-create-as hppool v1.qcow2 8M --format qcow2")
        xml = lab.root.parent / "voldisk.xml"
        xml.write_text("<disk type='volume' device='disk'><source pool='hppool' volume='v1.qcow2'/>"
                       "<target dev='vdg' bus='virtio'/></disk>")
        before = sys_block(guest)
        assert "Device attached successfully" in ok(uri, f"attach-device hp1 {xml} --persistent")
        assert wait_new_disk(guest, before).startswith("vd")     # 8 MiB, as qcow2's virtual size
        for flags in ("", "--inactive"):
            assert "volume='v1.qcow2'" in ok(uri, f"dumpxml hp1 {flags}")
        assert str(pool / "v1.qcow2") in qemu_files(lab, "hp1")
        assert "Device detached successfully" in ok(uri, f"detach-device hp1 {xml} --persistent")
        wait_guest(guest, lambda: not new_disks(guest, before))
        for flags in ("", "--inactive"):
            assert "v1.qcow2" not in ok(uri, f"dumpxml hp1 {flags}")
    finally:
        virsh(uri, "pool-destroy hppool")


def test_live_flag_on_inactive_and_config_on_transient(uri, lab):
    img = image(lab, "vdd.img")
    path = lab.root.parent / "hpoff.xml"
    path.write_text(tiny_xml("hpoff", tiny_guest()))
    ok(uri, f"define {path}")
    try:
        r = virsh(uri, f"attach-disk hpoff {img} vdd --live")
        assert r.rc != 0 and "domain is not running" in r.err
        # no flag is virDomainAttachDevice, which means --live, as libvirt's
        r = virsh(uri, f"attach-disk hpoff {img} vdd")
        assert r.rc != 0 and "domain is not running" in r.err
        ok(uri, f"attach-disk hpoff {img} vdd --current")  # on a shut off guest: its config
        assert img in ok(uri, "dumpxml hpoff")
    finally:
        virsh(uri, "undefine hpoff")
    path.write_text(tiny_xml("hptr", tiny_guest()))
    ok(uri, f"create {path}")
    try:
        r = virsh(uri, f"attach-disk hptr {img} vdd --config")
        assert r.rc != 0 and "transient domains do not have any persistent config" in r.err
    finally:
        virsh(uri, "destroy hptr")


def test_detach_pending_until_the_guest_lets_go(uri, lab, guest, events):
    """A paused guest cannot acknowledge a PCI unplug: the detach returns after libvirt's
    5 s with the removal pending, which completes once the guest runs again."""
    img = image(lab, "vdf.img")
    before = sys_block(guest)
    ok(uri, f"attach-disk hp1 {img} vdf --targetbus virtio")
    wait_new_disk(guest, before)
    alias = re.search(r"<alias name='(virtio-disk\d+)'/>",
                      ok(uri, "dumpxml hp1").split(img, 1)[1]).group(1)
    ok(uri, "suspend hp1")
    try:
        assert "Disk detached successfully" in ok(uri, "detach-disk hp1 vdf")
        assert img in ok(uri, "dumpxml hp1")                  # still there: pending
        assert ("hp1", "removed", alias) not in events[0].events
    finally:
        ok(uri, "resume hp1")
    both(events, ("hp1", "removed", alias))
    assert img not in ok(uri, "dumpxml hp1")
    wait_guest(guest, lambda: not new_disks(guest, before))


# -- CD-ROM media ------------------------------------------------------------------------

def media(lab, name: str, label: str) -> str:
    """A 1 MiB image starting with ``label``, which the guest reads back from /dev/sr0."""
    path = lab.root.parent / name
    path.write_bytes(label.encode().ljust(1 << 20, b"\0"))
    return str(path)


def read_cdrom(con: Console) -> str:
    return con.run("echo CD:$(dd if=/dev/sr0 bs=2048 count=1 2>/dev/null | head -c 15):END",
                   r"CD:([\w-]*):END").group(1)


def test_cdrom_media_change(uri, lab, guest, events):
    one, two = media(lab, "one.iso", "PYVIRTD-MEDIA-1"), media(lab, "two.iso", "PYVIRTD-MEDIA-2")
    guest.run("load-on-demand", "MODULES LOADED")         # ahci + sr_mod: the guest sees sr0
    wait_guest(guest, lambda: guest.run("echo SR:$(ls /sys/block | grep sr):END",
                                        r"SR:(\w*):END").group(1) == "sr0")
    n = len(events[0].events)
    assert "Successfully inserted media" in ok(uri, f"change-media hp1 sdb {one} --insert")
    # (the guest's first read after a change may only learn that the medium changed)
    wait_guest(guest, lambda: read_cdrom(guest) == "PYVIRTD-MEDIA-1")
    assert one in ok(uri, "dumpxml hp1") and one not in ok(uri, "dumpxml hp1 --inactive")
    for ev in events:           # QEMU moved the tray: open, then closed again
        wait_for(lambda: [e for e in ev.events[n:] if e[1] == "tray"] ==
                 [("hp1", "tray", "sata0-0-1", TRAY_OPEN), ("hp1", "tray", "sata0-0-1", TRAY_CLOSE)])

    assert "Successfully updated media" in ok(uri, f"change-media hp1 sdb {two} --update")
    wait_guest(guest, lambda: read_cdrom(guest) == "PYVIRTD-MEDIA-2")
    assert "Successfully ejected media" in ok(uri, "change-media hp1 sdb --eject")
    live = ok(uri, "dumpxml hp1")
    assert two not in live and "<alias name='sata0-0-1'/>" in live
    wait_guest(guest, lambda: read_cdrom(guest) == "")

    r = virsh(uri, f"change-media hp1 vdz {one} --insert")
    assert r.rc != 0


# -- interfaces ----------------------------------------------------------------------

def test_bridge_interface_attach_and_detach_live(uri, lab, guest, events):
    assert "Interface attached successfully" in ok(
        uri, f"attach-interface hp1 bridge {BRIDGE} --model virtio --mac {MAC}")
    both(events, ("hp1", "added", "net0"))
    wait_guest(guest, lambda: guest.run("echo NET:$(ls /sys/class/net | grep eth):END",
                                        r"NET:(\w*):END").group(1) == "eth0")
    tap = re.search(r"(vnet\d+)\s+bridge\s+" + BRIDGE, ok(uri, "domiflist hp1")).group(1)
    assert lab.links()[tap] == BRIDGE                 # the tap QEMU got over QMP is on the bridge
    guest.run("cat /sys/class/net/eth0/address", re.escape(MAC))

    assert "Interface detached successfully" in ok(uri, f"detach-interface hp1 bridge --mac {MAC}")
    both(events, ("hp1", "removed", "net0"))
    wait_for(lambda: tap not in lab.links(), timeout=10)
    assert MAC not in ok(uri, "dumpxml hp1")
    r = virsh(uri, f"detach-interface hp1 bridge --mac {MAC}")
    assert r.rc != 0


def test_network_interface_attach_and_detach_live(uri, lab, guest, events):
    net = lab.root.parent / "hpnet.xml"
    net.write_text("<network><name>hpnet</name><bridge name='virbrhp'/>"
                   "<ip address='10.81.0.1' netmask='255.255.255.0'/></network>")
    ok(uri, f"net-create {net}")
    try:
        mac = "52:54:00:5a:00:02"
        ok(uri, f"attach-interface hp1 network hpnet --model virtio --mac {mac}")
        both(events, ("hp1", "added", "net0"))
        tap = re.search(r"(vnet\d+)\s+network\s+hpnet", ok(uri, "domiflist hp1")).group(1)
        assert lab.links()[tap] == "virbrhp"
        wait_guest(guest, lambda: guest.run("echo NET:$(ls /sys/class/net | grep eth):END",
                                            r"NET:(\w*):END").group(1) == "eth0")
        # the guest's NIC works: it reaches the network's gateway through the tap
        # (the first echoes may go while the new bridge port still learns)
        guest.run("ip addr add 10.81.0.2/24 dev eth0 && ip link set eth0 up", re.escape(PROMPT))
        guest.run("ping -c 5 -W 3 10.81.0.1", r" [1-5] packets received", timeout=40)
        ok(uri, f"detach-interface hp1 network --mac {mac}")
        both(events, ("hp1", "removed", "net0"))
        wait_for(lambda: tap not in lab.links(), timeout=10)
    finally:
        virsh(uri, "net-destroy hpnet")


def test_user_interface_and_detach_by_alias(uri, guest, events):
    import libvirt

    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("hp1")
        dom.attachDeviceFlags("<interface type='user'><model type='virtio'/></interface>",
                              libvirt.VIR_DOMAIN_AFFECT_LIVE)
        both(events, ("hp1", "added", "net0"))
        assert "<interface type='user'>" in dom.XMLDesc(0)
        dom.detachDeviceAlias("net0", libvirt.VIR_DOMAIN_AFFECT_LIVE)   # returns at once
    finally:
        conn.close()
    both(events, ("hp1", "removed", "net0"))
    wait_for(lambda: "net0" not in ok(uri, "dumpxml hp1"), timeout=10)


# -- restart --------------------------------------------------------------------------

def test_hotplugged_disk_survives_daemon_restart(uri, lab, guest, events):
    img = image(lab, "vde.img")
    before = sys_block(guest)
    ok(uri, f"attach-disk hp1 {img} vde --targetbus virtio")
    wait_new_disk(guest, before)
    guest.close()
    for ev in events:
        ev.close()
    from tests.conftest import stop_daemon

    stop_daemon(lab.daemon)
    uri2 = lab.start_daemon()
    assert uri2 == uri
    assert img in ok(uri, "dumpxml hp1")               # the restarted daemon knows the disk
    con = Console(uri, "hp1")
    try:
        con.send("\n")
        con.wait(re.escape(PROMPT))
        ok(uri, "detach-disk hp1 vde")
        wait_guest(con, lambda: not new_disks(con, before))
        wait_for(lambda: img not in ok(uri, "dumpxml hp1"), timeout=10)
        # the new daemon found the nodes to delete without any record of them
        assert img not in qemu_files(lab, "hp1")
    finally:
        con.close()
