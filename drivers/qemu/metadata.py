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

import trio

from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from .driver import QemuDriverState


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
        dom = self._dom(ref)  # type: ignore[attr-defined]
        await md.set_metadata(self.driver, dom, type_, metadata, key, uri, flags)

    async def domain_rename(self, ref: Dom, new_name: str, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainRename", P.VIR_FROM_QEMU)
        drv = self.driver
        dom = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            md.check_renamable(dom, P.VIR_FROM_QEMU)
            if dom.managed_save:
                raise _err("domain with a managed saved state can't be renamed")
            md.check_rename(drv.domains, dom, new_name)
            renamed = dom.definition.copy()
            renamed.name = new_name
            store = drv.store
            snapshots = ((store.snapshot_dir(dom.name), store.snapshot_dir(new_name)),)
            await trio.to_thread.run_sync(md.move_files, store, renamed, dom.name,
                                          dom.autostart, P.VIR_FROM_QEMU, snapshots)
            md.finish_rename(drv, dom, new_name)
        return 0
