"""State of the LXC driver: its containers, their controllers, and what drives their lifecycle.

Each running container has a controller process (controller.py) that owns
its namespaces, console pty and init; the driver talks to it over a unix
socket (one JSON object per line) and follows it with one watcher task per
container, in the driver's own nursery.  State, reasons and events follow
libvirt's LXC driver (src/lxc/lxc_process.c):

  fact                                 state (reason)          event
  started                              running (booted)        started/booted
  init exited (shutdown or by itself)  shut off (shutdown)     stopped/shutdown
  init rebooted (reboot(2), SIGHUP)    running (booted) again  reboot (a new run)
  destroy                              shut off (destroyed)    stopped/destroyed
  init killed, controller gone         shut off (crashed)      stopped/failed

Containers outlive the daemon: the controller is detached, the runtime
status is persisted (status.py), `stop()` only detaches, and `start()`
reconnects to every controller still there (and reports the others' end
from the exit file they left, or as crashed).  What every local driver does
(start/stop, ids, mark-stopped) is pyvirtd.driver.hypervisor's; this module
fills its template methods for containers: the worked example of
docs/drivers.md.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any

import trio
from lxml import etree

from pyvirtd.driver import DriverContext
from pyvirtd.driver import domains as ds
from pyvirtd.driver import interfaces
from pyvirtd.driver.hypervisor import HypervisorDomain, HypervisorState
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import cgroup, spec
from .status import RuntimeStatus, StatusStore

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_LXC
# How long a controller gets to set a container up and report back.
START_TIMEOUT = 30.0
# How long destroy waits for the controller to report init's end before killing it all.
DESTROY_TIMEOUT = 10.0

_EXIT_REASONS = {"shutdown": (ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN),
                 "destroyed": (ds.SHUTOFF_DESTROYED, ds.STOPPED_DESTROYED),
                 "crashed": (ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED)}


@dataclass(eq=False)
class LxcDomain(HypervisorDomain):
    """One container (virDomainObj + virLXCDomainObjPrivate)."""
    controller_pid: int | None = None
    init_pid: int | None = None
    cgroup: dict = field(default_factory=dict)
    veths: list = field(default_factory=list)
    link: Any = None                 # ControllerLink while connected
    stopped: trio.Event = field(default_factory=trio.Event)


class ControllerLink:
    """The daemon's end of one controller socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = b""

    @classmethod
    async def connect(cls, path: str, timeout: float = 5.0) -> "ControllerLink":
        with trio.fail_after(timeout):
            return cls(await trio.open_unix_socket(path))

    async def send(self, cmd: str) -> None:
        await self.stream.send_all(json.dumps({"cmd": cmd}).encode() + b"\n")

    async def receive(self) -> dict | None:
        """The next message, or None at EOF."""
        while b"\n" not in self._buf:
            try:
                data = await self.stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {}

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


