"""pyvirtd.rpc.peer: which socket and which name a libvirt URI gives the daemon's own client."""

from __future__ import annotations

import pytest

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.rpc.peer import split_uri


def test_unix_uri_with_socket():
    assert split_uri("qemu+unix:///session?socket=/tmp/x/libvirt-sock") == (
        "/tmp/x/libvirt-sock", "qemu:///session")


def test_local_uri_uses_the_default_session_socket(monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    monkeypatch.setattr("os.geteuid", lambda: 1234)
    assert split_uri("qemu:///session") == ("/run/user/1234/libvirt/libvirt-sock",
                                            "qemu:///session")


def test_local_system_uri_as_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert split_uri("qemu:///system") == ("/run/libvirt/libvirt-sock", "qemu:///system")


@pytest.mark.parametrize("uri", ["qemu+tcp://otherhost/system", "qemu+tls://otherhost/system",
                                 "qemu://otherhost/system", "qemu+ssh://root@h/system"])
def test_network_transports_are_refused_for_now(uri):
    with pytest.raises(VirError) as exc:
        split_uri(uri)
    assert exc.value.code == P.VIR_ERR_ARGUMENT_UNSUPPORTED
    assert f"cannot connect to '{uri}'" in exc.value.message
