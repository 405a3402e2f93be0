"""Device hotplug of the QEMU driver: attach and detach disks and NICs (qemu_hotplug.c).

Procedures (HotplugMixin, on the connection): DOMAIN_ATTACH_DEVICE(_FLAGS),
DOMAIN_DETACH_DEVICE(_FLAGS), DOMAIN_DETACH_DEVICE_ALIAS, and
DOMAIN_UPDATE_DEVICE_FLAGS for the media of a CD-ROM (virsh change-media).  The flags are
libvirt's virDomainDeviceModifyFlags: --live changes the running QEMU and its
live definition, --config the persistent definition, --current (0) whichever
the guest's state means; the plain ATTACH/DETACH_DEVICE calls mean --live.

Live attach follows libvirt's modern path: a disk gets two block nodes
(``blockdev-add`` of the file, then of its format, named ``libvirt-N-storage``
and ``libvirt-N-format`` with N after the highest QEMU already has) and a
``device_add``; a NIC gets a tap (interfaces.plug_one), handed to QEMU with
``getfd`` over the monitor socket, a ``netdev_add`` and a ``device_add``.  On a
q35 machine a PCI device needs a free pcie-root-port (pcie.0 cannot take
hotplugged devices), as libvirt's address allocation; on pc, QEMU places it
on pci.0.  A failed step undoes the earlier ones.

Live detach sends ``device_del`` and waits for QEMU's DEVICE_DELETED, which
comes only once the guest has let go of a PCI device.  libvirt waits
REMOVE_WAIT seconds and then returns success anyway with the removal still
pending; whenever DEVICE_DELETED arrives (even after a daemon restart), the
backend is removed (``blockdev-del`` / ``netdev_del`` and the tap), the
device leaves the live definition and DEVICE_REMOVED is emitted.  A guest
that refuses (DEVICE_UNPLUG_GUEST_ERROR) gets DEVICE_REMOVAL_FAILED.
DETACH_DEVICE_ALIAS does not wait at all, as libvirt's.

A media change follows qemuDomainChangeMediaBlockdev: the new image's nodes
are added, then ``blockdev-open-tray`` (forced with VIR_DOMAIN_DEVICE_MODIFY_FORCE),
``blockdev-remove-medium``, ``blockdev-insert-medium`` and
``blockdev-close-tray``; the old nodes go last.  QEMU reports the tray moving
(DEVICE_TRAY_MOVED, guest_events.py: TRAY_CHANGE events).

The live definition is persisted (status.py) after every change, so a
restarted daemon knows the hotplugged devices.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio
from lxml import etree

from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml.devices import Controller, Disk, Interface
from pyvirtd.xml.devices.interface import MODELS as NIC_MODELS

from pyvirtd.driver import interfaces

from . import dac, devacl, disksecrets, memory
from .defaults import DEVICE_DEFAULTS
from .devprops import SCSI_MODELS, Placement, device_alias, disk_bus, error_policy_props

if TYPE_CHECKING:
    from .guest import QemuDomain, QemuState

log = logging.getLogger(__name__)

# virDomainDeviceModifyFlags
AFFECT_CURRENT = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CURRENT
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
DEVICE_MODIFY_FORCE = P.DomainDeviceModifyFlags.VIR_DOMAIN_DEVICE_MODIFY_FORCE
# How long a detach waits for the guest to release the device
# (qemu_hotplug.c: qemuDomainRemoveDeviceWaitTime, 5 s).
REMOVE_WAIT = 5.0
# libvirt's device type names (virDomainDeviceType) in "... of device 'X'" errors.
_TYPE_NAMES = {"interface": "net", "serial": "chr", "console": "chr", "channel": "chr",
               "parallel": "chr", "filesystem": "filesystem"}
# disk buses QEMU can hot(un)plug (qemuDomainAttachDeviceDiskLiveInternal)
_HOTPLUG_BUSES = ("virtio", "scsi", "usb")
_NODE_RE = re.compile(r"^libvirt-(\d+)-")


@dataclass
class Unplug:
    """A removal asked of QEMU and not yet confirmed by DEVICE_DELETED."""
    done: trio.Event = field(default_factory=trio.Event)
    nodes: list[str] = field(default_factory=list)   # block nodes to delete afterwards
    rejected: bool = False                            # the guest refused


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=P.VIR_FROM_QEMU)


def modification_impact(dom: "QemuDomain", flags: int) -> tuple[bool, bool]:
    """(live, config) that ``flags`` mean for ``dom`` (virDomainObjUpdateModificationImpact)."""
    live, config = bool(flags & AFFECT_LIVE), bool(flags & AFFECT_CONFIG)
    if not live and not config:
        live, config = dom.active, not dom.active
    if live and not dom.active:
        raise _err(P.VIR_ERR_OPERATION_INVALID, "domain is not running")
    if config and not dom.persistent:
        raise _err(P.VIR_ERR_OPERATION_INVALID,
                   "transient domains do not have any persistent config")
    return live, config


def _type_name(tag: str) -> str:
    return _TYPE_NAMES.get(tag, tag)


def parse_device(xml: str, defn: domxml.DomainDef) -> etree._Element:
    """A client's device XML with libvirt's QEMU defaults filled in (disk or interface)."""
    elem = devmod.parse_device_xml(xml)
    model = devmod.MODELS.get(elem.tag)
    if model not in (Disk, Interface):
        return elem            # refused by the caller, naming what it is
    dev = model.parse(elem)
    ctx = devmod.device_ctx(defn)
    dev.fill_defaults(ctx)
    DEVICE_DEFAULTS.device(dev, ctx)
    dev.validate()
    return dev.to_element()


def _alias(elem: etree._Element) -> str | None:
    a = elem.find("alias")
    return a.get("name") if a is not None else None


def _set_alias(elem: etree._Element, alias: str) -> None:
    a = elem.find("alias")
    if a is None:
        a = etree.SubElement(elem, "alias")
    a.set("name", alias)


def _target(elem: etree._Element) -> str | None:
    t = elem.find("target")
    return t.get("dev") if t is not None else None


def _mac(elem: etree._Element) -> str | None:
    m = elem.find("mac")
    return m.get("address").lower() if m is not None and m.get("address") else None


def _insert(defn: domxml.DomainDef, elem: etree._Element) -> None:
    """After the last device of the same kind, where libvirt lists it."""
    same = [i for i, d in enumerate(defn.devices) if d.tag == elem.tag]
    at = same[-1] + 1 if same else len(defn.devices)
    defn.devices.insert(at, elem)


# -- finding devices ----------------------------------------------------------

def find_disk(defn: domxml.DomainDef, target: str | None) -> etree._Element | None:
    return next((d for d in defn.devices_of("disk") if _target(d) == target), None)


def find_interface(defn: domxml.DomainDef, match: etree._Element) -> etree._Element:
    """The <interface> ``match`` designates (virDomainNetFindIdx): by MAC, PCI address
    and alias when given; exactly one must fit."""
    mac = _mac(match)
    addr = match.find("address")
    alias = _alias(match)
    found = []
    for iface in defn.devices_of("interface"):
        if mac is not None and _mac(iface) != mac:
            continue
        if addr is not None and addr.get("type") == "pci":
            mine = iface.find("address")
            if mine is None or any(int(mine.get(k, "0"), 0) != int(addr.get(k, "0"), 0)
                                   for k in ("domain", "bus", "slot", "function")):
                continue
        if alias is not None and _alias(iface) != alias:
            continue
        found.append(iface)
    if len(found) > 1:
        what = f"MAC address {mac}" if mac else "the definition"
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"multiple devices matching {what} found")
    if not found:
        if mac is not None:
            raise _err(P.VIR_ERR_DEVICE_MISSING, f"no device matching MAC address {mac} found")
        raise _err(P.VIR_ERR_DEVICE_MISSING, "no matching device found")
    return found[0]


def find_by_alias(defn: domxml.DomainDef, alias: str) -> etree._Element | None:
    return next((d for d in defn.devices if _alias(d) == alias), None)


# -- PCI placement --------------------------------------------------------------

def _pci_address(live: domxml.DomainDef) -> dict[str, str]:
    """Where a hotplugged PCI device goes, as libvirt's address allocation puts it:
    a free pcie-root-port on q35 (pcie.0 cannot take hotplugged devices), the
    lowest free slot of pci.0 on pc."""
    used: set[tuple[int, int]] = set()
    for dev in live.devices:
        a = dev.find("address")
        if a is not None and a.get("type") == "pci":
            used.add((int(a.get("bus", "0"), 0), int(a.get("slot", "0"), 0)))
    if not devmod.is_q35(live.machine):
        taken = {slot for bus, slot in used if bus == 0} | {0, 1}
        if any(v.find("model") is None or v.find("model").get("type") != "none"
               for v in live.devices_of("video")):
            taken.add(2)                  # the primary video's, used or not
        slot = next((n for n in range(3, 32) if n not in taken), None)
        if slot is None:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, "No more available PCI slots")
        return {"type": "pci", "domain": "0x0000", "bus": "0x00", "slot": f"0x{slot:02x}",
                "function": "0x0"}
    for c in live.devices_of("controller"):
        if c.get("type") == "pci" and c.get("model") == "pcie-root-port":
            index = int(c.get("index", "0"))
            if index not in {bus for bus, _ in used}:
                return {"type": "pci", "domain": "0x0000", "bus": f"0x{index:02x}",
                        "slot": "0x00", "function": "0x0"}
    raise _err(P.VIR_ERR_INTERNAL_ERROR, "No more available PCI slots")


def _pci_props(addr: dict[str, str]) -> dict[str, str]:
    """device_add's bus= and addr= for an address from _pci_address."""
    bus = int(addr["bus"], 0)
    return {"bus": f"pci.{bus}", "addr": f"0x{int(addr['slot'], 0):x}"}


