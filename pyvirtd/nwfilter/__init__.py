"""Network filters: libvirt's per-NIC firewall (``<filterref filter='clean-traffic'/>``).

    model.py      <filter> and <filterbinding> XML: parse, check, format
    standard/     the filters pyvirtd ships, with libvirt's names and behaviour
    nft.py        filters expanded per guest NIC into pyvirtd's nftables table
    subsystem.py  the 14 nwfilter procedures, persistence, daemon start

API for hypervisor drivers, where a guest NIC's host device comes up and goes::

    await bind_interface(ctx, dom_name, dom_uuid, iface_elem, "vnet0")  # raises VirError
    ...
    await unbind_interface(ctx, "vnet0")                                # never raises

``bind_interface`` does nothing for an <interface> without <filterref>.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from .model import BindingDef, parse_params
from .subsystem import NWFilterSubsystem

log = logging.getLogger(__name__)

__all__ = ["NWFilterSubsystem", "bind_interface", "unbind_interface"]


async def bind_interface(ctx: Any, owner_name: str, owner_uuid: bytes,
                         iface: etree._Element, portdev: str) -> None:
    """Instantiate the <filterref> of a guest ``iface`` on its host device ``portdev``."""
    ref = iface.find("filterref")
    sub = ctx.shared.get("nwfilter")
    if ref is None or sub is None:
        return
    mac = iface.find("mac")
    binding = BindingDef(owner_name=owner_name, owner_uuid=bytes(owner_uuid), portdev=portdev,
                         mac=(mac.get("address") or "").lower() if mac is not None else "",
                         filter=ref.get("filter", ""), params=parse_params(ref))
    await sub.add_binding(binding)


async def unbind_interface(ctx: Any, portdev: str) -> None:
    """Remove the rules of ``portdev``, if it had any (a guest NIC went away)."""
    sub = ctx.shared.get("nwfilter")
    if sub is None or not portdev:
        return
    try:
        await sub.remove_binding(portdev)
    except Exception:
        log.exception("removing the network filter of %s", portdev)
