"""Live migration of a running guest to another daemon: libvirt's version 3 protocol.

The client library (``virDomainMigrate3``, what ``virsh migrate`` without
``--p2p`` calls) drives five steps on two connections, passing each step's
*cookie* to the next::

    source       Begin3      the guest's XML to run on the destination, cookie
    destination  Prepare3    start QEMU with ``-incoming defer``, listen
                             (``migrate-incoming tcp:ADDR:PORT``), reply the URI
    source       Perform3    QMP ``migrate`` to that URI, wait until QEMU is done
    destination  Finish3     wait for the incoming side, resume the guest there
                             (or, cancelled, kill it)
    source       Confirm3    the guest is stopped here (migrated), or resumed
                             when the migration was cancelled

Each step exists as ``...3`` (fixed arguments, what ``virDomainMigrate`` uses)
and ``...3Params`` (typed parameters).  QEMU moves the memory itself, directly
between the two QEMU processes; the daemons only start, watch and stop them.

Cookies are libvirt's ``<qemu-migration>`` XML (name, uuid, hostname,
hostuuid, and, with VIR_MIGRATE_PERSIST_DEST, the persistent definition in
Perform's cookie), NUL-terminated as libvirt sends them; what we do not know
in a peer's cookie is ignored.

Lifecycle events are libvirt 9.0's: on the source suspended/migrated when
QEMU stops the guest for the last pass (driver.py's STOP handler, while
``dom.migration.outgoing``) and stopped/migrated at Confirm; on the
destination started/migrated at Prepare and resumed/migrated at Finish
(suspended/paused with VIR_MIGRATE_PAUSED), defined/added with
VIR_MIGRATE_PERSIST_DEST, undefined/removed on the source with
VIR_MIGRATE_UNDEFINE_SOURCE.

The destination picks a free port in libvirt's migration range
(49152-49215) and answers ``tcp://HOSTNAME:PORT``, or the host (and port)
of the ``migrate_uri`` the client gave; QEMU listens on ``listen_address``
(default every IPv4 address).

Peer-to-peer (``--p2p``, ``migrateToURI3``): the client calls Perform3 on
the source alone, with the destination's URI; the source daemon then runs
the steps itself and calls Prepare3Params and Finish3Params on the
destination daemon through pyvirtd.rpc.peer (unix sockets only so far).

Offline (``--offline``, with ``--persistent`` as libvirt requires): only the
definition moves; nothing starts or stops, Perform is skipped, Finish
defines the guest and Confirm undefines it at the source with
``--undefinesource``.

Not here yet (issue 17): tunnelled, storage copy (NBD), post-copy,
compression, TLS for the QEMU stream, p2p over TCP/TLS, a libvirtd peer
(tested), and recovery of a migration that a daemon restart interrupted.  The source holds the guest's job lock only
during Perform (libvirt keeps a migration job from Begin to Confirm).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from lxml import etree

from pyvirtd.driver import domains as ds
from pyvirtd.driver.api import Dom
from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.peer import PeerConnection
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import format_uuid

from . import jobs
from .driver import QemuDriverState
from .guest import QemuDomain
from .save import UNLIMITED_BANDWIDTH, wait_migration

log = logging.getLogger(__name__)

F = P.DomainMigrateFlags
SUPPORTED_FLAGS = (F.VIR_MIGRATE_LIVE | F.VIR_MIGRATE_PEER2PEER | F.VIR_MIGRATE_PERSIST_DEST
                   | F.VIR_MIGRATE_UNDEFINE_SOURCE | F.VIR_MIGRATE_PAUSED
                   | F.VIR_MIGRATE_CHANGE_PROTECTION | F.VIR_MIGRATE_ABORT_ON_ERROR
                   | F.VIR_MIGRATE_UNSAFE | F.VIR_MIGRATE_OFFLINE)
# QEMU_DOMAIN_MIG_BANDWIDTH_MAX: the largest speed in MiB/s whose bytes/s fit QEMU's int64
BANDWIDTH_MAX = ((1 << 63) - 1) >> 20
SPEED_POSTCOPY = P.DomainMigrateMaxSpeedFlags.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY
# libvirt's default migration port range (qemu.conf migration_port_min/max)
PORT_MIN, PORT_MAX = 49152, 49215
DEFAULT_LISTEN = "0.0.0.0"

# virTypedParameterType of each VIR_MIGRATE_PARAM_* understood here
_PARAM_TYPES = {
    "migrate_uri": P.VIR_TYPED_PARAM_STRING,
    "destination_name": P.VIR_TYPED_PARAM_STRING,
    "destination_xml": P.VIR_TYPED_PARAM_STRING,
    "persistent_xml": P.VIR_TYPED_PARAM_STRING,
    "bandwidth": P.VIR_TYPED_PARAM_ULLONG,
    "listen_address": P.VIR_TYPED_PARAM_STRING,
}
_TYPE_NAMES = {P.VIR_TYPED_PARAM_STRING: "string", P.VIR_TYPED_PARAM_ULLONG: "ullong"}

# features a qemu:// connection answers yes to for migration (ConnectSupportsFeature)
FEATURES = (P.VIR_DRV_FEATURE_MIGRATION_V3, P.VIR_DRV_FEATURE_MIGRATION_PARAMS,
            P.VIR_DRV_FEATURE_MIGRATION_P2P, P.VIR_DRV_FEATURE_MIGRATE_CHANGE_PROTECTION,
            P.VIR_DRV_FEATURE_MIGRATION_OFFLINE)
OFFLINE = F.VIR_MIGRATE_OFFLINE


@dataclass
class Migration:
    """The migration a guest is in, on one side (``dom.migration``)."""
    outgoing: bool
    flags: int
    port: int | None = None           # destination: the port QEMU listens on
    was_running: bool = True          # source: the guest ran before Perform paused it
    performed: bool = False           # source: QEMU's outgoing migration completed


_ports_in_use: set[int] = set()
# destination: the definitions of offline migrations between Prepare and Finish, by name
_offline_prepared: dict[str, domxml.DomainDef] = {}


def _failed(detail: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_FAILED, detail, domain=P.VIR_FROM_QEMU)


def _invalid(detail: str) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, detail, domain=P.VIR_FROM_QEMU)


def parse_params(params: list) -> dict[str, Any]:
    """VIR_MIGRATE_PARAM_* typed parameters as a dict; libvirt's errors for others."""
    out: dict[str, Any] = {}
    for p in params:
        kind = _PARAM_TYPES.get(p.field)
        if kind is None:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, f"parameter '{p.field}' not supported",
                           domain=P.VIR_FROM_NONE)
        if p.value.type != kind:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"invalid type for parameter '{p.field}', "
                           f"expected '{_TYPE_NAMES[kind]}'", domain=P.VIR_FROM_NONE)
        out[p.field] = p.value.value
    return out


