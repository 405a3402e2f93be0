"""QEMU driver connection: the domain procedures QEMU answers its own way.

The generic ones (state, autostart, define/undefine, create, destroy) are
`pyvirtd.driver.procedures.DomainProcedures`; what QEMU adds to them is here
as its hooks (managed save, autodestroy, NVRAM at undefine), beside what only
QEMU has (monitor commands, shutdown and reboot by the power button, reset,
suspend through the monitor).  Methods are named after RPC procedures (see
pyvirtd/dispatch.py).  Reads take no lock; every operation that changes a
running guest holds that guest's lock (guest.QemuDomain.lock), like libvirt's per-domain job, so two
guests never wait for each other.  Error codes, error domains and wording
follow libvirt's QEMU driver (src/qemu/qemu_driver.c) as virsh prints them.
"""

from __future__ import annotations

import os
import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import save, snapshots, tpm
from .driver import QemuDriverState
from .guest import QemuDomain

_C = P.DomainCreateFlags
START_PAUSED, START_AUTODESTROY = _C.VIR_DOMAIN_START_PAUSED, _C.VIR_DOMAIN_START_AUTODESTROY
START_FORCE_BOOT = _C.VIR_DOMAIN_START_FORCE_BOOT
# accepted as libvirt accepts them; nothing here acts on BYPASS_CACHE or RESET_NVRAM
START_ACCEPTED = START_PAUSED | START_AUTODESTROY | _C.VIR_DOMAIN_START_BYPASS_CACHE \
    | _C.VIR_DOMAIN_START_RESET_NVRAM
_X = P.DomainXMLFlags
XML_SECURE, XML_INACTIVE, XML_MIGRATABLE = (_X.VIR_DOMAIN_XML_SECURE, _X.VIR_DOMAIN_XML_INACTIVE,
                                            _X.VIR_DOMAIN_XML_MIGRATABLE)
XML_FLAGS = XML_SECURE | XML_INACTIVE | _X.VIR_DOMAIN_XML_UPDATE_CPU | XML_MIGRATABLE
_U = P.DomainUndefineFlagsValues
UNDEFINE_SNAPSHOTS_METADATA = _U.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
UNDEFINE_NVRAM = _U.VIR_DOMAIN_UNDEFINE_NVRAM
UNDEFINE_KEEP_NVRAM = _U.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
UNDEFINE_KEEP_TPM = _U.VIR_DOMAIN_UNDEFINE_KEEP_TPM
DESTROY_GRACEFUL = P.DomainDestroyFlagsValues.VIR_DOMAIN_DESTROY_GRACEFUL
# virDomainShutdownFlagValues (virDomainRebootFlagValues has the same two bits)
SHUTDOWN_ACPI = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
SHUTDOWN_AGENT = P.DomainShutdownFlagValues.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
RESET_FLAGS = 0


