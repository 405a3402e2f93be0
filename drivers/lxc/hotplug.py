"""LXC driver connection: NICs and bind mounts attached to and detached from containers.

NICs follow lxcDomainAttachDeviceNetLive / lxcDomainDetachDeviceNetLive: a
veth pair is made as at start (driver.plug_interface: type network, bridge
or ethernet), its peer moved into the container's network namespace; here
it is also given its guest name, addresses and routes and brought up, as
the NICs a container starts with are (libvirt leaves a hot-added one down,
under the kernel's name).  Detaching deletes the host end, which takes the
peer with it.  In the definition (--config) NICs come and go as libvirt's
lxcDomainAttach/DetachDeviceConfig do.

<filesystem type='mount'> is pyvirtd's beyond libvirt 9.0 (which refuses
"device type 'filesystem' cannot be attached"): a running container gets
the host directory bind-mounted at the target inside its own mount
namespace (mountin.py, a short-lived helper: entering a mount namespace
needs a single-threaded process), read-only with <readonly/>; detaching
unmounts it.  In the config a filesystem is added or removed like a NIC.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from lxml import etree

from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml

from .domains import error
from .driver import LxcDomain, LxcDriverState, run_in_container

_FROM = P.VIR_FROM_LXC
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
# libvirt's device type names (virDomainDeviceType) in its errors
_TYPE_NAMES = {"interface": "net"}


def _type_name(tag: str) -> str:
    return _TYPE_NAMES.get(tag, tag)


def parse_device(xml: str, defn: domxml.DomainDef) -> etree._Element:
    """A client's device XML; a NIC gets its defaults (a generated MAC)."""
    elem = devmod.parse_device_xml(xml)
    if elem.tag == "interface":
        dev = devmod.MODELS["interface"].parse(elem)
        dev.fill_defaults(devmod.device_ctx(defn))
        dev.validate()
        elem = dev.to_element()
    elif elem.tag == "filesystem":
        _check_filesystem(elem)
    return elem


def _check_filesystem(fs: etree._Element) -> None:
    kind = fs.get("type", "mount")
    src, target = fs.find("source"), fs.find("target")
    if kind != "mount":
        raise error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                    f"Unsupported filesystem type {kind} for a running container")
    if src is None or not src.get("dir"):
        raise VirError(P.VIR_ERR_XML_ERROR, "missing source for filesystem",
                       domain=P.VIR_FROM_DOMAIN)
    if target is None or not target.get("dir"):
        raise VirError(P.VIR_ERR_XML_ERROR, "missing target information for filesystem",
                       domain=P.VIR_FROM_DOMAIN)
    if target.get("dir") == "/":
        raise error(P.VIR_ERR_OPERATION_INVALID, "the root filesystem cannot be changed")


def _mac(elem: etree._Element) -> str | None:
    m = elem.find("mac")
    return m.get("address").lower() if m is not None and m.get("address") else None


def _fs_target(elem: etree._Element) -> str | None:
    t = elem.find("target")
    return t.get("dir") if t is not None else None


def find_device(defn: domxml.DomainDef, match: etree._Element) -> etree._Element:
    """The NIC (by MAC) or filesystem (by target) of ``defn`` that ``match`` names."""
    if match.tag == "interface":
        mac = _mac(match)
        found = [i for i in defn.devices_of("interface") if mac is None or _mac(i) == mac]
        if len(found) > 1:
            raise error(P.VIR_ERR_OPERATION_FAILED,
                        f"multiple devices matching MAC address {mac} found")
        if not found:
            raise error(P.VIR_ERR_DEVICE_MISSING, f"no device matching MAC address {mac} found")
        return found[0]
    target = _fs_target(match)
    for fs in defn.devices_of("filesystem"):
        if _fs_target(fs) == target:
            return fs
    raise error(P.VIR_ERR_DEVICE_MISSING, f"no target device {target}")


def _insert(defn: domxml.DomainDef, elem: etree._Element) -> None:
    """After the last device of the same kind, where libvirt lists it."""
    same = [i for i, d in enumerate(defn.devices) if d.tag == elem.tag]
    defn.devices.insert(same[-1] + 1 if same else len(defn.devices), elem)


def _attach_config(defn: domxml.DomainDef, elem: etree._Element) -> None:
    if elem.tag == "filesystem":
        target = _fs_target(elem)
        if any(_fs_target(fs) == target for fs in defn.devices_of("filesystem")):
            raise error(P.VIR_ERR_OPERATION_INVALID, f"target {target} already exists")
    elif elem.tag != "interface":
        raise error(P.VIR_ERR_CONFIG_UNSUPPORTED, "persistent attach of device is not supported")
    _insert(defn, elem)