def typed_params(values: dict[str, Any]) -> list:
    """``values`` as typed parameters again (for the peer, in p2p)."""
    return [P.remote_typed_param(k, P.remote_typed_param_value(_PARAM_TYPES[k], v))
            for k, v in values.items()]


def _legacy_params(dname: str | None, uri: str | None, resource: int,
                   dom_xml: str | None = None) -> dict[str, Any]:
    """The fixed arguments of the non-Params steps, as their typed-parameter names."""
    out: dict[str, Any] = {}
    if dname:
        out["destination_name"] = dname
    if uri:
        out["migrate_uri"] = uri
    if resource:
        out["bandwidth"] = resource
    if dom_xml:
        out["destination_xml"] = dom_xml
    return out


# ---------------------------------------------------------------------- cookies

def make_cookie(drv: QemuDriverState, d: domxml.DomainDef,
                persistent: domxml.DomainDef | None = None) -> bytes:
    """A ``<qemu-migration>`` cookie naming the guest and this host (NUL-terminated)."""
    root = etree.Element("qemu-migration")
    etree.SubElement(root, "name").text = d.name
    etree.SubElement(root, "uuid").text = d.uuid_str
    etree.SubElement(root, "hostname").text = socket.gethostname()
    host_uuid = drv.ctx.host_uuid
    if host_uuid:
        etree.SubElement(root, "hostuuid").text = str(host_uuid)
    if persistent is not None:
        etree.SubElement(root, "feature", name="persistent")
        holder = etree.SubElement(root, "persistent")
        holder.append(etree.fromstring(domxml.format(persistent, secure=True).encode()))
    return etree.tostring(root, pretty_print=True) + b"\0"


