"""The QEMU guest agent of one running guest: its channel, its state, its wire.

A guest whose definition has ``<channel type='unix'><target type='virtio'
name='org.qemu.guest_agent.0'/></channel>`` gets a socket from QEMU (launch.
prepare_live picks its path; QEMU listens, server=on,wait=off).  The daemon
connects to it when the guest starts and when a restarted daemon reattaches
(`begin`), and keeps the connection for the run.  Whether ``qemu-ga`` inside
the guest has the port open is QEMU's to say: ``frontend-open`` of
query-chardev at start, then VSERPORT_CHANGE events (`on_vserport`).  That
state is shown as ``<target ... state='connected'/>`` in the live XML and
sent as the AGENT_LIFECYCLE event, as libvirt's
qemuProcessRefreshChannelVirtioState and processSerialChangedEvent do
(reason domain-started at start, channel afterwards).

The wire (QEMU's docs/interop/qemu-ga.rst): one JSON object per line each
way.  Replies carry no id, so before each command the client resynchronises
with ``guest-sync-delimited``: it sends 0xFF (the agent drops any partial
input), the sync with a fresh id, and discards everything it reads up to the
0xFF the agent writes before the sync's reply, then waits for the reply with
its id.  A reply a timed-out command left behind is thereby never taken for
the next command's.

One command at a time per guest (`Agent.lock`).  Every call has a deadline
(trio cancel scope): the sync gets libvirt's 5 s (QEMU_AGENT_WAIT_TIME, or
the guest's response timeout if shorter), the command its own; a hung agent
answers "Guest agent is not responding: Guest agent not available for now"
and holds nobody but the callers of its own guest's agent.  No domain lock
is held meanwhile, so dominfo, domstats and the console go on.
"""

from __future__ import annotations

import json
import logging
import random
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.devices.chardev import GUEST_AGENT

if TYPE_CHECKING:
    from .guest import QemuDomain, QemuState
    from .monitor import Monitor

log = logging.getLogger(__name__)

# src/qemu/qemu_agent.c: QEMU_AGENT_WAIT_TIME, seconds the sync (and a command
# with the DEFAULT timeout) waits for the agent
WAIT_TIME = 5
# virDomainAgentResponseTimeoutValues / virDomainQemuAgentCommandTimeoutValues
_T = P.DomainAgentResponseTimeoutValues
TIMEOUT_BLOCK = _T.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_BLOCK
TIMEOUT_DEFAULT = _T.VIR_DOMAIN_AGENT_RESPONSE_TIMEOUT_DEFAULT
# seconds a guest-shutdown waits for the agent or the guest (VIR_DOMAIN_QEMU_AGENT_COMMAND_SHUTDOWN)
SHUTDOWN_WAIT = 60
# qemu_agent.c's QEMU_AGENT_MAX_RESPONSE: a longer line is a broken agent
MAX_RESPONSE = 10 * 1024 * 1024
DELIMITER = b"\xff"

CONNECTED = P.ConnectDomainEventAgentLifecycleState.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
DISCONNECTED = P.ConnectDomainEventAgentLifecycleState.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED
REASON_STARTED = P.ConnectDomainEventAgentLifecycleReason.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED
REASON_CHANNEL = P.ConnectDomainEventAgentLifecycleReason.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL

# qemuAgentStringifyErrorClass: what an error without "desc" says
_ERROR_CLASSES = {
    "BufferOverrun": "Buffer overrun",
    "CommandDisabled": "The command has been disabled for this instance",
    "CommandNotFound": "The command has not been found",
    "FdNotFound": "File descriptor not found",
    "InvalidParameter": "Invalid parameter",
    "InvalidParameterType": "Invalid parameter type",
    "InvalidParameterValue": "Invalid parameter value",
    "OpenFileFailed": "Cannot open file",
    "QgaCommandFailed": "Guest agent command failed",
    "UndefinedError": "An undefined error has occurred",
    "Unsupported": "this feature or command is not currently supported",
}


def _err(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_QEMU)


