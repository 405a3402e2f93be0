"""SASL with real clients: SCRAM-SHA-256 (unix socket, TLS) and GSSAPI against a real KDC.

GSSAPI runs over plain TCP, where libvirt requires the SASL security layer:
every byte after the final step travels wrapped, so a whole virsh session
working proves the layer both ways. The KDC is MIT krb5kdc, started by the
test on 127.0.0.1 with a throw-away realm, service principal and keytab.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auth_helpers import accepts, free_port, listening_daemon, need_commands, need_module, run
from tests.conftest import start_daemon, stop_daemon, wait_for

PYVIRTD = [sys.executable, "-m", "pyvirtd.cli"]
REALM = "TEST.LAB"


def auth_file(path: Path, user: str, password: str) -> Path:
    """libvirt's auth.conf: answers the SASL prompts without a terminal."""
    path.write_text(f"[credentials-c]\nauthname={user}\npassword={password}\n\n"
                    "[auth-libvirt-localhost]\ncredentials=c\n\n"
                    "[auth-libvirt-default]\ncredentials=c\n")
    return path


def add_user(root: Path, name: str, password: str) -> None:
    r = run([*PYVIRTD, "sasl-user", "--root", str(root), "add", name], input=password + "\n")
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- SCRAM
@pytest.fixture(scope="module")
def scram_daemon(tmp_path_factory):
    need_module("scramp", "scramp")
    root = tmp_path_factory.mktemp("scram")
    add_user(root, "alice", "wonderland")
    add_user(root, "mallory", "evil")
    d = start_daemon(root, config="auth_unix_rw: sasl\n"
                                  "sasl_allowed_username_list: ['alice', 'bob*']\n")
    yield d
    stop_daemon(d)


def test_sasl_user_subcommand(tmp_path: Path) -> None:
    need_module("scramp", "scramp")
    add_user(tmp_path, "carol", "pw")
    add_user(tmp_path, "dave", "pw")
    assert run([*PYVIRTD, "sasl-user", "--root", str(tmp_path), "list"]).stdout.split() == \
        ["carol", "dave"]
    assert run([*PYVIRTD, "sasl-user", "--root", str(tmp_path), "remove", "carol"]).returncode == 0
    assert run([*PYVIRTD, "sasl-user", "--root", str(tmp_path), "remove", "carol"]).returncode == 1
    f = tmp_path / "etc" / "sasl-users.json"
    assert f.stat().st_mode & 0o777 == 0o600
    assert "pw" not in f.read_text().replace("\"", " ").split()


def test_scram_on_unix_socket(scram_daemon, tmp_path: Path) -> None:
    env = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "a.conf", "alice", "wonderland"))}
    r = run(["virsh", "-c", scram_daemon.uri(), "list --name"], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["test"]


def test_scram_python_libvirt_callback(scram_daemon) -> None:
    libvirt = need_module("libvirt", "libvirt-python")

    def answer(creds, _data):
        for cred in creds:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = "alice"
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE:
                cred[4] = "wonderland"
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
    conn = libvirt.openAuth(scram_daemon.uri(), auth, 0)
    try:
        assert conn.lookupByName("test").isActive()
    finally:
        conn.close()


def test_scram_wrong_password_refused(scram_daemon, tmp_path: Path) -> None:
    env = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "a.conf", "alice", "nope"))}
    r = run(["virsh", "-c", scram_daemon.uri(), "list"], env=env)
    assert r.returncode != 0
    assert "authentication failed" in r.stderr


def test_scram_user_not_allowed_refused(scram_daemon, tmp_path: Path) -> None:
    env = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "a.conf", "mallory", "evil"))}
    r = run(["virsh", "-c", scram_daemon.uri(), "list"], env=env)
    assert r.returncode != 0
    assert "not on the list of allowed clients" in r.stderr


def test_no_calls_before_authentication(scram_daemon) -> None:
    """A client that skips SASL gets "authentication required" for anything but auth calls."""
    import socket
    import struct
    from pyvirtd.rpc import _generated as P
    from pyvirtd.rpc import frame
    prog, vers = P.PROGRAMS["remote"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(scram_daemon.sock))
        s.sendall(frame.build(prog, vers, 110, frame.CALL, 1, frame.OK))   # CONNECT_GET_URI
        length = struct.unpack(">I", s.recv(4))[0]
        body = b""
        while len(body) < length - 4:
            body += s.recv(length - 4 - len(body))
        assert b"authentication required" in body


def test_scram_over_tls(tmp_path: Path) -> None:
    need_module("scramp", "scramp")
    need_module("cryptography", "cryptography")
    root = tmp_path / "d"
    pki = root / "etc" / "pki"
    r = run([*PYVIRTD, "cert", "--dir", str(pki), "--hostname", "localhost"])
    assert r.returncode == 0, r.stderr
    add_user(root, "alice", "wonderland")
    port = free_port()
    d = listening_daemon(root, f"listen_tls: true\ntls_port: '{port}'\nlisten_addr: 127.0.0.1\n"
                               "auth_tls: sasl\n", port)
    try:
        uri = f"test+tls://localhost:{port}/default?pkipath={pki}"
        good = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "a.conf", "alice", "wonderland"))}
        r = run(["virsh", "-c", uri, "list --name"], env=good)
        assert r.returncode == 0, r.stderr + d.log()
        bad = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "b.conf", "alice", "x"))}
        assert run(["virsh", "-c", uri, "list"], env=bad).returncode != 0
    finally:
        stop_daemon(d)


