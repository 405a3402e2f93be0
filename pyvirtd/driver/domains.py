"""Domain facts every hypervisor driver shares: states, reasons, lifecycle events, listing filters.

The numbers are libvirt's public enums (include/libvirt/libvirt-domain.h:
virDomainState, virDomain*Reason, virDomainEventType and its detail enums);
clients print them by number, so they must never drift between drivers.
`matches_list_flags` is virConnectListAllDomains' filter
(src/conf/virdomainobjlist.c: virDomainObjMatchFilter) over any object with
``active``, ``persistent``, ``state``, ``managed_save``, ``autostart`` and
``snapshots``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from pyvirtd.driver.api import Dom
from pyvirtd.driver.snapshots import SnapshotTree
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from pyvirtd.driver.objects import ObjectList
    from pyvirtd.xml.domain import DomainDef

# virDomainState
NOSTATE = P.DomainState.VIR_DOMAIN_NOSTATE
RUNNING = P.DomainState.VIR_DOMAIN_RUNNING
BLOCKED = P.DomainState.VIR_DOMAIN_BLOCKED
PAUSED = P.DomainState.VIR_DOMAIN_PAUSED
SHUTDOWN = P.DomainState.VIR_DOMAIN_SHUTDOWN
SHUTOFF = P.DomainState.VIR_DOMAIN_SHUTOFF
CRASHED = P.DomainState.VIR_DOMAIN_CRASHED
PMSUSPENDED = P.DomainState.VIR_DOMAIN_PMSUSPENDED

# virDomainRunningReason
RUNNING_UNKNOWN = P.DomainRunningReason.VIR_DOMAIN_RUNNING_UNKNOWN
RUNNING_BOOTED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_BOOTED
RUNNING_MIGRATED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_MIGRATED
RUNNING_RESTORED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_RESTORED
RUNNING_FROM_SNAPSHOT = P.DomainRunningReason.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT
RUNNING_UNPAUSED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_UNPAUSED
RUNNING_MIGRATION_CANCELED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED
RUNNING_SAVE_CANCELED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_SAVE_CANCELED
RUNNING_WAKEUP = P.DomainRunningReason.VIR_DOMAIN_RUNNING_WAKEUP
RUNNING_CRASHED = P.DomainRunningReason.VIR_DOMAIN_RUNNING_CRASHED
RUNNING_POSTCOPY = P.DomainRunningReason.VIR_DOMAIN_RUNNING_POSTCOPY
# virDomainPausedReason
PAUSED_UNKNOWN = P.DomainPausedReason.VIR_DOMAIN_PAUSED_UNKNOWN
PAUSED_USER = P.DomainPausedReason.VIR_DOMAIN_PAUSED_USER
PAUSED_MIGRATION = P.DomainPausedReason.VIR_DOMAIN_PAUSED_MIGRATION
PAUSED_SAVE = P.DomainPausedReason.VIR_DOMAIN_PAUSED_SAVE
PAUSED_DUMP = P.DomainPausedReason.VIR_DOMAIN_PAUSED_DUMP
PAUSED_IOERROR = P.DomainPausedReason.VIR_DOMAIN_PAUSED_IOERROR
PAUSED_WATCHDOG = P.DomainPausedReason.VIR_DOMAIN_PAUSED_WATCHDOG
PAUSED_FROM_SNAPSHOT = P.DomainPausedReason.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT
PAUSED_SHUTTING_DOWN = P.DomainPausedReason.VIR_DOMAIN_PAUSED_SHUTTING_DOWN
PAUSED_SNAPSHOT = P.DomainPausedReason.VIR_DOMAIN_PAUSED_SNAPSHOT
PAUSED_CRASHED = P.DomainPausedReason.VIR_DOMAIN_PAUSED_CRASHED
PAUSED_STARTING_UP = P.DomainPausedReason.VIR_DOMAIN_PAUSED_STARTING_UP
PAUSED_POSTCOPY = P.DomainPausedReason.VIR_DOMAIN_PAUSED_POSTCOPY
PAUSED_POSTCOPY_FAILED = P.DomainPausedReason.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
# virDomainShutdownReason
SHUTDOWN_UNKNOWN = P.DomainShutdownReason.VIR_DOMAIN_SHUTDOWN_UNKNOWN
SHUTDOWN_USER = P.DomainShutdownReason.VIR_DOMAIN_SHUTDOWN_USER
# virDomainShutoffReason
SHUTOFF_UNKNOWN = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_UNKNOWN
SHUTOFF_SHUTDOWN = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_SHUTDOWN
SHUTOFF_DESTROYED = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_DESTROYED
SHUTOFF_CRASHED = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_CRASHED
SHUTOFF_MIGRATED = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_MIGRATED
SHUTOFF_SAVED = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_SAVED
SHUTOFF_FAILED = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_FAILED
SHUTOFF_FROM_SNAPSHOT = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT
SHUTOFF_DAEMON = P.DomainShutoffReason.VIR_DOMAIN_SHUTOFF_DAEMON
# virDomainCrashedReason
CRASHED_UNKNOWN = P.DomainCrashedReason.VIR_DOMAIN_CRASHED_UNKNOWN
CRASHED_PANICKED = P.DomainCrashedReason.VIR_DOMAIN_CRASHED_PANICKED

# virDomainEventType and the details drivers send.
EV_DEFINED = P.DomainEventType.VIR_DOMAIN_EVENT_DEFINED
EV_UNDEFINED = P.DomainEventType.VIR_DOMAIN_EVENT_UNDEFINED
EV_STARTED = P.DomainEventType.VIR_DOMAIN_EVENT_STARTED
EV_SUSPENDED = P.DomainEventType.VIR_DOMAIN_EVENT_SUSPENDED
EV_RESUMED = P.DomainEventType.VIR_DOMAIN_EVENT_RESUMED
EV_STOPPED = P.DomainEventType.VIR_DOMAIN_EVENT_STOPPED
EV_SHUTDOWN = P.DomainEventType.VIR_DOMAIN_EVENT_SHUTDOWN
EV_PMSUSPENDED = P.DomainEventType.VIR_DOMAIN_EVENT_PMSUSPENDED
EV_CRASHED = P.DomainEventType.VIR_DOMAIN_EVENT_CRASHED
DEFINED_ADDED = P.DomainEventDefinedDetailType.VIR_DOMAIN_EVENT_DEFINED_ADDED
DEFINED_UPDATED = P.DomainEventDefinedDetailType.VIR_DOMAIN_EVENT_DEFINED_UPDATED
DEFINED_RENAMED = P.DomainEventDefinedDetailType.VIR_DOMAIN_EVENT_DEFINED_RENAMED
DEFINED_FROM_SNAPSHOT = P.DomainEventDefinedDetailType.VIR_DOMAIN_EVENT_DEFINED_FROM_SNAPSHOT
UNDEFINED_REMOVED = P.DomainEventUndefinedDetailType.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED
UNDEFINED_RENAMED = P.DomainEventUndefinedDetailType.VIR_DOMAIN_EVENT_UNDEFINED_RENAMED
STARTED_BOOTED = P.DomainEventStartedDetailType.VIR_DOMAIN_EVENT_STARTED_BOOTED
STARTED_MIGRATED = P.DomainEventStartedDetailType.VIR_DOMAIN_EVENT_STARTED_MIGRATED
STARTED_RESTORED = P.DomainEventStartedDetailType.VIR_DOMAIN_EVENT_STARTED_RESTORED
STARTED_FROM_SNAPSHOT = P.DomainEventStartedDetailType.VIR_DOMAIN_EVENT_STARTED_FROM_SNAPSHOT
STARTED_WAKEUP = P.DomainEventStartedDetailType.VIR_DOMAIN_EVENT_STARTED_WAKEUP
SUSPENDED_PAUSED = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED
SUSPENDED_MIGRATED = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED
SUSPENDED_IOERROR = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR
SUSPENDED_WATCHDOG = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG
SUSPENDED_RESTORED = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_RESTORED
SUSPENDED_FROM_SNAPSHOT = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT
SUSPENDED_API_ERROR = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR
SUSPENDED_POSTCOPY = P.DomainEventSuspendedDetailType.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY
RESUMED_UNPAUSED = P.DomainEventResumedDetailType.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED
RESUMED_MIGRATED = P.DomainEventResumedDetailType.VIR_DOMAIN_EVENT_RESUMED_MIGRATED
RESUMED_FROM_SNAPSHOT = P.DomainEventResumedDetailType.VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT
STOPPED_SHUTDOWN = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN
STOPPED_DESTROYED = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_DESTROYED
STOPPED_CRASHED = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_CRASHED
STOPPED_MIGRATED = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
STOPPED_SAVED = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_SAVED
STOPPED_FAILED = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_FAILED
STOPPED_FROM_SNAPSHOT = P.DomainEventStoppedDetailType.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT
SHUTDOWN_FINISHED = P.DomainEventShutdownDetailType.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED
SHUTDOWN_GUEST = P.DomainEventShutdownDetailType.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST
SHUTDOWN_HOST = P.DomainEventShutdownDetailType.VIR_DOMAIN_EVENT_SHUTDOWN_HOST
CRASHED_EV_PANICKED = P.DomainEventCrashedDetailType.VIR_DOMAIN_EVENT_CRASHED_PANICKED


def not_running() -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, "domain is not running", domain=P.VIR_FROM_DOMAIN)


def matches_list_flags(dom: Any, flags: int) -> bool:
    """One domain against virConnectListAllDomains' filter groups."""
    def group(yes: int, no: int, value: bool) -> bool:
        if flags & (yes | no) and not (flags & yes and value or flags & no and not value):
            return False
        return True

    if not group(P.VIR_CONNECT_LIST_DOMAINS_ACTIVE, P.VIR_CONNECT_LIST_DOMAINS_INACTIVE, dom.active):
        return False
    if not group(P.VIR_CONNECT_LIST_DOMAINS_PERSISTENT, P.VIR_CONNECT_LIST_DOMAINS_TRANSIENT,
                 dom.persistent):
        return False
    states = flags & (P.VIR_CONNECT_LIST_DOMAINS_RUNNING | P.VIR_CONNECT_LIST_DOMAINS_PAUSED
                      | P.VIR_CONNECT_LIST_DOMAINS_SHUTOFF | P.VIR_CONNECT_LIST_DOMAINS_OTHER)
    if states:
        ok = (flags & P.VIR_CONNECT_LIST_DOMAINS_RUNNING and dom.state == RUNNING
              or flags & P.VIR_CONNECT_LIST_DOMAINS_PAUSED and dom.state == PAUSED
              or flags & P.VIR_CONNECT_LIST_DOMAINS_SHUTOFF and dom.state == SHUTOFF
              or flags & P.VIR_CONNECT_LIST_DOMAINS_OTHER
              and dom.state not in (RUNNING, PAUSED, SHUTOFF))
        if not ok:
            return False
    if not group(P.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE, P.VIR_CONNECT_LIST_DOMAINS_NO_MANAGEDSAVE,
                 dom.managed_save):
        return False
    if not group(P.VIR_CONNECT_LIST_DOMAINS_AUTOSTART, P.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART,
                 dom.autostart):
        return False
    if not group(P.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT, P.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT,
                 bool(dom.snapshots)):
        return False
    if not group(P.VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT, P.VIR_CONNECT_LIST_DOMAINS_NO_CHECKPOINT,
                 False):
        return False
    return True


