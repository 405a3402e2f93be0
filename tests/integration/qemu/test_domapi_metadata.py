"""Metadata and rename on pyvirtd's QEMU driver, with real QEMU and Debian's virsh 9.0.

`virsh desc`, `virsh metadata` and `virsh domrename` against firmware-only
guests; what virsh prints is compared with what the same commands print
against libvirt's own test driver (test:///default, run inside virsh), so
the formatting of namespaced elements is libvirt 9.0's.  The METADATA_CHANGE
events are received by a python-libvirt client; a rename is checked on disk
and after a daemon restart.
"""

from __future__ import annotations

import pytest

from daemon_helpers import (guest_xml, kill_guests, module_daemon, module_uri, needs_qemu, ok,
                            start_daemon, stop_daemon, virsh, wait_for)
from guest_helpers import EventLog

pytestmark = needs_qemu

daemon = module_daemon("qemu-domapi-meta")
uri = module_uri

NS = "http://example.org/pyvirtd-meta/1"


@pytest.fixture
def guest(uri, tmp_path):
    """A defined, shut off guest 'dmeta' (undefined at the end, whatever its name became)."""
    xml = tmp_path / "dmeta.xml"
    xml.write_text(guest_xml("dmeta"))
    ok(uri, f"define {xml}")
    try:
        yield "dmeta"
    finally:
        virsh(uri, "destroy dmeta; undefine dmeta --snapshots-metadata; "
                   "destroy dmeta2; undefine dmeta2 --snapshots-metadata")


def _reference(commands: str) -> str:
    """What virsh prints for ``commands`` against libvirt 9.0's test driver ('test' guest)."""
    return ok("test:///default", commands)


def test_desc_and_title_as_libvirt_prints_them(uri, guest):
    script = ("desc {d}; echo ---; desc {d} --title; echo ---; "
              "desc {d} --new-desc 'first line\nsecond line'; desc {d}; echo ---; "
              "desc {d} --title --new-desc 'A title'; desc {d} --title; echo ---; "
              "desc {d} --new-desc ''; desc {d}")
    assert ok(uri, script.format(d="dmeta")).replace("dmeta", "X") == \
        _reference(script.format(d="test")).replace("test", "X")
    assert "<title>A title</title>" in ok(uri, "dumpxml dmeta --inactive")
    assert "A title" in ok(uri, "list --all --title")


def test_title_with_newline_is_refused(uri, guest):
    import libvirt

    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("dmeta")
        with pytest.raises(libvirt.libvirtError) as err:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_TITLE, "a\nb", None, None, 0)
        assert err.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
    finally:
        conn.close()


def test_custom_element_as_libvirt_prints_it(uri, guest):
    script = (f"metadata {{d}} {NS} --key app --set '<info><owner id=\"7\">ann</owner></info>'; "
              f"metadata {{d}} {NS}; echo ---; dumpxml {{d}} --xpath //metadata; echo ---; "
              f"metadata {{d}} {NS} --remove; metadata {{d}} {NS}")
    mine = virsh(uri, script.format(d="dmeta"))
    ref = virsh("test:///default", script.format(d="test"))
    assert mine.out == ref.out
    assert mine.err.replace("dmeta", "X") == ref.err.replace("test", "X")
    assert "<app:info xmlns:app" not in ok(uri, "dumpxml dmeta")


def test_live_config_current_and_events(daemon, uri, guest):
    import libvirt

    log = EventLog(uri, {"meta": libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE})
    try:
        ok(uri, "start dmeta")
        # --current on a running guest: the live definition only
        ok(uri, "desc dmeta --new-desc live-only")
        assert ok(uri, "desc dmeta --live").strip() == "live-only"
        assert ok(uri, "desc dmeta --config").strip() == "No description for domain: dmeta"
        # --config: the next boot's, written to disk; the live one unchanged
        ok(uri, "desc dmeta --config --new-desc next-boot")
        assert ok(uri, "desc dmeta --config").strip() == "next-boot"
        assert "next-boot" in (daemon.root / "lib" / "qemu" / "dmeta.xml").read_text()
        assert ok(uri, "desc dmeta").strip() == "live-only"
        # both at once
        ok(uri, f"metadata dmeta {NS} --key k --set '<both/>' --live --config")
        assert ok(uri, f"metadata dmeta {NS} --live").strip() == "<both/>"
        assert ok(uri, f"metadata dmeta {NS} --config").strip() == "<both/>"
        r = virsh(uri, f"metadata dmeta {NS} --live --config")
        assert r.rc != 0 and "mutually exclusive" in r.err

        wait_for(lambda: len(log.of("dmeta", "meta")) >= 3)
        assert log.of("dmeta", "meta") == [
            (libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None),
            (libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, None),
            (libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)]

        ok(uri, "destroy dmeta")
        # what --config set is the definition now; the live-only change is gone
        assert ok(uri, "desc dmeta").strip() == "next-boot"
        conn = libvirt.open(uri)
        try:
            with pytest.raises(libvirt.libvirtError, match="domain is not running"):
                conn.lookupByName("dmeta").metadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION,
                                                    None, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        finally:
            conn.close()
    finally:
        log.close()


