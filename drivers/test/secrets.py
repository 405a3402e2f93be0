"""Secrets, as a test:/// connection through libvirtd sees them.

libvirt's test driver has no secret driver of its own: run in-process
(``virsh -c test:///default``) every secret call is VIR_ERR_NO_SUPPORT.
Through libvirtd, though, a test:/// connection is served by the daemon's
secret driver (src/secret/secret_driver.c), and that is what clients such as
nova rely on (SECRET_LOOKUP_BY_USAGE answering VIR_ERR_NO_SECRET).  pyvirtd
keeps the secrets in the driver state, in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import secret as secxml
from .state import TestState

# virConnectListAllSecretsFlags.
LIST_EPHEMERAL, LIST_NO_EPHEMERAL, LIST_PRIVATE, LIST_NO_PRIVATE = 1, 2, 4, 8
# virSecretEventLifecycleType.
EV_DEFINED, EV_UNDEFINED = 0, 1
DEFINE_VALIDATE = 1     # VIR_SECRET_DEFINE_VALIDATE
# secret_driver.c refuses values it could not store in a message.
MAX_VALUE = 65536


@dataclass(eq=False)
class Secret:
    definition: secxml.SecretDef
    value: bytes | None = None

    @property
    def key(self) -> str:
        return format_uuid(self.definition.uuid)

    def ref(self) -> P.remote_nonnull_secret:
        d = self.definition
        return P.remote_nonnull_secret(d.uuid, d.usage_number, d.usage_id or "")


def _secret_error(code: int, detail: str) -> VirError:
    return VirError(code, detail, domain=P.VIR_FROM_SECRET)


class SecretMixin:
    state: TestState

    def _secret(self, ref) -> Secret:
        secret = self.state.secrets.get(format_uuid(ref.uuid))
        if secret is None:
            raise _secret_error(P.VIR_ERR_NO_SECRET,
                                f"no secret with matching uuid '{format_uuid(ref.uuid)}'")
        return secret

    def _emit_secret(self, secret: Secret, event_id: int, *fields) -> None:
        self.state.events.emit("secret", event_id, secret.ref(), *fields)

    # --- listing --------------------------------------------------------------

    def connect_num_of_secrets(self) -> int:
        return len(self.state.secrets)

    def connect_list_secrets(self, maxuuids: int) -> list[str]:
        return list(self.state.secrets)[:maxuuids]

    def connect_list_all_secrets(self, need_results: int, flags: int) -> tuple:
        check_flags(flags, 15, "secretConnectListAllSecrets", P.VIR_FROM_TEST)
        out = []
        for s in self.state.secrets.values():
            d = s.definition
            if flags & (LIST_EPHEMERAL | LIST_NO_EPHEMERAL) and not (
                    (flags & LIST_EPHEMERAL and d.ephemeral)
                    or (flags & LIST_NO_EPHEMERAL and not d.ephemeral)):
                continue
            if flags & (LIST_PRIVATE | LIST_NO_PRIVATE) and not (
                    (flags & LIST_PRIVATE and d.private)
                    or (flags & LIST_NO_PRIVATE and not d.private)):
                continue
            out.append(s.ref())
        return (out if need_results else [], len(out))

    # --- lookup ---------------------------------------------------------------

    def secret_lookup_by_uuid(self, uuid: bytes) -> P.remote_nonnull_secret:
        return self._secret(P.remote_nonnull_secret(uuid, 0, "")).ref()

    def secret_lookup_by_usage(self, usage_type: int, usage_id: str) -> P.remote_nonnull_secret:
        for s in self.state.secrets.values():
            d = s.definition
            if d.usage_number == usage_type and d.usage_id == usage_id:
                return s.ref()
        raise _secret_error(P.VIR_ERR_NO_SECRET, f"no secret with matching usage '{usage_id}'")

    # --- definition -----------------------------------------------------------

    def secret_define_xml(self, xml: str, flags: int) -> P.remote_nonnull_secret:
        # libvirt's test driver has no secrets; its secret driver takes VALIDATE
        check_flags(flags, DEFINE_VALIDATE, "secretDefineXML", P.VIR_FROM_TEST)
        new = secxml.parse(xml, validate_schema=bool(flags & DEFINE_VALIDATE))
        key = format_uuid(new.uuid)
        existing = self.state.secrets.get(key)
        if existing is not None:
            old = existing.definition
            if old.usage_id != new.usage_id:
                raise _secret_error(P.VIR_ERR_INTERNAL_ERROR,
                                    f"a secret with UUID {key} is already defined for use "
                                    f"with {old.usage_id}")
            if old.private and not new.private:
                raise _secret_error(P.VIR_ERR_INTERNAL_ERROR,
                                    "cannot change private flag on existing secret")
            existing.definition = new
            secret = existing
        else:
            for other in self.state.secrets.values():
                d = other.definition
                if new.usage_type != "none" and d.usage_number == new.usage_number \
                        and d.usage_id == new.usage_id:
                    raise _secret_error(P.VIR_ERR_INTERNAL_ERROR,
                                        f"a secret with UUID {other.key} already defined for "
                                        f"use with {new.usage_id}")
            secret = self.state.secrets[key] = Secret(new)
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_LIFECYCLE, EV_DEFINED, 0)
        return secret.ref()

    def secret_get_xml_desc(self, ref, flags: int) -> str:
        check_flags(flags, 0, "secretGetXMLDesc", P.VIR_FROM_TEST)
        return secxml.format(self._secret(ref).definition)

    def secret_undefine(self, ref) -> None:
        secret = self._secret(ref)
        del self.state.secrets[secret.key]
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_LIFECYCLE, EV_UNDEFINED, 0)

    # --- value ----------------------------------------------------------------

    def secret_set_value(self, ref, value: bytes, flags: int) -> None:
        check_flags(flags, 0, "secretSetValue", P.VIR_FROM_TEST)
        secret = self._secret(ref)
        secret.value = bytes(value)
        self._emit_secret(secret, P.VIR_SECRET_EVENT_ID_VALUE_CHANGED)

    def secret_get_value(self, ref, flags: int) -> bytes:
        check_flags(flags, 0, "secretGetValue", P.VIR_FROM_TEST)
        secret = self._secret(ref)
        if secret.definition.private:
            raise VirError(P.VIR_ERR_INVALID_SECRET, domain=P.VIR_FROM_SECRET,
                           message="Invalid secret: secret is private")
        if secret.value is None:
            raise _secret_error(P.VIR_ERR_NO_SECRET,
                                f"secret '{secret.key}' does not have a value")
        return secret.value
