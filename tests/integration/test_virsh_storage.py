"""Storage pools and volumes over RPC: stock virsh and python-libvirt against
qemu:///session of a `pyvirtd --root` daemon (served by pyvirtd/storage).

Expected output and messages are libvirtd 9.0's for the same commands.
Both tests share one daemon (``daemon`` below): each works on its own pool,
named only by it, and removes it again.
"""

from __future__ import annotations

import os
import random
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.conftest import virsh

QEMU_DRIVER = any(ep.name == "qemu" for ep in entry_points(group="pyvirtd.drivers"))
pytestmark = pytest.mark.skipif(not QEMU_DRIVER, reason="the QEMU driver (qemu:///session) "
                                "is not there yet: storage is served through its connections")
MiB = 1024 * 1024


@pytest.fixture
def daemon(shared_daemon):
    """The module's daemon: qemu:///session has no private state to give each test."""
    return shared_daemon


def uri(daemon) -> str:
    return daemon.uri("qemu:///session")


def ok(daemon, commands: str) -> str:
    r = virsh(uri(daemon), commands)
    assert r.rc == 0, r.err
    return r.out


def fails(daemon, commands: str) -> str:
    r = virsh(uri(daemon), commands)
    assert r.rc == 1, r.out
    return r.err


def sparse_image(path: Path, size: int) -> bytes:
    rnd = random.Random(9)
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 7 * MiB + 3, size - 100_000):
            f.seek(off)
            f.write(rnd.randbytes(100_000))
    return path.read_bytes()


def test_dir_pool_and_volumes_with_virsh(daemon, tmp_path: Path) -> None:
    target = tmp_path / "pool"
    assert "Pool p defined" in ok(daemon, f"pool-define-as p dir --target {target}")
    assert fails(daemon, "pool-start p") == (
        "error: Failed to start pool p\n"
        f"error: cannot open directory '{target}': No such file or directory\n")
    assert "Pool p built" in ok(daemon, "pool-build p")
    ok(daemon, "pool-start p")
    ok(daemon, "pool-autostart p")
    assert " p      active   yes" in ok(daemon, "pool-list --all")
    ok(daemon, "vol-create-as p q 10M --format qcow2")
    ok(daemon, "vol-create-as p r 32M --allocation 4M")
    ok(daemon, "vol-create-as p s 10M --format qcow2 --backing-vol q --backing-vol-format qcow2")
    assert fails(daemon, "vol-create-as p a/b 1M") == (
        "error: Failed to create vol a/b\n"
        "error: Requested operation is not valid: volume name 'a/b' cannot contain '/'\n")
    assert fails(daemon, "vol-create-as p q 1M").endswith(
        "error: storage volume 'q' exists already\n")
    info = ok(daemon, "vol-info r --pool p")
    assert "Capacity:       32.00 MiB\nAllocation:     4.00 MiB" in info
    details = ok(daemon, "vol-list p --details")
    assert f" q      {target}/q   file   10.00 MiB   196.00 KiB" in details
    assert f"<path>{target}/q</path>" in ok(daemon, "vol-dumpxml s --pool p")
    ok(daemon, "vol-clone q q2 --pool p")
    ok(daemon, "vol-resize r 40M --pool p")
    assert "Can't shrink capacity below current capacity" in fails(daemon, "vol-resize r 1M --pool p")
    ok(daemon, "vol-wipe r --pool p")

    # sparse upload and download, byte for byte
    img = tmp_path / "img"
    data = sparse_image(img, 40 * MiB)
    ok(daemon, f"vol-upload r {img} --pool p --sparse")
    assert (target / "r").read_bytes() == data
    back = tmp_path / "back"
    ok(daemon, f"vol-download r {back} --pool p --sparse")
    assert back.read_bytes() == data
    assert os.stat(back).st_blocks * 512 < 2 * MiB          # the holes stayed holes
    plain = tmp_path / "plain"
    ok(daemon, f"vol-download r {plain} --pool p")
    assert plain.read_bytes() == data

    ok(daemon, "vol-delete s --pool p")
    assert "no storage vol with matching path 's'" in fails(daemon, "vol-info s --pool p")
    ok(daemon, "pool-destroy p")
    assert "storage pool 'p' is not active" in fails(daemon, "vol-list p")
    assert "<pool type='dir' supported='yes'>" in ok(
        daemon, "pool-capabilities")
    ok(daemon, "pool-undefine p")
    assert "no storage pool with matching name 'p'" in fails(daemon, "pool-info p")


def test_python_libvirt_streams_and_events(daemon, tmp_path: Path) -> None:
    import libvirt
    conn = libvirt.open(uri(daemon))
    try:
        pool = conn.storagePoolCreateXML(
            f"<pool type='dir'><name>t</name><target><path>{tmp_path / 't'}</path></target></pool>",
            libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD)
        vol = pool.createXML("<volume><name>v</name><capacity unit='M'>16</capacity></volume>", 0)
        data = sparse_image(tmp_path / "img", 16 * MiB)

        st = conn.newStream(0)
        vol.upload(st, 0, 0, 0)
        st.sendAll(lambda s, n, d: d.read(n), open(tmp_path / "img", "rb"))
        st.finish()
        assert (tmp_path / "t" / "v").read_bytes() == data

        got = bytearray()
        st = conn.newStream(0)
        vol.download(st, MiB, 8 * MiB, 0)
        st.recvAll(lambda s, buf, acc: acc.extend(buf), got)
        st.finish()
        assert bytes(got) == data[MiB:9 * MiB]

        assert vol.info()[1] == 16 * MiB
        with pytest.raises(libvirt.libvirtError) as info:
            pool.storageVolLookupByName("nope")
        assert info.value.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL
        pool.destroy()
        with pytest.raises(libvirt.libvirtError) as info:
            conn.storagePoolLookupByName("t")
        assert info.value.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL
    finally:
        conn.close()
