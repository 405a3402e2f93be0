"""Network filter XML: round trips, libvirt's errors, and the rules a binding expands to."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.nwfilter import model, nft, subsystem
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import schema

LIBVIRT_RNG = Path("/usr/share/libvirt/schemas/nwfilter.rng")


def standard() -> dict[str, model.FilterDef]:
    return {f.name: f for f in map(model.parse, subsystem.standard_filters())}


@pytest.mark.parametrize("text", subsystem.standard_filters(), ids=lambda t: t.split("name='")[1].split("'")[0])
def test_standard_filters_round_trip_and_validate(text):
    out = model.format(model.parse(text))
    assert model.format(model.parse(out)) == out
    assert schema.errors(etree.fromstring(out.encode()), "nwfilter") is None
    if LIBVIRT_RNG.exists():
        rng = etree.RelaxNG(etree.parse(str(LIBVIRT_RNG)))
        assert rng.validate(etree.fromstring(out.encode())), rng.error_log


def test_standard_set_is_libvirts():
    assert {"clean-traffic", "no-ip-spoofing", "no-mac-spoofing", "no-arp-spoofing",
            "no-arp-ip-spoofing", "no-arp-mac-spoofing", "allow-arp", "allow-dhcp",
            "allow-dhcp-server", "allow-incoming-ipv4", "allow-ipv4", "no-other-l2-traffic",
            "no-other-rarp-traffic", "no-ip-multicast", "qemu-announce-self",
            "qemu-announce-self-rarp"} <= set(standard())
    # shipped without UUIDs: each host makes its own, as libvirt does
    assert all("<uuid>" not in t for t in subsystem.standard_filters())


def test_canonical_values_and_match_no():
    f = model.parse("""<filter name='x' chain='ipv4-x' priority='-10'>
      <uuid>0f0e0d0c-0b0a-0908-0706-050403020100</uuid>
      <rule action='accept' direction='out' statematch='0'>
        <ip srcipaddr='10.0.0.1' srcipmask='255.255.0.0' protocol='6' dscp='0x10'/>
        <ip match='no' srcmacaddr='52:54:00:AA:BB:CC'/>
      </rule>
      <rule action='drop' direction='inout' priority='5000'><mac protocolid='0x0806'/></rule>
      <filterref filter='y'><parameter name='IP' value='1.2.3.4'/><parameter name='IP' value='1.2.3.5'/></filterref>
    </filter>""")
    assert model.format(f) == """<filter name='x' chain='ipv4-x' priority='-10'>
  <uuid>0f0e0d0c-0b0a-0908-0706-050403020100</uuid>
  <rule action='accept' direction='out' priority='500' statematch='false'>
    <ip match='no' srcmacaddr='52:54:00:aa:bb:cc'/>
    <ip srcipaddr='10.0.0.1' srcipmask='16' protocol='tcp' dscp='0x10'/>
  </rule>
  <rule action='drop' direction='inout' priority='500'>
    <mac protocolid='arp'/>
  </rule>
  <filterref filter='y'>
    <parameter name='IP' value='1.2.3.4'/>
    <parameter name='IP' value='1.2.3.5'/>
  </filterref>
</filter>
"""
    assert model.format(model.parse(model.format(f))) == model.format(f)


@pytest.mark.parametrize("xml, code, message", [
    ("<filter name='a'><rule direction='in'/></filter>", P.VIR_ERR_INTERNAL_ERROR,
     "rule node requires action attribute"),
    ("<filter name='a'><rule action='maybe' direction='in'/></filter>",
     P.VIR_ERR_CONFIG_UNSUPPORTED, "unknown rule action attribute value"),
    ("<filter name='a'><rule action='drop' direction='up'/></filter>",
     P.VIR_ERR_CONFIG_UNSUPPORTED, "unknown rule direction attribute value"),
    ("<filter name='a'><rule action='drop' direction='in'><ip srcipaddr='1.2.3'/></rule></filter>",
     P.VIR_ERR_INTERNAL_ERROR, "srcipaddr has illegal value 1.2.3"),
    ("<filter name='a'><rule action='drop' direction='in'><mac srcmacmask='ff:00:ff:00:00:00'/></rule></filter>",
     P.VIR_ERR_INTERNAL_ERROR, "srcmacmask has illegal value ff:00:ff:00:00:00"),
    ("<filter name='a'><rule action='drop' direction='in'><ip srcportstart='80'/></rule></filter>",
     P.VIR_ERR_INTERNAL_ERROR, "IP rule with port specification requires protocol"),
    ("<filter name='a' chain='bogus'/>", P.VIR_ERR_INVALID_ARG, "Invalid chain name 'bogus'"),
    ("<filter name='a' chain='ipv4' priority='2000'/>", P.VIR_ERR_INVALID_ARG,
     "Priority '2000' is outside valid range of [-1000,1000]"),
    ("<filter/>", P.VIR_ERR_INTERNAL_ERROR, "filter has no name"),
    ("<filter name='a/b'/>", P.VIR_ERR_XML_ERROR, "cannot contain '/'"),
    ("<filterx name='a'/>", P.VIR_ERR_XML_ERROR, "unknown root element for nw filter"),
    ("<filter name='a'><filterref filter='b'><parameter name='I P' value='1'/></filterref></filter>",
     P.VIR_ERR_INVALID_ARG, "invalid filter parameter"),
])
def test_malformed_filters_are_refused(xml, code, message):
    with pytest.raises(VirError) as exc:
        model.parse(xml)
    assert exc.value.code == code
    assert message in exc.value.message


def test_binding_round_trip_and_errors():
    text = """<filterbinding>
  <owner>
    <name>vm1</name>
    <uuid>d54df46f-1ab5-4a22-8618-4560ef5fac2c</uuid>
  </owner>
  <portdev name='vnet0'/>
  <mac address='52:54:00:aa:bb:cc'/>
  <filterref filter='clean-traffic'>
    <parameter name='IP' value='10.1.2.3'/>
  </filterref>
