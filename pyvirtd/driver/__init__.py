"""Hypervisor drivers: the interface they implement and how the daemon finds them.

A driver is a factory registered in the ``pyvirtd.drivers`` entry-point group
(pyproject.toml).  The daemon builds each one with a `DriverContext`, asks it
to ``probe()`` (a broken hypervisor is logged as not operational and never
stops the daemon) and routes CONNECT_OPEN to the driver whose URI scheme
matches.  The connection object the driver returns answers every procedure
that is not the daemon's own: see pyvirtd/driver/api.py for the methods.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import SplitResult, urlsplit

from pyvirtd.config import Config
from pyvirtd.errors import VirError
from pyvirtd.events import EventBus
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from pyvirtd.driver.api import NetworkService, NWFilterService, SecretService, StorageService

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pyvirtd.drivers"


class SubsystemError(Exception):
    """A shared subsystem (storage, network, secret, ...) cannot work here.

    Unlike a hypervisor driver, which is left out as not operational, a
    subsystem every hypervisor connection relies on stops the daemon, as a
    state driver that fails to initialise stops libvirtd: otherwise its
    procedures would answer "not supported" with no word of why.
    """


class Services:
    """The daemon's shared subsystems, as the typed services drivers use.

    One attribute per service (``ctx.services.storage``, ``.network``,
    ``.secrets``, ``.nwfilter``), typed with its Protocol in
    pyvirtd/driver/api.py; the object behind it is the subsystem itself.
    `shared_subsystems` fills this once per daemon.  A service that is not
    there answers VIR_ERR_NO_SUPPORT "<name> subsystem is not available" in
    the service's error domain, so a driver never checks for None.
    """

    def __init__(self) -> None:
        self._subsystems: dict[str, Any] = {}

    def _service(self, key: str, domain: int) -> Any:
        sub = self._subsystems.get(key)
        if sub is None:
            raise VirError(P.VIR_ERR_NO_SUPPORT, f"{key} subsystem is not available",
                           domain=domain)
        return sub

    @property
    def storage(self) -> StorageService:
        return self._service("storage", P.VIR_FROM_STORAGE)

    @property
    def network(self) -> NetworkService:
        return self._service("network", P.VIR_FROM_NETWORK)

    @property
    def secrets(self) -> SecretService:
        return self._service("secret", P.VIR_FROM_SECRET)

    @property
    def nwfilter(self) -> NWFilterService:
        return self._service("nwfilter", P.VIR_FROM_NWFILTER)

    def all(self) -> tuple[Any, ...]:
        """Every subsystem, in creation order: for the daemon's start and stop."""
        return tuple(self._subsystems.values())


@dataclass(frozen=True)
class DriverContext:
    """What a driver gets from the daemon.

    ``events`` is the daemon-wide bus that hypervisor drivers and the shared
    subsystems (storage, network, secrets) emit on; ``services`` are those
    subsystems, created once per daemon by the first hypervisor driver
    (`shared_subsystems`).  The test driver keeps its own bus and objects
    per test state instead.
    """
    config: Config
    paths: Paths
    privileged: bool        # --system: may touch the host; else --root/--session
    # capabilities' <host><uuid>: host_uuid / host_uuid_source, resolved once
    # at start (pyvirtd.hostinfo.host_uuid); empty: the smbios default
    host_uuid: str = ""
    events: EventBus = field(default_factory=EventBus)
    services: Services = field(default_factory=Services)


class DriverConnection(Protocol):
    """A client's open connection to a driver.

    Methods are named after procedures (``domain_get_info``); they take the
    call's XDR fields in order and return the reply's fields (a bare value when
    the reply has one field).  They may be coroutines.  ``events`` is the bus
    of the driver instance the connection talks to.  ``subsystems`` (optional)
    are further objects whose methods answer what the connection itself
    lacks: a hypervisor connection lists the daemon's storage, network and
    secret subsystems there.
    """
    uri: str
    events: EventBus
    subsystems: tuple[Any, ...]

    def close(self) -> None: ...