def test_scram_not_offered_on_plain_tcp(tmp_path: Path) -> None:
    """libvirt clients want SSF >= 56 on plain TCP: SCRAM has none, so it is not offered."""
    need_module("scramp", "scramp")
    root = tmp_path / "d"
    add_user(root, "alice", "wonderland")
    port = free_port()
    d = listening_daemon(root, f"listen_tls: false\nlisten_tcp: true\ntcp_port: '{port}'\n"
                               "listen_addr: 127.0.0.1\n", port)
    try:
        env = {"LIBVIRT_AUTH_FILE": str(auth_file(tmp_path / "a.conf", "alice", "wonderland"))}
        r = run(["virsh", "-c", f"test+tcp://localhost:{port}/default", "list"], env=env)
        assert r.returncode != 0
    finally:
        stop_daemon(d)


# ---------------------------------------------------------------- GSSAPI
class Kdc:
    """A throw-away MIT Kerberos realm on 127.0.0.1 (test-environment.md, "Auth peers")."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.conf = base / "krb5.conf"
        self.keytab = base / "libvirt.keytab"
        self.conf.write_text(
            f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n"
            " dns_lookup_realm = false\n rdns = false\n dns_canonicalize_hostname = false\n"
            " udp_preference_limit = 1\n\n"
            f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{self.port}\n }}\n\n"
            f"[domain_realm]\n localhost = {REALM}\n")
        (base / "kdc.conf").write_text(
            f"[realms]\n {REALM} = {{\n  database_name = {base}/principal\n"
            f"  key_stash_file = {base}/stash\n  kdc_listen = 127.0.0.1:{self.port}\n"
            f"  kdc_tcp_listen = 127.0.0.1:{self.port}\n  acl_file = {base}/kadm5.acl\n }}\n"
            f"[logging]\n kdc = FILE:{base}/kdc.log\n")
        (base / "kadm5.acl").write_text("")
        self.env = {"KRB5_CONFIG": str(self.conf), "KRB5_KDC_PROFILE": str(base / "kdc.conf"),
                    "KRB5RCACHETYPE": "none"}
        self._run(["kdb5_util", "create", "-s", "-r", REALM, "-P", "masterpw"])
        for q in ("addprinc -randkey libvirt/localhost",
                  f"ktadd -k {self.keytab} libvirt/localhost",
                  "addprinc -pw alicepw alice", "addprinc -pw mallorypw mallory"):
            self._run(["kadmin.local", "-q", q])
        self.proc = subprocess.Popen(["krb5kdc", "-n"], env=dict(os.environ, **self.env),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: accepts(self.port) or self.proc.poll() is not None, timeout=10)
        assert self.proc.poll() is None, (self.base / "kdc.log").read_text()

    def _run(self, argv: list[str]) -> None:
        r = run(argv, env=self.env)
        assert r.returncode == 0, (argv, r.stdout, r.stderr)

    def kinit(self, user: str, password: str) -> dict:
        cc = self.base / f"cc_{user}"
        env = dict(self.env, KRB5CCNAME=f"FILE:{cc}")
        for _ in range(20):     # the KDC may still be starting
            if run(["kinit", user], env=env, input=password + "\n").returncode == 0:
                return env
            time.sleep(0.2)
        raise AssertionError(f"kinit {user} failed")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture(scope="module")
def kdc(tmp_path_factory):
    need_commands("krb5kdc", "kdb5_util", "kadmin.local", package="krb5-kdc krb5-admin-server")
    need_commands("kinit", package="krb5-user")
    need_commands("/usr/lib/x86_64-linux-gnu/sasl2/libgssapiv2.so",
                  package="libsasl2-modules-gssapi-mit")
    need_module("gssapi", "gssapi (builds against libkrb5-dev)")
    k = Kdc(tmp_path_factory.mktemp("kdc"))
    yield k
    k.stop()


def start_gssapi_daemon(root: Path, kdc: Kdc, config: str = ""):
    """A daemon serving GSSAPI on plain TCP (127.0.0.1) with the KDC's service key."""
    (root / "etc").mkdir(parents=True)
    shutil.copy(kdc.keytab, root / "etc" / "krb5.tab")
    port = free_port()
    saved = dict(os.environ)
    os.environ.update(KRB5_CONFIG=str(kdc.conf), KRB5RCACHETYPE="none")
    try:
        d = listening_daemon(root, f"listen_tls: false\nlisten_tcp: true\ntcp_port: '{port}'\n"
                                   "listen_addr: 127.0.0.1\n"
                                   f"sasl_allowed_username_list: ['alice@{REALM}']\n" + config,
                             port)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    d.port = port
    return d