def cookie_persistent(cookie: bytes | None) -> str | None:
    """The persistent definition a peer's cookie carries, if any (garbage: none)."""
    if not cookie:
        return None
    try:
        root = etree.fromstring(cookie.rstrip(b"\0"))
    except etree.XMLSyntaxError:
        log.warning("ignoring a migration cookie that is no XML")
        return None
    dom = root.find("persistent/domain")
    return None if dom is None else etree.tostring(dom).decode()


# ------------------------------------------------------------------ URIs, ports

def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def allocate_port(listen: str) -> int:
    """A port of the migration range nobody listens on (virPortAllocatorAcquire)."""
    for port in range(PORT_MIN, PORT_MAX + 1):
        if port not in _ports_in_use and _port_free(listen, port):
            _ports_in_use.add(port)
            return port
    raise VirError(P.VIR_ERR_INTERNAL_ERROR, f"Unable to find an unused port in range "
                   f"'migration' ({PORT_MIN}-{PORT_MAX})", domain=P.VIR_FROM_NONE)


def _incoming_uri(uri_in: str | None, listen: str) -> tuple[str, int, str]:
    """(host for the client, port, QEMU's listen URI) for a Prepare."""
    if uri_in:
        parts = urlsplit(uri_in if "://" in uri_in else uri_in.replace(":", "://", 1))
        if parts.scheme != "tcp" or not parts.hostname:
            raise VirError(P.VIR_ERR_INVALID_ARG, f"unsupported scheme "
                           f"{parts.scheme or uri_in} in migration URI {uri_in}",
                           domain=P.VIR_FROM_QEMU)
        host = parts.hostname
        port = parts.port or allocate_port(listen)
        if parts.port:
            _ports_in_use.add(port)
    else:
        host = socket.gethostname()
        if host.startswith("localhost"):
            raise VirError(P.VIR_ERR_INTERNAL_ERROR, "hostname on destination resolved to "
                           "localhost, but migration requires an FQDN", domain=P.VIR_FROM_QEMU)
        port = allocate_port(listen)
    bracket = f"[{listen}]" if ":" in listen else listen
    return host, port, f"tcp:{bracket}:{port}"


def qemu_uri(uri: str) -> str:
    """The destination's ``tcp://HOST:PORT`` as QEMU's ``tcp:HOST:PORT``."""
    parts = urlsplit(uri)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        raise VirError(P.VIR_ERR_INVALID_ARG, f"unsupported migration URI {uri}",
                       domain=P.VIR_FROM_QEMU)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"tcp:{host}:{parts.port}"


# ------------------------------------------------------------------------ source

def begin(drv: QemuDriverState, dom: QemuDomain, values: dict[str, Any],
          flags: int) -> tuple[bytes, str]:
    """Begin3: the XML the destination starts, and the first cookie."""
    check_flags(flags, SUPPORTED_FLAGS, "qemuMigrationSrcBegin", P.VIR_FROM_QEMU)
    if flags & OFFLINE:
        return _begin_offline(drv, dom, flags)
    if not dom.active:
        raise _invalid("domain is not running")
    if dom.migration is not None:
        raise _invalid(f"domain '{dom.name}' is already being migrated")
    if jobs.current(dom) is not None:
        raise _invalid("another job is active on the domain")
    live = dom.definition
    xmlin = values.get("destination_xml")
    if xmlin:
        target = drv.new_definition(xmlin)
        if target.uuid != live.uuid:
            raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                           f"Target domain uuid {format_uuid(target.uuid)} does not match "
                           f"source {format_uuid(live.uuid)}", domain=P.VIR_FROM_DOMAIN)
        live = target
    xml = domxml.format(live, secure=True)
    return make_cookie(drv, dom.definition), xml


