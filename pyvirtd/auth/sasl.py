"""SASL for the remote program: SCRAM-SHA-256 and GSSAPI, and GSSAPI's security layer.

libvirt clients use Cyrus SASL (libsasl2); the daemon side is written here,
sans-IO, one object per mechanism with ``step(data) -> (complete, data)``:

- SCRAM-SHA-256 (RFC 7677, through ``scramp``) against users in a credential
  file that ``pyvirtd sasl-user`` manages (salted keys, never passwords). It
  has no security layer, so it is offered only where the channel is already
  secure: unix sockets and TLS (libvirt clients refuse it on plain TCP).
- GSSAPI (RFC 4752, through ``gssapi``) with the service keys from a keytab:
  ``$KRB5_KTNAME`` if set, else CONFIG_DIR/krb5.tab (libvirt's
  /etc/libvirt/krb5.tab), else the system keytab. On plain TCP it must
  negotiate confidentiality of at least ``tcp_min_ssf`` bits (the security
  strength factor: the session key's size, 56 by default as libvirtd), and
  from the reply to the final step on every byte travels wrapped
  (`SaslChannel`).

The flow (libvirt-rpc.md §10): AUTH_SASL_INIT lists mechanisms,
AUTH_SASL_START picks one with the first client data, AUTH_SASL_STEP goes on
until complete; the identity is then checked against
``sasl_allowed_username_list`` (fnmatch patterns, as libvirt).
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

from pyvirtd.errors import ChannelError, VirError
from pyvirtd.files import write_atomic
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

CREDENTIAL_FILE = "sasl-users.json"
SCRAM = "SCRAM-SHA-256"
GSSAPI = "GSSAPI"
SCRAM_ITERATIONS = 4096
# RFC 4752 security layers (first byte of the wrapped negotiation message)
LAYER_NONE, LAYER_INTEGRITY, LAYER_CONFIDENTIALITY = 1, 2, 4
# The largest wrapped token we accept from a client, and the plaintext size we
# tell it we take (Cyrus' default maxbuf).
MAX_BUFFER = 65536
MAX_TOKEN = 4 * MAX_BUFFER
# GSS_C_SEC_CONTEXT_SASL_SSF (MIT krb5): the context's SSF, i.e. its key size
# in bits, which Cyrus' GSSAPI plugin reports too. Where a GSSAPI library
# cannot tell, Cyrus assumes 56 (single DES, its K5_MAX_SSF), and so do we.
SASL_SSF_OID = "1.2.840.113554.1.2.2.5.15"
FALLBACK_SSF = 56


def auth_failed(detail: str = "") -> VirError:
    # libvirtd's words (remoteDispatchAuthSasl*: "authentication failed"); the
    # client prefixes VIR_ERR_AUTH_FAILED messages with "authentication failed: "
    return VirError(P.VIR_ERR_AUTH_FAILED, detail or "authentication failed",
                    domain=P.VIR_FROM_REMOTE)


def credential_file(paths: Paths) -> Path:
    return paths.config_dir / CREDENTIAL_FILE


# ------------------------------------------------------------------ SCRAM users
class ScramUsers:
    """The SCRAM credential file: name -> salt, stored key, server key, iterations.

    Written atomically with mode 0600; read again at every login, so
    ``pyvirtd sasl-user`` changes apply without a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, users: dict) -> None:
        write_atomic(self.path, json.dumps(users, indent=1, sort_keys=True))

    def names(self) -> list[str]:
        return sorted(self._load())

    def add(self, name: str, password: str) -> None:
        from scramp import ScramMechanism
        salt, stored, server, iterations = ScramMechanism(SCRAM).make_auth_info(
            password, iteration_count=SCRAM_ITERATIONS)
        users = self._load()
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        users[name] = {"salt": b64(salt), "stored_key": b64(stored),
                       "server_key": b64(server), "iterations": iterations}
        self._save(users)

    def remove(self, name: str) -> bool:
        users = self._load()
        if users.pop(name, None) is None:
            return False
        self._save(users)
        return True

    def auth_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        entry = self._load()[name]      # KeyError: unknown user
        d = base64.b64decode
        return d(entry["salt"]), d(entry["stored_key"]), d(entry["server_key"]), entry["iterations"]


# ------------------------------------------------------------------ mechanisms
class ScramMech:
    """Server side of SCRAM-SHA-256: client-first, server-first, client-final, server-final."""

    name = SCRAM
    layer = None

    def __init__(self, users: ScramUsers) -> None:
        from scramp import ScramMechanism
        self.users = users
        self._stage = 0
        self.username = ""
        self._server = ScramMechanism(SCRAM).make_server(self._auth_info)

    def _auth_info(self, name: str) -> tuple[bytes, bytes, bytes, int]:
        self.username = name
        return self.users.auth_info(name)

    def step(self, data: bytes | None) -> tuple[bool, bytes | None]:
        from scramp import ScramException
        text = (data or b"").decode("utf-8", "replace")
        try:
            if self._stage == 0:
                self._stage = 1
                self._server.set_client_first(text)
                return False, self._server.get_server_first().encode()
            if self._stage == 1:
                self._stage = 2
                self._server.set_client_final(text)
                return True, self._server.get_server_final().encode()
        except KeyError:
            raise auth_failed() from None      # unknown user: same answer as a bad password
        except ScramException as exc:
            log.info("SCRAM: %s", exc)
            raise auth_failed() from None
        raise auth_failed("unexpected SASL step")


