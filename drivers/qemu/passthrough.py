"""QEMU driver connection: the QEMU passthrough program and the guest's keyboard and NMI button.

- ``virsh qemu-monitor-command`` (QEMU program procedure 1): a QMP command
  given as JSON, or an HMP command line (flag HMP, sent as QMP
  ``human-monitor-command``), passed to the guest's QEMU unchanged.  libvirt
  no longer knows what the guest is like afterwards, so, as its
  qemuDomainObjTaint, the guest is marked tainted (``custom-monitor``) once
  per run: a line in the guest's log file and in virDomainGetMessages.
- ``virsh qemu-monitor-event`` (procedures 4-6): every QMP event of a guest,
  as QEMU sent it (name, timestamp, data as JSON), to the clients that
  registered for it, by name, or by regular expression (flags REGEX, NOCASE),
  for one guest or all, as libvirt's virDomainQemuMonitorEventStateRegisterID.
- ``SendKey``: key codes of any set libvirt knows (except os_x and win32,
  whose tables this project does not carry) translated to QEMU's qnum codes
  (keycodes_data.py) and sent with QMP ``send-key``; ``InjectNMI``.

``SendProcessSignal`` is not here on purpose: libvirt 9.0's QEMU driver does
not implement it, and the dispatcher's VIR_ERR_NO_SUPPORT is its answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc import frame

from .guest import QemuDomain, QemuState
from .keycodes_data import TO_QNUM

log = logging.getLogger(__name__)

MONITOR_COMMAND_HMP = P.DomainQemuMonitorCommandFlags.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
# virConnectDomainQemuMonitorEventRegisterFlags
EVENT_REGEX = P.ConnectDomainQemuMonitorEventRegisterFlags.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_REGEX
EVENT_NOCASE = P.ConnectDomainQemuMonitorEventRegisterFlags.VIR_CONNECT_DOMAIN_QEMU_MONITOR_EVENT_REGISTER_NOCASE
# virDomainMessageType
MESSAGE_DEPRECATION = P.DomainMessageType.VIR_DOMAIN_MESSAGE_DEPRECATION
MESSAGE_TAINTING = P.DomainMessageType.VIR_DOMAIN_MESSAGE_TAINTING

# virKeycodeSet -> (the name libvirt's errors use, the table of keycodes_data)
KEYCODE_SETS = {
    P.KeycodeSet.VIR_KEYCODE_SET_LINUX: ("linux", "linux"),
    P.KeycodeSet.VIR_KEYCODE_SET_XT: ("xt", "xt"),
    P.KeycodeSet.VIR_KEYCODE_SET_ATSET1: ("atset1", "atset1"),
    P.KeycodeSet.VIR_KEYCODE_SET_ATSET2: ("atset2", "atset2"),
    P.KeycodeSet.VIR_KEYCODE_SET_ATSET3: ("atset3", "atset3"),
    P.KeycodeSet.VIR_KEYCODE_SET_OSX: ("os_x", None),
    P.KeycodeSet.VIR_KEYCODE_SET_XT_KBD: ("xt_kbd", "xtkbd"),
    P.KeycodeSet.VIR_KEYCODE_SET_USB: ("usb", "usb"),
    P.KeycodeSet.VIR_KEYCODE_SET_WIN32: ("win32", None),
    P.KeycodeSet.VIR_KEYCODE_SET_QNUM: ("qnum", "qnum"),
}
TAINT_CUSTOM_MONITOR = "custom-monitor"   # virDomainTaintFlags' name


def _err(code: int, message: str) -> VirError:
    return VirError(code, message, domain=P.VIR_FROM_QEMU)


def to_qnum(codeset: int, keycodes: list[int]) -> list[int]:
    """``keycodes`` of ``codeset`` as QEMU's qnum codes (qemuDomainSendKey's translation)."""
    if codeset not in KEYCODE_SETS:
        raise VirError(P.VIR_ERR_INVALID_ARG, f"unsupported codeset: {codeset}",
                       domain=P.VIR_FROM_QEMU)
    name, table = KEYCODE_SETS[codeset]
    if codeset == P.KeycodeSet.VIR_KEYCODE_SET_QNUM:
        return list(keycodes)
    mapping = TO_QNUM[table] if table else {}
    out = []
    for code in keycodes:
        qnum = mapping.get(code)
        if qnum is None:
            raise _err(P.VIR_ERR_INTERNAL_ERROR,
                       f"cannot translate keycode {code} of {name} codeset to qnum keycode")
        out.append(qnum)
    return out


# --------------------------------------------------------------- monitor events
@dataclass(eq=False)
class MonitorListener:
    """One qemu-monitor-event registration of one client."""
    conn: Any                       # the QemuConnection: its client gets the messages
    callback_id: int
    uuid: bytes | None              # one guest, or every guest
    event: str | None               # a name, or None for every event
    pattern: re.Pattern | None      # with the REGEX flag
    nocase: bool

    def wants(self, dom: QemuDomain, name: str) -> bool:
        if self.uuid is not None and self.uuid != dom.uuid:
            return False
        if self.pattern is not None:
            return self.pattern.search(name) is not None
        if self.event is None:
            return True
        return self.event.lower() == name.lower() if self.nocase else self.event == name


@dataclass
class MonitorListeners:
    """Every qemu-monitor-event registration of a driver; ids count from 1 as libvirt's."""
    items: list[MonitorListener] = field(default_factory=list)
    next_id: int = 1


