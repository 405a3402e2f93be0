"""The admin program (virt-admin): servers, their clients and limits, logging.

Served only on the admin socket.  Parameter names are libvirt-admin.h's
(VIR_THREADPOOL_WORKERS_*, VIR_SERVER_CLIENTS_*, VIR_CLIENT_INFO_*), since
virt-admin prints and sends them by name.
"""

from __future__ import annotations

import grp
import logging
import pwd
from typing import TYPE_CHECKING, Any

from pyvirtd import logsetup
from pyvirtd.errors import VirError, internal_error, invalid_arg
from pyvirtd.remote import LIB_VERSION
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from pyvirtd.client import Client
    from pyvirtd.daemon import Daemon, Server

log = logging.getLogger(__name__)

_INT, _UINT, _ULLONG, _BOOL, _STRING = (P.VIR_TYPED_PARAM_INT, P.VIR_TYPED_PARAM_UINT,
                                        P.VIR_TYPED_PARAM_ULLONG, P.VIR_TYPED_PARAM_BOOLEAN,
                                        P.VIR_TYPED_PARAM_STRING)


def _param(name: str, kind: int, value: Any) -> Any:
    return P.admin_typed_param(name, P.admin_typed_param_value(kind, value))


def _admin_error(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_ADMIN)


class AdminProgram:
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    # ------------------------------------------------------------ connection
    def connect_open(self, client: "Client", flags: int) -> None:
        if client.program_state.get("admin_open"):
            raise internal_error("connection already open")
        client.program_state["admin_open"] = True

    def connect_close(self, client: "Client") -> None:
        client.program_state["admin_open"] = False

    def connect_get_lib_version(self, client: "Client") -> int:
        return LIB_VERSION

    # --------------------------------------------------------------- servers
    def _server(self, name: str) -> "Server":
        server = self.daemon.servers.get(name)
        if server is None:
            raise _admin_error(P.VIR_ERR_NO_SERVER, f"No server named '{name}'")
        return server

    # `need_results` is a flag, not a count: set, the reply lists every item
    # (adminDispatchConnectListServers / adminDispatchServerListClients).
    def connect_list_servers(self, client: "Client", need_results: int, flags: int) -> tuple:
        names = sorted(self.daemon.servers)   # libvirtd lists them by name: admin, libvirtd
        return [(n,) for n in names] if need_results else [], len(names)

    def connect_lookup_server(self, client: "Client", name: str, flags: int) -> tuple:
        return (self._server(name).name,)

    def server_get_threadpool_parameters(self, client: "Client", srv: Any, flags: int) -> list:
        s = self._server(srv[0])
        busy = s.dispatcher.workers.borrowed_tokens
        return [_param("minWorkers", _UINT, s.min_workers),
                _param("maxWorkers", _UINT, s.max_workers),
                _param("nWorkers", _UINT, max(s.min_workers, busy)),
                _param("freeWorkers", _UINT, max(s.min_workers, busy) - busy),
                _param("prioWorkers", _UINT, s.prio_workers),
                _param("jobQueueDepth", _UINT, 0)]

    def server_set_threadpool_parameters(self, client: "Client", srv: Any, params: list,
                                         flags: int) -> None:
        s = self._server(srv[0])
        values = {p.field: p.value.value for p in params}
        unknown = set(values) - {"minWorkers", "maxWorkers", "prioWorkers"}
        if unknown:
            raise invalid_arg(f"parameter '{sorted(unknown)[0]}' not supported")
        new_min = values.get("minWorkers", s.min_workers)
        new_max = values.get("maxWorkers", s.max_workers)
        if new_min > new_max or new_max < 1:
            raise invalid_arg("minWorkers must not exceed maxWorkers, which must be positive")
        s.min_workers, s.max_workers = new_min, new_max
        s.prio_workers = values.get("prioWorkers", s.prio_workers)
        s.dispatcher.workers.total_tokens = new_max

    def server_get_client_limits(self, client: "Client", srv: Any, flags: int) -> list:
        s = self._server(srv[0])
        unauth = sum(1 for c in s.clients.values() if not c.authenticated)
        return [_param("nclients_max", _UINT, s.max_clients),
                _param("nclients", _UINT, len(s.clients)),
                _param("nclients_unauth_max", _UINT, s.max_anonymous_clients),
                _param("nclients_unauth", _UINT, unauth)]

    def server_set_client_limits(self, client: "Client", srv: Any, params: list, flags: int) -> None:
        s = self._server(srv[0])
        values = {p.field: p.value.value for p in params}
        new_max = values.get("nclients_max", s.max_clients)
        new_unauth = values.get("nclients_unauth_max", s.max_anonymous_clients)
        if new_unauth > new_max:
            # virNetServerSetClientLimits' wording, muddled as it is
            raise invalid_arg("The overall maximum number of clients waiting for authentication "
                              "must not be less than the overall maximum number of clients")
        s.max_clients, s.max_anonymous_clients = new_max, new_unauth
        s.slot_freed.unpark_all()

    def server_update_tls_files(self, client: "Client", srv: Any, flags: int) -> None:
        self._server(srv[0])

    # --------------------------------------------------------------- clients
    def _wire_client(self, s: "Server", c: "Client") -> tuple:
        return ((s.name,), c.id, c.connected_at, c.transport)

    def _client(self, clnt: Any) -> "Client":
        s = self._server(clnt[0][0])
        found = s.clients.get(clnt[1])
        if found is None:
            raise _admin_error(P.VIR_ERR_NO_CLIENT, f"No client with matching ID '{clnt[1]}'")
        return found

    def server_list_clients(self, client: "Client", srv: Any, need_results: int, flags: int) -> tuple:
        s = self._server(srv[0])
        clients = list(s.clients.values())
        listed = [self._wire_client(s, c) for c in clients] if need_results else []
        return listed, len(clients)

    def server_lookup_client(self, client: "Client", srv: Any, id: int, flags: int) -> tuple:
        s = self._server(srv[0])
        found = s.clients.get(id)
        if found is None:
            raise _admin_error(P.VIR_ERR_NO_CLIENT, f"No client with matching ID '{id}'")
        return self._wire_client(s, found)   # the reply's one field: a bare value

    def client_get_info(self, client: "Client", clnt: Any, flags: int) -> list:
        target = self._client(clnt)
        params = [_param("readonly", _BOOL, int(target.readonly))]
        ident = target.identity
        if ident is not None:
            params.append(_param("unix_user_id", _INT, ident.uid))
            try:
                params.append(_param("unix_user_name", _STRING, pwd.getpwuid(ident.uid).pw_name))
            except KeyError:
                pass
            params.append(_param("unix_group_id", _INT, ident.gid))
            try:
                params.append(_param("unix_group_name", _STRING, grp.getgrgid(ident.gid).gr_name))
            except KeyError:
                pass
            params.append(_param("unix_process_id", _INT, ident.pid))
        else:     # TCP/TLS: the peer's address, as libvirt formats it ("IP;port")
            try:
                host, port = target.sock.getpeername()[:2]
                params.append(_param("sock_addr", _STRING, f"{host};{port}"))
            except OSError:
                pass
        sasl_user = target.program_state.get("sasl_username")
        if sasl_user:
            params.append(_param("sasl_user_name", _STRING, sasl_user))
        dname = getattr(target.channel, "peer_dn", None)
        if dname:
            params.append(_param("tls_x509_dname", _STRING, dname))
        return params

    def client_close(self, client: "Client", clnt: Any, flags: int) -> None:
        self._client(clnt).close()

    # --------------------------------------------------------------- logging
    def connect_get_logging_outputs(self, client: "Client", flags: int) -> tuple:
        outputs = self.daemon.log_outputs
        return outputs, len(outputs.split())

    def connect_get_logging_filters(self, client: "Client", flags: int) -> tuple:
        filters = self.daemon.log_filters or None
        return filters, len(filters.split()) if filters else 0

    def connect_set_logging_outputs(self, client: "Client", outputs: str | None, flags: int) -> None:
        try:
            # an empty value restores the default output, as libvirtd does
            self.daemon.set_logging(
                outputs=outputs or f"{self.daemon.config.log_level}:stderr")
        except logsetup.LogSettingError as exc:
            raise invalid_arg(str(exc)) from None

    def connect_set_logging_filters(self, client: "Client", filters: str | None, flags: int) -> None:
        try:
            self.daemon.set_logging(filters=filters or "")
        except logsetup.LogSettingError as exc:
            raise invalid_arg(str(exc)) from None

    def connect_set_daemon_timeout(self, client: "Client", timeout: int, flags: int) -> None:
        self.daemon.timeout = timeout
