"""LXC driver connection: a container's metadata (virsh desc, virsh metadata) and its rename.

Metadata follows lxcDomainSetMetadata / lxcDomainGetMetadata, through the
code every local driver shares (pyvirtd.driver.metadata): live, config or
both, the METADATA_CHANGE event.  libvirt 9.0's LXC driver has no rename;
pyvirtd renames a shut off persistent container as the QEMU driver renames a
guest (its definition and autostart link move to the new name).
"""

from __future__ import annotations

import trio

from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import check_flags
from pyvirtd.rpc import _generated as P

from .driver import LxcDriverState

_FROM = P.VIR_FROM_LXC


class MetadataMixin:
    driver: LxcDriverState

    def domain_get_metadata(self, ref: Dom, type_: int, uri: str | None, flags: int) -> str:
        check_flags(flags, md.MODIFY_FLAGS, "lxcDomainGetMetadata", _FROM)
        return md.get_metadata(self._dom(ref), type_, uri, flags)  # type: ignore[attr-defined]

    async def domain_set_metadata(self, ref: Dom, type_: int, metadata: str | None,
                                  key: str | None, uri: str | None, flags: int) -> None:
        check_flags(flags, md.MODIFY_FLAGS, "lxcDomainSetMetadata", _FROM)
        dom = self._dom(ref)  # type: ignore[attr-defined]
        await md.set_metadata(self.driver, dom, type_, metadata, key, uri, flags)

    async def domain_rename(self, ref: Dom, new_name: str, flags: int) -> int:
        check_flags(flags, 0, "lxcDomainRename", _FROM)
        drv = self.driver
        dom = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            md.check_renamable(dom, _FROM)
            md.check_rename(drv.domains, dom, new_name)
            renamed = dom.definition.copy()
            renamed.name = new_name
            await trio.to_thread.run_sync(md.move_files, drv.store, renamed, dom.name,
                                          dom.autostart, _FROM)
            md.finish_rename(drv, dom, new_name)
        return 0
