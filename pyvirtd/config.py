"""The daemon's YAML configuration, with libvirtd.conf's knob names and defaults.

An admin who knows libvirtd.conf should find every knob under the same name
with the same meaning; only the syntax is YAML (``true``/``false`` instead of
``1``/``0``, lists as YAML lists). Unknown keys and wrong types are errors,
never ignored, because a silently ignored typo in an auth or permission knob
is a security hole.

Validation is driven by the type hints of `Config`'s fields through one
generic checker (`_check`), so adding a knob is one line. A knob with a rule
beyond its type (a range, a path that must be absolute, a feature pyvirtd
does not have) also has an entry in `_RULES`: a knob that cannot take effect
is refused with the reason, never accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import uuid
from typing import Callable

import yaml

__all__ = ["Config", "ConfigError", "EsxEndpoint"]


class ConfigError(Exception):
    """The configuration cannot be used; the message names file and key."""


@dataclass(frozen=True)
class Pattern:
    """`Annotated` marker: a string that must fully match ``regex``."""

    regex: str
    description: str


# A unix permission mode written as an octal string, as libvirtd.conf does.
Mode = Annotated[str, Pattern(r"0?[0-7]{3}", "a quoted octal mode such as '0770'")]
Auth = Literal["none", "sasl", "polkit"]


@dataclass(frozen=True)
class EsxEndpoint:
    """A vSphere host (ESX or vCenter) the ESX driver may talk to, named by clients' URIs.

    ``esx+unix:///NAME`` (drivers/esx) reaches the endpoint ``NAME``.  The
    user name and password live in ``credentials_file`` (YAML with
    ``username`` and ``password``, mode 0600, owned by the daemon's user),
    never in the configuration, a URI or a log.  TLS is verified against
    ``ca_file`` (else the system's CAs); ``insecure`` turns verification off,
    for a lab host with a self-signed certificate.
    """

    name: str
    host: str
    credentials_file: str
    port: int = 443
    ca_file: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Config:
    """The daemon's settings; every field is a libvirtd.conf knob, or for the
    QEMU driver a qemu.conf one.

    ``None`` means "not set": the code that uses the knob picks the default
    libvirtd would (e.g. ``key_file`` depends on system vs session mode). List
    knobs where ``None`` and an empty list differ keep libvirt's meaning: no
    check at all vs. nobody allowed.

    One default deliberately differs from Debian's libvirtd: the unix auth
    knobs are ``none`` rather than ``polkit``, because polkit needs a running
    polkitd that knows libvirt's actions, which most pyvirtd hosts lack; this
    also makes the rw socket default to 0700. As with libvirtd, ``listen_tls``
    is on but takes effect only with ``--listen``.
    """

    # Network listeners.
    listen_tls: bool = True
    listen_tcp: bool = False
    tls_port: str = "16514"
    tcp_port: str = "16509"
    listen_addr: str | None = None

    # Unix sockets.
    unix_sock_group: str | None = None
    unix_sock_ro_perms: Mode = "0777"
    unix_sock_rw_perms: Mode = "0700"
    unix_sock_admin_perms: Mode = "0700"
    unix_sock_dir: str | None = None

    # Authentication and access control.
    auth_unix_ro: Auth = "none"
    auth_unix_rw: Auth = "none"
    auth_tcp: Auth = "sasl"
    auth_tls: Auth = "none"
    tcp_min_ssf: int = 56
    access_drivers: tuple[str, ...] = ()

    # TLS and SASL.
    key_file: str | None = None
    cert_file: str | None = None
    ca_file: str | None = None
    crl_file: str | None = None
    tls_no_sanity_certificate: bool = False
    tls_no_verify_certificate: bool = False
    tls_allowed_dn_list: tuple[str, ...] | None = None
    tls_priority: str | None = None
    sasl_allowed_username_list: tuple[str, ...] | None = None

    # Processing limits.
    max_clients: int = 5000
    max_queued_clients: int = 1000
    max_anonymous_clients: int = 20
    min_workers: int = 5
    max_workers: int = 20
    prio_workers: int = 5
    max_client_requests: int = 5
    admin_min_workers: int = 1
    admin_max_workers: int = 5
    admin_max_clients: int = 5
    admin_max_queued_clients: int = 5
    admin_max_client_requests: int = 5

    # Logging and auditing.
    log_level: Literal[1, 2, 3, 4] = 3
    log_filters: str = ""
    log_outputs: str = ""
    audit_level: Literal[0, 1, 2] = 1
    audit_logging: bool = False

    # Host identity.
    host_uuid: str | None = None
    host_uuid_source: Literal["smbios", "machine-id"] = "smbios"

    # Keepalive.
    keepalive_interval: int = 5
    keepalive_count: int = 5
    admin_keepalive_interval: int = 5
    admin_keepalive_count: int = 5

    # Misc.
    ovs_timeout: int = 5
    mdns_adv: bool = False
    mdns_name: str | None = None

    # The vSphere hosts the ESX driver serves (drivers/esx): none by default.
    esx_endpoints: tuple[EsxEndpoint, ...] = ()

    # QEMU guests of a privileged daemon (qemu.conf's knob names; see
    # drivers/qemu/confine.py).  A session daemon runs QEMU as its own user.
    user: str = "pyvirtd-qemu"
    group: str = "pyvirtd-qemu"
    dynamic_ownership: bool = True
    remember_owner: bool = True
    seccomp_sandbox: Literal[-1, 0, 1] = -1
    namespaces: tuple[Literal["mount"], ...] = ("mount",)
    cgroup_device_acl: tuple[str, ...] = ("/dev/null", "/dev/full", "/dev/zero", "/dev/random",
                                          "/dev/urandom", "/dev/ptmx", "/dev/kvm")
    # Seconds a QEMU monitor command may go unanswered before the call fails
    # (pyvirtd's own knob: libvirt waits for a stuck monitor without limit).
    qemu_monitor_timeout: int = 30

    @classmethod
    def load(cls, path: Path | None) -> Config:
        """Read the YAML file at ``path``.

        A missing file (or ``path=None``) gives the defaults, so a fresh
        install runs without any configuration; a caller that requires the
        file (an explicit ``--config``) must check that it exists. An empty
        file also gives the defaults.

        Raises:
          ConfigError: the file is unreadable, is not YAML, is not a mapping,
            or holds an unknown key or a value of the wrong type.
        """
        if path is None:
            return cls()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
        return cls.from_mapping({} if data is None else data, str(path))

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> Config:
        """Build a Config from parsed data; unset keys keep their defaults.

        ``source`` names where the data came from and starts every error
        message, so the admin knows which file to fix.

        Raises:
          ConfigError: ``data`` is not a mapping, or has an unknown key or a
            value that does not fit the key's type.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{source}: expected a mapping of keys to values, "
                f"got {_kind(data)}"
            )
        hints = _hints()
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {key!r}")
            try:
                values[key] = _check(hints[key], value)
            except _Mismatch as exc:
                got = "" if key in _NOT_ECHOED else f", got {value!r}"
                raise ConfigError(
                    f"{source}: key {key!r}: expected {exc.expected}{got}"
                ) from None
            rule = _RULES.get(key)
            problem = rule(values[key]) if rule and values[key] != _DEFAULTS[key] else None
            if problem:
                raise ConfigError(f"{source}: key {key!r}: {problem}")
        return cls(**values)


def parse_uuid(text: str) -> str:
    """The canonical form of a host UUID, or ValueError with libvirt's reason.

    Like libvirt's virUUIDParse, dashes may sit anywhere between the 32 hex
    digits; like virUUIDIsValid, a UUID whose 16 bytes are all the same
    (all zeros, all 0xff, as cheap firmware reports) is refused, because it
    would not tell one host from another.
    """
    digits = text.strip().replace("-", "")
    try:
        value = uuid.UUID(hex=digits) if len(digits) == 32 else None
    except ValueError:
        value = None
    if value is None or len(set(value.bytes)) == 1:
        raise ValueError(f"invalid host UUID: {text}")
    return str(value)


# libvirt refuses an explicit tcp_min_ssf below this (remote_daemon_config.c,
# SSF_WARNING_LEVEL); its default, 56 (single DES), is kept for old clients.
MIN_TCP_SSF = 112


def _rule_host_uuid(value: str | None) -> str | None:
    try:
        parse_uuid(value or "")
    except ValueError as exc:
        return str(exc)
    return None


# key -> a check of a value other than the default: the reason it is refused,
# or None. Defaults always pass, so the shipped file (which lists them) loads.
_RULES: dict[str, Callable[[Any], str | None]] = {
    "unix_sock_dir": lambda v: None if v is None or v.startswith("/")
    else f"expected an absolute directory, got {v!r}",
    "tcp_min_ssf": lambda v: None if v >= MIN_TCP_SSF
    else f"minimum SSF levels lower than {MIN_TCP_SSF} are not supported",
    "host_uuid": _rule_host_uuid,
    "audit_level": lambda v: None if v != 2
    else "pyvirtd writes no audit records, so audit_level 2 (refuse to run "
         "without auditing) can never be met; use 0 or 1",
    "audit_logging": lambda v: None if not v
    else "pyvirtd writes no audit records, so there are none to copy into its log",
    "cgroup_device_acl": lambda v: next(
        (f"expected absolute paths under /dev, got {p!r}" for p in v
         if not p.startswith("/dev/") or "/../" in p + "/"), None),
    "qemu_monitor_timeout": lambda v: None if v >= 1
    else f"expected at least 1 second, got {v}",
    "ovs_timeout": lambda v: "pyvirtd never calls ovs-vsctl (it does not plug "
    "Open vSwitch ports), so this timeout would change nothing; remove the key",
}


# Keys whose wrong values are not repeated in the error: an admin may have
# pasted a password into an endpoint by mistake, and errors reach the log.
_NOT_ECHOED = frozenset({"esx_endpoints"})

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Config)}


