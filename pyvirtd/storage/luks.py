"""LUKS-encrypted file volumes: qemu-img gets the passphrase in a private file, never in argv.

A volume whose XML has ``<encryption format='luks'><secret type='passphrase'
uuid='...'/></encryption>`` is created as libvirt's storage_util.c creates it:
``qemu-img create -f luks`` for a raw volume (the file is a LUKS container
whose payload the guest sees as raw) or ``-f qcow2 -o encrypt.format=luks``
for qcow2, with the passphrase handed over as ``--object
secret,id=ALIAS,file=PATH``.  PATH is a temporary file, mode 0600, in the
storage driver's run directory, removed as soon as qemu-img is done (also
when it fails or the call is cancelled).  Cloning decrypts the source with
its own secret and encrypts the copy with the new volume's.

What libvirt refuses is refused with its words (checked against libvirtd 9.0):
an encrypted format other than raw or qcow2, the old qcow encryption, not
exactly one passphrase secret; a secret that is unknown, of another usage or
without a value fails as the secret driver says.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml.encryption import FORMATS, Encryption, qemu_luks_options

_FROM = P.VIR_FROM_STORAGE

# what qemu-img can encrypt with LUKS (storageBackendCreateQemuImgCheckEncryption)
ENCRYPTABLE = ("raw", "qcow2")


def check_creatable(vol_format: str, enc: Encryption) -> None:
    """libvirt's checks before an encrypted volume is created (nothing is written yet)."""
    if vol_format not in ENCRYPTABLE:
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"volume encryption unsupported with format {vol_format}", domain=_FROM)
    if enc.format == "qcow":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,
                       f"creation of {vol_format} encrypted image is not supported", domain=_FROM)
    if enc.format != "luks":
        raise VirError(P.VIR_ERR_CONFIG_UNSUPPORTED,       # libvirt prints the enum's number
                       f"unsupported volume encryption format {FORMATS.index(enc.format)}",
                       domain=_FROM)
    enc.single_secret()


def _write_private(directory: Path, value: bytes) -> str:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="luks-", suffix=".secret", dir=directory)
    try:       # mkstemp makes it 0600 already; say so for whoever reads this
        os.fchmod(fd, 0o600)
        os.write(fd, value)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@asynccontextmanager
async def secret_file(directory: Path, value: bytes) -> AsyncIterator[str]:
    """A private file holding ``value`` while the block runs, gone afterwards."""
    path = await trio.to_thread.run_sync(_write_private, directory, value)
    try:
        yield path
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_unlink, path)


@asynccontextmanager
async def secret_args(directory: Path, value: bytes | None, alias: str) -> AsyncIterator[list[str]]:
    """qemu-img's ``--object secret,id=ALIAS,file=PATH`` for ``value`` (format=raw),
    the file private and present while the block runs; [] for no value."""
    if value is None:
        yield []
        return
    async with secret_file(directory, value) as path:
        yield ["--object", f"secret,id={alias},file={path.replace(',', ',,')}"]


def create_options(vol_format: str, enc: Encryption, alias: str) -> list[str]:
    """The -o options that make qemu-img encrypt with the secret ``alias``."""
    if vol_format == "raw":
        return [f"key-secret={alias}", *qemu_luks_options(enc)]
    return ["encrypt.format=luks", f"encrypt.key-secret={alias}",
            *qemu_luks_options(enc, "encrypt.")]


def output_format(vol_format: str) -> str:
    """qemu-img's -f/-O for an encrypted volume: a raw one is a LUKS container."""
    return "luks" if vol_format == "raw" else vol_format


def image_opts(path: str, vol_format: str, alias: str) -> str:
    """``--image-opts`` text that opens an encrypted image with the secret ``alias``."""
    path = path.replace(",", ",,")
    if vol_format == "raw":
        return f"driver=luks,key-secret={alias},file.filename={path}"
    return f"driver={vol_format},encrypt.format=luks,encrypt.key-secret={alias},file.filename={path}"


def known_encryption(vol: Any, secrets: Any) -> Encryption | None:
    """How ``vol`` is encrypted, with the secret that opens it when one is known.

    The secret a volume was created with is remembered (``vol.extra``) until
    its pool is refreshed; after that, as in libvirt, only a secret whose
    usage names the volume's path is found again.  None: not encrypted."""
    if vol.encryption is None:
        return None
    made = vol.extra.get("encryption")
    if made is not None:
        return made
    uuid = secrets.uuid_of_usage("volume", vol.path) if secrets is not None else None
    if uuid is None:
        return vol.encryption
    return Encryption(format=vol.encryption.format, secrets=((uuid, None),))


def probed(info: dict) -> Encryption | None:
    """The encryption ``qemu-img info --output=json`` reports (no secret in an image)."""
    if not info.get("encrypted"):
        return None
    if info.get("format") == "luks":
        return Encryption(format="luks")
    data = (info.get("format-specific") or {}).get("data") or {}
    fmt = (data.get("encrypt") or {}).get("format", "aes")
    return Encryption(format="luks" if fmt == "luks" else "qcow")
