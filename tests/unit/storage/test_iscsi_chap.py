"""iSCSI CHAP from secrets: the node settings and the iscsiadm calls, with iscsiadm faked.

This host has no iSCSI initiator (the lab VM has one, tests/lab/); here the
backend's iscsiadm calls are recorded instead of run, so what is checked is
the command sequence libvirt's virStorageBackendISCSISetAuth makes: the CHAP
settings written into the node record (made first when missing), then login.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lxml import etree

from pyvirtd.config import Config
from pyvirtd.driver import DriverContext, shared_subsystems
from pyvirtd.errors import VirError
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.storage.backends import iscsi
from pyvirtd.storage.backends.iscsi import IscsiBackend, chap_settings

IQN = "iqn.2024-01.lab:target0"
UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def pool_tree(secret: str = "<secret usage='libvirtiscsi'/>", auth_type: str = "chap"):
    return etree.fromstring(
        f"<pool type='iscsi'><name>p</name><source><host name='127.0.0.1'/>"
        f"<device path='{IQN}'/><auth type='{auth_type}' username='alice'>{secret}</auth>"
        f"</source><target><path>/dev/disk/by-path</path></target></pool>")


@pytest.fixture
async def subsystems(tmp_path):
    ctx = DriverContext(Config(), Paths.for_root(tmp_path), privileged=False)
    shared_subsystems(ctx)
    secrets = ctx.services.secrets
    ref = await secrets.secret_define_xml(
        f"<secret private='yes'><uuid>{UUID}</uuid><usage type='iscsi'>"
        "<target>libvirtiscsi</target></usage></secret>", 0)
    await secrets.secret_set_value(ref, b"chap-s3cret", 0)
    await secrets.secret_define_xml(
        "<secret><uuid>1b92e6c3-9514-4c34-a9e7-32ddd3091e70</uuid><usage type='ceph'>"
        "<name>client.admin</name></usage></secret>", 0)
    return ctx


async def test_chap_settings_from_a_private_secret(subsystems) -> None:
    secrets = subsystems.services.secrets
    expected = [("node.session.auth.authmethod", "CHAP"),
                ("node.session.auth.username", "alice"),
                ("node.session.auth.password", "chap-s3cret")]
    assert chap_settings(pool_tree(), subsystems.services) == expected
    assert chap_settings(pool_tree(f"<secret uuid='{UUID}'/>"), subsystems.services) == expected
    # the storage subsystem hands the backend the daemon's services
    backend = subsystems.services.storage.backends["iscsi"]
    assert backend.services.secrets is secrets


@pytest.mark.parametrize("secret, auth_type, code, message", [
    ("<secret usage='nope'/>", "chap", P.VIR_ERR_NO_SECRET,
     "Secret not found: no secret with matching usage 'nope'"),
    ("<secret uuid='1b92e6c3-9514-4c34-a9e7-32ddd3091e70'/>", "chap", P.VIR_ERR_INVALID_ARG,
     "invalid argument: secret with uuid 1b92e6c3-9514-4c34-a9e7-32ddd3091e70 is of type "
     "'ceph' not expected 'iscsi' type"),
    ("<secret usage='libvirtiscsi'/>", "ceph", P.VIR_ERR_CONFIG_UNSUPPORTED,
     "unsupported configuration: iscsi pool only supports 'chap' auth type"),
])
async def test_chap_refusals(subsystems, secret, auth_type, code, message) -> None:
    with pytest.raises(VirError) as exc:
        chap_settings(pool_tree(secret, auth_type), subsystems.services)
    assert (exc.value.code, exc.value.message) == (code, message)


async def test_start_writes_chap_into_a_new_node_record_then_logs_in(subsystems,
                                                                     monkeypatch) -> None:
    """Fake iscsiadm: no node record at first (exit 21), then every call succeeds."""
    calls: list[tuple[str, ...]] = []
    state = {"record": False, "session": None}

    async def node(self, portal, iqn, *args, check=True):
        calls.append(args)
        if args[:2] == ("--op", "new"):
            state["record"] = True
        elif args[0] == "--login":
            state["session"] = "1"
        return SimpleNamespace(returncode=0 if state["record"] else iscsi.ISCSI_ERR_NO_OBJS_FOUND,
                               stderr=b"")

    async def session(self, pool):
        return state["session"]

    async def targets(portal):
        return [IQN]

    async def run(argv, check=True):
        return SimpleNamespace(returncode=0, stdout=b"", stderr=b"")

    monkeypatch.setattr(IscsiBackend, "_node", node)
    monkeypatch.setattr(IscsiBackend, "_session", session)
    monkeypatch.setattr(iscsi, "sendtargets", targets)
    monkeypatch.setattr(iscsi.tools, "run", run)
    backend = subsystems.services.storage.backends["iscsi"]
    await backend.start(SimpleNamespace(definition=SimpleNamespace(tree=pool_tree())))
    update = ("--op", "update", "--name")
    assert calls == [
        (*update, "node.session.auth.authmethod", "--value", "CHAP"),     # no record yet
        ("--op", "new"),
        (*update, "node.session.auth.authmethod", "--value", "CHAP"),
        (*update, "node.session.auth.username", "--value", "alice"),
        (*update, "node.session.auth.password", "--value", "chap-s3cret"),
        ("--login",),
    ]
