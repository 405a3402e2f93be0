"""vol-upload / vol-download work (sparse and not) against a stand-in for the RPC stream.

`FakeStream` has the interface of pyvirtd.stream.Stream that the storage
work uses; the RPC side of streams is covered by the virsh tests.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.frame import STREAM_CHUNK
from pyvirtd.stream import Hole

from storage_helpers import MiB, vol_xml


class FakeStream:
    def __init__(self, incoming=()) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes | Hole] = []
        self.finished = False
        self.closed = False
        self.sparse = False
        self.work = None

    @property
    def backlog(self) -> int:
        return sum(len(i) for i in self.incoming if isinstance(i, bytes))

    async def receive(self):
        return self.incoming.pop(0) if self.incoming else None

    def run(self, fn, *args) -> None:
        self.work = (fn, args)

    async def go(self) -> None:
        fn, args = self.work
        await fn(*args)

    def send(self, data) -> None:
        self.sent.append(bytes(data))

    def send_hole(self, n: int) -> None:
        self.sent.append(Hole(n))

    async def drain(self) -> None:
        pass

    def finish(self) -> None:
        self.finished = True


def sparse_image(path: Path) -> bytes:
    rnd = random.Random(5)
    with open(path, "wb") as f:
        f.truncate(32 * MiB)
        for off in (0, 5 * MiB + 12345, 31 * MiB):
            f.seek(off)
            f.write(rnd.randbytes(300_000))
    return path.read_bytes()


def as_stream(data: bytes, path: Path) -> list:
    """What `virsh vol-upload --sparse` sends: data chunks and holes, by SEEK_DATA/SEEK_HOLE."""
    out, pos, fd = [], 0, os.open(path, os.O_RDONLY)
    try:
        while pos < len(data):
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                start = len(data)
            if start > pos:
                out.append(Hole(start - pos))
                pos = start
                continue
            end = os.lseek(fd, pos, os.SEEK_HOLE)
            for o in range(pos, end, STREAM_CHUNK):
                out.append(data[o:min(end, o + STREAM_CHUNK)])
            pos = end
    finally:
        os.close(fd)
    return out


async def test_sparse_upload_then_download(active, tmp_path: Path) -> None:
    sub, ref, target = active
    vol = await sub.storage_vol_create_xml(
        ref, vol_xml("v", str(32 * MiB), extra=f"<allocation>{32 * MiB}</allocation>"), 0)
    data = sparse_image(tmp_path / "img")
    up = FakeStream(as_stream(data, tmp_path / "img"))
    await sub.storage_vol_upload(up, vol, 0, 0, 1)
    await up.go()
    assert (target / "v").read_bytes() == data
    # the fully allocated volume got the image's holes
    assert os.stat(target / "v").st_blocks * 512 < 2 * MiB
    assert (await sub.storage_vol_get_info(vol))[2] < 2 * MiB

    down = FakeStream()
    await sub.storage_vol_download(down, vol, 0, 0, 1)
    await down.go()
    assert down.finished
    assert len([p for p in down.sent if isinstance(p, Hole)]) == 3   # trailing hole too
    got = b"".join(bytes(p.length) if isinstance(p, Hole) else p for p in down.sent)
    assert got == data

    plain = FakeStream()
    await sub.storage_vol_download(plain, vol, 5 * MiB, MiB, 0)   # offset and length
    await plain.go()
    assert not any(isinstance(p, Hole) for p in plain.sent)
    assert b"".join(plain.sent) == data[5 * MiB:6 * MiB]


async def test_volume_in_use_by_a_stream(active) -> None:
    sub, ref, target = active
    vol = await sub.storage_vol_create_xml(ref, vol_xml("v", str(MiB)), 0)
    up = FakeStream([b"x" * 10])
    await sub.storage_vol_upload(up, vol, 0, 0, 0)
    import pytest
    from pyvirtd.errors import VirError
    with pytest.raises(VirError) as info:
        await sub.storage_vol_delete(vol, 0)
    assert info.value.message == ("Requested operation is not valid: volume 'v' is still in use.")
    with pytest.raises(VirError) as info:
        await sub.storage_pool_destroy(ref)
    assert info.value.code == P.VIR_ERR_INTERNAL_ERROR
    await up.go()
    assert (target / "v").read_bytes()[:11] == b"x" * 10 + b"\0"
    await sub.storage_vol_delete(vol, 0)


async def test_upload_past_its_length_writes_up_to_it_then_fails(active) -> None:
    import pytest
    from pyvirtd.errors import VirError
    sub, ref, target = active
    vol = await sub.storage_vol_create_xml(ref, vol_xml("v", str(MiB)), 0)
    up = FakeStream([b"a" * 600, Hole(100), b"b" * 600, b"c" * 10])
    await sub.storage_vol_upload(up, vol, 10, 1000, 1)
    with pytest.raises(VirError) as info:
        await up.go()
    assert info.value.message == "cannot write to stream: No space left on device"
    assert info.value.domain == P.VIR_FROM_STREAMS
    assert (target / "v").read_bytes()[:1100] == bytes(10) + b"a" * 600 + bytes(100) \
        + b"b" * 300 + bytes(90)
