"""Internal snapshots of QEMU guests on qcow2 disks, with virsh and python-libvirt.

The proof that a snapshot holds the guest: the tiny TCG guest writes a marker
to its qcow2 disk and into a shell variable, a snapshot is taken, both are
changed, and after snapshot-revert the console reads the original ones back
(the disk read after dropping the guest's page cache).  Reverting the
shut-off guest to that snapshot starts QEMU inside it.  Shut-off guests are
snapshotted with qemu-img, checked with qemu-io; snapshot metadata survives a
daemon restart.  States, events and errors follow libvirt 9.0's QEMU driver.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from daemon_helpers import guest_xml, kill_guests, needs_qemu, ok, qemu_uri, virsh, wait_for
from guest_helpers import PROMPT, Console, Events, tiny_guest, tiny_xml
from tests.conftest import start_daemon, stop_daemon

pytestmark = needs_qemu

# virDomainEventType and details, as libvirt numbers them
STARTED, SUSPENDED, RESUMED, STOPPED = 2, 3, 4, 5
SUSPENDED_PAUSED, SUSPENDED_FROM_SNAPSHOT = 0, 5
RESUMED_UNPAUSED, RESUMED_FROM_SNAPSHOT = 0, 2
STARTED_FROM_SNAPSHOT, STOPPED_FROM_SNAPSHOT = 3, 6
BOOT_TIMEOUT = 90
# a guest with memory state reverted while it runs: QEMU restarted inside the snapshot
FROM_SNAPSHOT_RESTART = [(STOPPED, STOPPED_FROM_SNAPSHOT), (STARTED, STARTED_FROM_SNAPSHOT),
                         (RESUMED, RESUMED_FROM_SNAPSHOT)]

QCOW2_DISK = """<disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("qemu-snapshots") / "pyvirtd"


@pytest.fixture(scope="module")
def daemon(root):
    holder = {"d": start_daemon(root)}
    try:
        yield holder
    finally:
        stop_daemon(holder["d"])
        kill_guests(root)


@pytest.fixture
def uri(daemon):
    return qemu_uri(daemon["d"])


def image(path, fmt: str = "qcow2", size: str = "16M"):
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def qemu_io(path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)],
                          capture_output=True, text=True)


def image_snapshots(path) -> list[str]:
    """The internal snapshots in the image (-U: QEMU may hold it open)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return [s["name"] for s in json.loads(out).get("snapshots", [])]


def lifecycle(events: Events, n: int, name: str, count: int) -> list[tuple[int, int]]:
    """``name``'s lifecycle events after the first ``n``, once ``count`` arrived."""
    def mine() -> list[tuple[int, int]]:
        return [e[1:] for e in events.since(n) if e[0] == name and e[1] != "reboot"]
    wait_for(lambda: len(mine()) >= count)
    return mine()


def err(uri: str, commands: str) -> str:
    r = virsh(uri, commands)
    assert r.rc != 0, f"virsh {commands!r} succeeded"
    return r.err


def firmware_guest(name: str, disk) -> str:
    """A never-booted guest with one disk: only its files matter."""
    fmt = "qcow2" if str(disk).endswith(".qcow2") else "raw"
    xml = guest_xml(name)
    return xml.replace("<devices>", "<devices>\n    " + QCOW2_DISK.format(fmt=fmt, path=disk), 1)


def define(uri: str, tmp_path, name: str, xml: str) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    ok(uri, f"define {path}")


# -- errors -------------------------------------------------------------------------------

def test_raw_disk_is_refused(uri, tmp_path):
    define(uri, tmp_path, "snraw", firmware_guest("snraw", image(tmp_path / "d.raw", "raw")))
    try:
        e = err(uri, "snapshot-create-as snraw s1")
        assert "unsupported configuration: internal snapshot for disk vda unsupported " \
               "for storage type raw" in e
        assert ok(uri, "snapshot-list snraw --name").strip() == ""
        e = err(uri, "snapshot-info snraw nosuch")
        assert "no domain snapshot with matching name 'nosuch'" in e
        e = err(uri, "snapshot-current snraw")
        assert "domain 'snraw' has no current snapshot" in e
    finally:
        virsh(uri, "undefine snraw")


