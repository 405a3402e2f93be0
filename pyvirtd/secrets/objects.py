"""Secrets as libvirt's secret driver serves them: the list, its rules, the ten procedures.

One implementation for both places that serve secrets:

- the daemon's host secret driver (`pyvirtd.secrets.SecretSubsystem`), which
  every qemu:// and lxc:// connection reaches and which keeps persistent
  secrets on disk through a `SecretStore`;
- the test driver (drivers/testdrv/secrets.py), which keeps them in memory per
  test state, as a test:/// connection through libvirtd sees the daemon's
  secret driver.

The rules are libvirt's (src/conf/virsecretobj.c, src/secret/secret_driver.c):
a secret is found by UUID, or by usage type and usage id (never for usage
``none``); redefining a UUID keeps its usage id and may not drop ``private``;
a new UUID may not take a usage another secret has; a private secret's value
never leaves through SECRET_GET_VALUE, although the daemon reads it
(`SecretList.value`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyvirtd.driver.objects import SECRET, ObjectList
from pyvirtd.errors import VirError, check_flags
from pyvirtd.events import EventBus
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import secret as secxml

if TYPE_CHECKING:
    from pyvirtd.secrets.store import SecretStore

_FROM = P.VIR_FROM_SECRET

# virConnectListAllSecretsFlags: the ephemeral and private filter pairs
LIST_ALL = SECRET.list_flags
EV_DEFINED = P.SecretEventLifecycleType.VIR_SECRET_EVENT_DEFINED
EV_UNDEFINED = P.SecretEventLifecycleType.VIR_SECRET_EVENT_UNDEFINED
DEFINE_VALIDATE = P.SecretDefineFlags.VIR_SECRET_DEFINE_VALIDATE


@dataclass(eq=False)
class Secret:
    """One defined secret and its value (None until SECRET_SET_VALUE)."""
    definition: secxml.SecretDef
    value: bytes | None = None

    @property
    def key(self) -> str:
        return format_uuid(self.definition.uuid)

    @property
    def name(self) -> str:
        """What a secret is listed and kept by: its UUID as text (it has no name)."""
        return self.key

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

    def ref(self) -> P.remote_nonnull_secret:
        d = self.definition
        return P.remote_nonnull_secret(d.uuid, d.usage_number, d.usage_id or "")


def _error(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=_FROM)


class SecretList(ObjectList[Secret]):
    """The defined secrets, by UUID string, in definition order.

    The generic list gives lookup by UUID (`by_uuid`: VIR_ERR_NO_SECRET),
    listing and the ephemeral/private filters (`list_all`); what is the
    secrets' own is the lookup by usage and the redefinition rules.
    """

    def __init__(self) -> None:
        super().__init__(SECRET)

    def by_uuid(self, uuid: bytes) -> Secret:
        """The secret with this UUID (kept by its text, so no scan); VIR_ERR_NO_SECRET if none."""
        secret = self.get(format_uuid(uuid))
        if secret is None:
            raise self.kind.not_found("uuid", f"'{format_uuid(uuid)}'")
        return secret

    def find_usage(self, usage_type: int, usage_id: str | None) -> Secret | None:
        if usage_type == P.SecretUsageType.VIR_SECRET_USAGE_TYPE_NONE:   # names nothing
            return None
        for s in self:
            d = s.definition
            if d.usage_number == usage_type and d.usage_id == usage_id:
                return s
        return None

    def by_usage(self, usage_type: int, usage_id: str) -> Secret:
        """The secret for this usage; VIR_ERR_NO_SECRET if none (nova relies on the code)."""
        secret = self.find_usage(usage_type, usage_id)
        if secret is None:
            raise _error(P.VIR_ERR_NO_SECRET, f"no secret with matching usage '{usage_id}'")
        return secret

    def check_define(self, new: secxml.SecretDef) -> Secret | None:
        """The secret ``new`` redefines (None for a new one), or libvirt's refusal."""
        key = format_uuid(new.uuid)
        existing = self.get(key)
        if existing is not None:
            old = existing.definition
            if old.usage_id != new.usage_id:
                raise _error(P.VIR_ERR_INTERNAL_ERROR,
                             f"a secret with UUID {key} is already defined for use with "
                             f"{old.usage_id}")
            if old.private and not new.private:
                raise _error(P.VIR_ERR_INTERNAL_ERROR,
                             "cannot change private flag on existing secret")
            return existing
        other = self.find_usage(new.usage_number, new.usage_id)
        if other is not None:
            raise _error(P.VIR_ERR_INTERNAL_ERROR,
                         f"a secret with UUID {other.key} already defined for use with "
                         f"{new.usage_id}")
        return None

    @staticmethod
    def value(secret: Secret) -> bytes:
        """A secret's value for the daemon's own use (private ones included)."""
        if secret.value is None:
            raise _error(P.VIR_ERR_NO_SECRET, f"secret '{secret.key}' does not have a value")
        return secret.value


