"""ESX failures through pyvirtd against the simulator (vcsim, a stand-in for ESX): each a
clear libvirt error, and the daemon keeps serving its other clients."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from esx_helpers import endpoint_config, write_credentials

from tests.conftest import start_daemon, stop_daemon, virsh
from tests.vcsim.server import Vcsim


@pytest.fixture
def many(tmp_path: Path, vcsim: Vcsim):
    """pyvirtd with one good endpoint and one endpoint per way of getting it wrong."""
    good = write_credentials(tmp_path / "good.yaml", vcsim.username, vcsim.password)
    wrong = write_credentials(tmp_path / "wrong.yaml", vcsim.username, "not-the-password")
    loose = write_credentials(tmp_path / "loose.yaml", vcsim.username, vcsim.password, 0o644)
    config = "esx_endpoints:\n" + "".join([
        endpoint_config("lab", vcsim, good, ca_file=vcsim.ca_file),
        endpoint_config("wrongpw", vcsim, wrong, ca_file=vcsim.ca_file),
        endpoint_config("loose", vcsim, loose, ca_file=vcsim.ca_file),
        endpoint_config("missing", vcsim, tmp_path / "absent.yaml", ca_file=vcsim.ca_file),
        # the system's CAs do not know the simulator's test CA
        endpoint_config("unverified", vcsim, good, ca_file=None),
        endpoint_config("insecure", vcsim, good, ca_file=None, insecure=True),
    ])
    d = start_daemon(tmp_path / "pyvirtd", config=config)
    yield d
    stop_daemon(d)


def uri(d, endpoint: str) -> str:
    return f"esx+unix:///{endpoint}?socket={d.sock}"


def open_error(d, endpoint: str) -> libvirt.libvirtError:
    with pytest.raises(libvirt.libvirtError) as err:
        libvirt.open(uri(d, endpoint))
    return err.value


def test_vcsim_wrong_password_is_auth_failed_with_the_hosts_text(many, vcsim: Vcsim) -> None:
    err = open_error(many, "wrongpw")
    assert err.get_error_code() == libvirt.VIR_ERR_AUTH_FAILED
    assert "authentication failed: Login failure" in str(err)
    assert "not-the-password" not in many.log()


def test_vcsim_credentials_file_must_be_private(many) -> None:
    err = open_error(many, "loose")
    assert err.get_error_code() == libvirt.VIR_ERR_AUTH_FAILED
    assert "must be owned by the daemon's user and have mode 0600" in str(err)
    err = open_error(many, "missing")
    assert "cannot read credentials file" in str(err)
    assert "No such file or directory" in str(err)


def test_vcsim_certificate_that_does_not_verify(many) -> None:
    err = open_error(many, "unverified")
    assert err.get_error_code() == libvirt.VIR_ERR_AUTH_FAILED
    assert "the host's TLS certificate does not verify" in str(err)
    # insecure: true skips verification (a lab host with a self-signed certificate)
    conn = libvirt.open(uri(many, "insecure"))
    try:
        assert len(conn.listAllDomains()) == 2
    finally:
        conn.close()


def test_vcsim_unknown_endpoint_names_the_configured_ones(many) -> None:
    r = virsh(uri(many, "nosuch"), "list")
    assert r.rc != 0
    assert "no vSphere endpoint named 'nosuch'" in r.err
    assert "insecure, lab, loose, missing, unverified, wrongpw" in r.err


def test_vcsim_stopped_mid_session(many, vcsim: Vcsim) -> None:
    """The host goes away under an open connection: calls fail with a clear error, and
    the daemon's other clients (here the test driver's) carry on."""
    conn = libvirt.open(uri(many, "lab"))
    try:
        assert len(conn.listAllDomains()) == 2
        vcsim.stop()
        with pytest.raises(libvirt.libvirtError) as err:
            conn.listAllDomains()
        assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED
        assert "cannot list virtual machines: cannot reach the vSphere host" in str(err.value)
        assert conn.getType() == "ESX"          # the connection itself still answers
    finally:
        conn.close()
    r = virsh(many.uri("test:///default"), "list --name")
    assert r.rc == 0 and r.out.split() == ["test"]
    err = open_error(many, "lab")
    assert "cannot log in to vSphere endpoint 'lab'" in str(err)