class GssapiMech:
    """Server side of GSSAPI (RFC 4752): context tokens, then the layer negotiation."""

    name = GSSAPI

    def __init__(self, keytab: str | None, layers: int, min_ssf: int = 0) -> None:
        import gssapi
        store = {"keytab": keytab} if keytab else None
        creds = gssapi.Credentials(usage="accept", store=store)
        self._ctx = gssapi.SecurityContext(creds=creds, usage="accept")
        self._layers = layers          # what this channel may use (bitmask)
        self._min_ssf = min_ssf        # tcp_min_ssf on plain TCP, else 0
        self.ssf = 0                   # of the layer the client chose
        self._state = "context"
        self.username = ""
        self.layer: tuple[Any, int] | None = None   # (context, client max buffer)

    def step(self, data: bytes | None) -> tuple[bool, bytes | None]:
        import gssapi.exceptions as gexc
        try:
            if self._state == "context":
                out = self._ctx.step(data or b"")
                if not self._ctx.complete:
                    return False, out or b""
                self.username = str(self._ctx.initiator_name)
                if out:        # the last context token first; the client answers empty
                    self._state = "token-sent"
                    return False, out
                return self._offer()
            if self._state == "token-sent":
                return self._offer()
            if self._state == "offered":
                return self._accept_choice(data or b"")
        except (gexc.GSSError, ValueError) as exc:
            log.info("GSSAPI: %s", exc)
            raise auth_failed() from None
        raise auth_failed("unexpected SASL step")

    def _context_ssf(self) -> int:
        """The key strength of the established context (GSS_C_SEC_CONTEXT_SASL_SSF)."""
        import gssapi.raw as graw
        try:
            oid = graw.OID.from_int_seq(SASL_SSF_OID)
            data = graw.inquire_sec_context_by_oid(self._ctx, oid)
            return int.from_bytes(data[0][:4], "big")
        except (graw.GSSError, IndexError, AttributeError):
            return FALLBACK_SSF

    def _offer(self) -> tuple[bool, bytes]:
        # only a layer as strong as tcp_min_ssf may be offered: with none left
        # the exchange fails, as Cyrus SASL does under libvirtd's min_ssf
        if self._min_ssf:
            ssf = self._context_ssf() if self._layers & LAYER_CONFIDENTIALITY else 0
            if ssf < self._min_ssf:
                log.warning("GSSAPI: negotiated SSF %d was not strong enough "
                            "(tcp_min_ssf is %d)", ssf, self._min_ssf)
                raise auth_failed()
        self._state = "offered"
        offer = bytes([self._layers]) + MAX_BUFFER.to_bytes(3, "big")
        return False, self._ctx.wrap(offer, False).message

    def _accept_choice(self, data: bytes) -> tuple[bool, bytes | None]:
        message = self._ctx.unwrap(data).message
        if len(message) < 4:
            raise auth_failed("short GSSAPI security layer message")
        chosen = message[0]
        if chosen not in (LAYER_NONE, LAYER_INTEGRITY, LAYER_CONFIDENTIALITY) \
                or not chosen & self._layers:
            raise auth_failed(f"security layer {chosen} was not offered")
        authzid = message[4:].decode("utf-8", "replace")
        if authzid and authzid not in (self.username, self.username.split("@")[0]):
            raise auth_failed(f"{self.username} may not act as {authzid}")
        if chosen != LAYER_NONE:
            maxbuf = int.from_bytes(message[1:4], "big") or MAX_BUFFER
            self.layer = (self._ctx, chosen == LAYER_CONFIDENTIALITY, maxbuf)
        self.ssf = {LAYER_CONFIDENTIALITY: self._context_ssf(), LAYER_INTEGRITY: 1}.get(chosen, 0)
        if self.ssf < self._min_ssf:     # unreachable while only confidentiality is offered
            raise auth_failed(f"negotiated SSF {self.ssf} was not strong enough")
        self._state = "done"
        return True, None


# ------------------------------------------------------------------ session
SYSTEM_KEYTAB = Path("/etc/krb5.keytab")


def _keytab(paths: Paths) -> str | None:
    """The keytab GSSAPI accepts with: $KRB5_KTNAME, CONFIG_DIR/krb5.tab, or the system's."""
    env = os.environ.get("KRB5_KTNAME")
    if env:
        return env
    local = paths.config_dir / "krb5.tab"
    return str(local) if local.exists() else None


def _gssapi_available(paths: Paths) -> bool:
    """GSSAPI is offered only with a keytab to accept with (else Cyrus clients,
    which prefer it, would pick it and fail instead of using SCRAM)."""
    keytab = _keytab(paths)
    path = Path(keytab.split(":", 1)[-1]) if keytab else SYSTEM_KEYTAB
    if not path.exists():
        return False
    try:
        import gssapi  # noqa: F401
        return True
    except ImportError:
        return False


