"""Encrypted disks in QEMU's argv (drivers/qemu/disksecrets.py through command.py).

The guest test (tests/integration/qemu/test_luks_disks.py) proves QEMU opens
what this builds; here the shape of the argv is pinned down, and the secret
object's data is decrypted again with the master key as QEMU does (AES-256-CBC,
PKCS#7 padding), so a change in the scheme is caught without a guest.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pyvirtd.drivers.qemu import disksecrets
from pyvirtd.drivers.qemu.command import build_command
from pyvirtd.errors import VirError
from pyvirtd.xml import domain as domxml

UUID = "5ec1e7a0-0000-4000-8000-000000000001"
DOMAIN = """<domain type='qemu'><name>enc</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/a.raw'/>
  <target dev='vda' bus='virtio'/>
  <encryption format='luks'><secret type='passphrase' uuid='{uuid}'/></encryption></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/b.qcow2'>
  <encryption format='luks'><secret type='passphrase' uuid='{uuid}'/></encryption></source>
  <target dev='vdb' bus='virtio'/></disk>
</devices></domain>""".format(uuid=UUID)


def _argv(secrets: disksecrets.DiskSecrets | None) -> list[str]:
    return build_command(domxml.parse(DOMAIN), binary="qemu-system-x86_64",
                         monitor_path="/run/m.sock", disk_secrets=secrets)


def _objects(argv: list[str], opt: str) -> list[dict]:
    return [json.loads(argv[i + 1]) for i, a in enumerate(argv) if a == opt]


def _decrypt(obj: dict, key: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(base64.b64decode(obj["iv"]))).decryptor()
    padded = dec.update(base64.b64decode(obj["data"])) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def test_encrypted_disks_get_secret_objects_under_the_master_key():
    key = bytes(range(32))
    secrets = disksecrets.DiskSecrets(key, "/run/enc.master-key.aes",
                                      {"vda": b"correct horse", "vdb": b"battery staple"})
    argv = _argv(secrets)
    objects = _objects(argv, "-object")
    assert objects[0] == {"qom-type": "secret", "id": "masterKey0", "format": "raw",
                          "file": "/run/enc.master-key.aes"}
    by_id = {o["id"]: o for o in objects[1:]}
    assert set(by_id) == {"libvirt-1-format-encryption-secret0",
                          "libvirt-2-format-encryption-secret0"}
    for alias, value in (("libvirt-1-format-encryption-secret0", b"correct horse"),
                         ("libvirt-2-format-encryption-secret0", b"battery staple")):
        obj = by_id[alias]
        assert (obj["keyid"], obj["format"]) == ("masterKey0", "base64")
        assert _decrypt(obj, key) == value
    joined = " ".join(argv)
    assert "correct horse" not in joined and "battery staple" not in joined
    formats = [b for b in _objects(argv, "-blockdev") if b["node-name"].endswith("-format")]
    assert formats[0] == {"node-name": "libvirt-1-format", "read-only": False, "driver": "luks",
                          "key-secret": "libvirt-1-format-encryption-secret0",
                          "file": "libvirt-1-storage"}
    assert formats[1] == {"node-name": "libvirt-2-format", "read-only": False, "driver": "qcow2",
                          "encrypt": {"format": "luks",
                                      "key-secret": "libvirt-2-format-encryption-secret0"},
                          "file": "libvirt-2-storage"}
    # as libvirt: each secret object comes right before its disk's storage node
    i = argv.index(json.dumps(by_id["libvirt-1-format-encryption-secret0"],
                              separators=(",", ":")))
    assert json.loads(argv[i + 2])["node-name"] == "libvirt-1-storage"


def test_same_passphrase_gives_different_data_each_time():
    key = bytes(32)
    one = disksecrets.secret_object("s", b"same", key)
    two = disksecrets.secret_object("s", b"same", key)
    assert one["iv"] != two["iv"] and one["data"] != two["data"]


def test_an_encrypted_disk_without_its_secret_is_not_built():
    with pytest.raises(VirError) as info:
        _argv(None)
    assert "disk 'vda' is encrypted but its secret was not given" in info.value.message
