"""The base of local hypervisor drivers: guests that run here, their lifecycle, the host.

A local driver (QEMU, LXC, UML) keeps every guest of the daemon by
name, runs each one as a process it watches, and reattaches to them after a
daemon restart.  What that takes apart from the hypervisor itself lives here
once, as three base classes a driver subclasses:

``HypervisorState``   the daemon-wide state: guests, ids, the service nursery
                      that outlives client calls, start (load definitions ->
                      reattach to running guests -> autostart), stop (detach,
                      guests keep running), define, mark-stopped, held
                      events.  A driver fills the template methods::

                          launch(dom, live, paused)   start a run, return its handle
                          attach(dom, run, status)    take a run over after a restart
                          watch(dom, run, handle)     follow a run until it ends
                          terminate(dom, graceful)    end a run (destroy)
                          release(dom)                forget a run's resources
                          fill_defaults(defn)         the driver's XML post-parse
                          status_record(dom)          what reattach needs (store.py)
``HypervisorDriver``  the entry point (pyvirtd.driver.Driver): probe, then
                      start/stop of the state and open of connections.
``HypervisorConnection``  one client's connection; with ``HostFacts``, the
                      host procedures every local driver answers alike.

Concurrency: lifecycle operations hold the guest's own lock (``dom.lock``,
libvirt's per-domain job); reads take none, since state only changes between
awaits on the single trio thread.  ``mark_stopped`` is synchronous on purpose:
whichever of a destroyer and a watcher gets there first wins, the other finds
the run generation (``dom.run``) moved on.

A remote, stateless driver (ESX) has no guests here and none of this: it
implements `pyvirtd.driver.Driver` and the topics of pyvirtd/driver/api.py
directly (docs/drivers.md, last section).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar, Generic, TypeVar
from urllib.parse import SplitResult

import trio

from pyvirtd import hostinfo
from pyvirtd.driver import DriverContext, shared_subsystems
from pyvirtd.driver import domains as ds
from pyvirtd.driver.objects import DOMAIN, ObjectList
from pyvirtd.driver.store import DomainStatus, DomainStatusStore
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

log = logging.getLogger(__name__)

# How long the events of guests found dead at daemon start wait for a first listener.
HELD_EVENTS_TIMEOUT = 300.0

# With no security driver, libvirt reports the model "none" with DOI "0".
SECURITY_MODEL, SECURITY_DOI = "none", "0"


@dataclass(eq=False)
class HypervisorDomain(ds.DomainObject):
    """A guest of a local driver: the domain object plus what every run has."""
    run: int = 0                # generation of the current run; bumped at start and stop
    lock: trio.Lock = field(default_factory=trio.Lock)
    console: Any = None         # consoles.ConsoleSession holding the console, if any


DomT = TypeVar("DomT", bound=HypervisorDomain)


class HypervisorState(Generic[DomT]):
    """Every guest of one local driver, and the tasks that watch them.

    Subclasses set ``name`` (for logs and task names), ``domain_class`` and
    ``error_domain``, give ``store`` and fill the template methods below.
    """
    name: ClassVar[str]
    domain_class: type[DomT]
    error_domain: ClassVar[int]
    # libvirt's QEMU and LXC drivers word it differently
    already_running_message: ClassVar[str] = "domain is already running"

    def __init__(self, ctx: DriverContext, store: DomainStatusStore) -> None:
        self.ctx = ctx
        self.events = ctx.events
        self.store = store
        self.domains: ObjectList[DomT] = ObjectList(DOMAIN.for_driver(self.error_domain))
        self.next_id = 1
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()
        self._stopping = False
        # lifecycle events of guests found dead at daemon start, held for the first listener
        self._held_events: list[tuple[Any, int, int]] = []

    # ------------------------------------------------------------ template methods
    async def prepare(self) -> None:
        """Before any guest is loaded (e.g. probe the hypervisor's capabilities)."""

    def fill_defaults(self, d: domxml.DomainDef) -> None:
        """The driver's XML post-parse: check what it cannot run, add what it implies."""
        raise NotImplementedError

    async def launch(self, dom: DomT, live: domxml.DomainDef, *, paused: bool) -> Any:
        """Start a run of ``live`` for ``dom``: set the runtime fields, return the handle
        ``watch`` follows.  On failure undo everything and raise (VirError)."""
        raise NotImplementedError

    async def attach(self, dom: DomT, run: int, status: Any) -> None:
        """Take run ``run`` over after a daemon restart: ``follow`` it, or mark it stopped."""
        raise NotImplementedError

    async def watch(self, dom: DomT, run: int, handle: Any) -> None:
        """Follow run ``run`` until it ends, then ``mark_stopped`` (in the service nursery)."""
        raise NotImplementedError

    async def terminate(self, dom: DomT, *, graceful: bool = False) -> None:
        """End the current run (caller holds ``dom.lock``); the process is gone on return."""
        raise NotImplementedError

    def release(self, dom: DomT) -> None:
        """Forget a run that ended: runtime fields, ports, files (sync; spawn what awaits)."""

    async def detach(self, dom: DomT) -> None:
        """The daemon stops: let go of a running guest, leaving it running."""

    def status_record(self, dom: DomT) -> DomainStatus | None:
        """What a restarted daemon needs to reattach to the running ``dom`` (the
        driver's `DomainStatus`), or None while its run has nothing to keep yet."""
        raise NotImplementedError

    def domain_id(self, dom: DomT) -> int:
        """The id a run gets once launched (libvirt's LXC uses the controller's pid)."""
        return self.allocate_id()

    # ------------------------------------------------------------ daemon start/stop
    async def start(self) -> None:
        """Load definitions, reattach to running guests, then autostart (*StateInitialize)."""
        await trio.to_thread.run_sync(self.store.ensure_dirs)
        await self.prepare()
        ready = trio.Event()
        trio.lowlevel.spawn_system_task(self._service, ready, name=f"pyvirtd-{self.name}-driver")
        await ready.wait()
        for d in await trio.to_thread.run_sync(self.store.load_configs):
            dom = self.domain_class(d, persistent=True)
            dom.autostart = self.store.is_autostart(d.name)
            self.domains.add(dom)
        statuses = await trio.to_thread.run_sync(self.store.load_statuses)
        # ids continue after the highest one still in use, as libvirt's do
        self.next_id = max([st.id for st in statuses] + [0]) + 1
        async with trio.open_nursery() as nursery:
            for st in statuses:
                nursery.start_soon(self._reattach, st)
        if self._held_events:
            self.spawn(self._deliver_held_events)
        for dom in list(self.domains.values()):
            if dom.autostart and not dom.active:
                await self._autostart(dom)

    async def stop(self) -> None:
        """Detach from every guest, leaving them running (the next daemon reattaches)."""
        self._stopping = True
        for dom in self.domains.values():
            await self.detach(dom)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            await self._done.wait()

    async def _service(self, ready: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                ready.set()
                await trio.sleep_forever()
        except trio.Cancelled:
            raise
        except Exception:  # a system task must never raise: it would end the daemon
            log.exception("%s driver service failed", self.name)
        finally:
            self._done.set()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the driver's nursery: it outlives the client call."""
        assert self._nursery is not None, "driver not started"
        self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("%s driver task %s failed", self.name, getattr(fn, "__name__", fn))

    async def _autostart(self, dom: DomT) -> None:
        try:
            async with dom.lock:
                if not dom.active:
                    await self.start_domain(dom)
        except VirError as exc:
            log.error("failed to autostart %s domain '%s': %s", self.name, dom.name, exc)

    # ------------------------------------------------------------------- helpers
    def emit(self, dom: DomT, event: int, detail: int) -> None:
        """A lifecycle event of ``dom`` (VIR_DOMAIN_EVENT_ID_LIFECYCLE)."""
        self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, dom.ref(), event, detail)

    def allocate_id(self) -> int:
        dom_id = self.next_id
        self.next_id += 1
        return dom_id

    async def save_config(self, d: domxml.DomainDef) -> None:
        await trio.to_thread.run_sync(self.store.save_config, d)

    async def save_status(self, dom: DomT) -> None:
        """Persist the status of a running ``dom``: whenever its run changes, so that a
        daemon killed at any moment finds it again."""
        st = self.status_record(dom) if dom.active else None
        if st is None:
            return
        text = self.store.encode_status(st)     # here: the live definition may change meanwhile
        await trio.to_thread.run_sync(self.store.write_status, dom.name, text)

    def new_definition(self, xml: str, *, validate_schema: bool = False) -> domxml.DomainDef:
        """A client's domain XML, parsed and completed by the driver (define, create)."""
        d = domxml.parse(xml, validate_schema=validate_schema)
        self.fill_defaults(d)
        return d

    async def define(self, new: domxml.DomainDef) -> DomT:
        """Store ``new`` as a persistent definition: a new domain, or the next
        definition of an existing one (virDomainObjListAdd); DEFINED event."""
        existing = self.domains.check_add(new, live=False)
        await self.save_config(new)
        dom, replaced = ds.install_definition(self.domains, new, existing, self.domain_class)
        self.emit(dom, ds.EV_DEFINED, ds.DEFINED_UPDATED if replaced else ds.DEFINED_ADDED)
        return dom

    def follow(self, dom: DomT, run: int, handle: Any) -> None:
        """Watch run ``run`` of ``dom`` from the service nursery."""
        self.spawn(self.watch, dom, run, handle)

    # ------------------------------------------------------------------- start
    async def start_domain(self, dom: DomT, *, paused: bool = False,
                           live_def: domxml.DomainDef | None = None,
                           incoming: Any = None, from_snapshot: str | None = None,
                           reverted: bool = False,
                           incoming_detail: int = ds.STARTED_RESTORED) -> None:
        """Start a run of ``dom`` (caller holds ``dom.lock``); *ProcessStart.

        ``live_def`` (createXML over a defined guest) runs instead of the
        persistent definition, which comes back when the guest stops.
        ``from_snapshot`` (QEMU's snapshot revert, drivers/qemu/snapshots.py):
        the run starts in that internal snapshot, paused (from snapshot),
        reported started/from-snapshot.  ``reverted``: a boot after a revert to a
        shut-off snapshot, whose events say from-snapshot too.
        ``incoming_detail``: the started event's detail of an ``incoming`` run
        (restored; migrated for an incoming migration, drivers/qemu/migration.py).
        """
        if dom.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, self.already_running_message,
                           domain=self.error_domain)
        persistent_def = dom.definition
        live = (live_def or persistent_def).copy()
        # ``incoming`` (QEMU's restore, drivers/qemu/save.py) feeds the new run a
        # saved state: it is left paused (migrating), reported started/restored
        if from_snapshot is not None:
            handle = await self.launch(dom, live, paused=True, loadvm=from_snapshot)  # type: ignore[call-arg]
        elif incoming is None:
            handle = await self.launch(dom, live, paused=paused)
        else:
            handle = await self.launch(dom, live, paused=True, incoming=incoming)  # type: ignore[call-arg]
        dom.run += 1
        if dom.persistent:
            dom.new_def = persistent_def
        dom.definition = live
        self.domains.set_id(dom, self.domain_id(dom))
        if incoming is not None:
            dom.set_state(ds.PAUSED, ds.PAUSED_MIGRATION)
        elif from_snapshot is not None:
            dom.set_state(ds.PAUSED, ds.PAUSED_FROM_SNAPSHOT)
        else:
            dom.set_state(ds.PAUSED if paused else ds.RUNNING,
                          ds.PAUSED_USER if paused else ds.RUNNING_BOOTED)
        await self.save_status(dom)
        snap = from_snapshot is not None or reverted
        self.emit(dom, ds.EV_STARTED, incoming_detail if incoming else
                  ds.STARTED_FROM_SNAPSHOT if snap else ds.STARTED_BOOTED)
        if paused and incoming is None and from_snapshot is None:
            self.emit(dom, ds.EV_SUSPENDED,
                      ds.SUSPENDED_FROM_SNAPSHOT if reverted else ds.SUSPENDED_PAUSED)
        self.follow(dom, dom.run, handle)

    # -------------------------------------------------------------------- stop
    def mark_stopped(self, dom: DomT, run: int, reason: int, detail: int,
                     hold_event: bool = False) -> bool:
        """Record that run ``run`` of ``dom`` ended (*ProcessStop); False if already done.

        ``hold_event``: the guest was found dead at daemon start; its stopped
        event waits for the first client that listens (`_deliver_held_events`).
        """
        if dom.run != run or not dom.active:
            return False
        dom.run += 1
        dom.set_state(ds.SHUTOFF, reason)
        self.release(dom)
        if dom.console is not None:
            dom.console.close()
        self.store.delete_status(dom.name)
        if hold_event:
            self._held_events.append((dom.ref(), ds.EV_STOPPED, detail))
        else:
            self.emit(dom, ds.EV_STOPPED, detail)
        self.domains.set_id(dom, -1)
        if dom.new_def is not None:
            dom.definition, dom.new_def = dom.new_def, None
        if not dom.persistent:
            self.domains.remove(dom)
        return True

    async def destroy_domain(self, dom: DomT, *, graceful: bool = False,
                             reason: int = ds.SHUTOFF_DESTROYED,
                             detail: int = ds.STOPPED_DESTROYED) -> bool:
        """End the run (caller holds ``dom.lock``); True if this call marked it stopped
        (False: the watcher saw the end first and did)."""
        run = dom.run
        await self.terminate(dom, graceful=graceful)
        return self.mark_stopped(dom, run, reason, detail)

    async def _deliver_held_events(self) -> None:
        """Emit the stopped/failed events of guests found dead at start, once a client listens.

        libvirt emits them during its reconnect at daemon start, before any
        client can be connected, so nobody ever receives them.  Here they are
        held and emitted once, when the first client registers for domain
        events (a client that reconnects after a restart, such as nova or
        virt-manager, does that first); after HELD_EVENTS_TIMEOUT they are
        dropped.  Clients registering later learn the state from the listing.
        """
        with trio.move_on_after(HELD_EVENTS_TIMEOUT):
            while not self.events.has_listeners("domain"):
                await trio.sleep(0.1)
            await trio.sleep(0.2)     # let a client finish registering its callbacks
            held, self._held_events = self._held_events, []
            for ref, event, detail in held:
                self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, ref, event, detail)
            return
        self._held_events = []

    # ---------------------------------------------------------------- reattach
    async def _reattach(self, status: DomainStatus) -> None:
        """Take a guest over again after a daemon restart (*ProcessReconnect)."""
        live = status.definition
        dom = self.domains.get(status.name)
        if dom is None:
            dom = self.domain_class(live, persistent=False)
        else:
            self.domains.remove(dom)    # indexed again below, under the live definition's UUID
            if status.persistent:
                dom.new_def = dom.definition
        dom.definition = live
        dom.persistent = status.persistent and dom.new_def is not None
        dom.id = status.id
        self.domains.add(dom)
        dom.set_state(status.state, status.reason)
        dom.run += 1
        await self.attach(dom, dom.run, status)


