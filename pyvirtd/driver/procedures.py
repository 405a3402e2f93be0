"""Domain procedures every local hypervisor driver answers alike, over a `HypervisorState`.

What is left to a driver after `pyvirtd.driver.hypervisor` (start, stop,
define, mark-stopped) is mostly answering the same procedures the same way:
info, state, XML, autostart, define/undefine, create/createXML, destroy and
a pty console.  `DomainProcedures` holds them once.  A driver's connection
lists it after its own mixins (just before ``HypervisorConnection``), so that
the generic answer is only the fallback for what no mixin of the driver
answers its own way, and sets:

``error_domain``   the VIR_FROM_* of its errors;
``api_prefix``     the prefix of the function names libvirt's flag errors name
                   (``uml`` -> umlDomainGetState); ``api_names`` for the few
                   whose libvirt function is named otherwise (LXC's
                   lxcDomainCreateWithFiles);
``create_flags``, ``create_xml_flags``, ``destroy_flags``
                   the flags its create and destroy accept;
``console_devices``  the device kinds a console may be opened on;

and fills the hooks (``_start_defined``, ``_start_created``,
``_before_destroy``, ``_before_undefine``) where its hypervisor adds work
(QEMU: managed save, autodestroy, NVRAM).  The QEMU, LXC and UML
connections all answer through it.  `SuspendResume` is the suspend/resume of
a driver that stops a guest in one step (``_pause``): LXC freezes the
cgroup, UML asks the kernel's mconsole.
"""

from __future__ import annotations

from typing import Any

import trio

from pyvirtd.consoles import ConsoleSession
from pyvirtd.driver import domains as ds
from pyvirtd.driver import metadata as md
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.stream import Stream
from pyvirtd.xml import domain as domxml

XML_INACTIVE = P.DomainXMLFlags.VIR_DOMAIN_XML_INACTIVE
XML_FLAGS = (P.DomainXMLFlags.VIR_DOMAIN_XML_SECURE | XML_INACTIVE
             | P.DomainXMLFlags.VIR_DOMAIN_XML_UPDATE_CPU
             | P.DomainXMLFlags.VIR_DOMAIN_XML_MIGRATABLE)
START_PAUSED = P.DomainCreateFlags.VIR_DOMAIN_START_PAUSED
START_VALIDATE = P.DomainCreateFlags.VIR_DOMAIN_START_VALIDATE
DEFINE_VALIDATE = P.DomainDefineFlags.VIR_DOMAIN_DEFINE_VALIDATE
UNDEFINE_ALL = ~P.DomainUndefineFlagsValues(0)
DESTROY_GRACEFUL = P.DomainDestroyFlagsValues.VIR_DOMAIN_DESTROY_GRACEFUL
CONSOLE_FORCE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_FORCE
CONSOLE_SAFE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_SAFE
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
VCPU_MAXIMUM = P.DomainVcpuFlags.VIR_DOMAIN_VCPU_MAXIMUM


