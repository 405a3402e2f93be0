"""ESX driver entry point and connection: endpoints, sessions, host facts, domains.

`EsxDriver` is a `pyvirtd.driver.Driver` of its own, not a
`HypervisorDriver`: there are no guests on this host to load, watch or
reattach to.  It owns one nursery (for logouts, which must await while
``close`` may not) and one event bus per endpoint, so clients of the same
vSphere host see the lifecycle events of what any of them did through the
daemon.  `EsxConnection` answers the `pyvirtd.driver.api` topics by asking
the host, one vSphere session per client connection.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import SplitResult

import trio

from pyvirtd.config import EsxEndpoint
from pyvirtd.driver import DriverContext
from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.driver.objects import DOMAIN
from pyvirtd.errors import VirError, check_flags
from pyvirtd.events import EventBus
from pyvirtd.rpc import _generated as P

from . import domxml, inventory
from .inventory import VmSummary
from .vsphere import Session

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_ESX
# How long the daemon's stop waits for open sessions to log out.
LOGOUT_TIMEOUT = 10.0


def _no_domain(what: str) -> VirError:
    return VirError(P.VIR_ERR_NO_DOMAIN, f"no domain with matching {what}", domain=_FROM)


def _version_number(text: str) -> int:
    """"6.5.0" as libvirt's version number, 6005000 (virParseVersionString)."""
    parts = (re.findall(r"\d+", text) + ["0", "0", "0"])[:3]
    major, minor, micro = (int(p) for p in parts)
    return major * 1_000_000 + minor * 1_000 + micro


def cpu_model(text: str) -> str:
    """The host's CPU model shortened as libvirt's ESX driver does for nodeinfo:
    no (R), (C), (TM), no double spaces, at most 31 characters."""
    for mark in ("(R)", "(C)", "(TM)"):
        text = text.replace(mark, "")
    text = re.sub(r" {2,}", " ", text)
    return text[:31]


class _Listed:
    """A VM as `ds.matches_list_flags` wants to see it."""

    def __init__(self, vm: VmSummary) -> None:
        self.vm = vm
        self.state = vm.state
        self.active = vm.state != ds.SHUTOFF
        self.persistent = True          # every vSphere VM is registered: persistent
        self.managed_save = False
        self.autostart = False
        self.snapshots: tuple = ()


