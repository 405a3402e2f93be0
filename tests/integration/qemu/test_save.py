"""Save and restore, managed save, on the tiny guest that really boots (TCG).

The proof that the guest's memory went to the file and came back: a shell
variable and a file in the guest's tmpfs survive `virsh save` + `virsh
restore` (and managedsave + start), and /proc/uptime carries on from where it
was instead of starting again.  States, reasons, events and errors are
libvirt 9.0's as its own QEMU driver reports them (measured with `virsh
event --all` against libvirtd on this host): save emits suspended/paused then
stopped/saved; restore started/restored then resumed/from-snapshot (running)
or suspended/restored (paused, reason "migrating").
"""

from __future__ import annotations

import re

import pytest

from daemon_helpers import guest_pids, module_daemon, module_uri, needs_qemu, ok, virsh, wait_for
from guest_helpers import PROMPT, Console, Events, tiny_guest, tiny_xml

pytestmark = needs_qemu

# virDomainEventType and details, as libvirt numbers them
DEFINED, STARTED, SUSPENDED, RESUMED, STOPPED = 0, 2, 3, 4, 5
STARTED_RESTORED = 2
SUSPENDED_PAUSED, SUSPENDED_RESTORED = 0, 4
RESUMED_FROM_SNAPSHOT = 2
STOPPED_SAVED = 4
BOOT_TIMEOUT = 60

daemon = module_daemon("qemu-save")
uri = module_uri


@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


@pytest.fixture(scope="module")
def events(uri):
    ev = Events(uri)
    try:
        yield ev
    finally:
        ev.close()


class Guest:
    def __init__(self, uri: str, name: str) -> None:
        self.uri, self.name = uri, name
        self.console: Console | None = None

    def attach(self) -> Console:
        if self.console is not None:
            self.console.close()
        self.console = Console(self.uri, self.name)
        return self.console

    def uptime(self) -> float:
        m = self.console.run("cat /proc/uptime", r"\n(\d+\.\d+) \d+\.\d+")
        return float(m.group(1))


@pytest.fixture(scope="module")
def guest(uri, guest_files, tmp_path_factory):
    path = tmp_path_factory.mktemp("save") / "sv1.xml"
    path.write_text(tiny_xml("sv1", guest_files))
    ok(uri, f"define {path}")
    ok(uri, "start sv1 --paused")
    g = Guest(uri, "sv1")
    con = g.attach()
    ok(uri, "resume sv1")
    con.wait("GUEST READY", timeout=BOOT_TIMEOUT)
    con.wait(re.escape(PROMPT))
    try:
        yield g
    finally:
        if g.console is not None:
            g.console.close()
        virsh(uri, "destroy sv1; managedsave-remove sv1; undefine sv1 --managed-save")


def reason(uri: str, name: str) -> str:
    return ok(uri, f"domstate {name} --reason").strip()


def err(uri: str, commands: str) -> str:
    r = virsh(uri, commands)
    assert r.rc != 0, f"virsh {commands!r} succeeded"
    return r.err


def lifecycle(events, n: int, name: str) -> list[tuple[int, int]]:
    return [e[1:] for e in events.since(n) if e[0] == name and e[1] != "reboot"]


def check_session(g: Guest, marker: str, before: float) -> None:
    """The shell that set MARK and wrote /tmp/marker is the one answering, and the
    guest's clock went on from ``before`` (a fresh boot would be back near 0)."""
    con = g.attach()
    con.send("\n")
    con.wait(re.escape(PROMPT))
    con.run('echo "var=$MARK"; cat /tmp/marker', rf"var={marker}\r?\n{marker}-file")
    assert g.uptime() >= before


# -- errors before anything ran -------------------------------------------------------

def test_save_of_shut_off_guest_is_refused(uri, guest_files, tmp_path):
    path = tmp_path / "off.xml"
    path.write_text(tiny_xml("svoff", guest_files))
    ok(uri, f"define {path}")
    try:
        e = err(uri, f"save svoff {tmp_path}/off.img")
        assert "Requested operation is not valid: domain is not running" in e
        e = err(uri, "managedsave svoff")
        assert "Requested operation is not valid: domain is not running" in e
        assert not (tmp_path / "off.img").exists()
    finally:
        virsh(uri, "undefine svoff")


