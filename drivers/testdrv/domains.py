"""Test driver: domains (definition, lifecycle, listing, tuning, metadata).

A `Domain` mirrors libvirt's virDomainObj: ``definition`` is the live
definition while the domain runs (else the persistent one) and ``new_def`` the
persistent configuration of a running persistent domain, which CONFIG-flagged
changes and ``dumpxml --inactive`` use.  Error codes, domains (VIR_FROM_TEST
vs VIR_FROM_DOMAIN) and wording follow libvirt's test driver as observed with
``virsh -c test:///default`` (see the developers' notes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

from pyvirtd.driver import metadata as metadata_api
from pyvirtd.errors import VirError, check_flags
from pyvirtd.names import check_name
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import domain as domxml

from .state import TestState

# States, reasons and lifecycle events are libvirt's enums, shared by every driver.
from pyvirtd.driver.domains import (  # noqa: E402,F401  (re-exported to the test driver's modules)
    CRASHED, EV_DEFINED, EV_RESUMED, EV_SHUTDOWN, EV_STARTED, EV_STOPPED, EV_SUSPENDED,
    EV_UNDEFINED, BLOCKED, DEFINED_ADDED, DEFINED_FROM_SNAPSHOT, DEFINED_RENAMED, DEFINED_UPDATED,
    NOSTATE, PAUSED, PAUSED_FROM_SNAPSHOT, PAUSED_USER, PMSUSPENDED, RESUMED_FROM_SNAPSHOT,
    RESUMED_UNPAUSED, RUNNING, RUNNING_BOOTED, RUNNING_FROM_SNAPSHOT, RUNNING_RESTORED,
    RUNNING_UNKNOWN, RUNNING_UNPAUSED, SHUTDOWN, SHUTDOWN_FINISHED, SHUTOFF, SHUTOFF_DESTROYED,
    SHUTOFF_FROM_SNAPSHOT, SHUTOFF_SAVED, SHUTOFF_SHUTDOWN, SHUTOFF_UNKNOWN, STARTED_BOOTED,
    STARTED_FROM_SNAPSHOT, STARTED_RESTORED, STOPPED_DESTROYED, STOPPED_FROM_SNAPSHOT,
    STOPPED_SAVED, STOPPED_SHUTDOWN, SUSPENDED_FROM_SNAPSHOT, SUSPENDED_PAUSED,
    UNDEFINED_REMOVED, UNDEFINED_RENAMED, DomainObject, matches_list_flags as _matches,
    not_running)

# Flags (virDomainXMLFlags, virDomainModificationImpact, ...).
_X = P.DomainXMLFlags
XML_SECURE, XML_INACTIVE, XML_UPDATE_CPU, XML_MIGRATABLE = (
    _X.VIR_DOMAIN_XML_SECURE, _X.VIR_DOMAIN_XML_INACTIVE, _X.VIR_DOMAIN_XML_UPDATE_CPU,
    _X.VIR_DOMAIN_XML_MIGRATABLE)
AFFECT_LIVE = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_LIVE
AFFECT_CONFIG = P.DomainModificationImpact.VIR_DOMAIN_AFFECT_CONFIG
VCPU_MAXIMUM, VCPU_GUEST = 4, 8
MEM_MAXIMUM = 4
UNDEFINE_MANAGED_SAVE, UNDEFINE_SNAPSHOTS_METADATA, UNDEFINE_NVRAM, UNDEFINE_KEEP_NVRAM = 1, 2, 4, 8
UNDEFINE_CHECKPOINTS_METADATA = 16
START_PAUSED, START_AUTODESTROY, START_BYPASS_CACHE, START_FORCE_BOOT, START_VALIDATE = 1, 2, 4, 8, 16
METADATA_DESCRIPTION, METADATA_TITLE, METADATA_ELEMENT = 0, 1, 2
DEFINE_VALIDATE = 1

# What the test driver answers for a guest (testDomainGet*).
SECURITY_LABEL = "libvirt-test"
GUEST_HOSTNAME = "testhost"
DEFAULT_ARCH = "i686"
# Header of a save image (ours: a magic, the XML length, the XML).
SAVE_MAGIC = b"pyvirtdTestGuestMagic"
MAX_SAVED_XML = 8192        # libvirt's test driver's bound on a save image's XML
IFNAME_PREFIX = "testnet"
SCHED_WEIGHT = 50


@dataclass(eq=False)
class Domain(DomainObject):
    sched_weight: int = SCHED_WEIGHT
    memtune: dict = field(default_factory=dict)
    blkio_weight: int = 0


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _read_save_image(path: str) -> str:
    """The domain XML of a test driver save image: the header first, then as
    much XML as it announces (a /dev/zero is refused, not read forever)."""
    with open(path, "rb") as f:
        head = f.read(len(SAVE_MAGIC) + 4)
        if not head.startswith(SAVE_MAGIC) or len(head) < len(SAVE_MAGIC) + 4:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "mismatched header magic",
                           domain=P.VIR_FROM_TEST)
        size = int.from_bytes(head[len(SAVE_MAGIC):], "little")
        if not 1 <= size <= MAX_SAVED_XML:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "length of metadata out of range",
                           domain=P.VIR_FROM_TEST)
        return f.read(size).decode(errors="replace")


def new_definition(xml: str, *, validate_schema: bool = False) -> domxml.DomainDef:
    d = domxml.parse(xml, validate_schema=validate_schema)
    domxml.fill_defaults(d, default_arch=DEFAULT_ARCH, ifname_prefix=IFNAME_PREFIX)
    return d


def load_domains(state: TestState, elements: list) -> None:
    """The <domain> elements of a node file: persistent and running, like libvirt's."""
    for elem in elements:
        d = domxml.parse_element(elem)
        domxml.fill_defaults(d, default_arch=DEFAULT_ARCH, ifname_prefix=IFNAME_PREFIX)
        dom = Domain(d)
        dom.set_state(RUNNING, RUNNING_UNKNOWN)
        dom.id = state.allocate_domain_id()
        dom.new_def = d.copy()
        state.domains.add(dom)


