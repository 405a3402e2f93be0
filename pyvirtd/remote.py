"""The remote program's procedures that the daemon answers itself.

Everything about the connection rather than a hypervisor lives here:
authentication, CONNECT_OPEN/CLOSE, feature probes, keepalive, event callback
registration and the close callback.  All other remote procedures go to the
client's driver connection (see pyvirtd/dispatch.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyvirtd.client import TRANSPORT_TCP
from pyvirtd.errors import VirError, internal_error
from pyvirtd.rpc import _generated as P

if TYPE_CHECKING:
    from pyvirtd.client import Client
    from pyvirtd.daemon import Daemon

REMOTE_AUTH_NONE, REMOTE_AUTH_SASL, REMOTE_AUTH_POLKIT = 0, 1, 2

# The libvirt version pyvirtd speaks for (virsh prints it as the daemon's).
LIB_VERSION = 9_000_000
VIR_CONNECT_RO = P.ConnectFlags.VIR_CONNECT_RO

# Procedures allowed before authentication (remote_daemon.c: needAuth = false).
PRE_AUTH = frozenset({"auth_list", "auth_sasl_init", "auth_sasl_start",
                      "auth_sasl_step", "auth_polkit"})

# Features the daemon itself answers for (remoteDispatchConnectSupportsFeature).
_DAEMON_FEATURES = {
    P.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE,
    P.VIR_DRV_FEATURE_REMOTE_EVENT_CALLBACK,
    P.VIR_DRV_FEATURE_REMOTE_CLOSE_CALLBACK,
}


def _invalid(what: str) -> VirError:
    # libvirtd's words (remote_daemon_dispatch.c)
    return VirError(P.VIR_ERR_AUTH_FAILED, f"client tried invalid {what} request",
                    domain=P.VIR_FROM_REMOTE)


def _bus(client: "Client") -> Any:
    if client.conn is None:
        raise internal_error("connection not open")
    return client.conn.events


class RemoteProgram:
    """Handlers take the client first, then the call's XDR fields."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    # ---------------------------------------------------------- authentication
    def auth_list(self, client: "Client") -> list[int]:
        # root on a polkit socket needs no check (remoteDispatchAuthList)
        if (client.auth == REMOTE_AUTH_POLKIT and not client.authenticated
                and client.identity is not None and client.identity.uid == 0):
            client.set_authenticated()
            return [REMOTE_AUTH_NONE]
        return [client.auth]

    async def auth_polkit(self, client: "Client") -> int:
        if client.auth != REMOTE_AUTH_POLKIT or client.authenticated:
            raise _invalid("PolicyKit init")
        from pyvirtd.auth.polkit import auth_unix
        await auth_unix(client)        # VirError(AUTH_FAILED) when polkit says no
        client.set_authenticated()
        return 1

    # SASL (pyvirtd/auth/sasl.py); the session lives in program_state until done
    def auth_sasl_init(self, client: "Client") -> str:
        if client.auth != REMOTE_AUTH_SASL or client.authenticated:
            raise _invalid("SASL init")
        from pyvirtd.auth.sasl import SaslSession
        session = client.program_state["sasl"] = SaslSession(client)
        return ",".join(session.offered)

    def auth_sasl_start(self, client: "Client", mech: str, nil: int, data: bytes) -> tuple:
        session = client.program_state.get("sasl")
        if session is None or session.mech is not None:
            raise _invalid("SASL start")
        return self._sasl_result(client, session, session.start, mech, None if nil else data)

    def auth_sasl_step(self, client: "Client", nil: int, data: bytes) -> tuple:
        session = client.program_state.get("sasl")
        if session is None or session.mech is None:
            raise _invalid("SASL step")
        return self._sasl_result(client, session, session.step, None if nil else data)

    def _sasl_result(self, client: "Client", session: Any, fn: Any, *args: Any) -> tuple:
        from pyvirtd.auth.sasl import SaslChannel, auth_failed
        try:
            complete, out = fn(*args)
            if complete:
                session.check_identity(self.daemon.config.sasl_allowed_username_list)
                layer = session.mech.layer
                if client.transport == TRANSPORT_TCP and layer is None:
                    raise auth_failed("negotiation SSF too small for plain TCP")
        except VirError:
            client.program_state.pop("sasl", None)    # start over from AUTH_SASL_INIT
            raise
        if complete:
            client.program_state.pop("sasl", None)
            client.program_state["sasl_username"] = session.mech.username
            client.set_authenticated()
            if layer is not None:
                ctx, encrypt, maxbuf = layer
                client.switch_channel(
                    lambda inner, queued: SaslChannel(inner, ctx, encrypt, maxbuf, queued))
        return (1 if complete else 0, 1 if out is None else 0, out or b"")

    # -------------------------------------------------------------- connection
    async def connect_open(self, client: "Client", name: str | None, flags: int) -> None:
        # async: a driver may read files to open (test:///PATH); "opening"
        # keeps a second CONNECT_OPEN from racing the first one meanwhile
        if client.conn is not None or client.program_state.get("opening"):
            raise internal_error("connection already open")
        if client.readonly:
            flags |= VIR_CONNECT_RO
        if flags & VIR_CONNECT_RO:
            client.readonly = True
        client.program_state["opening"] = True
        try:
            client.conn = await self.daemon.drivers.open(name, flags, client)
        finally:
            client.program_state.pop("opening", None)

    def connect_close(self, client: "Client") -> None:
        self.daemon.close_driver_connection(client)

    def connect_get_uri(self, client: "Client") -> str:
        if client.conn is None:
            raise internal_error("connection not open")
        return client.conn.uri

    def connect_get_lib_version(self, client: "Client") -> int:
        return LIB_VERSION

    def connect_supports_feature(self, client: "Client", feature: int, ) -> int:
        if feature == P.VIR_DRV_FEATURE_PROGRAM_KEEPALIVE:
            client.start_keepalive()
            return 1
        if feature in _DAEMON_FEATURES:
            return 1
        if feature == P.VIR_DRV_FEATURE_FD_PASSING:
            return 1 if client.identity is not None else 0
        conn = client.conn
        probe = getattr(conn, "connect_supports_feature", None)
        return int(probe(feature)) if probe is not None else 0

    def connect_register_close_callback(self, client: "Client") -> None:
        client.close_callback = True

    def connect_unregister_close_callback(self, client: "Client") -> None:
        client.close_callback = False

    # ---------------------------------------------------------- domain events
    def connect_domain_event_register(self, client: "Client") -> int:
        _bus(client).register(client, "domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE, legacy=True)
        return 1

    def connect_domain_event_deregister(self, client: "Client") -> int:
        _bus(client).deregister_legacy(client, "domain", P.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
        return 1

    def connect_domain_event_register_any(self, client: "Client", event_id: int) -> None:
        _bus(client).register(client, "domain", event_id, legacy=True)

    def connect_domain_event_deregister_any(self, client: "Client", event_id: int) -> None:
        if not _bus(client).deregister_legacy(client, "domain", event_id):
            raise internal_error(f"domain event {event_id} not registered")

    def connect_domain_event_callback_register_any(self, client: "Client", event_id: int,
                                                   dom: Any) -> int:
        return _bus(client).register(client, "domain", event_id, dom)

    def connect_domain_event_callback_deregister_any(self, client: "Client", callback_id: int) -> None:
        self._deregister(client, "domain", callback_id)

    # ------------------------------------------------------ other object events
    def connect_network_event_register_any(self, client: "Client", event_id: int, net: Any) -> int:
        return _bus(client).register(client, "network", event_id, net)

    def connect_network_event_deregister_any(self, client: "Client", callback_id: int) -> None:
        self._deregister(client, "network", callback_id)

    def connect_storage_pool_event_register_any(self, client: "Client", event_id: int, pool: Any) -> int:
        return _bus(client).register(client, "storage", event_id, pool)

    def connect_storage_pool_event_deregister_any(self, client: "Client", callback_id: int) -> None:
        self._deregister(client, "storage", callback_id)

    def connect_node_device_event_register_any(self, client: "Client", event_id: int, dev: Any) -> int:
        return _bus(client).register(client, "nodeDevice", event_id, dev)

    def connect_node_device_event_deregister_any(self, client: "Client", callback_id: int) -> None:
        self._deregister(client, "nodeDevice", callback_id)

    def connect_secret_event_register_any(self, client: "Client", event_id: int, secret: Any) -> int:
        return _bus(client).register(client, "secret", event_id, secret)

    def connect_secret_event_deregister_any(self, client: "Client", callback_id: int) -> None:
        self._deregister(client, "secret", callback_id)

    @staticmethod
    def _deregister(client: "Client", kind: str, callback_id: int) -> None:
        if not _bus(client).deregister(client, kind, callback_id):
            noun = {"nodeDevice": "node device", "storage": "storage pool"}.get(kind, kind)
            raise internal_error(f"{noun} event callback {callback_id} not registered")
