"""PolicyKit: socket authentication (AUTH_POLKIT) and per-API access control.

Both ask polkitd's ``CheckAuthorization`` on the system bus (through
``jeepney``, so the event loop never blocks), with the connecting process as a
``unix-process`` subject (pid, start time, uid from SO_PEERCRED):

- ``auth_unix_rw/ro: polkit``: AUTH_POLKIT checks ``org.libvirt.unix.manage``
  (read-write socket) or ``org.libvirt.unix.monitor`` (read-only), as libvirtd's
  remoteDispatchAuthPolkit. uid 0 needs no check (AUTH_LIST answers NONE).
- ``access_drivers: [polkit]``: every call is checked against the ``acl``
  annotations of its procedure (libvirt's ``@acl``), e.g. ``domain:getattr`` ->
  ``org.libvirt.api.domain.getattr`` with the object's attributes as details
  (``connect_driver``, ``domain_name``, ``domain_uuid``, ...), and list results
  are filtered by their ``aclfilter`` (src/access/viraccessdriverpolkit.c), the
  running domains' id list and the ``NUM_OF_*`` counts included.
  Only unix-socket clients have a process identity; libvirt's polkit access
  driver denies every other client, and so does this one.

polkitd knows only registered actions: `policy_xml()` writes the action
definitions for every permission in the procedure table (libvirt ships the
same as org.libvirt.api.policy and org.libvirt.unix.policy).
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from types import SimpleNamespace
from typing import Any, Iterable

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

log = logging.getLogger(__name__)

UNIX_MANAGE = "org.libvirt.unix.manage"
UNIX_MONITOR = "org.libvirt.unix.monitor"

# connect_driver as libvirt's drivers name themselves (virConnectDriver.name)
_DRIVER_NAMES = {"test": "Test", "qemu": "QEMU", "lxc": "LXC"}
_BY_NAME = {p.name: p for p in P.PROCEDURES if p is not None and p.program == "remote"}
# the "max" argument of a LIST_* call made to count: above every REMOTE_*_LIST_MAX
_LIST_ALL = 65536
# list calls that answer keys, not objects: how to look each key's object up
_KEY_LOOKUPS = {
    "CONNECT_LIST_DOMAINS": ("DOMAIN_LOOKUP_BY_ID", lambda dom_id: dom_id),
    "CONNECT_LIST_SECRETS": ("SECRET_LOOKUP_BY_UUID", lambda text: uuidlib.UUID(text).bytes),
}

# ACL object -> the remote_nonnull_* struct that carries it, and how its
# fields become polkit details (viraccessdriverpolkit.c)
_OBJECT_TYPES = {
    "domain": "remote_nonnull_domain",
    "network": "remote_nonnull_network",
    "network_port": "remote_nonnull_network_port",
    "storage_pool": "remote_nonnull_storage_pool",
    "storage_vol": "remote_nonnull_storage_vol",
    "interface": "remote_nonnull_interface",
    "node_device": "remote_nonnull_node_device",
    "secret": "remote_nonnull_secret",
    "nwfilter": "remote_nonnull_nwfilter",
    "nwfilter_binding": "remote_nonnull_nwfilter_binding",
}


def action_id(obj: str, perm: str) -> str:
    """``domain``, ``read_secure`` -> ``org.libvirt.api.domain.read-secure``."""
    return f"org.libvirt.api.{obj.replace('_', '-')}.{perm.replace('_', '-')}"


def _uuid(raw: Any) -> str:
    return str(uuidlib.UUID(bytes=bytes(raw))) if raw is not None else ""


# virSecretUsageType -> the detail naming a secret's use (viraccessdriverpolkit.c;
# libvirt gives none for usage "none" nor, so far, for "vtpm")
_SECRET_USAGE_DETAIL = {1: "secret_usage_volume", 2: "secret_usage_ceph",
                        3: "secret_usage_target", 4: "secret_usage_name"}


def object_details(obj: str, value: Any) -> dict[str, str]:
    """Polkit details for one object value (a remote_nonnull_* struct)."""
    get = lambda name: getattr(value, name, None)  # noqa: E731
    if obj == "domain":
        return {"domain_name": get("name") or "", "domain_uuid": _uuid(get("uuid"))}
    if obj == "network":
        return {"network_name": get("name") or "", "network_uuid": _uuid(get("uuid"))}
    if obj == "storage_pool":
        return {"pool_name": get("name") or "", "pool_uuid": _uuid(get("uuid"))}
    if obj == "storage_vol":
        return {"pool_name": get("pool") or "", "vol_name": get("name") or "",
                "vol_key": get("key") or ""}
    if obj == "interface":
        return {"interface_name": get("name") or "", "interface_macaddr": get("mac") or ""}
    if obj == "node_device":
        return {"node_device_name": get("name") or ""}
    if obj == "secret":
        details = {"secret_uuid": _uuid(get("uuid"))}
        usage = _SECRET_USAGE_DETAIL.get(get("usageType"))
        if usage:
            details[usage] = get("usageID") or ""
        return details
    if obj == "nwfilter":
        return {"nwfilter_name": get("name") or "", "nwfilter_uuid": _uuid(get("uuid"))}
    return {}


# the details key prefix of an object's name (viraccessdriverpolkit.c)
_NAME_PREFIX = {"domain": "domain", "network": "network", "storage_pool": "pool",
                "nwfilter": "nwfilter", "interface": "interface", "node_device": "node_device"}


def _xml_details(obj: str, xml: str) -> dict[str, str] | None:
    """Name and UUID from a definition about to be created (define/create XML)."""
    from lxml import etree

    from pyvirtd.xml import fromstring
    try:
        root = fromstring(xml)
    except (etree.XMLSyntaxError, VirError):
        return None                       # the driver reports the parse error
    if obj == "secret":
        return _secret_xml_details(root)
    name, uuid = root.findtext("name") or "", root.findtext("uuid") or ""
    prefix = _NAME_PREFIX.get(obj)
    return {f"{prefix}_name": name, f"{prefix}_uuid": uuid} if prefix else None


def _secret_xml_details(root: Any) -> dict[str, str] | None:
    """A secret about to be defined: its UUID (empty when the driver will pick
    one) and usage, so the check comes before anything is stored."""
    from pyvirtd.xml import secret as secxml

    usage = root.find("usage")
    utype = usage.get("type") if usage is not None else "none"
    if utype not in secxml.USAGE_TYPES:
        return None                       # the driver reports the error
    number, child = secxml.USAGE_TYPES[utype]
    ref = SimpleNamespace(uuid=None, usageType=number,
                          usageID=usage.findtext(child) if child else "")
    details = object_details("secret", ref)
    details["secret_uuid"] = (root.findtext("uuid") or "").strip()
    return details


# The flags that ``acl`` annotations name (include/libvirt/libvirt-*.h values).
ACL_FLAGS = {
    "VIR_DOMAIN_AFFECT_LIVE": 1, "VIR_DOMAIN_AFFECT_CONFIG": 2,
    "VIR_NETWORK_UPDATE_AFFECT_LIVE": 2, "VIR_NETWORK_UPDATE_AFFECT_CONFIG": 4,
    "VIR_DOMAIN_XML_SECURE": 1, "VIR_DOMAIN_XML_MIGRATABLE": 8,
    "VIR_DOMAIN_SAVE_IMAGE_XML_SECURE": 1, "VIR_DOMAIN_SNAPSHOT_XML_SECURE": 1,
    "VIR_DOMAIN_CHECKPOINT_XML_SECURE": 1, "VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE": 2,
    "VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE": 64, "VIR_DOMAIN_REBOOT_GUEST_AGENT": 2,
    "VIR_DOMAIN_SHUTDOWN_GUEST_AGENT": 2, "VIR_DOMAIN_VCPU_GUEST": 8,
}


def _flags_apply(expr: str, flags: int) -> bool:
    """libvirt gendispatch: ``A|B`` checks when any is set, ``!A|B`` when none is."""
    if not expr:
        return True
    negate = expr.startswith("!")
    mask = 0
    for name in expr.lstrip("!").split("|"):
        mask |= ACL_FLAGS.get(name, 0)
    return not (flags & mask) if negate else bool(flags & mask)


# ------------------------------------------------------------------ D-Bus
def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (after the parenthesised command name)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[19])


async def check_authorization(pid: int, uid: int,
                              requests: list[tuple[str, dict[str, str]]]) -> list[bool]:
    """Ask polkitd about each (action, details) for one process, on one bus connection.

    Errors talking to polkitd (not running, action not registered) count as
    "no": access control fails closed.
    """
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.trio import open_dbus_router
    authority = DBusAddress("/org/freedesktop/PolicyKit1/Authority",
                            bus_name="org.freedesktop.PolicyKit1",
                            interface="org.freedesktop.PolicyKit1.Authority")
    try:
        start = process_start_time(pid)
    except (OSError, ValueError, IndexError):
        return [False] * len(requests)
    subject = ("unix-process", {"pid": ("u", pid), "start-time": ("t", start),
                                "uid": ("i", uid)})
    answers = []
    try:
        async with open_dbus_router(bus="SYSTEM") as router:
            for action, details in requests:
                msg = new_method_call(authority, "CheckAuthorization", "(sa{sv})sa{ss}us",
                                      (subject, action, details, 0, ""))
                reply = await router.send_and_get_reply(msg)
                if reply.header.message_type.name == "error":
                    log.warning("polkit: %s: %s", action, reply.body)
                    answers.append(False)
                    continue
                (authorized, _challenge, _extra), = reply.body
                answers.append(bool(authorized))
    except OSError as exc:
        log.error("polkit: cannot reach the system bus: %s", exc)
        return [False] * len(requests)
    return answers


def _denied(action: str) -> VirError:
    # libvirt's virAccessManagerSanitizeError words
    return VirError(P.VIR_ERR_ACCESS_DENIED, f"access denied: '{action}'",
                    domain=P.VIR_FROM_ACCESS)


async def auth_unix(client: Any) -> None:
    """AUTH_POLKIT: may this process manage (or monitor, read-only socket) at all?"""
    ident = client.identity
    action = UNIX_MONITOR if client.readonly else UNIX_MANAGE
    if ident is None or not (await check_authorization(ident.pid, ident.uid, [(action, {})]))[0]:
        pid = ident.pid if ident else "?"
        log.warning("polkit denied %s to pid %s uid %s", action, pid, ident.uid if ident else "?")
        # libvirtd: "Policy kit denied action %s from %s"
        raise VirError(P.VIR_ERR_AUTH_FAILED, f"Policy kit denied action {action} from pid {pid}",
                       domain=P.VIR_FROM_REMOTE)


# ------------------------------------------------------------ access driver
class PolkitAccess:
    """``access_drivers: [polkit]``: checks every call and filters list results."""

    @staticmethod
    def applies(proc: Any) -> bool:
        """Whether a procedure has checks ("none" marks those that need none:
        auth calls, CONNECT_CLOSE, ...; they keep their own path)."""
        return any(":" in acl for acl in proc.acl)

    def guard(self, client: Any, proc: Any, fn: Any, is_async: bool, decoded: Any,
              program: Any) -> Any:
        """The handler wrapped in the checks; always a coroutine function.

        ``decoded`` is the call's argument struct (its fields name the object
        and the flags); the wrapper is called with it spread out, as handlers are.
        ``program`` (pyvirtd/dispatch.Program) resolves the other procedures that
        filtering counts and id lists needs.
        """
        async def checked(target: Any, *args: Any) -> Any:
            await self.check_call(client, proc, decoded)
            result = fn(target, *args)
            if is_async:
                result = await result
            return await self.check_result(client, proc, decoded, result, program)
        return checked

    async def check_call(self, client: Any, proc: Any, args: Any) -> None:
        requests = self._requests(client, proc, args)
        if requests is None:
            return
        await self._require(client, requests)

    async def check_result(self, client: Any, proc: Any, args: Any, result: Any,
                           program: Any = None) -> Any:
        """After the call: lookups (the object is known only now), then aclfilter."""
        if self._object_in_args(proc, args) is None and not proc.aclfilter:
            objs = [v for v in _flatten(result) if type(v).__name__ in _OBJECT_TYPES.values()]
            if objs and self._requests(client, proc, args) is None:
                reqs = []
                for acl in proc.acl:
                    if ":" not in acl:
                        continue
                    obj, perm, *flags = acl.split(":")
                    if _flags_apply(flags[0] if flags else "", getattr(args, "flags", 0) or 0):
                        reqs.append((action_id(obj, perm),
                                     dict(self._base(client), **object_details(obj, objs[0]))))
                await self._require(client, reqs)
        if proc.aclfilter:
            if program is not None and proc.name in _KEY_LOOKUPS:
                return await self._filter_keys(client, proc, result, program)
            if program is not None and "_NUM_OF_" in proc.name:
                return await self._filter_count(client, proc, args, result, program)
            return await self._filter(client, proc, result)
        return result

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _base(client: Any) -> dict[str, str]:
        conn = client.conn
        scheme = (getattr(conn, "uri", "") or "").split(":", 1)[0].split("+")[0]
        return {"connect_driver": _DRIVER_NAMES.get(scheme, scheme)}

    @staticmethod
    def _object_in_args(proc: Any, args: Any) -> tuple[str, Any] | None:
        for acl in proc.acl:
            obj = acl.split(":", 1)[0]
            struct_name = _OBJECT_TYPES.get(obj)
            if struct_name is None:
                continue
            for value in (args if isinstance(args, tuple) else ()):
                if type(value).__name__ == struct_name:
                    return obj, value
        return None

    def _requests(self, client: Any, proc: Any, args: Any) -> list | None:
        """The checks to make before the call, or None to make them after it."""
        base = self._base(client)
        found = self._object_in_args(proc, args)
        flags = getattr(args, "flags", 0) or 0
        reqs = []
        for acl in proc.acl:
            if ":" not in acl:        # "none": nothing to check
                continue
            obj, perm, *rest = acl.split(":")
            if not _flags_apply(rest[0] if rest else "", flags):
                continue
            if obj in ("connect", "none"):
                details = base
            elif found is not None and found[0] == obj:
                details = dict(base, **object_details(obj, found[1]))
            else:
                xml = getattr(args, "xml", None) or getattr(args, "xml_desc", None)
                extra = _xml_details(obj, xml) if isinstance(xml, str) else None
                if extra is None:
                    return None        # a lookup: the object is in the result
                details = dict(base, **extra)
            reqs.append((action_id(obj, perm), details))
        return reqs

    async def _require(self, client: Any, requests: list) -> None:
        if not requests:
            return
        ident = client.identity
        if ident is None:
            raise _denied(requests[0][0])
        answers = await check_authorization(ident.pid, ident.uid, requests)
        for (action, details), ok in zip(requests, answers):
            if not ok:
                log.info("polkit denied %s %s to uid %d", action, details, ident.uid)
                raise _denied(action)

    @staticmethod
    async def _call(client: Any, program: Any, proc: Any, args: list) -> Any:
        fn, is_async, target = program.resolve(client, proc)
        result = fn(target, *args)
        return await result if is_async else result

    async def _filter_count(self, client: Any, proc: Any, args: Any, count: int,
                            program: Any) -> int:
        """A NUM_OF_* answer counts only what the client may see: the length of
        the matching LIST_* answer after its filter (libvirt's NumOf...CheckACL)."""
        list_proc = _BY_NAME.get(proc.name.replace("_NUM_OF_", "_LIST_"))
        if list_proc is None:
            return count
        given = dict(zip(args._fields, args)) if hasattr(args, "_fields") else {}
        wanted = getattr(P, f"remote_{list_proc.method}_args")._fields
        listed = await self._call(client, program, list_proc,
                                  [given.get(f, _LIST_ALL) for f in wanted])
        if list_proc.name in _KEY_LOOKUPS:
            return len(await self._filter_keys(client, list_proc, listed, program))
        return len(await self._filter(client, list_proc, listed))

    async def _filter_keys(self, client: Any, proc: Any, keys: list, program: Any) -> list:
        """The running domains' ids, or the secrets' UUIDs, the client may see:
        each is looked up first, as the rules see the whole object (a domain's
        name and uuid, a secret's uuid and usage)."""
        ident = client.identity
        if ident is None or not keys:
            return []
        lookup_name, to_arg = _KEY_LOOKUPS[proc.name]
        lookup = _BY_NAME[lookup_name]
        found = []
        for key in keys:
            try:
                found.append((key, await self._call(client, program, lookup, [to_arg(key)])))
            except VirError:
                pass                       # gone since it was listed
        obj, perm = proc.aclfilter[0].split(":")[:2]
        base = self._base(client)
        keep = await check_authorization(ident.pid, ident.uid, [
            (action_id(obj, perm), dict(base, **object_details(obj, o))) for _, o in found])
        return [key for (key, _), k in zip(found, keep) if k]

    async def _filter(self, client: Any, proc: Any, result: Any) -> Any:
        """Drop the objects of a list result the client may not see (aclfilter)."""
        ident = client.identity
        obj, perm = proc.aclfilter[0].split(":")[:2]
        struct_name = _OBJECT_TYPES.get(obj)
        base = self._base(client)
        prefix = _NAME_PREFIX.get(obj)
        if isinstance(result, list) and prefix and all(isinstance(n, str) for n in result):
            # the older name lists (CONNECT_LIST_DEFINED_DOMAINS, LIST_NETWORKS...):
            # rules see the name only
            if ident is None:
                return []
            keep = await check_authorization(ident.pid, ident.uid, [
                (action_id(obj, perm), dict(base, **{f"{prefix}_name": n})) for n in result])
            return [n for n, k in zip(result, keep) if k]
        if not isinstance(result, tuple) or struct_name is None:
            return result
        out = list(result)
        for i, field in enumerate(out):
            if not isinstance(field, (list, tuple)) or not field \
                    or type(field[0]).__name__ != struct_name:
                continue
            if ident is None:
                keep = [False] * len(field)
            else:
                keep = await check_authorization(ident.pid, ident.uid, [
                    (action_id(obj, perm), dict(base, **object_details(obj, v))) for v in field])
            out[i] = [v for v, k in zip(field, keep) if k]
            # list_all_* replies are (objects, count): the count follows the filter
            if len(out) == 2 and i == 0 and isinstance(out[1], int):
                out[1] = len(out[0])
        return tuple(out)


def _flatten(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


# ------------------------------------------------------------ policy file
def policy_xml() -> str:
    """polkit action definitions for every permission pyvirtd checks.

    Defaults follow libvirt's policy files: root-equivalent (auth_admin) for
    everything, since rules files are where access is granted.
    """
    actions = {UNIX_MANAGE: "Manage local virtualized systems",
               UNIX_MONITOR: "Monitor local virtualized systems"}
    for proc in P.PROCEDURES:
        for acl in (*proc.acl, *proc.aclfilter):
            if ":" in acl:
                obj, perm = acl.split(":")[:2]
                actions.setdefault(action_id(obj, perm), f"{perm} on {obj}")
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration'
           ' 1.0//EN" "http://www.freedesktop.org/standards/PolicyKit/1/policyconfig.dtd">',
           "<policyconfig>", "  <vendor>pyvirtd</vendor>"]
    for name, text in sorted(actions.items()):
        out += [f'  <action id="{name}">', f"    <description>{text}</description>",
                f"    <message>{text}</message>",
                "    <defaults><allow_any>auth_admin</allow_any>"
                "<allow_inactive>auth_admin</allow_inactive>"
                "<allow_active>auth_admin</allow_active></defaults>",
                "  </action>"]
    out.append("</policyconfig>")
    return "\n".join(out) + "\n"