def _begin_offline(drv: QemuDriverState, dom: QemuDomain, flags: int) -> tuple[bytes, str]:
    """Offline migration: only the persistent definition moves (in the XML and the
    cookie); the guest, running or not, is not touched here."""
    if flags & (F.VIR_MIGRATE_NON_SHARED_DISK | F.VIR_MIGRATE_NON_SHARED_INC):
        raise _invalid("offline migration cannot handle non-shared storage")
    if not flags & F.VIR_MIGRATE_PERSIST_DEST:
        raise _invalid("offline migration must be specified with the persistent flag set")
    if flags & F.VIR_MIGRATE_TUNNELLED:
        raise _invalid("tunnelled offline migration does not make sense")
    config = dom.persistent_def
    return make_cookie(drv, config, config), domxml.format(config, secure=True)


async def perform(drv: QemuDriverState, dom: QemuDomain, values: dict[str, Any],
                  flags: int, owner: str) -> bytes:
    """Perform3: QEMU sends the guest to the URI Prepare gave; done when QEMU is."""
    check_flags(flags, SUPPORTED_FLAGS, "qemuMigrationSrcPerform", P.VIR_FROM_QEMU)
    uri = values.get("migrate_uri")
    if not uri:
        raise VirError(P.VIR_ERR_INVALID_ARG, "migration URI is missing",
                       domain=P.VIR_FROM_QEMU)
    target = qemu_uri(uri)
    async with jobs.async_job(drv, dom, jobs.OP.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT, owner,
                              "migration out job", emit_completed=True) as job:
        if not dom.active or dom.monitor is None:
            raise _invalid("domain is not running")
        if dom.migration is not None:
            raise _invalid(f"domain '{dom.name}' is already being migrated")
        mon = dom.monitor

        async def cancel() -> None:
            try:
                await mon.execute("migrate_cancel")
            except VirError:
                pass
        job.abort = cancel
        mig = dom.migration = Migration(True, flags, was_running=dom.state == ds.RUNNING)
        try:
            if mig.was_running and not flags & F.VIR_MIGRATE_LIVE:
                # offline pass of memory: libvirt pauses the guest first
                await drv.run_vcpus(dom, mon, False, ds.PAUSED_MIGRATION, ds.EV_SUSPENDED,
                                    ds.SUSPENDED_MIGRATED)
            bandwidth = values.get("bandwidth") or dom.migrate_speed
            speed = bandwidth << 20 if bandwidth else UNLIMITED_BANDWIDTH
            await mon.execute("migrate-set-parameters", {"max-bandwidth": speed})
            job.check_aborted()
            await mon.execute("migrate", {"uri": target})
            await wait_migration(mon, "migration out", job)
            mig.performed = True
        except BaseException:
            with trio.CancelScope(shield=True):
                await _source_recover(drv, dom)
            raise
        # QEMU has stopped the guest for the last pass: its STOP event (driver.py)
        # may still be on its way; the state is paused (migrating) in any case
        if dom.state == ds.RUNNING:
            dom.set_state(ds.PAUSED, ds.PAUSED_MIGRATION)
            drv.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_MIGRATED)
        await drv.save_status(dom)
    persistent = None
    if flags & F.VIR_MIGRATE_PERSIST_DEST:
        persistent = dom.persistent_def if dom.persistent else dom.definition
    return make_cookie(drv, dom.definition, persistent)


async def _source_recover(drv: QemuDriverState, dom: QemuDomain) -> None:
    """The migration failed or was cancelled: the guest goes on running here."""
    mig, dom.migration = dom.migration, None
    mon = dom.monitor
    if mig is None or not dom.active or mon is None:
        return
    try:
        await mon.execute("migrate_cancel")
    except VirError:
        pass
    if not mig.was_running:
        return
    try:
        status = (await mon.execute("query-status")).get("running")
    except VirError:
        return
    if status:      # QEMU resumed it itself (its RESUME event reports that)
        return
    try:
        await drv.run_vcpus(dom, mon, True, ds.RUNNING_MIGRATION_CANCELED, ds.EV_RESUMED,
                            ds.RESUMED_MIGRATED)
    except VirError as exc:
        log.warning("%s: cannot resume after a failed migration: %s", dom.name, exc)


