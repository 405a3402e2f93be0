"""Bulk domain statistics: CONNECT_GET_ALL_DOMAIN_STATS.

One procedure serves both virConnectGetAllDomainStats (no domains given: every
domain the listing flags select) and virDomainListGetStats (the given domains,
in the given order, duplicates kept, ones that no longer exist skipped; the
listing flags still filter them).

libvirt's test driver (testConnectGetAllDomainStats, libvirt 9.0) knows two
stats groups: ``state`` (state.state, state.reason) and ``iothread``.  The
latter reports only IOThreads whose polling parameters were set through
virDomainSetIOThreadParams, which this driver does not implement, so it is
always empty here.  Every other group is silently ignored unless
VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS asks for an error.
"""

from __future__ import annotations

from typing import Any

from pyvirtd.errors import VirError, check_flags
from pyvirtd.rpc import _generated as P

from .domains import Domain, _matches
from .state import TestState

STATS_STATE = 1
STATS_IOTHREAD = 128
SUPPORTED_STATS = STATS_STATE | STATS_IOTHREAD

# virConnectGetAllDomainStatsFlags
LIST_FLAGS = 0xFF           # ACTIVE ... OTHER: the virConnectListAllDomains filters
STATS_NOWAIT = 1 << 29
STATS_BACKING = 1 << 30
STATS_ENFORCE = 1 << 31


def _int(name: str, value: int) -> Any:
    return P.remote_typed_param(name, P.remote_typed_param_value(P.VIR_TYPED_PARAM_INT, value))


class StatsMixin:
    state: TestState

    def _stats_record(self, dom: Domain, stats: int) -> Any:
        params = []
        if stats & STATS_STATE:
            params += [_int("state.state", dom.state), _int("state.reason", dom.reason)]
        return P.remote_domain_stats_record(dom.ref(), params)

    def connect_get_all_domain_stats(self, doms: list, stats: int, flags: int) -> list:
        check_flags(flags, LIST_FLAGS | STATS_NOWAIT | STATS_BACKING | STATS_ENFORCE,
                    "testConnectGetAllDomainStats", P.VIR_FROM_TEST)
        if not stats:
            stats = SUPPORTED_STATS
        elif flags & STATS_ENFORCE and stats & ~SUPPORTED_STATS:
            raise VirError(P.VIR_ERR_ARGUMENT_UNSUPPORTED,
                           f"Stats types bits 0x{stats & ~SUPPORTED_STATS:x} are not supported "
                           "by this daemon", domain=P.VIR_FROM_TEST)
        list_flags = flags & LIST_FLAGS
        if doms:
            found = (self.state.domains.find_uuid(ref.uuid) for ref in doms)
            selected = [d for d in found if d is not None]
        else:
            selected = list(self.state.domains.values())
        return [self._stats_record(d, stats) for d in selected if _matches(d, list_flags)]
