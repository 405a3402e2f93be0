"""QMP monitor of one running QEMU: the only module that speaks QMP.

The wire is QEMU's own client, python-qemu-qmp (``qemu.qmp``, asyncio),
bridged into trio with trio-asyncio as DESIGN.md chose.  Checked with trio
0.35 / trio-asyncio 0.16 / qemu.qmp 0.0.6 against QEMU 7.2: it works, a
``query-status`` round trip costs ~0.4-0.9 ms (a raw socket ~0.17 ms); no
monitor call is on a hot path, so the bridge stays.

Contract (used by the driver):

    mon = await Monitor.connect(socket_path, timeout=30, deadline=30)  # greeting + qmp_capabilities
    mon = Monitor.pending(socket_path, deadline=30)       # after a daemon restart: not connected
    await mon.establish(timeout=5)                        # yet; commands wait for this (in the
                                                          # background), bounded by the deadline
    value = await mon.execute("query-status")             # -> the "return" value (Any)
    value = await mon.execute("balloon", {"value": 1 << 30})
    text = await mon.execute_json('{"execute": "query-kvm"}')   # qemu-monitor-command passthrough:
                                                           # QEMU's reply as JSON text, errors included
    async for event in mon.events():                      # {"event": "SHUTDOWN", "data": {...},
        ...                                               #  "timestamp": {...}}; ends when the monitor
                                                          #  closes (QEMU exited or mon.close())
    await mon.close()                                     # idempotent, never raises
    mon.closed                                            # True once the connection is gone
    mon.error                                             # after close: what broke the stream,
                                                          # None when QEMU just hung up
    mon.busy                                              # not connected yet, or a command is
                                                          # still waiting for QEMU's answer
    mon.deadline                                          # seconds a command may take
    mon.waiting_since                                     # trio time the oldest unanswered
                                                          # command was sent, or None

Typed helpers, one per command the driver needs:
    query_status() -> (running: bool, status: str)      cont(), stop(), system_powerdown(),
    system_reset(), quit()  (a lost connection is the expected answer to quit: not an error),
    query_chardev() -> {label: "/dev/pts/N"} (pty backends only),
    query_chardev_open() -> {label: frontend open}, query_cpus_fast() -> [Vcpu],
    query_balloon() -> actual bytes, balloon(bytes), query_block() -> [dict],
    query_blockstats() -> [dict], query_vnc() -> dict, human_monitor_command(cmdline) -> str,
    query_kvm() -> (present, enabled), query_version() -> (major, minor, micro, package),
    query_name() -> str | None, send_key(qnums, hold_time_ms), inject_nmi(),
    screendump(path, device, head, fmt), add_fd(fd) -> fdset id, remove_fd(id),
    query_hotpluggable_cpus() -> [dict].
Hotplug (hotplug.py): device_add(props), device_del(id), blockdev_add(props),
    blockdev_del(node), netdev_add(props), netdev_del(id), getfd(fd, name) (passes
    an open fd over the socket, SCM_RIGHTS), query_block_nodes() -> [node names].

Errors (all VirError, domain VIR_FROM_QEMU), worded as libvirt's qemu_monitor_json.c:
    a QMP error reply      -> VIR_ERR_INTERNAL_ERROR "unable to execute QEMU command 'X': <desc>"
    connection lost mid-call, or call after close
                           -> VIR_ERR_OPERATION_FAILED "End of file from qemu monitor"
    cannot connect in time -> VIR_ERR_INTERNAL_ERROR "failed to connect to monitor socket PATH: ..."
    a broken greeting/negotiation -> VIR_ERR_INTERNAL_ERROR "QEMU monitor: ..."
    no answer within ``deadline`` seconds (QEMU stopped with SIGSTOP, its main loop hung,
    or a pending monitor not back yet)
                           -> VIR_ERR_OPERATION_TIMEOUT "cannot acquire state change lock
                              (held by monitor=CMD)", CMD the oldest command QEMU has not
                              answered; what libvirt's callers get behind a stuck monitor
A command QEMU was sent stays in flight after its caller gave up (deadline or
cancellation): QEMU still runs it when it wakes, and its answer is awaited and
dropped, so the connection stays in step and usable; ``busy`` is True until then.

How the bridge is kept out of the caller's way: the first Monitor of a trio
run starts one trio-asyncio loop in a trio *system task* (held in a RunVar),
so callers need no ``open_loop()`` around them and no nursery; every
qemu.qmp coroutine runs on that loop through ``loop.run_aio_coroutine``.
Events are pumped by an asyncio task into a trio memory channel per monitor.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Coroutine

import trio
import trio_asyncio
from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPClient, QMPError, Runstate, StateError
from qemu.qmp.message import Message

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

# Events a monitor keeps for a slow consumer before dropping (and logging)
# new ones: QEMU emits a handful per lifecycle change, block jobs a few per
# second; a consumer that falls 1024 behind is stuck, not slow.
EVENT_BUFFER = 1024

# Between connect attempts while the socket file is not there yet or refuses:
# QEMU creates and listens on it during start-up.
CONNECT_RETRY = 0.05

# Seconds a monitor command may go unanswered before its caller gets an error
# (configuration: qemu_monitor_timeout).
DEFAULT_DEADLINE = 30.0

_EOF_MSG = "End of file from qemu monitor"   # src/qemu/qemu_monitor.c

_LOOP: trio.lowlevel.RunVar = trio.lowlevel.RunVar("pyvirtd_qmp_aio_loop", default=None)


async def _hold_loop(task_status: Any) -> None:
    try:
        async with trio_asyncio.open_loop() as loop:
            task_status.started(loop)
            await trio.sleep_forever()
    except trio.Cancelled:
        raise
    except Exception:   # a system task must never raise: it would crash the run
        log.exception("trio-asyncio loop for QMP failed")


async def _aio_loop() -> Any:
    """The run's trio-asyncio loop, started on first use (see module docstring)."""
    state = _LOOP.get()
    if state is None:
        state = {"ready": trio.Event(), "loop": None}
        _LOOP.set(state)

        class _Status:
            def started(self, loop: Any = None) -> None:
                state["loop"] = loop
                state["ready"].set()

        trio.lowlevel.spawn_system_task(_hold_loop, _Status(), name="pyvirtd-qmp-aio-loop")
    await state["ready"].wait()
    if state["loop"] is None:
        raise VirError(P.VIR_ERR_INTERNAL_ERROR, "QEMU monitor: asyncio bridge not available",
                       domain=P.VIR_FROM_QEMU)
    return state["loop"]


