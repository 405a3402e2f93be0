"""The one libvirt-style printer (pyvirtd/xml/printer.py) that every document type uses."""

from __future__ import annotations

from lxml import etree

from pyvirtd.xml import domain as domxml
from pyvirtd.xml import element_lines, escape, format_libvirt


def test_layout_single_quotes_two_spaces_empty_elements() -> None:
    root = etree.fromstring("<pool type='dir'><name>p</name><source/><target>"
                            "<path>/x</path></target></pool>")
    assert format_libvirt(root) == ("<pool type='dir'>\n  <name>p</name>\n  <source/>\n"
                                    "  <target>\n    <path>/x</path>\n  </target>\n</pool>\n")


def test_open_empty_and_indent() -> None:
    root = etree.fromstring("<pool><source/><x><source/></x></pool>")
    assert format_libvirt(root, open_empty=frozenset({"source"}), indent=1) == (
        "  <pool>\n    <source>\n    </source>\n    <x>\n      <source>\n      </source>\n"
        "    </x>\n  </pool>\n")


def test_escaping_as_virBufferEscapeString() -> None:
    """The five specials everywhere; control characters but tab/newline/CR dropped."""
    assert escape("a<b>c&d'e\"f") == "a&lt;b&gt;c&amp;d&apos;e&quot;f"
    assert escape("x\x01y\x19z\tw\n") == "xyz\tw\n"
    elem = etree.Element("source", file="/a'b\"c<&>")
    elem.text = "it's \"so\""
    assert format_libvirt(elem) == ("<source file='/a&apos;b&quot;c&lt;&amp;&gt;'>"
                                    "it&apos;s &quot;so&quot;</source>\n")


def test_blank_text_comments_and_mixed_text_are_not_written() -> None:
    root = etree.fromstring("<a>lead<!-- c --><b>  </b><?pi x?><c> x </c>tail</a>")
    assert format_libvirt(root) == "<a>\n  <b/>\n  <c> x </c>\n</a>\n"


def test_namespaces_declared_where_they_start() -> None:
    root = etree.fromstring("<a><ex:b xmlns:ex='urn:x' ex:k='1'><ex:c/></ex:b></a>")
    assert format_libvirt(root) == (
        "<a>\n  <ex:b ex:k='1' xmlns:ex='urn:x'>\n    <ex:c/>\n  </ex:b>\n</a>\n")


def test_fixed_prefixes_write_no_declarations() -> None:
    elem = etree.fromstring("<q:commandline xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'>"
                            "<q:arg value='-x'/></q:commandline>")
    out: list[str] = []
    element_lines(elem, 1, out, prefixes=domxml.KEPT_NAMESPACES)
    assert out == ["  <qemu:commandline>", "    <qemu:arg value='-x'/>", "  </qemu:commandline>"]


def test_domain_text_escaped_like_libvirt() -> None:
    d = domxml.parse("<domain type='test'><name>it's</name><memory>1024</memory>"
                     "<title>a \"b\" &amp; c</title><os><type>hvm</type></os></domain>")
    text = domxml.format(d)
    assert "  <name>it&apos;s</name>\n" in text
    assert "  <title>a &quot;b&quot; &amp; c</title>\n" in text
