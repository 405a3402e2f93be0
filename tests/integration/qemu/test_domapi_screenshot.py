"""DOMAIN_SCREENSHOT on pyvirtd's QEMU driver: the display's picture as a stream, with real QEMU.

A firmware-only guest with a VGA card: SeaBIOS draws its banner in text
mode.  libvirt 9.0 with Debian's QEMU 7.2 (built with libpng) answers
``image/png`` (checked side by side with a real libvirtd on this machine),
so pyvirtd does too; the test decodes the PNG (header, then the pixel rows
inflated) rather than trusting the MIME type.  Errors are libvirt 9.0's.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from daemon_helpers import guest_xml, module_daemon, module_uri, needs_qemu, ok, virsh

pytestmark = needs_qemu

daemon = module_daemon("qemu-domapi-shot")
uri = module_uri

VGA = "<video><model type='vga'/></video>"


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, raw scanlines) of an 8-bit RGB PNG; fails on anything else."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert width and len(raw) == height * (1 + 3 * width)
    return width, height, raw


@pytest.fixture(scope="module")
def guest(uri, tmp_path_factory):
    d = tmp_path_factory.mktemp("dshot")
    (d / "dshot.xml").write_text(guest_xml("dshot", serial_bios=True).replace(
        "<devices>", f"<devices>{VGA}"))
    ok(uri, f"define {d / 'dshot.xml'}; start dshot")
    try:
        yield "dshot"
    finally:
        virsh(uri, "destroy dshot; undefine dshot")


def test_screenshot_stream_is_a_picture_of_the_display(guest, uri):
    import libvirt

    conn = libvirt.open(uri)
    try:
        st = conn.newStream(0)
        mime = conn.lookupByName(guest).screenshot(st, 0, 0)
        data = b""
        while True:
            chunk = st.recv(65536)
            if not chunk:
                break
            data += chunk
        st.finish()
    finally:
        conn.close()
    assert mime == "image/png"
    width, height, raw = decode_png(data)
    assert (width, height) in ((720, 400), (640, 480))
    assert len(set(raw)) > 2          # something is drawn, not a blank screen


def test_virsh_screenshot_writes_the_file(guest, uri, tmp_path):
    out = ok(uri, f"screenshot {guest} {tmp_path / 'shot'}")
    assert re.search(rf"Screenshot saved to {tmp_path / 'shot'}, with type of image/png", out)
    decode_png((tmp_path / "shot").read_bytes())


def test_screenshot_refusals(guest, uri, tmp_path, daemon):
    r = virsh(uri, f"screenshot {guest} {tmp_path / 's'} --screen 1")
    assert r.rc != 0 and "Requested operation is not valid: no such screen ID" in r.err
    (tmp_path / "novideo.xml").write_text(guest_xml("dshot-nv"))
    ok(uri, f"create {tmp_path / 'novideo.xml'}")
    try:
        r = virsh(uri, f"screenshot dshot-nv {tmp_path / 's'}")
        assert r.rc != 0
        assert "Requested operation is not valid: no screens to take screenshot from" in r.err
    finally:
        virsh(uri, "destroy dshot-nv")
    ok(uri, f"define {tmp_path / 'novideo.xml'}")
    try:
        r = virsh(uri, f"screenshot dshot-nv {tmp_path / 's'}")
        assert r.rc != 0 and "domain is not running" in r.err
    finally:
        virsh(uri, "undefine dshot-nv")
    # nothing left behind by the screenshots taken
    assert not list((daemon.root / "run").rglob("qemu.screendump.*"))
