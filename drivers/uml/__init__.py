"""The ``uml`` driver: User Mode Linux guests (uml:///system, uml:///session) as plain processes.

A guest is a domain of type uml with os type uml: a UML kernel (the host's
``linux.uml``) started as an ordinary process, with its root on a host
directory (hostfs) or on image files (ubdX), its consoles on ptys and its
management console (mconsole) socket under run_dir/uml/.  The daemon finds a
running guest again after a restart through that socket and the pid it
recorded (driver.py).

Importing this package stays light: ``launcher.py`` runs as
``python -m pyvirtd.drivers.uml.launcher`` in front of every guest and must
not load the daemon, so the entry point, `UmlDriver`, is handed out lazily
(PEP 562), as the LXC driver does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import UmlDriver

__all__ = ["UmlDriver"]


def __getattr__(name: str) -> Any:
    if name == "UmlDriver":
        from .connection import UmlDriver
        return UmlDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