class DomainProcedures(ds.DomainLookups):
    """Lookups plus the generic domain procedures; ``driver`` is a HypervisorState."""
    driver: Any
    api_prefix: str = "hypervisor"
    api_names: dict[str, str] = {}
    create_flags: int = START_PAUSED
    create_xml_flags: int = START_PAUSED | START_VALIDATE
    destroy_flags: int = 0
    console_devices: tuple[str, ...] = ("console", "serial")
    # libvirt's QEMU driver words these in lower case
    transient_autostart_message = "Cannot set autostart for transient domain"
    transient_undefine_message = "Cannot undefine transient domain"

    def _fn(self, name: str) -> str:
        """The libvirt function a flag error names for the procedure ``name``."""
        return self.api_names.get(name) or f"{self.api_prefix}{name}"

    # -- information
    def domain_get_state(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, self._fn("DomainGetState"), self.error_domain)
        dom = self._dom(ref)
        return (dom.state, dom.reason)

    def domain_get_os_type(self, ref: Dom) -> str:
        return self._dom(ref).definition.os_type

    def domain_get_max_memory(self, ref: Dom) -> int:
        return self._dom(ref).definition.memory

    def domain_get_xml_desc(self, ref: Dom, flags: int) -> str:
        check_flags(flags, XML_FLAGS, self._fn("DomainGetXMLDesc"), self.error_domain)
        dom = self._dom(ref)
        if flags & XML_INACTIVE:
            return domxml.format(dom.persistent_def)
        return domxml.format(dom.definition, dom_id=dom.id if dom.active else None)

    def domain_is_active(self, ref: Dom) -> int:
        return int(self._dom(ref).active)

    def domain_is_persistent(self, ref: Dom) -> int:
        return int(self._dom(ref).persistent)

    def domain_is_updated(self, ref: Dom) -> int:
        return 0

    def domain_get_autostart(self, ref: Dom) -> int:
        return int(self._dom(ref).autostart)

    async def domain_set_autostart(self, ref: Dom, autostart: int) -> None:
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, self.transient_autostart_message,
                           domain=self.error_domain)
        await trio.to_thread.run_sync(self.driver.store.set_autostart, dom.name, bool(autostart))
        dom.autostart = bool(autostart)

    def domain_has_managed_save_image(self, ref: Dom, flags: int) -> int:
        self._dom(ref)
        return 0

    def domain_snapshot_num(self, ref: Dom, flags: int) -> int:
        self._dom(ref)
        return 0

    def domain_list_all_snapshots(self, ref: Dom, need_results: int, flags: int) -> tuple:
        self._dom(ref)
        return ([], 0)

    def domain_get_security_label(self, ref: Dom) -> tuple:
        self._dom(ref)
        return (b"", 0)

    def domain_get_security_label_list(self, ref: Dom) -> tuple:
        return ([P.remote_domain_get_security_label_ret(*self.domain_get_security_label(ref))], 1)

    def domain_get_vcpus_flags(self, ref: Dom, flags: int) -> int:
        """virsh vcpucount: the maximum (VIR_DOMAIN_VCPU_MAXIMUM) or current vCPUs of the
        live or the persistent definition, as the flags name it (virDomainObjGetOneDef)."""
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM,
                    self._fn("DomainGetVcpusFlags"), self.error_domain)
        d = md.one_definition(self._dom(ref), flags & (AFFECT_LIVE | AFFECT_CONFIG))
        return d.vcpus if flags & VCPU_MAXIMUM else d.vcpus_current

    # -- definition
    async def domain_define_xml(self, xml: str) -> Dom:
        return await self.domain_define_xml_flags(xml, 0)

    async def domain_define_xml_flags(self, xml: str, flags: int) -> Dom:
        check_flags(flags, DEFINE_VALIDATE, self._fn("DomainDefineXMLFlags"), self.error_domain)
        drv = self.driver
        new = drv.new_definition(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        return (await drv.define(new)).ref()

    async def domain_undefine(self, ref: Dom) -> None:
        await self.domain_undefine_flags(ref, 0)

    async def domain_undefine_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, UNDEFINE_ALL, self._fn("DomainUndefineFlags"), self.error_domain)
        dom = self._dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, self.transient_undefine_message,
                           domain=self.error_domain)
        await self._before_undefine(dom, flags)
        await ds.undefine(self.driver, dom)

    async def _before_undefine(self, dom: Any, flags: int) -> None:
        """What the hypervisor keeps of a persistent guest beside its definition
        (QEMU: managed save image, snapshots, NVRAM): check and remove it."""

    # -- start and destroy
    async def domain_create(self, ref: Dom) -> Any:
        return await self.domain_create_with_flags(ref, 0)

    async def domain_create_with_flags(self, ref: Dom, flags: int) -> Dom:
        check_flags(flags, self.create_flags, self._fn("DomainCreateWithFlags"), self.error_domain)
        dom = self._dom(ref)
        async with dom.lock:
            await self._start_defined(dom, flags)
        return dom.ref()

    async def _start_defined(self, dom: Any, flags: int) -> None:
        """Start a defined guest (caller holds ``dom.lock``) as ``flags`` ask."""
        await self.driver.start_domain(dom, paused=bool(flags & START_PAUSED))

    async def domain_create_xml(self, xml_desc: str, flags: int) -> Dom:
        check_flags(flags, self.create_xml_flags, self._fn("DomainCreateXML"), self.error_domain)
        drv = self.driver
        new = drv.new_definition(xml_desc, validate_schema=bool(flags & START_VALIDATE))
        existing = drv.domains.check_add(new, live=True)
        dom = existing or drv.domain_class(new, persistent=False)
        if existing is None:
            drv.domains.add(dom)
        async with dom.lock:
            try:
                await self._start_created(dom, new, flags)
            except BaseException:
                if existing is None and not dom.active:
                    drv.domains.remove(dom)
                raise
        return dom.ref()

    async def _start_created(self, dom: Any, live_def: Any, flags: int) -> None:
        """Start ``live_def`` for a createXML guest (caller holds ``dom.lock``)."""
        await self.driver.start_domain(dom, live_def=live_def, paused=bool(flags & START_PAUSED))

    async def domain_destroy(self, ref: Dom) -> None:
        await self.domain_destroy_flags(ref, 0)

    async def domain_destroy_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, self.destroy_flags, self._fn("DomainDestroyFlags"), self.error_domain)
        dom = self._active(ref)
        self._before_destroy(dom)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.destroy_domain(dom, graceful=bool(flags & DESTROY_GRACEFUL))

    def _before_destroy(self, dom: Any) -> None:
        """Before waiting for the guest's lock: mark what must not win meanwhile."""

    # -- console
    def domain_open_console(self, stream: Stream, ref: Dom, dev_name: str | None,
                            flags: int) -> None:
        """Relay the first console (or the one whose alias is ``dev_name``) whose live
        definition names its host pty (<source path>)."""
        check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, self._fn("DomainOpenConsole"),
                    self.error_domain)
        dom = self._active(ref)
        chosen = None
        devices = [c for kind in self.console_devices for c in dom.definition.devices_of(kind)]
        for c in devices:
            alias = c.find("alias")
            if dev_name is None or (alias is not None and alias.get("name") == dev_name):
                chosen = c
                break
        if chosen is None:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"cannot find console device '{dev_name}'",
                           domain=self.error_domain)
        src = chosen.find("source")
        if chosen.get("type") != "pty" or src is None or not src.get("path"):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR,
                           f"character device {dev_name or 'console0'} is not using a PTY",
                           domain=self.error_domain)
        old = dom.console
        if old is not None and not old.closed:
            busy = VirError(P.VIR_ERR_OPERATION_FAILED,
                            "Active console session exists for this domain",
                            domain=self.error_domain)
            if not flags & CONSOLE_FORCE:
                raise busy
            old.close(busy)
        session = ConsoleSession(dom, stream, src.get("path"))
        dom.console = session
        stream.run(session.relay)