def _hints() -> dict[str, Any]:
    """Field name -> resolved type hint (``from __future__`` makes them strings)."""
    names = {f.name for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config, include_extras=True)
    return {name: hints[name] for name in names}


class _Mismatch(Exception):
    """A value does not fit a type; carries the type's description."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _check(hint: Any, value: Any) -> Any:
    """Return ``value`` converted to ``hint`` (lists become tuples), or raise.

    Supports exactly the shapes `Config` uses: bool, int, str, None, unions,
    Literal, ``tuple[T, ...]`` and ``Annotated[str, Pattern]``. bool is a
    subclass of int in Python, so it is refused explicitly where an int is
    wanted: ``max_clients: true`` is a mistake, not 1.
    """
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *markers = typing.get_args(hint)
        try:
            value = _check(base, value)
        except _Mismatch:
            raise _Mismatch(_describe(hint)) from None
        for marker in markers:
            if isinstance(marker, Pattern) and not re.fullmatch(marker.regex, value):
                raise _Mismatch(marker.description)
        return value
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check(option, value)
            except _Mismatch:
                pass
        raise _Mismatch(_describe(hint))
    if origin is Literal:
        for allowed in typing.get_args(hint):
            if type(value) is type(allowed) and value == allowed:
                return value
        raise _Mismatch(_describe(hint))
    if origin is tuple:
        if not isinstance(value, list):
            raise _Mismatch(_describe(hint))
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        out = []
        for i, v in enumerate(value):
            try:
                out.append(_check(item, v))
            except _Mismatch as exc:
                # a record (an endpoint) says which of its keys is wrong
                detail = f" (item {i}: {exc.expected})" if dataclasses.is_dataclass(item) else ""
                raise _Mismatch(_describe(hint) + detail) from None
        return tuple(out)
    if dataclasses.is_dataclass(hint):
        return _check_record(hint, value)
    if hint is type(None):
        if value is None:
            return None
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str):
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"config type {hint!r} is not supported by _check")
    raise _Mismatch(_describe(hint))


def _check_record(cls: Any, value: Any) -> Any:
    """A mapping with ``cls``'s fields (a dataclass: an endpoint) as an instance of it."""
    if not isinstance(value, Mapping):
        raise _Mismatch("a mapping with name, host, credentials_file and optionally port, "
                        "ca_file, insecure")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in value if k not in fields]
    missing = [n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in value]
    if unknown or missing:
        raise _Mismatch("; ".join(
            ([f"unknown key {', '.join(map(repr, unknown))}"] if unknown else [])
            + ([f"missing {', '.join(map(repr, missing))}"] if missing else [])))
    out = {}
    for key, item in value.items():
        try:
            out[key] = _check(hints[key], item)
        except _Mismatch as exc:
            raise _Mismatch(f"{key!r} must be {exc.expected}") from None
    return cls(**out)


