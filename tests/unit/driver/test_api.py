"""pyvirtd/driver/api.py stays true: its methods are procedures, the drivers implement them so.

Each Protocol method must be the method name of a procedure (the dispatcher
finds it by that name), its annotations must resolve, and every driver
connection that has the method must take the same parameters; a local
hypervisor driver must answer every topic of ``LOCAL_HYPERVISOR``.
"""

from __future__ import annotations

import inspect
import typing

import pytest

from pyvirtd.driver import api
from pyvirtd.driver.procedures import DomainProcedures, SuspendResume
from pyvirtd.drivers.esx.connection import EsxConnection
from pyvirtd.drivers.lxc.connection import LxcConnection
from pyvirtd.drivers.uml.connection import UmlConnection
from pyvirtd.drivers.qemu import QemuConnection
from pyvirtd.drivers.testdrv import connection as test_connection
from pyvirtd.rpc import _generated as P

PROCEDURE_METHODS = {p.method for p in P.PROCEDURES}
# EsxConnection: a remote driver, checked for its parameters only (docs/drivers.md)
CONNECTIONS = (QemuConnection, LxcConnection, UmlConnection, EsxConnection,
               test_connection.TestConnection)


def _methods(topic: type) -> dict[str, typing.Callable]:
    return {name: fn for name, fn in vars(topic).items()
            if inspect.isfunction(fn) and not name.startswith("_")}


def _params(fn: typing.Callable) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


@pytest.mark.parametrize("topic", api.TOPICS, ids=lambda t: t.__name__)
def test_topic_methods_are_procedures(topic: type) -> None:
    methods = _methods(topic)
    assert methods
    assert sorted(set(methods) - PROCEDURE_METHODS) == []
    for fn in methods.values():
        typing.get_type_hints(fn, globalns=vars(api))    # annotations resolve


@pytest.mark.parametrize("conn", CONNECTIONS, ids=lambda c: c.__name__)
def test_drivers_take_the_written_parameters(conn: type) -> None:
    wrong = []
    for topic in api.TOPICS:
        for name, fn in _methods(topic).items():
            impl = getattr(conn, name, None)
            if impl is not None and _params(impl) != _params(fn):
                wrong.append(f"{topic.__name__}.{name}: {_params(impl)} != {_params(fn)}")
    assert wrong == []


@pytest.mark.parametrize("conn", (QemuConnection, LxcConnection, UmlConnection), ids=lambda c: c.__name__)
def test_local_hypervisors_answer_their_topics(conn: type) -> None:
    missing = [f"{topic.__name__}.{name}" for topic in api.LOCAL_HYPERVISOR
               for name in _methods(topic) if not hasattr(conn, name)]
    assert missing == []


@pytest.mark.parametrize("conn", (QemuConnection, LxcConnection, UmlConnection), ids=lambda c: c.__name__)
def test_the_generic_procedures_never_hide_a_drivers_own(conn: type) -> None:
    """DomainProcedures is the fallback: a driver mixin that answers a procedure
    its own way must win, wherever in the class list it stands."""
    generic = (DomainProcedures, SuspendResume)
    hidden = []
    for name in {n for k in generic for n, v in vars(k).items() if inspect.isfunction(v)}:
        owners = [k for k in conn.__mro__ if name in vars(k)]
        own = [k for k in owners if k not in generic and not issubclass(DomainProcedures, k)]
        if own and owners[0] in generic:
            hidden.append(f"{name}: {owners[0].__name__} before {own[0].__name__}")
    assert hidden == []
