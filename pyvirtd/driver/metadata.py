"""A domain's metadata (title, description, namespaced elements) and its rename: what drivers share.

virDomainSetMetadata / virDomainGetMetadata act on the live definition, the
persistent one or both (``--live`` / ``--config`` / ``--current``), as
libvirt's virDomainObjSetMetadata / virDomainObjGetMetadata do in
src/conf/domain_conf.c; the XML side (what an element looks like once it
carries its namespace) is pyvirtd.xml.domain's.  A driver validates a change
on a copy, writes what must survive, then commits to memory, and emits
VIR_DOMAIN_EVENT_ID_METADATA_CHANGE (type, namespace URI) for every change.

`set_metadata` is the whole procedure for a local hypervisor driver (a
`pyvirtd.driver.hypervisor.HypervisorState`).  `check_rename` holds the
checks of virDomainObjListRename that no driver differs on (its own name, a
name in use, a name no file can carry); `move_files` and `finish_rename`
are the rest of a shut off domain's rename that every local driver does
alike: its files under the new name, then the list and the events.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pyvirtd.driver import domains as ds
from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.names import check_name, name_path
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


def check_renamable(dom: Any, error_domain: int) -> None:
    """A rename is only for a shut off, persistent domain (qemuDomainRename's checks,
    the caller holding the domain's lock)."""
    def refuse(message: str) -> VirError:
        return VirError(P.VIR_ERR_OPERATION_INVALID, message, domain=error_domain)
    if dom.active:
        raise refuse("cannot rename active domain")
    if not dom.persistent:
        raise refuse("cannot rename a transient domain")
    if dom.state != ds.SHUTOFF:
        raise refuse("domain has to be shutoff before renaming")


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


async def set_metadata(drv: Any, dom: Any, kind: int, metadata: str | None, key: str | None,
                       uri: str | None, flags: int) -> None:
    """virDomainSetMetadata on a local driver's ``dom`` (the caller checked ``flags``).

    The live definition is kept in the runtime status (a restarted daemon
    keeps it), the persistent one is written before memory changes; every
    change is made on copies first, so a bad one leaves both alone."""
    async with dom.lock:
        live, config = modification_impact(dom, flags)
        new_live = with_metadata(dom.definition, kind, metadata, key, uri) if live else None
        new_config = with_metadata(dom.persistent_def, kind, metadata, key, uri) if config else None
        if new_config is not None:
            await drv.save_config(new_config)
            take_metadata(dom.persistent_def, new_config)
        if new_live is not None:
            take_metadata(dom.definition, new_live)
            await drv.save_status(dom)
    emit_change(drv.events, dom, kind, uri)


def move_files(store: Any, renamed: domxml.DomainDef, old_name: str, autostart: bool,
               error_domain: int, dirs: tuple[tuple[Path, Path], ...] = ()) -> None:
    """Give a shut off domain's files its new name (blocking: for a worker thread).

    ``store`` has ``config_dir``, ``autostart_dir`` and ``delete_config``;
    ``dirs`` are (old, new) directories of the driver's own that move too
    (QEMU's snapshot metadata).  New files first, the old ones removed last:
    a failure on the way undoes what was done and leaves the domain as it
    was.  Logs keep their names, as libvirt's do.
    """
    new_name = renamed.name
    new_cfg = name_path(store.config_dir, new_name, ".xml")
    new_link = name_path(store.autostart_dir, new_name, ".xml")
    undo: list[Any] = []
    try:
        write_atomic(new_cfg, domxml.format(renamed))
        undo.append(lambda: new_cfg.unlink(missing_ok=True))
        if autostart:
            new_link.parent.mkdir(parents=True, exist_ok=True)
            new_link.unlink(missing_ok=True)
            new_link.symlink_to(new_cfg)
            undo.append(lambda: new_link.unlink(missing_ok=True))
        for old_dir, new_dir in dirs:
            if old_dir.is_dir():
                if new_dir.exists():
                    raise FileExistsError(17, "File exists", str(new_dir))
                os.rename(old_dir, new_dir)
                undo.append(lambda o=old_dir, n=new_dir: os.rename(n, o))
    except OSError as exc:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                pass
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"cannot rename domain '{old_name}' to "
                       f"'{new_name}': {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                       domain=error_domain) from None
    store.delete_config(old_name)   # the old autostart link, then the old definition


def finish_rename(drv: Any, dom: Any, new_name: str) -> None:
    """After `move_files`: the domain under its new name in the driver's list, and
    the events libvirt sends (undefined/renamed for the old name, defined/renamed)."""
    old_ref = dom.ref()
    drv.domains.rename(dom, new_name, _set_name)
    drv.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, old_ref,
                    ds.EV_UNDEFINED, ds.UNDEFINED_RENAMED)
    drv.emit(dom, ds.EV_DEFINED, ds.DEFINED_RENAMED)


def _set_name(dom: Any, name: str) -> None:
    dom.definition.name = name