def _first_stats(stats: list[tuple[str, int]], nparams: int, make: Callable) -> tuple:
    """(the first ``nparams`` stats as wire records, how many); with nparams 0 only
    how many there are, as libvirt's node stats calls answer a sizing call."""
    if nparams == 0:
        return ([], len(stats))
    return ([make(k, v) for k, v in stats[:nparams]], min(nparams, len(stats)))


class HostFacts:
    """Host procedures a local driver answers from this host's /proc and /sys.

    Read on every call (pyvirtd/hostinfo.py); cheap enough for the loop.
    A connection class mixes this in and has ``driver`` (a HypervisorState).
    """
    driver: Any

    def connect_get_hostname(self) -> str:
        return socket.gethostname()

    def connect_is_secure(self) -> int:
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_is_alive(self) -> int:
        return 1

    def node_get_info(self) -> tuple:
        return hostinfo.node_info()

    def node_get_free_memory(self) -> int:
        return hostinfo.free_memory()

    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]:
        return hostinfo.cells_free_memory(start_cell, maxcells)

    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple:
        size, online = hostinfo.cpu_map()
        return (hostinfo.cpumap_bytes(online, size) if need_map else b"",
                len(online) if need_online else 0, size)

    def node_get_cpu_stats(self, cpu_num: int, nparams: int, flags: int) -> tuple:
        return _first_stats(hostinfo.cpu_stats(cpu_num), nparams, P.remote_node_get_cpu_stats)

    def node_get_memory_stats(self, nparams: int, cell_num: int, flags: int) -> tuple:
        return _first_stats(hostinfo.memory_stats(cell_num), nparams,
                            P.remote_node_get_memory_stats)

    def node_get_free_pages(self, pages: list[int], start_cell: int, cell_count: int,
                            flags: int) -> list[int]:
        """Free pages per cell and page size (KiB): base pages from MemFree, huge pages
        from sysfs (virNumaGetPageInfo)."""
        cells = hostinfo.numa_nodes() or [0]
        if start_cell < 0 or start_cell + cell_count - 1 > max(cells):
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"start_cell {start_cell} out of range (0-{max(cells)})",
                           domain=P.VIR_FROM_NONE)
        base = os.sysconf("SC_PAGE_SIZE") // 1024
        out = []
        for cell in range(start_cell, start_cell + cell_count):
            node = Path(f"/sys/devices/system/node/node{cell}")
            mem = hostinfo.meminfo(node / "meminfo") if node.exists() else hostinfo.meminfo()
            for size in pages:
                if size == base:
                    out.append(mem.get("MemFree", 0) // base)
                    continue
                hp = (node if node.exists() else Path("/sys/kernel/mm")) / "hugepages" / \
                    f"hugepages-{size}kB" / "free_hugepages"
                try:
                    out.append(int(hp.read_text()))
                except (OSError, ValueError):
                    raise VirError(P.VIR_ERR_INVALID_ARG,
                                   f"page size {size} is not available on node {cell}",
                                   domain=P.VIR_FROM_NONE) from None
        return out

    def node_get_security_model(self) -> tuple:
        # no security driver: virsh lxc-enter-namespace then enters no label
        return (SECURITY_MODEL.encode() + b"\0", SECURITY_DOI.encode() + b"\0")


# The capabilities of a driver with one kind of guest on this host's architecture.
_GUEST_CAPS = """<capabilities>
  <host>
    <uuid>{uuid}</uuid>
    <cpu>
      <arch>{arch}</arch>
    </cpu>
  </host>
  <guest>
    <os_type>{os_type}</os_type>
    <arch name='{arch}'>
      <wordsize>64</wordsize>
      <emulator>{emulator}</emulator>
      <domain type='{domain_type}'/>
    </arch>
  </guest>
</capabilities>
"""


class HypervisorConnection(HostFacts):
    """One client's connection to a local driver; methods are named after RPC procedures.

    ``close`` is synchronous (the daemon calls it while tearing the client
    down); work it starts that must await goes to ``driver.spawn``.
    """

    def __init__(self, driver: Any, uri: str, subsystems: tuple[Any, ...]) -> None:
        self.driver = driver
        self.uri = uri
        self.events = driver.events
        self.subsystems = subsystems

    def close(self) -> None:
        pass

    def connect_supports_feature(self, feature: int) -> int:
        """Typed parameters may carry strings, and virNetworkUpdate's arguments come in
        their documented order; nothing else of the driver features.

        The second matters to every driver's connection: a client asks the
        connection it opened (lxc://, uml://), not the network subsystem, and
        without the feature libvirt's client library swaps NETWORK_UPDATE's
        command and section for old servers, which the shared network
        subsystem would then read as the wrong section."""
        return int(feature in (P.VIR_DRV_FEATURE_TYPED_PARAM_STRING,
                               P.VIR_DRV_FEATURE_NETWORK_UPDATE_HAS_CORRECT_ORDER))

    def guest_capabilities(self, *, os_type: str, emulator: str, domain_type: str) -> str:
        """The capabilities document of a driver whose guests are one ``os_type`` of
        ``domain_type`` on this host's architecture (LXC, UML); the host's UUID is
        the configured one or the machine's."""
        return _GUEST_CAPS.format(uuid=self.driver.ctx.host_uuid or hostinfo.host_uuid(),
                                  arch=os.uname().machine, os_type=os_type,
                                  emulator=emulator, domain_type=domain_type)


class HypervisorDriver:
    """The entry point of a local driver (a `pyvirtd.driver.Driver`).

    Subclasses set ``name``, ``schemes`` and ``connection_class`` and fill
    ``unavailable`` (why the hypervisor cannot run here, or None),
    ``make_state`` and ``connection_uri``.
    """
    name: ClassVar[str]
    schemes: ClassVar[tuple[str, ...]]
    connection_class: ClassVar[type[HypervisorConnection]]

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.state: HypervisorState | None = None
        self.subsystems: tuple[Any, ...] = ()

    def unavailable(self) -> str | None:
        """Why this hypervisor cannot work here, or None."""
        return None

    def make_state(self) -> HypervisorState:
        raise NotImplementedError

    def connection_uri(self, uri: SplitResult) -> str:
        """The URI a connection reports for ``uri``; VirError for a path this driver refuses."""
        raise NotImplementedError

    def probe(self) -> str | None:
        reason = self.unavailable()
        if reason:
            return reason
        self.state = self.make_state()
        # created now, not at the first open, so that their start() (repair,
        # autostart, the default network) runs when the daemon starts
        self.subsystems = shared_subsystems(self.ctx)
        return None

    async def start(self) -> None:
        assert self.state is not None
        await self.state.start()

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.stop()

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> HypervisorConnection:
        assert self.state is not None
        return self.connection_class(self.state, self.connection_uri(uri), self.subsystems)
