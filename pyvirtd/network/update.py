"""net-update: changing one section of a network's live and/or persistent definition.

libvirt's networkUpdate (src/network/bridge_driver.c): AFFECT_LIVE edits the
running definition (and dnsmasq learns it), AFFECT_CONFIG the persistent one;
neither means "live if running, else config".  The edit itself is the XML
model's (`pyvirtd.xml.network.update`); here are the rules around it and the
order of files and memory: both copies are edited and checked, the files
written, and only then does memory change, so a failed write changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import network as netxml

from . import datapath
from .model import UPDATE_AFFECT_CONFIG, UPDATE_AFFECT_LIVE, Network, validate

if TYPE_CHECKING:
    from pyvirtd.driver.store import ObjectStore

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_NETWORK


def edited_copies(net: Network, command: int, section: int, parent_index: int, xml: str,
                  flags: int, check: Callable[[netxml.NetworkDef], None] | None = None
                  ) -> tuple[netxml.NetworkDef | None, netxml.NetworkDef | None]:
    """(live, config): edited copies of the definitions ``flags`` name (None: untouched).

    libvirt's rules on which definitions an update may touch, shared with the
    test driver; nothing of ``net`` changes, so a failure leaves it as it was.
    ``check`` (the daemon's `validate`) runs on each edited copy.
    """
    if not flags & (UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG):
        flags |= UPDATE_AFFECT_LIVE if net.active else UPDATE_AFFECT_CONFIG
    if flags & UPDATE_AFFECT_LIVE and not net.active:
        raise VirError(P.VIR_ERR_OPERATION_INVALID, "network is not running", domain=_FROM)
    if flags & UPDATE_AFFECT_CONFIG and not net.persistent:
        raise VirError(P.VIR_ERR_OPERATION_INVALID,
                       "cannot change persistent config of a transient network", domain=_FROM)
    live = net.definition.copy() if flags & UPDATE_AFFECT_LIVE else None
    config = None
    if flags & UPDATE_AFFECT_CONFIG:
        config = net.config().copy() if net.active else (live or net.definition.copy())
    for target in {id(d): d for d in (config, live) if d is not None}.values():
        netxml.update(target, command, section, parent_index, xml)
        if check is not None:
            check(target)
    return live, config


def commit(net: Network, live: netxml.NetworkDef | None,
           config: netxml.NetworkDef | None) -> None:
    """Memory takes the edited copies (after their files, where there are files)."""
    if config is not None:
        if net.active:
            net.new_def = config
        else:
            net.definition = config
    if live is not None:
        net.definition = live


class UpdateMixin:
    """NETWORK_UPDATE for `NetworkSubsystem` (it provides _lock, _net, _files and store)."""

    _lock: trio.Lock
    store: "ObjectStore"

    async def network_update(self, ref, command: int, section: int, parent_index: int,
                             xml: str, flags: int) -> None:
        check_flags(flags, UPDATE_AFFECT_LIVE | UPDATE_AFFECT_CONFIG, "networkUpdate", _FROM)
        async with self._lock:
            net = self._net(ref)
            live, config = edited_copies(net, command, section, parent_index, xml, flags,
                                         validate)
            # files first, memory after: a failed write changes nothing; a
            # failed status write after the config's puts the old config back
            if config is not None:
                await self.store.write_config(config)
            if live is not None:
                try:
                    await self.store.write_status(live)
                except VirError:
                    if config is not None:
                        await self._restore_config(net)
                    raise
            commit(net, live, config)
            if live is not None:
                await datapath.reload_dnsmasq(live, self._files(net.name), section)

    async def _restore_config(self, net: Network) -> None:
        """Put the config file back as memory has it (a later step failed)."""
        with trio.CancelScope(shield=True):
            try:
                await self.store.write_config(net.config())
            except VirError as exc:
                log.error("network %s: its config file could not be restored: %s",
                          net.name, exc.message)
