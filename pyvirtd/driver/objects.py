"""One list of defined objects: lookups, listings, list-all filters, define/undefine rules.

Networks, storage pools, secrets, interfaces, node devices (and, later,
domains) are all "objects with a definition" that libvirt keeps in a list
with the same rules (src/conf/virnetworkobj.c, virstorageobj.c,
virsecretobj.c, virdomainobjlist.c): found by name, UUID or id with "no X
with matching ..." errors, counted and listed as active or inactive,
filtered by list-all flags that come in yes/no pairs, added by a define that
may not take another object's name or UUID, undefined into a transient
object while it runs.  `ObjectList` is that list once; what differs between
kinds is data, an `ObjectKind` (nouns, error codes and domains, filter
groups, a few rule switches), not a subclass.

The objects themselves are the owners' classes; the list reads these
attributes (as far as the call needs them): ``name``, ``uuid``, ``active``,
``persistent``, ``autostart``, ``definition``, ``new_def`` (the persistent
definition of a running object, or None) and ``id``.  ``ref()`` stays with
the owner.

Lookups by name, UUID and id are dictionary lookups (a daemon may hold
10,000 domains, and every call on a handle resolves it): the list indexes its
objects by UUID when they are added and by id when `set_id` gives them one.
A name and a UUID do not change while an object is in the list (a rename goes
through `rename`), nor does an id except through `set_id`.

Nothing here does I/O; files are `pyvirtd.driver.store`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P
from pyvirtd.xml import format_uuid
from pyvirtd.xml import nodedev as ndxml
from pyvirtd.xml import storage as stxml

T = TypeVar("T")


@dataclass(frozen=True)
class FilterGroup:
    """A pair of list-all flags over one yes/no property: both or neither keeps all."""
    yes: int
    no: int
    test: Callable[[Any], bool]

    def test_for(self, flags: int) -> Callable[[Any], bool] | None:
        """What an object must pass under ``flags`` (None: this group keeps everything)."""
        wanted = flags & (self.yes | self.no)
        if not wanted or wanted == self.yes | self.no:
            return None
        want = bool(flags & self.yes)
        return lambda obj: bool(self.test(obj)) == want


def state_filters(active: int, inactive: int, persistent: int, transient: int,
                  autostart: int, no_autostart: int) -> tuple[FilterGroup, ...]:
    """The three groups networks, pools and domains share (same meaning, own bit values)."""
    return (FilterGroup(active, inactive, lambda o: o.active),
            FilterGroup(persistent, transient, lambda o: o.persistent),
            FilterGroup(autostart, no_autostart, lambda o: o.autostart))


@dataclass(frozen=True)
class ObjectKind:
    """How one kind of object speaks: libvirt's codes, domains and wording for it.

    ``noun`` names it in lookup errors ("no storage pool with matching
    name 'x'"), ``owner`` in define conflicts ("pool 'x' already exists with
    uuid ...").  ``error_domain`` is where lookups and state errors come from
    (the test driver reports those from VIR_FROM_TEST), ``conf_domain`` where
    define conflicts do (the object's own conf code, also for the test driver).
    """
    noun: str
    no_object: int                           # VIR_ERR_NO_NETWORK, ...
    error_domain: int
    owner: str = ""
    conf_domain: int | None = None
    filters: tuple[FilterGroup, ...] = ()
    # the kind's own list-all filter: flags beyond the groups' (a pool's type bits,
    # a device's capabilities) and, from the flags, the test an object must pass
    extra_flags: int = 0
    extra_filter: Callable[[int], Callable[[Any], bool] | None] | None = None
    # createXML over an inactive persistent object: the live definition runs and
    # the persistent one waits in new_def (networks, domains) or is replaced (pools)
    live_keeps_config: bool = True
    # createXML of a name that runs: the detail ({owner} and {name} filled in)
    already_active: str = "{owner} is already active as '{name}'"
    # setting autostart on a transient object: (code, detail), or None to allow it
    transient_autostart: tuple[int, str] | None = None
    sorted_names: bool = False               # the name listings sorted, not in definition order
    has_uuid: bool = True                    # refs name the object by UUID (else by name)

    @property
    def list_flags(self) -> int:
        """Every flag the filter groups know (what CONNECT_LIST_ALL_X accepts, extras aside)."""
        bits = self.extra_flags
        for group in self.filters:
            bits |= int(group.yes) | int(group.no)
        return bits

    def for_driver(self, error_domain: int, **changes: Any) -> "ObjectKind":
        """The same kind as a driver with its own error domain reports it (the test driver)."""
        conf = self.conf_domain if self.conf_domain is not None else self.error_domain
        return dataclasses.replace(self, error_domain=error_domain, conf_domain=conf, **changes)

    def error(self, code: int, detail: str) -> VirError:
        return VirError(code, detail, domain=self.error_domain)

    def conf_error(self, code: int, detail: str) -> VirError:
        domain = self.conf_domain if self.conf_domain is not None else self.error_domain
        return VirError(code, detail, domain=domain)

    def not_found(self, what: str, value: str) -> VirError:
        return self.error(self.no_object, f"no {self.noun} with matching {what} {value}")


def _pool_type_filter(flags: int) -> Callable[[Any], bool] | None:
    """virConnectListAllStoragePools' type bits: one per pool type, after the six others."""
    type_bits = flags >> POOL_TYPE_BASE
    if not type_bits:
        return None
    return lambda pool: bool(type_bits & (1 << stxml.POOL_TYPES.index(pool.definition.type)))


def _device_cap_filter(flags: int) -> Callable[[Any], bool] | None:
    """virConnectListAllNodeDevices' capability bits: a device with any of them."""
    wanted = [cap for cap, bit in ndxml.CAP_FLAGS.items() if flags & bit]
    if not wanted:
        return None
    return lambda dev: any(dev.definition.has_cap(c) for c in wanted)


POOL_TYPE_BASE = 6
_NET = P.ConnectListAllNetworksFlags
_POOL = P.ConnectListAllStoragePoolsFlags
_SEC = P.ConnectListAllSecretsFlags
_IFACE = P.ConnectListAllInterfacesFlags

NETWORK = ObjectKind(
    "network", P.VIR_ERR_NO_NETWORK, P.VIR_FROM_NETWORK, owner="network",
    filters=state_filters(_NET.VIR_CONNECT_LIST_NETWORKS_ACTIVE,
                          _NET.VIR_CONNECT_LIST_NETWORKS_INACTIVE,
                          _NET.VIR_CONNECT_LIST_NETWORKS_PERSISTENT,
                          _NET.VIR_CONNECT_LIST_NETWORKS_TRANSIENT,
                          _NET.VIR_CONNECT_LIST_NETWORKS_AUTOSTART,
                          _NET.VIR_CONNECT_LIST_NETWORKS_NO_AUTOSTART),
    transient_autostart=(P.VIR_ERR_OPERATION_INVALID,
                         "cannot set autostart for transient network"),
    sorted_names=True)

STORAGE_POOL = ObjectKind(
    "storage pool", P.VIR_ERR_NO_STORAGE_POOL, P.VIR_FROM_STORAGE, owner="pool",
    filters=state_filters(_POOL.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE,
                          _POOL.VIR_CONNECT_LIST_STORAGE_POOLS_INACTIVE,
                          _POOL.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT,
                          _POOL.VIR_CONNECT_LIST_STORAGE_POOLS_TRANSIENT,
                          _POOL.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART,
                          _POOL.VIR_CONNECT_LIST_STORAGE_POOLS_NO_AUTOSTART),
    extra_flags=((1 << len(stxml.POOL_TYPES)) - 1) << POOL_TYPE_BASE,
    extra_filter=_pool_type_filter,
    live_keeps_config=False,
    transient_autostart=(P.VIR_ERR_INTERNAL_ERROR, "cannot set autostart for transient pool"))

SECRET = ObjectKind(
    "secret", P.VIR_ERR_NO_SECRET, P.VIR_FROM_SECRET, owner="secret",
    filters=(FilterGroup(_SEC.VIR_CONNECT_LIST_SECRETS_EPHEMERAL,
                         _SEC.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL,
                         lambda s: s.definition.ephemeral),
             FilterGroup(_SEC.VIR_CONNECT_LIST_SECRETS_PRIVATE,
                         _SEC.VIR_CONNECT_LIST_SECRETS_NO_PRIVATE,
                         lambda s: s.definition.private)))

INTERFACE = ObjectKind(
    "interface", P.VIR_ERR_NO_INTERFACE, P.VIR_FROM_INTERFACE, owner="interface",
    filters=(FilterGroup(_IFACE.VIR_CONNECT_LIST_INTERFACES_ACTIVE,
                         _IFACE.VIR_CONNECT_LIST_INTERFACES_INACTIVE, lambda i: i.active),),
    has_uuid=False)

_DOM = P.ConnectListAllDomainsFlags
_DOMAIN_STATES = P.DomainState


def _domain_state_filter(flags: int) -> Callable[[Any], bool] | None:
    """virConnectListAllDomains' state bits: running, paused, shut off, or any other."""
    wanted = flags & (_DOM.VIR_CONNECT_LIST_DOMAINS_RUNNING | _DOM.VIR_CONNECT_LIST_DOMAINS_PAUSED
                      | _DOM.VIR_CONNECT_LIST_DOMAINS_SHUTOFF | _DOM.VIR_CONNECT_LIST_DOMAINS_OTHER)
    if not wanted:
        return None
    named = {_DOMAIN_STATES.VIR_DOMAIN_RUNNING: _DOM.VIR_CONNECT_LIST_DOMAINS_RUNNING,
             _DOMAIN_STATES.VIR_DOMAIN_PAUSED: _DOM.VIR_CONNECT_LIST_DOMAINS_PAUSED,
             _DOMAIN_STATES.VIR_DOMAIN_SHUTOFF: _DOM.VIR_CONNECT_LIST_DOMAINS_SHUTOFF}
    return lambda dom: bool(wanted & named.get(dom.state, _DOM.VIR_CONNECT_LIST_DOMAINS_OTHER))


# Domains: the hypervisor base's and the test driver's lists (tests/unit/driver/test_object_list.py
# checks its filter against matches_list_flags, which stats calls still use per domain).
DOMAIN = ObjectKind(
    "domain", P.VIR_ERR_NO_DOMAIN, P.VIR_FROM_DOMAIN, owner="domain",
    filters=(*state_filters(_DOM.VIR_CONNECT_LIST_DOMAINS_ACTIVE,
                            _DOM.VIR_CONNECT_LIST_DOMAINS_INACTIVE,
                            _DOM.VIR_CONNECT_LIST_DOMAINS_PERSISTENT,
                            _DOM.VIR_CONNECT_LIST_DOMAINS_TRANSIENT,
                            _DOM.VIR_CONNECT_LIST_DOMAINS_AUTOSTART,
                            _DOM.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART),
             FilterGroup(_DOM.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE,
                         _DOM.VIR_CONNECT_LIST_DOMAINS_NO_MANAGEDSAVE, lambda d: d.managed_save),
             FilterGroup(_DOM.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT,
                         _DOM.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT, lambda d: bool(d.snapshots)),
             FilterGroup(_DOM.VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT,
                         _DOM.VIR_CONNECT_LIST_DOMAINS_NO_CHECKPOINT, lambda d: False)),
    extra_flags=(_DOM.VIR_CONNECT_LIST_DOMAINS_RUNNING | _DOM.VIR_CONNECT_LIST_DOMAINS_PAUSED
                 | _DOM.VIR_CONNECT_LIST_DOMAINS_SHUTOFF | _DOM.VIR_CONNECT_LIST_DOMAINS_OTHER),
    extra_filter=_domain_state_filter,
    already_active="{owner} '{name}' is already active",
    transient_autostart=(P.VIR_ERR_OPERATION_INVALID,
                         "cannot set autostart for transient domain"))

NODE_DEVICE = ObjectKind("node device", P.VIR_ERR_NO_NODE_DEVICE, P.VIR_FROM_NODEDEV,
                         owner="node device", extra_flags=sum(ndxml.CAP_FLAGS.values()),
                         extra_filter=_device_cap_filter, has_uuid=False)


@dataclass(eq=False)
class DefinedObject:
    """What every kind keeps per object (libvirt's virNetworkObj, virStoragePoolObj, ...).

    ``definition`` is what runs (or the persistent definition while
    inactive); ``new_def`` the persistent definition of a running object once
    it was redefined (None otherwise).  Owners subclass it with their own
    fields (keyword-only when they have no default) and ``ref()``.
    """
    definition: Any
    active: bool = False
    persistent: bool = True
    autostart: bool = False
    new_def: Any = None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> bytes:
        return self.definition.uuid

    def config(self) -> Any:
        """The persistent definition (what CONFIG-flagged changes edit)."""
        return self.new_def if self.new_def is not None else self.definition


class ObjectList(Generic[T]):
    """The defined objects of one kind, by name, in definition order.

    Iterating yields the objects (a snapshot: callers may add or remove
    while they iterate).  Lookups raise the kind's "no X with matching ..."
    errors; `get`, `find_uuid` and `find_id` return None instead.
    """

    def __init__(self, kind: ObjectKind) -> None:
        self.kind = kind
        self._by_name: dict[str, Any] = {}
        self._by_uuid: dict[bytes, Any] = {}
        self._by_id: dict[int, Any] = {}

    # --- the collection -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._by_name.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def values(self) -> list[T]:
        return list(self._by_name.values())

    def get(self, name: str) -> T | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> T:
        """The object named ``name``; the kind's "no X with matching name" error if none."""
        return self.by_name(name)

    def add(self, obj: T) -> T:
        """Add (or put in place of the object with the same name) ``obj``."""
        old = self._by_name.get(obj.name)
        if old is not None and old is not obj:
            self._unindex(old)
        self._by_name[obj.name] = obj
        if self.kind.has_uuid:
            self._by_uuid[bytes(obj.uuid)] = obj
        obj_id = getattr(obj, "id", -1)
        if obj_id is not None and obj_id >= 0:
            self._by_id[obj_id] = obj
        return obj

    def remove(self, obj: T) -> None:
        """Forget ``obj`` (nothing if another object holds its name meanwhile)."""
        name = obj.name
        if self._by_name.get(name) is obj:
            del self._by_name[name]
            self._unindex(obj)

    def _unindex(self, obj: Any) -> None:
        if self.kind.has_uuid and self._by_uuid.get(bytes(obj.uuid)) is obj:
            del self._by_uuid[bytes(obj.uuid)]
        obj_id = getattr(obj, "id", -1)
        if self._by_id.get(obj_id) is obj:
            del self._by_id[obj_id]

    def rename(self, obj: T, new_name: str, set_name: Callable[[T, str], None]) -> None:
        """Give ``obj`` another name (``set_name`` changes it in its definitions);
        it moves to the end of the definition order, as libvirt's rename re-adds it."""
        self.remove(obj)
        set_name(obj, new_name)
        self.add(obj)

    def set_id(self, obj: T, obj_id: int) -> None:
        """Give ``obj`` its id as it starts (or -1 as it stops), keeping `by_id` direct."""
        old = getattr(obj, "id", -1)
        if self._by_id.get(old) is obj:
            del self._by_id[old]
        obj.id = obj_id  # type: ignore[attr-defined]
        if obj_id >= 0 and self._by_name.get(obj.name) is obj:
            self._by_id[obj_id] = obj

    def clear(self) -> None:
        self._by_name.clear()
        self._by_uuid.clear()
        self._by_id.clear()

    # --- lookups --------------------------------------------------------------

    def find_uuid(self, uuid: bytes) -> T | None:
        return self._by_uuid.get(bytes(uuid))

    def find_id(self, obj_id: int) -> T | None:
        """The running object with id ``obj_id`` (domains), or None."""
        obj = self._by_id.get(obj_id)
        if obj is None or not obj.active or obj.id != obj_id:
            return None
        return obj

    def by_name(self, name: str) -> T:
        obj = self._by_name.get(name)
        if obj is None:
            raise self.kind.not_found("name", f"'{name}'")
        return obj

    def by_uuid(self, uuid: bytes) -> T:
        obj = self.find_uuid(uuid)
        if obj is None:
            raise self.kind.not_found("uuid", f"'{format_uuid(uuid)}'")
        return obj

    def by_ref(self, ref: Any) -> T:
        """The object a client's handle names: by UUID as libvirt finds it (by name for
        kinds without one); the error quotes the handle's name too."""
        if not self.kind.has_uuid:
            return self.by_name(ref.name)
        obj = self._by_name.get(ref.name)
        uuid = bytes(ref.uuid)
        if obj is not None and obj.uuid == uuid:
            return obj
        obj = self.find_uuid(uuid)
        if obj is None:
            raise self.kind.not_found("uuid", f"'{format_uuid(uuid)}' ({ref.name})")
        return obj

    def by_id(self, obj_id: int) -> T:
        """A running object by its id (domains)."""
        obj = self.find_id(obj_id)
        if obj is None:
            raise self.kind.not_found("id", str(obj_id))
        return obj

    # --- listing --------------------------------------------------------------

    def count(self, active: bool) -> int:
        """NUM_OF_X (active) and NUM_OF_DEFINED_X (inactive)."""
        return sum(1 for o in self._by_name.values() if bool(o.active) == active)

    def list_names(self, active: bool, maxnames: int) -> list[str]:
        """LIST_X (active) and LIST_DEFINED_X (inactive), at most ``maxnames``."""
        names = [name for name, o in self._by_name.items()
                 if bool(o.active) == active]
        if self.kind.sorted_names:
            names.sort()
        return names[:maxnames]

    def list_all(self, flags: int, extra: Callable[[T], bool] | None = None) -> list[T]:
        """CONNECT_LIST_ALL_X: the objects every filter group (and ``extra``) keeps.

        The kind's own filter (a pool's type bits, a device's capabilities)
        applies too; ``extra`` is the caller's.  The caller checks the flags
        first (in its function's name).
        """
        tests = [g.test_for(flags) for g in self.kind.filters]
        if self.kind.extra_filter is not None:
            tests.append(self.kind.extra_filter(flags))
        tests.append(extra)
        active = [t for t in tests if t is not None]
        if not active:      # `virsh net-list --all` and friends: nothing to check
            return list(self._by_name.values())
        return [o for o in self._by_name.values() if all(t(o) for t in active)]

    # --- definition rules -----------------------------------------------------

    def check_add(self, definition: Any, *, live: bool) -> T | None:
        """The object ``definition`` would replace (None: a new one), or libvirt's refusal.

        As virNetworkObjIsDuplicate / virStoragePoolObjIsDuplicate /
        virDomainObjListAdd: a UUID in use under another name, then a name in use
        with another UUID; with ``live`` (createXML), an object already running.
        """
        kind = self.kind
        uuid = bytes(definition.uuid)
        other = self.find_uuid(uuid)
        if other is not None and other.name != definition.name:
            raise kind.conf_error(P.VIR_ERR_OPERATION_FAILED,
                                  f"{kind.owner} '{other.name}' is already defined with uuid "
                                  f"{format_uuid(uuid)}")
        same = self._by_name.get(definition.name)
        if same is not None and same.uuid != uuid:
            raise kind.conf_error(P.VIR_ERR_OPERATION_FAILED,
                                  f"{kind.owner} '{same.name}' already exists with uuid "
                                  f"{format_uuid(same.uuid)}")
        if live and same is not None and same.active:
            raise kind.conf_error(P.VIR_ERR_OPERATION_INVALID, kind.already_active.format(
                owner=kind.owner, name=same.name))
        return same

    def assign(self, definition: Any, *, live: bool, make: Callable[[Any], T]) -> T:
        """Add or replace an object as virNetworkObjAssignDef does (after `check_add`).

        Define (``live`` false): a new name makes ``make(definition)``; a
        running object gets the definition as its next one (``new_def``); an
        inactive one has it replaced.  The object is then persistent.
        createXML (``live``): a new name makes a transient object; an existing
        inactive one runs the new definition, its persistent one kept in
        ``new_def`` where the kind keeps it.  ``active`` is the caller's to set
        once the object really runs.
        """
        same = self.check_add(definition, live=live)
        if same is None:
            obj = make(definition)
            obj.persistent = not live
            return self.add(obj)
        if live:
            if self.kind.live_keeps_config:
                same.new_def = same.definition
            same.definition = definition
        elif same.active:
            same.new_def = definition
            same.persistent = True
        else:
            same.definition = definition
            same.persistent = True
        return same

    def check_undefine(self, obj: T) -> None:
        """Only a persistent object has a definition to forget."""
        if not obj.persistent:
            raise self.kind.error(P.VIR_ERR_OPERATION_INVALID,
                                  f"{self.kind.owner} is not persistent")

    def undefine(self, obj: T) -> None:
        """Forget ``obj``'s persistent definition: a running object lives on as
        transient, an inactive one is gone."""
        obj.autostart = False
        if obj.active:
            obj.persistent = False
            obj.new_def = None
        else:
            self.remove(obj)

    def check_autostart(self, obj: T) -> None:
        """Refuse autostart on a transient object where the kind refuses it."""
        refusal = self.kind.transient_autostart
        if refusal is not None and not obj.persistent:
            raise self.kind.error(*refusal)

    def stopped(self, obj: T, *, apply_config: bool = True) -> None:
        """``obj`` no longer runs: a transient object is gone, a persistent one
        takes up its next definition (unless ``apply_config`` is false, as libvirt's
        test driver leaves it)."""
        obj.active = False
        if not obj.persistent:
            self.remove(obj)
        elif apply_config and obj.new_def is not None:
            obj.definition, obj.new_def = obj.new_def, None
