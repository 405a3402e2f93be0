"""Domain XML model: data-driven round trips (tests/data/xml2xml/domain/).

``in/NAME.xml`` is parsed, given the test driver's defaults and formatted; the
result must equal ``out/NAME.xml``, or the input itself when there is no out
file.  ``invalid/NAME.xml`` must be rejected with the libvirt error code listed
in INVALID.  Expected outputs were produced by libvirt's own test driver
(``virsh define`` + ``dumpxml --inactive``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

DATA = Path(__file__).resolve().parents[2] / "data" / "xml2xml" / "domain"

INVALID = {
    "noname": P.VIR_ERR_NO_NAME,
    "badostype": P.VIR_ERR_CONFIG_UNSUPPORTED,
    "badmem": P.VIR_ERR_XML_ERROR,
    "nomem": P.VIR_ERR_XML_ERROR,
    "noos": P.VIR_ERR_XML_ERROR,
    "malformed": P.VIR_ERR_XML_DETAIL,
}


def _roundtrip(text: str) -> str:
    d = domxml.parse(text)
    domxml.fill_defaults(d, default_arch="i686", ifname_prefix="testnet")
    return domxml.format(d)


@pytest.mark.parametrize("name", sorted(p.stem for p in (DATA / "in").glob("*.xml")))
def test_xml2xml(name: str) -> None:
    src = (DATA / "in" / f"{name}.xml").read_text()
    out = DATA / "out" / f"{name}.xml"
    expected = out.read_text() if out.exists() else src
    assert _roundtrip(src) == expected


@pytest.mark.parametrize("name", sorted(p.stem for p in (DATA / "invalid").glob("*.xml")))
def test_invalid(name: str) -> None:
    with pytest.raises(VirError) as info:
        domxml.parse((DATA / "invalid" / f"{name}.xml").read_text())
    assert info.value.code == INVALID[name]


def test_output_is_stable() -> None:
    """Formatting a formatted document changes nothing."""
    once = _roundtrip((DATA / "in" / "units-metadata.xml").read_text())
    assert _roundtrip(once) == once


def test_running_domain_has_id() -> None:
    d = domxml.parse((DATA / "in" / "test-default.xml").read_text())
    assert domxml.format(d, dom_id=3).startswith("<domain type='test' id='3'>\n")


def test_metadata_set_get_remove() -> None:
    d = domxml.parse((DATA / "in" / "minimal.xml").read_text())
    domxml.set_metadata(d, domxml.METADATA_ELEMENT, "<foo bar='1'/>", "ex", "http://example.com/ns")
    assert domxml.get_metadata(d, domxml.METADATA_ELEMENT, "http://example.com/ns") == '<foo bar="1"/>'
    assert '<ex:foo xmlns:ex="http://example.com/ns" bar="1"/>' in domxml.format(d)
    domxml.set_metadata(d, domxml.METADATA_ELEMENT, None, None, "http://example.com/ns")
    with pytest.raises(VirError) as info:
        domxml.get_metadata(d, domxml.METADATA_ELEMENT, "http://example.com/ns")
    assert info.value.code == P.VIR_ERR_NO_DOMAIN_METADATA
