"""State of the UML driver: its guests, the kernels that run them, what drives their lifecycle.

A run is one UML kernel process started through launcher.py in a session of
its own (so it outlives the daemon), followed through a pidfd (which works
for a process that is not our child, after a daemon restart) and driven
through its mconsole socket.  The kernel tells us through ``mconsole=notify``
when its mconsole is up: at boot (start waits for it) and after each reboot
(the kernel re-executes itself; the pid stays, its ptys change).

  fact                                   state (reason)       event
  started                                running (booted)     started/booted
  kernel exited 0 (poweroff, halt)       shut off (shutdown)  stopped/shutdown
  kernel exited otherwise (panic, kill)  shut off (crashed)   stopped/failed
  destroy                                shut off (destroyed) stopped/destroyed
  mconsole stop / go                     paused / running     suspended / resumed
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tty
from dataclasses import dataclass, field
from typing import Any

import trio
from lxml import etree

from pyvirtd.driver import DriverContext
from pyvirtd.driver import domains as ds
from pyvirtd.driver.hypervisor import HypervisorDomain, HypervisorState
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import mconsole, nics, spec
from .status import RuntimeStatus, StatusStore

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_UML
# How long a kernel gets from exec to a working mconsole.
START_TIMEOUT = 30.0
# How long destroy waits for the killed kernel's processes to be gone.
DESTROY_TIMEOUT = 10.0


def needs_xstate_workaround() -> bool:
    """Whether the host's FPU state is bigger than UML 6.1 can write back (launcher.py)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512f" in flags or "amx_tile" in flags
    except OSError:
        pass
    return False


@dataclass(eq=False)
class Run:
    """One running kernel: the launcher's pid, a pidfd on it, our notify socket."""
    pid: int
    pidfd: int
    notify: trio.socket.SocketType
    kernel_pid_file: str                # the kernel writes its pid there (uml_dir/umid/pid)
    destroying: bool = False            # terminate() killed it: the watcher reports "destroyed"
    ended: trio.Event = field(default_factory=trio.Event)   # the watcher saw it end

    def close(self) -> None:
        if self.pidfd >= 0:
            trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1
        self.notify.close()


@dataclass(eq=False)
class UmlDomain(HypervisorDomain):
    """One UML guest (virDomainObj and what its run needs)."""
    handle: Run | None = None
    taps: list = field(default_factory=list)        # nics.Tap: ours to delete at stop
    released: trio.Event | None = None              # set once a stopped run's NICs are gone


async def _bind_notify(path: str) -> trio.socket.SocketType:
    """Our socket for the kernel's notifications (its path is on the kernel's command line)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    await sock.bind(path)
    return sock


def _reap(pid: int) -> None:
    """Collect the launcher if it is our child (not after a daemon restart)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")]
    except OSError:
        return []