class DomainMixin(ds.DomainLookups):
    """What QEMU answers its own way; the rest is `DomainProcedures` (listed last
    in QemuConnection), set up here with QEMU's flags and wording."""
    driver: QemuDriverState
    error_domain = P.VIR_FROM_QEMU
    api_prefix = "qemu"
    create_flags = START_ACCEPTED | START_FORCE_BOOT
    create_xml_flags = START_ACCEPTED | P.DomainCreateFlags.VIR_DOMAIN_START_VALIDATE
    destroy_flags = DESTROY_GRACEFUL
    transient_autostart_message = "cannot set autostart for transient domain"
    transient_undefine_message = "cannot undefine transient domain"

    # -- information ------------------------------------------------------

    def domain_get_control_info(self, ref: Dom, flags: int) -> tuple:
        """OK, or occupied since the oldest monitor command QEMU has not answered
        (a stuck guest: `virsh domcontrol` shows for how long), as libvirt reports."""
        check_flags(flags, 0, "qemuDomainGetControlInfo", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        since = dom.monitor.waiting_since if dom.monitor is not None else None
        if since is None:
            return (P.DomainControlState.VIR_DOMAIN_CONTROL_OK, 0, 0)
        return (P.DomainControlState.VIR_DOMAIN_CONTROL_OCCUPIED, 0,
                int((trio.current_time() - since) * 1000))

    def domain_get_xml_desc(self, ref: Dom, flags: int) -> str:
        """With secrets only when asked (XML_SECURE); MIGRATABLE is the live
        definition without the runtime id."""
        check_flags(flags, XML_FLAGS, "qemuDomainGetXMLDesc", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        secure = bool(flags & XML_SECURE)
        if flags & (XML_INACTIVE | XML_MIGRATABLE) or not dom.active:
            return domxml.format(dom.persistent_def if flags & XML_INACTIVE else dom.definition,
                                 secure=secure)
        return domxml.format(dom.definition, dom_id=dom.id, secure=secure)

    def domain_is_updated(self, ref: Dom) -> int:
        dom = self._dom(ref)
        return int(dom.active and dom.new_def is not None
                   and domxml.format(dom.new_def) != domxml.format(dom.definition))


    # -- definition -------------------------------------------------------
    async def _before_undefine(self, dom: QemuDomain, flags: int) -> None:
        """The managed save image, snapshot metadata and NVRAM go with the
        definition only when the flags say so, the TPM state unless they say
        otherwise (qemuDomainUndefineFlags)."""
        if dom.managed_save:
            if not flags & save.UNDEFINE_MANAGED_SAVE:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               "Refusing to undefine while domain managed save image exists",
                               domain=P.VIR_FROM_QEMU)
            async with dom.lock:
                await save.remove_managed(self.driver, dom)
        if len(dom.snapshots) and not dom.active:
            if not flags & UNDEFINE_SNAPSHOTS_METADATA:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot delete inactive domain "
                               f"with {len(dom.snapshots)} snapshots", domain=P.VIR_FROM_QEMU)
        defn = dom.persistent_def or dom.definition
        await _undefine_nvram(defn, flags)
        if flags & UNDEFINE_SNAPSHOTS_METADATA:
            await snapshots.remove_metadata(self.driver, dom)
        if not flags & UNDEFINE_KEEP_TPM:
            await trio.to_thread.run_sync(tpm.remove_state, self.driver, defn)

    # -- lifecycle --------------------------------------------------------
    async def _start_defined(self, dom: QemuDomain, flags: int) -> None:
        """From the managed save image if there is one (FORCE_BOOT drops it first)."""
        if dom.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is already running",
                           domain=P.VIR_FROM_QEMU)
        if dom.managed_save and flags & START_FORCE_BOOT:
            await save.remove_managed(self.driver, dom)
        if not (dom.managed_save and await save.start_managed(
                self.driver, dom, paused=bool(flags & START_PAUSED))):
            await self.driver.start_domain(dom, paused=bool(flags & START_PAUSED))
        if flags & START_AUTODESTROY:
            self._autodestroy_add(dom)

    async def _start_created(self, dom: QemuDomain, live_def: domxml.DomainDef,
                             flags: int) -> None:
        if dom.active:      # started by another call while this one waited for the lock
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"domain '{live_def.name}' is already active", domain=P.VIR_FROM_DOMAIN)
        await self.driver.start_domain(dom, paused=bool(flags & START_PAUSED), live_def=live_def)
        if flags & START_AUTODESTROY:
            self._autodestroy_add(dom)

    def _autodestroy_add(self, dom: QemuDomain) -> None:
        """VIR_DOMAIN_START_AUTODESTROY: this run of ``dom`` ends with this connection
        (qemuProcessAutoDestroyAdd); see QemuConnection.close."""
        self.autodestroy.append((dom, dom.run))   # type: ignore[attr-defined]

    def _before_destroy(self, dom: QemuDomain) -> None:
        dom.being_destroyed = True   # before the lock: a pending shutdown must not win

    async def domain_shutdown(self, ref: Dom) -> None:
        await self.domain_shutdown_flags(ref, 0)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        await self._power_button(ref, flags, "qemuDomainShutdownFlags", reboot=False)

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        """ACPI power button, then the SHUTDOWN event turns into a reset
        (qemuDomainRebootMonitor / qemuProcessFakeReboot)."""
        await self._power_button(ref, flags, "qemuDomainReboot", reboot=True)

    async def _power_button(self, ref: Dom, flags: int, function: str, *, reboot: bool) -> None:
        check_flags(flags, SHUTDOWN_ACPI | SHUTDOWN_AGENT, function, P.VIR_FROM_QEMU)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            dom.fake_reboot = reboot
            await dom.monitor.system_powerdown()

    async def domain_reset(self, ref: Dom, flags: int) -> None:
        check_flags(flags, RESET_FLAGS, "qemuDomainReset", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            await self.driver.system_reset(dom, dom.monitor)
            dom.fake_reboot = False
            if dom.state == ds.CRASHED:
                dom.set_state(ds.PAUSED, ds.PAUSED_CRASHED)
                await self.driver.save_status(dom)

    async def domain_suspend(self, ref: Dom) -> None:
        await self._run_vcpus(ref, False)

    async def domain_resume(self, ref: Dom) -> None:
        await self._run_vcpus(ref, True)

    async def _run_vcpus(self, ref: Dom, run: bool) -> None:
        """QMP ``cont`` (``run``) or ``stop``; a guest already there is left alone.
        The STOP/RESUME event QEMU sends for it is ours (``quiet_pause``): the
        state and event here say the user paused or resumed it."""
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            if dom.state == ds.PMSUSPENDED:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is pmsuspended",
                               domain=P.VIR_FROM_QEMU)
            if (dom.state == ds.PAUSED) != run:
                return
            if run:
                await self.driver.run_vcpus(dom, dom.monitor, True, ds.RUNNING_UNPAUSED,
                                            ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
            else:
                await self.driver.run_vcpus(dom, dom.monitor, False, ds.PAUSED_USER,
                                            ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)

    # -- interfaces -------------------------------------------------------
    async def domain_interface_addresses(self, ref: Dom, source: int, flags: int) -> list:
        """virsh domifaddr: --source lease (the networks' DHCP leases) or arp (agent: agent_procs.py)."""
        from pyvirtd.driver import interfaces

        check_flags(flags, 0, "qemuDomainInterfaceAddresses", P.VIR_FROM_QEMU)
        return await interfaces.addresses(self.driver, self._active(ref), source)


async def _undefine_nvram(defn: domxml.DomainDef, flags: int) -> None:
    """A guest's NVRAM file at undefine, as libvirt 9.0 (qemuDomainUndefineFlags):
    removed with UNDEFINE_NVRAM, kept with UNDEFINE_KEEP_NVRAM, and with neither
    the undefine is refused while the file exists (its variables would be lost
    or orphaned without the user saying which)."""
    path = next(((e.text or "").strip() for e in defn.os_extra
                 if e.tag == "nvram" and (e.text or "").strip()), None)
    if path is None or not await trio.to_thread.run_sync(os.path.exists, path):
        return
    if flags & UNDEFINE_NVRAM:
        try:
            await trio.to_thread.run_sync(os.unlink, path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, f"failed to remove nvram: {path}: "
                           f"{exc.strerror}", domain=P.VIR_FROM_QEMU) from None
    elif not flags & UNDEFINE_KEEP_NVRAM:
        raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot undefine domain with nvram",
                       domain=P.VIR_FROM_QEMU)
