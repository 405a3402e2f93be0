"""The ``lxc`` driver: lxc:/// containers through namespaces and cgroups.

A container is a domain of type lxc with os type exe, whose root is a
directory tree (<filesystem> with target '/').  Starting it starts a small
detached controller process (controller.py) that owns the namespaces, the
console pty and init; the daemon talks to it over run_dir/lxc/NAME.sock and
reattaches after a restart (driver.py).  Like libvirt's LXC driver it needs
root: the URI is lxc:/// (lxc:///system too); a daemon under --root serves
it as well when it runs as root, with everything under its own directories.

Importing this package stays light on purpose: the controller runs as
``python -m pyvirtd.drivers.lxc.controller`` and lives as long as its
container, inside the container's memory cgroup, so it must not pull in the
daemon (trio, lxml, the generated protocol): the driver's modules are
imported when the daemon loads the driver's entry point, `LxcDriver`, which
this module hands out from connection.py on first access (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import LxcDriver

__all__ = ["LxcDriver"]


def __getattr__(name: str) -> Any:
    if name == "LxcDriver":
        from .connection import LxcDriver
        return LxcDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
