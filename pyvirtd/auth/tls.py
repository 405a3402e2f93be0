"""The daemon's TLS server context: certificates, client verification, DN allow-list.

One `TlsServer` per daemon; ``reload()`` (on SIGHUP) builds a new
`ssl.SSLContext` from the files, and only connections accepted afterwards use
it, as with libvirtd. A reload that fails keeps the old context.
"""

from __future__ import annotations

import fnmatch
import logging
import socket
import ssl

from cryptography import x509

from pyvirtd.certs import PkiFiles, libvirt_dn, server_files
from pyvirtd.paths import Paths
from pyvirtd.transport import ChannelError, TlsChannel

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
