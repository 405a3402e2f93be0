"""Persistent secrets on disk, their values encrypted with a per-host key.

Layout, as libvirt's secret driver keeps one definition and one value file
per secret (src/conf/virsecretobj.c), in ``state_dir/secrets`` (mode 0700)::

    UUID.xml          the definition, mode 0600
    UUID.aes256gcm    the value: a 12-byte nonce, then the AES-256-GCM
                      ciphertext and tag, with the UUID as associated data
                      (a value file copied onto another secret does not
                      decrypt), mode 0600
    UUID.base64       a plain value as libvirt before 10.x wrote it; read at
                      start, rewritten encrypted and removed

libvirt ≥ 10 encrypts with AES-256-CBC into ``UUID.aes256cbc``; pyvirtd uses
an authenticated mode, so a damaged or swapped value file is refused rather
than decrypted to garbage, and names its files after that mode.

The key (32 bytes) lives outside that directory, so a copy of the secrets
directory (a backup, a config-management checkout) discloses no value:

1. ``$CREDENTIALS_DIRECTORY/secrets-encryption-key`` when that file exists:
   the systemd credential libvirt ≥ 10 uses (``LoadCredentialEncrypted=``
   in the unit, see systemd/pyvirtd.service), never written by pyvirtd;
2. else ``state_dir/secrets-encryption-key``, 32 random bytes, mode 0600,
   made the first time a value is stored.

A key of the wrong length stops the daemon at start (as libvirt's secret
driver refuses to initialise); a value file that does not decrypt is logged
as an error and its secret is loaded without a value.

Ephemeral secrets never reach this module.  Every method that touches the
disk is synchronous and runs on a worker thread (the async wrappers).
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import trio
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pyvirtd.errors import VirError
from pyvirtd.files import write_atomic
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import secret as secxml

from .objects import Secret

log = logging.getLogger(__name__)
_FROM = P.VIR_FROM_SECRET

KEY_NAME = "secrets-encryption-key"     # libvirt's credential name
KEY_LEN = 32                            # AES-256; VIR_SECRETS_ENCRYPTION_KEY_LEN
NONCE_LEN = 12                          # GCM's standard nonce size
VALUE_SUFFIX = ".aes256gcm"
PLAIN_SUFFIX = ".base64"


class EncryptionKeyError(Exception):
    """The encryption key cannot be used: the daemon must not start."""


def uuid_path(directory: Path, uuid: bytes, suffix: str) -> Path:
    """``directory/UUID+suffix`` built from the 16 raw UUID bytes only.

    No client text ever reaches a secret's file name: the UUID is formatted
    from its bytes (a malformed one raises ValueError), so ``/`` or ``..``
    cannot appear in it.
    """
    if len(uuid) != 16:
        raise ValueError(f"a UUID has 16 bytes, not {len(uuid)}")
    return directory / f"{format_uuid(uuid)}{suffix}"


def _system_error(action: str, path: Path, exc: OSError) -> VirError:
    return VirError(P.VIR_ERR_SYSTEM_ERROR, f"{action} '{path}': {exc.strerror or exc}",
                    domain=_FROM)


def _write_error(path: Path, exc: OSError | EncryptionKeyError) -> VirError:
    if isinstance(exc, EncryptionKeyError):
        return VirError(P.VIR_ERR_INTERNAL_ERROR, str(exc), domain=_FROM)
    return _system_error("cannot write", path, exc)


class SecretStore:
    """The secrets directory of one daemon, and the key of its values."""

    def __init__(self, state_dir: Path, credentials_dir: str | None = None) -> None:
        self.dir = Path(state_dir) / "secrets"
        self.key_file = Path(state_dir) / KEY_NAME
        self.credential: Path | None = None
        if credentials_dir:
            cred = Path(credentials_dir) / KEY_NAME
            if cred.exists():
                self.credential = cred
        self._key: bytes | None = None
        # one mutation at a time: a define's checks and its writes are one step
        self.lock = trio.Lock()

    # ----------------------------------------------------------------- key
    def _read_key(self, path: Path) -> bytes:
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise EncryptionKeyError(f"cannot read the secrets encryption key '{path}': "
                            f"{exc.strerror or exc}") from None
        if len(key) != KEY_LEN:
            raise EncryptionKeyError(f"the secrets encryption key '{path}' must be {KEY_LEN} bytes, "
                            f"not {len(key)}")
        return key

    def load_key(self) -> bytes | None:
        """The key if one exists (credential first), None if none was made yet."""
        if self._key is None:
            if self.credential is not None:
                self._key = self._read_key(self.credential)
            elif self.key_file.exists():
                mode = self.key_file.stat().st_mode & 0o777
                if mode & 0o077:
                    log.error("secrets encryption key %s has mode %o: others can read it; "
                              "it should be 0600", self.key_file, mode)
                self._key = self._read_key(self.key_file)
        return self._key

    def _key_for_writing(self) -> bytes:
        key = self.load_key()
        if key is not None:
            return key
        key = os.urandom(KEY_LEN)
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        try:    # O_EXCL: never replace a key that values were encrypted with
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self._key = self._read_key(self.key_file)
            return self._key
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("made the secrets encryption key %s", self.key_file)
        self._key = key
        return key

    def _encrypt(self, uuid: bytes, value: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + AESGCM(self._key_for_writing()).encrypt(
            nonce, value, format_uuid(uuid).encode())

    def _decrypt(self, uuid: bytes, data: bytes) -> bytes:
        key = self.load_key()
        if key is None:
            raise ValueError("no encryption key")
        return AESGCM(key).decrypt(data[:NONCE_LEN], data[NONCE_LEN:], format_uuid(uuid).encode())

    # ------------------------------------------------------------- loading
    def load(self) -> list[Secret]:
        """Every stored secret with its value (daemon start; small local files).

        Raises EncryptionKeyError when a key exists but cannot be used.
        """
        self.load_key()
        if not self.dir.is_dir():
            return []
        found = []
        for path in sorted(self.dir.glob("*.xml")):
            try:
                definition = secxml.parse(path.read_text())
            except (OSError, VirError) as exc:
                log.error("secret %s: cannot load: %s", path, exc)
                continue
            if path.name != format_uuid(definition.uuid) + ".xml" or definition.ephemeral:
                log.error("secret %s: its name is not its UUID or it is ephemeral; "
                          "not loaded", path)
                continue
            found.append(Secret(definition, self._load_value(definition.uuid)))
        return found

    def _load_value(self, uuid: bytes) -> bytes | None:
        path = uuid_path(self.dir, uuid, VALUE_SUFFIX)
        plain = uuid_path(self.dir, uuid, PLAIN_SUFFIX)
        try:
            if path.exists():
                return self._decrypt(uuid, path.read_bytes())
            if plain.exists():
                value = base64.b64decode(plain.read_bytes(), validate=True)
                self._write_value(uuid, value)
                plain.unlink()
                log.info("secret %s: plain value file encrypted", format_uuid(uuid))
                return value
        except (OSError, ValueError, InvalidTag) as exc:
            log.error("secret %s: its value cannot be read (%s); loaded without a value",
                      format_uuid(uuid), type(exc).__name__ if isinstance(exc, InvalidTag)
                      else exc)
        return None

    # ------------------------------------------------------------- writing
    def _write_value(self, uuid: bytes, value: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(uuid_path(self.dir, uuid, VALUE_SUFFIX), self._encrypt(uuid, value))

    def _remove_values(self, uuid: bytes) -> None:
        for suffix in (VALUE_SUFFIX, PLAIN_SUFFIX):
            uuid_path(self.dir, uuid, suffix).unlink(missing_ok=True)

    def _save_definition(self, new: secxml.SecretDef, old: secxml.SecretDef | None,
                         value: bytes | None) -> None:
        xml = uuid_path(self.dir, new.uuid, ".xml")
        if new.ephemeral:
            if old is not None and not old.ephemeral:   # no longer kept: forget the files
                try:
                    xml.unlink(missing_ok=True)
                except OSError as exc:
                    raise _system_error("cannot unlink", xml, exc) from None
                self._remove_values(new.uuid)
            return
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        wrote_value = False
        try:
            if old is not None and old.ephemeral and value is not None:
                self._write_value(new.uuid, value)
                wrote_value = True
            write_atomic(xml, secxml.format(new))
        except (OSError, EncryptionKeyError) as exc:
            if wrote_value:
                self._remove_values(new.uuid)
            raise _write_error(xml, exc) from None

    def _delete(self, definition: secxml.SecretDef) -> None:
        if definition.ephemeral:
            return
        xml = uuid_path(self.dir, definition.uuid, ".xml")
        try:
            xml.unlink(missing_ok=True)
        except OSError as exc:
            raise _system_error("cannot unlink", xml, exc) from None
        try:    # the definition is gone: a stale value file is never loaded again
            self._remove_values(definition.uuid)
        except OSError as exc:
            log.error("secret %s: cannot remove its value file: %s",
                      format_uuid(definition.uuid), exc)

    def _save_value(self, definition: secxml.SecretDef, value: bytes) -> None:
        if definition.ephemeral:
            return
        path = uuid_path(self.dir, definition.uuid, VALUE_SUFFIX)
        try:
            self._write_value(definition.uuid, value)
        except (OSError, EncryptionKeyError) as exc:
            raise _write_error(path, exc) from None

    # ------------------------------------------------ async, off the loop
    async def save_definition(self, new: secxml.SecretDef, old: secxml.SecretDef | None,
                              value: bytes | None) -> None:
        """Store a (re)definition; ``value`` is the secret's current one, if any."""
        await trio.to_thread.run_sync(self._save_definition, new, old, value)

    async def delete(self, definition: secxml.SecretDef) -> None:
        await trio.to_thread.run_sync(self._delete, definition)

    async def save_value(self, definition: secxml.SecretDef, value: bytes) -> None:
        await trio.to_thread.run_sync(self._save_value, definition, value)