def launch_controller(spec_path: str, log_path: str) -> dict:
    """Start a controller and wait for its handshake (blocking: run in a thread).

    The controller forks away at once, so the process started here exits
    immediately and is reaped; the handshake arrives on a pipe.
    """
    r, w = os.pipe()
    try:
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pyvirtd.drivers.lxc.controller", spec_path, str(w)],
                pass_fds=[w], start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=logf, stderr=subprocess.STDOUT)
        os.close(w)
        w = -1
        proc.wait()
        data = b""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                return {"ok": False, "error": "timed out waiting for the container to start"}
            chunk = os.read(r, 65536)
            data += chunk
            try:
                return json.loads(data)
            except ValueError:
                if not chunk:
                    return {"ok": False, "error": "the controller exited without a word; "
                                                  f"see {log_path}"}
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class LxcDriverState(HypervisorState[LxcDomain]):
    """Every container of the daemon's LXC driver, and the tasks that watch them."""
    name = "lxc"
    domain_class = LxcDomain
    error_domain = _FROM
    already_running_message = "Domain is already running"

    def __init__(self, ctx: DriverContext) -> None:
        super().__init__(ctx, StatusStore(ctx.paths))
        self.store: StatusStore
        # the host's <sysinfo>, read at the first request (None: the host has none)
        self.sysinfo: str | None = None
        self.sysinfo_read = False

    def fill_defaults(self, d: domxml.DomainDef) -> None:
        spec.fill_defaults(d)

    def domain_id(self, dom: LxcDomain) -> int:
        assert dom.controller_pid is not None
        return dom.controller_pid        # libvirt's LXC domain id is the controller's pid

    async def detach(self, dom: LxcDomain) -> None:
        if dom.link is not None:
            await dom.link.close()

    def status_record(self, dom: LxcDomain) -> RuntimeStatus | None:
        if dom.controller_pid is None:
            return None
        return RuntimeStatus(dom.name, dom.state, dom.reason, dom.persistent, dom.definition,
                             controller_pid=dom.controller_pid, init_pid=dom.init_pid or 0,
                             cgroup=dom.cgroup, veths=dom.veths)

    def counters(self, dom: LxcDomain) -> dict[str, int]:
        return cgroup.counters(dom.cgroup) if dom.active and dom.cgroup else {}

    # ------------------------------------------------------------------- start
    async def _plug(self, live: domxml.DomainDef) -> tuple[list[str], list[dict]]:
        veths: list[str] = []
        configs: list[dict] = []
        try:
            for i, iface in enumerate(live.devices_of("interface")):
                host, cfg = await self.plug_interface(live, iface, i)
                veths.append(host)
                configs.append(cfg)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.unplug(veths, live.devices_of("interface"))
            raise
        return veths, configs

    async def plug_interface(self, live: domxml.DomainDef, iface: etree._Element,
                             index: int) -> tuple[str, dict]:
        """The veth pair of the ``index``-th <interface> of ``live`` (virLXCProcessSetupInterfaceTap):
        (host end, the container side's config for the controller).  The live
        <interface> gets <target dev> (the host end); its filter is bound."""
        from pyvirtd import network

        mac = iface.find("mac").get("address")
        src = iface.find("source")
        kind = iface.get("type")
        if iface.find("script") is not None:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           "scripts are not supported on LXC network interfaces", domain=_FROM)
        host = None
        try:
            if kind == "ethernet":
                # a veth with no bridge, its host end named as <target dev> asks
                target = iface.find("target")
                name = target.get("dev") if target is not None else None
                host, peer = await network.plug_veth(None, mac, host_name=name or None)
            elif kind == "network":
                # a port on the network first, as a QEMU guest's NIC takes one; it says
                # where to plug (the live <source> shows it, and the stop gives it back)
                port = await interfaces.take_port(self, live, iface, src.get("network"))
                if port.plug_type not in ("network", "bridge"):
                    raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                                   f"Unsupported network type {port.plug_type} of network "
                                   f"'{src.get('network')}'", domain=_FROM)
                host, peer = await network.plug_veth(port.plug.get("bridge"), mac)
            elif kind == "bridge":
                host, peer = await network.plug_veth(src.get("bridge"), mac)
            elif kind == "direct":
                # a macvlan on the host device, moved whole into the container: no host end
                host = peer = await _macvlan(src.get("dev"), src.get("mode", "vepa"), mac)
            else:
                raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, f"Unsupported network type {kind}",
                               domain=_FROM)
            target = iface.find("target")
            if target is None:
                target = etree.SubElement(iface, "target")
            target.set("dev", host)
            if kind != "direct":    # a macvlan leaves the host: nothing to filter here
                await self.ctx.services.nwfilter.bind_interface(live.name, live.uuid, iface,
                                                                host)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.unplug([host] if host else [], [iface])
            raise
        cfg = spec.interface_config(iface, index)
        cfg["peer"] = peer
        return host, cfg

    async def unplug(self, veths: list[str], ifaces: Iterable[etree._Element] = ()) -> None:
        """Remove the host ends ``veths`` (their peers go with them) and their filter
        bindings, and give back the network ports the live <interface>s ``ifaces`` hold."""
        from pyvirtd.network import _netlink

        for veth in veths:
            await self.ctx.services.nwfilter.unbind_interface(veth)
            try:
                await _netlink("delete_link", veth)
            except Exception:
                pass    # gone with the container's namespace
        await interfaces.release_ports(self, ifaces)

    async def launch(self, dom: LxcDomain, live: domxml.DomainDef, *,
                     paused: bool) -> ControllerLink:
        """Start the container's controller (caller holds ``dom.lock``); virLXCProcessStart."""
        spec.check_sources(live)
        name = dom.name
        store = self.store
        for suffix in (".exit", ".sock"):
            store.path(name, suffix).unlink(missing_ok=True)
        paths = await trio.to_thread.run_sync(cgroup.machine_paths, name)
        veths, ifaces = await self._plug(live)
        try:
            data = spec.build_spec(live, interfaces=ifaces, cgroup=paths,
                                   socket=str(store.path(name, ".sock")),
                                   exit_file=str(store.path(name, ".exit")))
            spec_path = store.path(name, ".spec.json")
            spec_path.write_text(json.dumps(data))
            result = await trio.to_thread.run_sync(launch_controller, str(spec_path),
                                                   str(store.path(name, ".log")))
            if not result.get("ok"):
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"guest failed to start: {result.get('error', '').strip()}",
                               domain=_FROM)
            try:
                link = await ControllerLink.connect(data["socket"])
                hello = await link.receive()
            except (OSError, trio.TooSlowError) as exc:
                os.kill(result["init_pid"], signal.SIGKILL)
                raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                               f"guest failed to start: cannot reach its controller: {exc}",
                               domain=_FROM) from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.unplug(veths, live.devices_of("interface"))
            raise
        _set_console(live, result["pty"])
        dom.stopped = trio.Event()
        dom.controller_pid, dom.init_pid = result["controller_pid"], result["init_pid"]
        dom.cgroup, dom.veths, dom.link = paths, veths, link
        return link

    # -------------------------------------------------------------------- stop
    def release(self, dom: LxcDomain) -> None:
        """The controller is gone: forget its pids and link (its cgroup and veths
        stay recorded for `_tidy`, which ends the stop)."""
        dom.controller_pid = dom.init_pid = None
        dom.link = None

    async def _tidy(self, dom: LxcDomain, paths: dict, veths: list,
                    ifaces: list[etree._Element]) -> None:
        """What a controller that died uncleanly left: processes, cgroup, veths; and the
        network ports of the run's live <interface>s ``ifaces``.

        Sets ``dom.stopped`` when done, so a destroy returns only once the
        container's NICs (and their filter bindings) are gone, as libvirt's does.
        """
        def clean() -> None:
            cgroup.kill_all(paths, signal.SIGKILL)
            try:
                cgroup.remove(paths)
            except OSError as exc:
                log.warning("%s: cannot remove cgroup: %s", dom.name, exc)
        try:
            await trio.to_thread.run_sync(clean)
            await self.unplug(veths, ifaces)
            self.store.path(dom.name, ".sock").unlink(missing_ok=True)
        finally:
            dom.stopped.set()

    async def terminate(self, dom: LxcDomain, *, graceful: bool = False) -> None:
        """SIGKILL to init through the controller (caller holds ``dom.lock``);
        if the controller does not answer, kill it and init ourselves."""
        run, link = dom.run, dom.link
        stopped = dom.stopped
        sent = False
        if dom.state == ds.PAUSED:
            # a frozen (v1) container would hold its SIGKILL back
            await trio.to_thread.run_sync(cgroup.set_frozen, dom.cgroup, False)
        if link is not None:
            try:
                await link.send("destroy")
                sent = True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        if sent:
            with trio.move_on_after(DESTROY_TIMEOUT):
                await stopped.wait()
        if dom.run == run and dom.active:
            # the controller did not answer: end everything ourselves
            for pid in (dom.init_pid, dom.controller_pid):
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)

    async def destroy_domain(self, dom: LxcDomain, **kwargs: Any) -> bool:
        """As the base's; when this call marked it stopped (the controller did not
        answer), also clear what the controller would have: cgroup, veths."""
        paths, veths, ifaces = dom.cgroup, dom.veths, dom.definition.devices_of("interface")
        marked = await super().destroy_domain(dom, **kwargs)
        if marked:
            await self._tidy(dom, paths, veths, ifaces)
        return marked

    async def shutdown_domain(self, dom: LxcDomain) -> None:
        if dom.link is None:
            raise ds.not_running()
        await dom.link.send("shutdown")

    # ----------------------------------------------------------------- watching
    async def watch(self, dom: LxcDomain, run: int, link: ControllerLink) -> None:
        """Follow the controller's messages until its socket closes."""
        reason = None
        while True:
            msg = await link.receive()
            if msg is None:
                break
            if msg.get("event") == "exit":
                reason = msg.get("reason")
        await link.close()
        if self._stopping or dom.run != run:
            return
        if reason is None:
            reason = await trio.to_thread.run_sync(self.store.read_exit, dom.name)
        await self._ended(dom, run, reason)

    async def _ended(self, dom: LxcDomain, run: int, reason: str | None) -> None:
        paths, veths, ifaces = dom.cgroup, dom.veths, dom.definition.devices_of("interface")
        if reason == "reboot":
            await self._tidy(dom, paths, veths, ifaces)
            await self._reboot(dom, run)
            return
        if reason is None:
            log.warning("%s: the container's controller went away", dom.name)
        state_reason, detail = _EXIT_REASONS.get(reason or "crashed", _EXIT_REASONS["crashed"])
        if self.mark_stopped(dom, run, state_reason, detail):
            await self._tidy(dom, paths, veths, ifaces)

    async def _reboot(self, dom: LxcDomain, run: int) -> None:
        """Start run ``run`` of ``dom`` again after its init rebooted (virLXCProcessReboot).

        The old run's cgroup and veths are gone (`_tidy`, which also lets a
        destroy that raced with the reboot finish first: then the run has
        changed and nothing restarts).  As libvirt's, the new run takes the
        persistent definition, gets a new id, and the only event is REBOOT;
        if the start fails the container is reported stopped (shutdown).
        """
        async with dom.lock:
            if dom.run != run or not dom.active:
                return
            self.release(dom)
            if dom.console is not None:
                dom.console.close()
            live = (dom.new_def or dom.definition).copy()
            try:
                link = await self.launch(dom, live, paused=False)
            except VirError as exc:
                log.error("%s: restart after reboot failed: %s", dom.name, exc)
                self.mark_stopped(dom, run, ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN)
                return
            dom.run += 1
            dom.definition = live
            self.domains.set_id(dom, self.domain_id(dom))
            dom.set_state(ds.RUNNING, ds.RUNNING_BOOTED)
            await self.save_status(dom)
            self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_REBOOT, dom.ref())
            self.follow(dom, dom.run, link)

    # ---------------------------------------------------------------- reattach
    async def attach(self, dom: LxcDomain, run: int, st: RuntimeStatus) -> None:
        """Reconnect to a container's controller after a daemon restart
        (virLXCProcessReconnectDomain); report the end of one that is gone."""
        dom.controller_pid, dom.init_pid = st.controller_pid, st.init_pid
        dom.cgroup, dom.veths = st.cgroup, st.veths
        dom.stopped = trio.Event()
        link = None
        try:
            link = await ControllerLink.connect(str(self.store.path(st.name, ".sock")))
            # a suspended container's controller is frozen with it (it lives in the
            # container's cgroup, as libvirt_lxc does): its hello comes after resume
            if st.state != ds.PAUSED:
                hello = await link.receive()
                if not hello or hello.get("init_pid") != st.init_pid:
                    raise OSError("unexpected controller")
        except (OSError, trio.TooSlowError) as exc:
            log.warning("%s: cannot reconnect to its controller: %s", st.name, exc)
            if link is not None:
                await link.close()
            reason = await trio.to_thread.run_sync(self.store.read_exit, st.name)
            if reason is None and _pid_alive(st.controller_pid):
                os.kill(st.controller_pid, signal.SIGKILL)
            await self._ended(dom, run, reason)
            return
        # the networks may have restarted with the daemon: they learn the ports again
        await interfaces.reclaim_ports(self, dom.definition)
        dom.link = link
        self.follow(dom, run, link)