def test_restore_of_files_that_are_no_image(uri, tmp_path):
    short = tmp_path / "short"
    short.write_text("hello\n")
    e = err(uri, f"restore {short}")
    assert "operation failed: failed to read qemu header" in e
    other = tmp_path / "other"
    other.write_bytes(b"QFI\xfb" + bytes(4096))
    assert "operation failed: image magic is incorrect" in err(uri, f"restore {other}")
    assert "operation failed: image magic is incorrect" in err(uri, f"save-image-dumpxml {other}")
    e = err(uri, f"restore {tmp_path}/missing")
    assert f"Failed to open file '{tmp_path}/missing': No such file or directory" in e


# -- save and restore -----------------------------------------------------------------

def test_save_and_restore_keep_the_session(guest, events, tmp_path, daemon):
    uri, con = guest.uri, guest.console
    con.run("MARK=m1-$((40+2)); echo m1-42-file > /tmp/marker; echo set-$MARK", r"set-m1-42")
    before = guest.uptime()
    image = tmp_path / "sv1.img"
    n = len(events.events)
    assert "Domain 'sv1' saved to" in ok(uri, f"save sv1 {image}")
    assert reason(uri, "sv1") == "shut off (saved)"
    wait_for(lambda: (STOPPED, STOPPED_SAVED) in lifecycle(events, n, "sv1"))
    assert lifecycle(events, n, "sv1") == [(SUSPENDED, SUSPENDED_PAUSED), (STOPPED, STOPPED_SAVED)]
    assert guest_pids(daemon.root) == []
    assert image.read_bytes()[:16] == b"pyvirtd-qemusave"

    xml = ok(uri, f"save-image-dumpxml {image}")
    assert "<name>sv1</name>" in xml and "<kernel>" in xml

    n = len(events.events)
    assert "Domain restored from" in ok(uri, f"restore {image}")
    assert reason(uri, "sv1") == "running (restored)"
    wait_for(lambda: len(lifecycle(events, n, "sv1")) >= 2)
    assert lifecycle(events, n, "sv1") == [(STARTED, STARTED_RESTORED),
                                           (RESUMED, RESUMED_FROM_SNAPSHOT)]
    check_session(guest, "m1-42", before)
    assert "domain 'sv1' is already active" in err(uri, f"restore {image}")


def test_save_paused_restores_paused(guest, events, tmp_path):
    uri = guest.uri
    image = tmp_path / "p.img"
    ok(uri, f"save sv1 {image} --paused")
    n = len(events.events)
    ok(uri, f"restore {image}")
    assert reason(uri, "sv1") == "paused (migrating)"
    wait_for(lambda: len(lifecycle(events, n, "sv1")) >= 2)
    assert lifecycle(events, n, "sv1") == [(STARTED, STARTED_RESTORED),
                                           (SUSPENDED, SUSPENDED_RESTORED)]
    ok(uri, "resume sv1")
    assert reason(uri, "sv1") == "running (unpaused)"
    # --running overrides what the image says
    ok(uri, f"save sv1 {image} --paused --bypass-cache")
    ok(uri, f"restore {image} --running --bypass-cache")
    assert reason(uri, "sv1") == "running (restored)"


def test_save_image_define(guest, tmp_path):
    uri = guest.uri
    image = tmp_path / "d.img"
    ok(uri, f"save sv1 {image}")
    xml = ok(uri, f"save-image-dumpxml {image}")
    edited = tmp_path / "edited.xml"
    edited.write_text(xml.replace("</devices>", "</devices>\n  <description>edited</description>"))
    assert "State file" in ok(uri, f"save-image-define {image} {edited} --paused")
    assert "<description>edited</description>" in ok(uri, f"save-image-dumpxml {image}")
    other = tmp_path / "other.xml"
    other.write_text(re.sub(r"<uuid>[^<]*</uuid>",
                            "<uuid>00000000-1111-2222-3333-444444444444</uuid>", xml))
    e = err(uri, f"save-image-define {image} {other}")
    assert ("unsupported configuration: Target domain uuid 00000000-1111-2222-3333-444444444444"
            " does not match source") in e
    ok(uri, f"restore {image}")     # --paused was recorded by save-image-define
    assert reason(uri, "sv1") == "paused (migrating)"
    assert "<description>edited</description>" in ok(uri, "dumpxml sv1")
    ok(uri, "resume sv1")


