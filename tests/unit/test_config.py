"""YAML configuration: defaults, validation and the shipped default file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pyvirtd.config import Config, ConfigError

REPO = Path(__file__).resolve().parents[2]
INT_KEYS = [f.name for f in dataclasses.fields(Config) if f.type == "int"]
# integer knobs whose values are bounded beyond their type (see _RULES)
FREE_INT_KEYS = [k for k in INT_KEYS if k not in ("tcp_min_ssf", "ovs_timeout",
                                                  "qemu_monitor_timeout")]


def test_defaults_match_libvirtd() -> None:
    c = Config()
    assert (c.listen_tls, c.listen_tcp) == (True, False)   # both need --listen too
    assert (c.tls_port, c.tcp_port) == ("16514", "16509")
    assert (c.unix_sock_ro_perms, c.unix_sock_rw_perms) == ("0777", "0700")
    assert c.unix_sock_admin_perms == "0700"
    assert (c.auth_unix_ro, c.auth_unix_rw, c.auth_tcp, c.auth_tls) == (
        "none", "none", "sasl", "none",
    )
    assert (c.max_clients, c.max_queued_clients, c.max_anonymous_clients) == (
        5000, 1000, 20,
    )
    assert (c.min_workers, c.max_workers, c.prio_workers) == (5, 20, 5)
    assert c.max_client_requests == 5
    assert (c.admin_min_workers, c.admin_max_workers, c.admin_max_clients) == (1, 5, 5)
    assert (c.keepalive_interval, c.keepalive_count) == (5, 5)
    assert (c.log_level, c.log_filters, c.log_outputs) == (3, "", "")
    assert c.unix_sock_group is None and c.tls_allowed_dn_list is None


def test_missing_file_and_none_give_defaults(tmp_path: Path) -> None:
    assert Config.load(tmp_path / "absent.yaml") == Config()
    assert Config.load(None) == Config()
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set\n")
    assert Config.load(empty) == Config()


def test_load_values(tmp_path: Path) -> None:
    path = tmp_path / "pyvirtd.yaml"
    path.write_text(
        "listen_tcp: true\n"
        "max_clients: 10\n"
        "unix_sock_rw_perms: '0770'\n"
        "auth_tcp: none\n"
        "tls_allowed_dn_list: ['CN=*', 'O=lab']\n"
        "keepalive_interval: -1\n"
        "listen_addr: null\n"
    )
    c = Config.load(path)
    assert c.listen_tcp is True and c.max_clients == 10
    assert c.unix_sock_rw_perms == "0770" and c.auth_tcp == "none"
    assert c.tls_allowed_dn_list == ("CN=*", "O=lab")
    assert c.keepalive_interval == -1 and c.listen_addr is None
    assert c.max_workers == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_clients: lots", "key 'max_clients': expected an integer, got 'lots'"),
        ("max_client: 5", "unknown key 'max_client'"),
        ("max_clients: true", "key 'max_clients': expected an integer, got True"),
        ("listen_tls: 1", "key 'listen_tls': expected true or false, got 1"),
        ("tls_port: 16514", "key 'tls_port': expected a string, got 16514"),
        ("auth_tcp: kerberos", "key 'auth_tcp': expected one of 'none', 'sasl', 'polkit'"),
        ("log_level: 5", "key 'log_level': expected one of 1, 2, 3, 4, got 5"),
        # YAML 1.1 reads an unquoted 0770 as the octal number 504.
        ("unix_sock_rw_perms: 0770", "expected a quoted octal mode such as '0770', got 504"),
        ("unix_sock_ro_perms: '0999'", "expected a quoted octal mode"),
        ("access_drivers: polkit", "expected a list of strings, got 'polkit'"),
        ("tls_allowed_dn_list: [1]", "expected a list of strings or null, got [1]"),
        ("- max_clients", "expected a mapping of keys to values, got a list"),
        ("max_clients: [", "invalid YAML"),
        # knobs that cannot take effect are refused, never accepted and ignored
        # libvirtd's own limit for an explicit value (its default 56 stays allowed)
        ("tcp_min_ssf: 64", "key 'tcp_min_ssf': minimum SSF levels lower than 112 are not supported"),
        ("host_uuid: '00000000-0000-0000-0000-000000000000'",
         "key 'host_uuid': invalid host UUID: 00000000-0000-0000-0000-000000000000"),
        ("host_uuid: 'ffffffff-ffff-ffff-ffff-ffffffffffff'", "key 'host_uuid': invalid host UUID"),
        ("host_uuid: 'not-a-uuid'", "key 'host_uuid': invalid host UUID: not-a-uuid"),
        ("unix_sock_dir: run/sockets", "key 'unix_sock_dir': expected an absolute directory"),
        ("audit_level: 2", "key 'audit_level': pyvirtd writes no audit records"),
        ("audit_logging: true", "key 'audit_logging': pyvirtd writes no audit records"),
        ("ovs_timeout: 30", "key 'ovs_timeout': pyvirtd never calls ovs-vsctl"),
        ("qemu_monitor_timeout: 0", "key 'qemu_monitor_timeout': expected at least 1 second"),
    ],
)
def test_errors_name_file_key_and_expectation(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "pyvirtd.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_from_mapping_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^/etc/pyvirtd/pyvirtd.yaml: key 'max_clients'"):
        Config.from_mapping({"max_clients": "lots"}, "/etc/pyvirtd/pyvirtd.yaml")


def test_every_default_passes_its_own_validation() -> None:
    """Catches a field whose type hint the generic checker cannot handle."""
    as_yaml = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(Config()).items()
    }
    assert Config.from_mapping(as_yaml, "defaults") == Config()


@given(key=st.sampled_from(FREE_INT_KEYS), value=st.integers(-(2**40), 2**40))
def test_any_integer_is_accepted_for_int_keys(key: str, value: int) -> None:
    assert getattr(Config.from_mapping({key: value}, "t"), key) == value


@given(
    key=st.sampled_from(INT_KEYS),
    value=st.one_of(st.booleans(), st.text(), st.floats(), st.none(), st.lists(st.integers())),
)
def test_non_integers_are_refused_for_int_keys(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"key '{key}': expected an integer")):
        Config.from_mapping({key: value}, "t")


def test_shipped_default_file_documents_every_key_with_its_default() -> None:
    """etc/pyvirtd.yaml must stay in step with Config: every key, right default."""
    path = REPO / "etc" / "pyvirtd.yaml"
    assert Config.load(path) == Config(), "the shipped file must change nothing"
    lines = re.findall(r"^#([a-z_]+: .*)$", path.read_text(), re.MULTILINE)
    documented = Config.from_mapping(yaml.safe_load("\n".join(lines)), str(path))
    keys = [line.split(":", 1)[0] for line in lines]
    assert sorted(keys) == sorted(f.name for f in dataclasses.fields(Config))
    assert documented == Config()


def test_bounded_knobs_accept_what_works() -> None:
    c = Config.from_mapping({"tcp_min_ssf": 256, "host_uuid": "1234567812341234123412345678abcd",
                             "unix_sock_dir": "/run/elsewhere", "audit_level": 0,
                             "audit_logging": False, "ovs_timeout": 5,
                             "qemu_monitor_timeout": 1}, "t")
    assert (c.tcp_min_ssf, c.unix_sock_dir, c.audit_level) == (256, "/run/elsewhere", 0)
    assert c.qemu_monitor_timeout == 1
    assert c.host_uuid == "1234567812341234123412345678abcd"    # canonical form comes at start
