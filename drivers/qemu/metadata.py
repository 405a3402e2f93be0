"""QEMU driver connection: a guest's metadata (virsh desc, virsh metadata) and its rename (domrename).

Metadata changes follow libvirt's qemuDomainSetMetadata: the live definition
(saved in the runtime status, so a restarted daemon keeps it), the persistent
one (written before memory changes), or both; each change is announced with
the METADATA_CHANGE event.  A rename follows qemuDomainRename: only a shut
off persistent guest without a managed save image; its definition, autostart
link and snapshot metadata move to the new name, the old ones go last, and a
failure half way puts back what had moved.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.files import write_atomic
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from .driver import QemuDriverState
from .guest import QemuDomain


def _err(message: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, message, domain=P.VIR_FROM_QEMU)


class MetadataMixin:
    driver: QemuDriverState

    def domain_get_metadata(self, ref: Dom, type_: int, uri: str | None, flags: int) -> str:
        check_flags(flags, md.MODIFY_FLAGS, "qemuDomainGetMetadata", P.VIR_FROM_QEMU)
        dom = self._dom(ref)  # type: ignore[attr-defined]
        return md.get_metadata(dom, type_, uri, flags)

    async def domain_set_metadata(self, ref: Dom, type_: int, metadata: str | None,
                                  key: str | None, uri: str | None, flags: int) -> None:
        check_flags(flags, md.MODIFY_FLAGS, "qemuDomainSetMetadata", P.VIR_FROM_QEMU)
        drv = self.driver
        dom = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            live, config = md.modification_impact(dom, flags)
            # every change made on copies first: a bad one leaves both definitions alone
            new_live = md.with_metadata(dom.definition, type_, metadata, key, uri) if live else None
            new_config = (md.with_metadata(dom.persistent_def, type_, metadata, key, uri)
                          if config else None)
            if new_config is not None:
                await drv.save_config(new_config)
                md.take_metadata(dom.persistent_def, new_config)
            if new_live is not None:
                md.take_metadata(dom.definition, new_live)
                await drv.save_status(dom)
        md.emit_change(drv.events, dom, type_, uri)

    async def domain_rename(self, ref: Dom, new_name: str, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainRename", P.VIR_FROM_QEMU)
        drv = self.driver
        dom = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            if dom.active:
                raise _err("cannot rename active domain")
            if not dom.persistent:
                raise _err("cannot rename a transient domain")
            if dom.managed_save:
                raise _err("domain with a managed saved state can't be renamed")
            if dom.state != ds.SHUTOFF:
                raise _err("domain has to be shutoff before renaming")
            md.check_rename(drv.domains, dom, new_name)
            old_name, old_ref = dom.name, dom.ref()
            renamed = dom.definition.copy()
            renamed.name = new_name
            await trio.to_thread.run_sync(_move_files, drv, renamed, old_name, dom.autostart)
            drv.domains.rename(dom, new_name, _set_name)
        drv.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, old_ref,
                        ds.EV_UNDEFINED, ds.UNDEFINED_RENAMED)
        drv.emit(dom, ds.EV_DEFINED, ds.DEFINED_RENAMED)
        return 0


def _set_name(dom: QemuDomain, name: str) -> None:
    dom.definition.name = name


def _move_files(drv: QemuDriverState, renamed: domxml.DomainDef, old_name: str,
                autostart: bool) -> None:
    """Give a shut off guest's files its new name (blocking: for a worker thread).

    New files first (the definition, the autostart link, the snapshot
    directory moved), the old ones removed last: a failure on the way undoes
    what was done and leaves the guest as it was.  The log keeps its name,
    as libvirt's does.
    """
    store = drv.store
    new_name = renamed.name
    new_cfg = name_path(store.config_dir, new_name, ".xml")
    new_link = name_path(store.autostart_dir, new_name, ".xml")
    old_snap, new_snap = store.snapshot_dir(old_name), store.snapshot_dir(new_name)
    undo: list[Any] = []
    try:
        write_atomic(new_cfg, domxml.format(renamed))
        undo.append(lambda: new_cfg.unlink(missing_ok=True))
        if autostart:
            new_link.parent.mkdir(parents=True, exist_ok=True)
            new_link.unlink(missing_ok=True)
            new_link.symlink_to(new_cfg)
            undo.append(lambda: new_link.unlink(missing_ok=True))
        if old_snap.is_dir():
            if new_snap.exists():
                raise FileExistsError(17, "File exists", str(new_snap))
            os.rename(old_snap, new_snap)
            undo.append(lambda: os.rename(new_snap, old_snap))
    except OSError as exc:
        for step in reversed(undo):
            try:
                step()
            except OSError:
                pass
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"cannot rename domain '{old_name}' to "
                       f"'{new_name}': {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                       domain=P.VIR_FROM_QEMU) from None
    store.delete_config(old_name)   # the old autostart link, then the old definition

