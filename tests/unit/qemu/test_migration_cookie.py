"""Migration cookies (drivers/qemu/migration.py): what a peer's cookie carries that we use.

A libvirtd peer's cookie has many parts pyvirtd does not know (graphics,
lockstate, NBD, capabilities, ...): they are ignored, as libvirt ignores
unknown parts; only the persistent definition is taken.
"""

from __future__ import annotations

import pytest

from pyvirtd.drivers.qemu.migration import cookie_persistent, qemu_uri
from pyvirtd.errors import VirError

LIBVIRT_COOKIE = b"""<qemu-migration>
  <name>web1</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <hostname>hostA</hostname>
  <hostuuid>1b2c3d4e-0000-1111-2222-333344445555</hostuuid>
  <feature name='lockstate'/>
  <feature name='persistent'/>
  <lockstate driver='sanlock'><leases/></lockstate>
  <graphics type='vnc' port='5900' listen='0.0.0.0'/>
  <persistent>
    <domain type='kvm'>
      <name>web1</name>
      <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
      <memory unit='KiB'>65536</memory>
    </domain>
  </persistent>
  <capabilities><cap name='xbzrle' auto='no'/></capabilities>
</qemu-migration>
\0"""


def test_persistent_definition_taken_unknown_parts_ignored():
    xml = cookie_persistent(LIBVIRT_COOKIE)
    assert xml is not None and xml.startswith("<domain type=\"kvm\">")
    assert "<name>web1</name>" in xml and "graphics" not in xml


@pytest.mark.parametrize("cookie", [b"", None, b"\0", b"not xml at all\0",
                                    b"<qemu-migration><name>x</name></qemu-migration>\0"])
def test_cookies_without_a_definition(cookie):
    assert cookie_persistent(cookie) is None


def test_destination_uri_as_qemu_wants_it():
    assert qemu_uri("tcp://hostb:49152") == "tcp:hostb:49152"
    assert qemu_uri("tcp://[fd00::2]:49153") == "tcp:[fd00::2]:49153"
    for bad in ("rdma://hostb:49152", "tcp://hostb", "unix:///tmp/x"):
        with pytest.raises(VirError) as exc:
            qemu_uri(bad)
        assert "unsupported migration URI" in exc.value.message