class Driver(Protocol):
    name: str
    schemes: tuple[str, ...]

    def probe(self) -> str | None:
        """None when the driver can work here, else why not."""

    def open(self, uri: SplitResult, name: str, flags: int, client: Any) -> DriverConnection:
        """A connection for ``uri``; may be a coroutine function when opening reads files."""


class DriverRegistry:
    """The operational drivers, by URI scheme."""

    def __init__(self, ctx: DriverContext, default_uri: str) -> None:
        self.ctx = ctx
        self.default_uri = default_uri
        self.by_scheme: dict[str, Driver] = {}
        self.drivers: dict[str, Driver] = {}
        self.not_operational: dict[str, str] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                driver = ep.load()(ctx)
                reason = driver.probe()
            except SubsystemError:
                raise
            except Exception as exc:  # one broken driver must not stop the daemon
                log.exception("driver %s failed to load", ep.name)
                reason = str(exc)
            if reason:
                log.warning("driver %s is not operational: %s", ep.name, reason)
                self.not_operational[ep.name] = reason
                continue
            self.drivers[ep.name] = driver
            for scheme in driver.schemes:
                self.by_scheme[scheme] = driver

    async def open(self, name: str | None, flags: int, client: Any) -> DriverConnection:
        if not name:
            name = self.default_uri
        uri = urlsplit(name)
        # "qemu+unix" never reaches us (clients strip the transport), but be lenient
        scheme = uri.scheme.split("+", 1)[0]
        driver = self.by_scheme.get(scheme)
        if driver is None:
            raise VirError(P.VIR_ERR_NO_CONNECT, message=f"no connection driver available for {name}",
                           domain=P.VIR_FROM_NONE)
        conn = driver.open(uri, name, flags, client)
        if inspect.isawaitable(conn):
            conn = await conn
        return conn

    async def start(self) -> None:
        """Let drivers with state start it (autostart, reattach to guests).

        The shared subsystems the drivers created while loading (storage,
        network, ...) start first: a driver's autostarted guest may need an
        autostarted pool.
        """
        for obj in (*self.ctx.services.all(), *self.drivers.values()):
            start = getattr(obj, "start", None)
            if start is not None:
                await start()

    async def stop(self) -> None:
        """Stop the drivers, then the shared subsystems they use."""
        for obj in (*self.drivers.values(), *self.ctx.services.all()):
            stop = getattr(obj, "stop", None)
            if stop is not None:
                await stop()


# Daemon-wide subsystems that hypervisor drivers share (as libvirtd's storage,
# network and secret drivers serve every qemu:// and lxc:// connection).  Each
# is a class taking the DriverContext; its methods are named after procedures.
SUBSYSTEMS = (
    ("storage", "pyvirtd.storage", "StorageSubsystem"),
    ("network", "pyvirtd.network", "NetworkSubsystem"),
    ("secret", "pyvirtd.secrets", "SecretSubsystem"),
    ("nodedev", "pyvirtd.nodedev", "NodeDeviceSubsystem"),
    ("interface", "pyvirtd.host_interfaces", "HostInterfaceSubsystem"),
    ("nwfilter", "pyvirtd.nwfilter", "NWFilterSubsystem"),
)


def shared_subsystems(ctx: DriverContext) -> tuple[Any, ...]:
    """The subsystems a hypervisor connection delegates to, created on first use.

    Raises SubsystemError naming the subsystem when one cannot be imported or
    created (the daemon then stops with that message); none is skipped.
    """
    import importlib

    found = []
    made = ctx.services._subsystems
    for key, module, cls in SUBSYSTEMS:
        sub = made.get(key)
        if sub is None:
            try:
                factory = getattr(importlib.import_module(module), cls)
                sub = factory(ctx)
            except SubsystemError as exc:
                raise SubsystemError(f"{key} subsystem: {exc}") from exc
            except Exception as exc:
                log.exception("%s subsystem (%s.%s) failed to load", key, module, cls)
                raise SubsystemError(f"{key} subsystem ({module}.{cls}): "
                                     f"{type(exc).__name__}: {exc}") from exc
            made[key] = sub
        found.append(sub)
    return tuple(found)