@dataclass(eq=False)
class DomainObject:
    """What every driver keeps per domain (libvirt's virDomainObj).

    ``definition`` is the live definition while the domain runs, else the
    persistent one; ``new_def`` holds the persistent one of a running
    persistent domain.  Drivers subclass it with their runtime fields.
    """
    definition: "DomainDef"
    persistent: bool = True
    new_def: "DomainDef | None" = None
    state: int = SHUTOFF
    reason: int = SHUTOFF_UNKNOWN
    id: int = -1
    autostart: bool = False
    # what the listing filters ask about
    managed_save: bool = False
    snapshots: SnapshotTree = field(default_factory=SnapshotTree)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

    @property
    def active(self) -> bool:
        return self.state != SHUTOFF

    @property
    def persistent_def(self) -> "DomainDef":
        """The configuration that survives a shutdown."""
        return self.new_def if self.new_def is not None else self.definition

    def ref(self) -> Any:
        return P.remote_nonnull_domain(self.name, self.uuid, self.id)

    def set_state(self, state: int, reason: int) -> None:
        self.state, self.reason = state, reason


def install_definition(domains: "ObjectList[Any]", new: "DomainDef", existing: Any,
                       make: Any) -> tuple[Any, bool]:
    """Make ``new`` a domain's persistent definition (the define path of virDomainObjListAdd).

    ``existing`` is what `ObjectList.check_add` found (or None); ``make(defn, persistent=True)``
    builds the driver's domain object for a new name.  A running domain keeps
    its live definition and gets ``new`` as the next one.  Returns the domain
    and whether a persistent definition was replaced (DEFINED_UPDATED).
    """
    if existing is None:
        dom = domains.add(make(new, persistent=True))
    elif existing.active:
        dom, dom.new_def = existing, new
    else:
        dom, dom.definition = existing, new
    replaced = existing is not None and existing.persistent
    dom.persistent = True
    return dom, replaced


