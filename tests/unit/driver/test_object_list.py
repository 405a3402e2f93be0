"""The generic list of defined objects (pyvirtd/driver/objects.py): lookups, listings,
list-all filters and define/undefine/autostart rules, with libvirt's codes and wording.

The objects are the shared `DefinedObject` over stand-in definitions (a name,
a UUID, a pool type); the kinds are the real ones the daemon uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from pyvirtd.driver.objects import (NETWORK, NODE_DEVICE, SECRET, STORAGE_POOL, DefinedObject,
                                    FilterGroup, ObjectKind, ObjectList)
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

U1, U2, U3 = bytes([1] * 16), bytes([2] * 16), bytes([3] * 16)
U1_TEXT = "01010101-0101-0101-0101-010101010101"
U2_TEXT = "02020202-0202-0202-0202-020202020202"
NET = P.ConnectListAllNetworksFlags
POOL = P.ConnectListAllStoragePoolsFlags


@dataclass(frozen=True)
class Def:
    name: str
    uuid: bytes
    type: str = "dir"


@dataclass(eq=False)
class Obj(DefinedObject):
    id: int = -1


def networks(*objs: Obj, kind: ObjectKind = NETWORK) -> ObjectList[Obj]:
    out: ObjectList[Obj] = ObjectList(kind)
    for obj in objs:
        out.add(obj)
    return out


def raises(code: int, domain: int, message: str):
    """Context: the block raises VirError with exactly this code, domain and message."""
    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(VirError)
            self.info = self.ctx.__enter__()

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert (err.code, err.domain, err.message) == (code, domain, message)
            return handled
    return _Check()


# --- lookups -------------------------------------------------------------------

def test_lookups_find_by_name_uuid_and_handle() -> None:
    a, b = Obj(Def("a", U1)), Obj(Def("b", U2))
    nets = networks(a, b)
    assert nets.by_name("b") is b and nets.by_uuid(U1) is a and nets["a"] is a
    # a handle is matched by UUID: a stale name still finds the object
    assert nets.by_ref(SimpleNamespace(name="old-name", uuid=U2)) is b
    assert "a" in nets and "c" not in nets and len(nets) == 2


def test_lookup_errors_use_the_kinds_code_domain_and_wording() -> None:
    nets = networks(Obj(Def("a", U1)))
    with raises(P.VIR_ERR_NO_NETWORK, P.VIR_FROM_NETWORK,
                "Network not found: no network with matching name 'x'"):
        nets.by_name("x")
    with raises(P.VIR_ERR_NO_NETWORK, P.VIR_FROM_NETWORK,
                f"Network not found: no network with matching uuid '{U2_TEXT}'"):
        nets.by_uuid(U2)
    with raises(P.VIR_ERR_NO_NETWORK, P.VIR_FROM_NETWORK,
                f"Network not found: no network with matching uuid '{U2_TEXT}' (a)"):
        nets.by_ref(SimpleNamespace(name="a", uuid=U2))
    pools = networks(kind=STORAGE_POOL)
    with raises(P.VIR_ERR_NO_STORAGE_POOL, P.VIR_FROM_STORAGE,
                "Storage pool not found: no storage pool with matching name 'p'"):
        pools.by_name("p")


def test_a_drivers_own_error_domain_for_lookups_not_for_define_conflicts() -> None:
    kind = NETWORK.for_driver(P.VIR_FROM_TEST)
    nets = networks(Obj(Def("a", U1)), kind=kind)
    with raises(P.VIR_ERR_NO_NETWORK, P.VIR_FROM_TEST,
                "Network not found: no network with matching name 'x'"):
        nets.by_name("x")
    with raises(P.VIR_ERR_OPERATION_FAILED, P.VIR_FROM_NETWORK,
                f"operation failed: network 'a' already exists with uuid {U1_TEXT}"):
        nets.check_add(Def("a", U2), live=False)


def test_kinds_without_uuid_find_handles_by_name() -> None:
    devs: ObjectList = ObjectList(NODE_DEVICE)
    dev = SimpleNamespace(name="pci_0000_00_01_0", definition=None)
    devs.add(dev)
    assert devs.by_ref(SimpleNamespace(name="pci_0000_00_01_0")) is dev
    with raises(P.VIR_ERR_NO_NODE_DEVICE, P.VIR_FROM_NODEDEV,
                "Node device not found: no node device with matching name 'nope'"):
        devs.by_ref(SimpleNamespace(name="nope"))


def test_lookup_by_id_finds_only_running_objects() -> None:
    kind = ObjectKind("domain", P.VIR_ERR_NO_DOMAIN, P.VIR_FROM_DOMAIN, owner="domain")
    doms = networks(Obj(Def("on", U1), active=True, id=7), Obj(Def("off", U2), id=8), kind=kind)
    assert doms.by_id(7).name == "on"
    with raises(P.VIR_ERR_NO_DOMAIN, P.VIR_FROM_DOMAIN,
                "Domain not found: no domain with matching id 8"):
        doms.by_id(8)


# --- listings ------------------------------------------------------------------

def test_counts_and_names_of_active_and_inactive() -> None:
    objs = [Obj(Def("c", U1), active=True), Obj(Def("a", U2)), Obj(Def("b", U3), active=True)]
    nets = networks(*objs)
    assert (nets.count(active=True), nets.count(active=False)) == (2, 1)
    assert nets.list_names(True, 10) == ["b", "c"]          # the network driver sorts
    assert nets.list_names(True, 1) == ["b"]
    pools = networks(*objs, kind=STORAGE_POOL)
    assert pools.list_names(True, 10) == ["c", "b"]         # definition order


def test_list_all_filter_groups() -> None:
    run = Obj(Def("run", U1), active=True, persistent=False)
    auto = Obj(Def("auto", U2), autostart=True)
    idle = Obj(Def("idle", U3))
    nets = networks(run, auto, idle)

    def names(flags: int) -> list[str]:
        return [o.name for o in nets.list_all(flags)]

    assert names(0) == ["run", "auto", "idle"]
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_ACTIVE) == ["run"]
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_INACTIVE) == ["auto", "idle"]
    # both flags of a group keep everything, as libvirt's filter does
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_ACTIVE | NET.VIR_CONNECT_LIST_NETWORKS_INACTIVE) \
        == ["run", "auto", "idle"]
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_TRANSIENT) == ["run"]
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_AUTOSTART) == ["auto"]
    assert names(NET.VIR_CONNECT_LIST_NETWORKS_INACTIVE
                 | NET.VIR_CONNECT_LIST_NETWORKS_NO_AUTOSTART) == ["idle"]
    assert [o.name for o in nets.list_all(0, lambda o: o.name != "auto")] == ["run", "idle"]
    assert NETWORK.list_flags == 63


def test_pool_type_bits_are_the_pool_kinds_own_filter() -> None:
    pools = networks(Obj(Def("d", U1, "dir")), Obj(Def("n", U2, "netfs"), active=True),
                     kind=STORAGE_POOL)
    assert [p.name for p in pools.list_all(POOL.VIR_CONNECT_LIST_STORAGE_POOLS_NETFS)] == ["n"]
    assert [p.name for p in pools.list_all(POOL.VIR_CONNECT_LIST_STORAGE_POOLS_DIR
                                           | POOL.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)] == []
    assert STORAGE_POOL.list_flags == (1 << 20) - 1


def test_secret_filters_read_the_definition() -> None:
    secrets: ObjectList = ObjectList(SECRET)
    for n, (name, eph, priv) in enumerate((("s1", True, False), ("s2", False, True))):
        secrets.add(SimpleNamespace(name=name, uuid=bytes([n]) * 16,
                                    definition=SimpleNamespace(ephemeral=eph, private=priv)))
    sec = P.ConnectListAllSecretsFlags
    assert [s.name for s in secrets.list_all(sec.VIR_CONNECT_LIST_SECRETS_EPHEMERAL)] == ["s1"]
    assert [s.name for s in secrets.list_all(sec.VIR_CONNECT_LIST_SECRETS_PRIVATE)] == ["s2"]
    assert [s.name for s in secrets.list_all(sec.VIR_CONNECT_LIST_SECRETS_NO_PRIVATE
                                             | sec.VIR_CONNECT_LIST_SECRETS_NO_EPHEMERAL)] == []


def test_a_custom_filter_group() -> None:
    group = FilterGroup(1, 2, lambda o: o.flag)
    assert group.test_for(0) is None and group.test_for(3) is None
    assert group.test_for(1)(SimpleNamespace(flag=True))
    assert not group.test_for(2)(SimpleNamespace(flag=True))


# --- definition rules ----------------------------------------------------------

def test_define_conflicts_uuid_first_then_name_then_running() -> None:
    a = Obj(Def("a", U1), active=True)
    nets = networks(a, Obj(Def("b", U2)))
    # both conflicts at once: the UUID's is reported, as virNetworkObjIsDuplicate does
    with raises(P.VIR_ERR_OPERATION_FAILED, P.VIR_FROM_NETWORK,
                f"operation failed: network 'a' is already defined with uuid {U1_TEXT}"):
        nets.check_add(Def("b", U1), live=False)
    with raises(P.VIR_ERR_OPERATION_FAILED, P.VIR_FROM_NETWORK,
                f"operation failed: network 'b' already exists with uuid {U2_TEXT}"):
        nets.check_add(Def("b", U3), live=False)
    with raises(P.VIR_ERR_OPERATION_INVALID, P.VIR_FROM_NETWORK,
                "Requested operation is not valid: network is already active as 'a'"):
        nets.check_add(Def("a", U1), live=True)
    assert nets.check_add(Def("a", U1), live=False) is a
    assert nets.check_add(Def("new", U3), live=True) is None


def test_define_adds_or_replaces_the_persistent_definition() -> None:
    running = Obj(Def("run", U1), active=True, persistent=False)
    idle = Obj(Def("idle", U2))
    nets = networks(running, idle)
    new = nets.assign(Def("new", U3), live=False, make=Obj)
    assert nets["new"] is new and new.persistent and not new.active
    nxt = Def("run", U1, "next")
    assert nets.assign(nxt, live=False, make=Obj) is running
    assert running.new_def is nxt and running.persistent and running.definition.type == "dir"
    replaced = Def("idle", U2, "other")
    assert nets.assign(replaced, live=False, make=Obj) is idle and idle.definition is replaced


def test_create_over_an_inactive_object_keeps_or_drops_its_config_per_kind() -> None:
    old, live = Def("x", U1), Def("x", U1, "live")
    net = Obj(old)
    networks(net).assign(live, live=True, make=Obj)
    assert net.definition is live and net.new_def is old and net.persistent
    pool = Obj(old)
    networks(pool, kind=STORAGE_POOL).assign(live, live=True, make=Obj)
    assert pool.definition is live and pool.new_def is None
    fresh = networks().assign(live, live=True, make=Obj)
    assert not fresh.persistent and not fresh.active      # the caller starts it


def test_undefine_and_stop() -> None:
    running = Obj(Def("run", U1), active=True, autostart=True, new_def=Def("run", U1, "n"))
    idle = Obj(Def("idle", U2))
    nets = networks(running, idle)
    nets.undefine(running)
    assert not running.persistent and running.new_def is None and not running.autostart
    assert "run" in nets
    with raises(P.VIR_ERR_OPERATION_INVALID, P.VIR_FROM_NETWORK,
                "Requested operation is not valid: network is not persistent"):
        nets.check_undefine(running)
    nets.undefine(idle)
    assert "idle" not in nets
    nets.stopped(running)                  # transient: gone once stopped
    assert len(nets) == 0


def test_stopping_applies_the_next_definition_unless_told_not_to() -> None:
    nxt = Def("a", U1, "next")
    a = Obj(Def("a", U1), active=True, new_def=nxt)
    networks(a).stopped(a, apply_config=False)
    assert not a.active and a.definition.type == "dir" and a.new_def is nxt
    networks(a).stopped(a)
    assert a.definition is nxt and a.new_def is None


def test_autostart_on_a_transient_object_per_kind() -> None:
    transient = Obj(Def("t", U1), active=True, persistent=False)
    with raises(P.VIR_ERR_OPERATION_INVALID, P.VIR_FROM_NETWORK,
                "Requested operation is not valid: cannot set autostart for transient network"):
        networks(transient).check_autostart(transient)
    with raises(P.VIR_ERR_INTERNAL_ERROR, P.VIR_FROM_STORAGE,
                "internal error: cannot set autostart for transient pool"):
        networks(transient, kind=STORAGE_POOL).check_autostart(transient)
    networks(kind=NETWORK.for_driver(P.VIR_FROM_TEST, transient_autostart=None)
             ).check_autostart(transient)


def test_iteration_is_a_snapshot_and_remove_only_takes_the_same_object() -> None:
    a = Obj(Def("a", U1))
    nets = networks(a, Obj(Def("b", U2)))
    for obj in nets:
        nets.remove(obj)
    assert len(nets) == 0
    nets.add(a)
    nets.remove(Obj(Def("a", U1)))      # another object of that name: not removed
    assert nets.get("a") is a


def test_the_domain_kind_filters_as_the_drivers_domain_filter_does() -> None:
    """DOMAIN's list-all filter keeps what matches_list_flags (the stats calls' filter) keeps."""
    import itertools

    from pyvirtd.driver import domains as ds
    from pyvirtd.driver.objects import DOMAIN

    doms = ObjectList(DOMAIN)
    states = (ds.RUNNING, ds.PAUSED, ds.SHUTOFF, ds.CRASHED)
    for i, (state, persistent, autostart, saved, snaps) in enumerate(itertools.product(
            states, (True, False), (True, False), (True, False), ({}, {"s": 1}))):
        dom = ds.DomainObject(Def(f"d{i}", bytes([i]) * 16), persistent=persistent,
                              state=state, autostart=autostart, managed_save=saved,
                              snapshots=snaps)
        doms.add(dom)
    for bit in range(14):
        for other in (0, 1, 2, 4, 8, 16):
            flags = (1 << bit) | other
            assert doms.list_all(flags) == [d for d in doms if ds.matches_list_flags(d, flags)], \
                flags