class SuspendResume:
    """Suspend and resume of a guest that stops in one step (``_pause``), for a
    connection that also has `DomainProcedures`: the state, events and status
    around it are the same for every such hypervisor."""
    driver: Any
    error_domain: int

    async def _pause(self, dom: Any, paused: bool) -> None:
        """Stop (``paused``) or let go on every process of the running ``dom``;
        VirError when the hypervisor could not (caller holds ``dom.lock``)."""
        raise NotImplementedError

    async def domain_suspend(self, ref: Dom) -> None:
        dom = self._active(ref)     # type: ignore[attr-defined]
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if dom.state == ds.PAUSED:
                return
            await self._pause(dom, True)
            dom.set_state(ds.PAUSED, ds.PAUSED_USER)
            self.driver.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
            await self.driver.save_status(dom)

    async def domain_resume(self, ref: Dom) -> None:
        dom = self._active(ref)     # type: ignore[attr-defined]
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            if dom.state == ds.RUNNING:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, "domain is already running",
                               domain=self.error_domain)
            await self._pause(dom, False)
            dom.set_state(ds.RUNNING, ds.RUNNING_UNPAUSED)
            self.driver.emit(dom, ds.EV_RESUMED, ds.RESUMED_UNPAUSED)
            await self.driver.save_status(dom)
