"""Validation of client XML against pyvirtd's own RelaxNG schemas (schemas/).

The *_VALIDATE flags of define/create calls (virDomainDefineXMLFlags,
virNetworkCreateXMLFlags, virStorageVolCreateXML, ...) ask for the document
to be checked against the schema before it is parsed into the model.  A
failure is reported as libvirt's virXMLValidatorValidate reports it:
VIR_ERR_XML_INVALID_SCHEMA from VIR_FROM_XML, "Unable to validate doc
against SCHEMA" followed by libxml2's own messages, one per line.  lxml uses
the same libxml2 RelaxNG code, so the messages match libvirt's wherever the
grammars have the same shape.

Schemas are compiled once per process and kept: here compiling domain.rng
took about 8 ms, validating a many-device guest about 0.5 ms, so both run
inline like the rest of XML parsing.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from lxml import etree

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

# Document kinds that have a schema, by their file name in schemas/ (capability
# and domaincaps are output only: the tests check what the drivers print).
SCHEMAS = ("capability", "domain", "domaincaps", "domainsnapshot", "interface", "network",
           "nodedev", "nwfilter", "nwfilterbinding", "secret", "storagepool", "storagevol")

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def schema_dir() -> Path:
    """Where the .rng files are: inside the installed package (pyvirtd/schemas,
    see setup.py) or at the top of a source checkout (schemas/)."""
    for candidate in (_PACKAGE_DIR / "schemas", _PACKAGE_DIR.parent / "schemas"):
        if (candidate / "domain.rng").is_file():
            return candidate
    raise FileNotFoundError("pyvirtd's RelaxNG schemas (domain.rng, ...) are not installed")


def schema_path(kind: str) -> Path:
    if kind not in SCHEMAS:
        raise ValueError(f"no schema for {kind!r}")
    return schema_dir() / f"{kind}.rng"


# lxml's RelaxNG objects are not documented as thread-safe, and drivers may
# parse in worker threads; one lock per schema keeps each validation whole.
_locks = {kind: threading.Lock() for kind in SCHEMAS}


@functools.cache
def _compiled(kind: str) -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(schema_path(kind))))


def errors(root: etree._Element, kind: str) -> list[str] | None:
    """libxml2's messages for ``root`` against the ``kind`` schema; None if it validates."""
    rng = _compiled(kind)
    with _locks[kind]:
        if rng.validate(root):
            return None
        return [entry.message for entry in rng.error_log]


def validate(root: etree._Element, kind: str) -> None:
    """Raise libvirt's VIR_ERR_XML_INVALID_SCHEMA if ``root`` does not match the schema."""
    messages = errors(root, kind)
    if messages is None:
        return
    detail = f"Unable to validate doc against {schema_path(kind)}\n" + "".join(
        f"{m}\n" for m in messages)
    raise VirError(P.VIR_ERR_XML_INVALID_SCHEMA, detail, domain=P.VIR_FROM_XML)