class HotplugMixin:
    driver: LxcDriverState

    async def _modify(self, ref: Dom, xml: str, flags: int, function: str,
                      on_config: Callable[[domxml.DomainDef, etree._Element], None],
                      on_live: Callable[[LxcDomain, etree._Element], Awaitable[None]]) -> None:
        """The frame of attach and detach: flags checked, the container's lock held,
        the config change prepared first and saved only after the live one succeeded."""
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, function, _FROM)
        dom: LxcDomain = self._dom(ref)  # type: ignore[attr-defined]
        async with dom.lock:
            live, config = md.modification_impact(dom, flags)
            new_config = None
            if config:
                new_config = dom.persistent_def.copy()
                on_config(new_config, parse_device(xml, new_config))
            if live:
                await on_live(dom, parse_device(xml, dom.definition))
                await self.driver.save_status(dom)
            if new_config is not None:
                await self._commit_config(dom, new_config)

    async def domain_attach_device(self, ref: Dom, xml: str) -> None:
        await self.domain_attach_device_flags(ref, xml, AFFECT_LIVE)

    async def domain_attach_device_flags(self, ref: Dom, xml: str, flags: int) -> None:
        async def on_live(dom: LxcDomain, elem: etree._Element) -> None:
            if elem.tag == "interface":
                await self._attach_nic(dom, elem)
            elif elem.tag == "filesystem":
                await self._attach_filesystem(dom, elem)
            else:
                raise error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                            f"device type '{_type_name(elem.tag)}' cannot be attached")

        await self._modify(ref, xml, flags, "lxcDomainAttachDeviceFlags", _attach_config, on_live)

    async def domain_detach_device(self, ref: Dom, xml: str) -> None:
        await self.domain_detach_device_flags(ref, xml, AFFECT_LIVE)

    async def domain_detach_device_flags(self, ref: Dom, xml: str, flags: int) -> None:
        def on_config(defn: domxml.DomainDef, match: etree._Element) -> None:
            if match.tag not in ("interface", "filesystem"):
                raise error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                            "persistent detach of device is not supported")
            defn.devices.remove(find_device(defn, match))

        async def on_live(dom: LxcDomain, match: etree._Element) -> None:
            if match.tag not in ("interface", "filesystem"):
                raise error(P.VIR_ERR_CONFIG_UNSUPPORTED,
                            f"device type '{_type_name(match.tag)}' cannot be detached")
            elem = find_device(dom.definition, match)
            if elem.tag == "interface":
                await self._detach_nic(dom, elem)
            else:
                await self._detach_filesystem(dom, elem)
            dom.definition.devices.remove(elem)

        await self._modify(ref, xml, flags, "lxcDomainDetachDeviceFlags", on_config, on_live)

    async def _commit_config(self, dom: LxcDomain, new_config: domxml.DomainDef) -> None:
        await self.driver.save_config(new_config)
        if dom.active:
            dom.new_def = new_config
        else:
            dom.definition = new_config

    # -- NICs
    async def _attach_nic(self, dom: LxcDomain, elem: etree._Element) -> None:
        if not dom.init_pid:
            raise error(P.VIR_ERR_OPERATION_INVALID, "Init pid is not yet available")
        mac = _mac(elem)
        if any(_mac(i) == mac for i in dom.definition.devices_of("interface")):
            raise error(P.VIR_ERR_OPERATION_INVALID,
                        f"a device with MAC address {mac} is already in the domain")
        index = len(dom.definition.devices_of("interface"))
        host, cfg = await self.driver.plug_interface(dom.definition, elem, index)
        try:
            await trio.to_thread.run_sync(_move_in, dom.init_pid, cfg)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.driver.unplug([host], [elem])
            raise
        _insert(dom.definition, elem)
        dom.veths.append(host)

    async def _detach_nic(self, dom: LxcDomain, elem: etree._Element) -> None:
        if elem.get("type") not in ("network", "bridge", "ethernet"):
            raise error(P.VIR_ERR_CONFIG_UNSUPPORTED, "Only bridged veth devices can be detached")
        target = elem.find("target")
        host = target.get("dev") if target is not None else None
        await self.driver.unplug([host] if host else [], [elem])
        if host in dom.veths:
            dom.veths.remove(host)

    # -- bind mounts
    async def _attach_filesystem(self, dom: LxcDomain, elem: etree._Element) -> None:
        target = _fs_target(elem)
        if any(_fs_target(fs) == target for fs in dom.definition.devices_of("filesystem")):
            raise error(P.VIR_ERR_OPERATION_INVALID, f"target {target} already exists")
        source = elem.find("source").get("dir")
        readonly = elem.find("readonly") is not None
        await run_in_container(dom, "mount", source, target, "ro" if readonly else "rw")
        _insert(dom.definition, elem)

    async def _detach_filesystem(self, dom: LxcDomain, elem: etree._Element) -> None:
        target = _fs_target(elem)
        if target == "/":
            raise error(P.VIR_ERR_OPERATION_INVALID, "the root filesystem cannot be changed")
        await run_in_container(dom, "umount", "-", target, "-")


def _move_in(init_pid: int, cfg: dict[str, Any]) -> None:
    """Move a veth peer into init's network namespace and set it up there (blocking)."""
    from pyroute2 import IPRoute

    from .container import ContainerError, configure_interface

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=cfg["peer"])
        if not idx:
            raise error(P.VIR_ERR_INTERNAL_ERROR, f"Cannot find interface {cfg['peer']}")
        ipr.link("set", index=idx[0], net_ns_pid=init_pid)
    try:
        with IPRoute(netns=f"/proc/{init_pid}/ns/net", flags=0) as inside:
            configure_interface(inside, cfg)
    except (ContainerError, OSError) as exc:
        raise error(P.VIR_ERR_SYSTEM_ERROR,
                    f"Unable to set up interface {cfg['guest']} in the container: {exc}") from None
