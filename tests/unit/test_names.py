"""Object names and the paths built from them (pyvirtd/names.py, issue #11 defect 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyvirtd.errors import VirError
from pyvirtd.names import UnsafeName, check_name, name_path
from pyvirtd.rpc import _generated as P


@pytest.mark.parametrize("kind, name, code, domain, message", [
    ("domain", "../network/victim", P.VIR_ERR_XML_ERROR, P.VIR_FROM_DOMAIN,
     "XML error: name ../network/victim cannot contain '/'"),
    ("domain", "a\nb", P.VIR_ERR_XML_DETAIL, P.VIR_FROM_XML, "invalid char in name: \n"),
    ("network", "/tmp/x", P.VIR_ERR_XML_DETAIL, P.VIR_FROM_XML, "invalid char in name: /"),
    ("pool", "a/b", P.VIR_ERR_XML_ERROR, P.VIR_FROM_STORAGE,
     "XML error: name a/b cannot contain '/'"),
    ("pool", "a\nb", P.VIR_ERR_XML_DETAIL, P.VIR_FROM_XML, "invalid char in name: \n"),
    ("volume", "../x", P.VIR_ERR_OPERATION_INVALID, P.VIR_FROM_STORAGE,
     "Requested operation is not valid: volume name '../x' cannot contain '/'"),
    ("snapshot", "s/1", P.VIR_ERR_XML_ERROR, P.VIR_FROM_DOMAIN_SNAPSHOT,
     "XML error: name s/1 cannot contain '/'"),
])
def test_refused_names_carry_libvirts_error(kind, name, code, domain, message) -> None:
    with pytest.raises(VirError) as info:
        check_name(kind, name)
    assert (info.value.code, info.value.domain, info.value.message) == (code, domain, message)


@pytest.mark.parametrize("kind", ["domain", "network", "pool", "volume", "snapshot"])
@pytest.mark.parametrize("name", ["", ".", "..", "a\0b"])
def test_names_no_file_can_carry_are_refused_for_every_kind(kind, name) -> None:
    if kind == "volume" and name in (".", ".."):
        assert check_name(kind, name) == name    # the dir backend's "already exists"
        return
    with pytest.raises(VirError):
        check_name(kind, name)


def test_libvirt_accepts_newlines_in_network_and_volume_names() -> None:
    assert check_name("network", "a\nb") == "a\nb"
    assert check_name("volume", "a\nb") == "a\nb"
    assert check_name("domain", "..x") == "..x"


def test_name_path_stays_in_its_directory(tmp_path: Path) -> None:
    assert name_path(tmp_path, "guest", ".xml") == tmp_path / "guest.xml"
    assert name_path(tmp_path, "..", ".xml") == tmp_path / "...xml"
    for name, suffix in (("../x", ".xml"), ("/tmp/x", ""), ("..", ""), (".", ""), ("", ".xml"),
                         ("a\0", ".xml"), ("x", "/../y")):
        with pytest.raises(UnsafeName) as info:
            name_path(tmp_path, name, suffix)
        assert info.value.code == P.VIR_ERR_INTERNAL_ERROR