@pytest.fixture(scope="module")
def gssapi_daemon(tmp_path_factory, kdc):
    d = start_gssapi_daemon(tmp_path_factory.mktemp("gss"), kdc)
    yield d
    stop_daemon(d)


def test_gssapi_over_tcp_with_security_layer(kdc, gssapi_daemon) -> None:
    env = kdc.kinit("alice", "alicepw")
    uri = f"test+tcp://localhost:{gssapi_daemon.port}/default"
    # several round trips, a large reply (the domain XML) and events all go
    # through the wrapped stream
    r = run(["virsh", "-c", uri, "list --all; dumpxml test; define /dev/null; domstate test"],
            env=env)
    assert "test" in r.stdout and "<domain" in r.stdout and "running" in r.stdout, \
        r.stderr + gssapi_daemon.log()


def test_gssapi_python_libvirt(kdc, gssapi_daemon) -> None:
    env = kdc.kinit("alice", "alicepw")
    code = ("import libvirt, sys\n"
            "c = libvirt.open(sys.argv[1])\n"
            "for _ in range(200): c.getLibVersion()\n"
            "print(len(c.lookupByName('test').XMLDesc()) > 500)\n")
    r = run([sys.executable, "-c", code, f"test+tcp://localhost:{gssapi_daemon.port}/default"],
            env=env)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_gssapi_layer_large_messages(kdc, gssapi_daemon) -> None:
    """~1 MiB each way through the wrapped stream: many tokens, split reads."""
    env = kdc.kinit("alice", "alicepw")
    code = ("import libvirt, sys\n"
            "c = libvirt.open(sys.argv[1])\n"
            "t = 'y' * (1024 * 1024)\n"
            "d = c.defineXML(\"<domain type='test'><name>big</name><description>\" + t +"
            " \"</description><memory>8192</memory><os><type>hvm</type></os></domain>\")\n"
            "print(t in d.XMLDesc())\n"
            "d.undefine()\n")
    r = run([sys.executable, "-c", code, f"test+tcp://localhost:{gssapi_daemon.port}/default"],
            env=env)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


@pytest.mark.parametrize(("min_ssf", "accepted"), [(256, True), (257, False)])
def test_tcp_min_ssf_refuses_a_weaker_gssapi_layer(kdc, tmp_path: Path, min_ssf: int,
                                                   accepted: bool) -> None:
    """The test realm's session keys are AES-256, so the layer's SSF is 256:
    tcp_min_ssf 256 admits the client, 257 refuses it (the default, 56, admits
    it in every test above)."""
    d = start_gssapi_daemon(tmp_path / "d", kdc, f"tcp_min_ssf: {min_ssf}\n")
    try:
        env = kdc.kinit("alice", "alicepw")
        r = run(["virsh", "-c", f"test+tcp://localhost:{d.port}/default", "list --name"], env=env)
        if accepted:
            assert r.returncode == 0 and r.stdout.split() == ["test"], r.stderr + d.log()
        else:
            assert r.returncode != 0 and "authentication failed" in r.stderr, r.stderr
            assert "negotiated SSF 256 was not strong enough (tcp_min_ssf is 257)" in d.log()
    finally:
        stop_daemon(d)


def test_gssapi_user_not_allowed(kdc, gssapi_daemon) -> None:
    env = kdc.kinit("mallory", "mallorypw")
    r = run(["virsh", "-c", f"test+tcp://localhost:{gssapi_daemon.port}/default", "list"], env=env)
    assert r.returncode != 0
    assert "not on the list of allowed clients" in r.stderr


def test_gssapi_without_ticket_refused(kdc, gssapi_daemon, tmp_path: Path) -> None:
    env = dict(kdc.env, KRB5CCNAME=f"FILE:{tmp_path}/none")
    r = run(["virsh", "-c", f"test+tcp://localhost:{gssapi_daemon.port}/default", "list"], env=env)
    assert r.returncode != 0


def test_admin_client_info_shows_sasl_user(scram_daemon) -> None:
    code = ("import libvirt, subprocess, sys\n"
            "def cb(creds, _):\n"
            "    for c in creds:\n"
            "        c[4] = 'alice' if c[0] == libvirt.VIR_CRED_AUTHNAME else 'wonderland'\n"
            "    return 0\n"
            "c = libvirt.openAuth(sys.argv[1], [[libvirt.VIR_CRED_AUTHNAME,"
            " libvirt.VIR_CRED_PASSPHRASE], cb, None], 0)\n"
            "out = subprocess.run(['virt-admin', '-c', sys.argv[2], 'srv-clients-list libvirtd'],"
            " capture_output=True, text=True).stdout\n"
            "for line in out.splitlines():\n"
            "    if line.strip()[:1].isdigit():\n"
            "        print(subprocess.run(['virt-admin', '-c', sys.argv[2], 'client-info libvirtd '"
            " + line.split()[0]], capture_output=True, text=True).stdout)\n")
    r = run([sys.executable, "-c", code, scram_daemon.uri(), scram_daemon.admin_uri])
    assert r.returncode == 0, r.stderr
    assert "sasl_user_name" in r.stdout and "alice" in r.stdout, r.stdout