# -- managed save ---------------------------------------------------------------------

def test_managed_save_and_start(guest, events, daemon):
    uri, con = guest.uri, guest.attach()
    con.send("\n")
    con.wait(re.escape(PROMPT))
    con.run("MARK=m2-$((6*7)); echo m2-42-file > /tmp/marker; echo set-$MARK", r"set-m2-42")
    before = guest.uptime()
    n = len(events.events)
    assert "Domain 'sv1' state saved by libvirt" in ok(uri, "managedsave sv1")
    assert reason(uri, "sv1") == "shut off (saved)"
    assert re.search(r"-\s+sv1\s+saved", ok(uri, "list --all --managed-save"))
    assert "sv1" in ok(uri, "list --all --name --with-managed-save")
    assert "sv1" not in ok(uri, "list --all --name --without-managed-save")
    assert "<name>sv1</name>" in ok(uri, "managedsave-dumpxml sv1")
    images = list(daemon.root.rglob("qemu/save/sv1.save"))
    assert len(images) == 1
    e = err(uri, "undefine sv1")
    assert "Refusing to undefine while domain managed save image exists" in e

    wait_for(lambda: (STOPPED, STOPPED_SAVED) in lifecycle(events, n, "sv1"))
    n = len(events.events)
    ok(uri, "start sv1")
    assert reason(uri, "sv1") == "running (restored)"
    wait_for(lambda: len(lifecycle(events, n, "sv1")) >= 2)
    assert lifecycle(events, n, "sv1") == [(STARTED, STARTED_RESTORED),
                                           (RESUMED, RESUMED_FROM_SNAPSHOT)]
    check_session(guest, "m2-42", before)
    # the image is gone once the guest resumed from it
    assert "sv1" in ok(uri, "list --all --name --without-managed-save")
    assert "does not have managed save image" in err(uri, "managedsave-dumpxml sv1")
    for img in images:
        assert not img.exists()


def test_managed_save_define_and_remove(guest, tmp_path):
    uri = guest.uri
    ok(uri, "managedsave sv1")
    xml = ok(uri, "managedsave-dumpxml sv1")
    edited = tmp_path / "m.xml"
    edited.write_text(xml.replace("<name>sv1</name>", "<name>sv1</name><title>managed</title>"))
    ok(uri, f"managedsave-define sv1 {edited} --paused")
    assert "<title>managed</title>" in ok(uri, "managedsave-dumpxml sv1")
    ok(uri, "start sv1")
    assert reason(uri, "sv1") == "paused (migrating)"     # the image now says paused
    ok(uri, "resume sv1")
    ok(uri, "managedsave sv1")
    assert "Removed managedsave image" in ok(uri, "managedsave-remove sv1")
    ok(uri, "start sv1")
    assert reason(uri, "sv1") == "running (booted)"       # no image left: a fresh boot


def test_managed_save_of_transient_guest_is_refused(uri, guest_files, tmp_path):
    path = tmp_path / "tr.xml"
    path.write_text(tiny_xml("svtr", guest_files))
    ok(uri, f"create {path}")
    try:
        e = err(uri, "managedsave svtr")
        assert "Requested operation is not valid: cannot do managed save for transient domain" in e
        # a plain save of a transient guest is fine, and restore brings it back transient
        ok(uri, f"save svtr {tmp_path}/tr.img")
        assert "svtr" not in ok(uri, "list --all --name")
        ok(uri, f"restore {tmp_path}/tr.img")
        assert "svtr" in ok(uri, "list --transient --name")
    finally:
        virsh(uri, "destroy svtr")


def test_undefine_managed_save_removes_the_image(uri, guest_files, tmp_path):
    path = tmp_path / "u.xml"
    path.write_text(tiny_xml("svu", guest_files))
    ok(uri, f"define {path}")
    ok(uri, "start svu")
    ok(uri, "managedsave svu")
    assert "svu" in ok(uri, "list --all --name --with-managed-save")
    ok(uri, "undefine svu --managed-save")
    assert "svu" not in ok(uri, "list --all --name")


