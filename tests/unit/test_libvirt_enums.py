"""The generated enum classes carry libvirt's own values.

python-libvirt (built against the installed headers) exposes the same C enum
members as module constants; every member both know must agree.
"""

from __future__ import annotations

import enum

import pytest

from pyvirtd.rpc import _generated as P

libvirt = pytest.importorskip("libvirt")


def _classes() -> list[type[enum.IntEnum]]:
    return [v for v in vars(P).values()
            if isinstance(v, type) and issubclass(v, (enum.IntEnum, enum.IntFlag))
            and v not in (enum.IntEnum, enum.IntFlag)]


def test_members_match_python_libvirt() -> None:
    classes = _classes()
    assert len(classes) > 150
    compared = 0
    for cls in classes:
        for name, member in cls.__members__.items():
            theirs = getattr(libvirt, name, None)
            if theirs is not None:
                assert int(member) == theirs, f"{cls.__name__}.{name}"
                compared += 1
    assert compared > 900


def test_naming_rule_and_kinds() -> None:
    assert P.DomainState.VIR_DOMAIN_RUNNING == 1
    assert issubclass(P.DomainState, enum.IntEnum)
    assert issubclass(P.DomainXMLFlags, enum.IntFlag)
    assert issubclass(P.DomainModificationImpact, enum.IntFlag)   # written as 1 << n
    flags = P.DomainXMLFlags.VIR_DOMAIN_XML_SECURE | P.DomainXMLFlags.VIR_DOMAIN_XML_INACTIVE
    assert flags == 3 and isinstance(flags, P.DomainXMLFlags)
    # the module-level constants the XDR facts define agree with the classes
    assert P.VIR_DOMAIN_PAUSED == P.DomainState.VIR_DOMAIN_PAUSED
