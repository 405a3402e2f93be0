"""The daemon's TLS server context: certificates, client verification, DN allow-list.

One `TlsServer` per daemon; ``reload()`` (on SIGHUP) builds a new
`ssl.SSLContext` from the files, and only connections accepted afterwards use
it, as with libvirtd. A reload that fails keeps the old context.

Before the files are used, `sanity_check` refuses server and CA certificates
that no client could accept (expired, not yet valid, not issued by the CA, a
CA that is not one), so the mistake shows at start rather than as a failed
handshake in every client; ``tls_no_sanity_certificate`` skips it.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from pyvirtd.certs import PkiFiles, libvirt_dn, server_files
from pyvirtd.errors import ChannelError
from pyvirtd.paths import Paths
from pyvirtd.transport import TlsChannel

log = logging.getLogger(__name__)


class TlsServer:
    def __init__(self, config, paths: Paths) -> None:
        self.paths = paths
        self.context: ssl.SSLContext | None = None
        self.files: PkiFiles | None = None
        self.error = ""
        self.reload(config)
        if self.context is None:
            raise ValueError(self.error)

    def reload(self, config) -> bool:
        """(Re)read the certificates; returns False (keeping the old ones) on error."""
        files = server_files(config, self.paths)
        try:
            if not config.tls_no_sanity_certificate:
                sanity_check(files.cert, files.ca)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            # No session tickets, as libvirtd (GnuTLS without a ticket key): a
            # TLS 1.3 ticket arriving alone makes the libvirt client's 1-byte
            # confirmation read fail with EAGAIN.
            ctx.num_tickets = 0
            ctx.options |= ssl.OP_NO_TICKET
            ctx.load_cert_chain(files.cert, files.key)
            if config.tls_no_verify_certificate:
                ctx.verify_mode = ssl.CERT_NONE   # libvirtd then asks for no client cert
            else:
                ctx.load_verify_locations(cafile=str(files.ca))
                ctx.verify_mode = ssl.CERT_REQUIRED
                if files.crl is not None:
                    ctx.load_verify_locations(cafile=str(files.crl))
                    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.error = (f"cannot load TLS certificates ({files.cert}, {files.key}, "
                          f"{files.ca}): {exc}")
            log.error("%s", self.error)
            return False
        if config.tls_priority:
            # a GnuTLS priority string ("NORMAL:-VERS-TLS1.0"): OpenSSL has no
            # equivalent syntax, so Python's defaults (TLS 1.2+) stay in force
            log.warning("tls_priority %r is GnuTLS syntax and is not applied", config.tls_priority)
        self.context, self.files = ctx, files
        self.no_verify = config.tls_no_verify_certificate
        self.allowed_dns = config.tls_allowed_dn_list
        return True

    def channel(self, sock: socket.socket) -> TlsChannel:
        assert self.context is not None
        return TlsChannel(sock, self.context, self.check)

    def check(self, _cert: dict | None, der: bytes | None) -> None:
        """After the handshake: libvirt's virNetServerClientCheckAccess."""
        if self.no_verify:
            return
        if der is None:   # CERT_REQUIRED makes this unreachable; belt and braces
            raise ChannelError("no client certificate")
        if self.allowed_dns is None:
            return
        dn = libvirt_dn(x509.load_der_x509_certificate(der).subject)
        if not any(fnmatch.fnmatchcase(dn, pattern) for pattern in self.allowed_dns):
            # libvirtd's wording (virNetTLSContextCheckCertDNACL)
            raise ChannelError(f"Client's x509 Distinguished Name is not on the list "
                               f"of allowed clients (tls_allowed_dn_list): {dn}")


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sanity_check(cert_path: Path, ca_path: Path) -> None:
    """Refuse a server certificate no libvirt client would accept (virNetTLSContextSanityCheckCert).

    Raises:
      ValueError: the reason, naming the file.
      OSError: a file cannot be read.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    cert, ca = _load(cert_path), _load(ca_path)
    for what, c, path in (("server", cert, cert_path), ("CA", ca, ca_path)):
        if c.not_valid_after_utc < now:
            raise ValueError(f"the {what} certificate {path} has expired")
        if c.not_valid_before_utc > now:
            raise ValueError(f"the {what} certificate {path} is not yet active")
    if not _is_ca(ca):
        raise ValueError(f"the CA certificate {ca_path} is not a CA (basic constraints)")
    if _is_ca(cert):
        raise ValueError(f"the server certificate {cert_path} is a CA, not a server certificate")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise ValueError(f"the server certificate {cert_path} is not for TLS servers "
                         "(its extended key usage lacks serverAuth)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(f"the server certificate {cert_path} is not issued by the CA "
                         f"certificate {ca_path}") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