async def run_in_container(dom: LxcDomain, action: str, *args: str,
                           ok: tuple[int, ...] = (0,)) -> int:
    """Run mountin.py's ``action`` in ``dom``'s mount namespace; its exit status, which
    must be one of ``ok`` (else its word becomes libvirt's system error)."""
    if not dom.init_pid:
        raise VirError(P.VIR_ERR_OPERATION_INVALID, "Init pid is not yet available",
                       domain=_FROM)
    proc = await trio.run_process(
        [sys.executable, "-m", "pyvirtd.drivers.lxc.mountin", action, str(dom.init_pid),
         *args], capture_stdout=True, capture_stderr=True, check=False)
    if proc.returncode not in ok:
        raise VirError(P.VIR_ERR_SYSTEM_ERROR, proc.stderr.decode(errors="replace").strip()
                       or f"{action} in the container failed", domain=_FROM)
    return proc.returncode


async def _macvlan(parent: str | None, mode: str, mac: str) -> str:
    from pyvirtd.network import netlink_call

    if mode not in ("vepa", "bridge", "private", "passthrough"):
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, f"Unsupported macvlan mode {mode}",
                       domain=_FROM)
    try:
        return await netlink_call("create_macvlan", parent or "", mode, mac)
    except OSError as exc:
        if exc.errno == 19 and exc.strerror and exc.strerror.startswith("Unable"):
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, exc.strerror, domain=P.VIR_FROM_NET) from None
        raise VirError(P.VIR_ERR_SYSTEM_ERROR,
                       f"error creating macvlan interface {exc.filename or 'macvlan0'}@"
                       f"{parent} ({mac}): {exc.strerror or exc}", domain=P.VIR_FROM_NET) from None


def _set_console(d: domxml.DomainDef, pty: str) -> None:
    """The first console's live form: type pty with the host-side path (as libvirt shows it)."""
    for console in d.devices_of("console"):
        if console.get("type") != "pty":
            continue
        console.set("tty", pty)
        src = console.find("source")
        if src is None:
            src = etree.Element("source")
            console.insert(0, src)
        src.set("path", pty)
        if console.find("alias") is None:
            etree.SubElement(console, "alias", name="console0")
        return