async def undefine(drv: Any, dom: Any) -> None:
    """Forget a domain's persistent definition; a running one lives on as transient.

    ``drv`` is a driver state with ``domains``, ``store.delete_config``,
    ``emit`` and ``save_status`` (a local driver's HypervisorState).
    """
    async with dom.lock:
        await trio.to_thread.run_sync(drv.store.delete_config, dom.name)
        drv.emit(dom, EV_UNDEFINED, UNDEFINED_REMOVED)
        dom.autostart = False
        if dom.active:
            dom.persistent = False
            dom.new_def = None
            await drv.save_status(dom)
        else:
            drv.domains.remove(dom)


class DomainLookups:
    """Lookups and listings of a driver connection whose state keeps ``domains``
    (an `ObjectList` of the driver's DOMAIN kind, which carries the VIR_FROM_*
    of its "no domain" errors): the part of a domain mixin the QEMU, LXC and
    UML drivers share.  Every lookup is a dictionary lookup.
    """
    driver: Any
    error_domain: int = P.VIR_FROM_DOMAIN

    def _dom(self, ref: Dom) -> Any:
        """The domain a client's handle names, by uuid (qemuDomainObjFromDomain)."""
        return self.driver.domains.by_ref(ref)

    def _active(self, ref: Dom) -> Any:
        dom = self._dom(ref)
        if not dom.active:
            raise not_running()
        return dom

    def domain_lookup_by_name(self, name: str) -> Dom:
        return self.driver.domains.by_name(name).ref()

    def domain_lookup_by_uuid(self, uuid: bytes) -> Dom:
        return self.driver.domains.by_uuid(uuid).ref()

    def domain_lookup_by_id(self, dom_id: int) -> Dom:
        return self.driver.domains.by_id(dom_id).ref()

    def _sorted_active(self) -> list[Any]:
        return sorted((d for d in self.driver.domains.values() if d.active), key=lambda d: d.id)

    def connect_num_of_domains(self) -> int:
        return self.driver.domains.count(active=True)

    def connect_list_domains(self, maxids: int) -> list[int]:
        return [d.id for d in self._sorted_active()][:maxids]

    def connect_num_of_defined_domains(self) -> int:
        return self.driver.domains.count(active=False)

    def connect_list_defined_domains(self, maxnames: int) -> list[str]:
        return sorted(d.name for d in self.driver.domains.values() if not d.active)[:maxnames]

    def connect_list_all_domains(self, need_results: int, flags: int) -> tuple:
        doms = self.driver.domains.list_all(flags)
        return ([d.ref() for d in doms] if need_results else [], len(doms))
