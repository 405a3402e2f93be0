"""The daemon: its servers, their listening sockets, and the accept loops.

Like libvirtd, pyvirtd runs two servers: ``libvirtd`` (the remote, qemu and
lxc programs on the read-write and read-only sockets) and ``admin`` (the
admin program on the admin socket).  Each has its own client limits, which
the admin program can read and change at run time.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pyvirtd import hostinfo, logsetup
from pyvirtd.client import TRANSPORT_TCP, TRANSPORT_TLS, TRANSPORT_UNIX, Client
from pyvirtd.config import Config
from pyvirtd.dispatch import Dispatcher, Program
from pyvirtd.driver import DriverContext, DriverRegistry
from pyvirtd.files import remove_leftovers
from pyvirtd.paths import Paths

log = logging.getLogger(__name__)

AUTH_TYPES = {"none": 0, "sasl": 1, "polkit": 2}
# Pause before retrying accept() after running out of file descriptors,
# so that a burst of connections cannot spin the loop (trio does the same).
ACCEPT_RETRY_SLEEP = 0.1
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(eq=False)
class Server:
    """One of the daemon's servers and the clients it serves now."""
    name: str
    dispatcher: Dispatcher
    max_clients: int
    max_anonymous_clients: int
    max_client_requests: int
    keepalive_interval: int
    keepalive_count: int
    min_workers: int
    max_workers: int
    prio_workers: int
    clients: dict[int, Client] = field(default_factory=dict)
    slot_freed: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    def anonymous(self) -> int:
        """Clients that have not authenticated yet (max_anonymous_clients counts them)."""
        return sum(1 for c in self.clients.values() if not c.authenticated)


@dataclass(eq=False)
class Listener:
    sock: trio.socket.SocketType
    server: Server
    readonly: bool
    auth: int
    path: Path | None     # a unix socket file we created and must remove
    transport: int = TRANSPORT_UNIX     # TCP listeners: TRANSPORT_TCP or TRANSPORT_TLS
    # (st_dev, st_ino) of ``path`` as we bound it: on close the file is removed
    # only while it is still this socket, never a newer daemon's at the same path
    identity: tuple[int, int] | None = None


