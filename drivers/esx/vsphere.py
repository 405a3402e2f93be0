"""One vSphere session (pyvmomi) driven from trio: login, calls in a worker thread, faults.

pyvmomi is synchronous (SOAP over HTTP), so every call that talks to the
host runs in a worker thread through `Session.call`; one connection's calls
go one at a time (a per-session limiter of 1), which is what a SOAP session
expects, while other connections' calls run beside them.  Every socket
operation has a timeout (CALL_TIMEOUT): a host that stops answering ends the
call with an error instead of holding the client forever.

Faults become `VirError` in one place, `vir_error`, with the fault's own
text, as libvirt's ESX driver reports the host's message.

Credentials come from the endpoint's file (pyvirtd.config.EsxEndpoint) and
are never logged nor kept after login.
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import trio
import yaml
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from pyvirtd.config import EsxEndpoint
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

_FROM = P.VIR_FROM_ESX
T = TypeVar("T")

# Seconds a single SOAP request may take before the host counts as unreachable:
# long enough for a slow vCenter's inventory, short enough that a vanished
# host gives the client an error rather than a hang.
CALL_TIMEOUT = 60


# vSphere fault class -> libvirt error code (the fault's text is the message).
_FAULT_CODES: tuple[tuple[type, int], ...] = (
    (vim.fault.InvalidLogin, P.VIR_ERR_AUTH_FAILED),
    (vim.fault.NotAuthenticated, P.VIR_ERR_AUTH_FAILED),
    (vim.fault.NoPermission, P.VIR_ERR_OPERATION_DENIED),
    (vmodl.fault.ManagedObjectNotFound, P.VIR_ERR_NO_DOMAIN),
    (vim.fault.InvalidPowerState, P.VIR_ERR_OPERATION_INVALID),
    (vim.fault.InvalidState, P.VIR_ERR_OPERATION_INVALID),
    (vim.fault.ToolsUnavailable, P.VIR_ERR_OPERATION_INVALID),
    (vmodl.fault.NotSupported, P.VIR_ERR_NO_SUPPORT),
    (vmodl.fault.MethodNotFound, P.VIR_ERR_NO_SUPPORT),
    (vim.fault.MethodDisabled, P.VIR_ERR_OPERATION_DENIED),
    (vmodl.fault.InvalidArgument, P.VIR_ERR_INVALID_ARG),
)


def vir_error(exc: BaseException, what: str) -> VirError:
    """A vSphere fault or a transport failure as libvirt's error, with the host's text."""
    if isinstance(exc, VirError):
        return exc
    if isinstance(exc, vmodl.MethodFault):
        text = exc.msg or type(exc).__name__.rsplit(".", 1)[-1]
        for cls, code in _FAULT_CODES:
            if isinstance(exc, cls):
                return VirError(code, text, domain=_FROM)
        return VirError(P.VIR_ERR_OPERATION_FAILED, f"{what}: {text}", domain=_FROM)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return VirError(P.VIR_ERR_AUTH_FAILED,
                        f"{what}: the host's TLS certificate does not verify: "
                        f"{exc.verify_message}", domain=_FROM)
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return VirError(P.VIR_ERR_OPERATION_FAILED,
                        f"{what}: cannot reach the vSphere host: {exc or type(exc).__name__}",
                        domain=_FROM)
    return VirError(P.VIR_ERR_INTERNAL_ERROR, f"{what}: {type(exc).__name__}: {exc}",
                    domain=_FROM)


def read_credentials(path: str) -> tuple[str, str]:
    """(username, password) from a YAML file only its owner can read (mode 0600 or stricter).

    Runs in a worker thread (file I/O).  The error names the file, never its content.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise VirError(P.VIR_ERR_AUTH_FAILED, f"cannot read credentials file {path}: "
                       f"{exc.strerror}", domain=_FROM) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.geteuid():
            raise VirError(P.VIR_ERR_AUTH_FAILED,
                           f"credentials file {path} must be owned by the daemon's user "
                           f"and have mode 0600", domain=_FROM)
        try:
            data = yaml.safe_load(f.read())
        except yaml.YAMLError:
            data = None
    if not (isinstance(data, dict) and isinstance(data.get("username"), str)
            and isinstance(data.get("password"), str)):
        raise VirError(P.VIR_ERR_AUTH_FAILED, f"credentials file {path} must be YAML with "
                       "'username' and 'password' strings", domain=_FROM)
    return data["username"], data["password"]


def _ssl_context(ep: EsxEndpoint) -> ssl.SSLContext:
    if ep.insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ep.ca_file)


@dataclass(eq=False)
class Session:
    """A logged-in vSphere session; `open` makes one, `close` logs out."""
    endpoint: EsxEndpoint
    si: Any                      # vim.ServiceInstance
    content: Any                 # vim.ServiceContent, read once at login
    limiter: trio.CapacityLimiter

    @classmethod
    async def open(cls, ep: EsxEndpoint) -> Session:
        """Log in to ``ep`` with its credentials file.  Raises VirError."""
        user, password = await trio.to_thread.run_sync(read_credentials, ep.credentials_file)

        def login() -> tuple[Any, Any]:
            si = SmartConnect(host=ep.host, port=ep.port, user=user, pwd=password,
                              sslContext=_ssl_context(ep), httpConnectionTimeout=CALL_TIMEOUT)
            return si, si.RetrieveContent()

        try:
            si, content = await trio.to_thread.run_sync(login, abandon_on_cancel=True)
        except (Exception, socket.timeout) as exc:
            err = vir_error(exc, f"cannot log in to vSphere endpoint '{ep.name}'")
            log.warning("ESX endpoint %s (%s:%d): %s", ep.name, ep.host, ep.port, err.message)
            raise err from None
        return cls(ep, si, content, trio.CapacityLimiter(1))

    async def call(self, fn: Callable[..., T], *args: Any, what: str = "vSphere call") -> T:
        """``fn(*args)`` in a worker thread, this session's calls one at a time;
        faults and transport failures raise VirError."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except VirError:
            raise
        except Exception as exc:
            raise vir_error(exc, what) from None

    def logout_sync(self) -> None:
        """Log out (blocking: run in a thread).  A host already gone is not an error."""
        try:
            Disconnect(self.si)
        except Exception as exc:
            log.debug("ESX endpoint %s: logout failed: %s", self.endpoint.name, exc)
