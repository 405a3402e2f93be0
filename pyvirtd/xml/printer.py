"""libvirt's XML layout: the one printer every document type writes with.

libvirt writes its documents with virBuffer, not with libxml2's serialiser:
single-quoted attributes, two-space indentation, ``<tag/>`` for an element
with neither children nor text, the five XML specials escaped in attributes
and text alike (virBufferEscapeString), a newline after every element and no
XML declaration.  Comments, processing instructions and the text between
child elements are not part of a definition and are not written.
"""

from __future__ import annotations

from collections.abc import Mapping

from lxml import etree

_ESCAPES = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;", "'": "&apos;", '"': "&quot;",
                         # control characters XML cannot carry: dropped, as libvirt does
                         **{chr(c): None for c in range(0x01, 0x1a) if chr(c) not in "\t\n\r"}})


def escape(text: str) -> str:
    """Escape text or an attribute value as libvirt's virBufferEscapeString does:
    the five XML specials as entities, control characters 0x01-0x19 but tab,
    newline and carriage return dropped."""
    return str(text).translate(_ESCAPES)


def format_libvirt(elem: etree._Element, *, open_empty: frozenset[str] = frozenset(),
                   indent: int = 0) -> str:
    """``elem`` as libvirt writes it, each line ending in a newline.

    Tags in ``open_empty`` are written as an open/close pair even when empty
    (libvirt's pool ``<source>`` is); ``indent`` is the starting depth.
    """
    out: list[str] = []
    element_lines(elem, indent, out, open_empty=open_empty)
    return "".join(line + "\n" for line in out)


def element_lines(elem: etree._Element, level: int, out: list[str], *,
                  open_empty: frozenset[str] = frozenset(),
                  prefixes: Mapping[str, str] | None = None) -> None:
    """Append the lines (without newlines) of ``elem`` at depth ``level`` to ``out``.

    Namespaced names are written with the element's own prefixes and the
    declarations it adds to its parent's; with ``prefixes`` (namespace URI ->
    prefix) they get those fixed prefixes instead and no declarations, which
    the caller writes on the document's root (as libvirt does for
    ``<qemu:commandline>``).  Text that is only whitespace counts as empty.
    """
    pad = "  " * level
    tag = _name(elem.tag, elem, prefixes, is_tag=True)
    attrs = "".join(f" {_name(k, elem, prefixes)}='{escape(v)}'" for k, v in elem.attrib.items())
    if prefixes is None:
        attrs += _namespace_declarations(elem)
    children = [c for c in elem if isinstance(c.tag, str)]
    if children:
        out.append(f"{pad}<{tag}{attrs}>")
        for child in children:
            element_lines(child, level + 1, out, open_empty=open_empty, prefixes=prefixes)
        out.append(f"{pad}</{tag}>")
    elif elem.text and elem.text.strip():
        out.append(f"{pad}<{tag}{attrs}>{escape(elem.text)}</{tag}>")
    elif elem.tag in open_empty:
        out.extend((f"{pad}<{tag}{attrs}>", f"{pad}</{tag}>"))
    else:
        out.append(f"{pad}<{tag}{attrs}/>")


def _name(name: str, elem: etree._Element, prefixes: Mapping[str, str] | None,
          *, is_tag: bool = False) -> str:
    """lxml's ``{uri}local`` as ``prefix:local`` (or ``local`` in a default namespace)."""
    if name[0] != "{":
        return name
    uri, local = name[1:].split("}", 1)
    if prefixes is not None:
        prefix = prefixes.get(uri)
    elif is_tag:
        prefix = elem.prefix
    else:
        prefix = next((p for p, ns in elem.nsmap.items() if ns == uri and p), None)
    return f"{prefix}:{local}" if prefix else local


def _namespace_declarations(elem: etree._Element) -> str:
    """The ``xmlns`` attributes ``elem`` needs beyond those in scope at its parent."""
    nsmap = elem.nsmap
    if not nsmap:
        return ""
    parent = elem.getparent()
    inherited = parent.nsmap if parent is not None else {}
    return "".join(f" xmlns:{prefix}='{escape(uri)}'" if prefix else f" xmlns='{escape(uri)}'"
                   for prefix, uri in nsmap.items() if inherited.get(prefix) != uri)
