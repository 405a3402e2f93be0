"""The save image layout of drivers/qemu/save.py, byte by byte, without QEMU.

The header is ours (documented in save.py and docs/save-images.md); these
tests pin its offsets, the partial-then-complete magic, the in-place XML
rewrite, and libvirt's wording for files that are no image.
"""

from __future__ import annotations

import struct

import pytest

from pyvirtd.drivers.qemu import save
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

XML = "<domain type='qemu'><name>u1</name></domain>"


def _write(path, running=True, stream=b"QEVM-stream"):
    fd, head = save.create_image(str(path), XML, running)
    import os
    os.write(fd, stream)
    save.finish_image(fd, str(path), bypass_cache=True)
    return head


def test_layout_offsets(tmp_path):
    path = tmp_path / "img"
    head = _write(path)
    data = path.read_bytes()
    magic, version, flags, xml_len, room, offset = struct.unpack_from("<16sIIIIQ", data)
    assert magic == b"pyvirtd-qemusave" and version == 1 and flags == 1
    assert xml_len == len(XML) and data[64:64 + xml_len].decode() == XML
    assert data[64 + xml_len:offset] == bytes(offset - 64 - xml_len)
    assert offset == 64 + room == head.stream_offset and offset % 4096 == 0
    assert room - xml_len >= save.XML_SLACK
    assert data[offset:] == b"QEVM-stream"
    assert data[40:64] == bytes(24)


def test_open_leaves_the_fd_at_the_stream(tmp_path):
    import os

    path = tmp_path / "img"
    _write(path, running=False)
    fd, head = save.open_image(str(path))
    try:
        assert head.running is False and head.xml == XML
        assert os.read(fd, 100) == b"QEVM-stream"
    finally:
        os.close(fd)


def test_partial_image_is_incomplete(tmp_path):
    import os

    path = tmp_path / "img"
    fd, _ = save.create_image(str(path), XML, True)     # a save that never finished
    os.close(fd)
    with pytest.raises(save.IncompleteImage) as exc:
        save.read_image(str(path))
    assert exc.value.code == P.VIR_ERR_OPERATION_FAILED
    assert "save image is incomplete" in str(exc.value)


@pytest.mark.parametrize("content, message", [
    (b"", "failed to read qemu header"),
    (b"hello\n", "failed to read qemu header"),
    (b"LibvirtQemudSave" + bytes(200), "image magic is incorrect"),
    (save.HEADER.pack(save.MAGIC, 2, 0, 10, 4032, 4096), "image version is not supported (2 > 1)"),
    (save.HEADER.pack(save.MAGIC, 1, 1 << 8, 10, 4032, 4096), "image format 1 is not supported"),
    (save.HEADER.pack(save.MAGIC, 1, 0, 0, 4032, 4096), "invalid XML length: 0"),
    (save.HEADER.pack(save.MAGIC, 1, 0, 5000, 4032, 4096), "invalid XML length: 5000"),
    (save.HEADER.pack(save.MAGIC, 1, 0, 10, 4032, 4096) + b"<dom", "failed to read domain XML"),
])
def test_not_an_image(tmp_path, content, message):
    path = tmp_path / "img"
    path.write_bytes(content)
    with pytest.raises(VirError) as exc:
        save.read_image(str(path))
    assert exc.value.code == P.VIR_ERR_OPERATION_FAILED
    assert message in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(VirError) as exc:
        save.read_image(str(tmp_path / "nope"))
    assert exc.value.code == P.VIR_ERR_SYSTEM_ERROR
    assert f"Failed to open file '{tmp_path}/nope': No such file or directory" in str(exc.value)


def test_rewrite_in_place_keeps_the_stream(tmp_path):
    path = tmp_path / "img"
    head = _write(path, running=True)
    new = XML.replace("</name>", "</name><title>t</title>")
    save.rewrite_image(str(path), new, False)
    again = save.read_image(str(path))
    assert again.xml == new and again.running is False
    assert again.stream_offset == head.stream_offset
    assert path.read_bytes()[head.stream_offset:] == b"QEVM-stream"
    save.rewrite_image(str(path), new, None)            # no flag: the running bit stays
    assert save.read_image(str(path)).running is False
    with pytest.raises(VirError) as exc:
        save.rewrite_image(str(path), "<domain>" + "x" * head.xml_room + "</domain>", None)
    assert "new xml too large to fit in file" in str(exc.value)