async def confirm(drv: QemuDriverState, dom: QemuDomain, flags: int, cancelled: int) -> None:
    """Confirm3: the destination runs the guest (stop it here) or the migration failed."""
    check_flags(flags, SUPPORTED_FLAGS, "qemuMigrationSrcConfirm", P.VIR_FROM_QEMU)
    if flags & OFFLINE:
        if not cancelled and flags & F.VIR_MIGRATE_UNDEFINE_SOURCE and dom.persistent:
            await ds.undefine(drv, dom)
        return
    mig = dom.migration
    if mig is None or not mig.outgoing:
        if cancelled:     # Prepare failed: Perform never ran, the guest never stopped
            return
        raise _invalid(f"domain '{dom.name}' is not being migrated")
    if cancelled or not mig.performed:
        async with jobs.locked(dom, "remoteDispatchDomainMigrateConfirm3Params"):
            await _source_recover(drv, dom)
        return
    async with jobs.locked(dom, "remoteDispatchDomainMigrateConfirm3Params"):
        dom.migration = None
        if dom.active:
            await drv.destroy_domain(dom, reason=ds.SHUTOFF_MIGRATED, detail=ds.STOPPED_MIGRATED)
    if flags & F.VIR_MIGRATE_UNDEFINE_SOURCE and dom.persistent and not dom.active:
        await ds.undefine(drv, dom)


async def perform_p2p(drv: QemuDriverState, dom: QemuDomain, dconnuri: str,
                      values: dict[str, Any], flags: int, owner: str) -> None:
    """Peer-to-peer (VIR_MIGRATE_PEER2PEER): this daemon runs the five steps itself,
    calling the destination daemon ``dconnuri`` for Prepare and Finish."""
    if flags & F.VIR_MIGRATE_TUNNELLED:
        raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "tunnelled migration is not "
                       "supported by pyvirtd yet", domain=P.VIR_FROM_QEMU)
    cookie, xml = begin(drv, dom, values, flags)
    if dom.state == ds.PAUSED:
        flags |= F.VIR_MIGRATE_PAUSED
    dest_flags = flags & ~(F.VIR_MIGRATE_ABORT_ON_ERROR | F.VIR_MIGRATE_AUTO_CONVERGE)
    async with await PeerConnection.open(dconnuri) as peer:
        for feature in (P.VIR_DRV_FEATURE_MIGRATION_V3, P.VIR_DRV_FEATURE_MIGRATION_PARAMS):
            if not (await peer.call("CONNECT_SUPPORTS_FEATURE", feature)).supported:
                raise VirError(P.VIR_ERR_OPERATION_FAILED, "Destination libvirt does not "
                               "support migration with extensible parameters",
                               domain=P.VIR_FROM_QEMU)
        dest = dict(values, destination_xml=xml)
        reply = await peer.call("DOMAIN_MIGRATE_PREPARE3_PARAMS", typed_params(dest),
                                cookie, dest_flags)
        if reply.uri_out:
            dest["migrate_uri"] = reply.uri_out
        dest.setdefault("destination_name", dom.name)
        failure: VirError | None = None
        cookie = b""
        try:
            if not flags & OFFLINE:
                cookie = await perform(drv, dom, dest, flags, owner)
        except VirError as exc:
            failure = exc
        cancelled = int(failure is not None)
        try:
            await peer.call("DOMAIN_MIGRATE_FINISH3_PARAMS", typed_params(dest), cookie,
                            dest_flags, cancelled)
        except VirError as exc:
            if failure is None:
                failure, cancelled = exc, 1
    if dom.migration is not None or flags & OFFLINE:
        await confirm(drv, dom, flags, cancelled)
    if failure is not None:
        raise failure


# ------------------------------------------------------------------- destination

def _destination_def(drv: QemuDriverState, values: dict[str, Any]) -> domxml.DomainDef:
    xml = values.get("destination_xml")
    if not xml:
        raise VirError(P.VIR_ERR_INVALID_ARG, "no domain XML passed",
                       domain=P.VIR_FROM_QEMU)
    live = drv.new_definition(xml)
    dname = values.get("destination_name")
    if dname:
        live.name = dname
    return live