</filterbinding>
"""
    assert model.format_binding(model.parse_binding(text)) == text
    assert schema.errors(etree.fromstring(text.encode()), "nwfilterbinding") is None
    with pytest.raises(VirError, match="filter binding has no port dev name"):
        model.parse_binding(text.replace("<portdev name='vnet0'/>", ""))


def _rules(filter_name: str, params, filters=None) -> str:
    b = model.BindingDef("vm", b"\1" * 16, "vnet7", "52:54:00:00:00:07", filter_name, params)
    return nft.table_script({"vnet7": nft.instantiate(b, filters or standard())})


def test_clean_traffic_expands_to_anti_spoofing_rules():
    script = _rules("clean-traffic", [("IP", "10.0.0.7"), ("IP", "10.0.0.8")])
    assert 'add rule bridge pyvirtd_nwfilter l2-from iifname "vnet7" jump I-vnet7' in script
    assert "I-vnet7-mac ether saddr 52:54:00:00:00:07 return" in script
    assert "I-vnet7-ipv4-ip ether type 0x0800 ip saddr 10.0.0.7 return" in script
    assert "I-vnet7-ipv4-ip ether type 0x0800 ip saddr 10.0.0.8 return" in script
    # the protocol chains are entered in chain-priority order, the last rule drops the rest
    root = [line.split(" I-vnet7 ", 1)[1] for line in script.splitlines()
            if line.startswith("add rule bridge pyvirtd_nwfilter I-vnet7 ")]
    assert root[0] == "jump I-vnet7-mac"
    assert root.index("ether type 0x0800 jump I-vnet7-ipv4-ip") < \
        root.index("ether type 0x0806 jump I-vnet7-arp-mac")
    assert root[-1] == "drop"


def test_missing_variable_and_filter_are_libvirts_errors():
    with pytest.raises(VirError) as exc:
        _rules("clean-traffic", [])
    assert exc.value.code == P.VIR_ERR_INTERNAL_ERROR
    assert exc.value.message.endswith("Cannot instantiate filter due to unresolvable variables "
                                 "or unavailable list elements: IP")
    with pytest.raises(VirError, match="referenced filter 'nope' is missing"):
        _rules("nope", [])


def test_variables_iterate_together_or_in_combination():
    f = model.parse("""<filter name='v' chain='ipv4'>
      <rule action='accept' direction='out'>
        <ip protocol='udp' dstipaddr='$A[@1]' dstportstart='$B[@1]'/></rule>
      <rule action='accept' direction='in'><ip srcipaddr='$A' dstipaddr='$C'/></rule>
      <rule action='drop' direction='in'><ip srcipaddr='$A[1]'/></rule>
    </filter>""")
    script = _rules("v", [("A", "1.1.1.1"), ("A", "2.2.2.2"), ("B", "53"), ("B", "54"),
                          ("C", "3.3.3.3"), ("C", "4.4.4.4")], {"v": f})
    assert "ip daddr 1.1.1.1 meta l4proto 17 udp dport 53 accept" in script
    assert "ip daddr 2.2.2.2 meta l4proto 17 udp dport 54 accept" in script
    assert "ip daddr 1.1.1.1 meta l4proto 17 udp dport 54" not in script
    assert script.count("ip daddr 3.3.3.3 accept") + script.count("ip daddr 4.4.4.4 accept") == 4
    assert "O-vnet7-ipv4 ether type 0x0800 ip saddr 2.2.2.2 drop" in script
    with pytest.raises(VirError, match="unavailable list elements: A"):
        _rules("v", [("A", "1.1.1.1"), ("B", "53"), ("C", "3.3.3.3")], {"v": f})


def test_layer3_rules_get_a_swapped_companion():
    f = model.parse("""<filter name='ssh' chain='root'>
      <rule action='accept' direction='in'><tcp dstportstart='22'/></rule>
      <rule action='drop' direction='inout'><all/></rule></filter>""")
    script = _rules("ssh", [], {"ssh": f})
    assert "FO-vnet7 ether type 0x0800 meta l4proto 6 tcp dport 22 accept" in script
    assert "FI-vnet7 ether type 0x0800 meta l4proto 6 tcp sport 22 accept" in script
    assert 'l3-to oifname "vnet7" jump FO-vnet7' in script


def test_loop_detection():
    a = model.parse("<filter name='a'><filterref filter='b'/></filter>")
    b = model.parse("<filter name='b'><filterref filter='a'/></filter>")
    assert not subsystem.loops({}, a)
    assert subsystem.loops({"a": a}, b)
    assert subsystem.loops({}, model.parse("<filter name='s'><filterref filter='s'/></filter>"))