def _set_address(elem: etree._Element, attrs: dict[str, str]) -> None:
    old = elem.find("address")
    if old is not None:
        elem.remove(old)
    etree.SubElement(elem, "address", **attrs)


def _props(pairs: list[tuple[str, object]]) -> dict:
    return {k: v for k, v in pairs if v is not None}


# -- live attach -------------------------------------------------------------------

async def _next_node_index(mon: Any) -> int:
    used = [int(m.group(1)) for n in await mon.query_block_nodes() if (m := _NODE_RE.match(n))]
    return max(used, default=0) + 1


def _resolve_volume(state: "QemuState", disk: Disk) -> tuple[str, str | None]:
    """<disk type='volume'>: the volume's path and format, from the storage service."""
    vol = state.ctx.services.storage.resolve_volume(disk.pool, disk.volume)
    return vol.path, vol.format


async def attach_disk_live(state: "QemuState", dom: "QemuDomain",
                           elem: etree._Element) -> str:
    """Hotplug one disk into the running QEMU; returns its alias."""
    live, mon = dom.definition, dom.monitor
    disk = Disk.parse(elem)
    if find_disk(live, disk.target) is not None:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"target {disk.target} already exists")
    if disk.bus not in _HOTPLUG_BUSES:
        raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED, f"disk bus '{disk.bus}' cannot be hotplugged.")
    b = Placement.for_live(live)
    if disk.bus == "scsi":
        ctl = disk.address.int("controller") if disk.address is not None else 0
        if ("scsi", ctl) not in b.controllers:
            await _attach_scsi_controller(dom, ctl)
            b = Placement.for_live(live)
    if disk.bus == "virtio" and disk.address is None:
        addr = _pci_address(live)
        disk.address = devmod.Address("pci", {k: v for k, v in addr.items() if k != "type"})
    alias = device_alias(disk, {}, b.q35)
    if find_by_alias(live, alias) is not None:
        raise _err(P.VIR_ERR_OPERATION_FAILED, f"target {disk.target} already exists")
    nodes = await _add_nodes(state, dom, disk, disk.readonly)
    try:
        await mon.device_add(_props([*disk_bus(b, disk), ("drive", nodes[-1]), ("id", alias),
                                     *error_policy_props(disk)]))
    except BaseException:
        with trio.CancelScope(shield=True):
            await _del_nodes(mon, nodes, disksecrets.disk_encryption(disk) is not None)
            await _unlabel(state, dom, _disk_file(state, disk)[0])
        raise
    disk.alias = alias
    _insert(live, disk.to_element())
    return alias


