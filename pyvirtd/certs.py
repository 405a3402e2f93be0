"""x509 files for TLS: where libvirt keeps them, and ``pyvirtd cert`` to make them.

``pyvirtd cert --dir DIR --hostname NAME...`` writes a CA and, signed by it, a
server and a client certificate under the names libvirt clients look for with
``?pkipath=DIR`` (src/rpc/virnettlscontext.c): cacert.pem, servercert.pem,
serverkey.pem, clientcert.pem, clientkey.pem (plus cakey.pem, so later runs
sign new certificates with the same CA). Without ``--dir`` the files go to the
system paths libvirtd and virsh use (/etc/pki/CA, /etc/pki/libvirt,
/etc/pki/libvirt/private).

The extensions are the ones libvirt's certificate sanity checks want
(virNetTLSContextCheckCert*): a CA with basicConstraints CA:TRUE and keyCertSign;
leaf certificates with CA:FALSE, digitalSignature + keyEncipherment, and the
TLS web server / client extended key usage. RSA 2048 keys, which every GnuTLS
accepts for both key usages.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pyvirtd.paths import Paths
from pyvirtd.files import write_atomic

SYSTEM_CA_DIR = Path("/etc/pki/CA")
SYSTEM_PKI_DIR = Path("/etc/pki/libvirt")

DEFAULT_DAYS = 3650
KEY_BITS = 2048


@dataclass(frozen=True)
class PkiFiles:
    """The files a TLS server (or client) uses."""
    ca: Path
    cert: Path
    key: Path
    crl: Path | None


def server_files(config, paths: Paths) -> PkiFiles:
    """The daemon's TLS files: the config's key_file etc., else libvirt's defaults.

    A system daemon uses libvirtd's paths, so an existing libvirt PKI works
    unchanged; session and ``--root`` daemons look in CONFIG_DIR/pki.
    """
    if paths == Paths.system():
        ca, cert, key = (SYSTEM_CA_DIR / "cacert.pem", SYSTEM_PKI_DIR / "servercert.pem",
                         SYSTEM_PKI_DIR / "private" / "serverkey.pem")
        crl = SYSTEM_CA_DIR / "cacrl.pem"
    else:
        base = paths.config_dir / "pki"
        ca, cert, key, crl = (base / "cacert.pem", base / "servercert.pem",
                              base / "serverkey.pem", base / "cacrl.pem")
    return PkiFiles(
        ca=Path(config.ca_file) if config.ca_file else ca,
        cert=Path(config.cert_file) if config.cert_file else cert,
        key=Path(config.key_file) if config.key_file else key,
        crl=Path(config.crl_file) if config.crl_file else (crl if crl.exists() else None),
    )


def _name(cn: str, org: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificate(subject: x509.Name, key, issuer: x509.Name, issuer_key, *,
                     ca: bool = False, server_names: list[str] | None = None,
                     client: bool = False, not_before: datetime.datetime | None = None,
                     days: int = DEFAULT_DAYS) -> x509.Certificate:
    """Build and sign one certificate (also used by tests for expired ones)."""
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return b.sign(issuer_key, hashes.SHA256())



@dataclass(frozen=True)
class Layout:
    """Where `generate` writes each file."""
    cacert: Path
    cakey: Path
    servercert: Path
    serverkey: Path
    clientcert: Path
    clientkey: Path

    @classmethod
    def in_dir(cls, d: Path) -> "Layout":
        return cls(d / "cacert.pem", d / "cakey.pem", d / "servercert.pem",
                   d / "serverkey.pem", d / "clientcert.pem", d / "clientkey.pem")

    @classmethod
    def system(cls) -> "Layout":
        return cls(SYSTEM_CA_DIR / "cacert.pem", SYSTEM_CA_DIR / "private" / "cakey.pem",
                   SYSTEM_PKI_DIR / "servercert.pem", SYSTEM_PKI_DIR / "private" / "serverkey.pem",
                   SYSTEM_PKI_DIR / "clientcert.pem", SYSTEM_PKI_DIR / "private" / "clientkey.pem")


def generate(layout: Layout, hostnames: list[str], *, org: str = "pyvirtd",
             client_cn: str = "pyvirtd-client", days: int = DEFAULT_DAYS) -> list[Path]:
    """Write CA (reused when both its files exist), server and client certificates.

    Returns the paths written. Private keys are mode 0600, certificates 0644.
    """
    written = []
    if layout.cacert.exists() and layout.cakey.exists():
        ca_cert = x509.load_pem_x509_certificate(layout.cacert.read_bytes())
        ca_key = serialization.load_pem_private_key(layout.cakey.read_bytes(), None)
    else:
        ca_key = _new_key()
        ca_name = _name(f"{org} CA", org)
        ca_cert = make_certificate(ca_name, ca_key, ca_name, ca_key, ca=True, days=days)
        write_atomic(layout.cakey, _key_pem(ca_key), 0o600)
        write_atomic(layout.cacert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written += [layout.cacert, layout.cakey]
    server_key = _new_key()
    server = make_certificate(_name(hostnames[0], org), server_key, ca_cert.subject, ca_key,
                              server_names=hostnames, days=days)
    client_key = _new_key()
    client = make_certificate(_name(client_cn, org), client_key, ca_cert.subject, ca_key,
                              client=True, days=days)
    write_atomic(layout.serverkey, _key_pem(server_key), 0o600)
    write_atomic(layout.servercert, server.public_bytes(serialization.Encoding.PEM), 0o644)
    write_atomic(layout.clientkey, _key_pem(client_key), 0o600)
    write_atomic(layout.clientcert, client.public_bytes(serialization.Encoding.PEM), 0o644)
    return written + [layout.servercert, layout.serverkey, layout.clientcert, layout.clientkey]


def libvirt_dn(name: x509.Name) -> str:
    """A subject in GnuTLS's order and syntax, as tls_allowed_dn_list patterns use it.

    libvirt matches ``gnutls_x509_crt_get_dn()`` output, which lists the RDNs
    in certificate order ("C=GB,ST=London,O=Red Hat,CN=client"), whereas
    RFC 4514 strings (cryptography's ``Name.rfc4514_string``) reverse them.
    """
    return ",".join(rdn.rfc4514_string() for rdn in name.rdns)
