"""The driver interface, written down: what a driver connection answers, by topic.

The daemon dispatches each procedure to the method of the client's driver
connection named after it (``DOMAIN_GET_INFO`` -> ``domain_get_info``); a
method the connection lacks answers VIR_ERR_NO_SUPPORT (pyvirtd/dispatch.py),
so a driver implements the topics it supports and nothing else.

Conventions, for every method below:

* arguments are the call's XDR fields in order, already decoded; a domain
  is named by its wire handle, ``Dom`` (name, uuid, id: look it up by uuid,
  as libvirt does); flags arrive as plain ints whose bits are those of the
  generated enum in the annotation, checked with ``pyvirtd.errors.check_flags``;
* the return value is the reply's fields: a bare value for one field, a
  tuple for several, None for none;
* any method may be a coroutine function instead (``async def``): the
  dispatcher awaits it.  Nothing may block the trio loop;
* failures raise ``VirError`` with libvirt's code, error domain and wording.

The Protocols are small on purpose (Incus' interface sections): a local
hypervisor driver (pyvirtd/driver/hypervisor.py) answers `Host`,
`DomainLookup`, `DomainInfo`, `DomainDefinition`, `DomainLifecycle`; the
narrower ones hold what only some hypervisors have (`GuestCPU` and
`QemuMonitor` are QEMU's, `ContainerNamespaces` LXC's).
tests/unit/driver/test_api.py checks that every method here is a procedure
and that the QEMU, LXC and test drivers implement them with these
parameters.

The second half is the other direction: what the daemon's shared subsystems
offer drivers (`StorageService`, `NetworkService`, `SecretService`,
`NWFilterService`), reached as ``ctx.services.storage`` and so on
(pyvirtd.driver.Services).  They take names and typed values, never wire
handles, and are methods of the subsystems themselves, beside (not instead
of) the procedures clients call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lxml import etree

from pyvirtd.events import EventBus
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.networkport import PortDef

# A domain as the wire names it: remote_nonnull_domain(name, uuid, id).
Dom = P.remote_nonnull_domain
# What a lookup or a define returns: the domain's handle, with its current id.
DomRef = P.remote_nonnull_domain


class Connection(Protocol):
    """A client's open connection (pyvirtd.driver.DriverConnection).

    Events: the driver emits on ``events`` (``events.emit("domain", event_id,
    dom_ref, *fields)``, e.g. VIR_DOMAIN_EVENT_ID_LIFECYCLE with the event and
    detail of DomainEventType); the daemon delivers them to every client that
    registered a callback, so no driver implements event registration.
    ``subsystems`` answer what the connection lacks (storage, network, ...).
    ``close`` is synchronous: work it starts that must await (autodestroy, a
    remote logout) goes to the driver's own nursery.
    """
    uri: str
    events: EventBus
    subsystems: tuple[Any, ...]

    def close(self) -> None: ...


# ---------------------------------------------------------------------- the host
class Host(Protocol):
    """The connection and the host: type, version, capabilities, node facts."""

    def connect_get_type(self) -> str: ...
    def connect_get_version(self) -> int: ...
    def connect_get_hostname(self) -> str: ...
    def connect_is_secure(self) -> int: ...
    def connect_supports_feature(self, feature: int) -> int: ...
    def connect_get_capabilities(self) -> str: ...
    # virNodeInfo: (model, memory KiB, cpus, mhz, nodes, sockets, cores, threads)
    def node_get_info(self) -> tuple: ...
    def node_get_free_memory(self) -> int: ...
    def node_get_cells_free_memory(self, start_cell: int, maxcells: int) -> list[int]: ...
    def node_get_cpu_map(self, need_map: int, need_online: int, flags: int) -> tuple: ...
    def node_get_cpu_stats(self, cpu_num: int, nparams: int, flags: int) -> tuple: ...
    def node_get_memory_stats(self, nparams: int, cell_num: int, flags: int) -> tuple: ...
    def node_get_free_pages(self, pages: list[int], start_cell: int, cell_count: int,
                            flags: int) -> list[int]: ...
    def node_get_security_model(self) -> tuple: ...


class GuestCPU(Protocol):
    """Guest CPUs and what the hypervisor can emulate (QEMU)."""

    def connect_get_max_vcpus(self, type_: str | None) -> int: ...
    def connect_get_domain_capabilities(self, emulatorbin: str | None, arch: str | None,
                                        machine: str | None, virttype: str | None,
                                        flags: int) -> str: ...
    def connect_get_cpu_model_names(self, arch: str, need_results: int, flags: int) -> tuple: ...
    def connect_baseline_cpu(self, xml_cpus: list[str],
                             flags: P.ConnectBaselineCPUFlags) -> str: ...


# --------------------------------------------------------------------- domains
class DomainLookup(Protocol):
    """Finding domains: by name, uuid or id, and listings (libvirt's filters)."""

    def domain_lookup_by_name(self, name: str) -> DomRef: ...
    def domain_lookup_by_uuid(self, uuid: bytes) -> DomRef: ...
    def domain_lookup_by_id(self, dom_id: int) -> DomRef: ...
    def connect_num_of_domains(self) -> int: ...
    def connect_list_domains(self, maxids: int) -> list[int]: ...
    def connect_num_of_defined_domains(self) -> int: ...
    def connect_list_defined_domains(self, maxnames: int) -> list[str]: ...
    # (handles if need_results, count)
    def connect_list_all_domains(self, need_results: int,
                                 flags: P.ConnectListAllDomainsFlags) -> tuple: ...


class DomainInfo(Protocol):
    """What a domain is and how it is: state, XML, flags, labels."""

    # (state, max memory KiB, memory KiB, vcpus, cpu time ns)
    def domain_get_info(self, ref: Dom) -> tuple: ...
    # (DomainState, its reason enum)
    def domain_get_state(self, ref: Dom, flags: int) -> tuple: ...
    def domain_get_os_type(self, ref: Dom) -> str: ...
    def domain_get_max_memory(self, ref: Dom) -> int: ...
    def domain_get_xml_desc(self, ref: Dom, flags: P.DomainXMLFlags) -> str: ...
    def domain_is_active(self, ref: Dom) -> int: ...
    def domain_is_persistent(self, ref: Dom) -> int: ...
    def domain_is_updated(self, ref: Dom) -> int: ...
    def domain_get_autostart(self, ref: Dom) -> int: ...
    def domain_set_autostart(self, ref: Dom, autostart: int) -> None: ...
    def domain_has_managed_save_image(self, ref: Dom, flags: int) -> int: ...
    def domain_get_security_label(self, ref: Dom) -> tuple: ...
    def domain_get_security_label_list(self, ref: Dom) -> tuple: ...
    def domain_get_vcpus_flags(self, ref: Dom, flags: P.DomainVcpuFlags) -> int: ...


class DomainDefinition(Protocol):
    """Persistent definitions: define (add or replace) and undefine."""

    def domain_define_xml(self, xml: str) -> DomRef: ...
    def domain_define_xml_flags(self, xml: str, flags: P.DomainDefineFlags) -> DomRef: ...
    def domain_undefine(self, ref: Dom) -> None: ...
    def domain_undefine_flags(self, ref: Dom, flags: P.DomainUndefineFlagsValues) -> None: ...


class DomainLifecycle(Protocol):
    """Starting and stopping: each holds the domain's lock (libvirt's job)."""

    def domain_create(self, ref: Dom) -> Any: ...
    def domain_create_with_flags(self, ref: Dom, flags: P.DomainCreateFlags) -> DomRef: ...
    def domain_create_xml(self, xml_desc: str, flags: P.DomainCreateFlags) -> DomRef: ...
    def domain_destroy(self, ref: Dom) -> None: ...
    def domain_destroy_flags(self, ref: Dom, flags: P.DomainDestroyFlagsValues) -> None: ...
    def domain_shutdown(self, ref: Dom) -> None: ...
    def domain_shutdown_flags(self, ref: Dom, flags: P.DomainShutdownFlagValues) -> None: ...
    def domain_suspend(self, ref: Dom) -> None: ...
    def domain_resume(self, ref: Dom) -> None: ...


class DomainReboot(Protocol):
    """Rebooting a running guest (not every hypervisor can)."""

    def domain_reboot(self, ref: Dom, flags: P.DomainRebootFlagValues) -> None: ...
    def domain_reset(self, ref: Dom, flags: int) -> None: ...


class DomainDevices(Protocol):
    """Devices of a defined or running domain: hotplug and config changes."""

    def domain_attach_device(self, ref: Dom, xml: str) -> None: ...
    def domain_attach_device_flags(self, ref: Dom, xml: str,
                                   flags: P.DomainDeviceModifyFlags) -> None: ...
    def domain_detach_device(self, ref: Dom, xml: str) -> None: ...
    def domain_detach_device_flags(self, ref: Dom, xml: str,
                                   flags: P.DomainDeviceModifyFlags) -> None: ...
    def domain_detach_device_alias(self, ref: Dom, alias: str,
                                   flags: P.DomainDeviceModifyFlags) -> None: ...
    def domain_update_device_flags(self, ref: Dom, xml: str,
                                   flags: P.DomainDeviceModifyFlags) -> None: ...


class DomainMemory(Protocol):
    """Memory of a domain: balloon target and maximum."""

    def domain_set_memory(self, ref: Dom, memory: int) -> None: ...
    def domain_set_memory_flags(self, ref: Dom, memory: int,
                                flags: P.DomainMemoryModFlags) -> None: ...
    def domain_set_max_memory(self, ref: Dom, memory: int) -> None: ...


class DomainSnapshots(Protocol):
    """Snapshots of a domain (the local drivers have none yet: they answer empty)."""

    def domain_snapshot_num(self, ref: Dom, flags: P.DomainSnapshotListFlags) -> int: ...
    def domain_list_all_snapshots(self, ref: Dom, need_results: int,
                                  flags: P.DomainSnapshotListFlags) -> tuple: ...


class DomainStats(Protocol):
    """Statistics of running domains (virsh domstats, domblkstat, dommemstat)."""

    def connect_get_all_domain_stats(self, doms: list[Dom], stats: P.DomainStatsTypes,
                                     flags: P.ConnectGetAllDomainStatsFlags) -> list: ...
    def domain_memory_stats(self, ref: Dom, max_stats: int, flags: int) -> list: ...
    def domain_block_stats(self, ref: Dom, path: str) -> tuple: ...
    def domain_block_stats_flags(self, ref: Dom, path: str, nparams: int,
                                 flags: int) -> tuple: ...
    def domain_interface_stats(self, ref: Dom, device: str) -> tuple: ...
    def domain_get_block_info(self, ref: Dom, path: str, flags: int) -> tuple: ...
    def domain_get_vcpus(self, ref: Dom, maxinfo: int, maplen: int) -> tuple: ...


class DomainConsole(Protocol):
    """A guest's console as a stream (virsh console)."""

    def domain_open_console(self, stream: Any, ref: Dom, dev_name: str | None,
                            flags: P.DomainConsoleFlags) -> None: ...


class QemuMonitor(Protocol):
    """QEMU only: commands passed through to the guest's monitor."""

    def qemu_domain_monitor_command(self, ref: Dom, cmd: str,
                                    flags: P.DomainQemuMonitorCommandFlags) -> str: ...


class ContainerNamespaces(Protocol):
    """Containers only: the init's namespaces as fds (virsh lxc-enter-namespace)."""

    def lxc_domain_open_namespace(self, ref: Dom, flags: int) -> Any: ...


# The topics a local hypervisor driver's connection answers (hypervisor.py).
LOCAL_HYPERVISOR = (Host, DomainLookup, DomainInfo, DomainDefinition, DomainLifecycle)
# Every topic above, for tools and tests.
TOPICS = (Host, GuestCPU, DomainLookup, DomainInfo, DomainDefinition, DomainLifecycle,
          DomainReboot, DomainDevices, DomainMemory, DomainSnapshots, DomainStats,
          DomainConsole, QemuMonitor, ContainerNamespaces)


# ---------------------------------------------------------------- services
# What the shared subsystems offer hypervisor drivers (ctx.services.<name>).

@dataclass(frozen=True)
class StorageVolume:
    """A volume as a guest disk needs it: where it is and what it is."""
    pool: str
    name: str
    pool_type: str              # the pool's <pool type>: 'dir', 'logical', 'iscsi', ...
    path: str
    type: P.StorageVolType      # file, block, dir, ...
    format: str                 # as the pool's last refresh found it: 'raw', 'qcow2', ...


class StorageService(Protocol):
    """Storage pools and volumes (pyvirtd/storage), for <disk type='volume'>.

    Errors are the storage driver's: VIR_ERR_NO_STORAGE_POOL for an unknown
    pool, VIR_ERR_OPERATION_INVALID for an inactive one, VIR_ERR_NO_STORAGE_VOL
    for an unknown volume.
    """

    def pool_is_active(self, pool: str) -> bool: ...
    def resolve_volume(self, pool: str, name: str) -> StorageVolume:
        """The volume as its pool last saw it (no I/O)."""
    async def refresh_volume(self, pool: str, name: str) -> StorageVolume:
        """The volume read again from storage, on its pool's threads (a hung pool
        stalls only the caller)."""


@dataclass(frozen=True)
class DhcpLease:
    """One lease a network's DHCP server handed out."""
    mac: str
    ip: str
    prefix: int
    type: P.IPAddrType
    expiry: int                 # seconds since the epoch, 0 for never
    hostname: str | None = None
    clientid: str | None = None


class NetworkService(Protocol):
    """Virtual networks (pyvirtd/network): ports for guest NICs, taps, veths, leases.

    Unknown network: VIR_ERR_NO_NETWORK; inactive: VIR_ERR_OPERATION_INVALID.
    """

    async def create_port(self, net_name: str, port: PortDef,
                          reclaim: bool = False) -> PortDef:
        """Allocate ``port`` (its plug filled in), or with ``reclaim`` take back one a
        running guest held across a daemon restart."""
    async def delete_port(self, net_name: str, uuid: bytes) -> None:
        """Give a port back; one already gone with its network is fine."""
    async def plug_interface(self, net_name: str, mac: str, *, tap_name: str = "vnet%d",
                             mtu: int | None = None, vnet_hdr: bool = True) -> tuple[str, int]:
        """A tap on the network's bridge: (name, open fd)."""
    async def plug_veth(self, net_name: str, mac: str, *,
                        mtu: int | None = None) -> tuple[str, str]:
        """A veth pair on the network's bridge for a container: (host end, peer)."""
    async def unplug_interface(self, tap_name: str) -> None:
        """Delete a tap or veth made by a plug; never raises for one already gone."""
    def dhcp_leases(self, net_name: str, mac: str | None = None) -> list[DhcpLease]:
        """The current leases of a network (of one MAC); none while it is inactive."""


class SecretService(Protocol):
    """Secret values for the daemon's own use (pyvirtd/secrets), private ones too.

    An unknown secret or one without a value is VIR_ERR_NO_SECRET.
    """

    def value_of(self, usage_type: str, usage_id: str) -> bytes: ...
    def value_of_uuid(self, uuid: str | bytes, usage_type: str | None = None) -> bytes: ...
    def uuid_of_usage(self, usage_type: str, usage_id: str) -> str | None:
        """The UUID of the secret with this usage, None without one (no error)."""


class NWFilterService(Protocol):
    """Network filters on guest NICs (pyvirtd/nwfilter)."""

    async def bind_interface(self, owner_name: str, owner_uuid: bytes,
                             iface: etree._Element, portdev: str) -> None:
        """Instantiate the <filterref> of the <interface> ``iface`` on its host device
        ``portdev`` (nothing without one); raises VirError."""
    async def unbind_interface(self, portdev: str) -> None:
        """Remove the rules of ``portdev`` if it had any; never raises."""


SERVICES = (StorageService, NetworkService, SecretService, NWFilterService)
