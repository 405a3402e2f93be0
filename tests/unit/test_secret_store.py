"""The host secret driver in process: the daemon's own accessor, the store's files, loading.

The client-visible behaviour is tested with virsh and python-libvirt in
tests/integration/test_secrets.py; here is what no client can see.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from pyvirtd import driver as driver_mod
from pyvirtd.config import Config
from pyvirtd.driver import DriverContext, SubsystemError, shared_subsystems
from pyvirtd.errors import VirError
from pyvirtd.paths import Paths
from pyvirtd.rpc import _generated as P
from pyvirtd.secrets import SecretSubsystem
from pyvirtd.secrets.store import uuid_path

UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
RAW = bytes.fromhex(UUID.replace("-", ""))
PRIVATE_ISCSI = (f"<secret ephemeral='no' private='yes'><uuid>{UUID}</uuid>"
                 "<usage type='iscsi'><target>libvirtiscsi</target></usage></secret>")


def ctx(root: Path) -> DriverContext:
    return DriverContext(Config(), Paths.for_root(root), privileged=False)


def test_a_subsystem_that_cannot_be_imported_stops_the_daemon(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(driver_mod, "SUBSYSTEMS",
                        (("secret", "pyvirtd.no_such_module", "SecretSubsystem"),))
    with pytest.raises(SubsystemError, match=r"^secret subsystem \(pyvirtd.no_such_module"
                                             r".SecretSubsystem\): ModuleNotFoundError"):
        shared_subsystems(ctx(tmp_path))


def test_the_secret_subsystem_is_shared(tmp_path) -> None:
    c = ctx(tmp_path)
    subs = shared_subsystems(c)
    assert c.services.secrets in subs and isinstance(c.services.secrets, SecretSubsystem)
    assert shared_subsystems(c) == subs


async def test_the_daemon_reads_a_private_value_that_clients_may_not(tmp_path) -> None:
    sub = SecretSubsystem(ctx(tmp_path))
    ref = await sub.secret_define_xml(PRIVATE_ISCSI, 0)
    with pytest.raises(VirError) as exc:
        sub.value_of("iscsi", "libvirtiscsi")
    assert exc.value.code == P.VIR_ERR_NO_SECRET
    await sub.secret_set_value(ref, b"chap-password", 0)
    assert sub.value_of("iscsi", "libvirtiscsi") == b"chap-password"
    assert sub.value_of_uuid(UUID) == b"chap-password"
    with pytest.raises(VirError) as exc:
        sub.secret_get_value(ref, 0)
    assert exc.value.code == P.VIR_ERR_INVALID_SECRET
    with pytest.raises(VirError) as exc:
        sub.value_of("ceph", "libvirtiscsi")
    assert exc.value.code == P.VIR_ERR_NO_SECRET
    # a new daemon on the same files has it too
    assert SecretSubsystem(ctx(tmp_path)).value_of_uuid(UUID) == b"chap-password"


async def test_a_plain_value_file_is_encrypted_at_load(tmp_path) -> None:
    """A value as libvirt before 10.x stored it (UUID.base64) is read, then kept encrypted."""
    d = tmp_path / "lib" / "secrets"
    d.mkdir(parents=True)
    (d / f"{UUID}.xml").write_text(PRIVATE_ISCSI)
    (d / f"{UUID}.base64").write_text(base64.b64encode(b"old value").decode())
    sub = SecretSubsystem(ctx(tmp_path))
    assert sub.value_of_uuid(UUID) == b"old value"
    assert sorted(p.name for p in d.iterdir()) == [f"{UUID}.aes256gcm", f"{UUID}.xml"]
    assert b"old value" not in (d / f"{UUID}.aes256gcm").read_bytes()


async def test_a_damaged_value_file_is_logged_and_the_secret_kept(tmp_path, caplog) -> None:
    sub = SecretSubsystem(ctx(tmp_path))
    ref = await sub.secret_define_xml(PRIVATE_ISCSI, 0)
    await sub.secret_set_value(ref, b"v", 0)
    path = tmp_path / "lib" / "secrets" / f"{UUID}.aes256gcm"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):
        again = SecretSubsystem(ctx(tmp_path))
    assert f"secret {UUID}: its value cannot be read (InvalidTag)" in caplog.text
    assert [s.key for s in again.secrets] == [UUID]
    with pytest.raises(VirError) as exc:
        again.value_of_uuid(UUID)
    assert exc.value.code == P.VIR_ERR_NO_SECRET


def test_secret_file_names_come_from_uuid_bytes_only(tmp_path) -> None:
    assert uuid_path(tmp_path, RAW, ".xml") == tmp_path / f"{UUID}.xml"
    # 16 bytes of anything are a UUID, written in hex: the name stays in the directory
    assert uuid_path(tmp_path, b"../../etc/passwd", ".xml") == \
        tmp_path / "2e2e2f2e-2e2f-6574-632f-706173737764.xml"
    for bad in (b"../etc/passwd", b"", RAW + b"/"):
        with pytest.raises(ValueError):
            uuid_path(tmp_path, bad, ".xml")
