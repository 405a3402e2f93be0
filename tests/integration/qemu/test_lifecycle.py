"""virsh and python-libvirt against pyvirtd's QEMU driver: a guest's whole lifecycle, with real QEMU.

One daemon (``pyvirtd --root``, which serves qemu:///session) for the module;
firmware-only guests (64 MiB, no disk), under KVM when /dev/kvm works.  Every
QEMU is killed at the end, whatever happened.
"""

from __future__ import annotations

import re


from daemon_helpers import (EventCollector, guest_pid, guest_pids, guest_xml, module_daemon,
                            module_uri, needs_qemu, ok, virsh, wait_for)

pytestmark = needs_qemu

# virDomainEventType / details as libvirt numbers them
DEFINED, UNDEFINED, STARTED, SUSPENDED, RESUMED, STOPPED = 0, 1, 2, 3, 4, 5
STOPPED_DESTROYED, STOPPED_FAILED = 1, 5


daemon = module_daemon("qemu-lifecycle")

uri = module_uri


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.xml"
    path.write_text(text)
    return str(path)


def test_define_start_suspend_resume_destroy_undefine(daemon, uri, tmp_path):
    events = EventCollector(uri)
    try:
        xml = write(tmp_path, "life", guest_xml("life"))
        assert "Domain 'life' defined" in ok(uri, f"define {xml}")
        assert re.search(r"-\s+life\s+shut off", ok(uri, "list --all"))
        assert ok(uri, "domstate life --reason").strip() == "shut off (unknown)"

        assert "Domain 'life' started" in ok(uri, "start life")
        out = ok(uri, "list")
        dom_id = int(re.search(r"(\d+)\s+life\s+running", out).group(1))
        info = ok(uri, "dominfo life")
        assert re.search(rf"Id:\s+{dom_id}\n", info)
        assert re.search(r"State:\s+running", info)
        assert re.search(r"Persistent:\s+yes", info)
        assert ok(uri, "domstate life --reason").strip() == "running (booted)"
        assert guest_pid(daemon.root, "life") in guest_pids(daemon.root)

        ok(uri, "suspend life")
        assert ok(uri, "domstate life --reason").strip() == "paused (user)"
        ok(uri, "resume life")
        assert ok(uri, "domstate life --reason").strip() == "running (unpaused)"

        live = ok(uri, "dumpxml life")
        assert f"<domain type='" in live and f" id='{dom_id}'" in live
        pty = re.search(r"<console type='pty' tty='(/dev/pts/\d+)'>", live)
        assert pty and f"<source path='{pty.group(1)}'/>" in live
        assert "id=" not in ok(uri, "dumpxml life --inactive").splitlines()[0]

        pid = guest_pid(daemon.root, "life")
        ok(uri, "destroy life")
        assert ok(uri, "domstate life --reason").strip() == "shut off (destroyed)"
        assert pid not in guest_pids(daemon.root)
        ok(uri, "undefine life")
        r = virsh(uri, "domstate life")
        assert r.rc != 0 and "failed to get domain 'life'" in r.err

        for expected in [("life", DEFINED, 0), ("life", STARTED, 0), ("life", SUSPENDED, 0),
                         ("life", RESUMED, 0), ("life", STOPPED, STOPPED_DESTROYED),
                         ("life", UNDEFINED, 0)]:
            events.wait(expected)
        kinds = [e[1] for e in events.events if e[0] == "life"]
        assert kinds == [DEFINED, STARTED, SUSPENDED, RESUMED, STOPPED, UNDEFINED]
    finally:
        events.close()