def _err(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_QEMU)


def _eof() -> VirError:
    return _err(P.VIR_ERR_OPERATION_FAILED, _EOF_MSG)


def _timed_out(held_by: str) -> VirError:
    # libvirt's wording when a call cannot get a guest whose monitor is held
    # (qemuDomainObjBeginJobInternal); its clients match the code
    return _err(P.VIR_ERR_OPERATION_TIMEOUT,
                f"cannot acquire state change lock (held by monitor={held_by})")


async def _aio_wait(fut: "asyncio.Future[Any]") -> Any:
    # the caller may give up; the command itself goes on until QEMU answers
    return await asyncio.shield(fut)


@dataclass(frozen=True)
class Vcpu:
    """One entry of query-cpus-fast."""
    index: int
    thread_id: int | None
    qom_path: str
    props: dict


class Monitor:
    """A QMP monitor.  Build it with ``await Monitor.connect(path)``, or
    ``Monitor.pending(path)`` then ``await mon.establish()``."""

    def __init__(self, path: str, deadline: float = DEFAULT_DEADLINE) -> None:
        self.path = path
        self.deadline = deadline
        self._loop: Any = None
        self._client: QMPClient | None = None
        self._ready = trio.Event()     # set once connected, or once that failed / closed
        self._send, self._recv = trio.open_memory_channel(EVENT_BUFFER)
        self._pump: asyncio.Task | None = None
        self._closed = False
        # commands sent and not answered yet, oldest first: {asyncio task: (command, sent at)}
        self._inflight: dict[asyncio.Future, tuple[str, float]] = {}
        # why the connection broke, when it was not QEMU hanging up (a garbled
        # stream, a socket error): libvirt's monitor error (qemuProcessHandleMonitorError)
        self.error: Exception | None = None
        # the greeting as QEMU sent it: {"QMP": {"version": {...}, "capabilities": [...]}}
        self.greeting: dict = {}

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    async def connect(cls, path: str, timeout: float = 30.0,
                      deadline: float = DEFAULT_DEADLINE) -> "Monitor":
        """Connect to QEMU's QMP socket at ``path``, retrying until ``timeout``.

        Does the greeting and ``qmp_capabilities``.  Raises VirError (INTERNAL_ERROR)
        when the socket does not accept within ``timeout`` seconds.
        """
        mon = cls.pending(path, deadline)
        await mon.establish(timeout)
        return mon

    @classmethod
    def pending(cls, path: str, deadline: float = DEFAULT_DEADLINE) -> "Monitor":
        """A monitor not connected yet: commands wait (up to ``deadline``) until
        `establish` connects it, and fail with EOF if that fails.  A restarted
        daemon lists its guests at once and reconnects to them in the background."""
        return cls(path, deadline)

    async def establish(self, timeout: float = 30.0,
                        keep_trying: Callable[[], bool] | None = None) -> None:
        """Connect a `pending` monitor (see `connect`); on failure it is closed.

        ``keep_trying``: asked after each ``timeout`` without success; while it
        says True, connecting starts over (a restarted daemon waits for a stopped
        QEMU to be continued rather than giving it up).
        """
        try:
            while True:
                try:
                    await self._establish(timeout)
                    break
                except VirError as exc:
                    if self._closed or keep_trying is None or not keep_trying():
                        raise
                    log.info("QMP %s: %s; trying again", self.path, exc.detail)
        except BaseException:
            self._closed = True
            self._send.close()
            raise
        finally:
            self._ready.set()

    async def _establish(self, timeout: float) -> None:
        path = self.path
        loop = await _aio_loop()
        last: Exception | None = None
        with trio.move_on_after(timeout):
            while not self._closed:
                # wait for the socket file quietly (qemu.qmp logs every failed attempt)
                if not os.path.exists(path):
                    last = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
                    await trio.sleep(CONNECT_RETRY)
                    continue
                client = await loop.run_aio_coroutine(_aio_new_client(path))
                try:
                    await loop.run_aio_coroutine(client.connect(path))
                except ConnectError as exc:
                    last = exc.exc
                    if isinstance(exc.exc, (FileNotFoundError, ConnectionRefusedError)):
                        await trio.sleep(CONNECT_RETRY)
                        continue
                    raise _err(P.VIR_ERR_INTERNAL_ERROR, f"QEMU monitor: {exc}") from exc
                except QMPError as exc:
                    raise _err(P.VIR_ERR_INTERNAL_ERROR, f"QEMU monitor: {exc}") from exc
                except OSError as exc:
                    last = exc
                    await trio.sleep(CONNECT_RETRY)
                    continue
                self._loop, self._client = loop, client
                self.greeting = dict(client.greeting._raw) if client.greeting else {}
                self._pump = loop.create_task(self._pump_events())
                return
        if self._closed:
            raise _eof()
        why = f": {last.strerror or last}" if isinstance(last, OSError) else ""
        raise _err(P.VIR_ERR_INTERNAL_ERROR, f"failed to connect to monitor socket {path}{why}")

    @property
    def closed(self) -> bool:
        return self._closed or (self._client is not None
                                and self._client.runstate != Runstate.RUNNING)

    @property
    def busy(self) -> bool:
        """Not connected yet, or a command still waits for QEMU's answer: a caller
        that must not wait (all-domain stats with NOWAIT) leaves it alone."""
        return not self._closed and (self._client is None or bool(self._inflight))

    @property
    def waiting_since(self) -> float | None:
        """When (trio.current_time()) the oldest command still unanswered was sent."""
        return next(iter(self._inflight.values()), (None, None))[1]

    async def close(self) -> None:
        """Disconnect; idempotent and never raises (QEMU may already be gone)."""
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        if self._client is not None:
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._loop.run_aio_coroutine(_aio_disconnect(self._client))
            except Exception as exc:  # EOFError after quit, ECONNRESET: the peer is gone anyway
                log.debug("QMP %s: disconnect: %r", self.path, exc)
                if not isinstance(exc, (EOFError, ConnectionResetError, BrokenPipeError)):
                    self.error = exc
        self._send.close()

    async def __aenter__(self) -> "Monitor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- events --------------------------------------------------------------

    async def _pump_events(self) -> None:
        """asyncio task: QMP events into the trio channel; closes it on disconnect."""
        client = self._client
        listener = client.events
        try:
            while client.runstate == Runstate.RUNNING:
                get = asyncio.ensure_future(listener.get())
                change = asyncio.ensure_future(client.runstate_changed())
                done, _ = await asyncio.wait({get, change}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    change.cancel()
                    try:
                        self._send.send_nowait(dict(get.result()))
                    except trio.WouldBlock:
                        log.warning("QMP %s: event consumer stuck; dropped %s",
                                    self.path, get.result().get("event"))
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        return
                else:
                    get.cancel()
            # drain what arrived before the disconnect
            while not listener.empty():
                try:
                    self._send.send_nowait(dict(await listener.get()))
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    break
        finally:
            self._send.close()

    async def events(self) -> AsyncIterator[dict]:
        """QEMU's events in order; the iteration ends when the monitor closes.

        One consumer per monitor (events are not duplicated).
        """
        async for event in self._recv:
            yield event

    # -- commands ------------------------------------------------------------

    async def _run(self, cmd: str, make: Callable[[QMPClient], Coroutine[Any, Any, Any]]) -> Any:
        """Send ``make(client)`` (an asyncio coroutine) and await its result, within
        the deadline; map qemu.qmp's errors.  See the module docstring."""
        if self._closed:
            raise _eof()
        with trio.move_on_after(self.deadline):
            await self._ready.wait()
            client = self._client
            if self._closed or client is None:
                raise _eof()
            try:
                task = self._loop.create_task(make(client))
                self._inflight[task] = (cmd, trio.current_time())
                task.add_done_callback(self._answered)
                return await self._loop.run_aio_coroutine(_aio_wait(task))
            except ExecuteError as exc:
                raise _err(P.VIR_ERR_INTERNAL_ERROR,
                           f"unable to execute QEMU command '{cmd}': {exc.error.error.desc}"
                           ) from exc
            except (ExecInterruptedError, StateError, EOFError, ConnectionError) as exc:
                raise _eof() from exc
        held = next(iter(self._inflight.values()),
                    ("reconnect" if self._client is None else cmd, 0.0))[0]
        log.warning("QMP %s: no answer to '%s' within %gs (waiting for '%s')",
                    self.path, cmd, self.deadline, held)
        raise _timed_out(held)

    def _answered(self, task: "asyncio.Future[Any]") -> None:
        """asyncio done-callback: QEMU answered (or the connection went)."""
        self._inflight.pop(task, None)
        if not task.cancelled():
            task.exception()     # retrieved here, whoever still waits for it

    async def execute(self, cmd: str, arguments: dict | None = None) -> Any:
        """Run one QMP command; return its ``return`` value.  See module docstring for errors."""
        return await self._run(cmd, lambda client: client.execute(cmd, arguments))

    async def execute_json(self, text: str) -> str:
        """``virsh qemu-monitor-command`` passthrough: QEMU's reply, as JSON text.

        An error reply is returned, not raised (as libvirt does); text that is not
        a JSON object raises VIR_ERR_INTERNAL_ERROR "cannot parse json ..." as libvirt.
        """
        try:
            msg = json.loads(text)
        except ValueError as exc:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"cannot parse json {text}: {exc}", domain=P.VIR_FROM_QEMU) from exc
        if not isinstance(msg, dict):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"cannot parse json {text}: not an object", domain=P.VIR_FROM_QEMU)
        # _raw: qemu.qmp's documented passthrough (qmp-shell uses it): the reply
        # comes back whole, an error reply included, without raising.
        reply = await self._run(str(msg.get("execute", "")),
                                lambda client: client._raw(Message(msg), assign_id=True))
        return json.dumps(dict(reply), separators=(",", ":"))

    async def human_monitor_command(self, cmdline: str) -> str:
        """``virsh qemu-monitor-command --hmp``: the HMP command's text output."""
        return await self.execute("human-monitor-command", {"command-line": cmdline})

    # -- input, display and vCPUs (passthrough.py, screenshot.py, vcpus.py) ----
    async def send_key(self, qnums: list[int], hold_time_ms: int = 0) -> None:
        """Press then release ``qnums`` (QEMU's qnum codes), held ``hold_time_ms`` if not 0."""
        args: dict[str, Any] = {"keys": [{"type": "number", "data": k} for k in qnums]}
        if hold_time_ms:
            args["hold-time"] = hold_time_ms
        await self.execute("send-key", args)

    async def inject_nmi(self) -> None:
        await self.execute("inject-nmi")

    async def screendump(self, path: str, device: str | None = None, head: int | None = None,
                         fmt: str | None = None) -> None:
        """Write the display's picture to ``path``: PPM (QEMU's default) or ``fmt`` ("png")."""
        args: dict[str, Any] = {"filename": path}
        if fmt is not None:
            args["format"] = fmt
        if device is not None:
            args["device"] = device
            if head is not None:
                args["head"] = head
        await self.execute("screendump", args)

    async def add_fd(self, fd: int) -> int:
        """Put a copy of ``fd`` in a new fd set (SCM_RIGHTS, then ``add-fd``); return its id.

        QEMU opens it as ``/dev/fdset/ID`` (matching the access mode it was
        opened with); ``remove_fd(ID)`` makes QEMU close it.  The caller still owns ``fd``.
        """
        async def send(client: QMPClient) -> Any:   # asyncio side: fd and command back to back
            client.send_fd_scm(fd)
            return await client.execute("add-fd")

        try:
            reply = await self._run("add-fd", send)
        except (QMPError, OSError) as exc:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"unable to pass fd to QEMU: {exc}") from exc
        return int(reply["fdset-id"])

    async def remove_fd(self, fdset_id: int) -> None:
        await self.execute("remove-fd", {"fdset-id": fdset_id})

    async def query_hotpluggable_cpus(self) -> list[dict]:
        """The CPU slots of the machine: {"type", "vcpus-count", "props", "qom-path"?}."""
        return list(await self.execute("query-hotpluggable-cpus"))

    async def query_status(self) -> tuple[bool, str]:
        """(running, status) where status is QEMU's RunState ("running", "paused", "shutdown", ...)."""
        reply = await self.execute("query-status")
        return bool(reply["running"]), str(reply["status"])

    async def cont(self) -> None:
        await self.execute("cont")

    async def stop(self) -> None:
        await self.execute("stop")

    async def system_powerdown(self) -> None:
        await self.execute("system_powerdown")

    async def system_reset(self) -> None:
        await self.execute("system_reset")

    async def quit(self) -> None:
        """Ask QEMU to exit; the connection dropping before the reply is the expected answer."""
        try:
            await self.execute("quit")
        except VirError as exc:
            if exc.detail != _EOF_MSG:
                raise

    async def query_chardev(self) -> dict[str, str]:
        """{chardev label: pty path} for pty backends ("charserial0": "/dev/pts/3")."""
        out = {}
        for chardev in await self.execute("query-chardev"):
            filename = chardev.get("filename", "")
            if filename.startswith("pty:"):
                out[chardev["label"]] = filename[4:]
        return out

    async def query_chardev_open(self) -> dict[str, bool]:
        """{chardev label: frontend-open} for the chardevs whose frontend reports it
        (virtio ports: is the guest's side open)."""
        return {c["label"]: bool(c["frontend-open"]) for c in await self.execute("query-chardev")
                if "frontend-open" in c}

    async def query_cpus_fast(self) -> list[Vcpu]:
        return [Vcpu(index=c["cpu-index"], thread_id=c.get("thread-id"),
                     qom_path=c.get("qom-path", ""), props=c.get("props", {}))
                for c in await self.execute("query-cpus-fast")]

    async def query_balloon(self) -> int:
        """The guest's current memory in bytes (balloon device required)."""
        return int((await self.execute("query-balloon"))["actual"])

    async def balloon(self, size: int) -> None:
        """Set the balloon target, in bytes."""
        await self.execute("balloon", {"value": int(size)})

    async def query_block(self) -> list[dict]:
        """QEMU's query-block list as is (device, qdev, inserted{file, ro, ...}, ...)."""
        return list(await self.execute("query-block"))

    async def query_blockstats(self) -> list[dict]:
        """QEMU's query-blockstats list as is (device/qdev, stats{rd_bytes, wr_operations, ...})."""
        return list(await self.execute("query-blockstats"))

    async def query_vnc(self) -> dict:
        """{"enabled": bool, "host": ..., "service": port, ...}."""
        return dict(await self.execute("query-vnc"))

    async def query_kvm(self) -> tuple[bool, bool]:
        reply = await self.execute("query-kvm")
        return bool(reply["present"]), bool(reply["enabled"])

    async def query_version(self) -> tuple[int, int, int, str]:
        reply = await self.execute("query-version")
        q = reply["qemu"]
        return int(q["major"]), int(q["minor"]), int(q["micro"]), str(reply.get("package", ""))

    async def query_name(self) -> str | None:
        return (await self.execute("query-name")).get("name")

    # -- hotplug ---------------------------------------------------------------

    async def device_add(self, props: dict) -> None:
        await self.execute("device_add", props)

    async def device_del(self, dev_id: str) -> None:
        """Ask for the device's removal; QEMU's DEVICE_DELETED event says when it is gone."""
        await self.execute("device_del", {"id": dev_id})

    async def blockdev_add(self, props: dict) -> None:
        await self.execute("blockdev-add", props)

    async def blockdev_del(self, node_name: str) -> None:
        await self.execute("blockdev-del", {"node-name": node_name})

    async def netdev_add(self, props: dict) -> None:
        await self.execute("netdev_add", props)

    async def netdev_del(self, netdev_id: str) -> None:
        await self.execute("netdev_del", {"id": netdev_id})

    async def getfd(self, fd: int, name: str) -> None:
        """Hand QEMU a copy of ``fd`` under ``name`` (SCM_RIGHTS, then ``getfd``).

        The fd rides on a byte sent just before the command, so both go out
        from the asyncio side back to back; the caller still owns ``fd``.
        """
        try:
            await self._run("getfd", lambda client: _aio_getfd(client, fd, name))
        except (QMPError, OSError) as exc:
            raise _err(P.VIR_ERR_INTERNAL_ERROR, f"unable to pass fd to QEMU: {exc}") from exc

    async def query_block_nodes(self) -> list[str]:
        """The node names of every block node QEMU has (query-named-block-nodes)."""
        return [n["node-name"] for n in await self.execute("query-named-block-nodes",
                                                           {"flat": True})]


async def _aio_new_client(path: str) -> QMPClient:
    # built on the asyncio side so its primitives bind to that loop
    return QMPClient(f"qmp:{path}")


async def _aio_getfd(client: QMPClient, fd: int, name: str) -> None:
    client.send_fd_scm(fd)
    await client.execute("getfd", {"fdname": name})


async def _aio_disconnect(client: QMPClient) -> None:
    await client.disconnect()