# -- shut-off guests: qemu-img -----------------------------------------------------------

def test_shut_off_snapshots_revert_and_delete(uri, tmp_path):
    disk = image(tmp_path / "off.qcow2")
    define(uri, tmp_path, "snoff", firmware_guest("snoff", disk))
    assert qemu_io(disk, "write -P 0x41 0 4k").returncode == 0
    # bad names and bad XML: libvirt's errors, nothing written to the disk
    assert "name a/b cannot contain '/'" in err(uri, "snapshot-create-as snoff a/b")
    bad = tmp_path / "bad.xml"
    bad.write_text("<domainsnapshot><name>x</name>")
    assert "(domain_snapshot)" in err(uri, f"snapshot-create snoff {bad}")
    bad.write_text("<snapshot><name>x</name></snapshot>")
    assert "expecting root element of 'domainsnapshot'" in err(uri, f"snapshot-create snoff {bad}")
    assert image_snapshots(disk) == []
    ok(uri, 'snapshot-create-as snoff s1 "first one"')
    assert image_snapshots(disk) == ["s1"]
    assert qemu_io(disk, "write -P 0x42 0 4k").returncode == 0
    ok(uri, "snapshot-create-as snoff s2")
    assert image_snapshots(disk) == ["s1", "s2"]

    assert ok(uri, "snapshot-current snoff --name").strip() == "s2"
    assert ok(uri, "snapshot-parent snoff s2").strip() == "s1"
    info = ok(uri, "snapshot-info snoff s1")
    assert re.search(r"State:\s+shutoff", info)
    assert re.search(r"Current:\s+no", info)
    assert re.search(r"Children:\s+1", info)
    dump = ok(uri, "snapshot-dumpxml snoff s1")
    assert "<description>first one</description>" in dump
    assert "<memory snapshot='no'/>" in dump
    assert "<disk name='vda' snapshot='internal'/>" in dump
    assert "<name>snoff</name>" in dump

    ok(uri, "snapshot-revert snoff s1")
    assert qemu_io(disk, "read -P 0x41 0 4k").returncode == 0
    assert "Pattern verification failed" not in qemu_io(disk, "read -P 0x41 0 4k").stdout
    assert ok(uri, "snapshot-current snoff --name").strip() == "s1"
    assert ok(uri, "domstate snoff").strip() == "shut off"

    # python-libvirt: the same tree
    import libvirt
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("snoff")
        assert sorted(s.getName() for s in dom.listAllSnapshots()) == ["s1", "s2"]
        assert dom.snapshotCurrent().getName() == "s1"
        s2 = dom.snapshotLookupByName("s2")
        assert s2.getParent().getName() == "s1"
        assert [s.getName() for s in dom.listAllSnapshots(
            libvirt.VIR_DOMAIN_SNAPSHOT_LIST_LEAVES)] == ["s2"]
        assert [s.getName() for s in dom.listAllSnapshots(
            libvirt.VIR_DOMAIN_SNAPSHOT_LIST_ACTIVE)] == []
        s2.delete()
    finally:
        conn.close()
    assert image_snapshots(disk) == ["s1"]
    assert ok(uri, "snapshot-list snoff --name").split() == ["s1"]

    e = err(uri, "undefine snoff")
    assert "cannot delete inactive domain with 1 snapshots" in e
    ok(uri, "undefine snoff --snapshots-metadata")
    assert image_snapshots(disk) == ["s1"]     # the disk keeps its own


# -- a running guest: QMP snapshot-save / snapshot-load ------------------------------------

@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


def drop_caches_and_read(con: Console) -> str:
    m = con.run("echo 3 > /proc/sys/vm/drop_caches; echo \"disk=$(head -c 10 /dev/vda)\"",
                r"disk=(marker-\w+)")
    return m.group(1)