class EsxConnection:
    """One client's ``esx:///NAME`` connection: its own vSphere session on endpoint NAME."""

    def __init__(self, driver: EsxDriver, uri: str, session: Session, events: EventBus) -> None:
        self.driver = driver
        self.uri = uri
        self.session = session
        self.events = events
        self.subsystems: tuple[Any, ...] = ()
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.driver.spawn_logout(self.session)

    # ------------------------------------------------------------------ host
    def connect_get_type(self) -> str:
        return "ESX"

    async def connect_get_version(self) -> int:
        facts = await self._host()
        return _version_number(facts.version)

    async def connect_get_hostname(self) -> str:
        facts = await self._host()
        if not facts.hostname:
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "Missing or empty 'hostName' property",
                           domain=_FROM)
        return facts.hostname

    def connect_is_secure(self) -> int:
        # the daemon talks to the host over TLS; a client's own transport is its business
        return 1

    def connect_is_encrypted(self) -> int:
        return 0

    def connect_is_alive(self) -> int:
        return 1

    def connect_supports_feature(self, feature: int) -> int:
        return int(feature == P.VIR_DRV_FEATURE_TYPED_PARAM_STRING)

    async def _host(self) -> inventory.HostFacts:
        return await self.session.call(inventory.host_facts, self.session.content,
                                       what="cannot read the host system")

    async def node_get_info(self) -> tuple:
        """virNodeInfo from the HostSystem, as libvirt's esxNodeGetInfo fills it."""
        h = await self._host()
        cores = h.cores // h.packages if h.packages else 0
        threads = h.threads // h.cores if h.cores else 0
        return (cpu_model(h.cpu_model).encode(), h.memory_bytes // 1024, h.cores, h.cpu_hz // 1_000_000,
                h.numa_nodes, h.packages, cores, threads)

    async def connect_get_capabilities(self) -> str:
        """Host arch and UUID, and the guests ESX runs: hvm, i686 and x86_64, type vmware."""
        h = await self._host()
        guests = "".join(
            f"  <guest>\n    <os_type>hvm</os_type>\n    <arch name='{arch}'>\n"
            f"      <wordsize>{size}</wordsize>\n      <domain type='vmware'/>\n"
            f"    </arch>\n  </guest>\n" for arch, size in (("i686", 32), ("x86_64", 64)))
        return (f"<capabilities>\n  <host>\n    <uuid>{h.uuid}</uuid>\n    <cpu>\n"
                f"      <arch>x86_64</arch>\n    </cpu>\n  </host>\n{guests}</capabilities>\n")

    # --------------------------------------------------------------- lookups
    async def _vms(self) -> list[VmSummary]:
        return await self.session.call(inventory.list_vms, self.session.content,
                                       what="cannot list virtual machines")

    @staticmethod
    def _ref(vm: VmSummary) -> Dom:
        return P.remote_nonnull_domain(vm.name, vm.uuid, vm.id)

    async def _by_ref(self, ref: Dom) -> VmSummary:
        vm = next((v for v in await self._vms() if v.uuid == ref.uuid), None)
        if vm is None:
            raise _no_domain(f"uuid '{_uuid_text(ref.uuid)}' ({ref.name})")
        return vm

    async def domain_lookup_by_name(self, name: str) -> Dom:
        vm = next((v for v in await self._vms() if v.name == name), None)
        if vm is None:
            raise _no_domain(f"name '{name}'")
        return self._ref(vm)

    async def domain_lookup_by_uuid(self, uuid: bytes) -> Dom:
        vm = next((v for v in await self._vms() if v.uuid == uuid), None)
        if vm is None:
            raise _no_domain(f"uuid '{_uuid_text(uuid)}'")
        return self._ref(vm)

    async def domain_lookup_by_id(self, dom_id: int) -> Dom:
        vm = next((v for v in await self._vms() if v.id == dom_id and dom_id > 0), None)
        if vm is None:
            raise _no_domain(f"id '{dom_id}'")
        return self._ref(vm)

    async def connect_num_of_domains(self) -> int:
        return sum(1 for v in await self._vms() if v.id > 0)

    async def connect_list_domains(self, maxids: int) -> list[int]:
        return sorted(v.id for v in await self._vms() if v.id > 0)[:maxids]

    async def connect_num_of_defined_domains(self) -> int:
        return sum(1 for v in await self._vms() if v.state == ds.SHUTOFF)

    async def connect_list_defined_domains(self, maxnames: int) -> list[str]:
        return sorted(v.name for v in await self._vms() if v.state == ds.SHUTOFF)[:maxnames]

    async def connect_list_all_domains(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, DOMAIN.list_flags, "esxConnectListAllDomains", _FROM)
        vms = [v for v in await self._vms() if ds.matches_list_flags(_Listed(v), flags)]
        return ([self._ref(v) for v in vms] if need_results else [], len(vms))

    # ----------------------------------------------------------- information
    async def _config(self, ref: Dom) -> tuple[Any, VmSummary]:
        """(the VM's config, its summary) in one worker-thread visit."""
        vm = await self._by_ref(ref)

        def read(content: Any) -> Any:
            obj = inventory.find_vm(content, vm.uuid)
            return None if obj is None else obj.config

        config = await self.session.call(read, self.session.content,
                                         what="cannot read the virtual machine")
        if config is None:
            raise _no_domain(f"uuid '{_uuid_text(ref.uuid)}' ({ref.name})")
        return config, vm

    async def domain_get_info(self, ref: Dom) -> tuple:
        """(state, max memory KiB, memory KiB, vCPUs, CPU time): memory is the
        allocation limit when one is set below the configured size (esxDomainGetInfo)."""
        config, vm = await self._config(ref)
        max_kib = config.hardware.memoryMB * 1024
        limit = config.memoryAllocation.limit if config.memoryAllocation else None
        mem_kib = limit * 1024 if limit is not None and 0 <= limit * 1024 < max_kib else max_kib
        return (vm.state, max_kib, mem_kib, config.hardware.numCPU, 0)

    async def domain_get_state(self, ref: Dom, flags: int) -> tuple:
        check_flags(flags, 0, "esxDomainGetState", _FROM)
        vm = await self._by_ref(ref)
        return (vm.state, 0)          # vSphere gives no reason: libvirt's ESX says 0

    def domain_get_os_type(self, ref: Dom) -> str:
        return "hvm"

    async def domain_get_max_memory(self, ref: Dom) -> int:
        config, _ = await self._config(ref)
        return config.hardware.memoryMB * 1024

    async def domain_get_xml_desc(self, ref: Dom, flags: int) -> str:
        check_flags(flags, P.DomainXMLFlags.VIR_DOMAIN_XML_SECURE
                    | P.DomainXMLFlags.VIR_DOMAIN_XML_INACTIVE, "esxDomainGetXMLDesc", _FROM)
        config, vm = await self._config(ref)
        inactive = flags & P.DomainXMLFlags.VIR_DOMAIN_XML_INACTIVE
        return domxml.config_to_xml(config, -1 if inactive else vm.id)

    async def domain_is_active(self, ref: Dom) -> int:
        return int((await self._by_ref(ref)).state != ds.SHUTOFF)

    async def domain_is_persistent(self, ref: Dom) -> int:
        await self._by_ref(ref)
        return 1

    async def domain_is_updated(self, ref: Dom) -> int:
        await self._by_ref(ref)
        return 0

    async def domain_get_autostart(self, ref: Dom) -> int:
        await self._by_ref(ref)
        return 0

    def domain_has_managed_save_image(self, ref: Dom, flags: int) -> int:
        return 0

    # ------------------------------------------------------------- lifecycle
    async def _power(self, ref: Dom, allowed: tuple[str, ...], refusal: str, method: str,
                     event: tuple[int, int] | None, task: bool = True) -> None:
        """Check the VM's power state is one of ``allowed`` (else ``refusal``, as libvirt's
        ESX driver words it), call ``method`` on it (waiting for its task), then emit
        ``event`` (type, detail) on the endpoint's bus."""
        vm = await self._by_ref(ref)
        if vm.power not in allowed:
            raise VirError(P.VIR_ERR_OPERATION_INVALID, refusal, domain=_FROM)

        def run(content: Any, si: Any) -> None:
            obj = inventory.find_vm(content, vm.uuid)
            if obj is None:
                raise _no_domain(f"uuid '{_uuid_text(vm.uuid)}' ({vm.name})")
            result = getattr(obj, method)()
            if task:
                inventory.run_task(si, result)

        await self.session.call(run, self.session.content, self.session.si,
                                what=f"{method} of '{vm.name}' failed")
        if event is not None:
            after = await self._by_ref(ref)
            self.events.emit("domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._ref(after), *event)

    async def domain_create(self, ref: Dom) -> None:
        await self._power(ref, ("poweredOff",), "Domain is not powered off", "PowerOnVM_Task",
                          (ds.EV_STARTED, ds.STARTED_BOOTED))

    async def domain_create_with_flags(self, ref: Dom, flags: int) -> Dom:
        check_flags(flags, 0, "esxDomainCreateWithFlags", _FROM)
        await self.domain_create(ref)
        return self._ref(await self._by_ref(ref))

    async def domain_destroy(self, ref: Dom) -> None:
        await self._power(ref, ("poweredOn", "suspended"), "Domain is not powered on",
                          "PowerOffVM_Task", (ds.EV_STOPPED, ds.STOPPED_DESTROYED))

    async def domain_destroy_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "esxDomainDestroyFlags", _FROM)
        await self.domain_destroy(ref)

    async def domain_shutdown(self, ref: Dom) -> None:
        """Ask the guest's VMware tools to shut it down; it stops later (no event yet)."""
        await self._power(ref, ("poweredOn",), "Domain is not powered on", "ShutdownGuest",
                          None, task=False)

    async def domain_shutdown_flags(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "esxDomainShutdownFlags", _FROM)
        await self.domain_shutdown(ref)

    async def domain_reboot(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "esxDomainReboot", _FROM)
        await self._power(ref, ("poweredOn",), "Domain is not powered on", "RebootGuest",
                          None, task=False)

    async def domain_reset(self, ref: Dom, flags: int) -> None:
        check_flags(flags, 0, "esxDomainReset", _FROM)
        await self._power(ref, ("poweredOn",), "Domain is not powered on", "ResetVM_Task", None)

    async def domain_suspend(self, ref: Dom) -> None:
        await self._power(ref, ("poweredOn",), "Domain is not powered on", "SuspendVM_Task",
                          (ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED))

    async def domain_resume(self, ref: Dom) -> None:
        await self._power(ref, ("suspended",), "Domain is not suspended", "PowerOnVM_Task",
                          (ds.EV_RESUMED, ds.RESUMED_UNPAUSED))


