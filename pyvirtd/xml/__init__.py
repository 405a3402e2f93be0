"""The XML model shared by every driver: parsing helpers and libvirt's formatting.

Each document type has its own module (domain.py, network.py, storage.py, ...)
with ``parse`` and ``format`` functions.  These helpers keep the failure
modes identical everywhere: malformed XML and missing required elements are
VIR_ERR_XML_ERROR with libvirt's wording.  Every module writes its document
with the one printer in printer.py (re-exported here).
"""

from __future__ import annotations

import copy
import uuid as _uuid
from dataclasses import dataclass
from typing import Self

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import schema
from pyvirtd.xml.printer import element_lines, escape, format_libvirt

__all__ = ["TreeDef", "element_lines", "escape", "format_libvirt", "format_uuid", "fromstring",
           "hardened_parser", "invalid_attr", "missing_attr", "new_uuid", "parse_definition",
           "parse_uuid", "parse_xml"]


def hardened_parser(*, remove_comments: bool = False) -> etree.XMLParser:
    """The one kind of parser for XML from outside the daemon (clients, users' files).

    Entities are neither expanded nor loaded (billion laughs, external files),
    no DTD is fetched, nothing comes from the network, and libxml2's size
    limits stay on.  Callers that read the parser's error log take a new one
    per document: a shared parser accumulates earlier documents' errors.
    """
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_blank_text=True,
                           remove_comments=remove_comments)


_PARSER = hardened_parser()


def fromstring(data: str | bytes, parser: etree.XMLParser | None = None) -> etree._Element:
    """Parse XML from outside the daemon with a hardened parser.

    Syntax errors propagate as ``etree.XMLSyntaxError``, for the caller to
    word as libvirt does for its document type.  A document that declares or
    uses an entity is refused here: the parser leaves references in text
    unexpanded but must expand them in attributes, and every reader of the
    model expects elements and text only.
    """
    root = etree.fromstring(data.encode() if isinstance(data, str) else data,
                            parser if parser is not None else _PARSER)
    dtd = root.getroottree().docinfo.internalDTD
    if (dtd is not None and next(dtd.iterentities(), None) is not None) \
            or next(root.iter(etree.Entity), None) is not None:
        raise VirError(P.VIR_ERR_XML_ERROR, "entity references are not supported",
                       domain=P.VIR_FROM_XML)
    return root


def parse_xml(text: str, root_tag: str, *, domain: int = P.VIR_FROM_NONE,
              what: str | None = None) -> etree._Element:
    """Parse client-supplied XML whose root must be ``root_tag``."""
    try:
        root = fromstring(text)
    except etree.XMLSyntaxError as exc:
        raise VirError(P.VIR_ERR_XML_ERROR, f"{what or root_tag}: {exc.msg}"
                       if what else f"(xml):{exc.lineno}: {exc.msg}", domain=domain) from None
    if root.tag != root_tag:
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"unexpected root element <{root.tag}>, expecting <{root_tag}>",
                       domain=domain)
    return root


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


# --- Client definitions and libvirt's own serialisation -----------------------
#
# Object definitions (network, pool, volume, interface, node device, secret)
# are reported by libvirt in a precise shape: a syntax error is
# VIR_ERR_XML_DETAIL "(network_definition):LINE: MESSAGE" followed by the
# offending line and a caret under the column (src/util/virxml.c
# catchXMLError); a wrong root is VIR_ERR_XML_ERROR from VIR_FROM_XML.

def parse_definition(text: str, root_tag: str | None, *, what: str, domain: int,
                     validate: str | None = None) -> etree._Element:
    """Parse a client's ``<root_tag>`` definition; ``what`` names the document
    in syntax errors (e.g. ``network_definition``).  With ``root_tag`` None the
    caller checks the root itself (its error differs per document type).
    ``validate`` names the schema (schemas/NAME.rng) to check the document
    against: the VALIDATE flags of the define and create calls."""
    # A parser of its own: a shared one accumulates earlier documents' errors.
    parser = hardened_parser()
    try:
        root = fromstring(text, parser)
    except etree.XMLSyntaxError as exc:
        log = parser.error_log
        entry = log[0] if len(log) else None
        line = entry.line if entry else exc.lineno or 1
        column = entry.column if entry else 1
        msg = entry.message if entry else exc.msg
        lines = text.splitlines()
        if 1 <= line <= len(lines) and lines[line - 1]:
            context = f"{lines[line - 1]}\n{'-' * max(column - 1, 0)}^"
        else:
            context = "(null)\n^"
        # VIR_ERR_XML_DETAIL messages carry no prefix (virErrorMsg: "%s").
        raise VirError(P.VIR_ERR_XML_DETAIL, domain=domain,
                       message=f"({what}):{line}: {msg}\n{context}") from None
    if root_tag is not None and root.tag != root_tag:
        raise VirError(P.VIR_ERR_XML_ERROR,
                       f"expecting root element of '{root_tag}', not '{root.tag}'",
                       domain=P.VIR_FROM_XML)
    if validate is not None:
        schema.validate(root, validate)
    return root


@dataclass
class TreeDef:
    """A definition whose model is its canonical element tree (network, pool,
    volume, interface, node device): the modules read fields from the tree
    and print the tree itself."""
    tree: etree._Element

    @property
    def name(self) -> str:
        return self.tree.findtext("name")

    def copy(self) -> Self:
        return type(self)(copy.deepcopy(self.tree))


def missing_attr(attr: str, tag: str) -> VirError:
    return VirError(P.VIR_ERR_XML_ERROR,
                    f"Missing required attribute '{attr}' in element '{tag}'",
                    domain=P.VIR_FROM_XML)


def invalid_attr(attr: str, tag: str, value: str) -> VirError:
    return VirError(P.VIR_ERR_XML_ERROR,
                    f"Invalid value for attribute '{attr}' in element '{tag}': '{value}'.",
                    domain=P.VIR_FROM_XML)
