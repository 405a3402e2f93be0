"""fs pools on a loop device (mkfs, mount, umount), and a pool whose storage
stops answering while other calls go on.

Both need root (losetup, mount).  The dead storage is real: a FUSE file
system whose server never answers, which is what a hard-mounted NFS export
of a dead server looks like to the kernel's callers (every stat() blocks).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from storage_helpers import MiB, pool_xml, raises, vol_xml

root_only = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"),
                               reason="needs root and losetup")


def fs_xml(name: str, dev: str, target: Path, fmt: str = "ext4") -> str:
    return (f"<pool type='fs'><name>{name}</name><source><device path='{dev}'/>"
            f"<format type='{fmt}'/></source><target><path>{target}</path></target></pool>")


@pytest.fixture
def loopdev(tmp_path: Path):
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MiB)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    yield dev
    subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True)
    subprocess.run(["losetup", "-d", dev], check=True)


@root_only
async def test_fs_pool_on_a_loop_device(sub, tmp_path: Path, loopdev: str) -> None:
    mnt = tmp_path / "mnt"
    ref = await sub.storage_pool_define_xml(fs_xml("f", loopdev, mnt), 0)
    await raises(P.VIR_ERR_OPERATION_FAILED,
                 "operation failed: Storage source conflict with pool: 'f'",
                 sub.storage_pool_define_xml(fs_xml("g", loopdev, tmp_path / "other"), 0))
    await sub.storage_pool_build(ref, 8)                 # OVERWRITE: mkfs -t ext4
    await raises(P.VIR_ERR_STORAGE_POOL_BUILT,
                 f"Device '{loopdev}' already formatted using 'ext4'",
                 sub.storage_pool_build(ref, 4))         # NO_OVERWRITE
    await sub.storage_pool_create(ref, 0)
    assert os.path.ismount(mnt)
    cap = sub.storage_pool_get_info(ref)[1]
    assert 50 * MiB < cap < 64 * MiB                     # the file system's size, not the host's
    vol = await sub.storage_vol_create_xml(ref, vol_xml("disk", str(8 * MiB), "qcow2"), 0)
    assert (await sub.storage_vol_get_info(vol))[1] == 8 * MiB
    assert "lost+found" in sub.storage_pool_list_volumes(ref, 10)

    # a busy mount point: umount's own words, and the pool stays active
    busy = os.open(mnt / "disk", os.O_RDONLY)
    try:
        with pytest.raises(VirError) as info:
            await sub.storage_pool_destroy(ref)
        assert info.value.code == P.VIR_ERR_INTERNAL_ERROR
        assert "target is busy" in info.value.message
        assert sub.storage_pool_is_active(ref) == 1
    finally:
        os.close(busy)
    await sub.storage_pool_destroy(ref)
    assert not os.path.ismount(mnt)

    # a mount made behind our back is taken as running at daemon start
    subprocess.run(["mount", loopdev, str(mnt)], check=True)
    from storage_helpers import make
    again = make(tmp_path)
    await again.start()
    assert again.storage_pool_is_active(ref) == 0        # not started by us: no status file
    await raises(P.VIR_ERR_OPERATION_INVALID,
                 f"Requested operation is not valid: Target '{mnt}' is already mounted",
                 again.storage_pool_create(ref, 0))


def _dead_fuse_mount(path: Path) -> int:
    """Mount a FUSE file system on ``path`` whose server never answers; returns
    its /dev/fuse fd (closing it aborts the connection: blocked calls fail)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"dead", str(path).encode(), b"fuse.dead", 0, opts) != 0:
        err = ctypes.get_errno()
        os.close(fd)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(err)}")
    return fd


def _a_thread_waits_on_fuse() -> bool:
    """Whether a thread of this process is blocked in the kernel's FUSE client."""
    for task in Path("/proc/self/task").iterdir():
        try:
            if "fuse" in (task / "wchan").read_text():
                return True
        except OSError:
            pass                                      # the thread ended meanwhile
    return False


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
                    reason="needs root and /dev/fuse")
async def test_dead_storage_stalls_only_its_pool(active, tmp_path: Path) -> None:
    sub, good, target = active
    vol = await sub.storage_vol_create_xml(good, vol_xml("v", str(MiB)), 0)
    dead_dir = tmp_path / "dead"
    dead_dir.mkdir()
    ref = await sub.storage_pool_define_xml(pool_xml("dead", dead_dir), 0)
    fuse_fd = _dead_fuse_mount(dead_dir)
    try:
        failures = []

        async def start_dead() -> None:
            try:
                await sub.storage_pool_create(ref, 0)
            except VirError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_dead)
            with trio.fail_after(10):                 # it is stuck in stat()/opendir()
                while not _a_thread_waits_on_fuse():
                    await trio.sleep(0.01)
            assert sub.storage_pool_is_active(ref) == 0 and not failures
            with trio.fail_after(5):                  # everything else answers
                assert len(sub.connect_list_all_storage_pools(1, 0)[0]) == 2
                assert sub.storage_pool_get_info(ref)[0] == 0
                assert "<name>dead</name>" in sub.storage_pool_get_xml_desc(ref, 0)
                await sub.storage_pool_refresh(good, 0)
                assert (await sub.storage_vol_get_info(vol))[1] == MiB
                v2 = await sub.storage_vol_create_xml(good, vol_xml("w", str(MiB), "qcow2"), 0)
                await sub.storage_vol_delete(v2, 0)
                other = await sub.storage_pool_define_xml(pool_xml("o", tmp_path / "o"), 0)
                await sub.storage_pool_create(other, 1)
            # a second call on the dead pool waits behind the first, on its own
            nursery.start_soon(start_dead)
            await trio.testing.wait_all_tasks_blocked()
            os.close(fuse_fd)                         # the server "dies for good"
            fuse_fd = -1
        assert len(failures) == 2
        assert "Transport endpoint is not connected" in failures[0].message
    finally:
        if fuse_fd >= 0:
            os.close(fuse_fd)
        subprocess.run(["umount", "-l", str(dead_dir)], capture_output=True)