def _rule_esx_endpoints(endpoints: tuple[EsxEndpoint, ...]) -> str | None:
    names = [e.name for e in endpoints]
    for e in endpoints:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", e.name):
            return f"endpoint name {e.name!r}: letters, digits, '.', '_' and '-' only"
        for key in ("credentials_file", "ca_file"):
            path = getattr(e, key)
            if path is not None and not path.startswith("/"):
                return f"endpoint {e.name!r}: {key} must be an absolute path, got {path!r}"
        if not 0 < e.port < 65536:
            return f"endpoint {e.name!r}: port {e.port} is out of range"
    dup = sorted({n for n in names if names.count(n) > 1})
    return f"endpoint names must be unique: {', '.join(dup)}" if dup else None


_RULES["esx_endpoints"] = _rule_esx_endpoints


_NAMES = {
    bool: "true or false",
    int: "an integer",
    str: "a string",
    type(None): "null",
    EsxEndpoint: "a vSphere endpoint",
}


def _describe(hint: Any) -> str:
    """Words for an admin, e.g. ``a string or null``, ``one of 'none', 'sasl'``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        return next(
            (m.description for m in args[1:] if isinstance(m, Pattern)),
            _describe(args[0]),
        )
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ')}s"
    return _NAMES.get(hint, repr(hint))


def _kind(value: Any) -> str:
    """A YAML-ish name for the type of a top-level document."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"