async def prepare(drv: QemuDriverState, values: dict[str, Any], cookie: bytes | None,
                  flags: int) -> tuple[QemuDomain | None, bytes, str]:
    """Prepare3: start QEMU waiting for the incoming stream; the guest, the cookie
    and the URI to send the stream to."""
    check_flags(flags, SUPPORTED_FLAGS, "qemuMigrationDstPrepare", P.VIR_FROM_QEMU)
    live = _destination_def(drv, values)
    if flags & OFFLINE:
        return None, *_prepare_offline(drv, live, values, cookie)
    existing = drv.domains.check_add(live, live=True)
    dom = existing or QemuDomain(live, persistent=False)
    if existing is None:
        drv.domains.add(dom)
    listen = values.get("listen_address") or DEFAULT_LISTEN
    host, port, listen_uri = _incoming_uri(values.get("migrate_uri"), listen)

    async def incoming(mon: Any) -> None:
        await mon.execute("migrate-incoming", {"uri": listen_uri})

    try:
        async with dom.lock:
            if dom.active:
                raise _invalid(f"domain '{live.name}' is already active")
            await drv.start_domain(dom, paused=True, live_def=live, incoming=incoming,
                                   incoming_detail=ds.STARTED_MIGRATED)
            dom.migration = Migration(False, flags, port=port)
    except BaseException:
        _ports_in_use.discard(port)
        if existing is None and not dom.active:
            drv.domains.remove(dom)
        raise
    shown = f"[{host}]" if ":" in host else host
    return dom, make_cookie(drv, live), f"tcp://{shown}:{port}"


def _prepare_offline(drv: QemuDriverState, live: domxml.DomainDef, values: dict[str, Any],
                     cookie: bytes | None) -> tuple[bytes, str]:
    """Offline: nothing starts; the definition waits for Finish, which defines it."""
    xml = values.get("persistent_xml") or cookie_persistent(cookie)
    config = drv.new_definition(xml) if xml else live
    config.name = live.name
    drv.domains.check_add(config, live=False)
    _offline_prepared[config.name] = config
    return make_cookie(drv, config), f"tcp://{socket.gethostname()}"


async def _finish_offline(drv: QemuDriverState, name: str | None, cancelled: int) -> Any:
    config = _offline_prepared.pop(name or "", None)
    if config is None:
        raise VirError(P.VIR_ERR_NO_DOMAIN, f"no domain with matching name '{name}'",
                       domain=P.VIR_FROM_QEMU)
    if cancelled:
        raise _failed(f"migration of domain {name} was cancelled")
    return (await drv.define(config)).ref(), make_cookie(drv, config)


async def abandon_incoming(drv: QemuDriverState, dom: QemuDomain, mig: Migration) -> None:
    """The client that prepared an incoming migration went away before Finish: the
    waiting QEMU is killed (shut off (failed)), as libvirt's close callback does."""
    async with dom.lock:
        if dom.migration is not mig:
            return
        dom.migration = None
        if mig.port is not None:
            _ports_in_use.discard(mig.port)
        if dom.active:
            log.warning("%s: incoming migration abandoned by its client", dom.name)
            await drv.destroy_domain(dom, reason=ds.SHUTOFF_FAILED, detail=ds.STOPPED_FAILED)


async def finish(drv: QemuDriverState, values: dict[str, Any], cookie: bytes | None,
                 flags: int, cancelled: int) -> tuple[Any, bytes]:
    """Finish3: the stream is in, the guest runs here (or, cancelled, is gone)."""
    check_flags(flags, SUPPORTED_FLAGS, "qemuMigrationDstFinish", P.VIR_FROM_QEMU)
    name = values.get("destination_name")
    if flags & OFFLINE:
        return await _finish_offline(drv, name, cancelled)
    dom = drv.domains.get(name) if name else None
    mig = dom.migration if dom is not None else None
    if dom is None or mig is None or mig.outgoing:
        raise VirError(P.VIR_ERR_NO_DOMAIN, f"no domain with matching name '{name}'",
                       domain=P.VIR_FROM_QEMU)
    async with dom.lock:
        dom.migration = None
        if mig.port is not None:
            _ports_in_use.discard(mig.port)
        mon = dom.monitor
        try:
            if cancelled:
                raise _failed(f"migration of domain {dom.name} was cancelled")
            if not dom.active or mon is None:
                raise _failed("domain is not running")
            await wait_migration(mon, "migration in")
        except BaseException:
            with trio.CancelScope(shield=True):
                if dom.active:
                    await drv.destroy_domain(dom, reason=ds.SHUTOFF_FAILED,
                                             detail=ds.STOPPED_FAILED)
            raise
        if flags & F.VIR_MIGRATE_PERSIST_DEST:
            xml = values.get("persistent_xml") or cookie_persistent(cookie)
            persistent = drv.new_definition(xml) if xml else dom.definition.copy()
            persistent.name = dom.name
            await drv.save_config(persistent)
            replaced = dom.persistent
            dom.new_def, dom.persistent = persistent, True
            drv.emit(dom, ds.EV_DEFINED, ds.DEFINED_UPDATED if replaced else ds.DEFINED_ADDED)
        if flags & F.VIR_MIGRATE_PAUSED:
            dom.set_state(ds.PAUSED, ds.PAUSED_USER)
            drv.emit(dom, ds.EV_SUSPENDED, ds.SUSPENDED_PAUSED)
            await drv.save_status(dom)
        else:
            await drv.run_vcpus(dom, mon, True, ds.RUNNING_MIGRATED, ds.EV_RESUMED,
                                ds.RESUMED_MIGRATED)
    return dom.ref(), make_cookie(drv, dom.definition)


