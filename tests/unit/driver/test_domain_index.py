"""Domains are found through the object list's indexes, never by a scan (issue 22).

With 10,000 domains defined, every call on a handle resolved each one by
reading every domain's UUID, and every define compared the new UUID with all
of them.  These tests count the reads of each domain's ``uuid`` and
``active`` (what a scan reads) while a handle is resolved, a domain is looked
up by UUID or id, and a new domain is defined: a scan reads them 10,000
times, an index a few times.  They also check that the indexes follow ids,
renames and removals, so a lookup never answers with a stale object.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from pyvirtd.drivers.testdrv.domains import Domain, DomainMixin
from pyvirtd.drivers.testdrv import state as test_state
from pyvirtd.driver import domains as ds
from pyvirtd.driver.objects import DOMAIN, ObjectList
from pyvirtd.errors import VirError
from pyvirtd.rpc import _generated as P

N = 10_000
BOUND = 4           # reads a lookup may make of the few domains it touches


@dataclass
class Reads:
    count: int = 0


READS = Reads()


@dataclass
class Def:
    name: str
    uuid: bytes
    extra: dict = field(default_factory=dict)

    def copy(self) -> "Def":
        return Def(self.name, self.uuid)


class Counted:
    """Counts what a scan over the domains would read."""

    @property
    def uuid(self) -> bytes:
        READS.count += 1
        return self.definition.uuid  # type: ignore[attr-defined]

    @property
    def active(self) -> bool:
        READS.count += 1
        return self.state != ds.SHUTOFF  # type: ignore[attr-defined]


@dataclass(eq=False)
class CountedDomainObject(Counted, ds.DomainObject):
    pass


@dataclass(eq=False)
class CountedTestDomain(Counted, Domain):
    pass


def uuid_of(i: int) -> bytes:
    return uuidlib.UUID(int=i + 1).bytes


def many(make, n: int = N):
    """``n`` domains, every third one running with id i + 1."""
    doms = ObjectList(DOMAIN.for_driver(P.VIR_FROM_QEMU))
    for i in range(n):
        dom = make(Def(f"g{i}", uuid_of(i)))
        if i % 3 == 0:
            dom.set_state(ds.RUNNING, ds.RUNNING_BOOTED)
            dom.id = i + 1
        doms.add(dom)
    return doms


class Lookups(ds.DomainLookups):
    error_domain = P.VIR_FROM_QEMU

    def __init__(self, domains: ObjectList) -> None:
        self.driver = SimpleNamespace(domains=domains)


def test_shared_lookups_and_define_check_read_no_other_domain() -> None:
    conn = Lookups(many(CountedDomainObject))
    last = N - 1
    ref = P.remote_nonnull_domain(f"g{last}", uuid_of(last), -1)
    READS.count = 0
    assert conn._dom(ref).name == f"g{last}"
    assert conn.domain_lookup_by_uuid(uuid_of(last - 1)).name == f"g{last - 1}"
    assert conn.domain_lookup_by_id(last + 1).name == f"g{last}"    # g9999 runs as id 10000
    assert conn.domain_lookup_by_name("g5").name == "g5"
    assert conn.driver.domains.check_add(Def("new", uuid_of(N)), live=False) is None
    assert READS.count <= 5 * BOUND


def test_shared_lookup_misses_read_no_domain_and_keep_the_wording() -> None:
    conn = Lookups(many(CountedDomainObject))
    missing = uuid_of(N + 5)
    READS.count = 0
    with pytest.raises(VirError) as err:
        conn._dom(P.remote_nonnull_domain("gone", missing, -1))
    assert (err.value.code, err.value.domain) == (P.VIR_ERR_NO_DOMAIN, P.VIR_FROM_QEMU)
    assert err.value.detail == (f"no domain with matching uuid '{uuidlib.UUID(bytes=missing)}' "
                                 "(gone)")
    with pytest.raises(VirError) as err:
        conn.domain_lookup_by_id(2)                 # g1 exists but does not run
    assert err.value.detail == "no domain with matching id 2"
    assert READS.count <= 2 * BOUND


def test_define_conflicts_found_by_index_with_libvirts_errors() -> None:
    doms = many(CountedDomainObject)
    READS.count = 0
    with pytest.raises(VirError) as err:
        doms.check_add(Def("other", uuid_of(42)), live=False)
    assert (err.value.code, err.value.domain) == (P.VIR_ERR_OPERATION_FAILED, P.VIR_FROM_DOMAIN)
    assert err.value.detail == (f"domain 'g42' is already defined with uuid "
                                 f"{uuidlib.UUID(bytes=uuid_of(42))}")
    with pytest.raises(VirError) as err:
        doms.check_add(Def("g0", uuid_of(N + 1)), live=True)   # g0's name, another uuid
    assert err.value.detail == (f"domain 'g0' already exists with uuid "
                                 f"{uuidlib.UUID(bytes=uuid_of(0))}")
    with pytest.raises(VirError) as err:
        doms.check_add(Def("g3", uuid_of(3)), live=True)
    assert (err.value.code, err.value.detail) == (P.VIR_ERR_OPERATION_INVALID,
                                                   "domain 'g3' is already active")
    assert READS.count <= 3 * BOUND


def test_the_test_driver_resolves_handles_and_defines_without_a_scan() -> None:
    conn = DomainMixin()
    conn.state = test_state.TestState()
    for i in range(N):
        conn.state.domains.add(CountedTestDomain(Def(f"g{i}", uuid_of(i))))
    last = N - 1
    ref = P.remote_nonnull_domain(f"g{last}", uuid_of(last), -1)
    READS.count = 0
    assert conn.domain_get_state(ref, 0) == (ds.SHUTOFF, ds.SHUTOFF_UNKNOWN)
    conn.domain_create(ref)                                   # gets an id, found by it
    started = conn.domain_lookup_by_id(conn.state.domains.get(f"g{last}").id)
    assert started.name == f"g{last}"
    new_uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f"
    made = conn.domain_define_xml(
        f"<domain type='test'><name>fresh</name><uuid>{new_uuid}</uuid>"
        "<memory>1024</memory><os><type>hvm</type></os></domain>")
    assert conn.domain_lookup_by_uuid(made.uuid).name == "fresh"
    assert READS.count <= 8 * BOUND
    assert len(conn.state.domains) == N + 1


def test_indexes_follow_ids_renames_and_removals() -> None:
    conn = DomainMixin()
    conn.state = test_state.TestState()
    for i in range(3):
        conn.state.domains.add(Domain(Def(f"g{i}", uuid_of(i))))
    ref = conn.state.domains.get("g1").ref()
    conn.domain_create(ref)
    dom_id = conn.state.domains.get("g1").id
    assert conn.domain_lookup_by_id(dom_id).name == "g1"
    conn.domain_destroy(ref)
    with pytest.raises(VirError) as err:                       # the test driver's bare error
        conn.domain_lookup_by_id(dom_id)
    assert (err.value.code, err.value.domain) == (P.VIR_ERR_NO_DOMAIN, P.VIR_FROM_TEST)
    assert conn.domain_rename(ref, "renamed", 0) == 0
    assert conn.domain_lookup_by_uuid(uuid_of(1)).name == "renamed"
    assert conn.state.domains.get("g1") is None
    assert [d.name for d in conn.state.domains] == ["g0", "g2", "renamed"]
    conn.domain_undefine(conn.domain_lookup_by_name("renamed"))
    with pytest.raises(VirError):
        conn.domain_lookup_by_uuid(uuid_of(1))
    with pytest.raises(VirError) as err:
        conn._dom(ref)
    assert err.value.detail == (f"no domain with matching uuid '{uuidlib.UUID(bytes=uuid_of(1))}'"
                                 f" (g1)")


def test_a_replaced_name_drops_the_old_objects_uuid() -> None:
    doms = ObjectList(DOMAIN)
    old = doms.add(ds.DomainObject(Def("a", uuid_of(1))))
    doms.add(ds.DomainObject(Def("a", uuid_of(2))))
    assert doms.find_uuid(uuid_of(1)) is None and doms.find_uuid(uuid_of(2)) is not old
