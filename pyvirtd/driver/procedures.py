"""Domain procedures every local hypervisor driver answers alike, over a `HypervisorState`.

What is left to a driver after `pyvirtd.driver.hypervisor` (start, stop,
define, mark-stopped) is mostly answering the same procedures the same way:
info, state, XML, autostart, define/undefine, create/createXML, destroy and
a pty console.  `DomainProcedures` holds them once; a driver's connection
mixes it in with its ``error_domain`` and ``api_prefix`` (the prefix of the
function names libvirt's flag errors name, e.g. ``uml`` -> umlDomainGetState)
and adds what its hypervisor does differently (shutdown, suspend, stats).
The UML driver is its first user; QEMU and LXC keep their own copies for now.
"""

from __future__ import annotations

from typing import Any

import trio

from pyvirtd.consoles import ConsoleSession
from pyvirtd.driver import domains as ds
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
CONSOLE_FORCE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_FORCE
CONSOLE_SAFE = P.DomainConsoleFlags.VIR_DOMAIN_CONSOLE_SAFE


class DomainProcedures(ds.DomainLookups):
    """Lookups plus the generic domain procedures; ``driver`` is a HypervisorState."""
    driver: Any
    api_prefix: str = "hypervisor"

    def _fn(self, name: str) -> str:
        return f"{self.api_prefix}{name}"

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
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Cannot set autostart for transient domain",
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
        return self._dom(ref).definition.vcpus_current

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
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "Cannot undefine transient domain",
                           domain=self.error_domain)
        await ds.undefine(self.driver, dom)

    # -- start and destroy
    async def domain_create(self, ref: Dom) -> Any:
        return await self.domain_create_with_flags(ref, 0)

    async def domain_create_with_flags(self, ref: Dom, flags: int) -> Dom:
        check_flags(flags, START_PAUSED, self._fn("DomainCreateWithFlags"), self.error_domain)
        dom = self._dom(ref)
        async with dom.lock:
            await self.driver.start_domain(dom, paused=bool(flags & START_PAUSED))
        return dom.ref()

    async def domain_create_xml(self, xml_desc: str, flags: int) -> Dom:
        check_flags(flags, START_PAUSED | START_VALIDATE, self._fn("DomainCreateXML"),
                    self.error_domain)
        drv = self.driver
        new = drv.new_definition(xml_desc, validate_schema=bool(flags & START_VALIDATE))
        existing = drv.domains.check_add(new, live=True)
        dom = existing or drv.domain_class(new, persistent=False)
        if existing is None:
            drv.domains.add(dom)
        async with dom.lock:
            try:
                await drv.start_domain(dom, live_def=new, paused=bool(flags & START_PAUSED))
            except BaseException:
                if existing is None and not dom.active:
                    drv.domains.remove(dom)
                raise
        return dom.ref()

    async def domain_destroy(self, ref: Dom) -> None:
        await self.domain_destroy_flags(ref, 0)

    async def domain_destroy_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, self._fn("DomainDestroyFlags"), self.error_domain)
        dom = self._active(ref)
        async with dom.lock:
            if not dom.active:
                raise ds.not_running()
            await self.driver.destroy_domain(dom)

    # -- console
    def domain_open_console(self, stream: Stream, ref: Dom, dev_name: str | None,
                            flags: int) -> None:
        """Relay the first console (or the one whose alias is ``dev_name``) whose live
        definition names its host pty (<source path>)."""
        check_flags(flags, CONSOLE_FORCE | CONSOLE_SAFE, self._fn("DomainOpenConsole"),
                    self.error_domain)
        dom = self._active(ref)
        chosen = None
        for c in dom.definition.devices_of("console") + dom.definition.devices_of("serial"):
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
