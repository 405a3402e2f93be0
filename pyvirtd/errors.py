"""pyvirtd's error tree.

    Exception
     ├── VirError            an operation failed; the client gets a remote_error
     │                       reply with libvirt's code, domain and message
     └── PeerError           the peer is at fault: its connection ends, logged,
           │                 and nobody else is affected (the one class a
           │                 connection loop catches for this)
           ├── ProtocolError     it broke the wire protocol (a frame that cannot
           │                     be parsed)
           └── ChannelError      its channel cannot go on (pyvirtd.transport: a
                                 failed TLS handshake, a refused certificate,
                                 bad SASL layer data)

(XdrError, from pyvirtd.rpc.xdr, is not a PeerError: a call body that does
not decode is answered with VIR_ERR_RPC and the connection goes on.)

Clients branch on the numeric code (nova checks NO_DOMAIN, NO_SECRET and
NO_SUPPORT), so the codes and the message prefixes are libvirt's own.
"""

from __future__ import annotations

from pyvirtd.rpc import _generated as P

# Message prefix per error code, as libvirt words them (virErrorMsg); a detail
# follows after ": ".  A code missing here sends the detail alone.
_PREFIXES = {
    P.VIR_ERR_INTERNAL_ERROR: "internal error",
    P.VIR_ERR_NO_SUPPORT: "this function is not supported by the connection driver",
    P.VIR_ERR_INVALID_ARG: "invalid argument",
    P.VIR_ERR_OPERATION_FAILED: "operation failed",
    P.VIR_ERR_XML_ERROR: "XML error",
    P.VIR_ERR_XML_INVALID_SCHEMA: "XML document failed to validate against schema",
    P.VIR_ERR_OPERATION_DENIED: "operation forbidden",
    P.VIR_ERR_NO_DOMAIN: "Domain not found",
    P.VIR_ERR_NO_NETWORK: "Network not found",
    P.VIR_ERR_NO_STORAGE_POOL: "Storage pool not found",
    P.VIR_ERR_NO_STORAGE_VOL: "Storage volume not found",
    P.VIR_ERR_NO_NODE_DEVICE: "Node device not found",
    P.VIR_ERR_NO_INTERFACE: "Interface not found",
    P.VIR_ERR_NO_SECRET: "Secret not found",
    P.VIR_ERR_INVALID_SECRET: "Invalid secret",
    P.VIR_ERR_NO_DOMAIN_SNAPSHOT: "Domain snapshot not found",
    P.VIR_ERR_NO_DOMAIN_METADATA: "metadata not found",
    P.VIR_ERR_NO_NETWORK_PORT: "network port not found",
    P.VIR_ERR_NO_NWFILTER: "Network filter not found",
    P.VIR_ERR_OPERATION_INVALID: "Requested operation is not valid",
    P.VIR_ERR_CONFIG_UNSUPPORTED: "unsupported configuration",
    P.VIR_ERR_ARGUMENT_UNSUPPORTED: "argument unsupported",
    P.VIR_ERR_OPERATION_UNSUPPORTED: "Operation not supported",
    P.VIR_ERR_AUTH_FAILED: "authentication failed",
    P.VIR_ERR_NO_SERVER: "Server not found",
    P.VIR_ERR_NO_CLIENT: "Client not found",
    P.VIR_ERR_STORAGE_POOL_BUILT: "Storage pool already built",
    P.VIR_ERR_INVALID_MAC: "invalid MAC address",
    P.VIR_ERR_CPU_INCOMPATIBLE: "the CPU is incompatible with host CPU",
    P.VIR_ERR_OPERATION_TIMEOUT: "Timed out during operation",
    P.VIR_ERR_OPERATION_ABORTED: "operation aborted",
    P.VIR_ERR_BLOCK_COPY_ACTIVE: "block copy still active",
    P.VIR_ERR_OVERFLOW: "numerical overflow",
    P.VIR_ERR_AGENT_UNRESPONSIVE: "Guest agent is not responding",
}


class VirError(Exception):
    """A failed operation, reported to the client as libvirt would report it.

    ``detail`` is the variable part ("no domain with matching name 'x'"); the
    full message gets the code's standard prefix, exactly as virsh prints it.
    """

    def __init__(self, code: int, detail: str | None = None, *,
                 domain: int = P.VIR_FROM_NONE, message: str | None = None) -> None:
        self.code = code
        self.domain = domain
        self.detail = detail
        prefix = _PREFIXES.get(code)
        if message is None:
            if prefix and detail:
                message = f"{prefix}: {detail}"
            else:
                message = detail or prefix or "unknown error"
        self.message = message
        # str1 carries the format libvirt used, as libvirtd sends it (trace, §4).
        self.str1 = f"{prefix}: %s" if prefix and detail else (prefix or message)
        super().__init__(message)

    def remote_error(self) -> tuple:
        """The remote_error body: code, domain, message, level, dom, str1..3, int1, int2, net."""
        return (self.code, self.domain, self.message, P.VIR_ERR_ERROR, None,
                self.str1, self.detail, None, -1, -1, None)


class PeerError(Exception):
    """The peer is at fault; its connection ends and nobody else is affected."""


class ProtocolError(PeerError):
    """The peer sent something that is not the libvirt protocol; drop that connection."""


class ChannelError(PeerError):
    """The channel cannot go on (failed handshake, refused peer, bad layer data)."""


# Helpers for the errors every driver raises, so their wording stays in one place.

def no_support(what: str) -> VirError:
    return VirError(P.VIR_ERR_NO_SUPPORT, what)


def invalid_arg(detail: str, domain: int = P.VIR_FROM_NONE) -> VirError:
    return VirError(P.VIR_ERR_INVALID_ARG, detail, domain=domain)


def operation_invalid(detail: str, domain: int = P.VIR_FROM_NONE) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_INVALID, detail, domain=domain)


def operation_failed(detail: str, domain: int = P.VIR_FROM_NONE) -> VirError:
    return VirError(P.VIR_ERR_OPERATION_FAILED, detail, domain=domain)


def internal_error(detail: str, domain: int = P.VIR_FROM_NONE) -> VirError:
    return VirError(P.VIR_ERR_INTERNAL_ERROR, detail, domain=domain)


def rpc_error(detail: str) -> VirError:
    return VirError(P.VIR_ERR_RPC, detail, domain=P.VIR_FROM_RPC)


def unsupported_flags(flags: int, function: str, domain: int) -> VirError:
    """libvirt's virCheckFlags refusal: the message has no per-code prefix.

    ``flags`` are the offending bits only; ``function`` is the driver function
    libvirt would name (testDomainGetXMLDesc, virStorageVolDefParseXML, ...).
    """
    return VirError(P.VIR_ERR_INVALID_ARG, domain=domain,
                    message=f"unsupported flags (0x{flags:x}) in function {function}")


def check_flags(flags: int, allowed: int, function: str, domain: int) -> None:
    """virCheckFlags: refuse any flag outside ``allowed``, in the caller's error domain.

    ``allowed`` is usually a generated ``IntFlag``; its ``~`` keeps only the
    class's own bits, so the complement is taken on plain ints.
    """
    unknown = int(flags) & ~int(allowed)
    if unknown:
        raise unsupported_flags(unknown, function, domain)