async def _attach_scsi_controller(dom: "QemuDomain", index: int) -> None:
    """The SCSI controller a hotplugged SCSI disk needs, hotplugged first with the
    default model (qemuDomainFindOrCreateSCSIDiskController)."""
    live = dom.definition
    cont = Controller(type="scsi", index=index)
    cont.fill_defaults(devmod.device_ctx(live))
    cont.alias = cont.qemu_id
    props: dict = {"driver": SCSI_MODELS[cont.model], "id": cont.alias}
    addr = _pci_address(live)
    cont.address = devmod.Address("pci", {k: v for k, v in addr.items() if k != "type"})
    props.update(_pci_props(addr))
    await dom.monitor.device_add(props)
    _insert(live, cont.to_element())


def _next_net_alias(live: domxml.DomainDef) -> str:
    used = [int(a[3:]) for d in live.devices_of("interface")
            if (a := _alias(d)) and a.startswith("net") and a[3:].isdigit()]
    return f"net{max(used, default=-1) + 1}"


async def attach_interface_live(state: "QemuState", dom: "QemuDomain",
                                elem: etree._Element) -> str:
    """Hotplug one NIC: tap, getfd, netdev_add, device_add; returns its alias."""
    live, mon = dom.definition, dom.monitor
    iface = Interface.parse(elem)
    alias = _next_net_alias(live)
    netdev = f"host{alias}"
    model = NIC_MODELS[iface.model or "rtl8139"]
    addr = _pci_address(live) if model != "usb-net" else None
    elem = iface.to_element()
    try:
        made = await interfaces.plug_one(state, dom, elem, live)
    except BaseException:
        with trio.CancelScope(shield=True):   # a network port taken before the failure
            await interfaces.unplug_all(state, [], [elem])
        raise
    netdev_added = False
    try:
        if made is not None:
            tap, _mac_addr, fd = made
            try:
                await mon.getfd(fd, f"fd-{alias}")
            finally:
                os.close(fd)
            await mon.netdev_add({"type": "tap", "id": netdev, "fd": f"fd-{alias}"})
        elif iface.type == "user":
            await mon.netdev_add({"type": "user", "id": netdev})
        elif iface.type == "ethernet" and iface.target_dev:
            await mon.netdev_add({"type": "tap", "id": netdev, "ifname": iface.target_dev,
                                  "script": "no", "downscript": "no"})
        else:
            raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       f"live attach of interface type '{iface.type}' is not supported")
        netdev_added = True
        props: dict = {"driver": model, "netdev": netdev, "id": alias, "mac": iface.mac}
        if model == "usb-net":
            props["bus"] = "usb.0"
        elif addr is not None:
            props.update(_pci_props(addr))
        if iface.mtu is not None and model.startswith("virtio"):
            props["host_mtu"] = iface.mtu
        await mon.device_add(props)
    except BaseException:
        with trio.CancelScope(shield=True):
            if netdev_added:
                try:
                    await mon.netdev_del(netdev)
                except VirError as exc:
                    log.warning("%s: undoing netdev_add %s: %s", dom.name, netdev, exc)
            if made is not None:
                await interfaces.unplug_all(state, [(made[0], made[1])], [elem])
        raise
    _set_alias(elem, alias)
    if addr is not None:
        _set_address(elem, addr)
    _insert(live, elem)
    return alias