def not_available() -> VirError:
    return _err(P.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent not available for now")


def disappeared() -> VirError:
    return _err(P.VIR_ERR_AGENT_UNRESPONSIVE, "Guest agent disappeared while executing command")


class Unsupported(VirError):
    """The agent lacks the command (CommandNotFound / CommandDisabled): callers
    that gather what they can (GetGuestInfo) skip it."""


class Agent:
    """The daemon's connection to one guest's agent socket, for one QEMU run."""

    def __init__(self, path: str, alias: str | None) -> None:
        self.path = path
        self.alias = alias              # the channel's device alias (VSERPORT_CHANGE id)
        self.connected = False          # qemu-ga has the port open (QEMU says)
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()
        self.lock = trio.Lock()
        self.timeout = TIMEOUT_BLOCK    # AgentSetResponseTimeout (libvirt's default: block)
        self.closed = False
        self.gone = trio.Event()        # set when the port closes or the run ends

    async def open(self) -> None:
        try:
            self.stream = await trio.open_unix_socket(self.path)
        except OSError as exc:
            log.warning("cannot connect to the guest agent socket %s: %s", self.path, exc)
            self.stream = None

    async def close(self) -> None:
        self.closed = True
        self.gone.set()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with trio.CancelScope(shield=True):
                await stream.aclose()

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        if not connected:
            self.gone.set()
        elif self.gone.is_set() and not self.closed:
            self.gone = trio.Event()

    # -- the wire ---------------------------------------------------------------
    async def _send(self, data: bytes) -> None:
        if self.stream is None:
            raise disappeared()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            raise disappeared() from None

    async def _fill(self) -> None:
        if self.stream is None:
            raise disappeared()
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            raise disappeared()
        self.buf += data
        if len(self.buf) > MAX_RESPONSE:
            self.buf.clear()
            raise _err(P.VIR_ERR_INTERNAL_ERROR, "guest agent reply is too long")

    async def _line(self) -> dict:
        """The next JSON object the agent wrote (lines that are not JSON are skipped)."""
        while True:
            while b"\n" not in self.buf:
                await self._fill()
            end = self.buf.index(b"\n")
            raw = bytes(self.buf[:end]).strip().lstrip(DELIMITER)
            del self.buf[:end + 1]
            if not raw:
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                log.debug("agent %s: ignoring a line that is not JSON: %r", self.path, raw[:200])
                continue
            if isinstance(obj, dict):
                return obj

    async def _sync(self) -> None:
        """guest-sync-delimited: drop whatever an earlier command left unread."""
        sync_id = random.randrange(1, 2 ** 31)
        self.buf.clear()
        await self._send(DELIMITER + json.dumps(
            {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")
        while True:
            while DELIMITER[0] not in self.buf:
                self.buf.clear()
                await self._fill()
            del self.buf[:self.buf.index(DELIMITER[0]) + 1]
            reply = await self._line()
            if reply.get("return") == sync_id:
                return

    async def execute(self, cmd: dict, seconds: int, *, report_unsupported: bool = True,
                      until_gone: bool = False) -> dict:
        """Send ``cmd`` and return the agent's whole reply ({"return": ...}).

        ``seconds`` as libvirt's: -2 waits for ever, -1 the default 5 s, 0 not
        at all, more that many seconds.  ``until_gone`` (guest-shutdown): the
        port closing or the run ending before a reply is the success libvirt
        waits for.  Raises VirError (AGENT_UNRESPONSIVE on timeouts, INTERNAL_ERROR
        with the agent's words on an error reply; `Unsupported` for a missing
        command when ``report_unsupported`` is false).
        """
        name = str(cmd.get("execute", "<unknown>"))
        sync_wait = WAIT_TIME if not 0 <= self.timeout < WAIT_TIME else self.timeout
        wait = {TIMEOUT_BLOCK: None, TIMEOUT_DEFAULT: WAIT_TIME}.get(seconds, seconds)
        reply: dict | None = None
        with trio.move_on_after(sync_wait) as sync_scope:
            await self.lock.acquire()
        if sync_scope.cancelled_caught:
            raise not_available()
        try:
            with trio.move_on_after(sync_wait) as sync_scope:
                await self._sync()
            if sync_scope.cancelled_caught:
                raise not_available()
            await self._send(json.dumps(cmd).encode() + b"\n")
            with trio.CancelScope() as scope:
                if wait is not None:
                    scope.deadline = trio.current_time() + wait
                if until_gone:
                    async with trio.open_nursery() as nursery:
                        async def _watch_gone() -> None:
                            await self.gone.wait()
                            nursery.cancel_scope.cancel()
                        nursery.start_soon(_watch_gone)
                        try:
                            reply = await self._line()
                        except VirError:    # QEMU closed the socket: the guest went down
                            reply = {"return": {}}
                        nursery.cancel_scope.cancel()
                    if reply is None and self.gone.is_set():
                        reply = {"return": {}}
                else:
                    reply = await self._line()
            if reply is None:
                raise not_available()
        finally:
            self.lock.release()
        if "error" in reply:
            error = reply.get("error") or {}
            klass = error.get("class") if isinstance(error, dict) else None
            desc = (error.get("desc") if isinstance(error, dict) else None) \
                or _ERROR_CLASSES.get(str(klass), klass or "unknown QEMU command error")
            text = f"unable to execute QEMU agent command '{name}': {desc}"
            if not report_unsupported and klass in ("CommandNotFound", "CommandDisabled"):
                raise Unsupported(P.VIR_ERR_INTERNAL_ERROR, text, domain=P.VIR_FROM_QEMU)
            raise _err(P.VIR_ERR_INTERNAL_ERROR, text)
        if "return" not in reply:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"unable to execute QEMU agent command '{name}'")
        return reply


# ----------------------------------------------------------- the run's channel
def agent_channel(dom: "QemuDomain") -> Any:
    """The live definition's guest agent channel element, or None."""
    for dev in dom.definition.devices_of("channel"):
        tgt = dev.find("target")
        if (dev.get("type") == "unix" and tgt is not None and tgt.get("type") == "virtio"
                and tgt.get("name") == GUEST_AGENT):
            return dev
    return None


def _alias(dev: Any) -> str | None:
    alias = dev.find("alias")
    return alias.get("name") if alias is not None else None


def _emit(state: "QemuState", dom: "QemuDomain", connected: bool, reason: int) -> None:
    state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, dom.ref(),
                      CONNECTED if connected else DISCONNECTED, reason)


async def begin(state: "QemuState", dom: "QemuDomain", mon: "Monitor", *, booted: bool) -> None:
    """A run started (``booted``) or was reattached: every virtio channel's state
    from QEMU, the agent's socket connected, the AGENT_LIFECYCLE event sent.

    Called first thing by the run's watcher: a failure here is logged and
    leaves the guest without an agent, never without its watcher."""
    try:
        await _begin(state, dom, mon, booted=booted)
    except Exception:
        log.exception("%s: setting up the guest agent channel failed", dom.name)


async def _begin(state: "QemuState", dom: "QemuDomain", mon: "Monitor", *, booted: bool) -> None:
    old = getattr(dom, "agent", None)
    if old is not None:
        await old.close()
    dom.agent = None
    channels = [d for d in dom.definition.devices_of("channel")
                if d.find("target") is not None and d.find("target").get("type") == "virtio"]
    if not channels:
        return
    try:
        opened = await mon.query_chardev_open()
    except VirError as exc:
        log.warning("%s: query-chardev for channel states: %s", dom.name, exc)
        opened = {}
    chan = agent_channel(dom)
    for dev in channels:
        alias = _alias(dev)
        if alias is None or f"char{alias}" not in opened:
            continue
        is_open = opened[f"char{alias}"]
        dev.find("target").set("state", "connected" if is_open else "disconnected")
        if dev is chan:
            _emit(state, dom, is_open, REASON_STARTED if booted else REASON_CHANNEL)
    if chan is None:
        return
    src = chan.find("source")
    if src is None or not src.get("path"):
        return
    agent = Agent(src.get("path"), _alias(chan))
    agent.timeout = getattr(dom, "agent_timeout", TIMEOUT_BLOCK)   # AgentSetResponseTimeout
    agent.set_connected((chan.find("target").get("state")) == "connected")
    await agent.open()
    dom.agent = agent
    await state.save_status(dom)


async def on_vserport(state: "QemuState", dom: "QemuDomain", data: dict) -> None:
    """VSERPORT_CHANGE {id, open}: a virtio port opened or closed in the guest."""
    port, is_open = data.get("id"), bool(data.get("open"))
    for dev in dom.definition.devices_of("channel"):
        tgt = dev.find("target")
        if tgt is None or tgt.get("type") != "virtio" or _alias(dev) != port:
            continue
        tgt.set("state", "connected" if is_open else "disconnected")
        if tgt.get("name") == GUEST_AGENT and dev.get("type") == "unix":
            agent = getattr(dom, "agent", None)
            if agent is not None:
                agent.set_connected(is_open)
            _emit(state, dom, is_open, REASON_CHANNEL)
        await state.save_status(dom)
        return


def end(dom: "QemuDomain", state: "QemuState") -> None:
    """The run ended: the connection goes (in the background; QEMU is gone)."""
    agent = getattr(dom, "agent", None)
    dom.agent = None
    if agent is not None:
        agent.closed = True
        agent.gone.set()
        state.spawn(agent.close)


def available(dom: "QemuDomain", *, forced: bool = True) -> Agent | None:
    """The guest's agent if a command can go to it (qemuDomainAgentAvailable).

    With ``forced`` its absence is libvirt's error; without, None."""
    if not dom.active:
        if not forced:
            return None
        raise ds.not_running()
    if dom.state != ds.RUNNING:
        if not forced:
            return None
        raise ds.not_running()
    agent = getattr(dom, "agent", None)
    if agent_channel(dom) is None:
        if not forced:
            return None
        raise _err(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured")
    if agent is None or agent.stream is None or not agent.connected:
        if not forced:
            return None
        raise _err(P.VIR_ERR_AGENT_UNRESPONSIVE, "QEMU guest agent is not connected")
    return agent