def _set_name(dom: Domain, name: str) -> None:
    dom.definition.name = name


class DomainMixin:
    state: TestState

    # -- lookups ----------------------------------------------------------

    def _emit(self, dom: Domain, event: int, detail: int) -> None:
        self.state.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, dom.ref(), event, detail)

    def _dom(self, ref: Any) -> Domain:
        """The domain a client's handle names (found by uuid, as libvirt does)."""
        return self.state.domains.by_ref(ref)

    def _active_dom(self, ref: Any) -> Domain:
        dom = self._dom(ref)
        if not dom.active:
            raise not_running()
        return dom

    @staticmethod
    def _not_found() -> VirError:
        return VirError(P.VIR_ERR_NO_DOMAIN, domain=P.VIR_FROM_TEST)

    # libvirt's test driver reports these without a detail (hence not the list's by_*)
    def domain_lookup_by_name(self, name: str) -> Any:
        return self._found(self.state.domains.get(name))

    def domain_lookup_by_uuid(self, uuid: bytes) -> Any:
        return self._found(self.state.domains.find_uuid(uuid))

    def domain_lookup_by_id(self, dom_id: int) -> Any:
        return self._found(self.state.domains.find_id(dom_id))

    def _found(self, dom: Domain | None) -> Any:
        if dom is None:
            raise self._not_found()
        return dom.ref()

    # -- listing ----------------------------------------------------------

    def _sorted_active(self) -> list[Domain]:
        return sorted((d for d in self.state.domains.values() if d.active), key=lambda d: d.id)

    def connect_num_of_domains(self) -> int:
        return self.state.domains.count(active=True)

    def connect_list_domains(self, maxids: int) -> list[int]:
        return [d.id for d in self._sorted_active()][:maxids]

    def connect_num_of_defined_domains(self) -> int:
        return self.state.domains.count(active=False)

    def connect_list_defined_domains(self, maxnames: int) -> list[str]:
        return [d.name for d in self.state.domains.values() if not d.active][:maxnames]

    def connect_list_all_domains(self, need_results: int, flags: int) -> tuple:
        doms = self.state.domains.list_all(flags)
        return ([d.ref() for d in doms] if need_results else [], len(doms))

    # -- information ------------------------------------------------------

    def domain_get_info(self, ref: Any) -> tuple:
        dom = self._dom(ref)
        d = dom.definition
        return (dom.state, d.memory, d.current_memory, d.vcpus_current, time.time_ns())

    def domain_get_state(self, ref: Any, flags: int) -> tuple:
        check_flags(flags, 0, "testDomainGetState", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        return (dom.state, dom.reason)

    def domain_get_control_info(self, ref: Any, flags: int) -> tuple:
        check_flags(flags, 0, "testDomainGetControlInfo", P.VIR_FROM_TEST)
        dom = self._active_dom(ref)
        return (0, 0, 0)

    def domain_get_os_type(self, ref: Any) -> str:
        self._dom(ref)
        return "linux"

    def domain_get_xml_desc(self, ref: Any, flags: int) -> str:
        check_flags(flags, XML_SECURE | XML_INACTIVE | XML_MIGRATABLE,
                    "testDomainGetXMLDesc", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if flags & XML_INACTIVE:
            return domxml.format(dom.persistent_def, secure=bool(flags & XML_SECURE))
        return domxml.format(dom.definition, dom_id=dom.id if dom.active else None,
                             secure=bool(flags & XML_SECURE))

    def domain_is_active(self, ref: Any) -> int:
        return int(self._dom(ref).active)

    def domain_is_persistent(self, ref: Any) -> int:
        return int(self._dom(ref).persistent)

    def domain_is_updated(self, ref: Any) -> int:
        self._dom(ref)
        return 0

    def domain_get_autostart(self, ref: Any) -> int:
        return int(self._dom(ref).autostart)

    def domain_set_autostart(self, ref: Any, autostart: int) -> None:
        self._dom(ref).autostart = bool(autostart)

    def domain_get_security_label(self, ref: Any) -> tuple:
        dom = self._dom(ref)
        if not dom.active:
            return (b"", 0)
        return (SECURITY_LABEL.encode() + b"\0", 1)

    def domain_get_security_label_list(self, ref: Any) -> tuple:
        label = self.domain_get_security_label(ref)
        return ([P.remote_domain_get_security_label_ret(*label)], 1)

    def domain_get_messages(self, ref: Any, flags: int) -> list[str]:
        self._dom(ref)
        return []

    def domain_get_hostname(self, ref: Any, flags: int) -> str:
        check_flags(flags, 0, "testDomainGetHostname", P.VIR_FROM_TEST)
        self._active_dom(ref)
        return GUEST_HOSTNAME

    def domain_get_time(self, ref: Any, flags: int) -> tuple:
        self._active_dom(ref)
        return (627319920, 0)

    def domain_set_time(self, ref: Any, seconds: int, nseconds: int, flags: int) -> None:
        self._active_dom(ref)

    # -- definition -------------------------------------------------------

    def _add(self, new: domxml.DomainDef, *, live: bool) -> tuple[Domain, bool]:
        """Put a definition into the object list (virDomainObjListAdd).

        Returns the domain and whether it replaced an existing one.
        """
        existing = self.state.domains.check_add(new, live=live)
        if existing is not None:
            return existing, True
        return self.state.domains.add(Domain(new)), False

    def domain_define_xml(self, xml: str) -> Any:
        return self.domain_define_xml_flags(xml, 0)

    def domain_define_xml_flags(self, xml: str, flags: int) -> Any:
        check_flags(flags, DEFINE_VALIDATE, "testDomainDefineXMLFlags", P.VIR_FROM_TEST)
        new = new_definition(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        dom, replaced = self._add(new, live=False)
        if replaced:
            if dom.active:
                dom.new_def = new
            else:
                dom.definition = new
        dom.persistent = True
        self._emit(dom, EV_DEFINED, DEFINED_UPDATED if replaced else DEFINED_ADDED)
        return dom.ref()

    def domain_undefine(self, ref: Any) -> None:
        self.domain_undefine_flags(ref, 0)

    def domain_undefine_flags(self, ref: Any, flags: int) -> None:
        check_flags(flags, UNDEFINE_MANAGED_SAVE | UNDEFINE_SNAPSHOTS_METADATA | UNDEFINE_NVRAM
                    | UNDEFINE_KEEP_NVRAM | UNDEFINE_CHECKPOINTS_METADATA, "testDomainUndefineFlags",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if dom.managed_save:
            if not flags & UNDEFINE_MANAGED_SAVE:
                raise VirError(P.VIR_ERR_OPERATION_INVALID, domain=P.VIR_FROM_TEST,
                               message="Refusing to undefine while domain managed save image exists")
            dom.managed_save = False
        if dom.snapshots and not dom.active:
            if not flags & UNDEFINE_SNAPSHOTS_METADATA:
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               f"cannot delete inactive domain with {len(dom.snapshots)} snapshots",
                               domain=P.VIR_FROM_TEST)
        if flags & UNDEFINE_SNAPSHOTS_METADATA:
            dom.snapshots.clear()
        self._emit(dom, EV_UNDEFINED, UNDEFINED_REMOVED)
        dom.autostart = False
        if dom.active:
            dom.persistent = False
            dom.new_def = None
        else:
            self.state.domains.remove(dom)

    def domain_rename(self, ref: Any, new_name: str, flags: int) -> int:
        check_flags(flags, 0, "testDomainRename", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        check_name("domain", new_name, error_domain=P.VIR_FROM_TEST)
        if dom.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot rename active domain",
                           domain=P.VIR_FROM_TEST)
        if new_name in self.state.domains:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           f"domain with name '{new_name}' already exists", domain=P.VIR_FROM_DOMAIN)
        self._emit(dom, EV_UNDEFINED, UNDEFINED_RENAMED)
        self.state.domains.rename(dom, new_name, _set_name)
        self._emit(dom, EV_DEFINED, DEFINED_RENAMED)
        return 0

    # -- lifecycle --------------------------------------------------------

    def _start(self, dom: Domain, reason: int, detail: int) -> None:
        if dom.persistent:
            dom.new_def = dom.definition.copy()
        self.state.domains.set_id(dom, self.state.allocate_domain_id())
        dom.set_state(RUNNING, reason)
        self._emit(dom, EV_STARTED, detail)

    def _stop(self, dom: Domain, reason: int, detail: int) -> None:
        """Shut a domain off; a transient one goes away (testDomainShutdownState)."""
        dom.set_state(SHUTOFF, reason)
        self.state.domains.set_id(dom, -1)
        if dom.new_def is not None:
            dom.definition, dom.new_def = dom.new_def, None
        self._emit(dom, EV_STOPPED, detail)
        if not dom.persistent:
            self.state.domains.remove(dom)

    def domain_create(self, ref: Any) -> None:
        self.domain_create_with_flags(ref, 0)

    def domain_create_with_flags(self, ref: Any, flags: int) -> Any:
        check_flags(flags, START_FORCE_BOOT, "testDomainCreateWithFlags", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if dom.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, f"Domain '{dom.name}' is already running",
                           domain=P.VIR_FROM_TEST)
        if dom.managed_save and not flags & START_FORCE_BOOT:
            dom.managed_save = False
            self._start(dom, RUNNING_BOOTED, STARTED_BOOTED)
        else:
            dom.managed_save = False
            self._start(dom, RUNNING_BOOTED, STARTED_BOOTED)
        return dom.ref()

    def domain_create_xml(self, xml_desc: str, flags: int) -> Any:
        check_flags(flags, START_VALIDATE, "testDomainCreateXML", P.VIR_FROM_TEST)
        new = new_definition(xml_desc, validate_schema=bool(flags & START_VALIDATE))
        dom, replaced = self._add(new, live=True)
        if replaced:
            dom.definition = new
        else:
            dom.persistent = False
        self._start(dom, RUNNING_BOOTED, STARTED_BOOTED)
        return dom.ref()

    def domain_destroy(self, ref: Any) -> None:
        self.domain_destroy_flags(ref, 0)

    def domain_destroy_flags(self, ref: Any, flags: int) -> None:
        check_flags(flags, 1, "testDomainDestroyFlags",
                    P.VIR_FROM_TEST)  # GRACEFUL changes nothing here
        dom = self._active_dom(ref)
        self._stop(dom, SHUTOFF_DESTROYED, STOPPED_DESTROYED)

    def domain_shutdown(self, ref: Any) -> None:
        self.domain_shutdown_flags(ref, 0)

    def domain_shutdown_flags(self, ref: Any, flags: int) -> None:
        check_flags(flags, 0x1f, "testDomainShutdownFlags", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if dom.state == SHUTOFF:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"domain '{dom.name}' not running",
                           domain=P.VIR_FROM_TEST)
        self._stop(dom, SHUTOFF_SHUTDOWN, STOPPED_SHUTDOWN)

    def domain_reboot(self, ref: Any, flags: int) -> None:
        dom = self._active_dom(ref)
        action = dom.definition.on_reboot
        if action in ("destroy", "coredump-destroy"):
            self._stop(dom, SHUTOFF_SHUTDOWN, STOPPED_SHUTDOWN)
        else:
            dom.set_state(RUNNING, RUNNING_BOOTED)

    def domain_reset(self, ref: Any, flags: int) -> None:
        check_flags(flags, 0, "testDomainReset", P.VIR_FROM_TEST)
        self._active_dom(ref)

    def domain_suspend(self, ref: Any) -> None:
        dom = self._dom(ref)
        if dom.state in (SHUTOFF, PAUSED):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"domain '{dom.name}' not running",
                           domain=P.VIR_FROM_TEST)
        dom.set_state(PAUSED, PAUSED_USER)
        self._emit(dom, EV_SUSPENDED, SUSPENDED_PAUSED)

    def domain_resume(self, ref: Any) -> None:
        dom = self._dom(ref)
        if dom.state != PAUSED:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"domain '{dom.name}' not paused",
                           domain=P.VIR_FROM_TEST)
        dom.set_state(RUNNING, RUNNING_UNPAUSED)
        self._emit(dom, EV_RESUMED, RESUMED_UNPAUSED)

    # -- managed save / save ----------------------------------------------

    def domain_managed_save(self, ref: Any, flags: int) -> None:
        check_flags(flags, 1 | 2 | 4, "testDomainManagedSave",
                    P.VIR_FROM_TEST)  # BYPASS_CACHE, RUNNING, PAUSED
        dom = self._active_dom(ref)
        if not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "cannot do managed save for transient domain",
                           domain=P.VIR_FROM_TEST)
        self._stop(dom, SHUTOFF_SAVED, STOPPED_SAVED)
        dom.managed_save = True

    def domain_has_managed_save_image(self, ref: Any, flags: int) -> int:
        check_flags(flags, 0, "testDomainHasManagedSaveImage", P.VIR_FROM_TEST)
        return int(self._dom(ref).managed_save)

    def domain_managed_save_remove(self, ref: Any, flags: int) -> None:
        check_flags(flags, 0, "testDomainManagedSaveRemove", P.VIR_FROM_TEST)
        self._dom(ref).managed_save = False

    async def domain_save(self, ref: Any, to: str) -> None:
        await self.domain_save_flags(ref, to, None, 0)

    async def domain_save_flags(self, ref: Any, to: str, dxml: str | None, flags: int) -> None:
        check_flags(flags, 0, "testDomainSaveFlags", P.VIR_FROM_TEST)
        dom = self._active_dom(ref)
        text = domxml.format(dom.definition).encode()
        try:
            # the client names the file (a FIFO, a slow disk): never on the event loop
            await trio.to_thread.run_sync(_write_file, to, SAVE_MAGIC + len(text).to_bytes(
                4, "little") + text, abandon_on_cancel=True)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_TEST,
                           message=f"saving domain '{dom.name}' to '{to}': {exc.strerror}") from None
        self._active_dom(ref)       # still running after the wait?
        self._stop(dom, SHUTOFF_SAVED, STOPPED_SAVED)

    async def domain_restore(self, from_: str) -> None:
        await self.domain_restore_flags(from_, None, 0)

    async def domain_restore_flags(self, from_: str, dxml: str | None, flags: int) -> None:
        check_flags(flags, 0, "testDomainRestoreFlags", P.VIR_FROM_TEST)
        try:
            body = await trio.to_thread.run_sync(_read_save_image, from_, abandon_on_cancel=True)
        except OSError as exc:
            raise VirError(P.VIR_ERR_SYSTEM_ERROR, domain=P.VIR_FROM_TEST,
                           message=f"cannot read domain image '{from_}': {exc.strerror}") from None
        new = new_definition(body)
        dom, replaced = self._add(new, live=True)
        if replaced:
            dom.definition = new
        else:
            dom.persistent = False
        self._start(dom, RUNNING_RESTORED, STARTED_RESTORED)

    # -- memory and vCPUs -------------------------------------------------

    def _defs_for(self, dom: Domain, flags: int) -> list[domxml.DomainDef]:
        """The definitions a LIVE/CONFIG/CURRENT modification applies to."""
        if not flags & (AFFECT_LIVE | AFFECT_CONFIG):
            flags |= AFFECT_LIVE if dom.active else AFFECT_CONFIG
        if flags & AFFECT_LIVE and not dom.active:
            raise not_running()
        if flags & AFFECT_CONFIG and not dom.persistent:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, "transient domains do not have any "
                           "persistent config", domain=P.VIR_FROM_DOMAIN)
        defs = []
        if flags & AFFECT_LIVE:
            defs.append(dom.definition)
        if flags & AFFECT_CONFIG:
            defs.append(dom.persistent_def)
        return defs

    def domain_get_max_memory(self, ref: Any) -> int:
        return self._dom(ref).definition.memory

    def domain_set_max_memory(self, ref: Any, memory: int) -> None:
        dom = self._dom(ref)
        if dom.active:
            raise VirError(P.VIR_ERR_OPERATION_INVALID,
                           "cannot resize the maximum memory on an active domain",
                           domain=P.VIR_FROM_TEST)
        d = dom.definition
        d.memory = memory
        d.current_memory = min(d.current_memory, memory)

    def domain_set_memory(self, ref: Any, memory: int) -> None:
        self.domain_set_memory_flags(ref, memory, AFFECT_LIVE)

    def domain_set_memory_flags(self, ref: Any, memory: int, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM, "testDomainSetMemoryFlags",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        defs = self._defs_for(dom, flags)
        if flags & MEM_MAXIMUM:
            if flags & AFFECT_LIVE or (dom.active and not flags & AFFECT_CONFIG):
                raise VirError(P.VIR_ERR_OPERATION_INVALID,
                               "cannot resize the maximum memory on an active domain",
                               domain=P.VIR_FROM_TEST)
            for d in defs:
                d.memory = memory
                d.current_memory = min(d.current_memory, memory)
            return
        for d in defs:
            if memory > d.memory:
                raise VirError(P.VIR_ERR_INVALID_ARG, "cannot set memory higher than max memory",
                               domain=P.VIR_FROM_TEST)
        for d in defs:
            d.current_memory = memory

    def domain_get_max_vcpus(self, ref: Any) -> int:
        return self.domain_get_vcpus_flags(ref, AFFECT_LIVE | VCPU_MAXIMUM)

    def domain_get_vcpus_flags(self, ref: Any, flags: int) -> int:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM, "testDomainGetVcpusFlags",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if flags & AFFECT_LIVE and flags & AFFECT_CONFIG:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=P.VIR_FROM_DOMAIN,
                           message="invalid argument: Flags 'affect-live' and 'affect-config' "
                                   "are mutually exclusive")
        d = self._defs_for(dom, flags)[0]
        return d.vcpus if flags & VCPU_MAXIMUM else d.vcpus_current

    def domain_set_vcpus(self, ref: Any, nvcpus: int) -> None:
        self.domain_set_vcpus_flags(ref, nvcpus, AFFECT_LIVE)

    def domain_set_vcpus_flags(self, ref: Any, nvcpus: int, flags: int) -> None:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM, "testDomainSetVcpusFlags",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if nvcpus == 0:
            raise VirError(P.VIR_ERR_INVALID_ARG, "argument unsupported: nvcpus",
                           domain=P.VIR_FROM_DOMAIN)
        if flags & VCPU_MAXIMUM and flags & AFFECT_LIVE:
            raise VirError(P.VIR_ERR_INVALID_ARG, "Cannot change maximum vCPUs of a running domain",
                           domain=P.VIR_FROM_TEST)
        defs = self._defs_for(dom, flags)
        for d in defs:
            if not flags & VCPU_MAXIMUM and nvcpus > d.vcpus:
                raise VirError(P.VIR_ERR_INVALID_ARG,
                               f"requested cpu amount exceeds maximum ({nvcpus} > {d.vcpus})",
                               domain=P.VIR_FROM_TEST)
        for d in defs:
            if flags & VCPU_MAXIMUM:
                d.vcpus = nvcpus
                d.vcpus_current = min(d.vcpus_current, nvcpus)
            else:
                d.vcpus_current = nvcpus

    def domain_get_vcpus(self, ref: Any, maxinfo: int, maplen: int) -> tuple:
        dom = self._active_dom(ref)
        ncpus = self.state.cpu_map_size
        now = time.time_ns() // 10000
        infos, maps = [], bytearray()
        for n in range(min(maxinfo, dom.definition.vcpus_current)):
            infos.append(P.remote_vcpu_info(n, 1, now, self.state.node.cpus - 1))
            cpumap = bytearray(maplen)
            for cpu in range(min(ncpus, maplen * 8)):
                cpumap[cpu // 8] |= 1 << (cpu % 8)
            maps += cpumap
        return (infos, bytes(maps))

    def domain_get_vcpu_pin_info(self, ref: Any, ncpumaps: int, maplen: int, flags: int) -> tuple:
        dom = self._dom(ref)
        d = self._defs_for(dom, flags)[0]
        ncpus = self.state.cpu_map_size
        maps = bytearray()
        for _ in range(min(ncpumaps, d.vcpus_current)):
            cpumap = bytearray(maplen)
            for cpu in range(min(ncpus, maplen * 8)):
                cpumap[cpu // 8] |= 1 << (cpu % 8)
            maps += cpumap
        return (bytes(maps), min(ncpumaps, d.vcpus_current))

    # -- scheduler and tuning ---------------------------------------------

    def domain_get_scheduler_type(self, ref: Any) -> tuple:
        self._dom(ref)
        return ("fair", 1)

    def domain_get_scheduler_parameters(self, ref: Any, nparams: int) -> list:
        return self.domain_get_scheduler_parameters_flags(ref, nparams, 0)

    def domain_get_scheduler_parameters_flags(self, ref: Any, nparams: int, flags: int) -> list:
        check_flags(flags, AFFECT_LIVE | AFFECT_CONFIG, "testDomainGetSchedulerParametersFlags",
                    P.VIR_FROM_TEST)
        dom = self._dom(ref)
        return [P.remote_typed_param("weight", P.remote_typed_param_value(
            P.VIR_TYPED_PARAM_UINT, dom.sched_weight))][:nparams]

    # -- guest statistics (made up from the clock, as the test driver does) --

    def _disk(self, dom: Domain, path: str) -> Any:
        for disk in dom.definition.devices_of("disk"):
            target, source = disk.find("target"), disk.find("source")
            if target is not None and target.get("dev") == path:
                return disk
            if source is not None and path in (source.get("file"), source.get("dev")):
                return disk
        return None

    def domain_block_stats(self, ref: Any, path: str) -> tuple:
        dom = self._dom(ref)
        if not path:
            raise VirError(P.VIR_ERR_OPERATION_UNSUPPORTED, "summary statistics are not supported yet",
                           domain=P.VIR_FROM_TEST)
        if self._disk(dom, path) is None:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"invalid path: {path}", domain=P.VIR_FROM_TEST)
        if not dom.active:
            raise not_running()
        t = time.time_ns() // 1000  # microseconds
        return (t // 10, t // 20, t // 30, t // 40, t // 2_000_000)

    def domain_interface_stats(self, ref: Any, device: str) -> tuple:
        dom = self._dom(ref)
        found = False
        for iface in dom.definition.devices_of("interface"):
            target, mac = iface.find("target"), iface.find("mac")
            if (target is not None and target.get("dev") == device
                    or mac is not None and mac.get("address") == device.lower()):
                found = True
        if not found:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"'{device}' is not a known interface",
                           domain=P.VIR_FROM_TEST)
        if not dom.active:
            raise not_running()
        t = time.time_ns() // 1000
        return (t // 10, t // 100, t // 1_000_000, t // 2_000_000,
                t // 20, t // 110, t // 3_000_000, t // 4_000_000)

    def domain_get_block_info(self, ref: Any, path: str, flags: int) -> tuple:
        check_flags(flags, 0, "testDomainGetBlockInfo", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        if self._disk(dom, path) is None:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"invalid path {path} not assigned to domain",
                           domain=P.VIR_FROM_TEST)
        return (1099511627776, 1099506450432, 1099511627776)  # allocation, capacity, physical

    def domain_memory_stats(self, ref: Any, max_stats: int, flags: int) -> list:
        check_flags(flags, 0, "testDomainMemoryStats", P.VIR_FROM_TEST)
        dom = self._active_dom(ref)
        cur = dom.definition.current_memory
        stats = [(6, cur), (0, 0), (1, 0), (2, 0), (3, 0), (4, cur // 2), (5, cur),
                 (8, cur // 2), (9, 627319920), (10, cur // 8), (11, 0), (12, 0), (7, cur // 2)]
        return [P.remote_domain_memory_stat(tag, val) for tag, val in stats][:max_stats]

    # -- metadata ---------------------------------------------------------

    def domain_set_metadata(self, ref: Any, type_: int, metadata: str | None, key: str | None,
                            uri: str | None, flags: int) -> None:
        check_flags(flags, metadata_api.MODIFY_FLAGS, "testDomainSetMetadata", P.VIR_FROM_TEST)
        dom = self._dom(ref)
        live, config = metadata_api.modification_impact(dom, flags)
        targets = [d for d, wanted in ((dom.definition, live), (dom.persistent_def, config))
                   if wanted]
        changed = [metadata_api.with_metadata(d, type_, metadata, key, uri) for d in targets]
        for target, new in zip(targets, changed):
            metadata_api.take_metadata(target, new)
        metadata_api.emit_change(self.state.events, dom, type_, uri)

    def domain_get_metadata(self, ref: Any, type_: int, uri: str | None, flags: int) -> str:
        check_flags(flags, metadata_api.MODIFY_FLAGS, "testDomainGetMetadata", P.VIR_FROM_TEST)
        return metadata_api.get_metadata(self._dom(ref), type_, uri, flags)
