"""Encrypted disks: the LUKS passphrase reaches QEMU encrypted, never in clear.

A disk with ``<encryption format='luks'><secret type='passphrase'
uuid='...'/></encryption>`` (disk-level, as libvirt >= 9 writes it, or
inside <source>) is opened by QEMU's ``luks`` block driver (a raw image) or
by ``qcow2`` with ``encrypt.format=luks``, whose ``key-secret`` names a QEMU
``secret`` object.  As libvirt does (qemuDomainSecretAESSetup):

* each running guest has a master key, 32 random bytes in a file of its own
  (``run_dir/qemu/NAME.master-key.aes``, mode 0600, handed to QEMU's user
  on a confined host), given to QEMU as
  ``-object secret,id=masterKey0,format=raw,file=PATH``;
* each passphrase is encrypted with AES-256-CBC under that key and a fresh
  IV (PKCS#7 padded, which QEMU strips) and given as
  ``-object secret,id=libvirt-N-format-encryption-secret0,data=B64,
  keyid=masterKey0,iv=B64,format=base64``, or with QMP ``object-add`` when
  the disk is hotplugged.

So neither argv (``ps``), the guest's log nor its XML holds the passphrase.
The key file goes when the guest stops.  The secret is read by the daemon
from its secret subsystem (`passphrase`, the one place that asks for it), a
private one too; an unknown secret, one of another usage or without a value
stops the start with the secret driver's error, before anything is made.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pyvirtd.errors import VirError
from pyvirtd.names import name_path
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import devices as devmod
from pyvirtd.xml import domain as domxml
from pyvirtd.xml import encryption as encxml

if TYPE_CHECKING:
    from .guest import QemuState

MASTER_KEY_ID = "masterKey0"
MASTER_KEY_LEN = 32          # AES-256
_IV_LEN = 16


@dataclass
class DiskSecrets:
    """What build_command needs for a guest's encrypted disks."""
    master_key: bytes
    master_key_path: str
    passphrases: dict[str, bytes] = field(default_factory=dict)    # disk target -> value


def disk_encryption(disk: devmod.Disk) -> encxml.Encryption | None:
    """The disk's <encryption>, at disk level or inside <source>; None if it has none."""
    for elem in (*disk.extra, *disk.source_children):
        if elem.tag == "encryption":
            return encxml.parse(elem)
    return None


def check(disk: devmod.Disk) -> None:
    """What the QEMU driver refuses in a disk's <encryption> at define
    (qemuValidateDomainDeviceDefDisk): the old qcow encryption."""
    enc = disk_encryption(disk)
    if enc is not None and enc.format == "qcow":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, "old qcow/qcow2 encryption is not supported",
                       domain=P.VIR_FROM_QEMU)


def set_engine(disk: devmod.Disk) -> None:
    """libvirt's QEMU post-parse: an <encryption> without engine gets engine='qemu'."""
    for elem in (*disk.extra, *disk.source_children):
        if elem.tag == "encryption" and elem.get("engine") in (None, "default"):
            elem.set("engine", "qemu")


def passphrase(state: "QemuState", enc: encxml.Encryption) -> bytes:
    """The passphrase of one disk, read from the daemon's secret subsystem."""
    if enc.format != "luks":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED, f"'{enc.format}' is currently not "
                       "supported by the qemu encryption engine", domain=P.VIR_FROM_QEMU)
    return enc.passphrase(state.ctx.services.secrets)


def encrypted_disks(defn: domxml.DomainDef) -> list[tuple[devmod.Disk, encxml.Encryption]]:
    out = []
    for dev in devmod.parse_devices(defn):
        if isinstance(dev, devmod.Disk):
            enc = disk_encryption(dev)
            if enc is not None:
                out.append((dev, enc))
    return out


# -- the master key --------------------------------------------------------------------

def master_key_path(state: "QemuState", name: str) -> Path:
    return name_path(state.store.run_dir, name, ".master-key.aes")


def write_master_key(path: Path) -> bytes:
    """A new master key in ``path`` (0600, written before anyone can open it)."""
    key = os.urandom(MASTER_KEY_LEN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def read_master_key(path: Path) -> bytes | None:
    """The running guest's master key, None if it has none (no encrypted disk yet)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) == MASTER_KEY_LEN else None


def remove_master_key(path: Path) -> None:
    path.unlink(missing_ok=True)


async def prepare(state: "QemuState", name: str, live: domxml.DomainDef) -> DiskSecrets | None:
    """Every passphrase of ``live`` (errors before anything is made), then a master
    key when there is one at all."""
    found = {disk.target: passphrase(state, enc) for disk, enc in encrypted_disks(live)}
    if not found:
        return None
    path = master_key_path(state, name)
    key = await trio.to_thread.run_sync(write_master_key, path)
    return DiskSecrets(key, str(path), found)


# -- what QEMU gets ----------------------------------------------------------------------

def master_key_object(path: str) -> dict:
    return {"qom-type": "secret", "id": MASTER_KEY_ID, "format": "raw", "file": path}


def secret_alias(format_node: str) -> str:
    return f"{format_node}-encryption-secret0"


def secret_object(alias: str, value: bytes, master_key: bytes) -> dict:
    """A QEMU secret whose data is ``value`` encrypted under the master key."""
    iv = os.urandom(_IV_LEN)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(value) + padder.finalize()
    enc = Cipher(algorithms.AES(master_key), modes.CBC(iv)).encryptor()
    data = enc.update(plain) + enc.finalize()
    return {"qom-type": "secret", "id": alias, "data": base64.b64encode(data).decode(),
            "keyid": MASTER_KEY_ID, "iv": base64.b64encode(iv).decode(), "format": "base64"}


def encrypt_format_node(fmt: dict, alias: str) -> None:
    """Make a format node's blockdev properties open the image with the secret
    ``alias``: a raw image is a LUKS container, a qcow2 one encrypts inside."""
    driver = fmt.get("driver") or "raw"
    file_ref = fmt.pop("file", None)
    if driver == "raw":
        fmt.update({"driver": "luks", "key-secret": alias})
    else:
        fmt["encrypt"] = {"format": "luks", "key-secret": alias}
    if file_ref is not None:       # libvirt names the file last
        fmt["file"] = file_ref