def test_ids_increment_and_paused_start(uri, tmp_path):
    xml = write(tmp_path, "ids", guest_xml("ids"))
    ok(uri, f"define {xml}")
    try:
        ok(uri, "start ids")
        first = int(ok(uri, "domid ids"))
        ok(uri, "destroy ids")
        ok(uri, "start ids --paused")
        assert int(ok(uri, "domid ids")) == first + 1
        assert ok(uri, "domstate ids --reason").strip() == "paused (user)"
        ok(uri, "resume ids")
        assert ok(uri, "domstate ids --reason").strip() == "running (unpaused)"
        # ACPI shutdown reaches QEMU; a firmware-only guest has no OS to act on it
        ok(uri, "shutdown ids")
        ok(uri, "reset ids")
        assert ok(uri, "domstate ids").strip() == "running"
    finally:
        virsh(uri, "destroy ids; undefine ids")


def test_transient_guest_goes_away(uri, tmp_path):
    xml = write(tmp_path, "trans", guest_xml("trans"))
    assert "Domain 'trans' created" in ok(uri, f"create {xml}")
    assert re.search(r"Persistent:\s+no", ok(uri, "dominfo trans"))
    ok(uri, "destroy trans")
    assert "trans" not in ok(uri, "list --all")


def test_errors(daemon, uri, tmp_path):
    xml = write(tmp_path, "err", guest_xml("err"))
    ok(uri, f"define {xml}")
    try:
        r = virsh(uri, "destroy err")
        assert r.rc == 1 and "Requested operation is not valid: domain is not running" in r.err
        r = virsh(uri, "suspend err")
        assert "Requested operation is not valid: domain is not running" in r.err
        ok(uri, "start err")
        same = write(tmp_path, "same", ok(uri, "dumpxml err --inactive"))
        r = virsh(uri, f"create {same}")
        assert "Requested operation is not valid: domain 'err' is already active" in r.err
        r = virsh(uri, "start err")
        assert "Domain is already active" in r.err
        other = write(tmp_path, "dup", guest_xml("err"))   # same name, another uuid
        r = virsh(uri, f"define {other}")
        assert re.search(r"operation failed: domain 'err' already exists with uuid", r.err)
        r = virsh(uri, "dominfo nosuch")
        assert "failed to get domain 'nosuch'" in r.err
        bad = write(tmp_path, "bad", guest_xml("bad").replace(
            "<devices>", "<devices><disk type='file' device='disk'>"
            "<source file='/nonexistent/disk.img'/><target dev='vda' bus='virtio'/></disk>"))
        ok(uri, f"define {bad}")
        r = virsh(uri, "start bad")
        # QEMU's own words reach the client
        assert "/nonexistent/disk.img" in r.err and "No such file or directory" in r.err
        assert ok(uri, "domstate bad").strip() == "shut off"
        assert ok(uri, "domstate err").strip() == "running"   # nothing else disturbed
    finally:
        virsh(uri, "destroy err; undefine err; undefine bad")


def test_guest_dying_is_reported_crashed(daemon, uri, tmp_path):
    import os
    import signal

    events = EventCollector(uri)
    xml = write(tmp_path, "dies", guest_xml("dies"))
    ok(uri, f"define {xml}")
    try:
        ok(uri, "start dies")
        os.kill(guest_pid(daemon.root, "dies"), signal.SIGKILL)
        wait_for(lambda: virsh(uri, "domstate dies --reason").out.strip() == "shut off (crashed)")
        events.wait(("dies", STOPPED, STOPPED_FAILED))
    finally:
        events.close()
        virsh(uri, "destroy dies; undefine dies")


def test_virsh_views(uri, tmp_path):
    xml = write(tmp_path, "views", guest_xml("views").replace(
        "<devices>", "<devices><graphics type='vnc' port='-1'/>"))
    ok(uri, f"define {xml}")
    try:
        ok(uri, "start views")
        assert re.match(r"127\.0\.0\.1:\d+", ok(uri, "vncdisplay views").strip())
        assert "Target" in ok(uri, "domblklist views")
        assert "Interface" in ok(uri, "domiflist views")
        out = ok(uri, "list --all --autostart")
        assert "views" not in out
        ok(uri, "autostart views")
        assert "views" in ok(uri, "list --all --autostart")
    finally:
        virsh(uri, "destroy views; undefine views")
