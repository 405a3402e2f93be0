"""The polkit access driver's mapping from procedures to actions and details (no D-Bus)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import trio

from pyvirtd.auth import polkit
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

PROCS = {p.name: p for p in P.PROCEDURES if p.program == "remote"}
UUID = uuid.UUID("6695eb01-f6a4-8304-79aa-97f2502e193f")


def client(uid: int = 1000):
    return SimpleNamespace(identity=SimpleNamespace(pid=123, uid=uid, gid=uid),
                           conn=SimpleNamespace(uri="qemu:///system"))


@pytest.fixture
def asked(monkeypatch):
    """Record what would go to polkitd; deny anything that names 'hidden'."""
    log = []

    async def fake(pid, uid, requests):
        log.extend(requests)
        return ["hidden" not in details.values() for _, details in requests]
    monkeypatch.setattr(polkit, "check_authorization", fake)
    return log


def dom(name: str):
    return P.remote_nonnull_domain(name, UUID.bytes, -1)


def test_action_ids() -> None:
    assert polkit.action_id("domain", "read_secure") == "org.libvirt.api.domain.read-secure"
    assert polkit.action_id("storage_pool", "getattr") == "org.libvirt.api.storage-pool.getattr"


def test_flag_conditions() -> None:
    assert polkit._flags_apply("", 0)
    assert polkit._flags_apply("VIR_DOMAIN_XML_SECURE", 1)
    assert not polkit._flags_apply("VIR_DOMAIN_XML_SECURE", 0)
    # "!A|B": checked when neither flag is given (the current-state default)
    assert polkit._flags_apply("!VIR_DOMAIN_AFFECT_CONFIG|VIR_DOMAIN_AFFECT_LIVE", 0)
    assert not polkit._flags_apply("!VIR_DOMAIN_AFFECT_CONFIG|VIR_DOMAIN_AFFECT_LIVE", 2)


async def test_domain_call_details(asked) -> None:
    proc = PROCS["DOMAIN_GET_XML_DESC"]
    args = P.remote_domain_get_xml_desc_args(dom("vm1"), 1)      # VIR_DOMAIN_XML_SECURE
    await polkit.PolkitAccess().check_call(client(), proc, args)
    assert asked == [
        ("org.libvirt.api.domain.read", {"connect_driver": "QEMU", "domain_name": "vm1",
                                         "domain_uuid": str(UUID)}),
        ("org.libvirt.api.domain.read-secure", {"connect_driver": "QEMU", "domain_name": "vm1",
                                                "domain_uuid": str(UUID)}),
    ]


async def test_denied_call_raises(asked) -> None:
    proc = PROCS["DOMAIN_CREATE"]
    with pytest.raises(VirError) as info:
        await polkit.PolkitAccess().check_call(client(), proc, P.remote_domain_create_args(
            dom("hidden")))
    assert info.value.code == P.VIR_ERR_ACCESS_DENIED
    assert "org.libvirt.api.domain.start" in info.value.message


async def test_define_checks_the_xml_name(asked) -> None:
    proc = PROCS["DOMAIN_DEFINE_XML"]
    with pytest.raises(VirError):
        await polkit.PolkitAccess().check_call(
            client(), proc, P.remote_domain_define_xml_args("<domain><name>hidden</name></domain>"))
    assert asked[0][0] == "org.libvirt.api.domain.write"


async def test_lookup_checked_on_result(asked) -> None:
    proc = PROCS["DOMAIN_LOOKUP_BY_NAME"]
    access = polkit.PolkitAccess()
    args = P.remote_domain_lookup_by_name_args("hidden")
    await access.check_call(client(), proc, args)      # nothing to check yet
    assert asked == []
    with pytest.raises(VirError):
        await access.check_result(client(), proc, args, dom("hidden"))


async def test_list_all_filtered(asked) -> None:
    proc = PROCS["CONNECT_LIST_ALL_DOMAINS"]
    result = ([dom("a"), dom("hidden"), dom("b")], 3)
    out = await polkit.PolkitAccess().check_result(client(), proc, None, result)
    assert [d.name for d in out[0]] == ["a", "b"] and out[1] == 2


async def test_name_list_filtered(asked) -> None:
    proc = PROCS["CONNECT_LIST_DEFINED_DOMAINS"]
    out = await polkit.PolkitAccess().check_result(client(), proc, None, ["a", "hidden"])
    assert out == ["a"]


async def test_no_identity_denied(asked) -> None:
    proc = PROCS["CONNECT_LIST_ALL_DOMAINS"]
    c = client()
    c.identity = None         # a TCP/TLS client: no process to ask polkit about
    with pytest.raises(VirError):
        await polkit.PolkitAccess().check_call(c, proc, P.remote_connect_list_all_domains_args(1, 0))


def test_policy_defines_every_action() -> None:
    xml = polkit.policy_xml()
    for name in ("org.libvirt.unix.manage", "org.libvirt.api.domain.getattr",
                 "org.libvirt.api.domain.read-secure", "org.libvirt.api.connect.search-domains"):
        assert f'id="{name}"' in xml


def secret(usage_type: int, usage_id: str, raw: bytes = UUID.bytes):
    return P.remote_nonnull_secret(raw, usage_type, usage_id)


async def test_secret_define_is_checked_before_the_call_with_its_usage(asked) -> None:
    """libvirt checks secret:write and secret:save on the new definition, with
    the usage detail its polkit driver names (viraccessdriverpolkit.c)."""
    proc = PROCS["SECRET_DEFINE_XML"]
    xml = (f"<secret><uuid>{UUID}</uuid><usage type='iscsi'><target>hidden</target></usage>"
           "</secret>")
    with pytest.raises(VirError):
        await polkit.PolkitAccess().check_call(client(), proc,
                                               P.remote_secret_define_xml_args(xml, 0))
    details = {"connect_driver": "QEMU", "secret_uuid": str(UUID),
               "secret_usage_target": "hidden"}
    assert asked == [("org.libvirt.api.secret.write", details),
                     ("org.libvirt.api.secret.save", details)]


async def test_secret_value_needs_read_secure(asked) -> None:
    proc = PROCS["SECRET_GET_VALUE"]
    await polkit.PolkitAccess().check_call(client(), proc, P.remote_secret_get_value_args(
        secret(2, "client.admin"), 0))
    assert asked == [("org.libvirt.api.secret.read-secure",
                      {"connect_driver": "QEMU", "secret_uuid": str(UUID),
                       "secret_usage_ceph": "client.admin"})]


async def test_secret_uuid_list_and_count_are_filtered(asked) -> None:
    """CONNECT_LIST_SECRETS answers UUID strings: each is looked up, so the
    rules see its usage, and NUM_OF_SECRETS counts what the list shows."""
    hidden = uuid.UUID("11111111-2222-3333-4444-555555555555")
    secrets = {UUID.bytes: secret(3, "visible"), hidden.bytes: secret(3, "hidden", hidden.bytes)}

    def resolve(_client, proc):
        if proc.name == "SECRET_LOOKUP_BY_UUID":
            return (lambda _t, raw: secrets[bytes(raw)]), False, None
        assert proc.name == "CONNECT_LIST_SECRETS"
        return (lambda _t, maxuuids: [str(UUID), str(hidden)][:maxuuids]), False, None

    program = SimpleNamespace(resolve=resolve)
    access = polkit.PolkitAccess()
    out = await access.check_result(client(), PROCS["CONNECT_LIST_SECRETS"],
                                    P.remote_connect_list_secrets_args(10),
                                    [str(UUID), str(hidden)], program)
    assert out == [str(UUID)]
    count = await access.check_result(client(), PROCS["CONNECT_NUM_OF_SECRETS"], None, 2, program)
    assert count == 1