def test_transient_guest_has_no_config_metadata(uri, tmp_path):
    xml = tmp_path / "dmeta-t.xml"
    xml.write_text(guest_xml("dmeta-t"))
    ok(uri, f"create {xml}")
    try:
        ok(uri, "desc dmeta-t --title --new-desc 'only live'")
        assert ok(uri, "desc dmeta-t --title").strip() == "only live"
        r = virsh(uri, "desc dmeta-t --config --new-desc x")
        assert r.rc != 0 and "transient domains do not have any persistent config" in r.err
    finally:
        virsh(uri, "destroy dmeta-t")


def test_rename_moves_definition_autostart_and_snapshots(daemon, uri, tmp_path):
    import subprocess

    import libvirt

    config = daemon.root / "lib" / "qemu"
    disk = tmp_path / "dren.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    xml = tmp_path / "dren.xml"
    xml.write_text(guest_xml("dren").replace("<devices>", f"""<devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"""))
    ok(uri, f"define {xml}")
    log = EventLog(uri, {"life": libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE})
    try:
        ok(uri, "autostart dren; desc dren --new-desc kept; snapshot-create-as dren s1")
        assert (config / "snapshot" / "dren" / "s1.xml").is_file()
        uuid = ok(uri, "domuuid dren").strip()
        assert ok(uri, "domrename dren dren2").strip() == "Domain successfully renamed"
        assert ok(uri, "domuuid dren2").strip() == uuid
        assert virsh(uri, "dominfo dren").rc != 0
        assert ok(uri, "desc dren2").strip() == "kept"
        assert (config / "dren2.xml").is_file() and not (config / "dren.xml").exists()
        assert "<name>dren2</name>" in (config / "dren2.xml").read_text()
        link = config / "autostart" / "dren2.xml"
        assert link.is_symlink() and link.resolve() == (config / "dren2.xml").resolve()
        assert not (config / "autostart" / "dren.xml").exists()
        assert (config / "snapshot" / "dren2" / "s1.xml").is_file()
        assert not (config / "snapshot" / "dren").exists()
        assert ok(uri, "snapshot-list dren2 --name").split() == ["s1"]
        wait_for(lambda: ("dren2", "life", 0, 2) in log.events)   # defined/renamed
        assert ("dren", "life", 1, 1) in log.events                # undefined/renamed
        ok(uri, "start dren2; destroy dren2")
    finally:
        log.close()
        virsh(uri, "undefine dren2 --snapshots-metadata; undefine dren --snapshots-metadata")


def test_rename_survives_a_daemon_restart(tmp_path):
    root = tmp_path / "pyvirtd"
    d = start_daemon(root)
    try:
        u = f"qemu+unix:///session?socket={d.sock}"
        xml = tmp_path / "g.xml"
        xml.write_text(guest_xml("dren-a"))
        ok(u, f"define {xml}")
        ok(u, "autostart dren-a; domrename dren-a dren-b")
    finally:
        stop_daemon(d)
    d = start_daemon(root)
    try:
        u = f"qemu+unix:///session?socket={d.sock}"
        out = ok(u, "list --all --name")
        assert "dren-b" in out.split() and "dren-a" not in out.split()
        assert "Autostart:      enable" in ok(u, "dominfo dren-b")
        # the restarted daemon autostarted it under its new name
        wait_for(lambda: "running" in ok(u, "domstate dren-b"), what="dren-b autostarted")
        ok(u, "autostart dren-b --disable; destroy dren-b; undefine dren-b")
    finally:
        stop_daemon(d)
        kill_guests(root)


@pytest.mark.parametrize("new_name, code, message", [
    ("dmeta", "VIR_ERR_OPERATION_INVALID", "Can't rename domain to itself"),
    ("other", "VIR_ERR_OPERATION_INVALID", "domain with name 'other' already exists"),
    ("../../etc/evil", "VIR_ERR_XML_ERROR", "cannot contain '/'"),
    ("a\nb", "VIR_ERR_XML_DETAIL", "invalid char in name"),
])
def test_rename_refused_names(uri, guest, tmp_path, daemon, new_name, code, message):
    import libvirt

    xml = tmp_path / "other.xml"
    xml.write_text(guest_xml("other"))
    ok(uri, f"define {xml}")
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName("dmeta")
        with pytest.raises(libvirt.libvirtError) as err:
            dom.rename(new_name, 0)
        assert err.value.get_error_code() == getattr(libvirt, code)
        assert message in str(err.value)
        assert dom.name() == "dmeta" and conn.lookupByName("dmeta")
        assert not list((daemon.root).rglob("evil*"))
    finally:
        conn.close()
        virsh(uri, "undefine other")


def test_rename_refused_while_running_transient_or_saved(uri, guest, tmp_path):
    ok(uri, "start dmeta")
    r = virsh(uri, "domrename dmeta x1")
    assert r.rc != 0 and "cannot rename active domain" in r.err
    ok(uri, "managedsave dmeta")
    r = virsh(uri, "domrename dmeta x1")
    assert r.rc != 0 and "domain with a managed saved state can't be renamed" in r.err
    ok(uri, "managedsave-remove dmeta")

    xml = tmp_path / "dmeta-tr.xml"
    xml.write_text(guest_xml("dmeta-tr"))
    ok(uri, f"create {xml}")
    try:
        r = virsh(uri, "domrename dmeta-tr x2")
        assert r.rc != 0 and "cannot rename active domain" in r.err
    finally:
        virsh(uri, "destroy dmeta-tr")
