"""The ``esx`` driver: VMware ESX and vCenter hosts, served by the daemon through the vSphere API.

In stock libvirt the ESX driver lives in the client library, so libvirtd
never serves it.  Here the daemon talks to the hosts named in its
configuration (``esx_endpoints``) and any RPC client reaches them through
it, with the daemon's authentication and access control: a client opens
``esx+unix:///NAME?socket=...``; the client library's own ESX driver declines
a URI with a transport (it takes plain ``esx://host/``), so its remote driver
brings the URI to the daemon, which finds the endpoint NAME in the path.

It is a remote, stateless driver: nothing about the VMs is kept here; each
client connection holds its own vSphere session (login at open, logout at
close) and every call asks the host (docs/drivers.md, "A remote, stateless
driver").  pyvmomi does the SOAP, in worker threads (vsphere.py).

Importing the package stays light: `EsxDriver` (and pyvmomi with it) loads
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import EsxDriver

__all__ = ["EsxDriver"]


def __getattr__(name: str) -> Any:
    if name == "EsxDriver":
        from .connection import EsxDriver
        return EsxDriver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
