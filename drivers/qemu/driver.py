"""State of the QEMU driver: its guests, their ids and locks, and what drives their lifecycle.

One `QemuDriverState` per daemon holds every guest by name.  A guest's
lifecycle operations (start, destroy, suspend, ...) hold that guest's own
lock, so one slow guest never blocks another; reads (lists, info, XML) take
no lock at all, because state only changes between awaits on the single trio
thread.

QEMU tells us what happened through QMP events, read by one watcher task per
running guest (in the driver's own nursery, so it outlives the client call
that started the guest).  The state and reason codes and the lifecycle
events follow libvirt's QEMU driver (src/qemu/qemu_process.c):

  QEMU event / fact        state (reason)             lifecycle event
  started                  running (booted)           started/booted
  STOP (not ours)          paused (unknown)           suspended/paused
  RESUME (not ours)        running (unpaused)         resumed/unpaused
  SHUTDOWN                 shutdown (unknown)         shutdown/finished|guest|host;
                                                      then QEMU is told to quit
  monitor EOF after SHUTDOWN   shut off (shutdown)    stopped/shutdown
  destroy                  shut off (destroyed)       stopped/destroyed
  monitor EOF otherwise    shut off (crashed)         stopped/failed
  gone while pyvirtd was away  shut off (crashed)     stopped/failed, held until
                                                      the first client registers
  RESET                    (unchanged)                reboot

Guests outlive the daemon: QEMU runs daemonized (process.py), the runtime
status is persisted (status.py), `stop()` only detaches, and `start()`
reattaches to every guest still running.  What every local driver does
(start/stop, ids, mark-stopped, held events) is pyvirtd.driver.hypervisor's;
this module fills its template methods for QEMU.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.snapshots import SnapshotTree
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from pyvirtd.driver import interfaces

from . import (agent, confine, dac, devacl, devices_extra, diskchain, disksecrets, filesystems,
               firmware, guest_events, launch, passthrough, process, tpm, volumes)
from .guest import QemuDomain, QemuState
from .status import RuntimeStatus

if TYPE_CHECKING:
    # imported where it is used: QMP (asyncio, trio-asyncio, qemu.qmp) takes
    # memory a daemon with no QEMU guest to talk to does not need
    from .monitor import Monitor

log = logging.getLogger(__name__)

# How long a reattaching daemon waits for a running guest's monitor: it is
# already listening, so anything slower means QEMU is stopped or wedged: the
# daemon then tries again for as long as the process and its socket are there.
REATTACH_MONITOR_TIMEOUT = 5.0
# After SHUTDOWN, how long QEMU gets to quit before it is killed.
QUIT_TIMEOUT = 5.0

# After a reset that we asked for, SeaBIOS resets the machine once more
# itself (it finds its POST already done), which QEMU reports as a guest
# RESET, about 0.1 s after ours under TCG: one within this many seconds of
# ours is the firmware's, not the guest OS rebooting (and must not trigger
# on_reboot=destroy); no OS boots and reboots that fast.
FIRMWARE_RESET_WINDOW = 2.0

# QEMU's RunState when paused -> libvirt's paused reason (qemuMonitorJSONGetStatus).
_PAUSED_REASONS = {"io-error": ds.PAUSED_IOERROR, "watchdog": ds.PAUSED_WATCHDOG,
                   "shutdown": ds.PAUSED_SHUTTING_DOWN, "guest-panicked": ds.PAUSED_CRASHED,
                   "prelaunch": ds.PAUSED_USER, "paused": ds.PAUSED_USER}


class QemuDriverState(QemuState):
    """Every guest of the daemon's QEMU driver, and the tasks that watch them."""

    async def prepare(self) -> None:
        from .caps import probe_all

        self.caps = await probe_all(str(self.store.cache_dir))

    def fill_defaults(self, d: domxml.DomainDef) -> None:
        launch.fill_defaults(self, d)

    # ------------------------------------------------------------------- start
    async def launch(self, dom: QemuDomain, live: domxml.DomainDef, *, paused: bool,
                     incoming: Any = None, loadvm: str | None = None) -> Monitor:
        """Launch QEMU for ``live`` (caller holds ``dom.lock``); qemuProcessStart.

        ``incoming`` (a restore, save.py): QEMU starts with ``-incoming defer``
        and ``await incoming(mon)`` feeds it the saved state; it stays paused.
        ``loadvm`` (a snapshot revert, snapshots.py): QEMU starts in that
        internal snapshot (``-loadvm``), paused.
        """
        if dom.released is not None:
            await dom.released.wait()    # the last run's files, cgroup and ports are back
        conf = self.confinement
        conf.check()
        name = dom.name
        monitor_path = self.store.monitor_path(name)
        pid_path = self.store.pid_path(name)
        # <disk type='volume'>: their pools say which files or devices they are
        sources = await volumes.resolve_all(self, live)
        volumes.set_live_formats(live)
        # <os firmware='efi'>: the firmware QEMU's descriptors offer, and its NVRAM
        await trio.to_thread.run_sync(firmware.prepare, live, self.store.config_dir / "nvram")
        # encrypted disks: their secrets (or the secret driver's error), a master key
        secrets = await disksecrets.prepare(self, name, live)
        key_path = disksecrets.master_key_path(self, name)
        try:
            # taps for interfaces of type network/bridge; QEMU gets their fds
            taps, tap_fds = await interfaces.plug_all(self, dom, live)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(disksecrets.remove_master_key, key_path)
            raise
        labels: list[dac.Label] = []

        async def undo() -> None:
            await trio.to_thread.run_sync(disksecrets.remove_master_key, key_path)
            await trio.to_thread.run_sync(tpm.stop, self, name)
            await trio.to_thread.run_sync(filesystems.stop, self, live)
            await interfaces.unplug_all(self, taps, live.devices_of("interface"))
            await trio.to_thread.run_sync(dac.restore_all, labels)
            await devacl.release(conf, live)    # confinement: the guest's cgroup

        mon_sock = None
        vsock_fd = None
        try:
            # <vsock>: /dev/vhost-vsock bound to the guest's cid, handed to QEMU
            vsock_fd = await trio.to_thread.run_sync(devices_extra.open_vsock, live)
            tpm_socket = await tpm.start(self, live)      # swtpm, before QEMU
            fs_sockets = await filesystems.start(self, live)     # virtiofsd, likewise
            if conf.own_start:   # QEMU may not fork: it gets the daemon's monitor socket
                mon_sock = await trio.to_thread.run_sync(process.bind_monitor, str(monitor_path))
            argv = launch.build_argv(self, live, monitor_path=str(monitor_path),
                                     pid_path=str(pid_path), tap_fds=tap_fds, volumes=sources,
                                     monitor_fd=mon_sock.fileno() if mon_sock else None,
                                     disk_secrets=secrets, vsock_fd=vsock_fd,
                                     tpm_socket=tpm_socket, fs_sockets=fs_sockets)
            if incoming is not None:
                argv += ["-incoming", "defer"]
            if loadvm is not None:
                argv += ["-loadvm", loadvm]
            if conf.switches_user and conf.dynamic_ownership:
                paths = {key: src.path for key, src in sources.items()}
                chan = launch.channel_dir(self, live)
                wanted = dac.guest_files(live, paths, str(chan) if chan.is_dir() else None)
                if secrets is not None:     # QEMU's user reads the master key
                    wanted.append(dac.Wanted(secrets.master_key_path, True))
                labels = await trio.to_thread.run_sync(dac.label_all, wanted, conf.uid, conf.gid,
                                                       conf.remember_owner)
            # confinement: private /dev and cgroup device ACL (prelaunch.py before setpriv)
            fence = await devacl.prepare(conf, live, {k: s.path for k, s in sources.items()})
            if mon_sock is None:
                monitor_path.unlink(missing_ok=True)
            try:
                pid = await process.launch(
                    argv, log_path=str(self.store.log_path(name)), pid_path=str(pid_path),
                    pass_fds=[*tap_fds.values(), *([mon_sock.fileno()] if mon_sock else []),
                              *([vsock_fd] if vsock_fd is not None else [])],
                    monitor_path=str(monitor_path) if mon_sock else None,
                    run_as=[*fence, *conf.run_as()])
            finally:
                interfaces.close_fds(tap_fds)   # QEMU holds its own copies now
                if vsock_fd is not None:
                    os.close(vsock_fd)
                    vsock_fd = None
                if mon_sock is not None:
                    mon_sock.close()
        except BaseException:
            if vsock_fd is not None:
                os.close(vsock_fd)
            with trio.CancelScope(shield=True):
                await undo()
            raise
        try:
            from .monitor import Monitor
            mon = await Monitor.connect(str(monitor_path), deadline=self.monitor_timeout)
        except BaseException:
            with trio.CancelScope(shield=True):
                await process.terminate(pid, marker=live.uuid_str)
                await undo()
            raise
        try:
            vnc_port = None
            if any(g.get("type") == "vnc" for g in live.devices_of("graphics")):
                vnc = await mon.query_vnc()
                if vnc.get("service", "").isdigit():
                    vnc_port = int(vnc["service"])
            launch.apply_runtime_info(live, await mon.query_chardev(), vnc_port)
            await diskchain.describe_run(dom, mon, live)   # <source index>, <backingStore>
            if incoming is not None:
                await incoming(mon)
            elif not paused and loadvm is None:
                dom.quiet_pause += 1
                await mon.cont()
        except BaseException:
            with trio.CancelScope(shield=True):
                await mon.close()
                await process.terminate(pid, marker=live.uuid_str)
                await undo()
            raise
        dom.pid, dom.monitor = pid, mon
        dom.labels = labels
        dom.got_shutdown = dom.being_destroyed = dom.fake_reboot = False
        dom.destroyed_as = (ds.SHUTOFF_DESTROYED, ds.STOPPED_DESTROYED)
        dom.volume_paths = volumes.paths_by_target(live, sources)
        return mon

    # -------------------------------------------------------------------- stop
    def release(self, dom: QemuDomain) -> None:
        """What qemuProcessStop gives back: files, taps, ports, pending unplugs.

        The giving back runs in the background, in order, and sets
        ``dom.released`` when done; the guest's next start waits for it, so a
        cleanup of this run never undoes what the next one set up (its labels,
        its cgroup of the same name, its ports).
        """
        dom.pid, dom.monitor = None, None
        dom.volume_paths = {}
        agent.end(dom, self)
        cleanups: list[tuple[Any, ...]] = []
        labels, dom.labels = dom.labels, []
        if labels:   # QEMU is gone: its files go back to their owners
            cleanups.append((trio.to_thread.run_sync, dac.restore_all, labels))
        if tpm.emulated(dom.definition) is not None:   # swtpm goes with QEMU
            cleanups.append((trio.to_thread.run_sync, tpm.stop, self, dom.name))
        if any(drv is not None and drv.get("type") == "virtiofs" for drv in (
                fs.find("driver") for fs in dom.definition.devices_of("filesystem"))):
            # and virtiofsd
            cleanups.append((trio.to_thread.run_sync, filesystems.stop, self, dom.definition))
        if self.confinement.cgroups:   # and its cgroup goes (devacl.py)
            cleanups.append((devacl.release, self.confinement, dom.definition))
        # the master key of its encrypted disks (disksecrets.py), after its label
        cleanups.append((trio.to_thread.run_sync, disksecrets.remove_master_key,
                         disksecrets.master_key_path(self, dom.name)))
        plugged = interfaces.plugged(dom.definition)
        if plugged or interfaces.ports(dom.definition.devices_of("interface")):
            # QEMU's exit usually took the taps already (non-persistent taps);
            # the network ports are given back here
            cleanups.append((interfaces.unplug_all, self, plugged,
                             dom.definition.devices_of("interface")))
        for pending in dom.unplugging.values():   # no DEVICE_DELETED will come now
            pending.done.set()
        dom.unplugging.clear()
        if not dom.persistent and len(dom.snapshots):
            # a transient guest goes away with its run, and its snapshot metadata
            # with it (libvirt's qemuDomainRemoveInactive); the disks keep theirs
            dom.snapshots.clear()
            cleanups.append((trio.to_thread.run_sync, SnapshotTree.remove_all_sync,
                             self.store.snapshot_dir(dom.name)))
        if cleanups:
            dom.released = trio.Event()
            self.spawn(self._give_back, dom.name, cleanups, dom.released)

    @staticmethod
    async def _give_back(name: str, cleanups: list[tuple[Any, ...]], done: trio.Event) -> None:
        """Run a stopped guest's cleanups one by one; one failing does not stop the rest."""
        try:
            for fn, *args in cleanups:
                try:
                    await fn(*args)
                except Exception:
                    log.exception("%s: giving back %s failed", name, getattr(fn, "__name__", fn))
        finally:
            done.set()

    async def terminate(self, dom: QemuDomain, *, graceful: bool = False) -> None:
        """Kill QEMU (caller holds ``dom.lock``); qemuProcessKill."""
        pid, mon = dom.pid, dom.monitor
        dom.being_destroyed = True
        try:
            if pid is not None:
                await process.terminate(pid, graceful, marker=self.marker(dom))
        except BaseException:
            dom.being_destroyed = False
            raise
        if mon is not None:
            await mon.close()

    async def destroy_domain(self, dom: QemuDomain, *, graceful: bool = False,
                             reason: int = ds.SHUTOFF_DESTROYED,
                             detail: int = ds.STOPPED_DESTROYED) -> bool:
        # what the watcher reports if it sees QEMU go first (a save: saved/saved)
        dom.destroyed_as = (reason, detail)
        return await super().destroy_domain(dom, graceful=graceful, reason=reason,
                                            detail=detail)

    async def detach(self, dom: QemuDomain) -> None:
        if dom.monitor is not None:
            await dom.monitor.close()

    async def autodestroy_domain(self, dom: QemuDomain, run: int) -> None:
        """Destroy run ``run`` of ``dom``: the connection that started it closed."""
        if dom.run != run or not dom.active:
            return
        log.info("%s: autodestroy: the connection that started it closed", dom.name)
        dom.being_destroyed = True   # as domain_destroy: a pending shutdown must not win
        async with dom.lock:
            if dom.run == run and dom.active:
                await self.destroy_domain(dom)

    # ----------------------------------------------------------------- watching
    async def watch(self, dom: QemuDomain, run: int, mon: Monitor) -> None:
        """Follow one QEMU run's events until its monitor closes."""
        await agent.begin(self, dom, mon, booted=dom.agent_booted)   # guest agent channel
        dom.agent_booted = True
        async for event in mon.events():
            if dom.run != run:
                return
            passthrough.forward(self, dom, event)   # virsh qemu-monitor-event
            try:
                await self._on_event(dom, run, mon, event)
            except VirError as exc:
                log.warning("%s: handling %s: %s", dom.name, event.get("event"), exc)
        if self._stopping or dom.run != run:
            return   # the daemon is detaching, or the run was already wound up
        if dom.pid is not None and not dom.being_destroyed and not dom.got_shutdown:
            # the monitor went away: give the process a moment to be really gone
            with trio.move_on_after(QUIT_TIMEOUT):
                await process.wait_exit(dom.pid)
        await mon.close()
        if mon.error is not None:   # not a hang-up: libvirt's monitor error event
            log.warning("%s: QEMU monitor error: %s", dom.name, mon.error)
            self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_CONTROL_ERROR, dom.ref())
        if dom.being_destroyed:
            self.mark_stopped(dom, run, *dom.destroyed_as)
        elif dom.got_shutdown:
            self.mark_stopped(dom, run, ds.SHUTOFF_SHUTDOWN, ds.STOPPED_SHUTDOWN)
        else:
            log.warning("%s: QEMU exited unexpectedly", dom.name)
            self.mark_stopped(dom, run, ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED)

    async def _on_event(self, dom: QemuDomain, run: int, mon: Monitor, event: dict) -> None:
        name = event.get("event")
        data = event.get("data") or {}
        if name == "STOP":
            if dom.quiet_pause:
                dom.quiet_pause -= 1
            elif dom.state == ds.RUNNING and not dom.got_shutdown:
                if dom.migration is not None and dom.migration.outgoing:
                    # QEMU stopped the guest to finish a migration (migration.py)
                    dom.set_state(ds.PAUSED, ds.PAUSED_MIGRATION)
                    self.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_MIGRATED)
                else:
                    dom.set_state(ds.PAUSED, ds.PAUSED_UNKNOWN)
                    self.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
                await self.save_status(dom)
        elif name == "RESUME":
            if dom.quiet_pause:
                dom.quiet_pause -= 1
            elif dom.state == ds.PAUSED:
                dom.set_state(ds.RUNNING, ds.RUNNING_UNPAUSED)
                self.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
                await self.save_status(dom)
        elif name == "SHUTDOWN":
            # not our own SIGTERM (destroy reports it) nor the SHUTDOWN that our
            # `quit` after a guest power-off causes (libvirt: "Ignoring repeated
            # SHUTDOWN event")
            if not dom.being_destroyed and not dom.got_shutdown:
                await self._on_shutdown(dom, run, mon, data)
        elif name == "RESET":
            self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_REBOOT, dom.ref())
            if (data.get("guest") and dom.definition.on_reboot in ("destroy", "preserve")
                    and trio.current_time() - dom.own_reset_at > FIRMWARE_RESET_WINDOW):
                await self._on_guest_reboot_destroy(dom, run)
        elif name == "GUEST_PANICKED":
            await self._on_crash(dom, run, mon)
        else:   # watchdog, I/O errors, graphics, hotplug, ... (guest_events.py)
            await guest_events.handle(self, dom, name, data)

    async def _on_shutdown(self, dom: QemuDomain, run: int, mon: Monitor, data: dict) -> None:
        """qemuProcessHandleShutdown + qemuProcessShutdownOrReboot."""
        guest = data.get("guest")
        # with on_reboot=destroy QEMU runs with -no-reboot and reports a guest
        # reboot as SHUTDOWN (guest-reset): that is no power-off to restart from
        guest_reset = data.get("reason") == "guest-reset"
        fake_reboot = dom.fake_reboot or (dom.definition.on_poweroff == "restart"
                                          and not guest_reset)
        if fake_reboot and (data.get("reason") != "host-signal"):
            # reboot requested (or on_poweroff=restart): reset and carry on
            dom.fake_reboot = False
            dom.quiet_pause += 1   # QEMU pauses after SHUTDOWN (-no-shutdown)
            self.emit(dom, ds.EV_SHUTDOWN, ds.SHUTDOWN_GUEST if guest else ds.SHUTDOWN_HOST)
            await self.system_reset(dom, mon)
            dom.quiet_pause += 1
            await mon.cont()
            dom.set_state(ds.RUNNING, ds.RUNNING_BOOTED)
            self.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
            await self.save_status(dom)
            return
        dom.got_shutdown = True
        dom.set_state(ds.SHUTDOWN, ds.SHUTDOWN_UNKNOWN)
        detail = (ds.SHUTDOWN_GUEST if guest is True else
                  ds.SHUTDOWN_HOST if guest is False else ds.SHUTDOWN_FINISHED)
        self.emit(dom, ds.EV_SHUTDOWN, detail)
        await self.save_status(dom)
        # -no-shutdown keeps QEMU alive after the guest powered off: end it
        self.spawn(self._finish_shutdown, dom, run, mon)

    async def _finish_shutdown(self, dom: QemuDomain, run: int, mon: Monitor) -> None:
        try:
            await mon.quit()
        except VirError:
            pass
        pid = dom.pid
        if pid is not None and dom.run == run:
            with trio.move_on_after(QUIT_TIMEOUT):
                await process.wait_exit(pid)
                return
            await process.terminate(pid, marker=self.marker(dom))

    async def _on_guest_reboot_destroy(self, dom: QemuDomain, run: int) -> None:
        """The guest reset itself and on_reboot says destroy (qemuProcessHandleReset):
        shut off (destroyed).  libvirt itself queues no lifecycle event here; pyvirtd
        emits stopped/destroyed so that clients see the guest go."""
        async with dom.lock:
            if dom.run == run and dom.active:
                await self.destroy_domain(dom)

    async def _on_crash(self, dom: QemuDomain, run: int, mon: Monitor) -> None:
        """GUEST_PANICKED: crashed (panicked), then on_crash (qemuProcessGuestPanicEvent)."""
        dom.set_state(ds.CRASHED, ds.CRASHED_PANICKED)
        self.emit(dom, ds.EV_CRASHED, ds.CRASHED_EV_PANICKED)
        action = dom.definition.on_crash
        if action in ("destroy", "coredump-destroy"):
            async with dom.lock:
                if dom.run == run:
                    await self.destroy_domain(dom, reason=ds.SHUTOFF_CRASHED,
                                              detail=ds.STOPPED_CRASHED)
        elif action in ("restart", "coredump-restart"):
            await self.system_reset(dom, mon)
            dom.quiet_pause += 1
            await mon.cont()
            dom.set_state(ds.RUNNING, ds.RUNNING_CRASHED)
            await self.save_status(dom)
        else:
            await self.save_status(dom)

    # ---------------------------------------------------------------- reattach
    async def attach(self, dom: QemuDomain, run: int, st: RuntimeStatus) -> None:
        """Take a guest over after a daemon restart (qemuProcessReconnect).

        The guest is listed at once in its last known state; its monitor
        reconnects in the background (`_reconnect`), and a call meanwhile waits
        for it (a pending Monitor), bounded by the monitor deadline.
        """
        dom.pid = st.pid
        dom.labels = st.labels
        if not process.is_running(st.pid, self.marker(dom)):
            await self._lost(dom, run, st.pid)
            return
        from .monitor import Monitor
        mon = Monitor.pending(st.monitor, deadline=self.monitor_timeout)
        dom.monitor = mon
        await interfaces.reclaim_ports(self, dom.definition)
        dom.volume_paths = await volumes.paths_after_restart(self, dom.definition)
        self.spawn(self._reconnect, dom, run, mon)

    async def _lost(self, dom: QemuDomain, run: int, pid: int) -> None:
        """QEMU died while we were away (or cannot be talked to): kill any remains
        so it can never run twice, and report it crashed."""
        await process.terminate(pid, marker=self.marker(dom))
        log.warning("%s: QEMU is gone; marking the guest shut off (crashed)", dom.name)
        self.mark_stopped(dom, run, ds.SHUTOFF_CRASHED, ds.STOPPED_FAILED, hold_event=True)

    async def _reconnect(self, dom: QemuDomain, run: int, mon: Monitor) -> None:
        """The monitor of a reattached guest, connected in the background; then catch
        up with what happened meanwhile (qemuProcessUpdateState) and watch it."""
        pid = dom.pid
        assert pid is not None
        marker = self.marker(dom)

        def alive() -> bool:
            return dom.run == run and process.is_running(pid, marker) and os.path.exists(mon.path)

        try:
            # a QEMU that is alive with its socket there but does not answer (stopped
            # with SIGSTOP, or hung) is waited for, as libvirt does, not killed;
            # calls meanwhile fail at the monitor deadline and destroy still works
            await mon.establish(REATTACH_MONITOR_TIMEOUT, keep_trying=alive)
            while True:
                try:
                    running, status = await mon.query_status()
                    break
                except VirError as exc:
                    if exc.code != P.VIR_ERR_OPERATION_TIMEOUT or not alive():
                        raise
        except VirError as exc:
            await mon.close()
            if dom.run != run or dom.being_destroyed:   # destroyed meanwhile: destroy reports it
                return
            log.warning("%s: cannot reconnect to QEMU: %s", dom.name, exc)
            await self._lost(dom, run, pid)
            self.spawn(self._deliver_held_events)
            return
        if dom.run != run:
            await mon.close()
            return
        if running and dom.state == ds.PAUSED:
            dom.set_state(ds.RUNNING, ds.RUNNING_UNPAUSED)
            self.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
        elif not running and dom.state == ds.RUNNING:
            dom.set_state(ds.PAUSED, _PAUSED_REASONS.get(status, ds.PAUSED_UNKNOWN))
            self.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
        await self.save_status(dom)
        dom.agent_booted = False    # the agent's state is the channel's, not the boot's
        self.follow(dom, run, mon)
        if status == "shutdown":   # the guest powered off while we were away
            await self._on_shutdown(dom, run, mon, {})
