"""The UML driver's XML defaults and kernel argv for NICs (drivers/uml/spec.py, nics.py)."""

from __future__ import annotations

import re

import pytest

from pyvirtd.drivers.uml import spec
from pyvirtd.errors import VirError
from pyvirtd.xml import domain as domxml


def _def(devices: str) -> domxml.DomainDef:
    d = domxml.parse(f"""<domain type='uml'><name>u</name><memory>65536</memory>
      <os><type>uml</type></os><devices>{devices}</devices></domain>""")
    spec.fill_defaults(d)
    return d


def test_nics_get_libvirt_macs_and_become_tuntap_arguments():
    d = _def("<interface type='network'><source network='n'/></interface>"
             "<interface type='ethernet'><mac address='52:54:00:AA:00:01'/></interface>")
    macs = [i.find("mac").get("address") for i in d.devices_of("interface")]
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", macs[0]), macs
    # the taps are named once plug_all made them: <target dev> of the live definition
    for n, iface in enumerate(d.devices_of("interface")):
        iface.find("mac").addnext(iface.makeelement("target", dev=f"vnet{n}"))
    argv = spec.kernel_argv(d, umid="u", uml_dir="/r", notify="/n", xstate_workaround=False,
                            pty_fds={})
    assert f"eth0=tuntap,vnet0,{macs[0]}" in argv
    assert "eth1=tuntap,vnet1,52:54:00:aa:00:01" in argv


@pytest.mark.parametrize("iface, message", [
    ("<interface type='user'/>", "unsupported interface type 'user'"),
    ("<interface type='direct'><source dev='eth0'/></interface>",
     "unsupported interface type 'direct'"),
    ("<interface type='ethernet'><script path='/bin/true'/></interface>",
     "interface script execution not supported"),
])
def test_nics_a_uml_guest_cannot_have_are_refused(iface, message):
    with pytest.raises(VirError) as exc:
        _def(iface)
    assert message in exc.value.message