def listeners(state: QemuState) -> MonitorListeners:
    """The driver's registrations (kept on the driver state, made on first use)."""
    found = getattr(state, "_monitor_listeners", None)
    if found is None:
        found = MonitorListeners()
        state._monitor_listeners = found   # type: ignore[attr-defined]
    return found


_EVENT_PROC = next(p for p in P.PROCEDURES
                   if p.program == "qemu" and p.name == "DOMAIN_MONITOR_EVENT")


def forward(state: QemuState, dom: QemuDomain, event: dict) -> None:
    """Hand one QMP event of ``dom`` to the clients that asked for it (never blocks)."""
    found = getattr(state, "_monitor_listeners", None)
    if found is None or not found.items:
        return
    name = str(event.get("event", ""))
    wanted = [lis for lis in found.items if lis.wants(dom, name)]
    if not wanted:
        return
    stamp = event.get("timestamp") or {}
    data = event.get("data")
    details = None if data is None else json.dumps(data, separators=(",", ":"))
    for lis in wanted:
        client = getattr(lis.conn, "client", None)
        if client is None:
            continue
        body = (lis.callback_id, dom.ref(), name, int(stamp.get("seconds", 0)),
                int(stamp.get("microseconds", 0)), details)
        packet = frame.build(_EVENT_PROC.prog, 1, _EVENT_PROC.number, frame.MESSAGE, 1, frame.OK,
                             _EVENT_PROC.pack_msg, body)
        try:
            client.send_event(packet)
        except Exception:   # one broken client must not stop the others
            log.exception("dropping a qemu monitor event for a client")


# ----------------------------------------------------------------------- taint
def taint(state: QemuState, dom: QemuDomain, what: str) -> bool:
    """Mark the running ``dom`` tainted by ``what``, once per run; True if newly tainted.

    The log line goes to the guest's log file as libvirt writes it there
    (qemuDomainObjTaintMsg); the appending runs in the driver's task group,
    so the call that tainted does not wait for the disk.
    """
    if dom.taints.get(what) == dom.run:
        return False
    dom.taints[what] = dom.run
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}+0000"
    line = f"{stamp}: Domain id={dom.id} is tainted: {what}\n"
    log.warning("Domain id=%d name='%s' uuid=%s is tainted: %s", dom.id, dom.name,
                dom.definition.uuid_str, what)
    state.spawn(trio.to_thread.run_sync, _append, str(state.store.log_path(dom.name)), line)
    return True


