"""The network port XML model (pyvirtd/xml/networkport.py): round trips and libvirt's parse errors."""

from __future__ import annotations

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import networkport as portxml

HEAD = """<networkport>
  <uuid>7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54</uuid>
  <owner>
    <name>myguest</name>
    <uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid>
  </owner>
"""

ROUND_TRIPS = [
    HEAD + """  <group>webfront</group>
  <mac address='52:54:00:7b:35:93'/>
  <bandwidth>
    <inbound average='1000' peak='5000' floor='200' burst='1024'/>
    <outbound average='128' peak='256' burst='256'/>
  </bandwidth>
  <rxfilters trustGuest='yes'/>
  <plug type='network' bridge='virbr0'/>
</networkport>
""",
    HEAD + """  <mac address='52:54:00:7b:35:93'/>
  <plug type='bridge' bridge='br2' macTableManager='libvirt'/>
</networkport>
""",
    HEAD + """  <mac address='52:54:00:7b:35:93'/>
  <virtualport type='802.1Qbg'>
    <parameters managerid='11' typeid='1193047' typeidversion='2'/>
  </virtualport>
  <plug type='direct' dev='eth0' mode='passthrough'/>
</networkport>
""",
    HEAD + """  <mac address='52:54:00:7b:35:93'/>
  <plug type='hostdev-pci' managed='yes'>
    <driver name='vfio'/>
    <address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x1'/>
  </plug>
</networkport>
""",
]


@pytest.mark.parametrize("xml", ROUND_TRIPS)
def test_round_trip(xml):
    assert portxml.format(portxml.parse(xml)) == xml


def test_defaults_and_normalised_mac():
    port = portxml.parse(HEAD + "<mac address='52:54:00:AB:0:1'/><plug type='direct' dev='e'/>"
                         "</networkport>")
    assert port.mac == "52:54:00:ab:00:01"
    assert port.plug.get("mode") == "vepa"


@pytest.mark.parametrize("body,code,message", [
    ("<owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner>"
     "<mac address='52:54:00:00:00:01'/>", P.VIR_ERR_INTERNAL_ERROR, "network port has no uuid"),
    ("<uuid>7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54</uuid><mac address='52:54:00:00:00:01'/>",
     P.VIR_ERR_INTERNAL_ERROR, "network port has no owner name"),
    ("<uuid>7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54</uuid><owner><name>g</name>"
     "<uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner>",
     P.VIR_ERR_INTERNAL_ERROR, "network port has no mac"),
    ("<uuid>nope</uuid>", P.VIR_ERR_INTERNAL_ERROR, "Unable to parse UUID 'nope'"),
])
def test_missing_parts(body, code, message):
    with pytest.raises(VirError) as exc:
        portxml.parse(f"<networkport>{body}</networkport>")
    assert (exc.value.code, exc.value.detail) == (code, message)
    assert exc.value.domain == P.VIR_FROM_NETWORK


@pytest.mark.parametrize("tail,code,message", [
    ("<plug type='network'/>", P.VIR_ERR_XML_ERROR, "Missing network port bridge name"),
    ("<plug type='direct' dev='e' mode='odd'/>", P.VIR_ERR_XML_ERROR,
     "Invalid mode setting 'odd' in network port"),
    ("<plug type='hostdev-pci'/>", P.VIR_ERR_XML_ERROR, "Missing network port PCI address"),
    ("<bandwidth><inbound peak='5'/></bandwidth>", P.VIR_ERR_XML_DETAIL,
     "Missing mandatory average or floor attributes"),
    ("<bandwidth><outbound average='1' floor='2'/></bandwidth>", P.VIR_ERR_CONFIG_UNSUPPORTED,
     "'floor' attribute allowed only in <inbound> element"),
])
def test_bad_plug_and_bandwidth(tail, code, message):
    with pytest.raises(VirError) as exc:
        portxml.parse(HEAD + f"<mac address='52:54:00:00:00:01'/>{tail}</networkport>")
    assert (exc.value.code, exc.value.detail) == (code, message)


def test_wrong_root():
    with pytest.raises(VirError) as exc:
        portxml.parse("<network/>")
    assert exc.value.detail == "unknown root element for network port"


def test_parameters_follow_libvirts_rules():
    bw = portxml.bandwidth_from_params({portxml.PARAM_IN_PEAK: 9, portxml.PARAM_OUT_AVERAGE: 3})
    assert bw.inbound is None and bw.outbound.average == 3   # no inbound average or floor
    assert portxml.bandwidth_params(bw) == [("outbound.average", 3), ("outbound.peak", 0),
                                            ("outbound.burst", 0)]