# -- live detach ---------------------------------------------------------------------

async def _disk_nodes(mon: Any, alias: str) -> list[str]:
    """The block nodes under a disk's device: its format node and that node's storage."""
    for blk in await mon.query_block():
        qdev = blk.get("qdev", "")
        if qdev == alias or qdev.endswith(f"/{alias}") or \
                qdev == f"/machine/peripheral/{alias}/virtio-backend":
            node = (blk.get("inserted") or {}).get("node-name")
            if node:
                nodes = [node]
                if node.endswith("-format"):
                    nodes.append(node[:-len("-format")] + "-storage")
                return nodes
    return []


async def request_removal(state: "QemuState", dom: "QemuDomain", elem: etree._Element,
                          wait: bool) -> None:
    """device_del, then (``wait``) up to REMOVE_WAIT s for the removal to complete."""
    mon = dom.monitor
    alias = _alias(elem)
    if alias is None:
        raise _err(P.VIR_ERR_OPERATION_FAILED, "device has no alias: it cannot be detached")
    pending = dom.unplugging.get(alias)
    if pending is None:
        pending = Unplug()
        if elem.tag == "disk":
            pending.nodes = await _disk_nodes(mon, alias)
        dom.unplugging[alias] = pending
    try:
        await mon.device_del(alias)
    except BaseException:
        dom.unplugging.pop(alias, None)
        raise
    if not wait:
        return
    with trio.move_on_after(REMOVE_WAIT):
        await pending.done.wait()
    if pending.rejected:
        raise _err(P.VIR_ERR_OPERATION_FAILED, "unplug of device was rejected by the guest")
    # not done yet: the removal completes when QEMU reports it (libvirt returns 0 too)


