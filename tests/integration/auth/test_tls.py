"""virsh and python-libvirt over TLS, with certificates made by ``pyvirtd cert``.

The refusals are checked twice where the libvirt client would refuse on its
own (an expired certificate, none at all): once with virsh, and once with a
bare Python TLS client, which proves that the daemon itself refuses.
"""

from __future__ import annotations

import datetime
import shutil
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from auth_helpers import free_port, listening_daemon, run
from tests.conftest import stop_daemon

cryptography = pytest.importorskip("cryptography", reason="needs the cryptography package")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from pyvirtd import certs  # noqa: E402

PYVIRTD = [sys.executable, "-m", "pyvirtd.cli"]


def make_pki(d: Path) -> Path:
    r = run([*PYVIRTD, "cert", "--dir", str(d), "--hostname", "localhost", "127.0.0.1"])
    assert r.returncode == 0, r.stderr
    return d


def client_dir(base: Path, name: str, ca_dir: Path, cert: x509.Certificate, key) -> Path:
    """A pkipath with the real CA (to check the server) and the given client cert."""
    d = base / name
    d.mkdir()
    shutil.copy(ca_dir / "cacert.pem", d / "cacert.pem")
    (d / "clientcert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "clientkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return d


def load_ca(d: Path):
    return (x509.load_pem_x509_certificate((d / "cacert.pem").read_bytes()),
            serialization.load_pem_private_key((d / "cakey.pem").read_bytes(), None))


def raw_confirm(port: int, pki: Path, *, with_cert: bool = True) -> bytes | str:
    """Handshake like libvirt's client and read the confirmation byte (or the error)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "cacert.pem")
    if with_cert:
        ctx.load_cert_chain(pki / "clientcert.pem", pki / "clientkey.pem")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                return s.recv(1) or "refused: closed without the confirmation byte"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki") / "good")


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory, pki):
    root = tmp_path_factory.mktemp("tlsd")
    shutil.copytree(pki, root / "etc" / "pki")
    port = free_port()
    config = (f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n"
              "tls_allowed_dn_list: ['O=pyvirtd,CN=pyvirtd-client', 'O=pyvirtd,CN=ok-*']\n")
    d = listening_daemon(root, config, port)
    d.port = port
    yield d
    stop_daemon(d)


def uri(port: int, pki: Path) -> str:
    return f"test+tls://localhost:{port}/default?pkipath={pki}"


def test_cert_subcommand_files(pki: Path) -> None:
    for name in ("cacert.pem", "servercert.pem", "serverkey.pem", "clientcert.pem",
                 "clientkey.pem"):
        assert (pki / name).exists(), name
    assert (pki / "serverkey.pem").stat().st_mode & 0o777 == 0o600
    server = x509.load_pem_x509_certificate((pki / "servercert.pem").read_bytes())
    alt = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in alt.get_values_for_type(x509.DNSName)
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_virsh_over_tls(tls_daemon, pki: Path) -> None:
    r = run(["virsh", "-c", uri(tls_daemon.port, pki), "list --all; uri"])
    assert r.returncode == 0, r.stderr
    assert "test" in r.stdout and "running" in r.stdout


def test_python_libvirt_over_tls(tls_daemon, pki: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open(uri(tls_daemon.port, pki))
    try:
        assert [d.name() for d in conn.listAllDomains()] == ["test"]
        assert conn.getLibVersion() == 9_000_000
    finally:
        conn.close()


def test_confirmation_byte(tls_daemon, pki: Path) -> None:
    assert raw_confirm(tls_daemon.port, pki) == b"\x01"


def test_wrong_ca_refused(tls_daemon, pki: Path, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    ca, ca_key = load_ca(other)
    key = certs._new_key()
    cert = certs.make_certificate(certs._name("pyvirtd-client", "pyvirtd"), key, ca.subject,
                                  ca_key, client=True)
    d = client_dir(tmp_path, "wrongca", pki, cert, key)
    r = run(["virsh", "-c", uri(tls_daemon.port, d), "list"])
    assert r.returncode != 0
    assert isinstance(raw_confirm(tls_daemon.port, d), str)


def test_expired_cert_refused(tls_daemon, pki: Path, tmp_path: Path) -> None:
    ca, ca_key = load_ca(pki)
    key = certs._new_key()
    long_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=400)
    cert = certs.make_certificate(certs._name("pyvirtd-client", "pyvirtd"), key, ca.subject,
                                  ca_key, client=True, not_before=long_ago, days=30)
    d = client_dir(tmp_path, "expired", pki, cert, key)
    r = run(["virsh", "-c", uri(tls_daemon.port, d), "list"])
    assert r.returncode != 0
    assert "expired" in r.stderr.lower()          # libvirt's client refuses it first ...
    assert isinstance(raw_confirm(tls_daemon.port, d), str)   # ... and so does the daemon


def test_dn_allow_list(tls_daemon, pki: Path, tmp_path: Path) -> None:
    ca, ca_key = load_ca(pki)
    for cn, allowed in (("stranger", False), ("ok-alice", True)):
        key = certs._new_key()
        cert = certs.make_certificate(certs._name(cn, "pyvirtd"), key, ca.subject, ca_key,
                                      client=True)
        d = client_dir(tmp_path, cn, pki, cert, key)
        r = run(["virsh", "-c", uri(tls_daemon.port, d), "list --name"])
        assert (r.returncode == 0) == allowed, (cn, r.stderr)
        assert (raw_confirm(tls_daemon.port, d) == b"\x01") == allowed
    assert "not on the list of allowed clients" in tls_daemon.log()


def test_no_client_cert_refused(tls_daemon, pki: Path, tmp_path: Path) -> None:
    d = tmp_path / "nocert"
    d.mkdir()
    shutil.copy(pki / "cacert.pem", d / "cacert.pem")
    r = run(["virsh", "-c", uri(tls_daemon.port, d), "list"])
    assert r.returncode != 0
    assert isinstance(raw_confirm(tls_daemon.port, pki, with_cert=False), str)


def test_stalled_handshake_costs_only_its_slot(tls_daemon, pki: Path) -> None:
    stalled = [socket.create_connection(("127.0.0.1", tls_daemon.port)) for _ in range(3)]
    stalled[0].sendall(b"\x16\x03\x01")     # half a ClientHello record header
    try:
        # served beside them (their 15 s deadline is timed in tests/unit/server)
        r = run(["virsh", "-c", uri(tls_daemon.port, pki), "list --name"])
        assert r.returncode == 0, r.stderr
    finally:
        for s in stalled:
            s.close()


def test_sighup_reloads_certificates(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    root = tmp_path / "d"
    shutil.copytree(pki, root / "etc" / "pki")
    port = free_port()
    d = listening_daemon(root, f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n",
                         port)
    try:
        def serial() -> int:
            der = ssl.get_server_certificate(("127.0.0.1", port))
            return x509.load_pem_x509_certificate(der.encode()).serial_number
        before = serial()
        # a new server certificate from the same CA (cakey.pem is reused)
        new = make_pki(root / "etc" / "pki")
        assert new
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while serial() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert serial() != before
        r = run(["virsh", "-c", uri(port, root / "etc" / "pki"), "list --name"])
        assert r.returncode == 0, r.stderr
    finally:
        stop_daemon(d)


def test_admin_client_info_shows_tls_identity(tls_daemon, pki: Path) -> None:
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open(uri(tls_daemon.port, pki))
    try:
        r = run(["virt-admin", "-c", tls_daemon.admin_uri, "srv-clients-list libvirtd"])
        ids = [line.split()[0] for line in r.stdout.splitlines() if line.strip()[:1].isdigit()]
        infos = [run(["virt-admin", "-c", tls_daemon.admin_uri,
                      f"client-info libvirtd {i}"]).stdout for i in ids]
        assert any("tls_x509_dname" in i and "CN=pyvirtd-client" in i and "sock_addr" in i
                   for i in infos), infos
    finally:
        conn.close()


def test_large_messages_both_ways(tls_daemon, pki: Path) -> None:
    """A ~2 MiB definition up and its XML back: many TLS records, partial sends."""
    libvirt = pytest.importorskip("libvirt")
    text = "x" * (2 * 1024 * 1024)
    xml = (f"<domain type='test'><name>big</name><description>{text}</description>"
           "<memory>8192</memory><os><type>hvm</type></os></domain>")
    conn = libvirt.open(uri(tls_daemon.port, pki))
    try:
        dom = conn.defineXML(xml)
        try:
            assert text in dom.XMLDesc()
        finally:
            dom.undefine()
    finally:
        conn.close()


def test_revoked_cert_refused(tmp_path: Path) -> None:
    """A client certificate listed in the CRL (cacrl.pem) is refused; others still work."""
    from cryptography.hazmat.primitives import hashes
    pki = make_pki(tmp_path / "pki")
    ca, ca_key = load_ca(pki)
    key = certs._new_key()
    revoked = certs.make_certificate(certs._name("pyvirtd-client", "pyvirtd"), key, ca.subject,
                                     ca_key, client=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - datetime.timedelta(hours=1))
           .next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder()
                                    .serial_number(revoked.serial_number)
                                    .revocation_date(now - datetime.timedelta(minutes=5)).build())
           .sign(ca_key, hashes.SHA256()))
    root = tmp_path / "d"
    shutil.copytree(pki, root / "etc" / "pki")
    (root / "etc" / "pki" / "cacrl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    port = free_port()
    d = listening_daemon(root, f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n",
                         port)
    try:
        bad = client_dir(tmp_path, "revoked", pki, revoked, key)
        assert isinstance(raw_confirm(port, bad), str)
        assert raw_confirm(port, pki) == b"\x01"
    finally:
        stop_daemon(d)


def _server_cert(pki_dir: Path, *, expired: bool = False, foreign_ca: bool = False) -> None:
    """Replace pki_dir's server certificate by an expired one, or one another CA signed."""
    ca, ca_key = load_ca(pki_dir)
    if foreign_ca:
        ca_key = certs._new_key()
        ca = certs.make_certificate(certs._name("Other CA", "elsewhere"), ca_key,
                                    certs._name("Other CA", "elsewhere"), ca_key, ca=True)
    key = serialization.load_pem_private_key((pki_dir / "serverkey.pem").read_bytes(), None)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    cert = certs.make_certificate(certs._name("localhost", "pyvirtd"), key, ca.subject, ca_key,
                                  server_names=["localhost", "127.0.0.1"],
                                  not_before=start if expired else None,
                                  days=1 if expired else 30)
    (pki_dir / "servercert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(("bad", "reason"), [
    ({"expired": True}, "servercert.pem has expired"),
    ({"foreign_ca": True}, "servercert.pem is not issued by the CA certificate"),
])
def test_sanity_check_of_our_certificates_at_start(tmp_path: Path, bad: dict,
                                                    reason: str) -> None:
    root = tmp_path / "d"
    shutil.copytree(make_pki(tmp_path / "pki"), root / "etc" / "pki")
    _server_cert(root / "etc" / "pki", **bad)
    port = free_port()
    config = f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n"
    (root / "c.yaml").write_text(config)
    p = run([*PYVIRTD, "--root", str(root), "--listen", "-f", str(root / "c.yaml")])
    assert p.returncode == 1 and reason in p.stderr, p.stderr
    # tls_no_sanity_certificate: the daemon starts with them (clients then judge)
    d = listening_daemon(root, config + "tls_no_sanity_certificate: true\n", port)
    try:
        assert d.proc.poll() is None
        assert isinstance(raw_confirm(port, tmp_path / "pki"), str)   # our client refuses it
    finally:
        assert stop_daemon(d) == 0, d.log()