def mechanisms(client: Any) -> list[str]:
    """What AUTH_SASL_INIT offers this client.

    On plain TCP only mechanisms with a security layer qualify (libvirt's
    minimum SSF of 56), i.e. GSSAPI; SCRAM needs TLS or a unix socket under it.
    """
    from pyvirtd.client import TRANSPORT_TCP
    daemon = client.daemon
    mechs = []
    if _gssapi_available(daemon.paths):
        mechs.append(GSSAPI)
    if client.transport != TRANSPORT_TCP and ScramUsers(credential_file(daemon.paths)).names():
        mechs.append(SCRAM)
    return mechs


class SaslSession:
    """The SASL state of one client between AUTH_SASL_INIT and completion."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.offered = mechanisms(client)
        self.mech: Any = None

    def start(self, name: str, data: bytes | None) -> tuple[bool, bytes | None]:
        from pyvirtd.client import TRANSPORT_TCP
        if name not in self.offered:
            raise auth_failed(f"unsupported mechanism {name}")
        paths = self.client.daemon.paths
        if name == SCRAM:
            self.mech = ScramMech(ScramUsers(credential_file(paths)))
        else:
            # plain TCP must be encrypted; elsewhere the channel is already secure
            tcp = self.client.transport == TRANSPORT_TCP
            layers = LAYER_CONFIDENTIALITY if tcp else LAYER_NONE
            min_ssf = self.client.daemon.config.tcp_min_ssf if tcp else 0
            try:
                self.mech = GssapiMech(_keytab(paths), layers, min_ssf)
            except Exception as exc:   # no keytab, no service key...
                log.warning("GSSAPI: cannot accept: %s", exc)
                raise auth_failed("GSSAPI is not available") from None
        return self.mech.step(data)

    def step(self, data: bytes | None) -> tuple[bool, bytes | None]:
        if self.mech is None:
            raise auth_failed("SASL step before start")
        return self.mech.step(data)

    def check_identity(self, allowed: tuple[str, ...] | None) -> str:
        name = self.mech.username
        if allowed is not None and not any(fnmatch.fnmatchcase(name, p) for p in allowed):
            log.warning("SASL client %s is not on sasl_allowed_username_list", name)
            # libvirtd: "Client's username is not on the list of allowed clients"
            raise auth_failed("Client's username is not on the list of allowed clients")
        return name


# ------------------------------------------------------------ security layer
class SaslChannel:
    """The GSSAPI security layer over another channel (libvirt-rpc.md §10).

    Each direction is a sequence of 4-byte big-endian lengths, each followed
    by one wrapped token (what Cyrus' sasl_encode/sasl_decode produce).
    ``preamble`` is sent first as it is: the clear reply to the final step.
    """

    kind = "sasl"

    def __init__(self, inner: Any, ctx: Any, encrypt: bool, peer_maxbuf: int,
                 preamble: bytes = b"") -> None:
        self.inner = inner
        self.sock = inner.sock
        self._ctx = ctx
        self._encrypt = encrypt
        # the plaintext per token that keeps each token within the client's buffer
        self._chunk = max(1, min(ctx.get_wrap_size_limit(peer_maxbuf, encrypt), 1 << 20))
        self._out = bytearray(preamble)
        self._raw = bytearray()
        self._plain = bytearray()
        self._eof = False

    @property
    def buffered(self) -> bool:
        return bool(self._out)

    async def start(self) -> None:
        pass

    def flush(self) -> None:
        while self._out:
            n = self.inner.send(memoryview(self._out))
            del self._out[:n]

    def send(self, data: memoryview) -> int:
        if self._out:
            self.flush()                   # BlockingIOError while the socket is full
        chunk = bytes(data[:self._chunk])
        token = self._ctx.wrap(chunk, self._encrypt).message
        self._out += struct.pack(">I", len(token)) + token
        try:
            self.flush()
        except BlockingIOError:
            pass
        return len(chunk)

    def recv(self, n: int) -> bytes:
        while not self._plain:
            if self._eof:
                return b""
            self._decode(ChannelError)
            if self._plain:
                break
            data = self.inner.recv(MAX_TOKEN)      # BlockingIOError: nothing decodable yet
            if not data:
                self._eof = True
                continue
            self._raw += data
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    def _decode(self, error: type[Exception]) -> None:
        raw = self._raw
        while len(raw) >= 4:
            size = struct.unpack_from(">I", raw)[0]
            if size > MAX_TOKEN:
                raise error(f"SASL token of {size} bytes exceeds {MAX_TOKEN}")
            if len(raw) < 4 + size:
                return
            token = bytes(raw[4:4 + size])
            del raw[:4 + size]
            try:
                self._plain += self._ctx.unwrap(token).message
            except Exception as exc:
                raise error(f"SASL: cannot decode: {exc}") from None

    def close(self) -> None:
        self.inner.close()