# -- python-libvirt ------------------------------------------------------------------

def test_python_libvirt_apis(guest, tmp_path):
    import libvirt

    conn = libvirt.open(guest.uri)
    try:
        dom = conn.lookupByName("sv1")
        if not dom.isActive():
            dom.create()
        image = str(tmp_path / "py.img")
        dom.saveFlags(image, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SAVED]
        xml = conn.saveImageGetXMLDesc(image, 0)
        assert "<name>sv1</name>" in xml
        conn.saveImageDefineXML(image, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        conn.restoreFlags(image, None, 0)
        assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]

        dom.saveParams({libvirt.VIR_DOMAIN_SAVE_PARAM_FILE: image}, 0)
        conn.restoreParams({libvirt.VIR_DOMAIN_SAVE_PARAM_FILE: image},
                           libvirt.VIR_DOMAIN_SAVE_PAUSED)
        assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION]
        dom.resume()

        dom.managedSave(0)
        assert dom.hasManagedSaveImage(0) == 1
        assert "<name>sv1</name>" in dom.managedSaveGetXMLDesc(0)
        dom.managedSaveDefineXML(None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        dom.createWithFlags(0)
        assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION]
        assert dom.hasManagedSaveImage(0) == 0
        dom.resume()
        dom.managedSave(0)
        dom.managedSaveRemove(0)
        assert dom.hasManagedSaveImage(0) == 0
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.managedSaveGetXMLDesc(0)
        assert exc.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    finally:
        conn.close()


# -- across daemons ------------------------------------------------------------------

def test_images_outlive_the_daemon(tmp_path):
    from daemon_helpers import guest_xml, kill_guests, qemu_uri, start_daemon, stop_daemon

    root, fresh = tmp_path / "a" / "pyvirtd", tmp_path / "b" / "pyvirtd"
    xml = tmp_path / "fw1.xml"
    xml.write_text(guest_xml("fw1"))
    d = start_daemon(root)
    try:
        u = qemu_uri(d)
        ok(u, f"define {xml}")
        ok(u, "start fw1")
        ok(u, "managedsave fw1")
        stop_daemon(d)
        d = start_daemon(root)          # the managed image is found again at start
        u = qemu_uri(d)
        assert re.search(r"-\s+fw1\s+saved", ok(u, "list --all --managed-save"))
        ok(u, "start fw1")
        assert reason(u, "fw1") == "running (restored)"
        ok(u, f"save fw1 {tmp_path}/fw1.img")
        ok(u, "undefine fw1")
    finally:
        stop_daemon(d)
        kill_guests(root)
    d = start_daemon(fresh)             # a daemon that never knew fw1 restores it, transient
    try:
        u = qemu_uri(d)
        ok(u, f"restore {tmp_path}/fw1.img")
        assert reason(u, "fw1") == "running (restored)"
        assert "fw1" in ok(u, "list --transient --name")
        ok(u, "destroy fw1")
        assert "fw1" not in ok(u, "list --all --name")
    finally:
        stop_daemon(d)
        kill_guests(fresh)


def test_incomplete_image_is_refused_and_a_managed_one_ignored(uri, tmp_path, daemon):
    from daemon_helpers import guest_xml

    xml = tmp_path / "fw2.xml"
    xml.write_text(guest_xml("fw2"))
    ok(uri, f"define {xml}")
    try:
        ok(uri, "start fw2")
        ok(uri, f"save fw2 {tmp_path}/fw2.img")
        # what a save killed halfway leaves: the header still says "being written"
        with open(tmp_path / "fw2.img", "r+b") as f:
            f.write(b"pyvirtd-qemupart")
        assert "operation failed: save image is incomplete" in err(uri, f"restore {tmp_path}/fw2.img")
        ok(uri, "start fw2")
        ok(uri, "managedsave fw2")
        image = next(daemon.root.rglob("qemu/save/fw2.save"))
        with open(image, "r+b") as f:
            f.write(b"pyvirtd-qemupart")
        ok(uri, "start fw2")            # libvirt: an incomplete managed image is dropped, the guest boots
        assert reason(uri, "fw2") == "running (booted)"
        assert not image.exists()
    finally:
        virsh(uri, "destroy fw2; undefine fw2 --managed-save")