async def on_device_deleted(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """QEMU's DEVICE_DELETED: finish the removal (qemuDomainRemoveDevice) and tell clients."""
    alias = data.get("device")
    if not alias:
        return                  # a device's internal child (its path only)
    pending = dom.unplugging.pop(alias, None)
    live, mon = dom.definition, dom.monitor
    elem = find_by_alias(live, alias)
    try:
        if elem is not None and mon is not None:
            if elem.tag == "disk":
                disk = Disk.parse(elem)
                nodes = pending.nodes if pending is not None and pending.nodes else \
                    await _nodes_by_file(mon, disk.path)
                await _del_nodes(mon, nodes, disksecrets.disk_encryption(disk) is not None)
                await _unlabel_disk(state, dom, elem)
            elif elem.tag == "interface":
                try:
                    await mon.netdev_del(f"host{alias}")
                except VirError as exc:
                    log.warning("%s: netdev_del host%s: %s", dom.name, alias, exc)
                target = elem.find("target")
                if target is not None and target.get("dev") and \
                        elem.get("type") in ("network", "bridge", "direct"):
                    await interfaces.unplug_all(state, [(target.get("dev"), _mac(elem) or "")],
                                                [elem])
            live.devices.remove(elem)
            await state.save_status(dom)
            state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, dom.ref(), alias)
    finally:
        if pending is not None:
            pending.done.set()


async def _nodes_by_file(mon: Any, path: str | None) -> list[str]:
    """Our block nodes opened on ``path``: after a daemon restart
    nothing recorded which nodes a pending removal left behind."""
    if not path:
        return []
    nodes = await mon.execute("query-named-block-nodes", {"flat": True})
    return [n["node-name"] for n in nodes
            if n.get("file") == path and _NODE_RE.match(n.get("node-name", ""))]


def on_unplug_guest_error(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """DEVICE_UNPLUG_GUEST_ERROR: the guest refused (qemuProcessHandleDeviceUnplugErr)."""
    alias = data.get("device")
    if not alias:
        return
    pending = dom.unplugging.pop(alias, None)
    if pending is not None:
        pending.rejected = True
        pending.done.set()
    state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, dom.ref(), alias)


# -- media change -------------------------------------------------------------------

async def _add_nodes(state: "QemuState", dom: "QemuDomain", disk: Disk,
                     read_only: bool) -> list[str]:
    """blockdev-add the image of ``disk``: [storage, format] node names (format last).

    A confined QEMU gets the image labelled first (dac.py), as at start."""
    mon = dom.monitor
    path, fmt = _disk_file(state, disk)
    enc = disksecrets.disk_encryption(disk)
    value = disksecrets.passphrase(state, enc) if enc is not None else None
    await _label(state, dom, path, read_only)
    try:
        n = await _next_node_index(mon)
        storage, node = f"libvirt-{n}-storage", f"libvirt-{n}-format"
        secret = await _add_secret(state, dom, node, value) if value is not None else None
        props = {"node-name": node, "read-only": read_only, "driver": fmt or "raw",
                 "file": storage}
        if secret is not None:
            disksecrets.encrypt_format_node(props, secret)
        try:
            await mon.blockdev_add({"driver": "host_device" if disk.type == "block" else "file",
                                    "filename": path, "node-name": storage,
                                    "auto-read-only": True, "discard": "unmap"})
            try:
                await mon.blockdev_add(props)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _del_nodes(mon, [storage])
                raise
        except BaseException:
            if secret is not None:
                with trio.CancelScope(shield=True):
                    await _del_secret(mon, secret)
            raise
    except BaseException:
        with trio.CancelScope(shield=True):
            await _unlabel(state, dom, path)
        raise
    return [storage, node]