class SecretProcedures:
    """The secret procedures over ``self.secrets``; events on ``self.events``.

    With a ``secret_store``, persistent secrets go to disk before memory
    changes (a failed write changes nothing), under the store's lock so that
    two clients' calls never interleave between the check and the write.
    Without one (the test driver) there is nothing to wait for.
    """

    secrets: SecretList
    events: EventBus
    secret_store: SecretStore | None = None

    def _emit_secret(self, secret: Secret, event_id: int, *fields: Any) -> None:
        self.events.emit("secret", event_id, secret.ref(), *fields)

    def _secret_lock(self) -> Any:
        store = self.secret_store
        return store.lock if store is not None else contextlib.nullcontext()

    # --- listing --------------------------------------------------------------

    def connect_num_of_secrets(self) -> int:
        return len(self.secrets)

    def connect_list_secrets(self, maxuuids: int) -> list[str]:
        return [s.key for s in self.secrets][:maxuuids]

    def connect_list_all_secrets(self, need_results: int, flags: int) -> tuple[list, int]:
        check_flags(flags, LIST_ALL, "secretConnectListAllSecrets", _FROM)
        found = [s.ref() for s in self.secrets.list_all(flags)]
        return (found if need_results else [], len(found))

    # --- lookup ---------------------------------------------------------------

    def secret_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_secret:
        return self.secrets.by_uuid(uuid).ref()

    def secret_lookup_by_usage(self, usage_type: int, usage_id: str) -> P.remote_nonnull_secret:
        return self.secrets.by_usage(usage_type, usage_id).ref()

    # --- definition -----------------------------------------------------------

    async def secret_define_xml(self, xml: str, flags: int) -> P.remote_nonnull_secret:
        check_flags(flags, DEFINE_VALIDATE, "secretDefineXML", _FROM)
        new = secxml.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        async with self._secret_lock():
            existing = self.secrets.check_define(new)
            if self.secret_store is not None:
                await self.secret_store.save_definition(
                    new, existing.definition if existing else None,
                    existing.value if existing else None)
            if existing is not None:
                existing.definition = new
                secret = existing
            else:
                secret = Secret(new)
                self.secrets.add(secret)
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_LIFECYCLE, EV_DEFINED, 0)
        return secret.ref()

    def secret_get_xml_desc(self, ref: P.remote_nonnull_secret, flags: int) -> str:
        check_flags(flags, 0, "secretGetXMLDesc", _FROM)
        return secxml.format(self.secrets.by_uuid(ref.uuid).definition)

    async def secret_undefine(self, ref: P.remote_nonnull_secret) -> None:
        async with self._secret_lock():
            secret = self.secrets.by_uuid(ref.uuid)
            if self.secret_store is not None:
                await self.secret_store.delete(secret.definition)
            self.secrets.remove(secret)
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_LIFECYCLE, EV_UNDEFINED, 0)

    # --- value ----------------------------------------------------------------

    async def secret_set_value(self, ref: P.remote_nonnull_secret, value: bytes,
                               flags: int) -> None:
        """The wire codec already refused a value over REMOTE_SECRET_VALUE_MAX."""
        check_flags(flags, 0, "secretSetValue", _FROM)
        async with self._secret_lock():
            secret = self.secrets.by_uuid(ref.uuid)
            value = bytes(value)
            if self.secret_store is not None:
                await self.secret_store.save_value(secret.definition, value)
            secret.value = value
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_VALUE_CHANGED)

    def secret_get_value(self, ref: P.remote_nonnull_secret, flags: int) -> bytes:
        check_flags(flags, 0, "secretGetValue", _FROM)
        secret = self.secrets.by_uuid(ref.uuid)
        if secret.definition.private:
            raise _error(P.VIR_ERR_INVALID_SECRET, "secret is private")
        return self.secrets.value(secret)
