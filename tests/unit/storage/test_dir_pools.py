"""The storage subsystem with dir pools on the real file system (no RPC).

Expected messages are those libvirtd 9.0's storage driver gave for the same
calls (virsh against an unprivileged libvirtd serving qemu:///session).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.storage import StorageSubsystem
from storage_helpers import MiB, make, pool_xml, raises, vol_xml


async def test_lifecycle_as_libvirt(sub: StorageSubsystem, tmp_path: Path) -> None:
    target = tmp_path / "pool"
    ref = await sub.storage_pool_define_xml(pool_xml("p", target), 0)
    assert "<capacity unit='bytes'>0</capacity>" in sub.storage_pool_get_xml_desc(ref, 0)
    await raises(P.VIR_ERR_SYSTEM_ERROR,
                 f"cannot open directory '{target}': No such file or directory",
                 sub.storage_pool_create(ref, 0))
    await sub.storage_pool_build(ref, 0)
    assert oct(os.stat(target).st_mode & 0o777) == "0o711"
    await sub.storage_pool_create(ref, 0)
    await raises(P.VIR_ERR_OPERATION_INVALID,
                 "Requested operation is not valid: storage pool 'p' is already active",
                 sub.storage_pool_create(ref, 0))
    await raises(P.VIR_ERR_OPERATION_INVALID,
                 "Requested operation is not valid: storage pool 'p' is still active",
                 sub.storage_pool_undefine(ref))
    await raises(P.VIR_ERR_OPERATION_INVALID,
                 "Requested operation is not valid: storage pool 'p' is still active",
                 sub.storage_pool_delete(ref, 0))
    xml = sub.storage_pool_get_xml_desc(ref, 0)
    assert "<mode>0711</mode>" in xml
    state, cap, alloc, avail = sub.storage_pool_get_info(ref)
    assert state == 2 and cap == alloc + avail > 0
    await sub.storage_pool_destroy(ref)
    await raises(P.VIR_ERR_OPERATION_INVALID,
                 "Requested operation is not valid: storage pool 'p' is not active",
                 sub.storage_pool_destroy(ref))
    with pytest.raises(VirError) as info:
        sub.storage_pool_list_all_volumes(ref, 1, 0)
    assert info.value.code == P.VIR_ERR_OPERATION_INVALID
    await sub.storage_pool_delete(ref, 0)
    assert not target.exists()
    await sub.storage_pool_undefine(ref)
    with pytest.raises(VirError) as info:
        sub.storage_pool_lookup_by_name("p")
    assert info.value.message == "Storage pool not found: no storage pool with matching name 'p'"


async def test_bad_definitions(sub: StorageSubsystem, tmp_path: Path) -> None:
    notdir = tmp_path / "file"
    notdir.write_text("x")
    await raises(P.VIR_ERR_SYSTEM_ERROR, f"cannot open directory '{notdir}': Not a directory",
                 sub.storage_pool_create_xml(pool_xml("p2", notdir), 0))
    assert sub.connect_list_all_storage_pools(1, 0) == ([], 0)   # the transient pool is gone
    await sub.storage_pool_define_xml(pool_xml("a", tmp_path / "x"), 0)
    await raises(P.VIR_ERR_OPERATION_FAILED,
                 "operation failed: Storage source conflict with pool: 'a'",
                 sub.storage_pool_define_xml(pool_xml("b", tmp_path / "x"), 0))
    await raises(P.VIR_ERR_INTERNAL_ERROR,
                 "internal error: missing backend for pool type 4 (disk)",
                 sub.storage_pool_define_xml(
                     "<pool type='disk'><name>i</name><target><path>/dev</path></target></pool>",
                     0))


async def test_persistence_autostart_and_restart(tmp_path: Path) -> None:
    s1 = make(tmp_path)
    await s1.start()
    a = await s1.storage_pool_define_xml(pool_xml("a", tmp_path / "a"), 0)
    b = await s1.storage_pool_define_xml(pool_xml("b", tmp_path / "b"), 0)
    t = await s1.storage_pool_create_xml(pool_xml("t", tmp_path / "t"), 1)  # WITH_BUILD
    await s1.storage_pool_build(a, 0)
    await s1.storage_pool_set_autostart(a, 1)
    await s1.storage_pool_build(b, 0)
    state = tmp_path / "daemon" / "lib" / "storage"
    assert sorted(p.name for p in state.glob("*.xml")) == ["a.xml", "b.xml"]
    assert (state / "autostart" / "a.xml").resolve() == state / "a.xml"
    assert not list(state.glob(".*"))           # no temp file left behind
    await raises(P.VIR_ERR_INTERNAL_ERROR, "internal error: cannot set autostart for transient pool",
                 s1.storage_pool_set_autostart(t, 1))

    # a new daemon: the autostart pool starts, the transient one is still running
    s2 = make(tmp_path)
    await s2.start()
    assert s2.storage_pool_is_active(a) == 1 and s2.storage_pool_get_autostart(a) == 1
    assert s2.storage_pool_is_active(b) == 0
    assert s2.storage_pool_is_active(t) == 1 and s2.storage_pool_is_persistent(t) == 0

    # its storage vanished while no daemon ran: the transient pool is gone
    await s2.storage_pool_destroy(a)
    os.rmdir(tmp_path / "t")
    s3 = make(tmp_path)
    await s3.start()
    assert [r.name for r in s3.connect_list_all_storage_pools(1, 0)[0]] == ["a", "b"]
    assert s3.connect_list_all_storage_pools(1, 2)[1] == 1     # ACTIVE: a, autostarted again


async def test_volumes(active) -> None:
    sub, ref, target = active
    v1 = await sub.storage_vol_create_xml(ref, vol_xml("v1", str(10 * MiB), "qcow2"), 0)
    v2 = await sub.storage_vol_create_xml(
        ref, vol_xml("v2", str(10 * MiB), extra=f"<allocation>{4 * MiB}</allocation>"), 0)
    v3 = await sub.storage_vol_create_xml(ref, vol_xml(
        "v3", str(10 * MiB), "qcow2",
        f"<backingStore><path>{target}/v1</path><format type='qcow2'/></backingStore>"), 0)
    assert (await sub.storage_vol_get_info(v2)) == (0, 10 * MiB, 4 * MiB)
    # an empty <allocation/> is no allocation, as in libvirt (tools write it so)
    v4 = await sub.storage_vol_create_xml(
        ref, vol_xml("v4", str(2 * MiB), extra="<allocation></allocation>"), 0)
    assert (await sub.storage_vol_get_info(v4))[1] == 2 * MiB
    await sub.storage_vol_delete(v4, 0)
    typ, cap, alloc = await sub.storage_vol_get_info(v1)
    assert (typ, cap) == (0, 10 * MiB) and alloc < MiB
    xml = await sub.storage_vol_get_xml_desc(v3, 0)
    assert f"<backingStore>\n    <path>{target}/v1</path>\n    <format type='qcow2'/>" in xml
    assert "<format type='qcow2'/>" in xml and "<mode>0600</mode>" in xml

    for name, code, message in (
            ("a/b", P.VIR_ERR_OPERATION_INVALID,
             "Requested operation is not valid: volume name 'a/b' cannot contain '/'"),
            ("..", P.VIR_ERR_OPERATION_INVALID,
             f"Requested operation is not valid: volume target path '{target}/..' already exists"),
            ("v1", P.VIR_ERR_STORAGE_VOL_EXIST, "storage volume 'v1' exists already")):
        await raises(code, message, sub.storage_vol_create_xml(ref, vol_xml(name, "1"), 0))
    await raises(P.VIR_ERR_SYSTEM_ERROR, f"cannot extend file '{target}/big': File too large",
                 sub.storage_vol_create_xml(ref, vol_xml("big", str(2 ** 62)), 0))
    assert not (target / "big").exists()
    await raises(P.VIR_ERR_XML_ERROR, "XML error: malformed capacity element",
                 sub.storage_vol_create_xml(ref, vol_xml("bad", "12abc"), 0))
    await raises(P.VIR_ERR_INVALID_ARG, "invalid argument: backing storage not supported for "
                 "raw volumes", sub.storage_vol_create_xml(ref, vol_xml(
                     "r", "1", "raw", f"<backingStore><path>{target}/v1</path></backingStore>"), 0))

    clone = await sub.storage_vol_create_xml_from(ref, vol_xml("c", "0", "qcow2"), v1, 0)
    assert (await sub.storage_vol_get_info(clone))[1] == 10 * MiB

    await sub.storage_vol_resize(v2, 20 * MiB, 0)
    await raises(P.VIR_ERR_INVALID_ARG, "invalid argument: Can't shrink capacity below current "
                 "capacity unless shrink flag explicitly specified",
                 sub.storage_vol_resize(v2, 5 * MiB, 0))
    await sub.storage_vol_resize(v2, 5 * MiB, 4)
    await sub.storage_vol_resize(v1, MiB, 2)        # DELTA, qcow2 via qemu-img resize
    assert (await sub.storage_vol_get_info(v1))[1] == 11 * MiB
    await sub.storage_vol_wipe(v2, 0)
    assert (await sub.storage_vol_get_info(v2)) == (0, 5 * MiB, 0)

    assert sub.storage_vol_lookup_by_path(f"{target}/v2") == v2
    assert sub.storage_vol_lookup_by_key(f"{target}/v2") == v2
    await sub.storage_vol_delete(v3, 0)
    await raises(P.VIR_ERR_NO_STORAGE_VOL,
                 "Storage volume not found: no storage vol with matching name 'v3'",
                 sub.storage_vol_delete(v3, 0))
    (target / "outside").write_bytes(b"QFI\xfb")      # a truncated qcow2 header
    os.mkfifo(target / "fifo")                         # not a volume, never opened blocking
    await sub.storage_pool_refresh(ref, 0)
    assert sorted(sub.storage_pool_list_volumes(ref, 100)) == ["c", "outside", "v1", "v2"]


async def test_events(active) -> None:
    sub, ref, target = active
    seen = []

    class Sink:
        def send_event(self, data: bytes) -> None:
            seen.append(data)
    sub.events.register(Sink(), "storage", P.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE)
    sub.events.register(Sink(), "storage", P.VIR_STORAGE_POOL_EVENT_ID_REFRESH)
    await sub.storage_pool_refresh(ref, 0)
    await sub.storage_pool_destroy(ref)
    assert len(seen) == 2
