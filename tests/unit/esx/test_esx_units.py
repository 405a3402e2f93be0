"""The ESX driver's pure parts: endpoint configuration, libvirt's names and numbers."""

from __future__ import annotations

import pytest

from pyvirtd.config import Config, ConfigError, EsxEndpoint
from pyvirtd.drivers.esx.connection import _version_number, cpu_model
from pyvirtd.drivers.esx.domxml import disk_name


def test_endpoints_load_with_defaults() -> None:
    c = Config.from_mapping({"esx_endpoints": [
        {"name": "lab", "host": "esx1", "credentials_file": "/etc/pyvirtd/esx1.yaml"},
        {"name": "vc", "host": "vc1", "port": 8443, "ca_file": "/etc/ca.pem",
         "credentials_file": "/c.yaml", "insecure": False}]}, "t")
    assert c.esx_endpoints == (
        EsxEndpoint("lab", "esx1", "/etc/pyvirtd/esx1.yaml"),
        EsxEndpoint("vc", "vc1", "/c.yaml", 8443, "/etc/ca.pem", False))
    assert c.esx_endpoints[0].port == 443 and c.esx_endpoints[0].insecure is False


@pytest.mark.parametrize("endpoints, message", [
    ([{"name": "lab"}], "item 0: missing 'host', 'credentials_file'"),
    ([{"name": "a", "host": "h", "credentials_file": "/c", "port": "443"}],
     "item 0: 'port' must be an integer"),
    ([{"name": "a/b", "host": "h", "credentials_file": "/c"}], "endpoint name 'a/b'"),
    ([{"name": "a", "host": "h", "credentials_file": "c.yaml"}],
     "credentials_file must be an absolute path"),
    ([{"name": "a", "host": "h", "credentials_file": "/c"}] * 2,
     "endpoint names must be unique: a"),
    ([{"name": "a", "host": "h", "credentials_file": "/c", "port": 0}], "port 0 is out of range"),
    ("lab", "expected a list of vSphere endpoints"),
])
def test_bad_endpoints_are_refused(endpoints, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_mapping({"esx_endpoints": endpoints}, "t")
    assert message in str(err.value)


def test_a_password_pasted_into_an_endpoint_is_not_repeated() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_mapping({"esx_endpoints": [{"name": "a", "host": "h", "credentials_file": "/c",
                                                "password": "hunter2"}]}, "t")
    assert "unknown key 'password'" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_libvirt_names_and_numbers() -> None:
    assert [disk_name("sd", i) for i in (0, 1, 25, 26, 27)] == \
        ["sda", "sdb", "sdz", "sdaa", "sdab"]
    assert _version_number("6.5.0") == 6005000
    assert _version_number("7.0.3") == 7000003
    assert cpu_model("Intel(R) Xeon(R) CPU E5-1620 0 @ 3.60GHz") == "Intel Xeon CPU E5-1620 0 @ 3.60G"[:31]
    assert cpu_model("AMD  EPYC(TM)  7302") == "AMD EPYC 7302"