def _append(path: str, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def taint_messages(dom: QemuDomain) -> list[str]:
    """virDomainGetMessages' tainting lines for the current run."""
    return [f"tainted: {what}" for what, run in dom.taints.items()
            if run == dom.run and dom.active]


class PassthroughMixin:
    driver: QemuState
    client: Any = None      # set by QemuDriver.open: where monitor events go

    # -- the qemu program ------------------------------------------------------
    async def qemu_domain_monitor_command(self, ref: Dom, cmd: str, flags: int) -> str:
        """A QMP command (JSON) or, with the HMP flag, an HMP command line; QEMU's answer
        unchanged (qemuDomainQemuMonitorCommand).  The guest is tainted first."""
        check_flags(flags, MONITOR_COMMAND_HMP, "qemuDomainQemuMonitorCommand", P.VIR_FROM_QEMU)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        if not dom.active or dom.monitor is None:
            raise ds.not_running()
        taint(self.driver, dom, TAINT_CUSTOM_MONITOR)
        if flags & MONITOR_COMMAND_HMP:
            return await dom.monitor.human_monitor_command(cmd)
        return await dom.monitor.execute_json(cmd)

    def qemu_connect_domain_monitor_event_register(self, dom: Any, event: str | None,
                                                   flags: int) -> int:
        check_flags(flags, EVENT_REGEX | EVENT_NOCASE, "qemuConnectDomainQemuMonitorEventRegister",
                    P.VIR_FROM_QEMU)
        uuid = None
        if dom is not None:
            uuid = bytes(self._dom(dom).uuid)   # type: ignore[attr-defined]
        pattern = None
        if flags & EVENT_REGEX and event is not None:
            try:
                pattern = re.compile(event, re.IGNORECASE if flags & EVENT_NOCASE else 0)
            except re.error as exc:
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               f"failed to compile regex '{event}': {exc}",
                               domain=P.VIR_FROM_QEMU) from None
        regs = listeners(self.driver)
        lis = MonitorListener(self, regs.next_id, uuid, event, pattern, bool(flags & EVENT_NOCASE))
        regs.next_id += 1
        regs.items.append(lis)
        return lis.callback_id

    def qemu_connect_domain_monitor_event_deregister(self, callback_id: int) -> None:
        regs = listeners(self.driver)
        for lis in regs.items:
            if lis.conn is self and lis.callback_id == callback_id:
                regs.items.remove(lis)
                return
        raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                       f"qemu monitor event callback {callback_id} not registered",
                       domain=P.VIR_FROM_RPC)

    def drop_monitor_listeners(self) -> None:
        """The client went away: its registrations go with it."""
        regs = listeners(self.driver)
        regs.items = [lis for lis in regs.items if lis.conn is not self]

    def domain_get_messages(self, ref: Dom, flags: int) -> list[str]:
        """virsh dominfo's "Messages": the taints of this run (no deprecations known)."""
        check_flags(flags, MESSAGE_DEPRECATION | MESSAGE_TAINTING, "qemuDomainGetMessages",
                    P.VIR_FROM_QEMU)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        if flags and not flags & MESSAGE_TAINTING:
            return []
        return taint_messages(dom)

    # -- keyboard and NMI --------------------------------------------------------
    async def domain_send_key(self, ref: Dom, codeset: int, holdtime: int, keycodes: list[int],
                              flags: int) -> None:
        check_flags(flags, 0, "qemuDomainSendKey", P.VIR_FROM_QEMU)
        qnums = to_qnum(codeset, keycodes)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            await dom.monitor.send_key(qnums, holdtime)

    async def domain_inject_nmi(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainInjectNMI", P.VIR_FROM_QEMU)
        dom = self._dom(ref)                # type: ignore[attr-defined]
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            await dom.monitor.inject_nmi()