async def _add_secret(state: "QemuState", dom: "QemuDomain", node: str, value: bytes) -> str:
    """object-add the passphrase of the format node ``node``, encrypted with the
    guest's master key (made, and given to QEMU, by the first encrypted disk)."""
    mon = dom.monitor
    path = disksecrets.master_key_path(state, dom.name)
    key = await trio.to_thread.run_sync(disksecrets.read_master_key, path)
    if key is None:
        key = await trio.to_thread.run_sync(disksecrets.write_master_key, path)
        try:
            await _label(state, dom, str(path), True)
            await mon.execute("object-add", disksecrets.master_key_object(str(path)))
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disksecrets.remove_master_key, path)
            raise
    alias = disksecrets.secret_alias(node)
    await mon.execute("object-add", disksecrets.secret_object(alias, value, key))
    return alias


async def _del_secret(mon: Any, alias: str) -> None:
    try:
        await mon.execute("object-del", {"id": alias})
    except VirError as exc:
        log.warning("object-del %s: %s", alias, exc)


def _disk_file(state: "QemuState", disk: Disk) -> tuple[str | None, str | None]:
    """The host path and format of ``disk``'s image (a volume's from its pool)."""
    if disk.type == "volume":
        path, vol_fmt = _resolve_volume(state, disk)
        return path, disk.format or vol_fmt
    return disk.path, disk.format


async def _label(state: "QemuState", dom: "QemuDomain", path: str | None,
                 read_only: bool) -> None:
    """Hand one image to the confined QEMU: its owner (dac.py), then, for a device
    node, the cgroup rule and the node in QEMU's /dev (devacl.py)."""
    conf = state.confinement
    if not path:
        return
    if conf.switches_user and conf.dynamic_ownership:
        labels = await trio.to_thread.run_sync(dac.label_all, [dac.Wanted(path, read_only)],
                                               conf.uid, conf.gid, conf.remember_owner)
        dom.labels.extend(labels)
    try:
        await devacl.grant(conf, dom.definition, dom.pid, path, read_only)
    except BaseException:
        with trio.CancelScope(shield=True):
            await _unlabel(state, dom, path)
        raise


async def _unlabel(state: "QemuState", dom: "QemuDomain", path: str | None) -> None:
    """Take one image the guest no longer uses back: device access, then its label."""
    await devacl.revoke(state.confinement, dom.definition, dom.pid, [path])
    for lab in dom.labels:
        if lab.path == path:
            dom.labels.remove(lab)
            await trio.to_thread.run_sync(dac.restore, lab)
            return


async def _unlabel_disk(state: "QemuState", dom: "QemuDomain", elem: etree._Element) -> None:
    try:
        path, _fmt = _disk_file(state, Disk.parse(elem))
    except VirError as exc:    # its volume went away meanwhile
        log.warning("%s: the image of a removed disk: %s", dom.name, exc)
        return
    await _unlabel(state, dom, path)


async def _del_nodes(mon: Any, nodes: list[str], encrypted: bool = False) -> None:
    """blockdev-del, format nodes before the storage under them (``encrypted``: and
    the format nodes' secret objects after them); failures only logged."""
    for node in sorted(nodes, key=lambda n: not n.endswith("-format")):
        try:
            await mon.blockdev_del(node)
        except VirError as exc:
            log.warning("blockdev-del %s: %s", node, exc)
        if encrypted and node.endswith("-format"):
            await _del_secret(mon, disksecrets.secret_alias(node))


