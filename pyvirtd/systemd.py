"""systemd socket activation and readiness notification, in pure stdlib.

Implements the two halves of the systemd protocol a daemon needs, without
linking libsystemd (which would make pyvirtd depend on a C library for two
environment variables and one datagram):

- `listen_fds()`: the sockets systemd opened for us (sd_listen_fds(3)),
  keyed by their ``FileDescriptorName=``;
- `notify()`: status lines such as ``READY=1`` sent to ``$NOTIFY_SOCKET``
  (sd_notify(3)), so ``Type=notify`` units know when clients can connect.

Our socket units are named after libvirtd's, and systemd names each fd after
its unit unless ``FileDescriptorName=`` says otherwise. `FD_NAME_ROLES` maps
those names to the role the server gives the listener; libvirtd's own names are
accepted too, so pyvirtd can stand in for libvirtd behind libvirt's units.
"""

from __future__ import annotations

import fcntl
import os
import socket

__all__ = ["FD_NAME_ROLES", "SD_LISTEN_FDS_START", "listen_fds", "notify"]

# sd-daemon.h: the first passed fd is always 3, after stdin/stdout/stderr.
SD_LISTEN_FDS_START = 3

# fd name -> listener role: "rw" (full access), "ro" (read-only socket),
# "admin" (virt-admin), "tcp" / "tls" (network listeners).
FD_NAME_ROLES: dict[str, str] = {
    "pyvirtd.socket": "rw",
    "pyvirtd-ro.socket": "ro",
    "pyvirtd-admin.socket": "admin",
    "pyvirtd-tcp.socket": "tcp",
    "pyvirtd-tls.socket": "tls",
    "libvirtd.socket": "rw",
    "libvirtd-ro.socket": "ro",
    "libvirtd-admin.socket": "admin",
    "libvirtd-tcp.socket": "tcp",
    "libvirtd-tls.socket": "tls",
}

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen_fds(unset_environment: bool = True) -> dict[str, list[socket.socket]]:
    """Take over the sockets systemd passed to this process.

    Returns a mapping from fd name to the sockets with that name, in fd
    order (one unit with several ``ListenStream=`` lines gives one name
    several sockets). Without ``LISTEN_FDNAMES`` every fd is named
    ``"unknown"``, as sd_listen_fds_with_names(3) does. Returns ``{}`` when
    nothing was passed, or when the variables were meant for another process
    (``LISTEN_PID`` is not ours: they were inherited, not addressed to us).

    Each fd gets FD_CLOEXEC so that guests and helpers we spawn do not inherit
    the listening sockets. The variables are removed from ``os.environ`` (by
    default) for the same reason: a child must not believe the fds are its.

    Raises:
      ValueError: ``LISTEN_FDS`` is not a number, or ``LISTEN_FDNAMES`` does
        not have one name per fd; a broken unit file should fail loudly.
    """
    env = {name: os.environ.get(name) for name in _LISTEN_VARS}
    if unset_environment:
        for name in _LISTEN_VARS:
            os.environ.pop(name, None)

    pid, count, names = env["LISTEN_PID"], env["LISTEN_FDS"], env["LISTEN_FDNAMES"]
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid():
        return {}
    if not count.isdigit():
        raise ValueError(f"LISTEN_FDS is not a number: {count!r}")
    n = int(count)
    if n == 0:
        return {}
    labels = names.split(":") if names is not None else ["unknown"] * n
    if len(labels) != n:
        raise ValueError(
            f"LISTEN_FDNAMES has {len(labels)} names for {n} fds: {names!r}"
        )

    result: dict[str, list[socket.socket]] = {}
    for fd, label in enumerate(labels, start=SD_LISTEN_FDS_START):
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        # fileno= makes Python ask the kernel for family, type and protocol.
        result.setdefault(label, []).append(socket.socket(fileno=fd))
    return result


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to the service manager.

    A no-op returning False when ``$NOTIFY_SOCKET`` is unset, i.e. when not
    started by systemd with ``Type=notify``, so callers need no check of
    their own. A leading ``@`` names a socket in the abstract namespace.
    The variable is left set: the daemon notifies again later (RELOADING=1,
    STOPPING=1).

    Returns True when the datagram was sent.

    Raises:
      ValueError: ``$NOTIFY_SOCKET`` is neither an absolute path nor ``@name``.
      OSError: sending failed (e.g. the manager's socket is gone).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:
        raise ValueError(f"unsupported NOTIFY_SOCKET address: {address!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(target)
        sock.sendall(state.encode("utf-8"))
    return True