class MigrationTuningMixin:
    """migrate-setspeed/-getspeed and migrate-setmaxdowntime/-getmaxdowntime."""
    driver: QemuDriverState
    _dom: Any

    async def domain_migrate_set_max_speed(self, ref: Dom, bandwidth: int, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainMigrateSetMaxSpeed", P.VIR_FROM_QEMU)
        if bandwidth > BANDWIDTH_MAX:
            raise VirError(P.VIR_ERR_OVERFLOW, f"bandwidth must be less than {BANDWIDTH_MAX + 1}",
                           domain=P.VIR_FROM_QEMU)
        dom = self._dom(ref)
        if dom.active and dom.monitor is not None:
            await dom.monitor.execute("migrate-set-parameters",
                                      {"max-bandwidth": (bandwidth or BANDWIDTH_MAX) << 20})
        dom.migrate_speed = bandwidth

    def domain_migrate_get_max_speed(self, ref: Dom, flags: int) -> int:
        check_flags(flags, SPEED_POSTCOPY, "qemuDomainMigrateGetMaxSpeed", P.VIR_FROM_QEMU)
        if flags & SPEED_POSTCOPY:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "post-copy migration is not "
                           "supported by pyvirtd yet", domain=P.VIR_FROM_QEMU)
        return self._dom(ref).migrate_speed or BANDWIDTH_MAX

    def _monitor(self, ref: Dom) -> Any:
        dom = self._dom(ref)
        if not dom.active or dom.monitor is None:
            raise _invalid("domain is not running")
        return dom.monitor

    async def domain_migrate_set_max_downtime(self, ref: Dom, downtime: int, flags: int) -> None:
        check_flags(flags, 0, "qemuDomainMigrateSetMaxDowntime", P.VIR_FROM_QEMU)
        await self._monitor(ref).execute("migrate-set-parameters", {"downtime-limit": downtime})

    async def domain_migrate_get_max_downtime(self, ref: Dom, flags: int) -> int:
        check_flags(flags, 0, "qemuDomainMigrateGetMaxDowntime", P.VIR_FROM_QEMU)
        params = await self._monitor(ref).execute("query-migrate-parameters")
        return int(params.get("downtime-limit", 0))


