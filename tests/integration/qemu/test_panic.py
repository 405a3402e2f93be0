"""<panic model='isa'>: a guest that reports a panic through QEMU's pvpanic port is seen
crashed, and on_crash decides what follows (the default destroys it: shut off, crashed).

The tiny TCG guest writes the "panicked" bit to the pvpanic I/O port itself
(/dev/port at 0x505), as a kernel's pvpanic driver does when it panics.
"""

from __future__ import annotations

import re

import pytest

from daemon_helpers import module_daemon, needs_qemu, ok, qemu_uri, virsh, wait_for
from guest_helpers import PROMPT, Console, tiny_guest, tiny_xml

pytestmark = needs_qemu

daemon = module_daemon("qemu-panic")


@pytest.fixture(scope="module")
def guest_files():
    return tiny_guest()


def test_pvpanic_write_makes_the_guest_crashed(daemon, guest_files, tmp_path):
    uri = qemu_uri(daemon)
    xml = tiny_xml("dk-panic", guest_files).replace(
        "<serial type='pty'/>", "<serial type='pty'/><panic model='isa'/>")
    path = tmp_path / "dk-panic.xml"
    path.write_text(xml)
    ok(uri, f"define {path}")
    try:
        ok(uri, "start dk-panic --paused")
        console = Console(uri, "dk-panic")
        try:
            ok(uri, "resume dk-panic")
            console.wait("GUEST READY", timeout=60)
            console.wait(re.escape(PROMPT))
            console.send("printf '\\001' | dd of=/dev/port bs=1 seek=1285 count=1\n")
            wait_for(lambda: "shut off" in ok(uri, "domstate dk-panic"), 30)
        finally:
            console.close()
        assert ok(uri, "domstate dk-panic --reason").strip() == "shut off (crashed)"
    finally:
        virsh(uri, "destroy dk-panic; undefine dk-panic")