async def change_media_live(state: "QemuState", dom: "QemuDomain",
                            elem: etree._Element, force: bool) -> None:
    """A CD-ROM's new medium, or none (eject), in the running QEMU (qemuDomainChangeDiskLive)."""
    live, mon = dom.definition, dom.monitor
    new = Disk.parse(elem)
    old_elem = find_disk(live, new.target)
    if old_elem is None:
        raise _err(P.VIR_ERR_INTERNAL_ERROR,
                   f"No disk with bus '{new.bus}' and target '{new.target}'")
    old = Disk.parse(old_elem)
    if old.device not in ("cdrom", "floppy"):
        raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                   f"disk device '{old.device}' does not support changing its media")
    alias = old.alias or ""
    old_nodes = await _disk_nodes(mon, alias)
    new_nodes = await _add_nodes(state, dom, new, True) if (new.path or new.volume) else []
    try:
        await mon.execute("blockdev-open-tray", {"id": alias, "force": force})
        await mon.execute("blockdev-remove-medium", {"id": alias})
        if new_nodes:
            await mon.execute("blockdev-insert-medium", {"id": alias, "node-name": new_nodes[-1]})
        if new.tray != "open":
            await mon.execute("blockdev-close-tray", {"id": alias})
    except BaseException:
        with trio.CancelScope(shield=True):
            await _del_nodes(mon, new_nodes)
        raise
    await _del_nodes(mon, old_nodes, disksecrets.disk_encryption(old) is not None)
    if old.path or old.volume:
        await _unlabel_disk(state, dom, old_elem)
    new.alias, new.address = old.alias, old.address
    live.devices[live.devices.index(old_elem)] = new.to_element()


# -- the procedures ------------------------------------------------------------------

class HotplugMixin:
    """DOMAIN_ATTACH_DEVICE*, DOMAIN_DETACH_DEVICE*, DOMAIN_UPDATE_DEVICE_FLAGS."""
    driver: "QemuState"

    async def _modify(self, ref: Dom, flags: int, allowed: int, function: str,
                      on_config: Callable[[domxml.DomainDef], None],
                      on_live: Callable[["QemuDomain"], Awaitable[None]]) -> None:
        """The frame of every device procedure (qemuDomain*DeviceFlags): flags checked,
        the guest's lock held, the config change prepared first and saved only after the
        live one succeeded, so a failed live change leaves the config as it was."""
        check_flags(flags, allowed, function, P.VIR_FROM_QEMU)
        dom = self._dom(ref)            # type: ignore[attr-defined]
        async with dom.lock:
            live, config = modification_impact(dom, flags & (AFFECT_LIVE | AFFECT_CONFIG))
            new_config = dom.persistent_def.copy() if config else None
            if new_config is not None:
                on_config(new_config)
            if live:
                await on_live(dom)
                await self.driver.save_status(dom)
            if new_config is not None:
                await commit_config(self.driver, dom, new_config)

    async def domain_attach_device(self, ref: Dom, xml: str) -> None:
        await self.domain_attach_device_flags(ref, xml, AFFECT_LIVE)

    async def domain_attach_device_flags(self, ref: Dom, xml: str, flags: int) -> None:
        state = self.driver

        def on_config(defn: domxml.DomainDef) -> None:
            _attach_config(defn, parse_device(xml, defn))

        async def on_live(dom: "QemuDomain") -> None:
            elem = parse_device(xml, dom.definition)
            if elem.tag == "disk":
                alias = await attach_disk_live(state, dom, elem)
            elif elem.tag == "interface":
                alias = await attach_interface_live(state, dom, elem)
            elif elem.tag == "memory":
                alias = await memory.attach_live(dom, elem)
            else:
                raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"live attach of device '{_type_name(elem.tag)}' is not supported")
            state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, dom.ref(), alias)

        await self._modify(ref, flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainAttachDeviceFlags",
                           on_config, on_live)

    async def domain_update_device_flags(self, ref: Dom, xml: str, flags: int) -> None:
        """Only a CD-ROM's (or floppy's) media can change, as libvirt's QEMU driver allows."""
        state = self.driver

        def on_config(defn: domxml.DomainDef) -> None:
            elem = parse_device(xml, defn)
            if elem.tag != "disk":
                raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"persistent update of device '{_type_name(elem.tag)}' is not "
                           f"supported")
            old = find_disk(defn, _target(elem))
            if old is None:
                raise _err(P.VIR_ERR_INVALID_ARG, f"target {_target(elem)} doesn't exist.")
            defn.devices[defn.devices.index(old)] = elem

        async def on_live(dom: "QemuDomain") -> None:
            elem = parse_device(xml, dom.definition)
            if elem.tag != "disk":
                raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                           f"live update of device '{_type_name(elem.tag)}' is not supported")
            await change_media_live(state, dom, elem, bool(flags & DEVICE_MODIFY_FORCE))

        await self._modify(ref, flags, AFFECT_LIVE | AFFECT_CONFIG | DEVICE_MODIFY_FORCE,
                           "qemuDomainUpdateDeviceFlags", on_config, on_live)

    async def domain_detach_device(self, ref: Dom, xml: str) -> None:
        await self.domain_detach_device_flags(ref, xml, AFFECT_LIVE)

    async def domain_detach_device_flags(self, ref: Dom, xml: str, flags: int) -> None:
        state = self.driver

        def on_config(defn: domxml.DomainDef) -> None:
            defn.devices.remove(_find_config(defn, parse_device(xml, defn)))

        async def on_live(dom: "QemuDomain") -> None:
            elem = _find_live(dom.definition, parse_device(xml, dom.definition))
            await request_removal(state, dom, elem, wait=True)

        await self._modify(ref, flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainDetachDeviceFlags",
                           on_config, on_live)

    async def domain_detach_device_alias(self, ref: Dom, alias: str, flags: int) -> None:
        """Asynchronous: QEMU is asked and the call returns (DEVICE_REMOVED follows)."""
        state = self.driver

        def find(defn: domxml.DomainDef) -> etree._Element:
            found = find_by_alias(defn, alias)
            if found is None:
                raise _err(P.VIR_ERR_DEVICE_MISSING, f"no device found with alias {alias}")
            return found

        def on_config(defn: domxml.DomainDef) -> None:
            defn.devices.remove(find(defn))

        async def on_live(dom: "QemuDomain") -> None:
            elem = find(dom.definition)
            _check_detachable(elem)
            await request_removal(state, dom, elem, wait=False)

        await self._modify(ref, flags, AFFECT_LIVE | AFFECT_CONFIG, "qemuDomainDetachDeviceAlias",
                           on_config, on_live)