class MigrationMixin(MigrationTuningMixin):
    """The migration procedures of a qemu:// connection (version 3, with and without Params)."""
    driver: QemuDriverState
    _dom: Any

    # -- source
    def domain_migrate_begin3_params(self, ref: Dom, params: list, flags: int) -> tuple:
        return begin(self.driver, self._dom(ref), parse_params(params), flags)

    def domain_migrate_begin3(self, ref: Dom, xmlin: str | None, flags: int, dname: str | None,
                              resource: int) -> tuple:
        return begin(self.driver, self._dom(ref),
                     _legacy_params(dname, None, resource, xmlin), flags)

    async def domain_migrate_perform3_params(self, ref: Dom, dconnuri: str | None, params: list,
                                             cookie_in: bytes, flags: int) -> bytes:
        owner = "remoteDispatchDomainMigratePerform3Params"
        if flags & F.VIR_MIGRATE_PEER2PEER:
            if not dconnuri:
                raise VirError(P.VIR_ERR_INVALID_ARG, "missing destination connection URI",
                               domain=P.VIR_FROM_QEMU)
            await perform_p2p(self.driver, self._dom(ref), dconnuri, parse_params(params),
                              flags, owner)
            return b""
        _no_p2p(flags)
        return await self._perform(ref, parse_params(params), flags, owner)

    async def domain_migrate_perform3(self, ref: Dom, xmlin: str | None, cookie_in: bytes,
                                      dconnuri: str | None, uri: str | None, flags: int,
                                      dname: str | None, resource: int) -> bytes:
        if flags & F.VIR_MIGRATE_PEER2PEER and dconnuri:
            await perform_p2p(self.driver, self._dom(ref), dconnuri,
                              _legacy_params(dname, uri, resource, xmlin), flags,
                              "remoteDispatchDomainMigratePerform3")
            return b""
        _no_p2p(flags)
        return await self._perform(ref, _legacy_params(dname, uri, resource), flags,
                                   "remoteDispatchDomainMigratePerform3")

    async def _perform(self, ref: Dom, values: dict[str, Any], flags: int, owner: str) -> bytes:
        dom = self._dom(ref)
        cookie = await perform(self.driver, dom, values, flags, owner)
        self.__dict__.setdefault("_migrations", []).append((dom, dom.migration))
        return cookie

    async def domain_migrate_confirm3_params(self, ref: Dom, params: list, cookie_in: bytes,
                                             flags: int, cancelled: int) -> None:
        parse_params(params)
        await confirm(self.driver, self._dom(ref), flags, cancelled)

    async def domain_migrate_confirm3(self, ref: Dom, cookie_in: bytes, flags: int,
                                      cancelled: int) -> None:
        await confirm(self.driver, self._dom(ref), flags, cancelled)

    # -- destination
    async def domain_migrate_prepare3_params(self, params: list, cookie_in: bytes,
                                             flags: int) -> tuple:
        return await self._prepare(parse_params(params), cookie_in, flags)

    async def domain_migrate_prepare3(self, cookie_in: bytes, uri_in: str | None, flags: int,
                                      dname: str | None, resource: int, dom_xml: str) -> tuple:
        return await self._prepare(_legacy_params(dname, uri_in, resource, dom_xml), cookie_in,
                                   flags)

    async def _prepare(self, values: dict[str, Any], cookie_in: bytes, flags: int) -> tuple:
        dom, cookie, uri = await prepare(self.driver, values, cookie_in, flags)
        if dom is not None:
            self.__dict__.setdefault("_migrations", []).append((dom, dom.migration))
        return cookie, uri

    def drop_migrations(self) -> None:
        """The connection closes (called from its close()): an incoming migration it
        prepared and never finished is abandoned; an outgoing one it performed and
        never confirmed is forgotten, the guest left paused here as libvirt leaves
        it (whether the destination runs it is unknown)."""
        pending, self.__dict__["_migrations"] = self.__dict__.get("_migrations", []), []
        for dom, mig in pending:
            if dom.migration is not mig:
                continue
            if mig.outgoing:
                log.warning("%s: migration finished but never confirmed; the guest stays "
                            "paused here", dom.name)
                dom.migration = None
            else:
                self.driver.spawn(abandon_incoming, self.driver, dom, mig)

    async def domain_migrate_finish3_params(self, params: list, cookie_in: bytes, flags: int,
                                            cancelled: int) -> tuple:
        return await finish(self.driver, parse_params(params), cookie_in, flags, cancelled)

    async def domain_migrate_finish3(self, dname: str, cookie_in: bytes, dconnuri: str | None,
                                     uri: str | None, flags: int, cancelled: int) -> tuple:
        return await finish(self.driver, _legacy_params(dname, uri, 0), cookie_in, flags,
                            cancelled)


def _no_p2p(flags: int) -> None:
    if flags & (F.VIR_MIGRATE_PEER2PEER | F.VIR_MIGRATE_TUNNELLED):
        raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED, "peer-to-peer migration needs the "
                       "destination URI; tunnelled migration is not supported by pyvirtd yet",
                       domain=P.VIR_FROM_QEMU)
