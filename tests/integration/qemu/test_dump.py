"""`virsh dump` of QEMU guests: memory-only dumps in QEMU's formats, the raw migration
stream, --crash, --live, --reset, and libvirt's refusals, on firmware-only guests."""

from __future__ import annotations

import libvirt
import pytest

from daemon_helpers import (EventCollector, guest_xml, module_daemon, module_uri, needs_qemu, ok,
                            virsh)

pytestmark = needs_qemu

daemon = module_daemon("qemu-dump")
uri = module_uri

SUSPENDED, RESUMED, STOPPED = 3, 4, 5
SUSPENDED_PAUSED, RESUMED_UNPAUSED, STOPPED_CRASHED = 0, 0, 2


@pytest.fixture
def guest(uri, tmp_path):
    """A running persistent firmware-only guest named after the test, gone afterwards."""
    name = "dump" + str(abs(hash(tmp_path.name)) % 10000)
    xml = tmp_path / "g.xml"
    xml.write_text(guest_xml(name))
    ok(uri, f"define {xml}")
    ok(uri, f"start {name}")
    yield name
    virsh(uri, f"destroy {name}")
    virsh(uri, f"undefine {name}")


def test_memory_only_elf_pauses_and_resumes(uri, guest, tmp_path):
    events = EventCollector(uri)
    try:
        out = tmp_path / "core.elf"
        ok(uri, f"dump {guest} {out} --memory-only --format elf")
        assert out.read_bytes()[:4] == b"\x7fELF"
        assert out.stat().st_mode & 0o077 == 0
        assert ok(uri, f"domstate {guest}").strip() == "running"
        events.wait((guest, SUSPENDED, SUSPENDED_PAUSED))
        events.wait((guest, RESUMED, RESUMED_UNPAUSED))
    finally:
        events.close()


def test_memory_only_kdump_zlib(uri, guest, tmp_path):
    out = tmp_path / "core.kdump"
    ok(uri, f"dump {guest} {out} --memory-only --format kdump-zlib")
    # to a descriptor QEMU writes makedumpfile's flattened form of the kdump format
    assert out.read_bytes()[:12] == b"makedumpfile"


def test_raw_dump_is_the_migration_stream(uri, guest, tmp_path):
    out = tmp_path / "core.raw"
    ok(uri, f"dump {guest} {out}")
    assert out.read_bytes()[:4] == b"QEVM"
    assert ok(uri, f"domstate {guest}").strip() == "running"


def test_crash_shuts_the_guest_off(uri, guest, tmp_path):
    events = EventCollector(uri)
    try:
        ok(uri, f"dump {guest} {tmp_path / 'c'} --memory-only --crash")
        assert ok(uri, f"domstate {guest} --reason").strip() == "shut off (crashed)"
        events.wait((guest, STOPPED, STOPPED_CRASHED))
    finally:
        events.close()


def test_live_and_reset_keep_it_running(uri, guest, tmp_path):
    ok(uri, f"dump {guest} {tmp_path / 'l'} --memory-only --live")
    assert ok(uri, f"domstate {guest}").strip() == "running"
    ok(uri, f"dump {guest} {tmp_path / 'r'} --memory-only --reset")
    assert ok(uri, f"domstate {guest}").strip() == "running"


def test_python_libvirt_core_dump_with_format(uri, guest, tmp_path):
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByName(guest)
        out = tmp_path / "py.elf"
        dom.coreDumpWithFormat(str(out), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
                               libvirt.VIR_DUMP_MEMORY_ONLY)
        assert out.read_bytes()[:4] == b"\x7fELF"
        job = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        assert job["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_DUMP
    finally:
        conn.close()


def test_refusals_leave_nothing_behind(uri, guest, tmp_path):
    out = tmp_path / "k"
    conn = libvirt.open(uri)      # virsh refuses --format without --memory-only itself
    try:
        with pytest.raises(libvirt.libvirtError) as ei:
            conn.lookupByName(guest).coreDumpWithFormat(
                str(out), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB, 0)
    finally:
        conn.close()
    assert ei.value.get_error_code() == libvirt.VIR_ERR_OPERATION_UNSUPPORTED
    assert "kdump-compressed format is only supported with memory-only dump" in str(ei.value)
    assert not out.exists()
    r = virsh(uri, f"dump {guest} {tmp_path / 'no' / 'such' / 'dir'} --memory-only")
    assert r.rc == 1 and "Failed to create file" in r.err, r.err
    assert ok(uri, f"domstate {guest}").strip() == "running"
    ok(uri, f"destroy {guest}")
    r = virsh(uri, f"dump {guest} {out} --memory-only")
    assert r.rc == 1 and "domain is not running" in r.err, r.err
