"""QEMU events beyond the lifecycle, turned into libvirt's domain events (qemu_process.c).

driver._on_event hands every QMP event it does not handle itself to
``handle``.  What each becomes, after libvirt's qemuProcessHandle* and
qemuMonitorJSONHandle*:

  QMP event                    libvirt event (fields)                         and
  WATCHDOG {action}            WATCHDOG (action code)                         action pause: paused
                                                                              (watchdog), suspended/
                                                                              watchdog
  BLOCK_IO_ERROR {node-name,   IO_ERROR (srcPath, devAlias, action) and       action stop: paused
    action, nospace}           IO_ERROR_REASON (..., reason "enospc" or "")   (ioerror), suspended/
                                                                              ioerror
  VNC_CONNECTED / _INITIALIZED GRAPHICS (phase connect / initialize /
    / _DISCONNECTED            disconnect, local and remote address, auth
                               scheme, subject: x509dname, saslUsername)
  BALLOON_CHANGE {actual}      BALLOON_CHANGE (KiB)                           <currentMemory> follows
  DEVICE_TRAY_MOVED {id, ...}  TRAY_CHANGE (devAlias, open 0 / close 1)       <target tray=...>
  DEVICE_DELETED               DEVICE_REMOVED (hotplug.on_device_deleted)
  DEVICE_UNPLUG_GUEST_ERROR    DEVICE_REMOVAL_FAILED
  VSERPORT_CHANGE {id, open}   AGENT_LIFECYCLE (agent.on_vserport)            <target state=...>
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pyvirtd.driver import domains as ds
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

from . import agent, blockjobs, hotplug

if TYPE_CHECKING:
    from .guest import QemuDomain, QemuState

log = logging.getLogger(__name__)

# virDomainEventWatchdogAction, by QEMU's WatchdogAction name
WATCHDOG_ACTIONS = {"none": 0, "pause": 1, "reset": 2, "poweroff": 3, "shutdown": 4, "debug": 5,
                    "inject-nmi": 6}
# virDomainEventIOErrorAction, by QEMU's BlockErrorAction name
IO_ERROR_ACTIONS = {"ignore": 0, "stop": 1, "report": 2}
IO_ERROR_PAUSE = P.DomainEventIOErrorAction.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE
# virDomainEventGraphicsPhase / virDomainEventGraphicsAddressType
GRAPHICS_PHASES = {"VNC_CONNECTED": 0, "VNC_INITIALIZED": 1, "VNC_DISCONNECTED": 2}
ADDRESS_FAMILIES = {"ipv4": 0, "ipv6": 1, "unix": 2}
# virDomainEventTrayChangeReason
TRAY_OPEN = P.DomainEventTrayChangeReason.VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN
TRAY_CLOSE = P.DomainEventTrayChangeReason.VIR_DOMAIN_EVENT_TRAY_CHANGE_CLOSE


async def handle(state: "QemuState", dom: "QemuDomain", name: str, data: dict) -> None:
    """One QMP event the lifecycle code left alone (see the module docstring)."""
    if name == "WATCHDOG":
        await _watchdog(state, dom, data)
    elif name == "BLOCK_IO_ERROR":
        await _io_error(state, dom, data)
    elif name in GRAPHICS_PHASES:
        _graphics(state, dom, name, data)
    elif name == "BALLOON_CHANGE":
        await _balloon_change(state, dom, data)
    elif name == "DEVICE_TRAY_MOVED":
        await _tray_moved(state, dom, data)
    elif name == "DEVICE_DELETED":
        await hotplug.on_device_deleted(state, dom, data)
    elif name == "DEVICE_UNPLUG_GUEST_ERROR":
        hotplug.on_unplug_guest_error(state, dom, data)
    elif name == "VSERPORT_CHANGE":
        await agent.on_vserport(state, dom, data)
    elif name in blockjobs.QMP_EVENTS:
        await blockjobs.on_event(state, dom, name, data)


def _emit(state: "QemuState", dom: "QemuDomain", event_id: int, *fields: Any) -> None:
    state.events.emit("domain", event_id, dom.ref(), *fields)


async def _pause_for(state: "QemuState", dom: "QemuDomain", reason: int,
                     detail: int) -> None:
    """QEMU stopped the guest by itself: paused (reason), suspended (detail).  The STOP
    event that follows finds the guest paused already and is not reported again."""
    if dom.state != ds.RUNNING:
        return
    dom.set_state(ds.PAUSED, reason)
    state.emit(dom, ds.EV_SUSPENDED, detail)
    await state.save_status(dom)


async def _watchdog(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """qemuProcessHandleWatchdog; reset and poweroff come as RESET / SHUTDOWN events."""
    action = WATCHDOG_ACTIONS.get(str(data.get("action")), 0)
    _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_WATCHDOG, action)
    if action == WATCHDOG_ACTIONS["pause"]:
        await _pause_for(state, dom, ds.PAUSED_WATCHDOG, ds.SUSPENDED_WATCHDOG)


async def _disk_of_node(dom: "QemuDomain", node: str | None,
                        device: str | None) -> tuple[str, str]:
    """(source path, alias) of the disk behind a block node or device id; ('', '')
    when none is known (libvirt sends empty strings too)."""
    alias = device or None
    if alias is None and node and dom.monitor is not None:
        try:
            for blk in await dom.monitor.query_block():
                if (blk.get("inserted") or {}).get("node-name") == node:
                    alias = _alias_of_qdev(blk.get("qdev", ""))
                    break
        except VirError as exc:
            log.warning("%s: query-block for an I/O error: %s", dom.name, exc)
    for disk in dom.definition.devices_of("disk"):
        a = disk.find("alias")
        if alias is not None and a is not None and a.get("name") == alias:
            src = disk.find("source")
            path = ""
            if src is not None:
                path = src.get("file") or src.get("dev") or src.get("volume") or ""
            return path, alias
    return "", ""


def _alias_of_qdev(qdev: str) -> str:
    """A device id from query-block's qdev: the id itself, or the QOM path
    /machine/peripheral/<id>/virtio-backend of a virtio disk."""
    parts = qdev.split("/")
    if len(parts) > 3 and parts[1:3] == ["machine", "peripheral"]:
        return parts[3]
    return qdev


async def _io_error(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """qemuProcessHandleIOError (reason as qemuMonitorJSONHandleIOError words it)."""
    action = IO_ERROR_ACTIONS.get(str(data.get("action")), 0)
    reason = "enospc" if data.get("nospace") else ""
    path, alias = await _disk_of_node(dom, data.get("node-name"), data.get("device") or None)
    _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_IO_ERROR, path, alias, action)
    _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, path, alias, action, reason)
    if action == IO_ERROR_PAUSE:
        await _pause_for(state, dom, ds.PAUSED_IOERROR, ds.SUSPENDED_IOERROR)


def _address(info: dict) -> Any:
    return P.remote_domain_event_graphics_address(
        ADDRESS_FAMILIES.get(str(info.get("family")), 0), str(info.get("host", "")),
        str(info.get("service", "")))


def _graphics(state: "QemuState", dom: "QemuDomain", name: str, data: dict) -> None:
    """qemuMonitorJSONHandleGraphicsVNC + qemuProcessHandleGraphics."""
    server, client = data.get("server") or {}, data.get("client") or {}
    subject = []
    if client.get("x509_dname"):
        subject.append(P.remote_domain_event_graphics_identity("x509dname", client["x509_dname"]))
    if client.get("sasl_username"):
        subject.append(P.remote_domain_event_graphics_identity("saslUsername",
                                                                client["sasl_username"]))
    _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_GRAPHICS, GRAPHICS_PHASES[name], _address(server),
          _address(client), str(server.get("auth", "")), subject)


async def _balloon_change(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """qemuProcessHandleBalloonChange: the guest's memory now, in KiB."""
    actual = int(data.get("actual", 0)) // 1024
    dom.definition.current_memory = actual
    _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, actual)
    await state.save_status(dom)


async def _tray_moved(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """qemuProcessHandleTrayChange: the guest opened or closed a cdrom's tray."""
    alias = _alias_of_qdev(str(data.get("id") or data.get("device") or ""))
    for disk in dom.definition.devices_of("disk"):
        a = disk.find("alias")
        if a is None or a.get("name") != alias:
            continue
        opened = bool(data.get("tray-open"))
        target = disk.find("target")
        if target is not None:
            if opened:
                target.set("tray", "open")
            elif "tray" in target.attrib:
                del target.attrib["tray"]
        _emit(state, dom, P.VIR_DOMAIN_EVENT_ID_TRAY_CHANGE, alias,
              TRAY_OPEN if opened else TRAY_CLOSE)
        await state.save_status(dom)
        return