def _attach_config(defn: domxml.DomainDef, elem: etree._Element) -> None:
    """qemuDomainAttachDeviceConfig for disks, NICs and memory devices."""
    if elem.tag == "disk":
        target = _target(elem)
        if find_disk(defn, target) is not None:
            raise _err(P.VIR_ERR_OPERATION_INVALID, f"target {target} already exists")
    elif elem.tag == "memory":
        memory.attach_config(defn, elem)
        return
    elif elem.tag != "interface":
        raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                   f"persistent attach of device '{_type_name(elem.tag)}' is not supported")
    _insert(defn, elem)
    devmod.apply_defaults(defn, DEVICE_DEFAULTS)   # e.g. the SCSI controller a disk needs
    devmod.validate_devices(defn)


def _find_config(defn: domxml.DomainDef, match: etree._Element) -> etree._Element:
    """qemuDomainDetachDeviceConfig's lookup."""
    if match.tag == "disk":
        found = find_disk(defn, _target(match))
        if found is None:
            raise _err(P.VIR_ERR_DEVICE_MISSING, f"no target device {_target(match)}")
        return found
    if match.tag == "interface":
        return find_interface(defn, match)
    raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
               f"persistent detach of device '{_type_name(match.tag)}' is not supported")


def _find_live(defn: domxml.DomainDef, match: etree._Element) -> etree._Element:
    """qemuDomainDetachDeviceLive's lookup (qemuDomainDetachPrepDisk / PrepNet)."""
    if match.tag == "disk":
        found = find_disk(defn, _target(match))
        if found is None:
            raise _err(P.VIR_ERR_DEVICE_MISSING, f"disk {_target(match)} not found")
    elif match.tag == "interface":
        found = find_interface(defn, match)
    else:
        raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                   f"live detach of device '{_type_name(match.tag)}' is not supported")
    _check_detachable(found)
    return found


def _check_detachable(elem: etree._Element) -> None:
    if elem.tag == "disk":
        bus = Disk.parse(elem).bus
        if bus not in _HOTPLUG_BUSES:
            raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                       f"disk bus '{bus}' cannot be hotunplugged.")
    elif elem.tag != "interface":
        raise _err(P.VIR_ERR_OPERATION_UNSUPPORTED,
                   f"live detach of device '{_type_name(elem.tag)}' is not supported")


async def commit_config(state: "QemuState", dom: "QemuDomain",
                        new_config: domxml.DomainDef) -> None:
    """Store ``new_config`` as the guest's persistent definition (the next one, if it runs)."""
    await state.save_config(new_config)
    if dom.active:
        dom.new_def = new_config
    else:
        dom.definition = new_config
