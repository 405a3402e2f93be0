"""A domain's metadata (title, description, namespaced elements) and its rename: what drivers share.

virDomainSetMetadata / virDomainGetMetadata act on the live definition, the
persistent one or both (``--live`` / ``--config`` / ``--current``), as
libvirt's virDomainObjSetMetadata / virDomainObjGetMetadata do in
src/conf/domain_conf.c; the XML side (what an element looks like once it
carries its namespace) is pyvirtd.xml.domain's.  A driver validates a change
on a copy, writes what must survive, then commits to memory, and emits
VIR_DOMAIN_EVENT_ID_METADATA_CHANGE (type, namespace URI) for every change.

`check_rename` holds the checks of virDomainObjListRename that no driver
differs on (its own name, a name in use, a name no file can carry).
"""

from __future__ import annotations

from typing import Any

from pyvirtd.errors import VirError
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
# the flags virDomainSetMetadata / virDomainGetMetadata take
MODIFY_FLAGS = AFFECT_LIVE | AFFECT_CONFIG


def modification_impact(dom: Any, flags: int) -> tuple[bool, bool]:
    """(live, config) that ``flags`` mean for ``dom`` (virDomainObjUpdateModificationImpact).

    Neither flag means the current state: the live definition of a running
    domain, the persistent one of a shut off domain.
    """
    live, config = bool(flags & AFFECT_LIVE), bool(flags & AFFECT_CONFIG)
    if not live and not config:
        live, config = dom.active, not dom.active
    if live and not dom.active:
        raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is not running",
                       domain=P.VIR_FROM_DOMAIN)
    if config and not dom.persistent:
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       "transient domains do not have any persistent config",
                       domain=P.VIR_FROM_DOMAIN)
    return live, config


def one_definition(dom: Any, flags: int) -> domxml.DomainDef:
    """The one definition a read names (virDomainObjGetOneDef): live or config, not both."""
    if flags & AFFECT_LIVE and flags & AFFECT_CONFIG:
        raise VirError(P.VIR_ERR_INVALID_ARG, "Flags 'VIR_DOMAIN_AFFECT_LIVE' and "
                       "'VIR_DOMAIN_AFFECT_CONFIG' are mutually exclusive",
                       domain=P.VIR_FROM_DOMAIN)
    live, _config = modification_impact(dom, flags)
    return dom.definition if live else dom.persistent_def


def get_metadata(dom: Any, kind: int, uri: str | None, flags: int) -> str:
    """What virsh desc / virsh metadata print for ``dom`` (VIR_ERR_NO_DOMAIN_METADATA if unset)."""
    return domxml.get_metadata(one_definition(dom, flags), kind, uri)


def with_metadata(d: domxml.DomainDef, kind: int, metadata: str | None, key: str | None,
                  uri: str | None) -> domxml.DomainDef:
    """A copy of ``d`` with the change made: a bad change fails here, before anything is touched."""
    new = d.copy()
    domxml.set_metadata(new, kind, metadata, key, uri)
    return new


def take_metadata(dst: domxml.DomainDef, src: domxml.DomainDef) -> None:
    """Give ``dst`` the title, description and metadata elements of ``src``, in place
    (a running domain's live definition is shared with its runtime helpers)."""
    dst.title, dst.description, dst.metadata = src.title, src.description, list(src.metadata)


def emit_change(events: Any, dom: Any, kind: int, uri: str | None) -> None:
    """VIR_DOMAIN_EVENT_ID_METADATA_CHANGE: which kind changed, and the namespace of an element."""
    events.emit("domain", P.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, dom.ref(), kind,
                uri if kind == domxml.METADATA_ELEMENT else None)


def check_rename(domains: Any, dom: Any, new_name: str) -> None:
    """The checks of virDomainObjListRename before a driver renames its files:
    the domain's own name, a name another domain has, and (ours, stricter than
    libvirt 9.0's '/' check) any name that could not be a file of its own."""
    if new_name == dom.name:
        raise VirError(P.VIR_ERR_OPERATION_INVALID, "Can't rename domain to itself",
                       domain=P.VIR_FROM_DOMAIN)
    if new_name in domains:
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       f"domain with name '{new_name}' already exists", domain=P.VIR_FROM_DOMAIN)
    check_name("domain", new_name)
