"""QEMU driver connection: domain procedures (lookups, listing, definitions, lifecycle).

Methods are named after RPC procedures (see pyvirtd/dispatch.py).  Reads
take no lock; every operation that changes a running guest holds that
guest's lock (guest.QemuDomain.lock), like libvirt's per-domain job, so two
guests never wait for each other.  Error codes, error domains and wording
follow libvirt's QEMU driver (src/qemu/qemu_driver.c) as virsh prints them.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from . import save, snapshots
from .driver import QemuDriverState
from .guest import QemuDomain

# virDomainXMLFlags, virDomainCreateFlags, virDomainUndefineFlagsValues, ...
XML_SECURE, XML_INACTIVE, XML_UPDATE_CPU, XML_MIGRATABLE = 1, 2, 4, 8
START_PAUSED, START_AUTODESTROY, START_BYPASS_CACHE, START_FORCE_BOOT, START_VALIDATE = 1, 2, 4, 8, 16
START_RESET_NVRAM = 32
DEFINE_VALIDATE = 1
UNDEFINE_ALL = 1 | 2 | 4 | 8 | 16 | 32 | 64
UNDEFINE_SNAPSHOTS_METADATA, UNDEFINE_NVRAM, UNDEFINE_KEEP_NVRAM = 2, 4, 8
DESTROY_GRACEFUL = 1
SHUTDOWN_DEFAULT, SHUTDOWN_ACPI, SHUTDOWN_AGENT = 0, 1, 2
RESET_FLAGS = 0


class DomainMixin(ds.DomainLookups):
    driver: QemuDriverState
    error_domain = P.VIR_FROM_QEMU

    # -- information ------------------------------------------------------
    def domain_get_state(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "qemuDomainGetState", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        return (dom.state, dom.reason)

    def domain_get_control_info(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "qemuDomainGetControlInfo", P.VIR_FROM_QEMU)
        self._active(ref)
        return (0, 0, 0)   # VIR_DOMAIN_CONTROL_OK: no job runs long enough to report

    def domain_get_os_type(self, ref: Dom) -> str:
        return self._dom(ref).definition.os_type

    def domain_get_max_memory(self, ref: Dom) -> int:
        return self._dom(ref).definition.memory

    def domain_get_xml_desc(self, ref: Dom, flags: int) -> str:
        check_flags(flags, XML_SECURE | XML_INACTIVE | XML_UPDATE_CPU | XML_MIGRATABLE,
                    "qemuDomainGetXMLDesc", P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        secure = bool(flags & XML_SECURE)
        if flags & (XML_INACTIVE | XML_MIGRATABLE) or not dom.active:
            return domxml.format(dom.persistent_def if flags & XML_INACTIVE else dom.definition,
                                 secure=secure)
        return domxml.format(dom.definition, dom_id=dom.id, secure=secure)

    def domain_is_active(self, ref: Dom) -> int:
        return int(self._dom(ref).active)

    def domain_is_persistent(self, ref: Dom) -> int:
        return int(self._dom(ref).persistent)

    def domain_is_updated(self, ref: Dom) -> int:
        dom = self._dom(ref)
        return int(dom.active and dom.new_def is not None
                   and domxml.format(dom.new_def) != domxml.format(dom.definition))

    def domain_get_autostart(self, ref: Dom) -> int:
        return int(self._dom(ref).autostart)

    async def domain_set_autostart(self, ref: Dom, autostart: int) -> None:
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot set autostart for transient domain",
                           domain=P.VIR_FROM_QEMU)
        await trio.to_thread.run_sync(self.driver.store.set_autostart, dom.name, bool(autostart))
        dom.autostart = bool(autostart)

    def domain_get_security_label(self, ref: Dom) -> tuple:
        self._dom(ref)
        return (b"", 0)     # no security driver: an empty label, not enforcing

    def domain_get_security_label_list(self, ref: Dom) -> tuple:
        return ([P.remote_domain_get_security_label_ret(*self.domain_get_security_label(ref))], 1)

    # -- definition -------------------------------------------------------
    async def domain_define_xml(self, xml: str) -> Any:
        return await self.domain_define_xml_flags(xml, 0)

    async def domain_define_xml_flags(self, xml: str, flags: int) -> Dom:
        check_flags(flags, DEFINE_VALIDATE, "qemuDomainDefineXMLFlags", P.VIR_FROM_QEMU)
        drv = self.driver
        new = drv.new_definition(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        return (await drv.define(new)).ref()

    async def domain_undefine(self, ref: Dom) -> None:
        await self.domain_undefine_flags(ref, 0)

    async def domain_undefine_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, UNDEFINE_ALL, "qemuDomainUndefineFlags", P.VIR_FROM_QEMU)
        drv = self.driver
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot undefine transient domain",
                           domain=P.VIR_FROM_QEMU)
        if dom.managed_save:
            if not flags & save.UNDEFINE_MANAGED_SAVE:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               "Refusing to undefine while domain managed save image exists",
                               domain=P.VIR_FROM_QEMU)
            async with dom.lock:
                await save.remove_managed(drv, dom)
        if len(dom.snapshots) and not dom.active:
            if not flags & UNDEFINE_SNAPSHOTS_METADATA:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot delete inactive domain "
                               f"with {len(dom.snapshots)} snapshots", domain=P.VIR_FROM_QEMU)
        await _undefine_nvram(dom.persistent_def or dom.definition, flags)
        if flags & UNDEFINE_SNAPSHOTS_METADATA:
            await snapshots.remove_metadata(drv, dom)
        await ds.undefine(drv, dom)

    # -- lifecycle --------------------------------------------------------
    async def domain_create(self, ref: Dom) -> Any:
        return await self.domain_create_with_flags(ref, 0)

    async def domain_create_with_flags(self, ref: Dom, flags: int) -> Any:
        check_flags(flags, START_PAUSED | START_AUTODESTROY | START_BYPASS_CACHE
                    | START_FORCE_BOOT | START_RESET_NVRAM, "qemuDomainCreateWithFlags",
                    P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        async with dom.lock:
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
        return dom.ref()

    async def domain_create_xml(self, xml_desc: str, flags: int) -> Any:
        check_flags(flags, START_PAUSED | START_AUTODESTROY | START_BYPASS_CACHE
                    | START_VALIDATE | START_RESET_NVRAM, "qemuDomainCreateXML", P.VIR_FROM_QEMU)
        drv = self.driver
        new = drv.new_definition(xml_desc, validate_schema=bool(flags & START_VALIDATE))
        existing = drv.domains.check_add(new, live=True)
        dom = existing or QemuDomain(new, persistent=False)
        if existing is None:
            drv.domains.add(dom)
        async with dom.lock:
            if dom.active:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"domain '{new.name}' is already active", domain=P.VIR_FROM_DOMAIN)
            try:
                await drv.start_domain(dom, paused=bool(flags & START_PAUSED), live_def=new)
            except BaseException:
                if existing is None and not dom.active:
                    drv.domains.remove(dom)
                raise
            if flags & START_AUTODESTROY:
                self._autodestroy_add(dom)
        return dom.ref()

    def _autodestroy_add(self, dom: QemuDomain) -> None:
        """VIR_DOMAIN_START_AUTODESTROY: this run of ``dom`` ends with this connection
        (qemuProcessAutoDestroyAdd); see QemuConnection.close."""
        self.autodestroy.append((dom, dom.run))   # type: ignore[attr-defined]

    async def domain_destroy(self, ref: Dom) -> None:
        await self.domain_destroy_flags(ref, 0)

    async def domain_destroy_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, DESTROY_GRACEFUL, "qemuDomainDestroyFlags", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        dom.being_destroyed = True   # before the lock: a pending shutdown must not win
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.destroy_domain(dom, graceful=bool(flags & DESTROY_GRACEFUL))

    async def domain_shutdown(self, ref: Dom) -> None:
        await self.domain_shutdown_flags(ref, 0)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, SHUTDOWN_ACPI | SHUTDOWN_AGENT, "qemuDomainShutdownFlags",
                    P.VIR_FROM_QEMU)
        dom = self._active(ref)
        if flags == SHUTDOWN_AGENT:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured",
                           domain=P.VIR_FROM_QEMU)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            dom.fake_reboot = False
            await dom.monitor.system_powerdown()

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        check_flags(flags, SHUTDOWN_ACPI | SHUTDOWN_AGENT, "qemuDomainReboot", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        if flags == SHUTDOWN_AGENT:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured",
                           domain=P.VIR_FROM_QEMU)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            # ACPI power button, then the SHUTDOWN event turns into a reset
            # (qemuDomainRebootMonitor / qemuProcessFakeReboot)
            dom.fake_reboot = True
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
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            if dom.state == ds.PMSUSPENDED:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is pmsuspended",
                               domain=P.VIR_FROM_QEMU)
            if dom.state == ds.PAUSED:
                return
            dom.quiet_pause += 1
            try:
                await dom.monitor.stop()
            except BaseException:
                dom.quiet_pause -= 1
                raise
            dom.set_state(ds.PAUSED, ds.PAUSED_USER)
            self.driver.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
            await self.driver.save_status(dom)

    async def domain_resume(self, ref: Dom) -> None:
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active or dom.monitor is None:
                raise ds.not_running()
            if dom.state == ds.PMSUSPENDED:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is pmsuspended",
                               domain=P.VIR_FROM_QEMU)
            if dom.state != ds.PAUSED:
                return
            dom.quiet_pause += 1
            try:
                await dom.monitor.cont()
            except BaseException:
                dom.quiet_pause -= 1
                raise
            dom.set_state(ds.RUNNING, ds.RUNNING_UNPAUSED)
            self.driver.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
            await self.driver.save_status(dom)

    def domain_get_time(self, ref: Dom, flags: int) -> tuple:
        self._active(ref)
        raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured",
                       domain=P.VIR_FROM_QEMU)

    # -- interfaces -------------------------------------------------------
    async def domain_interface_addresses(self, ref: Dom, source: int, flags: int) -> list:
        """virsh domifaddr: --source lease (the networks' DHCP leases) or arp; agent needs one."""
        from pyvirtd.driver import interfaces

        check_flags(flags, 0, "qemuDomainInterfaceAddresses", P.VIR_FROM_QEMU)
        dom = self._active(ref)
        if source == interfaces.SRC_LEASE:
            return interfaces.interface_addresses(self.driver, dom)
        if source == interfaces.SRC_ARP:
            try:
                table = await trio.to_thread.run_sync(_read_text, "/proc/net/arp")
            except OSError:
                table = ""
            return interfaces.arp_addresses(dom, table)
        if source == interfaces.SRC_AGENT:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "QEMU guest agent is not configured",
                           domain=P.VIR_FROM_QEMU)
        raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                       f"Unknown IP address data source {source}", domain=P.VIR_FROM_QEMU)


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


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