def _uuid_text(uuid: bytes) -> str:
    import uuid as uuidlib
    return str(uuidlib.UUID(bytes=uuid)) if len(uuid) == 16 else uuid.hex()


class EsxDriver:
    """The ESX driver's entry point (a `pyvirtd.driver.Driver`): endpoints by name, a nursery."""
    name = "esx"
    schemes = ("esx",)

    def __init__(self, ctx: DriverContext) -> None:
        self.ctx = ctx
        self.endpoints: dict[str, EsxEndpoint] = {e.name: e for e in ctx.config.esx_endpoints}
        self.buses: dict[str, EventBus] = {name: EventBus() for name in self.endpoints}
        self.sessions: set[Session] = set()
        self._nursery: trio.Nursery | None = None
        self._done = trio.Event()

    def probe(self) -> str | None:
        return None     # pyvmomi imported: the driver works; endpoints are checked at open

    def endpoint_for(self, uri: SplitResult) -> EsxEndpoint:
        """The configured endpoint an ``esx:///NAME`` URI names (VirError otherwise)."""
        name = uri.path.strip("/")
        if not name and len(self.endpoints) == 1:
            name = next(iter(self.endpoints))
        ep = self.endpoints.get(name)
        if ep is None:
            known = ", ".join(sorted(self.endpoints)) or "none"
            raise VirError(P.VIR_ERR_INVALID_ARG,
                           f"no vSphere endpoint named '{name}' in pyvirtd's esx_endpoints "
                           f"(configured: {known})", domain=_FROM)
        return ep

    async def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> EsxConnection:
        ep = self.endpoint_for(uri)
        session = await Session.open(ep)
        self.sessions.add(session)
        return EsxConnection(self, f"esx:///{ep.name}", session, self.buses[ep.name])

    # ------------------------------------------------------------ the nursery
    async def start(self) -> None:
        ready = trio.Event()
        trio.lowlevel.spawn_system_task(self._service, ready, name="pyvirtd-esx-driver")
        await ready.wait()

    async def _service(self, ready: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                ready.set()
                await trio.sleep_forever()
        except trio.Cancelled:
            raise
        except Exception:  # a system task must never raise: it would end the daemon
            log.exception("esx driver service failed")
        finally:
            self._done.set()

    def spawn_logout(self, session: Session) -> None:
        """Log ``session`` out in the driver's nursery (a connection's close cannot await)."""
        if self._nursery is not None:
            self._nursery.start_soon(self._logout, session)

    async def _logout(self, session: Session) -> None:
        try:
            await trio.to_thread.run_sync(session.logout_sync, abandon_on_cancel=True)
        finally:
            self.sessions.discard(session)

    async def stop(self) -> None:
        """Log out every open session (bounded), then end the nursery."""
        with trio.move_on_after(LOGOUT_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for session in list(self.sessions):
                    nursery.start_soon(self._logout, session)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            await self._done.wait()