class Daemon:
    """Everything one pyvirtd process serves."""

    def __init__(self, config: Config, paths: Paths, *, privileged: bool,
                 default_uri: str = "test:///default") -> None:
        from pyvirtd.admin import AdminProgram
        from pyvirtd.remote import PRE_AUTH, RemoteProgram

        self.config = config
        self.paths = paths
        self.started_at = time.time()
        self.host_uuid = hostinfo.host_uuid(config.host_uuid, config.host_uuid_source)
        self.drivers = DriverRegistry(
            DriverContext(config, paths, privileged, host_uuid=self.host_uuid), default_uri)
        c = config
        remote = RemoteProgram(self)
        self.libvirtd = Server(
            "libvirtd",
            Dispatcher([Program("remote", remote, pre_auth=PRE_AUTH),
                        Program("qemu", remote), Program("lxc", remote)], c.max_workers),
            c.max_clients, c.max_anonymous_clients, c.max_client_requests,
            c.keepalive_interval, c.keepalive_count, c.min_workers, c.max_workers, c.prio_workers)
        self.admin = Server(
            "admin", Dispatcher([Program("admin", AdminProgram(self))], c.admin_max_workers),
            c.admin_max_clients, c.admin_max_clients, c.admin_max_client_requests,
            c.admin_keepalive_interval, c.admin_keepalive_count,
            c.admin_min_workers, c.admin_max_workers, 0)
        self.servers = {s.name: s for s in (self.libvirtd, self.admin)}
        unknown = set(c.access_drivers) - {"polkit", "none"}
        if unknown:
            raise ValueError(f"access_drivers: unknown {', '.join(sorted(unknown))} "
                             "(known: polkit, none)")
        if "polkit" in c.access_drivers:   # per-API checks (pyvirtd/auth/polkit.py)
            from pyvirtd.auth.polkit import PolkitAccess
            self.libvirtd.dispatcher.access = PolkitAccess()
        self.listeners: list[Listener] = []
        self.timeout = 0
        self.tls: Any = None      # pyvirtd.auth.tls.TlsServer, once a TLS listener exists
        self.network_ports: dict[int, int] = {}   # TRANSPORT_TCP/TLS -> port (for mDNS)
        self.verbose = False
        # what virt-admin daemon-log-outputs/-filters show and change
        self.log_outputs = config.log_outputs or f"{config.log_level}:stderr"
        self.log_filters = config.log_filters

    # --------------------------------------------------------------- sockets
    def add_unix_listener(self, path: Path, server: Server, *, readonly: bool,
                          mode: int, auth: str = "none", backlog: int | None = None) -> None:
        """Bind a unix socket: under a temporary name, chmod, then rename into place.

        Clients never see a socket with the wrong permissions, and a stale
        socket file from a crashed daemon is replaced atomically. ``backlog``
        (default ``max_queued_clients``) bounds the connections waiting to be
        accepted. The file's identity is remembered so that `close_listeners`
        removes it only while it is still ours (trio's open_unix_listeners
        does the same).
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(str(tmp))
        os.chmod(tmp, mode)
        group = self.config.unix_sock_group
        if group:
            import grp
            os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
        if backlog is None:
            backlog = self.config.max_queued_clients
        raw.listen(backlog or socket.SOMAXCONN)
        st = os.stat(tmp)
        os.replace(tmp, path)
        self.listeners.append(Listener(trio.socket.from_stdlib_socket(raw), server,
                                       readonly, AUTH_TYPES[auth], path,
                                       identity=(st.st_dev, st.st_ino)))

    def add_inherited_listener(self, raw: socket.socket, server: Server, *,
                               readonly: bool, auth: str = "none",
                               transport: int = TRANSPORT_UNIX) -> None:
        """Use a socket handed over by systemd; systemd owns its file."""
        if transport == TRANSPORT_TLS:
            self._ensure_tls()
        raw.setblocking(False)
        self.listeners.append(Listener(trio.socket.from_stdlib_socket(raw), server,
                                       readonly, AUTH_TYPES[auth], None, transport))

    def _ensure_tls(self) -> None:
        if self.tls is None:
            from pyvirtd.auth.tls import TlsServer
            self.tls = TlsServer(self.config, self.paths)

    def add_tcp_listeners(self, host: str | None, port: int, server: Server, *,
                          tls: bool, auth: str) -> None:
        """Listen on ``host`` (every address when None) for TCP or TLS clients.

        Raises OSError when no address could be bound, ValueError when the
        TLS certificates cannot be loaded.
        """
        if tls:
            self._ensure_tls()
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
        bound = 0
        error: OSError | None = None
        for family, type_, proto, _, addr in infos:
            raw = socket.socket(family, type_, proto)
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                raw.bind(addr)
                raw.listen(self.config.max_queued_clients or socket.SOMAXCONN)
            except OSError as exc:
                raw.close()
                error = exc
                continue
            raw.setblocking(False)
            self.listeners.append(Listener(
                trio.socket.from_stdlib_socket(raw), server, False, AUTH_TYPES[auth], None,
                TRANSPORT_TLS if tls else TRANSPORT_TCP))
            bound += 1
        if not bound:
            raise error or OSError(f"no address to listen on for {host}:{port}")
        self.network_ports[TRANSPORT_TLS if tls else TRANSPORT_TCP] = port

    def close_listeners(self) -> None:
        """Close every listener and remove the socket files that are still ours.

        A newer daemon may have bound its own socket at the same path (it
        replaces ours atomically); that file has another inode and stays.
        The check and the unlink are not atomic, as in trio: a replacement in
        between is a race no unix API closes.
        """
        for lst in self.listeners:
            lst.sock.close()
            if lst.path is not None:
                _unlink_if_ours(lst.path, lst.identity)
        self.listeners.clear()

    # ----------------------------------------------------------------- serve
    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept clients on every listener until cancelled."""
        p = self.paths
        await trio.to_thread.run_sync(remove_leftovers, [p.config_dir, p.state_dir, p.run_dir])
        await self.drivers.start()
        try:
            async with trio.open_nursery() as nursery:
                for lst in self.listeners:
                    nursery.start_soon(self._accept_loop, lst, nursery)
                ports = self.network_ports
                port = ports.get(TRANSPORT_TCP) or ports.get(TRANSPORT_TLS)
                if self.config.mdns_adv and port:
                    from pyvirtd import mdns
                    nursery.start_soon(mdns.advertise, self.config.mdns_name or mdns.default_name(),
                                       port, self.config.listen_addr)
                task_status.started()
        finally:
            self.close_listeners()
            with trio.CancelScope(shield=True):
                await self.drivers.stop()

    async def _accept_loop(self, lst: Listener, nursery: trio.Nursery) -> None:
        server = lst.server
        # clients of this listener start unauthenticated (auth to do, or a TLS
        # handshake first), so they count against max_anonymous_clients
        anonymous = lst.auth != 0 or lst.transport == TRANSPORT_TLS
        while True:
            # at max_clients (or max_anonymous_clients) libvirtd stops
            # accepting; newcomers wait in the backlog
            while (len(server.clients) >= server.max_clients
                   or (anonymous and server.anonymous() >= server.max_anonymous_clients)):
                await server.slot_freed.park()
            try:
                sock, _ = await lst.sock.accept()
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.error("accept failed (%s); retrying", exc)
                    await trio.sleep(ACCEPT_RETRY_SLEEP)
                    continue
                raise
            raw = socket.socket(fileno=sock.detach())
            raw.setblocking(False)
            channel = None
            if lst.transport == TRANSPORT_TLS:
                channel = self.tls.channel(raw)
            elif lst.transport == TRANSPORT_TCP:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Client(self, server, raw, readonly=lst.readonly,
                            transport=lst.transport, auth=lst.auth, channel=channel)
            server.clients[client.id] = client
            log.debug("client %d connected to %s", client.id, server.name)
            nursery.start_soon(client.run)

    # --------------------------------------------------------------- clients
    def close_driver_connection(self, client: Client) -> None:
        conn, client.conn = client.conn, None
        if conn is None:
            return
        conn.events.drop(client)
        try:
            conn.close()
        except Exception:
            log.exception("closing a driver connection failed")

    def client_gone(self, client: Client) -> None:
        """Clean up after a client, however it left (even without CONNECT_CLOSE)."""
        self.close_driver_connection(client)
        server = client.server
        if server.clients.pop(client.id, None) is not None:
            server.slot_freed.unpark_all()
            log.debug("client %d left %s", client.id, server.name)

    def set_logging(self, outputs: str | None = None, filters: str | None = None) -> None:
        """Change log outputs/filters at run time; raises logsetup.LogSettingError."""
        outputs = self.log_outputs if outputs is None else outputs
        filters = self.log_filters if filters is None else filters
        logsetup.configure(self.config.log_level, outputs, filters, verbose=self.verbose)
        self.log_outputs, self.log_filters = outputs, filters

    def reload(self, config: Config) -> None:
        """Apply a re-read configuration's limits, logging, TLS certificates (SIGHUP).

        Sockets stay; TLS connections accepted afterwards use the new certificates.
        """
        self.config = config
        try:
            self.set_logging(config.log_outputs or f"{config.log_level}:stderr",
                             config.log_filters)
        except logsetup.LogSettingError as exc:
            log.error("keeping the old log settings: %s", exc)
        if self.tls is not None and self.tls.reload(config):
            log.info("TLS certificates reloaded; new connections use them")
        self.libvirtd.max_anonymous_clients = config.max_anonymous_clients
        for server, prefix in ((self.libvirtd, ""), (self.admin, "admin_")):
            server.max_clients = getattr(config, prefix + "max_clients")
            server.max_client_requests = getattr(config, prefix + "max_client_requests")
            server.keepalive_interval = getattr(config, prefix + "keepalive_interval")
            server.keepalive_count = getattr(config, prefix + "keepalive_count")
            server.slot_freed.unpark_all()

    def client_count(self) -> int:
        return sum(len(s.clients) for s in self.servers.values())


def _unlink_if_ours(path: Path, identity: tuple[int, int] | None) -> None:
    """Remove the socket file at ``path`` if it is the one we bound."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) != identity:
        log.info("not removing %s: another socket replaced ours", path)
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
