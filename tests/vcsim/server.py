"""Run the vSphere simulator (tests/vcsim/main.go) on 127.0.0.1 with TLS and credentials.

`start_vcsim` makes a throw-away CA and a server certificate for 127.0.0.1,
starts the simulator with them and a user name and password it requires, and
returns once it listens.  The simulator stops when `Vcsim.stop` closes its
standard input, or when the test process dies (the pipe closes then too).
"""

from __future__ import annotations

import datetime
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from pyvirtd.certs import make_certificate
from tests.vcsim.build import ensure_vcsim

USERNAME = "pyvirtd-test"
PASSWORD = "s3cret-pw"


@dataclass
class Vcsim:
    proc: subprocess.Popen
    host: str
    port: int
    ca_file: Path           # the CA that signed the simulator's certificate
    username: str
    password: str
    model: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vcsim test CA")])
    ca = make_certificate(ca_name, ca_key, ca_name, ca_key, ca=True, days=2)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = make_certificate(name, key, ca_name, ca_key, server_names=["127.0.0.1"], days=2,
                            not_before=datetime.datetime.now(datetime.timezone.utc)
                            - datetime.timedelta(hours=1))
    paths = d / "ca.pem", d / "server.pem", d / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


def start_vcsim(workdir: Path, model: str = "esx", username: str = USERNAME,
                password: str = PASSWORD) -> Vcsim:
    """Build (once) and start the simulator; it listens when this returns."""
    binary = ensure_vcsim()
    ca, cert, key = make_pki(workdir / "pki")
    log = open(workdir / "vcsim.log", "wb")
    proc = subprocess.Popen([str(binary), "-model", model, "-listen", "127.0.0.1:0",
                             "-username", username, "-password", password,
                             "-cert", str(cert), "-key", str(key)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            cwd=workdir)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()       # blocks until it listens, or EOF if it died
    if not line.startswith("VCSIM URL "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"vcsim did not start: {line!r}\n"
                           f"{(workdir / 'vcsim.log').read_text()}")
    hostport = line.split()[2].split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return Vcsim(proc, host, int(port), ca, username, password, model)