def test_running_guest_snapshot_and_revert(uri, daemon, guest_files, tmp_path):
    disk = image(tmp_path / "live.qcow2")
    define(uri, tmp_path, "snlive", tiny_xml("snlive", guest_files,
                                             disks=QCOW2_DISK.format(fmt="qcow2", path=disk)))
    events = Events(uri)
    con = None
    try:
        ok(uri, "start snlive --paused")
        con = Console(uri, "snlive")
        ok(uri, "resume snlive")
        con.wait("GUEST READY", timeout=BOOT_TIMEOUT)
        con.wait(re.escape(PROMPT))
        con.run("MARK=one; printf marker-one > /dev/vda; sync; echo set-$MARK", r"set-one")
        assert drop_caches_and_read(con) == "marker-one"

        n = len(events.events)
        ok(uri, "snapshot-create-as snlive live1 'with memory'")
        assert ok(uri, "domstate snlive --reason").strip() == "running (unpaused)"
        assert lifecycle(events, n, "snlive", 2) == [(SUSPENDED, SUSPENDED_PAUSED),
                                                     (RESUMED, RESUMED_UNPAUSED)]
        assert image_snapshots(disk) == ["live1"]
        info = ok(uri, "snapshot-info snlive live1")
        assert re.search(r"State:\s+running", info)
        assert "<memory snapshot='internal'/>" in ok(uri, "snapshot-dumpxml snlive live1")

        con.run("MARK=two; printf marker-two > /dev/vda; sync; echo set-$MARK", r"set-two")
        assert drop_caches_and_read(con) == "marker-two"

        # as libvirt 9.0: QEMU is restarted inside the snapshot (-loadvm), a new id
        n = len(events.events)
        old_id = ok(uri, "domid snlive").strip()
        ok(uri, "snapshot-revert snlive live1")
        assert ok(uri, "domstate snlive --reason").strip() == "running (from snapshot)"
        assert ok(uri, "domid snlive").strip() != old_id
        assert lifecycle(events, n, "snlive", 3) == FROM_SNAPSHOT_RESTART
        con.close()
        con = Console(uri, "snlive")
        con.send("\n")
        con.run('echo "var=$MARK"', r"var=one")
        assert drop_caches_and_read(con) == "marker-one"

        # shut off, then revert: QEMU starts inside the snapshot
        con.close()
        con = None
        ok(uri, "destroy snlive")
        n = len(events.events)
        ok(uri, "snapshot-revert snlive live1")
        assert ok(uri, "domstate snlive --reason").strip() == "running (from snapshot)"
        assert lifecycle(events, n, "snlive", 2) == [(STARTED, STARTED_FROM_SNAPSHOT),
                                                     (RESUMED, RESUMED_FROM_SNAPSHOT)]
        con = Console(uri, "snlive")
        con.send("\n")
        con.run('echo "var=$MARK"', r"var=one")
        assert drop_caches_and_read(con) == "marker-one"

        # delete while running: QEMU's snapshot-delete job
        ok(uri, "snapshot-delete snlive live1")
        assert image_snapshots(disk) == []
        assert ok(uri, "snapshot-list snlive --name").strip() == ""
    finally:
        if con is not None:
            con.close()
        events.close()
        virsh(uri, "destroy snlive; undefine snlive --snapshots-metadata")


