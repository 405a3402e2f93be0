"""The base of local hypervisor drivers (pyvirtd/driver/hypervisor.py), on its own.

``ChannelDriver`` is the smallest local driver there can be: a guest's "process"
is an in-memory channel that says when the guest ends (a fake: the base's
contract is what is tested here; QEMU and LXC run it for real in
tests/integration).  Time is trio's mock clock (``autojump_clock``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pyvirtd.config import Config
from pyvirtd.driver import DriverContext
from pyvirtd.driver import domains as ds
from pyvirtd.driver.hypervisor import HypervisorDomain, HypervisorState
from pyvirtd.events import EventBus
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

XML = "<domain type='fake'><name>{name}</name><memory>1024</memory><os><type>exe</type></os>" \
      "</domain>"


class RecordingBus(EventBus):
    """The daemon's bus, also keeping the lifecycle events emitted, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.lifecycle: list[tuple[str, int, int]] = []

    def emit(self, kind: str, event_id: int, obj: Any, *fields: Any) -> None:
        if event_id == P.VIR_DOMAIN_EVENT_ID_LIFECYCLE:
            self.lifecycle.append((obj.name, *fields))
        super().emit(kind, event_id, obj, *fields)


@dataclass
class Status:
    name: str
    state: int
    reason: int
    persistent: bool
    id: int
    definition: domxml.DomainDef
    alive: bool


@dataclass
class MemoryStore:
    configs: list = field(default_factory=list)
    statuses: list = field(default_factory=list)

    def ensure_dirs(self) -> None: ...
    def load_configs(self) -> list: return list(self.configs)
    def save_config(self, d: domxml.DomainDef) -> None: self.configs.append(d)
    def delete_config(self, name: str) -> None: ...
    def is_autostart(self, name: str) -> bool: return False
    def set_autostart(self, name: str, on: bool) -> None: ...
    def load_statuses(self) -> list: return list(self.statuses)
    def delete_status(self, name: str) -> None: ...


@dataclass(eq=False)
class ChannelDomain(HypervisorDomain):
    ends: Any = None            # send a reason to end the run


class ChannelDriver(HypervisorState[ChannelDomain]):
    name = "channel"
    domain_class = ChannelDomain
    error_domain = P.VIR_FROM_NONE

    def fill_defaults(self, d: domxml.DomainDef) -> None:
        pass

    async def launch(self, dom, live, *, paused):
        dom.ends, receive = trio.open_memory_channel(1)
        return receive

    async def watch(self, dom, run, receive):
        async with receive:
            reason, detail = await receive.receive()
        self.mark_stopped(dom, run, reason, detail)

    async def terminate(self, dom, *, graceful=False):
        # the "process" dies and its watcher reports it before this returns:
        # destroy_domain must then not report the end a second time
        run = dom.run
        dom.ends.send_nowait((ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED))
        while dom.run == run:
            await trio.sleep(0)

    async def attach(self, dom, run, status):
        if status.alive:
            self.follow(dom, run, await self.launch(dom, dom.definition, paused=False))
        else:
            self.mark_stopped(dom, run, ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED, hold_event=True)

    def status_record(self, dom) -> None:
        return None             # nothing on disk: MemoryStore keeps no status


def _driver(tmp_path: Path, store: MemoryStore) -> ChannelDriver:
    ctx = DriverContext(Config(), Paths.for_root(tmp_path), False, events=RecordingBus())
    return ChannelDriver(ctx, store)


def _status(name: str, dom_id: int, alive: bool) -> Status:
    return Status(name, ds.RUNNING, ds.RUNNING_BOOTED, False, dom_id,
                  domxml.parse(XML.format(name=name)), alive)


async def test_a_run_ends_once_whoever_sees_it_first(tmp_path: Path) -> None:
    drv = _driver(tmp_path, MemoryStore())
    await drv.start()
    try:
        dom = await drv.define(drv.new_definition(XML.format(name="a")))
        async with dom.lock:
            await drv.start_domain(dom)
        assert (dom.state, dom.reason, dom.id) == (ds.RUNNING, ds.RUNNING_BOOTED, 1)
        async with dom.lock:
            assert await drv.destroy_domain(dom) is False   # the watcher was first
        assert (dom.state, dom.reason, dom.id) == (ds.SHUTOFF, ds.SHUTOFF_CRASHED, -1)
        assert drv.events.lifecycle == [("a", ds.EV_DEFINED, ds.DEFINED_ADDED),
                                        ("a", ds.EV_STARTED, ds.STARTED_BOOTED),
                                        ("a", ds.EV_STOPPED, ds.STOPPED_FAILED)]
        async with dom.lock:
            await drv.start_domain(dom)
        assert dom.id == 2                                  # ids are not reused
    finally:
        await drv.stop()


async def test_a_transient_guest_goes_with_its_run(tmp_path: Path) -> None:
    drv = _driver(tmp_path, MemoryStore())
    await drv.start()
    try:
        dom = ChannelDomain(drv.new_definition(XML.format(name="t")), persistent=False)
        drv.domains.add(dom)
        async with dom.lock:
            await drv.start_domain(dom)
        dom.ends.send_nowait((ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN))
        with trio.fail_after(5):
            while "t" in drv.domains:
                await trio.sleep(0.01)
        assert drv.events.lifecycle[-1] == ("t", ds.EV_STOPPED, ds.STOPPED_SHUTDOWN)
    finally:
        await drv.stop()


class Sink:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send_event(self, data: bytes) -> None:
        self.packets.append(data)


async def test_restart_reattaches_and_holds_the_dead_ones_event(tmp_path: Path,
                                                                autojump_clock) -> None:
    store = MemoryStore(statuses=[_status("alive", 7, True), _status("dead", 9, False)])
    drv = _driver(tmp_path, store)
    await drv.start()
    try:
        assert drv.domains["alive"].state == ds.RUNNING and drv.domains["alive"].id == 7
        assert "dead" not in drv.domains                    # transient, and gone
        assert drv.next_id == 10                            # after every id seen
        assert drv.events.lifecycle == []                   # nobody listens yet
        sink = Sink()
        drv.events.register(sink, "domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        with trio.fail_after(5):
            while not sink.packets:
                await trio.sleep(0.1)
        assert drv.events.lifecycle == [("dead", ds.EV_STOPPED, ds.STOPPED_FAILED)]
    finally:
        await drv.stop()
