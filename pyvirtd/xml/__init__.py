"""The XML model shared by every driver: parsing helpers and libvirt's formatting.

Each document type has its own module (domain.py, network.py, storage.py, ...)
with ``parse`` and ``format`` functions.  These helpers keep the failure
modes identical everywhere: malformed XML and missing required elements are
VIR_ERR_XML_ERROR with libvirt's wording.
"""

from __future__ import annotations

import uuid as _uuid

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

# Refuse entity expansion and network access: the XML comes from clients.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True,
                          huge_tree=False)


def parse_xml(text: str, root_tag: str, *, domain: int = P.VIR_FROM_NONE,
              what: str | None = None) -> etree._Element:
    """Parse client-supplied XML whose root must be ``root_tag``."""
    try:
        root = etree.fromstring(text.encode(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise VirError(P.VIR_ERR_XML_ERROR, f"{what or root_tag}: {exc.msg}"
                       if what else f"(xml):{exc.lineno}: {exc.msg}", domain=domain) from None
    if root.tag != root_tag:
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"unexpected root element <{root.tag}>, expecting <{root_tag}>",
                       domain=domain)
    return root


def to_string(elem: etree._Element) -> str:
    """Serialise like libvirt: two-space indentation, no XML declaration, final newline."""
    elem = etree.fromstring(etree.tostring(elem), _PARSER)  # drop old whitespace
    etree.indent(elem, space="  ")
    return etree.tostring(elem, encoding="unicode") + "\n"


def parse_uuid(text: str, *, domain: int = P.VIR_FROM_NONE) -> bytes:
    """A UUID in any form libvirt accepts (with or without dashes) -> 16 raw bytes."""
    try:
        return _uuid.UUID(text.strip()).bytes
    except ValueError:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, "malformed uuid element",
                       domain=domain) from None


def format_uuid(raw: bytes) -> str:
    return str(_uuid.UUID(bytes=bytes(raw)))


def new_uuid() -> bytes:
    return _uuid.uuid4().bytes