class UmlDriverState(HypervisorState[UmlDomain]):
    """Every UML guest of the daemon, and the tasks that watch them."""
    name = "uml"
    domain_class = UmlDomain
    error_domain = _FROM

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx, StatusStore(ctx.paths))
        self.store: StatusStore
        self.xstate_workaround = False
        self.version = 0                # the UML kernel's, set by the entry point

    async def prepare(self) -> None:
        self.xstate_workaround = needs_xstate_workaround()

    def fill_defaults(self, d: domxml.DomainDef) -> None:
        spec.fill_defaults(d)

    def status_record(self, dom: UmlDomain) -> RuntimeStatus | None:
        if dom.handle is None:
            return None
        return RuntimeStatus(dom.name, dom.state, dom.reason, dom.persistent, dom.definition,
                             pid=dom.handle.pid, dom_id=dom.id, taps=[list(t) for t in dom.taps])

    async def command(self, dom: UmlDomain, text: str) -> str:
        """An mconsole command to ``dom``'s kernel; libvirt's error when it fails."""
        try:
            return await mconsole.command(self.store.mconsole(dom.name), text)
        except mconsole.MconsoleError as exc:
            raise VirError(P.VIR_ERR_OPERATION_FAILED,
                           f"mconsole command '{text}' failed: {exc}", domain=_FROM) from None

    @staticmethod
    def _make_ptys(live: domxml.DomainDef) -> tuple[dict[str, int], list[int]]:
        """A pty per pty console and serial: the kernel gets the master (conN=fd:M);
        the launcher keeps the slave open for the kernel's life, so a console client
        that leaves never hangs the line up, and the slave's path stays the same
        across console sessions, reboots (the kernel re-executes with its fds) and
        daemon restarts.  Puts the paths into ``live``; returns (masters by channel,
        every fd to hand over)."""
        masters: dict[str, int] = {}
        fds: list[int] = []
        try:
            for tag, chan in (("console", "con"), ("serial", "ssl")):
                for i, chr_ in enumerate(live.devices_of(tag)):
                    if chr_.get("type") != "pty":
                        continue
                    master, slave = os.openpty()
                    fds += [master, slave]
                    tty.setraw(slave)        # no echo of the kernel's output back to it
                    masters[f"{chan}{chr_.find('target').get('port')}"] = master
                    path = os.ttyname(slave)
                    chr_.set("tty", path)
                    src = chr_.find("source")
                    if src is None:
                        src = etree.Element("source")
                        chr_.insert(0, src)
                    src.set("path", path)
                    if chr_.find("alias") is None:
                        etree.SubElement(chr_, "alias", name=f"{'serial' if tag == 'serial' else 'console'}{i}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return masters, fds

    # ------------------------------------------------------------------- start
    def _spawn(self, live: domxml.DomainDef, name: str) -> int:
        """Start launcher + kernel in a session of its own (blocking: run in a thread)."""
        store = self.store
        masters, fds = self._make_ptys(live)
        try:
            argv = spec.kernel_argv(live, umid=name, uml_dir=str(store.run_dir),
                                    notify=str(store.path(name, ".notify")),
                                    xstate_workaround=self.xstate_workaround, pty_fds=masters)
            with open(store.path(name, ".log"), "ab") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pyvirtd.drivers.uml.launcher",
                     str(store.path(name, ".exit")), "1" if self.xstate_workaround else "0",
                     *argv],
                    start_new_session=True, stdin=subprocess.DEVNULL, stdout=logf,
                    stderr=subprocess.STDOUT, cwd="/", pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)
        return proc.pid

    async def launch(self, dom: UmlDomain, live: domxml.DomainDef, *, paused: bool) -> Run:
        """Make the NICs' taps, start the kernel and wait until its mconsole answers
        (umlStartVMDaemon); on failure the taps and ports go back."""
        spec.check_sources(live)
        if dom.released is not None:
            await dom.released.wait()     # the last run's taps and ports are gone
        taps = await nics.plug_all(self, dom, live)
        try:
            run = await self._boot(dom, live, paused=paused)
        except BaseException:
            with trio.CancelScope(shield=True):
                await nics.unplug_all(self, taps, live)
            raise
        dom.taps = taps
        return run

    async def _boot(self, dom: UmlDomain, live: domxml.DomainDef, *, paused: bool) -> Run:
        name = dom.name
        notify_path = str(self.store.path(name, ".notify"))
        await trio.to_thread.run_sync(self.store.clear_run, name)
        sock = await _bind_notify(notify_path)
        try:
            pid = await trio.to_thread.run_sync(self._spawn, live, name)
        except OSError as exc:
            sock.close()
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"cannot start the UML kernel: {exc}",
                           domain=_FROM) from None
        except BaseException:
            sock.close()
            raise
        run = Run(pid, os.pidfd_open(pid), sock, str(self.store.path(name) / "pid"))
        try:
            await self._wait_ready(dom, run)
            dom.handle = run
            if paused:
                await self.command(dom, "stop")
        except BaseException:
            dom.handle = None
            with trio.CancelScope(shield=True):
                self._kill(run)
                with trio.move_on_after(DESTROY_TIMEOUT):
                    await trio.lowlevel.wait_readable(run.pidfd)
                run.close()
                _reap(pid)
            raise
        return run

    async def _wait_ready(self, dom: UmlDomain, run: Run) -> None:
        """The kernel's first notification, or a clear error if it dies or hangs first."""
        failure = ""
        async with trio.open_nursery() as nursery:
            async def died() -> None:
                nonlocal failure
                await trio.lowlevel.wait_readable(run.pidfd)
                failure = "the UML kernel exited"
                nursery.cancel_scope.cancel()
            nursery.start_soon(died)
            with trio.move_on_after(START_TIMEOUT) as scope:
                while True:
                    note = mconsole.parse_notify(await run.notify.recv(mconsole.NOTIFY.size))
                    if note and note[0] == mconsole.NOTIFY_SOCKET:
                        break
            if scope.cancelled_caught:
                failure = "timed out waiting for the UML kernel's mconsole"
            nursery.cancel_scope.cancel()
        if failure:
            tail = await trio.to_thread.run_sync(self._log_tail, dom.name)
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"guest failed to start: {failure}: {tail}",
                           domain=_FROM)

    def _log_tail(self, name: str) -> str:
        try:
            lines = self.store.path(name, ".log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " / ".join(l.strip() for l in lines[-3:] if l.strip())

    # -------------------------------------------------------------------- stop
    @staticmethod
    def _kill(run: Run) -> None:
        """SIGKILL to the launcher's process group and to the kernel's: the kernel
        leaves the launcher's session (setsid) and its processes follow it."""
        groups = {run.pid}
        try:
            with open(run.kernel_pid_file) as f:
                groups.add(os.getpgid(int(f.read().strip())))
        except (OSError, ValueError):
            pass
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def terminate(self, dom: UmlDomain, *, graceful: bool = False) -> None:
        """Kill the kernel; the watcher sees the end and reports it as destroyed."""
        run = dom.handle
        if run is None:
            return
        run.destroying = True
        self._kill(run)
        with trio.move_on_after(DESTROY_TIMEOUT):
            await run.ended.wait()

    def release(self, dom: UmlDomain) -> None:
        run, dom.handle = dom.handle, None
        if run is not None:
            run.close()
            _reap(run.pid)
        taps, dom.taps = dom.taps, []
        if taps or dom.definition.devices_of("interface"):
            # the kernel is gone: its persistent taps and the network ports go back
            dom.released = trio.Event()
            self.spawn(self._unplug, dom.name, taps, dom.definition, dom.released)
        try:
            self.store.clear_run(dom.name)
        except OSError as exc:
            log.warning("%s: cannot clear the run directory: %s", dom.name, exc)

    async def _unplug(self, name: str, taps: list, live: domxml.DomainDef,
                      done: trio.Event) -> None:
        try:
            await nics.unplug_all(self, taps, live)
        finally:
            done.set()

    async def detach(self, dom: UmlDomain) -> None:
        if dom.handle is not None:
            dom.handle.close()

    # ----------------------------------------------------------------- watching
    async def watch(self, dom: UmlDomain, run: int, handle: Run) -> None:
        """Follow the kernel until the launcher exits; notifications in between are reboots."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._notifications, dom, run, handle)
            try:
                await trio.lowlevel.wait_readable(handle.pidfd)
            except (OSError, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()
                return      # detached (daemon stopping) or released by destroy
            nursery.cancel_scope.cancel()
        _reap(handle.pid)
        try:
            if self._stopping or dom.run != run:
                return
            status = await trio.to_thread.run_sync(self.store.read_exit, dom.name)
            self._ended(dom, run, handle, status)
        finally:
            handle.ended.set()

    def _ended(self, dom: UmlDomain, run: int, handle: Run, status: int | None) -> None:
        if handle.destroying:
            self.mark_stopped(dom, run, ds.SHUTOFF_DESTROYED, ds.STOPPED_DESTROYED)
        elif status == 0:
            self.mark_stopped(dom, run, ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN)
        else:
            log.warning("%s: the UML kernel ended with status %s", dom.name, status)
            self.mark_stopped(dom, run, ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED)

    async def _notifications(self, dom: UmlDomain, run: int, handle: Run) -> None:
        while True:
            try:
                data = await handle.notify.recv(mconsole.NOTIFY.size)
            except (OSError, trio.ClosedResourceError):
                return
            note = mconsole.parse_notify(data)
            if note is None or dom.run != run:
                continue
            if note[0] == mconsole.NOTIFY_SOCKET:
                # the kernel re-executed itself (reboot); it keeps its ptys
                self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_REBOOT, dom.ref())
            elif note[0] == mconsole.NOTIFY_PANIC:
                log.error("%s: the UML kernel panicked: %s", dom.name, note[1])

    # ---------------------------------------------------------------- reattach
    async def attach(self, dom: UmlDomain, run: int, st: RuntimeStatus) -> None:
        """Take a kernel over after a daemon restart (umlProcessAutoDestroy's opposite:
        libvirt's UML driver found its guests through the uml_dir entries)."""
        exit_file = str(self.store.path(st.name, ".exit"))
        dom.taps = [tuple(t) for t in st.taps]
        try:
            if exit_file not in _cmdline(st.pid):
                raise ProcessLookupError(st.pid)
            pidfd = os.pidfd_open(st.pid)
        except ProcessLookupError:
            status = await trio.to_thread.run_sync(self.store.read_exit, st.name)
            reason, detail = ((ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN) if status == 0
                              else (ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED))
            self.mark_stopped(dom, run, reason, detail, hold_event=True)
            return
        handle = Run(st.pid, pidfd, await _bind_notify(str(self.store.path(st.name, ".notify"))),
                     str(self.store.path(st.name) / "pid"))
        dom.handle = handle
        await nics.reclaim(self, dom.definition)
        self.follow(dom, run, handle)
