"""The host secret driver: libvirt's secret driver for qemu:// and lxc:// connections.

`SecretSubsystem(ctx)` is created once per daemon (``pyvirtd.driver.
shared_subsystems``) and answers the ten secret procedures of every
hypervisor connection (`objects.SecretProcedures`); lifecycle and
value-changed events go to ``ctx.events`` (kind "secret").  Persistent
secrets are kept in ``state_dir/secrets`` with their values encrypted by a
per-host key (`store`); ephemeral ones live in memory only.

API for the daemon's own users of secrets (iSCSI CHAP, LUKS volumes, ...),
which may read private secrets that clients may not::

    secrets = ctx.services.secrets                          # api.SecretService
    password = secrets.value_of("iscsi", "libvirtiscsi")     # by usage
    key = secrets.value_of_uuid("0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f")

Both raise VirError VIR_ERR_NO_SECRET for an unknown secret or one without
a value.
"""

from __future__ import annotations

import os

from pyvirtd.driver import DriverContext, SubsystemError
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import parse_uuid
from pyvirtd.xml import secret as secxml

from .objects import Secret, SecretList, SecretProcedures
from .store import EncryptionKeyError, SecretStore

__all__ = ["SecretSubsystem", "Secret", "SecretList", "SecretProcedures"]


class SecretSubsystem(SecretProcedures):
    """Every secret of the daemon, served to every hypervisor connection."""

    def __init__(self, ctx: DriverContext) -> None:
        self.events = ctx.events
        self.secrets = SecretList()
        self.secret_store = SecretStore(ctx.paths.state_dir,
                                        os.environ.get("CREDENTIALS_DIRECTORY"))
        try:
            loaded = self.secret_store.load()
        except EncryptionKeyError as exc:
            raise SubsystemError(str(exc)) from None
        for secret in loaded:
            self.secrets.add(secret)

    def value_of(self, usage_type: str, usage_id: str) -> bytes:
        """The value of the secret for this usage (``"iscsi"``, ``"ceph"``, ...)."""
        number = secxml.USAGE_TYPES[usage_type][0]
        return self.secrets.value(self.secrets.by_usage(number, usage_id))

    def uuid_of_usage(self, usage_type: str, usage_id: str) -> str | None:
        """The UUID (text) of the secret for this usage, or None: no error wanted."""
        found = self.secrets.find_usage(secxml.USAGE_TYPES[usage_type][0], usage_id)
        return found.key if found is not None else None

    def value_of_uuid(self, uuid: str | bytes, usage_type: str | None = None) -> bytes:
        """The value of the secret with this UUID (text as in XML, or 16 bytes).

        With ``usage_type``, a secret of another usage is VIR_ERR_INVALID_ARG, as
        libvirt's virSecretGetSecretString refuses it (a Ceph key is no CHAP password).
        """
        raw = uuid if isinstance(uuid, bytes) else parse_uuid(uuid, domain=P.VIR_FROM_SECRET)
        secret = self.secrets.by_uuid(raw)
        actual = secret.definition.usage_type
        if usage_type is not None and actual != usage_type:
            raise VirError(P.VIR_ERR_INVALID_ARG, domain=P.VIR_FROM_SECRET, detail=(
                f"secret with uuid {secret.key} is of type '{actual}' not expected "
                f"'{usage_type}' type"))
        return self.secrets.value(secret)