def test_halt_and_revert_to_shut_off_snapshot_of_a_running_guest(uri, tmp_path):
    """--halt stops the guest after the snapshot; reverting a running guest to a
    shut-off snapshot stops it (shut off (from snapshot)) and reverts its disk."""
    disk = image(tmp_path / "halt.qcow2")
    define(uri, tmp_path, "snhalt", firmware_guest("snhalt", disk))
    events = Events(uri)
    try:
        assert qemu_io(disk, "write -P 0x41 0 4k").returncode == 0
        ok(uri, "snapshot-create-as snhalt off1")
        assert qemu_io(disk, "write -P 0x42 0 4k").returncode == 0
        ok(uri, "start snhalt")
        n = len(events.events)
        ok(uri, "snapshot-revert snhalt off1")
        assert ok(uri, "domstate snhalt --reason").strip() == "shut off (from snapshot)"
        assert lifecycle(events, n, "snhalt", 1) == [(STOPPED, STOPPED_FROM_SNAPSHOT)]
        assert "Pattern verification failed" not in qemu_io(disk, "read -P 0x41 0 4k").stdout
        # --paused: the reverted guest boots, paused
        n = len(events.events)
        ok(uri, "snapshot-revert snhalt off1 --paused")
        assert ok(uri, "domstate snhalt").strip() == "paused"
        assert lifecycle(events, n, "snhalt", 2) == [(STARTED, STARTED_FROM_SNAPSHOT),
                                                     (SUSPENDED, SUSPENDED_FROM_SNAPSHOT)]
        ok(uri, "resume snhalt")

        n = len(events.events)
        ok(uri, "snapshot-create-as snhalt run1 --halt")
        assert ok(uri, "domstate snhalt --reason").strip() == "shut off (from snapshot)"
        # paused (save) while QEMU writes, then stopped instead of resumed
        assert lifecycle(events, n, "snhalt", 2) == [(SUSPENDED, SUSPENDED_PAUSED),
                                                     (STOPPED, STOPPED_FROM_SNAPSHOT)]
        assert re.search(r"State:\s+running", ok(uri, "snapshot-info snhalt run1"))
        assert ok(uri, "snapshot-parent snhalt run1").strip() == "off1"
        assert ok(uri, "snapshot-list snhalt --inactive --name").split() == ["off1"]
        assert ok(uri, "snapshot-list snhalt --active --name").split() == ["run1"]
        assert image_snapshots(disk) == ["off1", "run1"]

        # a shut-off guest reverted --paused starts inside the snapshot, paused;
        # a paused guest reverted to a running snapshot is restarted inside it
        n = len(events.events)
        ok(uri, "snapshot-revert snhalt run1 --paused")
        assert ok(uri, "domstate snhalt --reason").strip() == "paused (from snapshot)"
        assert lifecycle(events, n, "snhalt", 2) == [(STARTED, STARTED_FROM_SNAPSHOT),
                                                     (SUSPENDED, SUSPENDED_FROM_SNAPSHOT)]
        n = len(events.events)
        ok(uri, "snapshot-revert snhalt run1")
        assert ok(uri, "domstate snhalt --reason").strip() == "running (from snapshot)"
        assert lifecycle(events, n, "snhalt", 3) == FROM_SNAPSHOT_RESTART
        ok(uri, "destroy snhalt")
        # delete the root with its children: both go from the disk (qemu-img, shut off)
        ok(uri, "snapshot-delete snhalt off1 --children")
        assert image_snapshots(disk) == []
    finally:
        events.close()
        virsh(uri, "destroy snhalt; undefine snhalt --snapshots-metadata")


def test_transient_guest_takes_its_metadata_along(uri, root, tmp_path):
    disk = image(tmp_path / "trans.qcow2")
    path = tmp_path / "sntrans.xml"
    path.write_text(firmware_guest("sntrans", disk))
    ok(uri, f"create {path}")
    try:
        ok(uri, "snapshot-create-as sntrans t1")
        assert [p.name for p in root.rglob("sntrans/t1.xml")] == ["t1.xml"]
        ok(uri, "destroy sntrans")
        wait_for(lambda: not list(root.rglob("snapshot/sntrans")))
        assert image_snapshots(disk) == ["t1"]     # the disk keeps its own
    finally:
        virsh(uri, "destroy sntrans")


# -- metadata survives a restart -------------------------------------------------------------

def test_metadata_survives_daemon_restart(uri, daemon, root, tmp_path):
    disk = image(tmp_path / "keep.qcow2")
    define(uri, tmp_path, "snkeep", firmware_guest("snkeep", disk))
    try:
        ok(uri, "snapshot-create-as snkeep k1 'kept'; snapshot-create-as snkeep k2")
        ok(uri, "snapshot-revert snkeep k1")
        stop_daemon(daemon["d"])
        daemon["d"] = start_daemon(root)
        uri = qemu_uri(daemon["d"])
        assert ok(uri, "snapshot-list snkeep --name").split() == ["k1", "k2"]
        assert ok(uri, "snapshot-current snkeep --name").strip() == "k1"
        assert ok(uri, "snapshot-parent snkeep k2").strip() == "k1"
        assert "<description>kept</description>" in ok(uri, "snapshot-dumpxml snkeep k1")
        ok(uri, "snapshot-delete snkeep k1")
        assert ok(uri, "snapshot-list snkeep --name --roots").split() == ["k2"]
        assert image_snapshots(disk) == ["k2"]
    finally:
        virsh(qemu_uri(daemon["d"]), "undefine snkeep --snapshots-metadata")
