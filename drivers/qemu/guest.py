"""A QEMU guest and the driver facts its helpers read (the layer below driver.py).

`QemuDomain` is one guest's object; `QemuState` is the part of the driver's
state that the helper modules (launch, volumes, interfaces, hotplug,
guest_events) use: the emulator and its capabilities, the status store,
confinement, status saving.  driver.py builds the lifecycle on top of it and
imports those helpers; they import only this module, so the package's
modules form layers with no import circle (tests/unit/test_import_layers.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver import DriverContext
from pyvirtd.driver import domains as ds
from pyvirtd.driver.hypervisor import HypervisorDomain, HypervisorState
from pyvirtd.rpc import _generated as P

from . import confine, dac
from .status import RuntimeStatus, StatusStore

if TYPE_CHECKING:
    # imported where it is used: QMP (asyncio, trio-asyncio, qemu.qmp) takes
    # memory a daemon with no QEMU guest to talk to does not need
    from .monitor import Monitor


@dataclass(eq=False)
class QemuDomain(HypervisorDomain):
    """One guest (libvirt's virDomainObj + qemuDomainObjPrivate)."""
    # runtime, while a QEMU runs
    pid: int | None = None
    monitor: Monitor | None = None
    got_shutdown: bool = False      # QEMU reported SHUTDOWN in this run
    being_destroyed: bool = False
    # the shut-off reason and stopped detail the destroy in progress reports
    # (a save's is saved/saved), whichever of destroyer and watcher ends the run
    destroyed_as: tuple[int, int] = (ds.SHUTOFF_DESTROYED, ds.STOPPED_DESTROYED)
    fake_reboot: bool = False       # the next SHUTDOWN is a reboot (virDomainReboot)
    quiet_pause: int = 0            # STOP/RESUME events caused by us, not to be reported
    own_reset_at: float = 0.0       # when we last sent system_reset (trio clock)
    # host paths of the volume disks of the current run, by target (what
    # block info and stats read; the live XML keeps only pool and volume)
    volume_paths: dict[str, str] = field(default_factory=dict)
    # device_del sent, DEVICE_DELETED not seen yet: alias -> hotplug.Unplug
    unplugging: dict[str, Any] = field(default_factory=dict)
    # files of the current run handed to the QEMU user, given back when it stops
    labels: list[dac.Label] = field(default_factory=list)
    # set once what the last run's stop gives back (labels, cgroup, ports) is
    # given back: the next start waits for it, or a late cleanup would undo it
    released: Any = None
    # what tainted the guest (passthrough.taint) -> the run it happened in
    taints: dict[str, int] = field(default_factory=dict)
    # the domain job holding dom.lock, and the last completed one (jobs.py)
    job_slots: dict = field(default_factory=dict)
    # the migration of this guest under way, if any (migration.py: Migration)
    migration: Any = None
    migrate_speed: int = 0          # migrate-setspeed, MiB/s; 0: unlimited (migration.py)
    # the guest agent's connection (agent.py); False once a restarted daemon
    # reattached, until the watcher has looked at the channels
    agent: Any = None
    agent_booted: bool = True


class QemuState(HypervisorState[QemuDomain]):
    """The QEMU driver's guests and host facts, without the lifecycle (driver.py)."""
    name = "qemu"
    domain_class = QemuDomain
    error_domain = P.VIR_FROM_QEMU

    def __init__(self, ctx: DriverContext, emulator: str) -> None:
        super().__init__(ctx, StatusStore(ctx.paths))
        self.store: StatusStore
        self.emulator = emulator
        self.caps: Any = None           # caps.QemuCaps, probed at start
        # who QEMU runs as and how it is fenced in (qemu:///system: not root)
        self.confinement = confine.resolve(ctx.config, ctx.privileged)
        # seconds a monitor command may go unanswered (monitor.py's deadline)
        self.monitor_timeout = float(ctx.config.qemu_monitor_timeout)

    def status_record(self, dom: QemuDomain) -> RuntimeStatus | None:
        if dom.pid is None:
            return None
        return RuntimeStatus(dom.name, dom.state, dom.reason, dom.persistent, dom.definition,
                             pid=dom.pid, dom_id=dom.id,
                             monitor=str(self.store.monitor_path(dom.name)),
                             labels=list(dom.labels))

    def binary_caps(self) -> Any:
        if self.caps is None:
            return None
        return self.caps.binaries.get(self.emulator) or self.caps.binary_for("x86_64")

    def machine_defaults(self) -> dict[str, str]:
        """Machine alias -> canonical name, and "default" (command.py's machine_defaults)."""
        bc = self.binary_caps()
        if bc is None:
            return {}
        out = {m.alias: m.name for m in bc.machines if m.alias}
        default = bc.default_machine()
        if default:
            out["default"] = default
        return out

    def canonical_machine(self, machine: str | None) -> str | None:
        """What libvirt writes for <type machine=...>: the alias resolved ('pc' -> 'pc-i440fx-7.2')."""
        defaults = self.machine_defaults()
        if machine is None:
            return defaults.get("default", machine)
        return defaults.get(machine, machine)

    def marker(self, dom: QemuDomain) -> str:
        """What identifies this guest's QEMU in /proc/PID/cmdline (its uuid)."""
        return dom.definition.uuid_str

    def cpu_time(self, dom: QemuDomain) -> int:
        """CPU time QEMU used, in ns (utime + stime of /proc/PID/stat)."""
        if dom.pid is None:
            return 0
        try:
            with open(f"/proc/{dom.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")

    async def system_reset(self, dom: QemuDomain, mon: Monitor) -> None:
        """QMP system_reset, remembered so that the firmware's own reset that
        follows is not taken for the guest rebooting."""
        dom.own_reset_at = trio.current_time()
        await mon.system_reset()

    async def run_vcpus(self, dom: QemuDomain, mon: Monitor, run: bool, reason: int,
                        event: int, detail: int) -> None:
        """QMP ``cont`` (``run``) or ``stop`` on the daemon's own account: the
        RESUME/STOP event QEMU sends for it is not reported (``quiet_pause``);
        the state (with ``reason``), the lifecycle event and the status say why."""
        dom.quiet_pause += 1
        try:
            await (mon.cont() if run else mon.stop())
        except BaseException:
            dom.quiet_pause -= 1
            raise
        dom.set_state(ds.RUNNING if run else ds.PAUSED, reason)
        self.emit(dom, event, detail)
        await self.save_status(dom)
